//! The orphan sweep: before a rotation issues a key (and after an issue that failed), keys
//! at the provider that this database issued but never stored (the process died between
//! the provider's answer and the commit, or the answer never arrived) are deleted; their
//! secret is lost, so nobody can be holding them.
//!
//! Only *provable* own orphans are deleted, because a wrong guess deletes a key a consumer
//! is using: the name carries this database's installation id and this credential, the
//! rotation id in it is one this database planned, and no live stored version is that key
//! (by provider key id, by name, or by the rotation that issued it). No provider listing
//! carries the key's value, so there is no fingerprint to compare; the rules above already
//! exclude every key the store holds.
//!
//! Every other `keyrotd/...` key of this credential is reported, never deleted: another
//! installation's (two databases sharing one provider account), one named by a rotation
//! this database never planned (issued by a lost database, or after the backup this one was
//! restored from, possibly re-imported by the operator and in a consumer's hands), or an
//! old-format `keyrotd/<credential>/<rotation>` name from before installation ids whose
//! rotation is unknown here. An old-format name whose rotation *is* in this database's
//! `rotations` table was issued by this database before the upgrade, and is swept like a
//! current-format one. A report is an `orphan_unplaced` event and a warning, once per key
//! per process, and the `keyrotd_provider_keys_unplaced{credential}` gauge.

use super::{issued_key_name, CredentialRuntime, Engine, StepError};
use crate::model::Stage;
use crate::providers::{self, Issuer, RemoteKey};
use crate::store::{EventKind, KeyVersion};
use prometheus::{IntGaugeVec, Opts};
use std::collections::HashSet;
use std::sync::Mutex;

/// Every keyrotd name starts so; the sweep lists them all and places each.
const NAME_PREFIX: &str = "keyrotd/";

/// Where a provider key named like keyrotd's belongs, as far as its name tells.
#[derive(Debug, PartialEq, Eq)]
enum Origin<'a> {
    /// `keyrotd/<this installation>/<credential>/<rotation>`.
    Ours { rotation: &'a str },
    /// `keyrotd/<credential>/<rotation>`: issued before installation ids existed.
    Legacy { rotation: &'a str },
    /// `keyrotd/<other installation>/<credential>/<rotation>`.
    Foreign,
}

/// Places `name` for `credential` of installation `installation`; `None` for a key of
/// another credential (its own sweep looks at it) or a name keyrotd never makes.
fn place<'a>(name: &'a str, installation: &str, credential: &str) -> Option<Origin<'a>> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let rotation_of = |tail: &'a str| -> Option<&'a str> {
        let rotation = tail.strip_prefix(credential)?.strip_prefix('/')?;
        (!rotation.is_empty() && !rotation.contains('/')).then_some(rotation)
    };
    if let Some(rotation) = rest
        .strip_prefix(installation)
        .and_then(|tail| tail.strip_prefix('/'))
        .and_then(rotation_of)
    {
        return Some(Origin::Ours { rotation });
    }
    if let Some(rotation) = rotation_of(rest) {
        return Some(Origin::Legacy { rotation });
    }
    let (first, tail) = rest.split_once('/')?;
    (looks_like_installation(first) && rotation_of(tail).is_some()).then_some(Origin::Foreign)
}

/// The shape of an installation id (12 lowercase hex digits): a credential named like
/// `team/app` is not mistaken for another installation's `team`.
fn looks_like_installation(segment: &str) -> bool {
    segment.len() == 12
        && segment
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What the sweep reported: the keys already announced (once per key per process) and the
/// gauge of keys found unplaced by each credential's last sweep.
pub(super) struct UnplacedKeys {
    reported: Mutex<HashSet<(String, String)>>,
    gauge: IntGaugeVec,
}

impl Default for UnplacedKeys {
    fn default() -> Self {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "keyrotd_provider_keys_unplaced",
                "Keys at the provider named like keyrotd's that the last orphan sweep could not place (another installation's, or issued before this database); never deleted.",
            ),
            &["credential"],
        )
        .expect("valid metric definition");
        UnplacedKeys {
            reported: Mutex::new(HashSet::new()),
            gauge,
        }
    }
}

impl UnplacedKeys {
    pub(super) fn gauge(&self) -> IntGaugeVec {
        self.gauge.clone()
    }

    /// Whether `remote_id` of `credential` is reported for the first time in this process.
    fn first_sighting(&self, credential: &str, remote_id: &str) -> bool {
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((credential.to_string(), remote_id.to_string()))
    }
}

