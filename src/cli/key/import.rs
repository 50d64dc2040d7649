//! `keyrotd key import NAME`: how an operator hands keyrotd a key — the first one of a
//! credential, or the replacement for a provider without a key-issuing API. A first key is
//! delivered at once; a replacement goes through the rotation steps (verify, deliver,
//! promote) like any other new key.

use super::rotation_context;
use crate::cli::actor;
use crate::config::Config;
use crate::model::{Stage, UnixTime};
use crate::store::{KeyVersion, NewKey, Store};
use anyhow::{bail, Context};
use secrecy::SecretString;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroize;

pub(super) async fn run(
    config: &Config,
    store: Arc<dyn Store>,
    name: &str,
    from_file: Option<&Path>,
    expires_at: Option<UnixTime>,
    now: UnixTime,
) -> anyhow::Result<()> {
    if config.credential(name).is_none() {
        bail!(
            "unknown credential {name:?}: add a [[credential]] with this name to the config first"
        );
    }
    let secret = read_secret(from_file)?;
    let key = NewKey {
        secret,
        expires_at,
        provider_key_id: None,
        rotation_id: None,
    };
    let version = store.import_key(name, key, &actor(), now).await?;
    println!(
        "imported {} for {name} as version {} ({})",
        version.fingerprint, version.id, version.stage
    );
    match version.stage {
        Stage::Current => deliver_first_key(config, store, name, &version).await,
        Stage::Pending => promote_replacement(config, store, name).await,
        _ => Ok(()),
    }
}

/// The credential's first key: hand it to the consumers right away.
async fn deliver_first_key(
    config: &Config,
    store: Arc<dyn Store>,
    name: &str,
    version: &KeyVersion,
) -> anyhow::Result<()> {
    let (engine, runtime) = rotation_context(config, store, name)?;
    let delivered = engine.deliver_current(&runtime).await?;
    if delivered > 0 {
        println!("delivered {} to {delivered} targets", version.fingerprint);
    }
    Ok(())
}

/// A replacement key: verify, deliver and promote it now, like any rotation.
async fn promote_replacement(
    config: &Config,
    store: Arc<dyn Store>,
    name: &str,
) -> anyhow::Result<()> {
    let (engine, runtime) = rotation_context(config, store, name)?;
    let rotated = engine.rotate(&runtime, &actor()).await?;
    println!(
        "verified, delivered and promoted {} (rotation {})",
        rotated.fingerprint, rotated.rotation_id
    );
    Ok(())
}

/// Reads one key from a file or stdin, trimming surrounding whitespace.
fn read_secret(from_file: Option<&Path>) -> anyhow::Result<SecretString> {
    let mut raw = String::new();
    match from_file {
        Some(path) => {
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_string(&mut raw))
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("Paste the key and press Ctrl-D:");
            }
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut raw)
                .context("cannot read the key from stdin")?;
        }
    }
    let trimmed = raw.trim();
    let problem = if trimmed.is_empty() {
        Some("the key is empty")
    } else if trimmed.contains(['\n', '\r']) {
        Some("the key spans several lines; give exactly one key")
    } else if trimmed.chars().any(|c| c.is_control() || c == ' ') {
        Some("the key contains spaces or control characters")
    } else {
        None
    };
    let result = match problem {
        Some(problem) => Err(anyhow::anyhow!(problem)),
        None => Ok(SecretString::from(trimmed.to_string())),
    };
    raw.zeroize();
    result
}

/// `--expires-at`: accepts RFC 3339, a plain date (midnight UTC) or Unix seconds.
pub(super) fn parse_time(text: &str) -> Result<UnixTime, String> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp());
    }
    Err(format!(
        "{text:?} is not a time: use RFC 3339 (2026-12-31T00:00:00Z), a date (2026-12-31) or Unix seconds"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_three_forms() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_time("2026-12-31").unwrap(), 1_798_675_200);
        assert_eq!(parse_time("2026-12-31T00:00:00Z").unwrap(), 1_798_675_200);
        assert!(parse_time("next tuesday").is_err());
    }
}
