//! `kind = "file"`: the key in a file of its own, written atomically.
//!
//! Also home of [`AtomicWriter`], the one place that replaces a consumer's file: a temporary
//! file in the same directory, created exclusively (`O_EXCL`) with its final mode, owner and
//! group, written and fsynced, renamed over the target, then the directory fsynced. A reader
//! sees the old content or the new one, never a half-written key, and a crash leaves at worst
//! a stray temporary file, never a truncated key file.
//!
//! Without an `owner` or `group`, a file root writes into another user's directory belongs
//! to that directory's owner and group (see [`super::lock::hand_to_directory_owner`]).
//!
//! Renaming replaces the path itself: if the path is a symlink, the link is replaced by a
//! regular file rather than its target being written through.

use super::lock::FileLock;
use super::{Delivery, DeliveryError, Target};
use crate::config::{DeliveryConfig, FileFormat};
use async_trait::async_trait;
use secrecy::ExposeSecret;
use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// Replaces one file atomically with given contents, mode, owner and group.
#[derive(Debug, Clone)]
pub(crate) struct AtomicWriter {
    pub path: PathBuf,
    pub mode: u32,
    /// User name or numeric uid; resolved at each write (the account may appear later).
    pub owner: Option<String>,
    /// Group name or numeric gid.
    pub group: Option<String>,
    /// How long to wait for another delivery's lock on this file (see [`super::lock`]).
    pub lock_wait: Duration,
}

impl AtomicWriter {
    /// Builds the writer of a `file` or `env_file` target.
    pub(crate) fn from_config(
        config: &DeliveryConfig,
        target: &str,
    ) -> Result<Self, DeliveryError> {
        let invalid = |reason: &str| DeliveryError::Config {
            target: target.to_string(),
            reason: reason.to_string(),
        };
        let path = config
            .path
            .clone()
            .ok_or_else(|| invalid("`path` is missing"))?;
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(invalid("`path` must be an absolute file path"));
        }
        let mode = config
            .mode()
            .ok_or_else(|| invalid("`mode` is not a valid mode"))?;
        Ok(AtomicWriter {
            path,
            mode,
            owner: config.owner.as_ref().map(|o| o.get_ref().clone()),
            group: config.group.as_ref().map(|g| g.get_ref().clone()),
            lock_wait: super::lock::LOCK_WAIT,
        })
    }

    /// Takes the cross-process lock that guards this file; hold it across a read and the
    /// [`AtomicWriter::replace`] that follows it. Blocking.
    pub(crate) fn lock(&self, target: &str) -> Result<FileLock, DeliveryError> {
        super::lock::lock(&self.path, target, self.lock_wait)
    }

    /// Replaces the file with `contents` under its lock. Blocking: call from
    /// `spawn_blocking`. `target` names the target in errors.
    pub(crate) fn write(&self, target: &str, contents: &[u8]) -> Result<(), DeliveryError> {
        let _held = self.lock(target)?;
        self.replace(target, contents)
    }

    /// Replaces the file with `contents`; the caller holds [`AtomicWriter::lock`].
    pub(crate) fn replace(&self, target: &str, contents: &[u8]) -> Result<(), DeliveryError> {
        let io = |action: String| {
            let target = target.to_string();
            move |source| DeliveryError::Io {
                target,
                action,
                source,
            }
        };
        let uid = self
            .owner
            .as_deref()
            .map(|name| resolve_user(target, name))
            .transpose()?;
        let gid = self
            .group
            .as_deref()
            .map(|name| resolve_group(target, name))
            .transpose()?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let file_name = self
            .path
            .file_name()
            .ok_or_else(|| DeliveryError::Config {
                target: target.to_string(),
                reason: "`path` has no file name".into(),
            })?
            .to_string_lossy()
            .into_owned();

        let (mut file, temp) = create_temp(dir, &file_name, self.mode).map_err(io(format!(
            "creating a temporary file in {}",
            dir.display()
        )))?;
        let mut guard = RemoveOnDrop(Some(temp.clone()));
        // The mode given to open(2) is filtered by the umask; set it exactly.
        file.set_permissions(Permissions::from_mode(self.mode))
            .map_err(io(format!("setting the mode of {}", temp.display())))?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&file, uid, gid)
                .map_err(io(format!("changing the owner of {}", temp.display())))?;
        } else {
            // The file a root `keyrotd key import` delivers must stay usable by the service
            // (an env file is read back and merged at the next delivery).
            super::lock::hand_to_directory_owner(&file, &temp)
                .map_err(io(format!("changing the owner of {}", temp.display())))?;
        }
        file.write_all(contents)
            .map_err(io(format!("writing {}", temp.display())))?;
        file.sync_all()
            .map_err(io(format!("syncing {}", temp.display())))?;
        drop(file);
        std::fs::rename(&temp, &self.path).map_err(io(format!(
            "renaming {} to {}",
            temp.display(),
            self.path.display()
        )))?;
        guard.0 = None;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("syncing directory {}", dir.display())))?;
        Ok(())
    }
}

