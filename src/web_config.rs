//! TLS and basic auth for the HTTP endpoint, configured in node_exporter's web-config
//! format (`--web.config.file`, or `[daemon] web_config_file`).
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: ca.crt
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt hash
//! ```
//!
//! The file is read once at start-up; a bad file is a start-up error, never a silently open
//! endpoint. Unknown fields are errors, as in node_exporter. bcrypt is deliberately slow, so
//! a successful verification is cached under a SHA-256 of the credentials (never the
//! password itself), like node_exporter does.

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio_rustls::TlsAcceptor;

/// Most cached successful verifications kept; the cache is emptied when it is full.
const CACHE_LIMIT: usize = 1024;

/// A web config that cannot be used, with the file it came from.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct WebConfigError {
    pub file: PathBuf,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
}

/// A loaded, validated web config: the TLS acceptor (if any) and the basic-auth users.
pub struct WebConfig {
    file: PathBuf,
    tls: Option<TlsAcceptor>,
    users: BTreeMap<String, String>,
    /// SHA-256 of (user, password, stored hash) for credentials that verified.
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("file", &self.file)
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebConfig {
    /// Reads and validates a web-config file, loading every certificate and key it names.
    pub fn load(file: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(file).map_err(|err| WebConfigError {
            file: file.to_path_buf(),
            message: format!("cannot read web config file: {err}"),
        })?;
        Self::parse(file, &text)
    }

    /// Parses web-config YAML; relative paths in it are relative to `file`'s directory.
    pub(crate) fn parse(file: &Path, text: &str) -> Result<WebConfig, WebConfigError> {
        let fail = |message: String| WebConfigError {
            file: file.to_path_buf(),
            message,
        };
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig::default()
        } else {
            serde_norway::from_str::<Option<RawWebConfig>>(text)
                .map_err(|err| {
                    fail(match err.location() {
                        Some(at) => format!("{}:{}: {err}", at.line(), at.column()),
                        None => err.to_string(),
                    })
                })?
                .unwrap_or_default()
        };
        let base = file.parent().unwrap_or(Path::new("."));
        let tls = match raw.tls_server_config {
            Some(tls) => Some(build_tls(base, tls).map_err(fail)?),
            None => None,
        };
        let users = raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if user.is_empty() || user.contains(':') {
                return Err(fail(format!(
                    "basic_auth_users: user name {user:?} must be non-empty and without ':'"
                )));
            }
            if !is_bcrypt_hash(hash) {
                return Err(fail(format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash ($2a$/$2b$/$2y$, 60 characters); create one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
                )));
            }
        }
        Ok(WebConfig {
            file: file.to_path_buf(),
            tls: tls.map(|config| TlsAcceptor::from(Arc::new(config))),
            users,
            verified: Mutex::new(HashSet::new()),
        })
    }

    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The acceptor when the endpoint serves TLS.
    pub(crate) fn tls_acceptor(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// Whether requests need basic auth.
    pub(crate) fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks an `Authorization` header value. Always true when no users are configured.
    /// bcrypt runs on a blocking thread; an unknown user costs the same as a wrong password.
    pub(crate) async fn authorize(self: &Arc<Self>, header: Option<&[u8]>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = header.and_then(parse_basic) else {
            return false;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            // Spend the same time on an unknown user as on a known one.
            None => (
                self.users.values().next().expect("non-empty").clone(),
                false,
            ),
        };
        let key = cache_key(&user, &password, &hash);
        if known && self.cached(&key) {
            return true;
        }
        let verified = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if verified && known {
            let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key);
            return true;
        }
        false
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }
}

fn cache_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut digest = Sha256::new();
    for part in [user, password, hash] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    digest.finalize().into()
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, credentials) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn is_bcrypt_hash(hash: &str) -> bool {
    let bytes = hash.as_bytes();
    hash.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && bytes[4].is_ascii_digit()
        && bytes[5].is_ascii_digit()
        && bytes[6] == b'$'
}

fn tls_version(
    name: &str,
    field: &str,
) -> Result<&'static rustls::SupportedProtocolVersion, String> {
    match name {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => Err(format!(
            "tls_server_config.{field}: {name} is not supported (insecure); use TLS12 or TLS13"
        )),
        other => Err(format!(
            "tls_server_config.{field}: unknown TLS version {other:?}; use TLS12 or TLS13"
        )),
    }
}

