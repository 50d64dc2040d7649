//! `[[credential.deliver]]` sections: where a credential's current key is written.
//!
//! One flat table per target with a `kind` and the fields that kind understands. A field that
//! does not apply to the kind is an error (like an unknown field): a `mode` on an exec hook
//! would otherwise be silently ignored.
//!
//! The words of these tables (file formats, how a hook gets the key, the defaults) are
//! defined here, and `delivery/` builds its targets from them: the configuration does not
//! depend on the code it configures.

use super::{HumanDuration, Issues};
use serde::Deserialize;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Default permission bits of a delivered file.
pub(crate) const DEFAULT_FILE_MODE: u32 = 0o600;
/// Default variable that carries the key to a command (`key_via = "env"`), for exec hooks
/// and exec providers alike.
pub(crate) const DEFAULT_KEY_ENV_VAR: &str = "KEYROTD_KEY";
/// Default time an exec hook (or a Kubernetes API request) may take.
const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a `file` target writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// The key followed by a newline (default).
    #[default]
    Line,
    /// The key's bytes exactly, no trailing newline.
    Raw,
}

/// How an `exec` delivery hook receives the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKeyVia {
    /// Not at all: the hook only reloads a consumer that reads the key elsewhere (default).
    #[default]
    None,
    /// On standard input, followed by a newline; stdin is then closed.
    Stdin,
    /// In an environment variable (`env_var`, default `KEYROTD_KEY`).
    Env,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    File,
    EnvFile,
    Exec,
    Kubernetes,
}

