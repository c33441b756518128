//! Durability: the data directory (`--data-dir`), which holds the journal of DDL and local
//! writes ([`journal`]), checkpoints of the base relations and source progress
//! ([`checkpoint`]), and a lock file that keeps a second process out.
//!
//! Layout: `DIR/LOCK` (the holder's pid), `DIR/journal/NNNNNNNNNN.log`,
//! `DIR/checkpoints/checkpoint-NNNNNNNNNN.cfck`. On start the engine loads the newest readable
//! checkpoint, replays the journal segments after it, and resumes each source from the
//! checkpoint's progress (see `restore`).

mod checkpoint;
mod checkpointer;
mod definitions;
mod ipc;
mod journal;
mod restore;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use checkpointer::CheckpointStats;
pub(crate) use checkpointer::Checkpointer;
pub(crate) use definitions::{Definition, created_object, difference};
pub(crate) use journal::Journal;
pub use restore::RestoreReport;

use crate::error::{EngineError, Result};

/// Bytes with one to three random bytes overwritten, and every third round cut short: what
/// the readers of stored files must turn into errors, never panics.
#[cfg(test)]
pub(crate) fn randomly_damaged(bytes: &[u8], rng: &mut rand::rngs::StdRng, round: usize) -> Vec<u8> {
    use rand::Rng;
    let mut damaged = bytes.to_vec();
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..damaged.len());
        damaged[at] = rng.random();
    }
    if round.is_multiple_of(3) {
        damaged.truncate(rng.random_range(0..damaged.len()));
    }
    damaged
}

/// Runs `work` on every item, spread over the machine's cores (a checkpoint's relations and
/// views are captured and restored independently of each other); results in item order.
pub(crate) fn in_parallel<T: Send, R: Send>(items: Vec<T>, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len());
    if threads <= 1 {
        return items.into_iter().map(work).collect();
    }
    let mut shares: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    for (index, item) in items.into_iter().enumerate() {
        shares[index % threads].push((index, item));
    }
    let work = &work;
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| scope.spawn(move || share.into_iter().map(|(i, item)| (i, work(item))).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

/// Where state is kept, and how often checkpoints are taken.
#[derive(Debug, Clone)]
pub struct DurabilityOptions {
    pub data_dir: PathBuf,
    /// A checkpoint is taken this often when anything changed.
    pub checkpoint_interval: Duration,
    /// ... or as soon as this many epochs were applied since the last one.
    pub checkpoint_epochs: u64,
}

impl DurabilityOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self { data_dir: data_dir.into(), checkpoint_interval: Duration::from_secs(10), checkpoint_epochs: 10_000 }
    }
}

/// Creates a directory (and its parents) readable by its owner only.
pub(crate) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Options for a file created readable and writable by its owner only.
pub(crate) fn private_file() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

/// Restricts a data directory and everything in it to its owner (0700 directories, 0600
/// files).
fn make_private(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// An open, locked data directory.
#[derive(Debug)]
pub(crate) struct DataDir {
    root: PathBuf,
    /// Holds the lock for as long as the directory is open.
    _lock: File,
}

impl DataDir {
    /// Creates (when needed) and locks the directory; refused while another process has it.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let failed = |what: &str, error: std::io::Error| {
            EngineError::Durability(format!("{what} data directory {}: {error}", root.display()))
        };
        create_private_dir(root).map_err(|e| failed("creating", e))?;
        // Definitions in the journal and checkpoints can hold credentials: only the owner
        // reads the directory, whatever an earlier version left.
        make_private(root).map_err(|e| failed("restricting access to", e))?;
        let path = root.join("LOCK");
        let mut lock = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| failed("opening the lock file of", e))?;
        if let Err(error) = lock.try_lock() {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            return Err(match error {
                fs::TryLockError::WouldBlock => EngineError::Durability(format!(
                    "data directory {} is in use by another changeflow process (pid {}, lock file {}); stop it, or \
                     give this one another --data-dir",
                    root.display(),
                    holder.trim(),
                    path.display()
                )),
                fs::TryLockError::Error(error) => failed("locking", error),
            });
        }
        lock.set_len(0)
            .and_then(|_| lock.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .and_then(|_| lock.sync_all())
            .map_err(|e| failed("writing the lock file of", e))?;
        Ok(Self { root: root.to_path_buf(), _lock: lock })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    pub(crate) fn checkpoint_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
}
