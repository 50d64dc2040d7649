//! `[relay]`: the local relay that takes an application's provider request without a key,
//! authenticates the application by its own token, and injects a pooled credential's key.
//!
//! The section names where the relay listens (a loopback TCP address or a Unix socket, with
//! the socket's mode and group), its limits and timeouts, its `[[relay.route]]`s (a path prefix, an upstream, a pool of
//! credentials of one provider kind, a strategy, the clients allowed) and its
//! `[[relay.client]]`s (a name, the SHA-256 of the client's token, peer uids on a socket, a
//! rate limit). Validation ties routes to credentials and providers, so a route the relay
//! could not serve is refused with the file position of what is wrong.

use super::delivery::valid_account;
use super::{name_rule, valid_name, HumanDuration, Issues, ProviderConfig, ProviderKind};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// `[relay]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// A loopback TCP address, e.g. "127.0.0.1:9878" (the relay has no TLS yet).
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    /// A Unix socket path (clients may then also be told apart by peer uid).
    #[serde(default)]
    pub socket: Option<Spanned<PathBuf>>,
    /// On a `socket`: its permission bits, an octal string (default [`DEFAULT_SOCKET_MODE`]).
    /// Connecting needs write permission on the socket file.
    #[serde(default)]
    pub socket_mode: Option<Spanned<String>>,
    /// On a `socket`: the group it is handed to once created, a name or a numeric gid (the
    /// daemon must be a member, or hold CAP_CHOWN).
    #[serde(default)]
    pub socket_group: Option<Spanned<String>>,
    /// Largest request body kept in memory so the request can be retried on another key;
    /// a larger body streams through once, without retry.
    #[serde(default = "default_max_retry_body")]
    pub max_retry_body_bytes: Spanned<u64>,
    /// Largest request head (request line and headers) a client may send.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: Spanned<u64>,
    /// Client connections served at once; more wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<u64>,
    /// Time to open a connection to the upstream.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Time from sending a request upstream until its response head arrives.
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte_timeout: HumanDuration,
    /// Longest silence on a connection: a client that sends nothing, an upstream body that
    /// stalls, an idle pooled upstream connection.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Longest cool-down a 429 puts a key in, whatever its `Retry-After` asks.
    #[serde(default = "default_max_cooldown")]
    pub max_cooldown: HumanDuration,
    /// How often the relay asks the store whether a key changed (one small query).
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval: HumanDuration,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientConfig>,
}

/// The socket's mode when `socket_mode` is not set: the daemon's user and the socket's group
/// may connect, nobody else (the convention of group-shared daemon sockets such as
/// docker.sock). A fixed default rather than whatever the umask leaves: under the shipped
/// unit's `UMask=0077` that would be owner-only, elsewhere usually 0755 (which lets nobody
/// else connect either, since connecting needs write).
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// The uid the kernel reports for a peer whose uid the receiving process's user namespace
/// does not map (the default of /proc/sys/kernel/overflowuid). Under systemd's
/// `PrivateUsers=yes`, every user but root and the service's own connects as this uid.
pub const OVERFLOW_UID: u32 = 65534;

fn default_max_retry_body() -> Spanned<u64> {
    Spanned::new(0..0, 1024 * 1024)
}
fn default_max_header() -> Spanned<u64> {
    Spanned::new(0..0, 64 * 1024)
}
fn default_max_connections() -> Spanned<u64> {
    Spanned::new(0..0, 1024)
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
/// Long: a model may think for minutes before its first token.
fn default_first_byte_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
fn default_max_cooldown() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_refresh_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// Where the relay listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// How a route picks a key from its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first usable key in the configured order; the next ones only when it fails.
    #[default]
    Failover,
    /// Usable keys in turn, one request each.
    RoundRobin,
}