/// Creates `.{name}.keyrotd-{pid}-{random}` exclusively with `mode`.
fn create_temp(dir: &Path, name: &str, mode: u32) -> std::io::Result<(File, PathBuf)> {
    let mut attempts = 0;
    loop {
        let temp = dir.join(format!(
            ".{name}.keyrotd-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
        {
            Ok(file) => return Ok((file, temp)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                attempts += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Removes a temporary file unless the write got as far as renaming it.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn resolve_user(target: &str, name: &str) -> Result<u32, DeliveryError> {
    resolve(target, "user", name, crate::accounts::user_id(name))
}

fn resolve_group(target: &str, name: &str) -> Result<u32, DeliveryError> {
    resolve(target, "group", name, crate::accounts::group_id(name))
}

fn resolve(
    target: &str,
    what: &'static str,
    name: &str,
    found: nix::Result<Option<u32>>,
) -> Result<u32, DeliveryError> {
    match found {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(DeliveryError::UnknownAccount {
            target: target.to_string(),
            what,
            name: name.to_string(),
        }),
        Err(errno) => Err(DeliveryError::Io {
            target: target.to_string(),
            action: format!("looking up {what} {name:?}"),
            source: errno.into(),
        }),
    }
}

/// Runs a blocking write on the blocking pool.
pub(crate) async fn write_blocking(
    writer: AtomicWriter,
    target: String,
    contents: Zeroizing<Vec<u8>>,
) -> Result<(), DeliveryError> {
    let name = target.clone();
    tokio::task::spawn_blocking(move || writer.write(&target, &contents))
        .await
        .map_err(|join| DeliveryError::Io {
            target: name,
            action: "writing".into(),
            source: std::io::Error::other(join.to_string()),
        })?
}

/// `kind = "file"`.
#[derive(Debug, Clone)]
pub(crate) struct FileTarget {
    writer: AtomicWriter,
    format: FileFormat,
}

impl FileTarget {
    pub(crate) fn from_config(config: &DeliveryConfig) -> Result<Self, DeliveryError> {
        let described = match &config.path {
            Some(path) => format!("file {}", path.display()),
            None => "file".to_string(),
        };
        Ok(FileTarget {
            writer: AtomicWriter::from_config(config, &described)?,
            format: config.format(),
        })
    }
}

#[async_trait]
impl Target for FileTarget {
    fn describe(&self) -> String {
        format!("file {}", self.writer.path.display())
    }

    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        let key = delivery.key.expose_secret();
        let mut contents = Zeroizing::new(Vec::with_capacity(key.len() + 1));
        contents.extend_from_slice(key.as_bytes());
        if self.format == FileFormat::Line {
            if key.contains(['\n', '\r']) {
                return Err(DeliveryError::UnsuitableKey {
                    target: self.describe(),
                    reason: "it contains a line break, which format \"line\" cannot hold (use format = \"raw\")".into(),
                });
            }
            contents.push(b'\n');
        }
        write_blocking(self.writer.clone(), self.describe(), contents).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path) -> AtomicWriter {
        AtomicWriter {
            path: dir.join("key"),
            mode: 0o640,
            owner: None,
            group: None,
            lock_wait: super::super::lock::LOCK_WAIT,
        }
    }

    #[test]
    fn writes_the_contents_with_the_configured_mode() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path());
        w.write("t", b"one").unwrap();
        let meta = std::fs::metadata(&w.path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read(&w.path).unwrap(), b"one");
    }

    #[test]
    fn numeric_owner_and_group_of_the_current_user_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        w.owner = Some(uid.to_string());
        w.group = Some(gid.to_string());
        w.write("t", b"x").unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&w.path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    }

    #[test]
    fn unknown_user_is_a_clear_error_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.owner = Some("no-such-user-keyrotd".into());
        let err = w.write("file k", b"x").unwrap_err().to_string();
        assert_eq!(err, "file k: unknown user \"no-such-user-keyrotd\"");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        // Only the lock file stays: it is kept so that every process locks the same inode.
        assert_eq!(left, [".key.keyrotd.lock"]);
    }

    #[test]
    fn a_missing_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir.path().join("absent"));
        let err = w.write("file k", b"x").unwrap_err().to_string();
        assert!(
            err.contains("opening lock file") && err.contains("absent"),
            "{err}"
        );
    }
}
