//! The cross-process lock around a delivery's read → modify → write-temp → fsync → rename.
//!
//! The daemon and a `keyrotd key …` command run in different processes and may deliver to
//! the same file at once (two credentials sharing one env file): without a lock each reads
//! the old file, adds its own line and renames its version over the other's, so one new key
//! is lost. A mutex inside one process cannot see the other process.
//!
//! The lock is an advisory `flock(2)` (std's [`File::try_lock`]) on a lock file beside the
//! target, `.{name}.keyrotd.lock`, never on the target itself: the target is replaced by a
//! rename, so a lock on it would guard an inode that is no longer the file. The lock file is
//! left in place after use (deleting it would let two processes lock two different inodes
//! of the same name). `flock` locks belong to an open file description, so two threads of
//! one process that each open the lock file also exclude each other, and the kernel drops
//! the lock when its holder dies (a SIGKILLed delivery never leaves it held).
//!
//! Waiting is bounded: a holder only keeps the lock for one small file write, so a lock that
//! stays taken past [`LOCK_WAIT`] means something is wrong (a stopped process, a hung
//! file system), and the delivery fails with an error naming the lock file instead of
//! hanging the rotation.

use super::DeliveryError;
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a delivery waits for another process's delivery to the same file.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The lock file that guards `path`: `.{name}.keyrotd.lock` in the same directory.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    dir.join(format!(".{name}.keyrotd.lock"))
}

/// A held lock; released when dropped (closing the file releases the `flock`).
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

/// Takes the lock guarding `path`, waiting at most `wait`. Blocking: call it from
/// `spawn_blocking`. `target` names the target in errors.
pub(crate) fn lock(path: &Path, target: &str, wait: Duration) -> Result<FileLock, DeliveryError> {
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| DeliveryError::Io {
            target: target.to_string(),
            action: format!("opening lock file {}", lock_path.display()),
            source,
        })?;
    // Made by root (an operator's `keyrotd key import`), a 0600 lock file would lock the
    // service user out of every later delivery to this file (EACCES).
    hand_to_directory_owner(&file, &lock_path).map_err(|source| DeliveryError::Io {
        target: target.to_string(),
        action: format!(
            "handing lock file {} to its directory's owner",
            lock_path.display()
        ),
        source,
    })?;
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(FileLock { _file: file }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(source)) => {
                return Err(DeliveryError::Io {
                    target: target.to_string(),
                    action: format!("locking {}", lock_path.display()),
                    source,
                })
            }
        }
        if started.elapsed() >= wait {
            return Err(DeliveryError::LockTimeout {
                target: target.to_string(),
                lock_file: lock_path,
                waited: crate::config::format_duration(wait),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// When root writes into a directory another user owns (the service user's, or a consumer's
/// setgid directory), the new file `file` at `path` is given to the directory's owner and
/// group: a root-owned file there would shut the service, which runs as that user, out of
/// it. Files that are not root's, or in root's directories, are left alone.
pub(crate) fn hand_to_directory_owner(file: &File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if file.metadata()?.uid() != 0 {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = std::fs::metadata(dir)?;
    if dir.uid() == 0 {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(dir.uid()), Some(dir.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_sits_beside_the_target() {
        assert_eq!(
            lock_path(Path::new("/etc/app/env")),
            Path::new("/etc/app/.env.keyrotd.lock")
        );
    }

    #[test]
    fn a_second_holder_waits_a_bounded_time_and_names_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("env");
        let held = lock(&target, "env file x", LOCK_WAIT).unwrap();
        let err = lock(&target, "env file x", Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("env file x: ")
                && err.contains(".env.keyrotd.lock")
                && err.contains("another delivery"),
            "{err}"
        );
        drop(held);
        lock(&target, "env file x", Duration::from_millis(50)).unwrap();
    }
}