impl DeliveryKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::File => "file",
            DeliveryKind::EnvFile => "env_file",
            DeliveryKind::Exec => "exec",
            DeliveryKind::Kubernetes => "kubernetes",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    pub kind: Spanned<DeliveryKind>,
    /// File or env file path (absolute).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `file`, `env_file`: octal permission bits, `"0600"` (default) or e.g. `"0640"`.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// `file`, `env_file`: owner of the written file, a user name or a numeric uid.
    #[serde(default)]
    pub owner: Option<Spanned<String>>,
    /// `file`, `env_file`: group of the written file, a group name or a numeric gid.
    #[serde(default)]
    pub group: Option<Spanned<String>>,
    /// `file`: `"line"` (key + newline, default) or `"raw"` (the key's bytes only).
    #[serde(default)]
    pub format: Option<Spanned<FileFormat>>,
    /// `env_file`: the variable name, e.g. `OPENAI_API_KEY`.
    #[serde(default)]
    pub variable: Option<Spanned<String>>,
    /// `exec`: program and arguments (no shell). The key never goes here.
    #[serde(default)]
    pub command: Option<Spanned<Vec<String>>>,
    /// `exec`: `"none"` (default), `"stdin"` or `"env"`.
    #[serde(default)]
    pub key_via: Option<Spanned<HookKeyVia>>,
    /// `exec` with `key_via = "env"`: the variable that holds the key (default `KEYROTD_KEY`).
    #[serde(default)]
    pub env_var: Option<Spanned<String>>,
    /// `exec`, `kubernetes`: how long the hook or each API request may take (default 30s).
    #[serde(default)]
    pub timeout: Option<Spanned<HumanDuration>>,
    /// `kubernetes`: namespace of the Secret.
    #[serde(default)]
    pub namespace: Option<Spanned<String>>,
    /// `kubernetes`: name of the Secret (created if missing).
    #[serde(default)]
    pub secret_name: Option<Spanned<String>>,
    /// `kubernetes`: the key inside the Secret's `data`.
    #[serde(default)]
    pub secret_key: Option<Spanned<String>>,
    /// `kubernetes`: API server URL. Default: from `KUBERNETES_SERVICE_HOST`/`_PORT`,
    /// else `https://kubernetes.default.svc`.
    #[serde(default)]
    pub api_server: Option<Spanned<String>>,
    /// `kubernetes`: bearer token file, re-read at each delivery.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `kubernetes`: CA bundle that signs the API server's certificate (the only trusted root).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl DeliveryConfig {
    pub(crate) fn kind(&self) -> DeliveryKind {
        *self.kind.get_ref()
    }

    /// Permission bits; `None` when `mode` is malformed (rejected at load time).
    pub(crate) fn mode(&self) -> Option<u32> {
        match &self.mode {
            None => Some(DEFAULT_FILE_MODE),
            Some(mode) => parse_mode(mode.get_ref()).ok(),
        }
    }

    pub(crate) fn format(&self) -> FileFormat {
        self.format
            .as_ref()
            .map(|f| *f.get_ref())
            .unwrap_or_default()
    }

    pub(crate) fn key_via(&self) -> HookKeyVia {
        self.key_via
            .as_ref()
            .map(|k| *k.get_ref())
            .unwrap_or_default()
    }

    pub(crate) fn env_var(&self) -> &str {
        self.env_var
            .as_ref()
            .map(|v| v.get_ref().as_str())
            .unwrap_or(DEFAULT_KEY_ENV_VAR)
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
            .as_ref()
            .map(|t| t.get_ref().0)
            .unwrap_or(DEFAULT_DELIVERY_TIMEOUT)
    }

    pub(super) fn validate(&self, issues: &mut Issues) {
        self.validate_fields_of_other_kinds(issues);
        match self.kind() {
            DeliveryKind::File => self.validate_file(issues),
            DeliveryKind::EnvFile => {
                self.validate_file(issues);
                self.validate_env_file(issues);
            }
            DeliveryKind::Exec => self.validate_exec(issues),
            DeliveryKind::Kubernetes => self.validate_kubernetes(issues),
        }
        if let Some(timeout) = &self.timeout {
            if timeout.get_ref().0 < Duration::from_millis(100) {
                issues.push(
                    Some(timeout.span()),
                    "`timeout` must be at least 100ms".into(),
                );
            }
        }
    }

    /// Reports every field set that belongs to other kinds, at the field (or at `kind` when
    /// the field carries no position).
    fn validate_fields_of_other_kinds(&self, issues: &mut Issues) {
        use DeliveryKind::{EnvFile, Exec, File, Kubernetes};
        let files: &[DeliveryKind] = &[File, EnvFile];
        let kube: &[DeliveryKind] = &[Kubernetes];
        // (field, `Some(its position)` when it is set, the kinds it applies to)
        let fields: [(&str, Option<FieldPosition>, &[DeliveryKind]); 16] = [
            ("path", self.path.as_ref().map(|_| None), files),
            ("mode", set_at(&self.mode), files),
            ("owner", set_at(&self.owner), files),
            ("group", set_at(&self.group), files),
            ("format", set_at(&self.format), &[File]),
            ("variable", set_at(&self.variable), &[EnvFile]),
            ("command", set_at(&self.command), &[Exec]),
            ("key_via", set_at(&self.key_via), &[Exec]),
            ("env_var", set_at(&self.env_var), &[Exec]),
            ("timeout", set_at(&self.timeout), &[Exec, Kubernetes]),
            ("namespace", set_at(&self.namespace), kube),
            ("secret_name", set_at(&self.secret_name), kube),
            ("secret_key", set_at(&self.secret_key), kube),
            ("api_server", set_at(&self.api_server), kube),
            ("token_file", self.token_file.as_ref().map(|_| None), kube),
            ("ca_file", self.ca_file.as_ref().map(|_| None), kube),
        ];
        let kind = self.kind();
        for (field, set, kinds) in fields {
            let Some(span) = set else { continue };
            if !kinds.contains(&kind) {
                issues.push(
                    Some(span.unwrap_or_else(|| self.kind.span())),
                    format!(
                        "`{field}` does not apply to a delivery target of kind \"{}\"",
                        kind.as_str()
                    ),
                );
            }
        }
    }

    /// `file` and `env_file`: an absolute path, a safe mode, plausible owner and group.
    fn validate_file(&self, issues: &mut Issues) {
        match &self.path {
            None => issues.push(
                Some(self.kind.span()),
                format!(
                    "a delivery target of kind \"{}\" needs `path`",
                    self.kind().as_str()
                ),
            ),
            Some(path) if !path.is_absolute() => issues.push(
                Some(self.kind.span()),
                format!("`path` {:?} must be absolute", path.display().to_string()),
            ),
            Some(_) => {}
        }
        if let Some(mode) = &self.mode {
            if let Err(message) = parse_mode(mode.get_ref()) {
                issues.push(Some(mode.span()), message);
            }
        }
        for (field, value, what) in [
            ("owner", &self.owner, "user"),
            ("group", &self.group, "group"),
        ] {
            if let Some(value) = value {
                if !valid_account(value.get_ref()) {
                    issues.push(
                        Some(value.span()),
                        format!(
                            "`{field}` {:?} is not a {what} name or a numeric id",
                            value.get_ref()
                        ),
                    );
                }
            }
        }
    }

    /// `env_file`: the variable to set.
    fn validate_env_file(&self, issues: &mut Issues) {
        match &self.variable {
            None => issues.push(
                Some(self.kind.span()),
                "a delivery target of kind \"env_file\" needs `variable` (e.g. \"OPENAI_API_KEY\")".into(),
            ),
            Some(variable) if !valid_env_name(variable.get_ref()) => issues.push(
                Some(variable.span()),
                format!(
                    "`variable` {:?} is not an environment variable name (A-Z a-z 0-9 _, not starting with a digit)",
                    variable.get_ref()
                ),
            ),
            Some(_) => {}
        }
    }

    /// `exec`: a program to run, and a usable `env_var` when the key goes in one.
    fn validate_exec(&self, issues: &mut Issues) {
        match &self.command {
            None => issues.push(
                Some(self.kind.span()),
                "a delivery target of kind \"exec\" needs `command`, e.g. [\"systemctl\", \"try-reload-or-restart\", \"app.service\"]".into(),
            ),
            Some(command)
                if command.get_ref().is_empty() || command.get_ref()[0].trim().is_empty() =>
            {
                issues.push(
                    Some(command.span()),
                    "`command` must name a program to run".into(),
                )
            }
            Some(_) => {}
        }
        let Some(env_var) = &self.env_var else {
            return;
        };
        let name = env_var.get_ref();
        let problem = if self.key_via() != HookKeyVia::Env {
            "`env_var` is only used with `key_via = \"env\"`".to_string()
        } else if !valid_env_name(name) {
            format!("`env_var` {name:?} is not an environment variable name")
        } else if matches!(
            name.as_str(),
            "KEYROTD_CREDENTIAL" | "KEYROTD_FINGERPRINT" | "KEYROTD_VERSION_ID"
        ) {
            format!("`env_var` {name:?} is reserved by keyrotd")
        } else {
            return;
        };
        issues.push(Some(env_var.span()), problem);
    }

    /// `kubernetes`: the Secret's coordinates as the API server accepts them, and an http(s)
    /// API server URL when one is given.
    fn validate_kubernetes(&self, issues: &mut Issues) {
        for (field, value, rule) in [
            ("namespace", &self.namespace, NameRule::Label),
            ("secret_name", &self.secret_name, NameRule::Subdomain),
            ("secret_key", &self.secret_key, NameRule::SecretKey),
        ] {
            match value {
                None => issues.push(
                    Some(self.kind.span()),
                    format!("a delivery target of kind \"kubernetes\" needs `{field}`"),
                ),
                Some(value) if !rule.accepts(value.get_ref()) => issues.push(
                    Some(value.span()),
                    format!("`{field}` {:?} {}", value.get_ref(), rule.describe()),
                ),
                Some(_) => {}
            }
        }
        if let Some(server) = &self.api_server {
            let text = server.get_ref();
            let rest = text
                .strip_prefix("https://")
                .or_else(|| text.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty()) || reqwest::Url::parse(text).is_err() {
                issues.push(
                    Some(server.span()),
                    format!(
                        "`api_server` {text:?} is not an http(s) URL like \"https://kubernetes.default.svc\""
                    ),
                );
            }
        }
    }
}