/// `[[relay.route]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path prefix clients call, e.g. "/openai/v1"; the rest of the path is appended to
    /// the upstream.
    pub prefix: Spanned<String>,
    /// Base URL requests go to (default: the `base_url` of the credentials' provider).
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    /// The pool: credentials whose keys the route injects, all of one provider kind.
    pub credentials: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub strategy: Strategy,
    /// Names of the `[[relay.client]]`s allowed on this route.
    pub clients: Spanned<Vec<Spanned<String>>>,
    /// Upstream attempts per request, the first one included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: Spanned<u32>,
}

fn default_max_attempts() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}

/// `[[relay.client]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: Spanned<String>,
    /// Hex SHA-256 of the client's token (`keyrotd relay token new NAME` prints both).
    #[serde(default)]
    pub token_sha256: Option<Spanned<String>>,
    /// On a Unix socket: the uids whose connections are this client, token or not.
    #[serde(default)]
    pub peer_uids: Vec<Spanned<u32>>,
    /// Sustained requests per second this client may make (bursts up to one second's worth).
    #[serde(default)]
    pub requests_per_second: Option<Spanned<f64>>,
}

/// The header a vendor reads its key from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHeader {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey,
    /// `x-goog-api-key: <key>` (Gemini).
    XGoogApiKey,
}

impl KeyHeader {
    /// The header of a provider kind, or `None` for kinds the relay does not serve: `http`
    /// and `exec`, whose key may go anywhere, and `openai_admin`, an organisation's admin
    /// key, which must never answer an application's requests.
    pub fn of(kind: ProviderKind) -> Option<KeyHeader> {
        match kind {
            ProviderKind::Openai
            | ProviderKind::OpenaiCompatible
            | ProviderKind::Openrouter
            | ProviderKind::Deepseek
            | ProviderKind::Relay
            | ProviderKind::Simulated => Some(KeyHeader::Bearer),
            ProviderKind::Anthropic => Some(KeyHeader::XApiKey),
            ProviderKind::AzureOpenai => Some(KeyHeader::ApiKey),
            ProviderKind::Gemini => Some(KeyHeader::XGoogApiKey),
            ProviderKind::Http | ProviderKind::Exec | ProviderKind::OpenaiAdmin => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyHeader::Bearer => "authorization",
            KeyHeader::XApiKey => "x-api-key",
            KeyHeader::ApiKey => "api-key",
            KeyHeader::XGoogApiKey => "x-goog-api-key",
        }
    }
}

impl RelayConfig {
    /// Where to listen (validated at load time: exactly one of `listen`, `socket`).
    pub fn listen(&self) -> RelayListen {
        match (&self.listen, &self.socket) {
            (Some(address), _) => {
                RelayListen::Tcp(address.get_ref().parse().expect("validated at load time"))
            }
            (None, Some(path)) => RelayListen::Unix(path.get_ref().clone()),
            (None, None) => unreachable!("validated at load time"),
        }
    }

    /// The socket's permission bits (validated at load time).
    pub fn socket_mode(&self) -> u32 {
        self.socket_mode
            .as_ref()
            .and_then(|mode| parse_socket_mode(mode.get_ref()).ok())
            .unwrap_or(DEFAULT_SOCKET_MODE)
    }

    /// The group the socket is handed to, if any.
    pub fn socket_group(&self) -> Option<&str> {
        self.socket_group.as_ref().map(|g| g.get_ref().as_str())
    }

    pub(super) fn validate(
        &self,
        issues: &mut Issues,
        providers: &HashMap<&str, &ProviderConfig>,
        credential_providers: &HashMap<&str, &str>,
        section: std::ops::Range<usize>,
    ) {
        self.validate_listen(issues, section);
        for (value, field) in [
            (&self.max_retry_body_bytes, "max_retry_body_bytes"),
            (&self.max_connections, "max_connections"),
        ] {
            if *value.get_ref() == 0 {
                issues.push(Some(value.span()), format!("`{field}` must be at least 1"));
            }
        }
        if *self.max_header_bytes.get_ref() < 1024 {
            issues.push(
                Some(self.max_header_bytes.span()),
                "`max_header_bytes` must be at least 1024".into(),
            );
        }
        let clients = self.validate_clients(issues);
        let mut prefixes = HashSet::new();
        for route in &self.routes {
            route.validate(issues, providers, credential_providers, &clients);
            if !prefixes.insert(route.prefix.get_ref().as_str()) {
                issues.push(
                    Some(route.prefix.span()),
                    format!("duplicate route prefix {:?}", route.prefix.get_ref()),
                );
            }
        }
    }

