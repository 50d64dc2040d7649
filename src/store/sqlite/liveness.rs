//! Which processes are using the database, for the one operation that must not run under a
//! live daemon: `master-key rotate`. Every daemon holds a shared `flock` on a lock file
//! beside the database (`<database>.lock`) for its lifetime; `master-key rotate` takes it
//! exclusively, without waiting, and refuses when it cannot. The kernel drops the lock when
//! the process dies (SIGKILL included), so it is never stale, and a daemon started during a
//! rotation waits for it. The lock is only the polite half: the store's master-key fence
//! (`installation.rs`) is what makes a daemon that holds an old key safe (its sealing
//! writes are refused in their transaction), and it is the half a PostgreSQL backend keeps,
//! where processes on other hosts share no file.

use crate::store::{StoreError, StoreResult};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A lock on the database's lock file, held until dropped.
#[derive(Debug)]
pub struct DatabaseLock {
    _lock: Flock<File>,
}

fn lock_path(database: &Path) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    PathBuf::from(path)
}

/// Opens the lock file read-only (a flock needs no write access, so a file root made is
/// usable by the service user), creating it empty (mode 0644) the first time.
fn open_lock_file(database: &Path) -> StoreResult<File> {
    let path = lock_path(database);
    let unwritable = |e: std::io::Error| StoreError::Unwritable {
        path: path.clone(),
        reason: e.to_string(),
    };
    match File::open(&path) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(unwritable)?;
            File::open(&path).map_err(unwritable)
        }
        Err(e) => Err(unwritable(e)),
    }
}

/// The daemon's lock, held for its lifetime; waits while `master-key rotate` runs. `None`
/// when the lock file cannot be made (a missing or read-only directory): opening the
/// database then fails with the error that names the cause, and if it does not, the
/// master-key fence still protects the store.
pub async fn lock_for_daemon(database: &Path) -> StoreResult<Option<DatabaseLock>> {
    let Ok(file) = open_lock_file(database) else {
        return Ok(None);
    };
    let path = lock_path(database);
    let lock = match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            tracing::warn!(lock = %path.display(), "the database is locked by `keyrotd master-key rotate`; waiting for it to finish");
            tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockShared))
                .await
                .map_err(|e| StoreError::Unwritable {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
                .map_err(|(_, errno)| StoreError::Unwritable {
                    path: path.clone(),
                    reason: errno.to_string(),
                })?
        }
    };
    Ok(Some(DatabaseLock { _lock: lock }))
}

/// `master-key rotate`'s lock: exclusive, refused with
/// [`StoreError::DaemonRunning`] while any daemon holds its shared lock.
pub fn lock_exclusive(database: &Path) -> StoreResult<DatabaseLock> {
    let file = open_lock_file(database)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(DatabaseLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(StoreError::DaemonRunning {
            path: database.to_path_buf(),
        }),
        Err((_, errno)) => Err(StoreError::Unwritable {
            path: lock_path(database),
            reason: errno.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exclusive_lock_is_refused_while_a_daemon_holds_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("k.db");
        let daemon = lock_for_daemon(&database).await.unwrap();
        let second_daemon = lock_for_daemon(&database).await.unwrap();
        assert!(matches!(
            lock_exclusive(&database),
            Err(StoreError::DaemonRunning { .. })
        ));
        drop(daemon);
        drop(second_daemon);
        let rotate = lock_exclusive(&database).unwrap();
        drop(rotate);
    }
}