/// Where a field is in the file; `None` for a type that keeps no span (paths).
type FieldPosition = Option<Range<usize>>;

/// `Some(position)` when the field is set.
fn set_at<T>(value: &Option<Spanned<T>>) -> Option<FieldPosition> {
    value.as_ref().map(|v| Some(v.span()))
}

/// Parses an octal mode such as `"0600"` or `"640"`. Only read/write bits for owner and group
/// (and read for others) make sense for a key file; anything executable or setuid is refused.
pub(crate) fn parse_mode(text: &str) -> Result<u32, String> {
    let fail = |why: &str| {
        format!("`mode` {text:?} {why} (expected an octal mode like \"0600\" or \"0640\")")
    };
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(fail("is not an octal permission mode"));
    }
    let mode = u32::from_str_radix(text, 8).map_err(|_| fail("is not an octal permission mode"))?;
    if mode & 0o7111 != 0 {
        return Err(fail("must not set execute, setuid, setgid or sticky bits"));
    }
    if mode & 0o600 != 0o600 {
        return Err(fail("must let the owner read and write"));
    }
    if mode & 0o002 != 0 {
        return Err(fail("must not make a key file writable by others"));
    }
    Ok(mode)
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub(super) fn valid_account(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Clone, Copy)]
enum NameRule {
    /// RFC 1123 label (namespaces).
    Label,
    /// RFC 1123 subdomain (Secret names).
    Subdomain,
    /// `[-._a-zA-Z0-9]+` (keys of a Secret's data).
    SecretKey,
}

