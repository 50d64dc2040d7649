//! `kind = "kubernetes"`: one key of a Secret, set through the API server.
//!
//! A JSON merge patch (`PATCH .../secrets/{name}`, `application/merge-patch+json`) sets only
//! `data[secret_key]`, so other keys of the Secret and its metadata stay as they are. When the
//! Secret does not exist (404) it is created (type `Opaque`, labelled
//! `app.kubernetes.io/managed-by: keyrotd`); when someone else created it in between (409)
//! the patch is tried once more. The service-account token is re-read at every delivery
//! because kubelet rotates it; the CA file, when the server is https, is the only trusted root.
//!
//! Error messages carry the HTTP status and the Kubernetes `Status.message`, with the key,
//! its base64 form and the token masked.

use super::{sanitize, Delivery, DeliveryError, Target};
use crate::config::DeliveryConfig;
use async_trait::async_trait;
use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::time::Duration;
use zeroize::Zeroizing;

pub(crate) const DEFAULT_API_SERVER: &str = "https://kubernetes.default.svc";
pub(crate) const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub(crate) const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The label put on Secrets keyrotd creates.
pub(crate) const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "keyrotd");

/// `kind = "kubernetes"`.
#[derive(Debug, Clone)]
pub(crate) struct KubernetesTarget {
    /// Base URL without a trailing slash.
    api_server: String,
    namespace: String,
    secret_name: String,
    secret_key: String,
    token_file: PathBuf,
    ca_file: PathBuf,
    timeout: Duration,
}

/// The API server of the pod we run in, from the variables kubelet sets, else the default.
pub(crate) fn in_cluster_api_server() -> String {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_default();
    if host.is_empty() || port.is_empty() {
        return DEFAULT_API_SERVER.to_string();
    }
    if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

impl KubernetesTarget {
    pub(crate) fn from_config(config: &DeliveryConfig) -> Result<Self, DeliveryError> {
        let field = |value: &Option<toml::Spanned<String>>, name: &str| {
            value
                .as_ref()
                .map(|v| v.get_ref().clone())
                .ok_or_else(|| DeliveryError::Config {
                    target: "kubernetes".into(),
                    reason: format!("`{name}` is missing"),
                })
        };
        Ok(KubernetesTarget {
            api_server: config
                .api_server
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(in_cluster_api_server)
                .trim_end_matches('/')
                .to_string(),
            namespace: field(&config.namespace, "namespace")?,
            secret_name: field(&config.secret_name, "secret_name")?,
            secret_key: field(&config.secret_key, "secret_key")?,
            token_file: config
                .token_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE)),
            ca_file: config
                .ca_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_FILE)),
            timeout: config.timeout(),
        })
    }

    fn transport(&self, operation: &'static str, message: String) -> DeliveryError {
        DeliveryError::Transport {
            target: self.describe(),
            operation,
            message,
        }
    }

    /// A client trusting only the CA file when the server is https. Built per delivery so a
    /// renewed CA bundle is picked up.
    async fn client(&self) -> Result<reqwest::Client, DeliveryError> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if self.api_server.starts_with("https://") {
            let pem = tokio::fs::read(&self.ca_file)
                .await
                .map_err(|source| DeliveryError::Io {
                    target: self.describe(),
                    action: format!("reading CA file {}", self.ca_file.display()),
                    source,
                })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
                self.transport(
                    "loading the CA file",
                    format!("{}: {}", self.ca_file.display(), error_chain(&err)),
                )
            })?;
            if certificates.is_empty() {
                return Err(self.transport(
                    "loading the CA file",
                    format!("{}: no PEM certificate found", self.ca_file.display()),
                ));
            }
            builder = builder.tls_built_in_root_certs(false);
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        builder
            .build()
            .map_err(|err| self.transport("setting up the HTTP client", error_chain(&err)))
    }

    async fn read_token(&self) -> Result<Zeroizing<String>, DeliveryError> {
        let text = tokio::fs::read_to_string(&self.token_file)
            .await
            .map(Zeroizing::new)
            .map_err(|source| DeliveryError::Io {
                target: self.describe(),
                action: format!("reading token file {}", self.token_file.display()),
                source,
            })?;
        let token = Zeroizing::new(text.trim().to_string());
        if token.is_empty() {
            return Err(DeliveryError::Config {
                target: self.describe(),
                reason: format!("token file {} is empty", self.token_file.display()),
            });
        }
        Ok(token)
    }
}

/// Secrets that must not appear in an error of one delivery.
struct Masks<'a> {
    key: &'a str,
    encoded: &'a str,
    token: &'a str,
}

