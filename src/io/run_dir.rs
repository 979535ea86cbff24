//! A run directory: the checkpoints of one training run, committed as one unit, and the lock
//! that says which process owns the run.
//!
//! ```text
//! DIR/
//!   checkpoint.json        the commit record: which step directory holds the checkpoint
//!   step-000200/           the checkpoint: model.safetensors, optimizer.safetensors, loss.csv, ...
//!   .lock                  held (an OS file lock) while a run writes here
//! ```
//!
//! A checkpoint is written into a staging directory, synced, renamed to its step directory, and
//! only then named in `checkpoint.json`, which is replaced atomically: that rename is the commit.
//! Until it happens the previous checkpoint stays the committed one, whole; after it the previous
//! step directory is removed. Whatever an interrupted commit leaves (a staging directory, a step
//! directory nobody names, a temporary record) is removed by the next run that takes the lock,
//! and ignored by readers meanwhile. Run directories written before this layout (the files at
//! the top level) are still read.

use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes one file of a checkpoint at the path it is given.
pub type FileWriter<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// The commit record's file name.
pub const COMMIT_RECORD: &str = "checkpoint.json";
const LOCK: &str = ".lock";
const STAGING_PREFIX: &str = ".staging-";
const FORMAT: &str = "typeformer-checkpoint";

/// A committed checkpoint: the directory that holds its files, and the step it is at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The directory of the checkpoint's files (the run directory itself for the old layout).
    pub dir: PathBuf,
    /// Training steps done when it was written.
    pub step: usize,
    /// Its files and their sizes in bytes, as committed (empty for the old layout).
    pub files: BTreeMap<String, u64>,
}