    fn validate_listen(&self, issues: &mut Issues, section: std::ops::Range<usize>) {
        match (&self.listen, &self.socket) {
            (Some(_), Some(socket)) => issues.push(
                Some(socket.span()),
                "`[relay]` takes `listen` or `socket`, not both".into(),
            ),
            (None, None) => issues.push(
                Some(section),
                "`[relay]` needs `listen` (a loopback address) or `socket` (a Unix socket path)"
                    .into(),
            ),
            _ => {}
        }
        if let Some(listen) = &self.listen {
            match listen.get_ref().parse::<SocketAddr>() {
                Err(_) => issues.push(
                    Some(listen.span()),
                    format!(
                        "`listen` {:?} is not an address like \"127.0.0.1:9878\"",
                        listen.get_ref()
                    ),
                ),
                // Plain HTTP with keys injected: anyone who can reach the port spends them.
                Ok(address) if !address.ip().is_loopback() => issues.push(
                    Some(listen.span()),
                    format!(
                        "`listen` {address} is not a loopback address: the relay has no TLS, so it listens on 127.0.0.1, ::1 or a Unix socket only"
                    ),
                ),
                Ok(_) => {}
            }
        }
        if let Some(socket) = &self.socket {
            if !socket.get_ref().is_absolute() {
                issues.push(
                    Some(socket.span()),
                    "`socket` must be an absolute path".into(),
                );
            }
        }
        self.validate_socket_access(issues);
    }

    /// `socket_mode` and `socket_group`: only on a socket, a plain mode, a plausible group
    /// that the mode lets connect.
    fn validate_socket_access(&self, issues: &mut Issues) {
        for (field, value) in [
            ("socket_mode", &self.socket_mode),
            ("socket_group", &self.socket_group),
        ] {
            if let (Some(value), None) = (value, &self.socket) {
                issues.push(
                    Some(value.span()),
                    format!(
                        "`{field}` only applies to a Unix `socket`, and the relay listens on TCP"
                    ),
                );
            }
        }
        let mode = match &self.socket_mode {
            Some(text) => match parse_socket_mode(text.get_ref()) {
                Ok(mode) => mode,
                Err(message) => {
                    issues.push(Some(text.span()), message);
                    return;
                }
            },
            None => DEFAULT_SOCKET_MODE,
        };
        if let Some(group) = &self.socket_group {
            if !valid_account(group.get_ref()) {
                issues.push(
                    Some(group.span()),
                    format!(
                        "`socket_group` {:?} is not a group name or a numeric gid",
                        group.get_ref()
                    ),
                );
            } else if mode & 0o020 == 0 {
                issues.push(
                    Some(group.span()),
                    format!(
                        "`socket_group` {:?} could not connect: `socket_mode` {mode:04o} gives the group no write permission, which connecting to a socket needs (e.g. \"0660\")",
                        group.get_ref()
                    ),
                );
            }
        }
    }