impl Masks<'_> {
    fn apply(&self, text: &str, max: usize) -> String {
        sanitize(text, &[self.key, self.encoded, self.token], max)
    }
}

#[async_trait]
impl Target for KubernetesTarget {
    fn describe(&self) -> String {
        format!(
            "kubernetes secret {}/{} key {}",
            self.namespace, self.secret_name, self.secret_key
        )
    }

    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        let key = delivery.key.expose_secret();
        let token = self.read_token().await?;
        let client = self.client().await?;
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key));
        let masks = Masks {
            key,
            encoded: &encoded,
            token: &token,
        };
        let authorization = self.authorization(&token)?;
        let patch = self.patch_body(&encoded);
        let secret_url = format!(
            "{}/api/v1/namespaces/{}/secrets/{}",
            self.api_server, self.namespace, self.secret_name
        );
        let send = |method: Method, url: &str, content_type: &'static str, body: &str| {
            client
                .request(method, url)
                .header(AUTHORIZATION, authorization.clone())
                .header(CONTENT_TYPE, content_type)
                .header(reqwest::header::ACCEPT, "application/json")
                .body(body.as_bytes().to_vec())
                .send()
        };
        let patch_once = || async {
            send(
                Method::PATCH,
                &secret_url,
                "application/merge-patch+json",
                &patch,
            )
            .await
            .map_err(|err| self.transport("patch", masks.apply(&error_chain(&err), 500)))
        };

        let response = patch_once().await?;
        if response.status().is_success() {
            return Ok(());
        }
        if response.status() != StatusCode::NOT_FOUND {
            return Err(self.api_error("patch", response, &masks).await);
        }

        let create = self.create_body(&encoded);
        let collection_url = format!(
            "{}/api/v1/namespaces/{}/secrets",
            self.api_server, self.namespace
        );
        let response = send(Method::POST, &collection_url, "application/json", &create)
            .await
            .map_err(|err| self.transport("create", masks.apply(&error_chain(&err), 500)))?;
        if response.status().is_success() {
            return Ok(());
        }
        if response.status() != StatusCode::CONFLICT {
            return Err(self.api_error("create", response, &masks).await);
        }
        // Created by someone else between our patch and our create: patch it now.
        let response = patch_once().await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.api_error("patch", response, &masks).await)
        }
    }
}

impl KubernetesTarget {
    /// `Bearer <token>`, marked sensitive so it never shows in a debug print.
    fn authorization(&self, token: &str) -> Result<HeaderValue, DeliveryError> {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                DeliveryError::Config {
                    target: self.describe(),
                    reason: format!(
                        "token file {} holds characters not allowed in an HTTP header",
                        self.token_file.display()
                    ),
                }
            })?;
        authorization.set_sensitive(true);
        Ok(authorization)
    }

    // secret_key is validated to [-._a-zA-Z0-9] and base64 needs no escaping, so the JSON
    // bodies are built by hand into buffers that are wiped afterwards.

    /// The merge patch that sets only `data[secret_key]`.
    fn patch_body(&self, encoded: &str) -> Zeroizing<String> {
        Zeroizing::new(format!(
            r#"{{"data":{{"{}":"{}"}}}}"#,
            self.secret_key, encoded
        ))
    }

    /// A new `Opaque` Secret holding only `data[secret_key]`, labelled as keyrotd's.
    fn create_body(&self, encoded: &str) -> Zeroizing<String> {
        Zeroizing::new(format!(
            r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"{}","namespace":"{}","labels":{{"{}":"{}"}}}},"type":"Opaque","data":{{"{}":"{}"}}}}"#,
            self.secret_name,
            self.namespace,
            MANAGED_BY_LABEL.0,
            MANAGED_BY_LABEL.1,
            self.secret_key,
            encoded
        ))
    }

    async fn api_error(
        &self,
        operation: &'static str,
        response: reqwest::Response,
        masks: &Masks<'_>,
    ) -> DeliveryError {
        let status = response.status().as_u16();
        let body = Zeroizing::new(response.text().await.unwrap_or_default());
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value.get("message")?.as_str().map(str::to_string))
            .map(Zeroizing::new);
        let message = match message {
            Some(message) => masks.apply(&message, 300),
            None if body.trim().is_empty() => "(no message)".into(),
            None => masks.apply(&body, 200),
        };
        DeliveryError::Api {
            target: self.describe(),
            operation,
            status,
            message,
        }
    }
}

/// An error and its causes, `outer: inner: innermost` (reqwest's own text is terse).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
