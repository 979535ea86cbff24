//! Atomic writes: a reader sees the old file or the new one, never half of one.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same directory, synced and then
/// renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name =
        path.file_name().ok_or_else(|| Error::InvalidConfig(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if !dir.is_dir() {
        return Err(Error::BadFile {
            path: path.into(),
            reason: format!("cannot write it: the directory {} does not exist", dir.display()),
        });
    }
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
        file.write_all(bytes).map_err(Error::io(&tmp))?;
        file.sync_all().map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(Error::io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
