//! A run directory: the checkpoints of one training run, committed as one unit, and the lock
//! that says which process owns the run.
//!
//! ```text
//! DIR/
//!   checkpoint.json        the commit record: which step directory holds the checkpoint
//!   step-000400/           the checkpoint: model.safetensors, optimizer.safetensors, loss.csv, ...
//!   step-000200/           the one before, kept for readers that opened it just before a commit
//!   .lock                  held (an OS file lock) while a run writes here
//! ```
//!
//! A checkpoint is written into a staging directory, synced, renamed to its step directory, and
//! only then named in `checkpoint.json`, which is replaced atomically: that rename is the commit.
//! Until it happens the previous checkpoint stays the committed one, whole. The record holds each
//! file's size and CRC-32, so a truncated or altered file is found when it is opened. The
//! checkpoint before the previous one is removed after the commit; whatever an interrupted commit
//! left (a staging directory, a step directory no record names, a temporary record) is removed by
//! the next run that takes the lock, and ignored by readers. Step directories are removed only
//! when a valid record names others: without one, nothing is deleted. Run directories written
//! before this layout (the files at the top level) are still read.

use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The commit record's file name.
pub const COMMIT_RECORD: &str = "checkpoint.json";
const LOCK: &str = ".lock";
const STAGING_PREFIX: &str = ".staging-";
const FORMAT: &str = "typeformer-checkpoint";
/// The pictures a run draws beside its checkpoints; they belong to the run that drew them.
const PLOTS: [&str; 2] = ["loss.png", "attention.png"];

/// Writes one file of a checkpoint at the path it is given.
pub type FileWriter<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// What the record says of one committed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedFile {
    /// Its size in bytes.
    pub bytes: u64,
    /// The CRC-32 (IEEE) of its contents.
    pub crc32: u32,
}

/// A committed checkpoint: the directory that holds its files, and the step it is at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The directory of the checkpoint's files (the run directory itself for the old layout).
    pub dir: PathBuf,
    /// Training steps done when it was written (0 for the old layout, whose files say it).
    pub step: usize,
    /// Its files, as committed (empty for the old layout).
    pub files: BTreeMap<String, CommittedFile>,
    /// The step directory of the checkpoint before this one, kept until the next commit.
    pub previous: Option<String>,
}