    /// Every `[[relay.client]]`; returns their names.
    fn validate_clients(&self, issues: &mut Issues) -> HashSet<&str> {
        let mut names = HashSet::new();
        for client in &self.clients {
            let name = client.name.get_ref();
            if !valid_name(name) {
                issues.push(Some(client.name.span()), name_rule("client", name));
            }
            if !names.insert(name.as_str()) {
                issues.push(
                    Some(client.name.span()),
                    format!("duplicate relay client name {name:?}"),
                );
            }
            match &client.token_sha256 {
                Some(hash) => {
                    let hash_ok = hash.get_ref().len() == 64
                        && hash.get_ref().bytes().all(|b| b.is_ascii_hexdigit());
                    if !hash_ok {
                        issues.push(
                            Some(hash.span()),
                            "`token_sha256` must be 64 hex digits (`keyrotd relay token new NAME` prints it)".into(),
                        );
                    }
                }
                None if client.peer_uids.is_empty() => issues.push(
                    Some(client.name.span()),
                    format!("relay client {name:?} needs `token_sha256` or `peer_uids`"),
                ),
                None => {}
            }
            for uid in &client.peer_uids {
                // Anyone the daemon's user namespace does not map connects as this uid, so
                // it names no one: as good as no authentication at all.
                if *uid.get_ref() == OVERFLOW_UID {
                    issues.push(
                        Some(uid.span()),
                        format!(
                            "relay client {name:?}: peer uid {OVERFLOW_UID} is the kernel's overflow uid: in a user namespace (the shipped systemd unit's PrivateUsers=yes) every user it does not map connects as {OVERFLOW_UID}, so it would let any local user in; give this client a token instead"
                        ),
                    );
                }
            }
            if !client.peer_uids.is_empty() && self.socket.is_none() {
                issues.push(
                    Some(client.name.span()),
                    format!(
                        "relay client {name:?}: `peer_uids` only work on a Unix `socket`, and the relay listens on TCP"
                    ),
                );
            }
            if let Some(rate) = &client.requests_per_second {
                if !(*rate.get_ref() > 0.0 && rate.get_ref().is_finite()) {
                    issues.push(
                        Some(rate.span()),
                        "`requests_per_second` must be a positive number".into(),
                    );
                }
            }
        }
        names
    }
}

impl RouteConfig {
    pub fn prefix(&self) -> &str {
        self.prefix.get_ref()
    }

    pub fn credentials(&self) -> impl Iterator<Item = &str> {
        self.credentials
            .get_ref()
            .iter()
            .map(|c| c.get_ref().as_str())
    }

    pub fn clients(&self) -> impl Iterator<Item = &str> {
        self.clients.get_ref().iter().map(|c| c.get_ref().as_str())
    }

    pub fn max_attempts(&self) -> u32 {
        *self.max_attempts.get_ref()
    }