impl NameRule {
    fn accepts(self, name: &str) -> bool {
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        match self {
            NameRule::Label => label(name),
            NameRule::Subdomain => name.len() <= 253 && name.split('.').all(label),
            NameRule::SecretKey => {
                !name.is_empty()
                    && name.len() <= 253
                    && name != "."
                    && name != ".."
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            NameRule::Label => {
                "must be lower-case a-z 0-9 - (at most 63, not starting or ending with -)"
            }
            NameRule::Subdomain => "must be lower-case a-z 0-9 - . (a DNS subdomain name)",
            NameRule::SecretKey => "must be 1-253 characters of A-Z a-z 0-9 - _ .",
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn issues(deliver: &str) -> Vec<String> {
        let text = format!(
            "[[provider]]\nname = \"p\"\nkind = \"openrouter\"\n\n[[credential]]\nname = \"c\"\nprovider = \"p\"\n\n[[credential.deliver]]\n{deliver}\n"
        );
        match Config::parse(Path::new("t.toml"), &text) {
            Ok(_) => vec![],
            Err(err) => err
                .issues
                .iter()
                .map(|i| format!("{}:{}: {}", i.line, i.column, i.message))
                .collect(),
        }
    }

    #[test]
    fn valid_targets_of_every_kind_load() {
        for deliver in [
            "kind = \"file\"\npath = \"/etc/app/key\"\nmode = \"0640\"\nowner = \"root\"\ngroup = \"1000\"\nformat = \"raw\"",
            "kind = \"env_file\"\npath = \"/etc/app/env\"\nvariable = \"OPENAI_API_KEY\"",
            "kind = \"exec\"\ncommand = [\"systemctl\", \"reload\", \"app\"]\nkey_via = \"env\"\nenv_var = \"APP_KEY\"\ntimeout = \"10s\"",
            "kind = \"exec\"\ncommand = [\"/bin/true\"]\nkey_via = \"stdin\"",
            "kind = \"kubernetes\"\nnamespace = \"apps\"\nsecret_name = \"openai\"\nsecret_key = \"OPENAI_API_KEY\"\napi_server = \"https://10.0.0.1:6443\"\ntoken_file = \"/t\"\nca_file = \"/ca\"",
        ] {
            assert_eq!(issues(deliver), Vec::<String>::new(), "{deliver}");
        }
    }

    #[test]
    fn missing_required_fields_are_reported_at_the_kind() {
        let got = issues("kind = \"env_file\"\npath = \"/e\"");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("10:8: ") && got[0].contains("needs `variable`"),
            "{got:?}"
        );

        let got = issues("kind = \"exec\"\ncommand = []");
        assert!(
            got[0].starts_with("11:11: ") && got[0].contains("must name a program"),
            "{got:?}"
        );

        let got = issues("kind = \"kubernetes\"\nnamespace = \"ns\"");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().any(|g| g.contains("`secret_name`")), "{got:?}");
        assert!(got.iter().any(|g| g.contains("`secret_key`")), "{got:?}");

        let got = issues("kind = \"file\"");
        assert!(got[0].contains("needs `path`"), "{got:?}");
        let got = issues("kind = \"file\"\npath = \"relative/key\"");
        assert!(got[0].contains("must be absolute"), "{got:?}");
    }

    #[test]
    fn bad_values_are_reported_at_the_value() {
        let got = issues("kind = \"file\"\npath = \"/k\"\nmode = \"0755\"");
        assert!(
            got[0].starts_with("12:8: ") && got[0].contains("execute"),
            "{got:?}"
        );
        let got = issues("kind = \"file\"\npath = \"/k\"\nmode = \"rw\"");
        assert!(got[0].contains("octal"), "{got:?}");
        let got = issues("kind = \"file\"\npath = \"/k\"\nmode = \"0606\"");
        assert!(got[0].contains("writable by others"), "{got:?}");
        let got = issues("kind = \"env_file\"\npath = \"/e\"\nvariable = \"1BAD-NAME\"");
        assert!(
            got[0].starts_with("12:12: ") && got[0].contains("not an environment variable"),
            "{got:?}"
        );
        let got = issues("kind = \"kubernetes\"\nnamespace = \"Apps\"\nsecret_name = \"s\"\nsecret_key = \"k/x\"");
        assert_eq!(got.len(), 2, "{got:?}");
        let got = issues("kind = \"kubernetes\"\nnamespace = \"a\"\nsecret_name = \"s\"\nsecret_key = \"k\"\napi_server = \"kubernetes:443\"");
        assert!(got[0].contains("`api_server`"), "{got:?}");
        let got = issues("kind = \"exec\"\ncommand = [\"x\"]\nenv_var = \"K\"");
        assert!(
            got[0].contains("only used with `key_via = \"env\"`"),
            "{got:?}"
        );
        let got = issues("kind = \"exec\"\ncommand = [\"x\"]\nkey_via = \"argv\"");
        assert!(got[0].contains("unknown variant"), "{got:?}");
    }

    #[test]
    fn fields_of_other_kinds_are_rejected() {
        let got = issues("kind = \"exec\"\ncommand = [\"x\"]\nmode = \"0600\"");
        assert!(
            got[0].starts_with("12:8: ") && got[0].contains("`mode` does not apply"),
            "{got:?}"
        );
        let got = issues("kind = \"file\"\npath = \"/k\"\nvariable = \"X\"");
        assert!(got[0].contains("`variable` does not apply"), "{got:?}");
    }

    #[test]
    fn key_via_env_defaults_to_keyrotd_key() {
        let text = "[[provider]]\nname = \"p\"\nkind = \"openrouter\"\n[[credential]]\nname = \"c\"\nprovider = \"p\"\n[[credential.deliver]]\nkind = \"exec\"\ncommand = [\"x\"]\nkey_via = \"env\"\n";
        let config = Config::parse(Path::new("t.toml"), text).unwrap();
        let target = &config.credentials[0].deliver[0];
        assert_eq!(target.env_var(), "KEYROTD_KEY");
        assert_eq!(target.key_via(), super::HookKeyVia::Env);
        assert_eq!(target.timeout(), std::time::Duration::from_secs(30));
        assert_eq!(target.mode(), Some(0o600));
    }
}