impl Checkpoint {
    /// The committed checkpoint of the run directory `run_dir`, or `None` when it holds none.
    /// Reading needs no lock: a commit replaces the record atomically, so a reader sees the old
    /// checkpoint or the new one, and the old one stays until the commit after. Errors: an
    /// unreadable or malformed record.
    pub fn latest(run_dir: &Path) -> Result<Option<Self>> {
        let record = run_dir.join(COMMIT_RECORD);
        let text = match std::fs::read_to_string(&record) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The layout before commit records: the files at the top level, written by
                // typeformer (a model directory of another tool is not a run).
                let model = run_dir.join("model.safetensors");
                let ours = !is_checkpoint_dir(run_dir)
                    && model.is_file()
                    && super::read_metadata(&model)
                        .is_ok_and(|m| m.get("format").map(String::as_str) == Some("typeformer"));
                return Ok(ours.then(|| Checkpoint {
                    run_dir: run_dir.into(),
                    dir: run_dir.into(),
                    step: 0,
                    files: BTreeMap::new(),
                    previous: None,
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::BadFile { path: record, reason: "not a commit record (not text)".into() })
            }
            Err(e) => return Err(Error::Io { path: record, source: e }),
        };
        let bad = |reason: String| Error::BadFile { path: record.clone(), reason };
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not a commit record ({e})")))?;
        if json.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(bad(format!("not a commit record: no \"format\": \"{FORMAT}\"")));
        }
        let step = json.get("step").and_then(Value::as_u64).ok_or_else(|| bad("no step".into()))?;
        let step = usize::try_from(step).map_err(|_| bad(format!("step {step} is too large")))?;
        let step_dir = |key: &str| -> Result<Option<String>> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(name)) if is_step_dir_name(name) => Ok(Some(name.clone())),
                Some(other) => Err(bad(format!("{key} {other} is not a step directory of this run"))),
            }
        };
        let name = step_dir("dir")?.ok_or_else(|| bad("no dir".into()))?;
        let previous = step_dir("previous")?;
        let mut files = BTreeMap::new();
        for (file, entry) in json.get("files").and_then(Value::as_object).ok_or_else(|| bad("no files".into()))? {
            if file.contains(['/', '\\']) || file.starts_with('.') || file.is_empty() {
                return Err(bad(format!("`{file}` is not a file name")));
            }
            let bytes = entry.get("bytes").and_then(Value::as_u64);
            let crc32 = entry.get("crc32").and_then(Value::as_str).and_then(|h| u32::from_str_radix(h, 16).ok());
            let (Some(bytes), Some(crc32)) = (bytes, crc32) else {
                return Err(bad(format!("no size and checksum for {file}")));
            };
            files.insert(file.clone(), CommittedFile { bytes, crc32 });
        }
        Ok(Some(Checkpoint { run_dir: run_dir.into(), dir: run_dir.join(name), step, files, previous }))
    }

    /// The path of the checkpoint's file `name`, after checking that it is the file committed:
    /// present, of the committed size and checksum (for the old layout: present).
    pub fn file(&self, name: &str) -> Result<PathBuf> {
        let path = self.path(name);
        if self.files.is_empty() {
            return if path.is_file() {
                Ok(path)
            } else {
                Err(Error::BadFile { path, reason: "missing from the run directory".into() })
            };
        }
        let bad = |reason: String| Error::BadFile { path: path.clone(), reason };
        let committed =
            self.files.get(name).ok_or_else(|| bad(format!("not part of the checkpoint of step {}", self.step)))?;
        let (bytes, crc32) = match file_crc32(&path) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(format!("missing: the checkpoint of step {} committed it", self.step)))
            }
            Err(e) => return Err(Error::Io { path: path.clone(), source: e }),
        };
        if bytes != committed.bytes {
            return Err(bad(format!(
                "the checkpoint of step {} committed {} bytes, the file has {bytes} (truncated or replaced)",
                self.step, committed.bytes
            )));
        }
        if crc32 != committed.crc32 {
            return Err(bad(format!(
                "its contents changed since the checkpoint of step {} was committed (CRC-32 {crc32:08x}, committed \
                 {:08x})",
                self.step, committed.crc32
            )));
        }
        Ok(path)
    }

    /// The path of the checkpoint's file `name`, unchecked (to show it).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// True when the record's step directory exists and holds each committed file at its
    /// committed size: a record that can be trusted to say what else is stale.
    fn is_whole(&self) -> bool {
        self.dir.is_dir()
            && self.files.iter().all(|(name, f)| std::fs::metadata(self.path(name)).is_ok_and(|m| m.len() == f.bytes))
    }

    /// True when the checkpoint has `name` (for the old layout: when the file exists).
    pub fn has(&self, name: &str) -> bool {
        if self.files.is_empty() {
            self.path(name).is_file()
        } else {
            self.files.contains_key(name)
        }
    }
}

/// The committed checkpoint of `run_dir`, or an error saying that there is none.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Checkpoint> {
    Checkpoint::latest(run_dir)?.ok_or_else(|| Error::BadFile {
        path: run_dir.into(),
        reason: format!("no checkpoint here: no {COMMIT_RECORD} (and no model.safetensors of an older run)"),
    })
}

/// What a run directory holds besides a committed checkpoint, for deciding whether a new run
/// may write there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupants {
    /// Step directories that no valid commit record names (a lost or damaged record).
    pub unrecorded_steps: Vec<String>,
    /// Entries that are not this tool's (a directory of other files).
    pub foreign: Vec<String>,
}