    fn validate(
        &self,
        issues: &mut Issues,
        providers: &HashMap<&str, &ProviderConfig>,
        credential_providers: &HashMap<&str, &str>,
        clients: &HashSet<&str>,
    ) {
        let prefix = self.prefix.get_ref();
        let prefix_ok = prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix.len() > 1
            && !prefix.contains(['?', '#', ' '])
            && !prefix.split('/').any(|s| s == ".." || s == ".");
        if !prefix_ok {
            issues.push(
                Some(self.prefix.span()),
                format!("route prefix {prefix:?} must be a path like \"/openai/v1\": starting with /, not ending with /, no query"),
            );
        }
        if *self.max_attempts.get_ref() == 0 {
            issues.push(
                Some(self.max_attempts.span()),
                "`max_attempts` must be at least 1".into(),
            );
        }
        if self.credentials.get_ref().is_empty() {
            issues.push(
                Some(self.credentials.span()),
                "a route needs at least one credential".into(),
            );
        }
        if self.clients.get_ref().is_empty() {
            issues.push(
                Some(self.clients.span()),
                "a route needs at least one client in `clients` (nobody could call it)".into(),
            );
        }
        for client in self.clients.get_ref() {
            if !clients.contains(client.get_ref().as_str()) {
                issues.push(
                    Some(client.span()),
                    format!(
                        "route {prefix:?} allows undefined relay client {:?}",
                        client.get_ref()
                    ),
                );
            }
        }
        let mut pool: Vec<&ProviderConfig> = Vec::new();
        let mut seen = HashSet::new();
        for credential in self.credentials.get_ref() {
            let name = credential.get_ref().as_str();
            if !seen.insert(name) {
                issues.push(
                    Some(credential.span()),
                    format!("credential {name:?} is twice in the pool of route {prefix:?}"),
                );
            }
            let Some(provider) = credential_providers
                .get(name)
                .and_then(|provider| providers.get(provider))
            else {
                issues.push(
                    Some(credential.span()),
                    format!("route {prefix:?} uses undefined credential {name:?}"),
                );
                continue;
            };
            if let Some(first) = pool.first() {
                if first.kind != provider.kind {
                    issues.push(
                        Some(credential.span()),
                        format!(
                            "credential {name:?} is of provider kind {}, the pool of route {prefix:?} is of kind {}: one route, one kind",
                            provider.kind.as_str(),
                            first.kind.as_str()
                        ),
                    );
                    continue;
                }
            } else if KeyHeader::of(provider.kind).is_none() {
                issues.push(
                    Some(credential.span()),
                    format!(
                        "credential {name:?} is of provider kind {}, which the relay does not serve (it cannot know where an http/exec key goes, and an admin key must not answer applications)",
                        provider.kind.as_str()
                    ),
                );
            }
            pool.push(provider);
        }
        match &self.upstream {
            Some(upstream) => {
                if let Err(message) = check_upstream(upstream.get_ref()) {
                    issues.push(Some(upstream.span()), message);
                }
            }
            None => {
                let bases: HashSet<Option<&str>> = pool.iter().map(|p| p.base_url()).collect();
                if bases.len() > 1 || bases.contains(&None) {
                    issues.push(
                        Some(self.prefix.span()),
                        format!("route {prefix:?} needs `upstream`: its credentials' providers have no single `base_url`"),
                    );
                }
            }
        }
    }

    /// Where requests go: `upstream`, else the pool's provider's base URL.
    pub fn upstream<'a>(&'a self, provider: &'a ProviderConfig) -> &'a str {
        self.upstream
            .as_ref()
            .map(|u| u.get_ref().as_str())
            .or(provider.base_url())
            .expect("validated at load time")
    }
}

/// Parses a socket's octal mode such as `"0660"` or `"666"`. Only permission bits: setuid,
/// setgid and sticky mean nothing on a socket and are refused as a likely typo.
pub(crate) fn parse_socket_mode(text: &str) -> Result<u32, String> {
    let fail =
        |why: &str| format!("`socket_mode` {text:?} {why} (expected an octal mode like \"0660\")");
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(fail("is not an octal permission mode"));
    }
    let mode = u32::from_str_radix(text, 8).map_err(|_| fail("is not an octal permission mode"))?;
    if mode & !0o777 != 0 {
        return Err(fail("must not set setuid, setgid or sticky bits"));
    }
    Ok(mode)
}

