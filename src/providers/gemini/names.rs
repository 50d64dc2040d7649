//! keyrotd's key names at Google, which allows a `displayName` of at most 63 characters.
//!
//! keyrotd names an issued key `keyrotd/<installation>/<credential>/<rotation id>`: 46
//! characters plus the credential's name (1-64), so only credentials of up to 17 characters
//! fit. The orphan sweep needs the whole name back from a listing (it places a key by the
//! installation, credential and rotation in it), so:
//!
//! - the whole name always travels in the key's annotation [`NAME_ANNOTATION`], which a
//!   listing returns with the key (annotations are settable at creation and have no such
//!   limit); a listing reads the name from it;
//! - the display name is the whole name when it fits, else a shortened one that keeps the
//!   installation, the start of the credential and the rotation id for a person reading the
//!   console, plus 8 hex digits of the whole name's SHA-256: unique even between two
//!   credentials whose names start alike, and checkable against a candidate whole name.
//!
//! A key whose annotation was removed by hand is listed under its display name: a whole name
//! is placed as before, a shortened one is placed by nobody, so the sweep leaves it alone
//! (it never deletes what it cannot prove is its own).

use sha2::{Digest, Sha256};

/// Google's limit on `displayName`.
pub(super) const DISPLAY_NAME_MAX: usize = 63;

/// The annotation holding the whole keyrotd name of a key keyrotd issued.
pub(super) const NAME_ANNOTATION: &str = "keyrotd-name";

/// Marks a shortened display name; credentials and rotation ids never contain it.
const CUT: char = '~';

/// The display name for the key keyrotd calls `name`: `name` itself when it fits, else
/// `<start of name>~<8 hex of SHA-256(name)>/<rotation id>`.
pub(super) fn display_name(name: &str) -> String {
    if name.chars().count() <= DISPLAY_NAME_MAX {
        return name.to_string();
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    let digest = &digest[..8];
    // Keep the last segment (the rotation id, 24 characters) whole when it is short enough
    // to leave room for the installation.
    let tail = name
        .rsplit_once('/')
        .map(|(_, tail)| tail)
        .filter(|tail| !tail.is_empty() && tail.chars().count() <= 32)
        .map(|tail| format!("/{tail}"))
        .unwrap_or_default();
    let room = DISPLAY_NAME_MAX - 1 - digest.len() - tail.chars().count();
    let head: String = name.chars().take(room).collect();
    format!("{head}{CUT}{digest}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALLATION: &str = "0123456789ab";
    const ROTATION: &str = "20261130T042418-abcdef12";

    fn full(credential: &str) -> String {
        format!("keyrotd/{INSTALLATION}/{credential}/{ROTATION}")
    }

    #[test]
    fn a_name_that_fits_is_kept() {
        let name = full("gemini-prod");
        assert_eq!(display_name(&name), name);
        let longest = full(&"c".repeat(17));
        assert_eq!(longest.len(), DISPLAY_NAME_MAX);
        assert_eq!(display_name(&longest), longest);
    }

    #[test]
    fn a_long_name_is_shortened_uniquely_and_keeps_installation_and_rotation() {
        let a = full(&format!("{}-a", "gemini-team-production".repeat(2)));
        let b = full(&format!("{}-b", "gemini-team-production".repeat(2)));
        let (short_a, short_b) = (display_name(&a), display_name(&b));
        for short in [&short_a, &short_b] {
            assert_eq!(short.chars().count(), DISPLAY_NAME_MAX, "{short}");
            assert!(short.starts_with(&format!("keyrotd/{INSTALLATION}/gemini")));
            assert!(short.ends_with(&format!("/{ROTATION}")));
            assert!(short.contains(CUT));
        }
        assert_ne!(short_a, short_b, "names that start alike stay apart");
        assert_eq!(display_name(&a), short_a, "deterministic");
        // The longest credential name the config allows.
        let longest = full(&"x".repeat(64));
        assert_eq!(display_name(&longest).chars().count(), DISPLAY_NAME_MAX);
        // A name with no short last segment is cut as a whole.
        let odd = "y".repeat(100);
        assert_eq!(display_name(&odd).chars().count(), DISPLAY_NAME_MAX);
    }
}
