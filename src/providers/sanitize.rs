//! Scrubbing of text that came from outside (vendor error messages, transport errors) before
//! it reaches a `detail`, an error message, a log line or a metric.
//!
//! Two layers: the exact key we sent is masked wherever it appears, and so is anything that
//! merely *looks* like a key (vendor prefixes, long base64/hex runs), because a vendor may
//! echo a different key, a truncated one, or the management key.

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

/// A token is key-shaped when any `/`-, `=`- or `+`-separated part of it starts with a vendor
/// prefix (so `key=sk-…` and `…/keys/sk-…` count), or when it is a long run of token
/// characters, except the two long runs that ordinary text is full of: canonical UUIDs
/// (rotation ids) and paths made of plain segments.
fn looks_like_key(token: &str) -> bool {
    let prefixed = token.split(['/', '=', '+']).any(|part| {
        KEY_PREFIXES
            .iter()
            .any(|p| part.len() > p.len() + 2 && part.starts_with(p))
    });
    if prefixed {
        return true;
    }
    token.len() >= LONG_RUN && !is_uuid(token) && !is_plain_path(token)
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

/// A path, not a secret: it has a `/`, no base64 padding or `+`, and every segment is short
/// and plain or a UUID. Plain means no upper case in a relative path
/// (`keyrotd/openrouter-prod/<uuid>`, a provider-side key name); in an absolute path
/// (`/home/Operator/keyrotd.db`) upper case is allowed, but not upper case, lower case and
/// digits mixed over 8+ characters, which a random base64 segment nearly always has.
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
            && segment.bytes().any(|b| b.is_ascii_lowercase())
            && segment.bytes().any(|b| b.is_ascii_digit())
            && segment.len() >= 8;
        segment.len() < LONG_RUN && if absolute { !random } else { !upper }
    })
}

/// Masks every key-shaped token in `text` with [`REDACTED`], changing nothing else (no
/// truncation, no whitespace changes); borrows when there is nothing to mask. A token is a
/// run of `A-Z a-z 0-9 - _ + / =` (and `*` after its first character, so a vendor's
/// `sk-proj-****abcd` hint stays whole). Used by [`sanitize`] and by the log writer.
pub fn mask_key_shaped(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        // An ANSI colour sequence (`ESC [ 0 m`) ends in a letter that would otherwise glue
        // itself to the next token: skip it whole.
        if bytes[i] == 0x1b && bytes.get(i + 1) == Some(&b'[') {
            i += 2;
            while i < bytes.len() && !(0x40..=0x7e).contains(&bytes[i]) {
                i += 1;
            }
            i += 1;
            continue;
        }
        if !is_token_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (is_token_byte(bytes[i]) || bytes[i] == b'*') {
            i += 1;
        }
        // Token bytes are ASCII, so `start` and `i` are character boundaries.
        if looks_like_key(&text[start..i]) {
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = i;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[copied..]);
            Cow::Owned(out)
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
            "QWxhZGRpbjpv/cGVuIHNl/c2FtZSBhbmQ/gbW9yZSBzZWNy/ZXQ",
        ] {
            let out = mask_key_shaped(text);
            assert!(out.contains(REDACTED), "{text} gave {out}");
        }
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
