//! Scrubbing of text that came from outside (vendor error messages, transport errors) before
//! it reaches a `detail`, an error message, a log line or a metric.
//!
//! Two layers: the exact key we sent is masked wherever it appears, and so is anything that
//! merely *looks* like a key, because a vendor may echo a different key, a truncated one, or
//! the management key.
//!
//! ## What looks like a key
//!
//! Text is cut into tokens, runs of `A-Z a-z 0-9 - _ + / =`. A tracing field written as
//! `name=value` is two parts: the name stays, the value is judged on its own. A token is
//! masked when:
//!
//! 1. any `/`-, `=`- or `+`-separated part of it starts with a vendor prefix (`sk-` with
//!    OpenAI's `sk-proj-`/`sk-admin-`, OpenRouter's `sk-or-v1-`, Anthropic's `sk-ant-`;
//!    `AIza`, `gsk_`, `xai-`, ...), whatever its length and wherever it stands; otherwise
//! 2. it is at least 32 characters long (Azure's 32-hex keys, relay and in-house keys,
//!    base64 secrets), unless it is one of the long things ordinary text is full of:
//!    - a UUID in its canonical `8-4-4-4-12` form (rotation ids);
//!    - a plain path: absolute or relative, no `+` or `=`, segments shorter than 32 characters
//!      and none random-looking (see [`is_plain_path`]); an absolute path is read across its
//!      dots (`/var/lib/keyrotd/keyrotd.db`) to be judged whole;
//!    - a hex id in a field that names an id: a value made only of hex digits, of the field
//!      `id`, `…_id`, `hash`, `…_hash`, `rotation`, `fingerprint` or a `sha256:` digest,
//!      written `name=value`, `name="value"` or `"name":"value"` (JSON). That keeps the
//!      provider's key ids (OpenRouter's 64-hex key hash) and uuids without dashes readable
//!      where they are named as ids, while the same 32 hex digits anywhere else are masked:
//!      they are exactly an Azure key's shape, and nothing but the field tells them apart.
//!
//! Shorter tokens without a vendor prefix are kept: masking them would eat ordinary words,
//! and the exact-key layer covers the key a check sent.

use secrecy::{ExposeSecret, SecretString};
use std::borrow::Cow;

/// What a masked secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";
/// Longest sanitised text, in characters.
pub const MAX_LEN: usize = 200;

/// Prefixes of provider keys: OpenAI `sk-`/`sk-proj-`/`sk-admin-`, Anthropic `sk-ant-`,
/// OpenRouter `sk-or-`, Groq `gsk_`, Google `AIza`, xAI `xai-`, Stripe-like `sk_`/`rk_`.
const KEY_PREFIXES: [&str; 7] = ["sk-", "sk_", "rk_", "gsk_", "AIza", "xai-", "pk-"];
/// A run of token characters at least this long is treated as a secret (base64, hex).
const LONG_RUN: usize = 32;
/// Fields whose hex values are ids or digests, not secrets (see the module doc).
const ID_FIELDS: [&str; 4] = ["id", "hash", "rotation", "fingerprint"];
/// Longest ANSI colour sequence looked through when reading a field name backwards.
const MAX_ANSI_LEN: usize = 16;