fn check_upstream(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("`upstream` must start with http:// or https://".into());
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("`upstream` is not a valid URL: {e}"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("`upstream` takes no query or fragment".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    const PROVIDERS: &str = r#"
[[provider]]
name = "oai"
kind = "openai"

[[provider]]
name = "ant"
kind = "anthropic"

[[credential]]
name = "a"
provider = "oai"

[[credential]]
name = "b"
provider = "oai"

[[credential]]
name = "c"
provider = "ant"
"#;

    const CLIENT: &str = r#"
[[relay.client]]
name = "app"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

    #[test]
    fn a_route_over_a_pool_is_accepted_with_defaults() {
        let text = format!(
            "{PROVIDERS}\n[relay]\nlisten = \"127.0.0.1:9878\"\n{CLIENT}\n[[relay.route]]\nprefix = \"/openai/v1\"\ncredentials = [\"a\", \"b\"]\nclients = [\"app\"]\nstrategy = \"round_robin\"\n"
        );
        let config = parse(&text).unwrap();
        let relay = config.relay().unwrap();
        assert_eq!(
            relay.listen(),
            super::RelayListen::Tcp("127.0.0.1:9878".parse().unwrap())
        );
        assert_eq!(relay.routes[0].max_attempts(), 3);
        assert_eq!(relay.routes[0].strategy, super::Strategy::RoundRobin);
        assert_eq!(
            relay.routes[0].upstream(config.provider("oai").unwrap()),
            "https://api.openai.com/v1"
        );
        assert_eq!(*relay.max_retry_body_bytes.get_ref(), 1024 * 1024);
    }

    #[test]
    fn a_non_loopback_listen_address_is_refused_with_its_position() {
        let text = format!("{PROVIDERS}\n[relay]\nlisten = \"0.0.0.0:9878\"\n");
        let rendered = parse(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("test.toml:23:10: `listen` 0.0.0.0:9878 is not a loopback address"),
            "{rendered}"
        );
    }

    #[test]
    fn route_mistakes_are_reported_together() {
        let text = format!(
            "{PROVIDERS}\n[relay]\nsocket = \"/run/keyrotd/relay.sock\"\n{CLIENT}\n[[relay.route]]\nprefix = \"openai/\"\ncredentials = [\"a\", \"c\", \"nope\"]\nclients = [\"app\", \"ghost\"]\nmax_attempts = 0\n"
        );
        let error = parse(&text).unwrap_err();
        let rendered = error.to_string();
        assert_eq!(error.issues.len(), 5, "{rendered}");
        for needle in [
            "route prefix \"openai/\" must be a path",
            "`max_attempts` must be at least 1",
            "allows undefined relay client \"ghost\"",
            "credential \"c\" is of provider kind anthropic, the pool of route \"openai/\" is of kind openai",
            "uses undefined credential \"nope\"",
        ] {
            assert!(rendered.contains(needle), "{needle}: {rendered}");
        }
    }

    #[test]
    fn listen_and_clients_are_checked() {
        let text = format!(
            "{PROVIDERS}\n[relay]\n[[relay.client]]\nname = \"app\"\npeer_uids = [1000]\nrequests_per_second = -1.0\n\n[[relay.client]]\nname = \"bad\"\ntoken_sha256 = \"xyz\"\n"
        );
        let rendered = parse(&text).unwrap_err().to_string();
        for needle in [
            "`[relay]` needs `listen`",
            "`peer_uids` only work on a Unix `socket`",
            "`requests_per_second` must be a positive number",
            "`token_sha256` must be 64 hex digits",
        ] {
            assert!(rendered.contains(needle), "{needle}: {rendered}");
        }
    }
    /// `test.toml:LINE:COLUMN` of the first `needle` in `text`.
    fn at(text: &str, needle: &str) -> String {
        let offset = text.find(needle).expect("needle in text");
        let line = text[..offset].matches('\n').count() + 1;
        let column = offset - text[..offset].rfind('\n').map_or(0, |n| n + 1) + 1;
        format!("test.toml:{line}:{column}")
    }

    fn socket_relay(lines: &str) -> String {
        format!("{PROVIDERS}\n[relay]\nsocket = \"/run/keyrotd/relay.sock\"\n{lines}\n{CLIENT}")
    }

    #[test]
    fn the_socket_mode_defaults_to_0660_and_takes_octal_strings() {
        let config = parse(&socket_relay("")).unwrap();
        assert_eq!(config.relay().unwrap().socket_mode(), 0o660);
        assert_eq!(config.relay().unwrap().socket_group(), None);
        for (text, mode) in [("0666", 0o666), ("660", 0o660), ("0770", 0o770)] {
            let config = parse(&socket_relay(&format!(
                "socket_mode = \"{text}\"\nsocket_group = \"apps\""
            )))
            .unwrap();
            let relay = config.relay().unwrap();
            assert_eq!(relay.socket_mode(), mode, "{text}");
            assert_eq!(relay.socket_group(), Some("apps"));
        }
        for (text, mode) in [("0600", 0o600), ("0", 0)] {
            let config = parse(&socket_relay(&format!("socket_mode = \"{text}\""))).unwrap();
            assert_eq!(config.relay().unwrap().socket_mode(), mode, "{text}");
        }
    }

    #[test]
    fn a_bad_socket_mode_or_group_is_refused_with_its_position() {
        for (value, why) in [
            ("\"0x66\"", "is not an octal permission mode"),
            ("\"0668\"", "is not an octal permission mode"),
            ("\"00660\"", "is not an octal permission mode"),
            ("\"\"", "is not an octal permission mode"),
            ("\"1666\"", "must not set setuid, setgid or sticky bits"),
            ("\"4660\"", "must not set setuid, setgid or sticky bits"),
        ] {
            let text = socket_relay(&format!("socket_mode = {value}"));
            let rendered = parse(&text).unwrap_err().to_string();
            let expected = format!("{}: `socket_mode` {value} {why}", at(&text, value));
            assert!(rendered.contains(&expected), "{expected}\n{rendered}");
        }
        // A number, not a string: 660 in TOML is decimal, so it is refused rather than guessed.
        let text = socket_relay("socket_mode = 660");
        assert!(parse(&text).is_err());

        let text = socket_relay("socket_group = \"no spaces\"");
        let rendered = parse(&text).unwrap_err().to_string();
        let expected = format!(
            "{}: `socket_group` \"no spaces\" is not a group name or a numeric gid",
            at(&text, "\"no spaces\"")
        );
        assert!(rendered.contains(&expected), "{expected}\n{rendered}");

        let text = socket_relay("socket_mode = \"0604\"\nsocket_group = \"apps\"");
        let rendered = parse(&text).unwrap_err().to_string();
        let expected = format!(
            "{}: `socket_group` \"apps\" could not connect: `socket_mode` 0604 gives the group no write permission",
            at(&text, "\"apps\"")
        );
        assert!(rendered.contains(&expected), "{expected}\n{rendered}");
    }

    #[test]
    fn socket_mode_and_group_on_a_tcp_listener_are_refused() {
        let text = format!(
            "{PROVIDERS}\n[relay]\nlisten = \"127.0.0.1:9878\"\nsocket_mode = \"0660\"\nsocket_group = \"apps\"\n{CLIENT}"
        );
        let error = parse(&text).unwrap_err();
        let rendered = error.to_string();
        assert_eq!(error.issues.len(), 2, "{rendered}");
        for (field, value) in [("socket_mode", "\"0660\""), ("socket_group", "\"apps\"")] {
            let expected = format!(
                "{}: `{field}` only applies to a Unix `socket`, and the relay listens on TCP",
                at(&text, value)
            );
            assert!(rendered.contains(&expected), "{expected}\n{rendered}");
        }
    }

    /// The overflow uid is who every user a user namespace does not map connects as: as a
    /// peer uid it would admit them all, as a non-loopback `listen` would admit the network.
    #[test]
    fn the_overflow_uid_is_refused_as_a_peer_uid() {
        let text =
            socket_relay("\n[[relay.client]]\nname = \"local\"\npeer_uids = [1000, 65534]\n");
        let error = parse(&text).unwrap_err();
        let rendered = error.to_string();
        assert_eq!(error.issues.len(), 1, "{rendered}");
        let expected = format!(
            "{}: relay client \"local\": peer uid 65534 is the kernel's overflow uid",
            at(&text, "65534")
        );
        assert!(rendered.contains(&expected), "{expected}\n{rendered}");
        let text = socket_relay("\n[[relay.client]]\nname = \"local\"\npeer_uids = [1000]\n");
        let config = parse(&text).unwrap();
        assert_eq!(
            *config.relay().unwrap().clients[0].peer_uids[0].get_ref(),
            1000
        );
    }
}
