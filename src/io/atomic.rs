//! Atomic writes: a reader sees the old file or the new one, never half of one.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Writes `bytes` to `path` through a temporary file in the same directory, synced and then
/// renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if path.file_name().is_none() {
        return Err(Error::InvalidConfig(format!("{} is not a file path", path.display())));
    }
    if !dir.is_dir() {
        return Err(Error::Io {
            path: path.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("cannot write it: the directory {} does not exist", dir.display()),
            ),
        });
    }
    let tmp = temporary_path(dir);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(Error::io(path))?;
        file.write_all(bytes).map_err(Error::io(path))?;
        file.sync_all().map_err(Error::io(path))?;
        std::fs::rename(&tmp, path).map_err(Error::io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A new temporary file name in `dir`, short whatever the final name's length (a 255-byte file
/// name leaves no room for a suffix), and recognisable as a leftover by [`is_temporary_name`].
pub(crate) fn temporary_path(dir: &Path) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".typeformer-{}-{n}.tmp", std::process::id()))
}

/// True for names [`temporary_path`] makes: `.typeformer-PID-N.tmp`.
pub(crate) fn is_temporary_name(name: &str) -> bool {
    name.strip_prefix(".typeformer-").and_then(|rest| rest.strip_suffix(".tmp")).is_some_and(|middle| {
        let mut parts = middle.split('-');
        let digits = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
    })
}