impl Checkpoint {
    /// The committed checkpoint of the run directory `run_dir`, or `None` when it holds none.
    /// Reading needs no lock: a commit replaces the record atomically, so a reader sees the old
    /// checkpoint or the new one. Errors: an unreadable or malformed record, or a committed file
    /// that is missing or of another size than was committed (a truncated copy).
    pub fn latest(run_dir: &Path) -> Result<Option<Self>> {
        let record = run_dir.join(COMMIT_RECORD);
        let text = match std::fs::read_to_string(&record) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The layout before commit records: the files at the top level.
                return Ok(run_dir.join("model.safetensors").exists().then(|| Checkpoint {
                    run_dir: run_dir.into(),
                    dir: run_dir.into(),
                    step: 0,
                    files: BTreeMap::new(),
                }));
            }
            Err(e) => return Err(Error::Io { path: record, source: e }),
        };
        let bad = |reason: String| Error::BadFile { path: record.clone(), reason };
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not a commit record ({e})")))?;
        if json.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(bad(format!("not a commit record: no \"format\": \"{FORMAT}\"")));
        }
        let step = json.get("step").and_then(Value::as_u64).ok_or_else(|| bad("no step".into()))? as usize;
        let name = json.get("dir").and_then(Value::as_str).ok_or_else(|| bad("no dir".into()))?;
        if !is_step_dir_name(name) {
            return Err(bad(format!("`{name}` is not a step directory of this run")));
        }
        let mut files = BTreeMap::new();
        for (file, size) in json.get("files").and_then(Value::as_object).ok_or_else(|| bad("no files".into()))? {
            let size = size.as_u64().ok_or_else(|| bad(format!("no size for {file}")))?;
            if file.contains(['/', '\\']) || file.starts_with('.') {
                return Err(bad(format!("`{file}` is not a file name")));
            }
            files.insert(file.clone(), size);
        }
        let checkpoint = Checkpoint { run_dir: run_dir.into(), dir: run_dir.join(name), step, files };
        for (file, &size) in &checkpoint.files {
            let path = checkpoint.dir.join(file);
            let found = std::fs::metadata(&path).map_err(Error::io(&path))?.len();
            if found != size {
                return Err(Error::BadFile {
                    path,
                    reason: format!("the checkpoint of step {step} committed {size} bytes, the file has {found}"),
                });
            }
        }
        Ok(Some(checkpoint))
    }

    /// The path of one of the checkpoint's files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// True when the checkpoint has `name` (for the old layout: when the file exists).
    pub fn has(&self, name: &str) -> bool {
        if self.files.is_empty() {
            self.file(name).exists()
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

/// Ownership of a run directory: while it lives, this process alone writes checkpoints there.
///
/// The lock is an OS file lock on `DIR/.lock`, released when the process ends however it ends;
/// a second run on the same directory gets [`Error::Busy`].
#[derive(Debug)]
pub struct RunLock {
    dir: PathBuf,
    _lock: File,
}

impl RunLock {
    /// Creates `dir` if needed, takes its lock, and removes what interrupted commits left there.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let path = dir.join(LOCK);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(Error::io(&path))?;
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
        let lock = Self { dir: dir.into(), _lock: file };
        lock.remove_leftovers()?;
        Ok(lock)
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a checkpoint of `step` and commits it: each `(name, write)` writes the file
    /// `name` at the path it is given, into a staging directory; then the staging directory
    /// becomes the step directory and the commit record names it. Returns the new checkpoint.
    /// On an error nothing is committed and the previous checkpoint stays as it was.
    pub fn commit(&self, step: usize, files: &[(&str, FileWriter)]) -> Result<Checkpoint> {
        let previous = Checkpoint::latest(&self.dir).ok().flatten();
        let staging = self.dir.join(format!("{STAGING_PREFIX}{}", step_dir_name(step)));
        remove_path(&staging)?;
        std::fs::create_dir(&staging).map_err(Error::io(&staging))?;
        let mut sizes = BTreeMap::new();
        for (name, write) in files {
            let path = staging.join(name);
            write(&path)?;
            crash_point(&format!("wrote {name}"), step);
            let file = File::open(&path).map_err(Error::io(&path))?;
            file.sync_all().map_err(Error::io(&path))?;
            sizes.insert(name.to_string(), file.metadata().map_err(Error::io(&path))?.len());
        }
        sync_dir(&staging)?;
        // A step directory of this step may exist already (a run replaced with --force, or the
        // same step committed again): the new one takes the next free name.
        let name = (0..)
            .map(|k| if k == 0 { step_dir_name(step) } else { format!("{}.{k}", step_dir_name(step)) })
            .find(|n| !self.dir.join(n).exists())
            .expect("a free name");
        let final_dir = self.dir.join(&name);
        std::fs::rename(&staging, &final_dir).map_err(Error::io(&final_dir))?;
        sync_dir(&self.dir)?;
        crash_point("renamed", step);
        let record = json!({ "format": FORMAT, "step": step, "dir": name, "files": sizes });
        let tmp = self.dir.join(format!(".{COMMIT_RECORD}.tmp-{}", std::process::id()));
        {
            let mut file = File::create(&tmp).map_err(Error::io(&tmp))?;
            file.write_all(format!("{record:#}\n").as_bytes()).map_err(Error::io(&tmp))?;
            file.sync_all().map_err(Error::io(&tmp))?;
        }
        crash_point("wrote the record", step);
        let record_path = self.dir.join(COMMIT_RECORD);
        std::fs::rename(&tmp, &record_path).map_err(Error::io(&record_path))?;
        sync_dir(&self.dir)?;
        crash_point("committed", step);
        let committed = Checkpoint { run_dir: self.dir.clone(), dir: final_dir, step, files: sizes };
        if let Some(previous) = previous {
            self.retire(&previous)?;
        }
        crash_point("removed the previous checkpoint", step);
        Ok(committed)
    }

    /// Removes a checkpoint that a newer commit replaced: its step directory, or for the old
    /// layout its top-level files.
    fn retire(&self, previous: &Checkpoint) -> Result<()> {
        if previous.dir == self.dir {
            for name in ["model.safetensors", "optimizer.safetensors", "loss.csv"] {
                remove_path(&self.dir.join(name))?;
            }
            Ok(())
        } else {
            remove_path(&previous.dir)
        }
    }

    /// Removes staging directories, step directories the commit record does not name, and
    /// temporary files: what a commit interrupted before or after its record left.
    fn remove_leftovers(&self) -> Result<()> {
        let committed = Checkpoint::latest(&self.dir)?.map(|c| c.dir);
        let entries = std::fs::read_dir(&self.dir).map_err(Error::io(&self.dir))?;
        for entry in entries {
            let entry = entry.map_err(Error::io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let stale = name.starts_with(STAGING_PREFIX)
                || (name.starts_with('.') && name.contains(".tmp-"))
                || (is_step_dir_name(&name) && committed.as_ref() != Some(&path));
            if stale {
                remove_path(&path)?;
            }
        }
        Ok(())
    }
}

/// `step-000200`, so that directories sort by step.
fn step_dir_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// `step-N` or `step-N.K`.
fn is_step_dir_name(name: &str) -> bool {
    name.strip_prefix("step-").is_some_and(|rest| {
        let (step, k) = rest.split_once('.').unwrap_or((rest, "0"));
        !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()) && k.bytes().all(|b| b.is_ascii_digit())
    })
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
    points.extend(["renamed", "wrote the record", "committed", "removed the previous checkpoint"].map(String::from));
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

    #[test]
    fn a_commit_replaces_the_previous_checkpoint_and_leaves_nothing_else() {
        let dir = temp("commit");
        let lock = RunLock::acquire(&dir).unwrap();
        assert_eq!(Checkpoint::latest(&dir).unwrap(), None);
        let first = lock.commit(2, &[("a.txt", &text("one")), ("b.txt", &text("two"))]).unwrap();
        assert_eq!(Checkpoint::latest(&dir).unwrap().as_ref(), Some(&first));
        let second = lock.commit(4, &[("a.txt", &text("three"))]).unwrap();
        assert_eq!(second.step, 4);
        assert_eq!(std::fs::read_to_string(second.file("a.txt")).unwrap(), "three");
        assert!(!first.dir.exists(), "the replaced checkpoint is removed");
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, [".lock", "checkpoint.json", "step-000004"]);
        // The same step again takes the next name.
        let again = lock.commit(4, &[("a.txt", &text("four"))]).unwrap();
        assert!(again.dir.ends_with("step-000004.1"), "{:?}", again.dir);
        assert!(!second.dir.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_commits_nothing_and_a_second_owner_is_refused() {
        let dir = temp("fail");
        let lock = RunLock::acquire(&dir).unwrap();
        let first = lock.commit(1, &[("a.txt", &text("one"))]).unwrap();
        let fail = |_: &Path| Err(Error::InvalidConfig("disk full".into()));
        assert!(lock.commit(2, &[("a.txt", &text("two")), ("b.txt", &fail)]).is_err());
        assert_eq!(Checkpoint::latest(&dir).unwrap().as_ref(), Some(&first));
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");
        drop(lock);
        // The next owner removes the staging directory the failed commit left.
        let _lock = RunLock::acquire(&dir).unwrap();
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!names.iter().any(|n| n.starts_with(STAGING_PREFIX)), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_or_forged_record_is_an_error() {
        let dir = temp("record");
        let lock = RunLock::acquire(&dir).unwrap();
        let c = lock.commit(3, &[("a.txt", &text("hello"))]).unwrap();
        std::fs::write(c.file("a.txt"), "hel").unwrap();
        let err = Checkpoint::latest(&dir).unwrap_err().to_string();
        assert!(err.contains("committed 5 bytes, the file has 3"), "{err}");
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
    }
}