impl Engine {
    /// Deletes this credential's provable orphans and reports the keys it cannot place
    /// (see the module doc). Only called with this credential's rotation in flight (the
    /// store allows one), so no other rotation of it can be issuing concurrently.
    pub(super) async fn delete_orphans(
        &self,
        rt: &CredentialRuntime,
        issuer: &dyn Issuer,
    ) -> Result<(), StepError> {
        let transient = |e: crate::store::StoreError| StepError::transient("issue", e.to_string());
        let listed = match issuer.list(NAME_PREFIX).await {
            Ok(listed) => listed,
            Err(providers::ProviderError::Unsupported { .. }) => return Ok(()),
            Err(error) => {
                return Err(StepError::transient(
                    "issue",
                    format!("listing keys for orphans failed: {error}"),
                ))
            }
        };
        let installation = self.store.installation_id().await.map_err(transient)?;
        let versions = self.store.versions(&rt.name).await.map_err(transient)?;
        let live: Vec<&KeyVersion> = versions
            .iter()
            .filter(|v| matches!(v.stage, Stage::Pending | Stage::Current | Stage::Previous))
            .collect();
        let known = |key: &RemoteKey| {
            live.iter().any(|v| {
                v.provider_key_id.as_deref() == Some(key.remote_id.as_str())
                    || v.provider_key_id.as_deref() == Some(key.name.as_str())
                    || v.rotation_id.as_deref().is_some_and(|r| {
                        issued_key_name(&installation, &rt.name, r) == key.name
                            || format!("{NAME_PREFIX}{}/{r}", rt.name) == key.name
                    })
            })
        };
        let mut unplaced = 0;
        for key in &listed {
            let Some(origin) = place(&key.name, &installation, &rt.name) else {
                continue;
            };
            if known(key) {
                continue;
            }
            let planned = match origin {
                Origin::Ours { rotation } | Origin::Legacy { rotation } => self
                    .store
                    .rotation_planned(&rt.name, rotation)
                    .await
                    .map_err(transient)?,
                Origin::Foreign => false,
            };
            if planned {
                self.delete_orphan(rt, issuer, key).await?;
            } else {
                unplaced += 1;
                self.report_unplaced(rt, key).await;
            }
        }
        self.unplaced
            .gauge
            .with_label_values(&[&rt.name])
            .set(unplaced);
        Ok(())
    }

    async fn delete_orphan(
        &self,
        rt: &CredentialRuntime,
        issuer: &dyn Issuer,
        orphan: &RemoteKey,
    ) -> Result<(), StepError> {
        // The id is written as a `remote_id=` field: the reason is logged, and the log
        // masking keeps a long hex id (OpenRouter's key hash) readable only there.
        issuer.revoke(&orphan.remote_id).await.map_err(|e| {
            StepError::transient(
                "issue",
                format!("deleting orphan remote_id={}: {e}", orphan.remote_id),
            )
        })?;
        tracing::warn!(credential = %rt.name, remote_id = %orphan.remote_id, "deleted an orphaned key from an interrupted rotation");
        let _ = self
            .store
            .append_event(
                Some(&rt.name),
                None,
                EventKind::OrphanDeleted,
                "recovery",
                &format!(
                    "provider key {} ({}) was issued but never stored",
                    orphan.remote_id, orphan.name
                ),
                self.clock.now(),
            )
            .await;
        Ok(())
    }

    async fn report_unplaced(&self, rt: &CredentialRuntime, key: &RemoteKey) {
        if !self.unplaced.first_sighting(&rt.name, &key.remote_id) {
            return;
        }
        tracing::warn!(credential = %rt.name, remote_id = %key.remote_id, "a key at the provider is named like this credential's but was not issued by a rotation of this database (another installation's, or from before a restore or re-import); it is left alone");
        let _ = self
            .store
            .append_event(
                Some(&rt.name),
                None,
                EventKind::OrphanUnplaced,
                "recovery",
                &format!(
                    "provider key {} ({}) is not this database's to delete; left alone",
                    key.remote_id, key.name
                ),
                self.clock.now(),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "0123456789ab";
    const OTHER: &str = "ba9876543210";

    #[test]
    fn names_are_placed_by_installation_and_credential() {
        assert_eq!(
            place(&format!("keyrotd/{ME}/app/r1"), ME, "app"),
            Some(Origin::Ours { rotation: "r1" })
        );
        assert_eq!(
            place("keyrotd/app/r1", ME, "app"),
            Some(Origin::Legacy { rotation: "r1" })
        );
        assert_eq!(
            place(&format!("keyrotd/{OTHER}/app/r1"), ME, "app"),
            Some(Origin::Foreign)
        );
        // Another credential's keys are its own sweep's business.
        assert_eq!(place(&format!("keyrotd/{ME}/other/r1"), ME, "app"), None);
        assert_eq!(place("keyrotd/app/x/r1", ME, "app"), None);
        assert_eq!(place("keyrotd/team/app/r1", ME, "app"), None);
        assert_eq!(place("manual", ME, "app"), None);
        // A credential with a slash in its name.
        assert_eq!(
            place(&format!("keyrotd/{ME}/team/app/r1"), ME, "team/app"),
            Some(Origin::Ours { rotation: "r1" })
        );
        assert_eq!(place(&format!("keyrotd/{ME}/app/"), ME, "app"), None);
    }
}