fn build_tls(base: &Path, tls: RawTls) -> Result<rustls::ServerConfig, String> {
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let (cert_file, key_file) = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => (resolve(cert), resolve(key)),
        (None, _) => return Err("tls_server_config: `cert_file` is required".into()),
        (_, None) => return Err("tls_server_config: `key_file` is required".into()),
    };
    let (certs, key) = load_server_identity(&cert_file, &key_file)?;
    let versions = protocol_versions(&tls)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|err| format!("tls_server_config: {err}"))?;

    let auth_type = tls.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let verify = client_cert_requirement(auth_type)?;
    let builder =
        match (verify, &tls.client_ca_file) {
            (None, None) => builder.with_no_client_auth(),
            (None, Some(_)) => {
                return Err(
                    "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert"
                        .into(),
                )
            }
            (Some(_), None) => {
                return Err(format!(
                    "tls_server_config: client_auth_type {auth_type} needs client_ca_file"
                ))
            }
            (Some(required), Some(ca_file)) => builder.with_client_cert_verifier(
                client_cert_verifier(&resolve(ca_file), required, provider)?,
            ),
        };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| format!("cert_file/key_file: {err}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The server's certificate chain and private key, read from their PEM files.
fn load_server_identity(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|err| format!("cert_file {}: {err}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert_file {}: no PEM certificate in it",
            cert_file.display()
        ));
    }
    // The key error never shows the key file's content.
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|err| format!("key_file {}: {err}", key_file.display()))?;
    Ok((certs, key))
}

/// The TLS versions between `min_version` and `max_version`, both inclusive.
fn protocol_versions(
    tls: &RawTls,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let min = tls_version(tls.min_version.as_deref().unwrap_or("TLS12"), "min_version")?;
    let max = tls_version(tls.max_version.as_deref().unwrap_or("TLS13"), "max_version")?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| {
                let rank = u16::from(v.version);
                rank >= u16::from(min.version) && rank <= u16::from(max.version)
            })
            .collect();
    if versions.is_empty() {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    Ok(versions)
}

/// Whether `client_auth_type` verifies client certificates: `None` for no client
/// authentication, `Some(required)` otherwise. Types that accept unverified certificates
/// are refused.
fn client_cert_requirement(auth_type: &str) -> Result<Option<bool>, String> {
    match auth_type {
        "" | "NoClientCert" => Ok(None),
        "VerifyClientCertIfGiven" => Ok(Some(false)),
        "RequireAndVerifyClientCert" => Ok(Some(true)),
        "RequestClientCert" | "RequireAnyClientCert" => Err(format!(
            "tls_server_config.client_auth_type: {auth_type} accepts unverified client certificates and is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )),
        other => Err(format!(
            "tls_server_config.client_auth_type: unknown value {other:?}; use NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )),
    }
}

/// A verifier of client certificates against the CAs in `ca_file`; a client without a
/// certificate is let through unless `required`.
fn client_cert_verifier(
    ca_file: &Path,
    required: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(ca_file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("client_ca_file {}: {err}", ca_file.display()))?;
    let (added, _) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(format!(
            "client_ca_file {}: no usable CA certificate in it",
            ca_file.display()
        ));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let verifier = if required {
        verifier
    } else {
        verifier.allow_unauthenticated()
    };
    verifier
        .build()
        .map_err(|err| format!("client_ca_file {}: {err}", ca_file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("user:pa:ss")
        );
        assert_eq!(
            parse_basic(header.as_bytes()),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(parse_basic(b"Bearer abc"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
    }

    #[test]
    fn empty_file_means_plain_http_without_auth() {
        let config = WebConfig::parse(Path::new("/x/web.yml"), "").unwrap();
        assert!(config.tls_acceptor().is_none());
        assert!(!config.requires_auth());
        let config = WebConfig::parse(Path::new("/x/web.yml"), "---\n").unwrap();
        assert!(!config.requires_auth());
    }

    #[test]
    fn bad_files_are_errors_with_reasons() {
        let cases = [
            ("tls_server_config:\n  cert_file: a.crt\n", "key_file"),
            ("basic_auth_users:\n  alice: plaintext\n", "bcrypt"),
            ("unknown_field: 1\n", "unknown field"),
            ("tls_server_config: [\n", "web.yml"),
        ];
        for (text, expected) in cases {
            let err = WebConfig::parse(Path::new("/x/web.yml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text:?} gave {err}");
            assert!(!err.contains("plaintext"), "{err}");
        }
    }
}
