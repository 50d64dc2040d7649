//! Scrubbing of text that came from outside (vendor error messages, transport errors) before
//! it reaches a `detail`, an error message, a log line or a metric.
//!
//! Two layers: the exact key we sent is masked wherever it appears, and so is anything that
//! merely *looks* like a key (vendor prefixes, long base64/hex runs), because a vendor may
//! echo a different key, a truncated one, or the management key.

use secrecy::{ExposeSecret, SecretString};

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
    let out = out.trim();
    if out.chars().count() > MAX_LEN {
        let mut cut: String = out.chars().take(MAX_LEN).collect();
        cut.push('…');
        cut
    } else {
        out.to_string()
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '=')
}

fn looks_like_key(token: &str) -> bool {
    if token.chars().count() >= LONG_RUN {
        return true;
    }
    KEY_PREFIXES
        .iter()
        .any(|p| token.len() > p.len() + 2 && token.starts_with(p))
}

fn mask_key_shaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if looks_like_key(token) {
            out.push_str(REDACTED);
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in text.chars() {
        // `*` and `.` are kept inside a token so a vendor's "sk-proj-****abcd" hint stays whole.
        if is_token_char(c) || (c == '*' && !token.is_empty()) {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
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