impl Occupants {
    /// What `run_dir` holds that is neither a committed checkpoint nor a leftover of a commit.
    pub fn of(run_dir: &Path) -> Result<Self> {
        let mut occupants = Occupants::default();
        let Ok(entries) = std::fs::read_dir(run_dir) else { return Ok(occupants) };
        let committed = Checkpoint::latest(run_dir).ok().flatten();
        let kept = |path: &Path| {
            committed
                .as_ref()
                .is_some_and(|c| c.dir == path || c.previous.as_ref().is_some_and(|p| run_dir.join(p) == path))
        };
        for entry in entries {
            let entry = entry.map_err(Error::io(run_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_step_dir_name(&name) {
                if !kept(&entry.path()) {
                    occupants.unrecorded_steps.push(name);
                }
            } else if !(is_ours(&name)
                || committed.as_ref().is_some_and(|c| c.dir == run_dir) && LEGACY.contains(&name.as_str()))
            {
                occupants.foreign.push(name);
            }
        }
        occupants.unrecorded_steps.sort();
        occupants.foreign.sort();
        Ok(occupants)
    }

    /// An error saying why a new run must not write into `run_dir` (holding a run that no
    /// record names, or others' files), unless it is told to (`--force`); `None` when empty.
    pub fn refusal(&self, run_dir: &Path) -> Option<Error> {
        let list = |names: &[String]| {
            let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
            format!("{}{}", shown.join(", "), if names.len() > 5 { ", ..." } else { "" })
        };
        if !self.unrecorded_steps.is_empty() {
            return Some(Error::InvalidConfig(format!(
                "{} holds checkpoints that no {COMMIT_RECORD} names ({}): restore the record, or pass --force to \
                 replace them",
                run_dir.display(),
                list(&self.unrecorded_steps)
            )));
        }
        if !self.foreign.is_empty() {
            return Some(Error::InvalidConfig(format!(
                "{} is not empty and holds no run ({}): choose a new or empty directory, or pass --force to \
                 write a run beside those files (they are left alone)",
                run_dir.display(),
                list(&self.foreign)
            )));
        }
        None
    }
}

/// Runs `read` on the committed checkpoint of `run_dir`; when the checkpoint it read was
/// retired by commits in the meantime (a file vanished under a concurrent run), reads the new
/// record and tries again.
pub fn read_latest<T>(run_dir: &Path, mut read: impl FnMut(&Checkpoint) -> Result<T>) -> Result<T> {
    let mut attempts = 0;
    loop {
        let checkpoint = latest_checkpoint(run_dir)?;
        match read(&checkpoint) {
            Err(e) if attempts < 3 && !checkpoint.dir.exists() => {
                attempts += 1;
                drop(e);
            }
            other => return other,
        }
    }
}

/// Ownership of a run directory: while it lives, this process alone writes checkpoints there.
///
/// The lock is an OS file lock on `DIR/.lock`, released when the process ends however it ends;
/// a second run on the same directory gets [`Error::Busy`]. A directory this lock created that
/// holds nothing but the lock when it is dropped (the run failed before its first checkpoint)
/// is removed.
#[derive(Debug)]
pub struct RunLock {
    dir: PathBuf,
    /// The outermost directory `acquire` created, if any.
    created: Option<PathBuf>,
    /// Set by [`RunLock::start_new_run`]: the next commit retires the earlier run's plots.
    replacing: std::cell::Cell<bool>,
    _lock: File,
}

impl RunLock {
    /// Creates `dir` if needed, takes its lock, and removes what interrupted commits left there.
    pub fn acquire(dir: &Path) -> Result<Self> {
        if std::fs::symlink_metadata(dir).is_ok() && !dir.is_dir() {
            let what = if dir.exists() { "a file" } else { "a link to nothing" };
            return Err(Error::BadFile {
                path: dir.into(),
                reason: format!("{what}, where a run directory is needed"),
            });
        }
        if let Some(run) = dir.ancestors().find(|a| is_checkpoint_dir(a)) {
            return Err(Error::BadFile {
                path: dir.into(),
                reason: format!(
                    "{} is a checkpoint of the run in {}, not a run directory: choose another --out",
                    run.display(),
                    run.parent().map_or(String::new(), |p| p.display().to_string())
                ),
            });
        }
        // The outermost directory this run creates, removed again if the run leaves nothing.
        let created =
            dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last().map(PathBuf::from);
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let path = dir.join(LOCK);
        let record = dir.join(COMMIT_RECORD);
        for (what, p) in [("the lock", &path), ("the commit record", &record)] {
            if let Ok(m) = std::fs::symlink_metadata(p) {
                if !m.is_file() {
                    return Err(Error::BadFile {
                        path: p.clone(),
                        reason: format!("{what} is a link or a directory, not a file: remove it"),
                    });
                }
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(false).read(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let mut file = options.open(&path).map_err(Error::io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                let owner = owner.trim();
                return Err(Error::Busy {
                    path: dir.into(),
                    owner: if owner.is_empty() { "another process".into() } else { format!("process {owner}") },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::Io { path, source: e }),
        }
        // For the message a second run prints; the lock itself is what counts.
        let _ = file.set_len(0).and_then(|()| write!(file, "{}", std::process::id()));
        let lock = Self { dir: dir.into(), created, replacing: false.into(), _lock: file };
        // A directory the run cannot write in fails now, not after the training.
        let probe = super::temporary_path(dir);
        File::create(&probe).and_then(|_| std::fs::remove_file(&probe)).map_err(|e| Error::Io {
            path: dir.into(),
            source: std::io::Error::new(e.kind(), format!("a run cannot write its checkpoints here ({e})")),
        })?;
        lock.remove_leftovers()?;
        Ok(lock)
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Says that this run starts afresh rather than continuing the directory's run: its first
    /// commit also removes the plots an earlier run drew, so that none outlives the model it
    /// showed. Until then the earlier run stays whole.
    pub fn start_new_run(&self) {
        self.replacing.set(true);
    }

    /// Writes a checkpoint of `step` and commits it: each `(name, write)` writes the file
    /// `name` at the path it is given, into a staging directory; then the staging directory
    /// becomes the step directory and the commit record names it. Returns the new checkpoint.
    /// On an error nothing is committed, what was written is removed, and the previous
    /// checkpoint stays as it was.
    pub fn commit(&self, step: usize, files: &[(&str, FileWriter)]) -> Result<Checkpoint> {
        // An unreadable record names nothing to keep (and is replaced by this commit).
        let latest = Checkpoint::latest(&self.dir).ok().flatten();
        let old_layout = latest.as_ref().is_some_and(|c| c.dir == self.dir);
        let previous = latest.filter(|c| c.dir != self.dir);
        let staging = self.dir.join(format!("{STAGING_PREFIX}{}", step_dir_name(step)));
        let name = (0..)
            .map(|k| if k == 0 { step_dir_name(step) } else { format!("{}.{k}", step_dir_name(step)) })
            .find(|n| !self.dir.join(n).exists())
            .expect("a free name");
        let final_dir = self.dir.join(&name);
        let record_tmp = super::temporary_path(&self.dir);
        let written = (|| {
            remove_path(&staging)?;
            std::fs::create_dir(&staging).map_err(Error::io(&staging))?;
            let mut committed = BTreeMap::new();
            for (file, write) in files {
                let path = staging.join(file);
                write(&path)?;
                crash_point(&format!("wrote {file}"), step);
                File::open(&path).and_then(|f| f.sync_all()).map_err(Error::io(&path))?;
                let (bytes, crc32) = file_crc32(&path).map_err(Error::io(&path))?;
                committed.insert(file.to_string(), json!({ "bytes": bytes, "crc32": format!("{crc32:08x}") }));
            }
            sync_dir(&staging)?;
            std::fs::rename(&staging, &final_dir).map_err(Error::io(&final_dir))?;
            sync_dir(&self.dir)?;
            crash_point("renamed", step);
            let previous_name = previous.as_ref().map(|p| p.dir.file_name().expect("a step directory"));
            let record = json!({
                "format": FORMAT,
                "step": step,
                "dir": name,
                "previous": previous_name.map(|n| n.to_string_lossy().into_owned()),
                "files": committed,
            });
            let mut file = File::create(&record_tmp).map_err(Error::io(&record_tmp))?;
            file.write_all(format!("{record:#}\n").as_bytes()).map_err(Error::io(&record_tmp))?;
            file.sync_all().map_err(Error::io(&record_tmp))?;
            crash_point("wrote the record", step);
            let record_path = self.dir.join(COMMIT_RECORD);
            std::fs::rename(&record_tmp, &record_path).map_err(Error::io(&record_path))?;
            sync_dir(&self.dir)
        })();
        if let Err(e) = written {
            for path in [&staging, &final_dir, &record_tmp] {
                let _ = remove_path(path);
            }
            return Err(e);
        }
        crash_point("committed", step);
        let committed = latest_checkpoint(&self.dir)?;
        // The checkpoint before the previous one: no reader of the record can still want it.
        // Removing what the commit superseded is best effort: the checkpoint is committed, and
        // what cannot be removed now (a read-only directory) is tried again by the next run.
        if let Some(older) = previous.as_ref().and_then(|p| p.previous.as_ref()) {
            let _ = remove_path(&self.dir.join(older));
        }
        if old_layout {
            // An old-layout checkpoint is superseded by the first commit record.
            self.retire_old_layout();
        }
        if self.replacing.replace(false) {
            for plot in PLOTS.map(|p| self.dir.join(p)) {
                // Only a picture of ours: a directory or a link of that name is not.
                if std::fs::symlink_metadata(&plot).is_ok_and(|m| m.is_file()) {
                    let _ = std::fs::remove_file(&plot);
                }
            }
        }
        crash_point("removed an older checkpoint", step);
        Ok(committed)
    }

    /// Removes the top-level files of a run directory of the old layout (best effort).
    fn retire_old_layout(&self) {
        for name in LEGACY {
            let _ = remove_path(&self.dir.join(name));
        }
    }

    /// Removes what an interrupted commit left: staging directories and temporary files always;
    /// step directories only when a record names the ones to keep (the committed one and its
    /// previous) and that checkpoint is whole. Without such a record nothing of a checkpoint is
    /// deleted; nothing that is not this tool's is ever deleted.
    fn remove_leftovers(&self) -> Result<()> {
        let keep: Option<Vec<PathBuf>> = match Checkpoint::latest(&self.dir) {
            Ok(Some(c)) if c.dir != self.dir && c.is_whole() => {
                Some(std::iter::once(c.dir).chain(c.previous.map(|p| self.dir.join(p))).collect())
            }
            _ => None,
        };
        let entries = std::fs::read_dir(&self.dir).map_err(Error::io(&self.dir))?;
        for entry in entries {
            let entry = entry.map_err(Error::io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let stale = name.starts_with(STAGING_PREFIX)
                || super::is_temporary_name(&name)
                || (is_step_dir_name(&name) && keep.as_ref().is_some_and(|keep| !keep.contains(&path)));
            if stale {
                // Best effort: a leftover that cannot be removed harms nothing, readers ignore it.
                let _ = remove_path(&path);
            }
        }
        Ok(())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // A run that created its directory and failed before writing anything leaves nothing:
        // not the directory, not the parents it created for it.
        let Some(created) = &self.created else { return };
        let only = |dir: &Path, name: &std::ffi::OsStr| {
            std::fs::read_dir(dir).is_ok_and(|entries| entries.filter_map(|e| e.ok()).all(|e| e.file_name() == name))
        };
        let mut untouched = only(&self.dir, std::ffi::OsStr::new(LOCK));
        for dir in self.dir.ancestors().skip(1).take_while(|a| created.starts_with(a) || a.starts_with(created)) {
            if !dir.starts_with(created) {
                break;
            }
            let child = self.dir.strip_prefix(dir).ok().and_then(|rest| rest.components().next());
            untouched &= child.is_some_and(|c| only(dir, c.as_os_str()));
        }
        if untouched {
            let _ = std::fs::remove_dir_all(created);
        }
    }
}

/// `step-000200`, so that directories sort by step.
fn step_dir_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// `step-NNNNNN` (six or more digits) or `step-NNNNNN.K`: the names commits give.
fn is_step_dir_name(name: &str) -> bool {
    name.strip_prefix("step-").is_some_and(|rest| {
        let (step, k) = rest.split_once('.').unwrap_or((rest, "0"));
        step.len() >= 6
            && step.bytes().all(|b| b.is_ascii_digit())
            && !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_digit())
    })
}

/// True for a step directory of a run: its name is one commits give and its parent holds a
/// commit record (a checkpoint's files, not a run directory of its own).
pub(crate) fn is_checkpoint_dir(dir: &Path) -> bool {
    dir.file_name().is_some_and(|n| is_step_dir_name(&n.to_string_lossy()))
        && dir.parent().is_some_and(|parent| parent.join(COMMIT_RECORD).is_file())
}

/// Files a run directory's top level holds of the old layout's checkpoints.
const LEGACY: [&str; 3] = ["model.safetensors", "optimizer.safetensors", "loss.csv"];

/// Entries of a run directory that this tool writes (besides step directories).
fn is_ours(name: &str) -> bool {
    [LOCK, COMMIT_RECORD].contains(&name)
        || PLOTS.contains(&name)
        || name.starts_with(STAGING_PREFIX)
        || super::is_temporary_name(name)
}

/// The size and CRC-32 of the file at `path`.
fn file_crc32(path: &Path) -> std::io::Result<(u64, u32)> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok((bytes, hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
}

fn remove_path(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.map_err(Error::io(path))
}

/// Makes the directory's entries (a rename into it) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io(dir))
}

/// Ends the process at once (no cleanup, as a SIGKILL would) when the environment variable
/// `TYPEFORMER_TEST_CRASH_AT` is `POINT@STEP`: how the tests kill a commit at every point.
fn crash_point(point: &str, step: usize) {
    if std::env::var("TYPEFORMER_TEST_CRASH_AT").is_ok_and(|v| v == format!("{point}@{step}")) {
        std::process::abort();
    }
}

/// The points at which `TYPEFORMER_TEST_CRASH_AT` can end a commit of a checkpoint holding the
/// files `files`, in order.
#[doc(hidden)]
pub fn crash_points(files: &[&str]) -> Vec<String> {
    let mut points: Vec<String> = files.iter().map(|f| format!("wrote {f}")).collect();
    points.extend(["renamed", "wrote the record", "committed", "removed an older checkpoint"].map(String::from));
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("typeformer-rundir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn text(content: &'static str) -> impl Fn(&Path) -> Result<()> {
        move |path| std::fs::write(path, content).map_err(Error::io(path))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_commit_keeps_the_previous_checkpoint_and_removes_the_one_before() {
        let dir = temp("commit");
        let lock = RunLock::acquire(&dir).unwrap();
        assert_eq!(Checkpoint::latest(&dir).unwrap(), None);
        let first = lock.commit(2, &[("a.txt", &text("one")), ("b.txt", &text("two"))]).unwrap();
        assert_eq!(Checkpoint::latest(&dir).unwrap().as_ref(), Some(&first));
        let second = lock.commit(4, &[("a.txt", &text("three"))]).unwrap();
        assert_eq!((second.step, second.previous.as_deref()), (4, Some("step-000002")));
        assert_eq!(std::fs::read_to_string(second.file("a.txt").unwrap()).unwrap(), "three");
        assert!(first.dir.exists(), "a reader of the previous record can still open its files");
        let third = lock.commit(6, &[("a.txt", &text("four"))]).unwrap();
        assert!(!first.dir.exists() && second.dir.exists());
        assert_eq!(names(&dir), [".lock", "checkpoint.json", "step-000004", "step-000006"]);
        // The same step again takes the next name.
        let again = lock.commit(6, &[("a.txt", &text("five"))]).unwrap();
        assert!(again.dir.ends_with("step-000006.1"), "{:?}", again.dir);
        assert!(third.dir.exists() && !second.dir.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_commits_nothing_leaves_nothing_and_a_second_owner_is_refused() {
        let dir = temp("fail");
        let lock = RunLock::acquire(&dir).unwrap();
        let first = lock.commit(1, &[("a.txt", &text("one"))]).unwrap();
        let fail = |_: &Path| Err(Error::InvalidConfig("disk full".into()));
        assert!(lock.commit(2, &[("a.txt", &text("two")), ("b.txt", &fail)]).is_err());
        assert_eq!(Checkpoint::latest(&dir).unwrap().as_ref(), Some(&first));
        assert_eq!(names(&dir), [".lock", "checkpoint.json", "step-000001"]);
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_run_that_fails_before_its_first_checkpoint_leaves_no_directory() {
        let dir = temp("abandoned");
        drop(RunLock::acquire(&dir).unwrap());
        assert!(!dir.exists());
        // A directory that was there before stays.
        std::fs::create_dir_all(&dir).unwrap();
        drop(RunLock::acquire(&dir).unwrap());
        assert!(dir.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn step_directories_are_removed_only_when_a_valid_record_names_others() {
        let dir = temp("keep");
        let lock = RunLock::acquire(&dir).unwrap();
        lock.commit(2, &[("a.txt", &text("one"))]).unwrap();
        std::fs::create_dir(dir.join("step-000009")).unwrap();
        std::fs::create_dir(dir.join(".staging-step-000010")).unwrap();
        drop(lock);
        drop(RunLock::acquire(&dir).unwrap());
        assert_eq!(names(&dir), [".lock", "checkpoint.json", "step-000002"]);
        // No record (deleted by hand): the checkpoint's directory is not touched.
        std::fs::remove_file(dir.join(COMMIT_RECORD)).unwrap();
        drop(RunLock::acquire(&dir).unwrap());
        assert_eq!(names(&dir), [".lock", "step-000002"]);
        // A broken record: nothing is deleted, and a commit replaces the record.
        std::fs::write(dir.join(COMMIT_RECORD), "{").unwrap();
        let lock = RunLock::acquire(&dir).unwrap();
        assert!(dir.join("step-000002").exists());
        lock.commit(3, &[("a.txt", &text("new"))]).unwrap();
        assert_eq!(Checkpoint::latest(&dir).unwrap().unwrap().step, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_altered_or_forged_file_is_found_when_opened() {
        let dir = temp("record");
        let lock = RunLock::acquire(&dir).unwrap();
        let c = lock.commit(3, &[("a.txt", &text("hello")), ("b.txt", &text("world"))]).unwrap();
        std::fs::write(c.path("a.txt"), "hel").unwrap();
        let err = c.file("a.txt").unwrap_err().to_string();
        assert!(err.contains("committed 5 bytes, the file has 3"), "{err}");
        std::fs::write(c.path("a.txt"), "jello").unwrap();
        let err = c.file("a.txt").unwrap_err().to_string();
        assert!(err.contains("its contents changed since the checkpoint of step 3"), "{err}");
        // The other file is unharmed.
        assert!(c.file("b.txt").is_ok());
        std::fs::remove_file(c.path("b.txt")).unwrap();
        assert!(c.file("b.txt").unwrap_err().to_string().contains("missing"));
        let record = dir.join(COMMIT_RECORD);
        std::fs::write(
            &record,
            r#"{"format": "typeformer-checkpoint", "step": 1, "dir": "../elsewhere", "files": {}}"#,
        )
        .unwrap();
        let err = Checkpoint::latest(&dir).unwrap_err().to_string();
        assert!(err.contains("not a step directory"), "{err}");
        std::fs::write(&record, "{").unwrap();
        assert!(Checkpoint::latest(&dir).unwrap_err().to_string().contains("not a commit record"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn step_directory_names() {
        assert_eq!(step_dir_name(20), "step-000020");
        assert!(is_step_dir_name("step-000020") && is_step_dir_name("step-1234567.2"));
        assert!(!is_step_dir_name("step-") && !is_step_dir_name("step-1/..") && !is_step_dir_name(".staging-step-1"));
        assert!(!is_step_dir_name("step-1."));
    }
}
