//! Encryption at rest: every stored secret is sealed with XChaCha20-Poly1305 under a 256-bit
//! master key, with associated data binding the ciphertext to its credential and version.
//!
//! The database is treated as untrusted (Vault's barrier model): a copied database file
//! reveals fingerprints and history, never a key. Swapping sealed blobs between rows makes
//! them fail to open, because the associated data names the row they belong to.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

const NONCE_LEN: usize = 24;
/// Version tag in the associated data; bump when the sealing scheme changes.
const AAD_SCHEME: &str = "keyrotd-seal-v1";
/// Name of the systemd credential (`LoadCredential=master-key:...`).
pub(crate) const MASTER_KEY_CREDENTIAL: &str = "master-key";
/// Conventional location of the master key outside systemd.
pub(crate) const DEFAULT_MASTER_KEY_PATH: &str = "/etc/keyrotd/master.key";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read master key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master key {path} is readable or writable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("master key {path} is malformed: expected 64 hexadecimal characters (256 bits)")]
    Malformed { path: PathBuf },
    #[error("cannot write master key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a sealed secret failed to open: wrong master key, or the row was tampered with")]
    Open,
    #[error("sealing failed")]
    Seal,
}

/// The 256-bit master key. Zeroed on drop, never printed.
pub struct MasterKey(SecretBox<[u8; 32]>);

impl MasterKey {
    pub fn generate() -> MasterKey {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let key = MasterKey(SecretBox::new(Box::new(bytes)));
        bytes.zeroize();
        key
    }

    /// Reads a key file: 64 hex digits (surrounding whitespace allowed). Refuses a file that
    /// group or others can read, as ssh does with private keys.
    pub fn load(path: &Path) -> Result<MasterKey, CryptoError> {
        let read_err = |source| CryptoError::Read {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_err)?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = std::fs::read_to_string(path).map_err(read_err)?;
        let result = Self::from_hex(text.trim()).ok_or_else(|| CryptoError::Malformed {
            path: path.to_path_buf(),
        });
        text.zeroize();
        result
    }

    fn from_hex(text: &str) -> Option<MasterKey> {
        let mut bytes = [0u8; 32];
        if text.len() != 64 || hex::decode_to_slice(text, &mut bytes).is_err() {
            bytes.zeroize();
            return None;
        }
        let key = MasterKey(SecretBox::new(Box::new(bytes)));
        bytes.zeroize();
        Some(key)
    }

    /// Writes the key as hex to a new file created with mode 0600 (refuses to overwrite).
    pub fn write_new(&self, path: &Path) -> Result<(), CryptoError> {
        use std::io::Write;
        let write_err = |source| CryptoError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        let mut text = hex::encode(self.0.expose_secret());
        text.push('\n');
        let result = file
            .write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(write_err);
        text.zeroize();
        result
    }

    /// Finds the master key: an explicit path, else the systemd credential, else the
    /// conventional file. Returns the path it used so errors can name it.
    pub(crate) fn locate(explicit: Option<&Path>) -> PathBuf {
        if let Some(path) = explicit {
            return path.to_path_buf();
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let candidate = Path::new(&dir).join(MASTER_KEY_CREDENTIAL);
            if candidate.exists() {
                return candidate;
            }
        }
        PathBuf::from(DEFAULT_MASTER_KEY_PATH)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

/// Seals and opens secrets for the store.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    key_id: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

/// A master key's public identifier: 16 hex digits of SHA-256 over a fixed label and the
/// key. It names the key in the database and in error messages; it reveals nothing usable
/// about a 256-bit random key, and the label keeps it apart from any other hash of it.
fn key_id(master: &MasterKey) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"keyrotd-master-key-id-v1\0");
    hasher.update(master.0.expose_secret());
    hex::encode(hasher.finalize())[..16].to_string()
}

fn associated_data(credential: &str, version_id: i64) -> Vec<u8> {
    format!("{AAD_SCHEME}\0{credential}\0{version_id}").into_bytes()
}

impl Sealer {
    pub fn new(master: &MasterKey) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(master.0.expose_secret().into()),
            key_id: key_id(master),
        }
    }

    /// The master key's identifier (see [`key_id`]): stored beside every sealed row and as
    /// the store's current master key, so a row sealed under another key is found by
    /// comparing ids, without trying to open it.
    pub(crate) fn key_id(&self) -> &str {
        &self.key_id
    }

    /// nonce || ciphertext+tag, bound to (credential, version).
    pub(crate) fn seal(
        &self,
        credential: &str,
        version_id: i64,
        secret: &SecretString,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(credential, version_id);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    pub fn open(
        &self,
        credential: &str,
        version_id: i64,
        sealed: &[u8],
    ) -> Result<SecretString, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let aad = associated_data(credential, version_id);
        let mut plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Open)?;
        let secret = String::from_utf8(plain.clone()).map_err(|_| CryptoError::Open);
        plain.zeroize();
        secret.map(SecretString::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_for_their_own_row_and_key() {
        let sealer = Sealer::new(&MasterKey::generate());
        let secret = SecretString::from("sk-canary-123");
        let sealed = sealer.seal("cred", 7, &secret).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"canary"));
        assert_eq!(
            sealer.open("cred", 7, &sealed).unwrap().expose_secret(),
            "sk-canary-123"
        );
        assert!(
            sealer.open("cred", 8, &sealed).is_err(),
            "swapped version must fail"
        );
        assert!(
            sealer.open("other", 7, &sealed).is_err(),
            "swapped credential must fail"
        );
        let other = Sealer::new(&MasterKey::generate());
        assert!(
            other.open("cred", 7, &sealed).is_err(),
            "wrong master key must fail"
        );
    }

    #[test]
    fn key_ids_are_stable_per_key_and_differ_between_keys() {
        let key = MasterKey::generate();
        let id = Sealer::new(&key).key_id().to_string();
        assert_eq!(id.len(), 16);
        assert_eq!(Sealer::new(&key).key_id(), id);
        assert_ne!(Sealer::new(&MasterKey::generate()).key_id(), id);
        assert!(!id.contains(&hex::encode(key.0.expose_secret())[..16]));
    }

    #[test]
    fn key_files_round_trip_and_open_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::generate();
        key.write_new(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = MasterKey::load(&path).unwrap();
        let sealed = Sealer::new(&key)
            .seal("c", 1, &"x".to_string().into())
            .unwrap();
        assert!(Sealer::new(&loaded).open("c", 1, &sealed).is_ok());
        assert!(key.write_new(&path).is_err(), "must not overwrite");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            MasterKey::load(&path),
            Err(CryptoError::TooOpen { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            MasterKey::load(&path),
            Err(CryptoError::Malformed { .. })
        ));
    }
}