/// Makes `text` safe to show: masks `key` and key-shaped tokens, drops control characters,
/// collapses whitespace and truncates to [`MAX_LEN`] characters.
pub fn sanitize(text: &str, key: Option<&SecretString>) -> String {
    let mut text = text.to_string();
    if let Some(key) = key {
        let raw = key.expose_secret();
        if !raw.is_empty() {
            text = text.replace(raw, REDACTED);
        }
    }
    let masked = mask_key_shaped(&text);
    // One line, printable only.
    let mut out = String::with_capacity(masked.len().min(MAX_LEN + 8));
    let mut last_space = false;
    for c in masked.chars() {
        let c = if c.is_whitespace() { ' ' } else { c };
        if c.is_control() {
            continue;
        }
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    // Dropping control characters and collapsing whitespace can join pieces back into the
    // key ("sk-a\u{7}bc"): mask it again on the flattened text.
    if let Some(key) = key {
        let raw = key.expose_secret();
        if !raw.is_empty() && out.contains(raw) {
            out = out.replace(raw, REDACTED);
        }
    }
    let out = out.trim();
    if out.chars().count() > MAX_LEN {
        let mut cut: String = out.chars().take(MAX_LEN).collect();
        cut.push('…');
        cut
    } else {
        out.to_string()
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/' | b'=')
}

/// Whether `token` is key-shaped (module doc, rules 1 and 2). `field` names the field the
/// token is the value of; it is only asked for a long hex token.
fn looks_like_key<'a>(token: &str, field: impl FnOnce() -> Option<&'a str>) -> bool {
    if has_vendor_prefix(token) {
        return true;
    }
    if token.len() < LONG_RUN || is_uuid(token) || is_plain_path(token) {
        return false;
    }
    !(is_hex(token) && field().is_some_and(names_an_id))
}

/// Any `/`-, `=`- or `+`-separated part starts with a vendor prefix (so `key=sk-…` and
/// `…/keys/sk-…` count).
fn has_vendor_prefix(token: &str) -> bool {
    token.split(['/', '=', '+']).any(|part| {
        KEY_PREFIXES
            .iter()
            .any(|p| part.len() > p.len() + 2 && part.starts_with(p))
    })
}

fn is_hex(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `id`, `hash`, `rotation`, `fingerprint`, `…_id`, `…_hash`, and `sha256` (the label of a
/// `sha256:<hex>` digest).
fn names_an_id(field: &str) -> bool {
    ID_FIELDS.contains(&field)
        || field == "sha256"
        || field.ends_with("_id")
        || field.ends_with("_hash")
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(token: &str) -> bool {
    let bytes = token.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A path, not a secret: it has a `/`, no base64 padding or `+`, and every segment is
/// shorter than 32 characters and plain, or a UUID. Plain means no upper case in a relative
/// path (`keyrotd/openrouter-prod/<uuid>`, a provider-side key name). In an absolute path
/// (`/home/Operator/keyrotd.db`) upper case is allowed, but not a random-looking segment:
/// 8+ letters and digits mixing upper case, lower case and digits with no `-`, `_` or `.`
/// in it, which a random base64 segment nearly always is and a directory name rarely
/// (`keyrotd-state-Ab12Cd`, `.tmpAb12Cd` have their separators).
fn is_plain_path(token: &str) -> bool {
    if !token.contains('/') || token.contains(['+', '=']) {
        return false;
    }
    let absolute = token.starts_with('/');
    token.split('/').all(|segment| {
        if is_uuid(segment) {
            return true;
        }
        let upper = segment.bytes().any(|b| b.is_ascii_uppercase());
        let random = upper
            && segment.len() >= 8
            && segment.bytes().all(|b| b.is_ascii_alphanumeric())
            && segment.bytes().any(|b| b.is_ascii_lowercase())
            && segment.bytes().any(|b| b.is_ascii_digit());
        segment.len() < LONG_RUN && if absolute { !random } else { !upper }
    })
}

/// The length of the `name=` that opens a human-format field token (`rotation=…`), when the
/// token is one: a lower-case name, `=`, then a value that is not more padding (`abc==` is
/// base64, not a field).
fn field_name_len(token: &str) -> Option<usize> {
    let eq = token.find('=')?;
    let name = &token[..eq];
    let value = &token[eq + 1..];
    let is_name = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    (is_name && !value.is_empty() && !value.starts_with('=')).then_some(eq)
}

/// The name of the field whose value starts at `start`, when the text right before it reads
/// `name=`, `name="`, `"name":"` (JSON) or `name:` (a `sha256:` digest), colour codes
/// between the parts allowed.
fn field_before(text: &str, start: usize) -> Option<&str> {
    let before = strip_ansi_suffix(&text[..start]);
    let before = before.strip_suffix('"').unwrap_or(before);
    let before = before.strip_suffix(['=', ':'])?;
    let before = strip_ansi_suffix(before);
    let before = before.strip_suffix('"').unwrap_or(before);
    let name_start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |at| at + 1);
    let mut name = &before[name_start..];
    if before[..name_start].ends_with("\u{1b}[") {
        // The run began inside a colour sequence (`ESC [ 3 m name`): skip its parameters and
        // final `m` (anything else after `ESC [` starts no colour, see `ansi_sequence_end`).
        let params = name
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b';')
            .count();
        if name.as_bytes().get(params) == Some(&b'm') {
            name = &name[params + 1..];
        }
    }
    (!name.is_empty()).then_some(name)
}

/// `text` without the ANSI colour sequences (`ESC [ params letter`) it ends with.
fn strip_ansi_suffix(text: &str) -> &str {
    let bytes = text.as_bytes();
    let mut end = bytes.len();
    while end > 0 && (0x40..=0x7e).contains(&bytes[end - 1]) {
        let mut params = end - 1;
        while params > 0
            && end - params < MAX_ANSI_LEN
            && (0x20..=0x3f).contains(&bytes[params - 1])
        {
            params -= 1;
        }
        if params >= 2 && bytes[params - 1] == b'[' && bytes[params - 2] == 0x1b {
            end = params - 2;
        } else {
            break;
        }
    }
    &text[..end]
}

/// Where the ANSI colour sequence (`ESC [`, digits and `;`, `m`) starting at `i` ends, if
/// one does. Nothing else is skipped: `ESC [` before a space or a key (`ESC[ sk-…`,
/// `ESC[sk-…`) would otherwise hide the key's first letter from the rule, and `sanitize`,
/// which drops only the escape byte, would then show the key whole.
fn ansi_sequence_end(bytes: &[u8], i: usize) -> Option<usize> {
    if bytes[i] != 0x1b || bytes.get(i + 1) != Some(&b'[') {
        return None;
    }
    let mut end = i + 2;
    while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b';') {
        end += 1;
    }
    (bytes.get(end) == Some(&b'm')).then_some(end + 1)
}

/// The end of the token starting at `start`: token bytes, and `*` after the first (so a
/// vendor's `sk-proj-****abcd` hint stays whole); `.` too when `dots` (a path's extension).
fn token_end(bytes: &[u8], start: usize, dots: bool) -> usize {
    let mut end = start;
    while end < bytes.len()
        && (is_token_byte(bytes[end])
            || (end > start && bytes[end] == b'*')
            || (dots && bytes[end] == b'.'))
    {
        end += 1;
    }
    end
}

/// Masks every key-shaped token in `text` with [`REDACTED`] (see the module doc), changing
/// nothing else (no truncation, no whitespace changes); borrows when there is nothing to
/// mask. Only runs of token characters are ever replaced. Used by [`sanitize`] and by the
/// log writer.
pub fn mask_key_shaped(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out = Masker::new(text);
    let mut i = 0;
    while i < bytes.len() {
        // An ANSI colour sequence (`ESC [ 0 m`) ends in a letter that would otherwise glue
        // itself to the next token: skip it whole.
        if let Some(end) = ansi_sequence_end(bytes, i) {
            i = end;
            continue;
        }
        if !is_token_byte(bytes[i]) {
            i += 1;
            continue;
        }
        // Token bytes are ASCII, so every index below is a character boundary.
        let start = i;
        let end = token_end(bytes, start, false);
        let value = match field_name_len(&text[start..end]) {
            Some(name_len) => {
                out.mask_if(
                    start,
                    start + name_len,
                    looks_like_key(&text[start..start + name_len], || None),
                );
                start + name_len + 1
            }
            None => start,
        };
        if bytes[value] == b'/' {
            let path_end = token_end(bytes, value, true);
            let path = &text[value..path_end];
            if path_end > end && is_plain_path(path) && !path.split('.').any(has_vendor_prefix) {
                i = path_end;
                continue;
            }
        }
        let field = || {
            if value > start {
                Some(&text[start..value - 1])
            } else {
                field_before(text, start)
            }
        };
        out.mask_if(value, end, looks_like_key(&text[value..end], field));
        i = end;
    }
    out.finish()
}

/// `text` with some ranges replaced by [`REDACTED`], copied only once the first one is.
struct Masker<'a> {
    text: &'a str,
    out: Option<String>,
    copied: usize,
}

impl<'a> Masker<'a> {
    fn new(text: &'a str) -> Self {
        Masker {
            text,
            out: None,
            copied: 0,
        }
    }

    /// Replaces `start..end` (after everything replaced so far) when `mask`.
    fn mask_if(&mut self, start: usize, end: usize, mask: bool) {
        if !mask {
            return;
        }
        let text = self.text;
        let out = self
            .out
            .get_or_insert_with(|| String::with_capacity(text.len()));
        out.push_str(&text[self.copied..start]);
        out.push_str(REDACTED);
        self.copied = end;
    }

    fn finish(self) -> Cow<'a, str> {
        match self.out {
            None => Cow::Borrowed(self.text),
            Some(mut out) => {
                out.push_str(&self.text[self.copied..]);
                Cow::Owned(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_exact_key_even_when_it_is_not_key_shaped() {
        let key = SecretString::from("hunter2-canary");
        let out = sanitize("bad key hunter2-canary given", Some(&key));
        assert_eq!(out, "bad key [REDACTED] given");
    }

    #[test]
    fn masks_key_shaped_tokens_of_every_vendor() {
        for secret in [
            "sk-proj-abc123DEF456",
            "sk-ant-api03-xyz789",
            "sk-or-v1-0123456789abcdef",
            "sk-admin-AbCdEf12",
            "gsk_abcdef123456",
            "AIzaSyD-abcdefghijkl",
            "0123456789abcdef0123456789abcdef01",
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0MTIzNA==",
            "sk-proj-****abcd",
        ] {
            let out = sanitize(
                &format!("Incorrect API key provided: {secret}. See docs"),
                None,
            );
            assert!(!out.contains(secret), "{secret} leaked in {out}");
            assert!(out.contains(REDACTED), "{out}");
            assert!(out.starts_with("Incorrect API key provided: "), "{out}");
        }
    }

    #[test]
    fn masks_keys_inside_assignments_and_paths() {
        for text in [
            "key=sk-ant-api03-short",
            "GET /v1/keys/sk-or-v1-abc/info",
            "a+gsk_abcdef",
            "\u{1b}[0msk-admin-Zz9Yy8",
            "/srv/app/config.sk-abc123/x.db",
            "QWxhZGRpbjpv/cGVuIHNl/c2FtZSBhbmQ/gbW9yZSBzZWNy/ZXQ",
        ] {
            let out = mask_key_shaped(text);
            assert!(out.contains(REDACTED), "{text} gave {out}");
        }
    }

    #[test]
    fn an_escape_that_starts_no_colour_hides_nothing() {
        for text in [
            "\u{1b}[ sk-proj-abcdefgh",
            "\u{1b}[sk-proj-abcdefgh",
            "x \u{1b}[1;2 sk-proj-abcdefgh, y",
        ] {
            let out = sanitize(text, None);
            assert!(!out.contains("k-proj-abcdefgh"), "{text:?} gave {out:?}");
        }
        // An upper-case UUID after `ESC [` is a UUID, not a cursor move and a key.
        let text = "\u{1b}[ 6AAAFAC4-1EA4-57A4-3073-6BA7BCE43696";
        assert!(
            matches!(mask_key_shaped(text), Cow::Borrowed(_)),
            "{text:?}"
        );
    }

    #[test]
    fn keeps_uuids_paths_and_fingerprints() {
        for text in [
            "rotation 550e8400-e29b-41d4-a716-446655440000 planned",
            "database /var/lib/keyrotd/some-long-directory-name/keyrotd.db",
            "/home/operator/projects/keyrotd/target/debug/keyrotd",
            "fingerprint sha256:abcdef012345",
            "keyrotd::providers::client: HTTP 200",
            "keyrotd/openrouter-prod/550e8400-e29b-41d4-a716-446655440000",
            "\u{1b}[2mdetail\u{1b}[0m=plain",
        ] {
            assert!(
                matches!(mask_key_shaped(text), Cow::Borrowed(_)),
                "{text} was changed"
            );
        }
    }

    const HASH64: &str = "5f1c0a3e9b7d2468ace013579bdf2468ace013579bdf2468ace013579bdf2468";
    const DASHLESS_UUID: &str = "550e8400e29b41d4a716446655440000";

    /// One planted key of every shape the masking knows.
    fn key_shapes() -> Vec<String> {
        vec![
            format!("sk-proj-{}", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z".repeat(2)),
            format!("sk-or-v1-{HASH64}"),
            format!("sk-ant-api03-{}-AA", "x7Y_q2W-e4R".repeat(8)),
            "sk-ant-admin01-Zz9Yy8Xx7Ww6".to_string(),
            "AIzaSyD-abcdefghijklmnopqrstuvwxyz01234".to_string(),
            // Azure: 32 hex digits, and the newer 84-character keys.
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0".to_string(),
            "7Fq2".repeat(21),
            // A relay's or an in-house service's key: no prefix, long and random.
            "Hs9kQ2mV7xL4pR8tW1zN6bC3dF5gJ0yE".to_string(),
            format!("sim-{}", "0123456789abcdef".repeat(2)),
        ]
    }

    #[test]
    fn masks_every_key_shape_wherever_it_stands() {
        for key in key_shapes() {
            for text in [
                format!("Incorrect API key provided: {key}."),
                format!("detail={key}"),
                format!("detail=\"{key}\""),
                format!("{{\"detail\":\"{key}\"}}"),
                format!("{{\"detail\":\"HTTP 401 {key}\"}}"),
                format!("\u{1b}[3mdetail\u{1b}[0m\u{1b}[2m=\u{1b}[0m{key}"),
            ] {
                let out = mask_key_shaped(&text);
                assert!(!out.contains(&key), "{key} kept in {out}");
                assert!(out.contains(REDACTED), "{out}");
            }
        }
    }

    #[test]
    fn vendor_prefixes_are_masked_even_in_id_fields() {
        for key in [
            "sk-or-v1-0123456789abcdef",
            "sk-ant-api03-xyz789",
            "AIzaSyD-abc123",
        ] {
            for text in [
                format!("remote_id={key}"),
                format!("{{\"key_id\":\"{key}\"}}"),
            ] {
                let out = mask_key_shaped(&text);
                assert!(!out.contains(key), "{key} kept in {out}");
            }
        }
    }

    #[test]
    fn keeps_hex_ids_in_fields_that_name_an_id() {
        for text in [
            format!("new key issued remote_id={HASH64}"),
            format!("{{\"remote_id\":\"{HASH64}\",\"message\":\"new key issued\"}}"),
            format!("\u{1b}[3mremote_id\u{1b}[0m\u{1b}[2m=\u{1b}[0m{HASH64}"),
            format!("\u{1b}[3mrotation\u{1b}[0m\u{1b}[2m=\u{1b}[0m{DASHLESS_UUID}"),
            format!("hash=\"{HASH64}\""),
            format!("key_hash={HASH64}"),
            format!("rotation={DASHLESS_UUID}"),
            format!("{{\"rotation\":\"{DASHLESS_UUID}\"}}"),
            format!("id={DASHLESS_UUID}"),
            format!("fingerprint=sha256:{HASH64}"),
            "rotation=20260101T030000-abcdef12".to_string(),
            "rotation=550e8400-e29b-41d4-a716-446655440000".to_string(),
        ] {
            assert!(
                matches!(mask_key_shaped(&text), Cow::Borrowed(_)),
                "{text} was changed to {}",
                mask_key_shaped(&text)
            );
        }
    }

    #[test]
    fn the_same_hex_outside_an_id_field_is_masked() {
        for hex in [HASH64, DASHLESS_UUID] {
            for text in [
                format!("deleted {hex}"),
                format!("detail={hex}"),
                format!("{{\"detail\":\"{hex}\"}}"),
                format!("{{\"message\":\"remote_id {hex}\"}}"),
                format!("api_key={hex}"),
            ] {
                let out = mask_key_shaped(&text);
                assert!(!out.contains(hex), "{hex} kept in {out}");
            }
        }
    }

    #[test]
    fn keeps_paths_in_fields() {
        for text in [
            "keyrotd ready database=/tmp/keyrotd-state-Ab12Cd/keyrotd.db credentials=1",
            "database=/var/lib/keyrotd/some-long-directory-name/keyrotd.db",
            "{\"database\":\"/home/Operator/work/keyrotd/target/tmp/.tmpAb12Cd/keyrotd.db\"}",
            "path=/home/Operator/projects/keyrotd-Config2/keyrotd.toml",
            "listen_address=127.0.0.1:9877",
        ] {
            assert!(
                matches!(mask_key_shaped(text), Cow::Borrowed(_)),
                "{text} was changed to {}",
                mask_key_shaped(text)
            );
        }
    }

    #[test]
    fn a_field_name_stays_when_its_value_is_masked() {
        let key = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
        assert_eq!(
            mask_key_shaped(&format!("detail={key}")),
            "detail=[REDACTED]"
        );
        // Base64 padding is not a field.
        let padded = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0MTIzNA==";
        assert_eq!(mask_key_shaped(padded), REDACTED);
    }

    #[test]
    fn control_characters_cannot_rebuild_the_key() {
        let key = SecretString::from("canary-XYZ-0000");
        let out = sanitize("canary-XYZ\u{7}-0000", Some(&key));
        assert!(!out.contains("canary-XYZ-0000"), "{out}");
    }

    #[test]
    fn keeps_ordinary_error_text() {
        let text = "insufficient_quota: You exceeded your current quota, please check your plan.";
        assert_eq!(sanitize(text, None), text);
        assert_eq!(
            sanitize("HTTP 401 invalid_api_key", None),
            "HTTP 401 invalid_api_key"
        );
    }

    #[test]
    fn truncates_and_flattens() {
        let long = "word ".repeat(100);
        let out = sanitize(&long, None);
        assert!(out.chars().count() <= MAX_LEN + 1);
        assert!(out.ends_with('…'));
        assert_eq!(sanitize("a\n\tb\u{7}c", None), "a bc");
    }

    #[test]
    fn masking_happens_before_truncation() {
        // A key straddling the cut must not leave a fragment behind.
        let key = SecretString::from("canary-XYZ-0000");
        let text = format!("{}{}", "x ".repeat(95), "canary-XYZ-0000");
        let out = sanitize(&text, Some(&key));
        assert!(!out.contains("canary"), "{out}");
    }
}
