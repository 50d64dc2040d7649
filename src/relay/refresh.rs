//! The pools' view of the store: each credential's current key, and its previous key while
//! in its grace period as a fallback, read again whenever the store's generation moves.
//!
//! The generation is one small query a refresh interval; it moves with any change, by this
//! daemon, the CLI beside it or another replica, so a rotation reaches the relay within an
//! interval without anyone telling it. A key already known is not decrypted again, and
//! keeps its health (cool-down, out after a 401) across refreshes. A refresh that fails
//! keeps the pools as they were: the keys in them were valid a moment ago, and the
//! provider tells the relay soon enough if one is not.

use super::pool::{Health, PoolKey};
use super::Route;
use crate::clock::Clock;
use crate::config::KeyHeader;
use crate::model::{CheckStatus, Stage};
use crate::store::{KeyVersion, Store, StoreResult};
use hyper::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What a refresh remembers of the keys it loaded.
#[derive(Default)]
pub(crate) struct Known {
    keys: HashMap<i64, (SecretString, Arc<Health>)>,
}

/// A key version read for the pools, its secret and its health.
type Loaded = (KeyVersion, SecretString, Arc<Health>);

/// A credential the relay serves, with its grace period.
pub(crate) struct PooledCredential {
    pub(crate) name: Arc<str>,
    pub(crate) grace: Duration,
}

/// Reads every pooled credential's keys and swaps them into the routes' pools.
pub(crate) async fn load(
    store: &dyn Store,
    clock: &dyn Clock,
    credentials: &[PooledCredential],
    routes: &[Route],
    known: &mut Known,
) -> StoreResult<()> {
    let now = clock.now();
    let mut read: HashMap<&str, Vec<Loaded>> = HashMap::new();
    let mut still_known = HashMap::new();
    for credential in credentials {
        let mut usable = Vec::new();
        let versions = store.versions(&credential.name).await?;
        for version in in_pool_order(versions, credential.grace, now) {
            let (secret, health) = match known.keys.get(&version.id) {
                Some((secret, health)) => (secret.clone(), health.clone()),
                None => (store.secret(version.id).await?, Arc::default()),
            };
            if version.last_check_status == Some(CheckStatus::Valid) {
                if let Some(at) = version.last_check_at {
                    health.checked_valid(at);
                }
            }
            still_known.insert(version.id, (secret.clone(), health.clone()));
            usable.push((version, secret, health));
        }
        read.insert(&credential.name, usable);
    }
    for route in routes {
        let mut currents = Vec::new();
        let mut fallbacks = Vec::new();
        for (slot, name) in route.credentials.iter().enumerate() {
            for (version, secret, health) in read.get(&**name).into_iter().flatten() {
                let Some(header) = header_value(route.header, secret) else {
                    tracing::warn!(credential = %name, version = version.id, "a stored key cannot be sent in an HTTP header; left out of the relay's pool");
                    continue;
                };
                let key = Arc::new(PoolKey {
                    slot,
                    credential: name.clone(),
                    version: version.id,
                    header,
                    secret: secret.clone(),
                    fallback: version.stage == Stage::Previous,
                    health: health.clone(),
                });
                if key.fallback {
                    fallbacks.push(key);
                } else {
                    currents.push(key);
                }
            }
        }
        currents.extend(fallbacks);
        route.pool.replace(currents);
    }
    known.keys = still_known;
    Ok(())
}

/// The versions a pool uses: the current key, then the previous one while in grace; a key
/// its last check found invalid is left out.
fn in_pool_order(mut versions: Vec<KeyVersion>, grace: Duration, now: i64) -> Vec<KeyVersion> {
    versions.retain(|v| {
        let in_grace =
            v.stage == Stage::Previous && v.stage_changed_at + grace.as_secs() as i64 > now;
        v.has_secret
            && (v.stage == Stage::Current || in_grace)
            && v.last_check_status != Some(CheckStatus::Invalid)
    });
    versions.sort_by_key(|v| (v.stage != Stage::Current, -v.id));
    versions
}

/// The header value a vendor expects, marked sensitive so hyper never logs it.
fn header_value(header: KeyHeader, secret: &SecretString) -> Option<HeaderValue> {
    let mut value = match header {
        KeyHeader::Bearer => {
            let mut bytes = Vec::with_capacity(7 + secret.expose_secret().len());
            bytes.extend_from_slice(b"Bearer ");
            bytes.extend_from_slice(secret.expose_secret().as_bytes());
            let value = HeaderValue::from_bytes(&bytes).ok();
            zeroize::Zeroize::zeroize(&mut bytes);
            value?
        }
        _ => HeaderValue::from_str(secret.expose_secret()).ok()?,
    };
    value.set_sensitive(true);
    Some(value)
}

/// Refreshes the pools whenever the store's generation moves, until aborted.
pub(crate) async fn follow(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    credentials: Vec<PooledCredential>,
    routes: Arc<[Route]>,
    mut known: Known,
    mut seen: Option<i64>,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let generation = match store.generation().await {
            Ok(generation) => generation,
            Err(error) => {
                tracing::warn!(%error, "relay: cannot read the store's generation; keeping the keys it has");
                continue;
            }
        };
        if seen == Some(generation) {
            continue;
        }
        match load(&*store, &*clock, &credentials, &routes, &mut known).await {
            Ok(()) => seen = Some(generation),
            Err(error) => {
                tracing::warn!(%error, "relay: cannot read the keys; keeping the ones it has")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: i64, stage: Stage, changed: i64) -> KeyVersion {
        KeyVersion {
            id,
            credential: "c".into(),
            stage,
            fingerprint: String::new(),
            provider_key_id: None,
            rotation_id: None,
            created_at: 0,
            expires_at: None,
            stage_changed_at: changed,
            last_check_at: None,
            last_check_status: None,
            has_secret: true,
        }
    }

    #[test]
    fn the_pool_has_the_current_key_then_the_previous_one_while_in_grace() {
        let grace = Duration::from_secs(100);
        let versions = vec![
            version(1, Stage::Revoked, 0),
            version(2, Stage::Previous, 50),
            version(3, Stage::Current, 50),
            version(4, Stage::Pending, 60),
        ];
        let ids = |now| -> Vec<i64> {
            in_pool_order(versions.clone(), grace, now)
                .iter()
                .map(|v| v.id)
                .collect()
        };
        assert_eq!(ids(100), [3, 2]);
        assert_eq!(ids(150), [3], "past its grace the previous key is gone");
        let mut invalid = versions.clone();
        invalid[2].last_check_status = Some(CheckStatus::Invalid);
        assert_eq!(
            in_pool_order(invalid, grace, 100)
                .iter()
                .map(|v| v.id)
                .collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn header_values_are_shaped_per_vendor_and_sensitive() {
        let secret = SecretString::from("sk-abc".to_string());
        let bearer = header_value(KeyHeader::Bearer, &secret).unwrap();
        assert_eq!(bearer, "Bearer sk-abc");
        assert!(bearer.is_sensitive());
        assert_eq!(header_value(KeyHeader::XApiKey, &secret).unwrap(), "sk-abc");
        assert!(header_value(KeyHeader::ApiKey, &SecretString::from("a\nb".to_string())).is_none());
    }
}
