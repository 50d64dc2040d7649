//! The issue step: a new key from the provider (or an operator's imported one), stored
//! before anything else happens, and the recovery of keys an interrupted rotation issued
//! but never stored.

use super::{issued_key_name, CredentialRuntime, Engine, StepError};
use crate::model::Stage;
use crate::providers::{self, CurrentKey, Issuer};
use crate::store::{EventKind, KeyVersion, Lease, NewKey, Rotation};
use secrecy::SecretString;

impl Engine {
    pub(super) async fn issue(
        &self,
        rt: &CredentialRuntime,
        rotation: &Rotation,
        lease: &Lease,
    ) -> Result<i64, StepError> {
        let now = self.clock.now();
        if let Some(version) = self
            .imported_pending(&rt.name)
            .await
            .map_err(|e| StepError::transient("issue", e.to_string()))?
        {
            self.store
                .adopt_pending(lease, version.id, now)
                .await
                .map_err(|e| StepError::store("issue", e))?;
            return Ok(version.id);
        }
        let issuer = rt
            .issuer
            .as_ref()
            .ok_or_else(|| StepError::transient("issue", "no issuing API and no imported key"))?;
        let name = issued_key_name(&rt.name, &rotation.id);
        self.renew(lease, "issue").await?;
        self.delete_orphans(rt, issuer.as_ref()).await?;
        let (current, current_secret) = self.key_in_use(rt).await?;
        let current = current.as_ref().map(|v| CurrentKey {
            remote_id: v.provider_key_id.as_deref(),
            secret: current_secret.as_ref(),
        });
        self.renew(lease, "issue").await?;
        let issued = issuer.issue_after(&name, current).await.map_err(|e| {
            if e.is_transient() {
                StepError::transient("issue", e.to_string())
            } else {
                StepError::rejected("issue", e.to_string())
            }
        })?;
        let remote_id = issued.remote_id.clone();
        let stored = self
            .store
            .record_issued(
                lease,
                NewKey {
                    secret: issued.secret,
                    expires_at: issued.expires_at,
                    provider_key_id: Some(remote_id.clone()),
                    rotation_id: Some(rotation.id.clone()),
                },
                self.clock.now(),
            )
            .await;
        match stored {
            Ok(version) => {
                tracing::info!(credential = %rt.name, fingerprint = %version.fingerprint, remote_id = %remote_id, "new key issued");
                Ok(version.id)
            }
            Err(error) => {
                // The provider holds a key we could not store: delete it now rather than
                // leave an orphan (recovery would find it by name otherwise). Even when
                // fenced: this key was never stored, so no one else can hold or use it.
                if let Err(revoke) = issuer.revoke(&remote_id).await {
                    tracing::error!(credential = %rt.name, %remote_id, error = %revoke, "could not delete a key that failed to store; recovery will retry by name");
                }
                let mut failed = StepError::store("issue", error);
                failed.reason = format!("storing the issued key failed: {}", failed.reason);
                Err(failed)
            }
        }
    }

    /// The key in use, for providers whose new key depends on it (Azure's other slot), with
    /// its secret when the provider knows it only by value.
    async fn key_in_use(
        &self,
        rt: &CredentialRuntime,
    ) -> Result<(Option<KeyVersion>, Option<SecretString>), StepError> {
        let current = self
            .store
            .versions(&rt.name)
            .await
            .map_err(|e| StepError::transient("issue", e.to_string()))?
            .into_iter()
            .find(|v| v.stage == Stage::Current);
        let secret = match &current {
            Some(v) if v.provider_key_id.is_none() && v.has_secret => {
                self.store.secret(v.id).await.ok()
            }
            _ => None,
        };
        Ok((current, secret))
    }

    /// Keys issued under this credential's rotation names that the store does not hold
    /// (issued just before a crash, or created by a provider whose answer never arrived)
    /// have a lost secret: delete them before issuing another.
    ///
    /// The sweep covers every `keyrotd/<credential>/<rotation id>` key, not only this
    /// rotation's name: a rotation that failed at issue (the provider created the key but
    /// the answer timed out) is finished, and no later rotation would ever look for its name
    /// again, so the key would stay live at the provider forever. Only called with this
    /// credential's rotation in flight (the store allows one), so no other rotation of it
    /// can be issuing concurrently. A key is known, and kept, when its provider id or its
    /// rotation name belongs to a pending, current or previous version.
    pub(super) async fn delete_orphans(
        &self,
        rt: &CredentialRuntime,
        issuer: &dyn Issuer,
    ) -> Result<(), StepError> {
        let prefix = format!("keyrotd/{}/", rt.name);
        let listed = match issuer.list(&prefix).await {
            Ok(listed) => listed,
            Err(providers::ProviderError::Unsupported { .. }) => return Ok(()),
            Err(error) => {
                return Err(StepError::transient(
                    "issue",
                    format!("listing keys for orphans failed: {error}"),
                ))
            }
        };
        let versions = self
            .store
            .versions(&rt.name)
            .await
            .map_err(|e| StepError::transient("issue", e.to_string()))?;
        let live: Vec<&KeyVersion> = versions
            .iter()
            .filter(|v| matches!(v.stage, Stage::Pending | Stage::Current | Stage::Previous))
            .collect();
        let known = |remote_id: &str, name: &str| {
            live.iter().any(|v| {
                v.provider_key_id.as_deref() == Some(remote_id)
                    || v.provider_key_id.as_deref() == Some(name)
                    || v.rotation_id
                        .as_deref()
                        .is_some_and(|r| issued_key_name(&rt.name, r) == name)
            })
        };
        for orphan in listed.into_iter().filter(|k| {
            // `keyrotd/app/<id>` only: not `keyrotd/app/x/<id>` of a credential "app/x".
            k.name
                .strip_prefix(&prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                && !known(&k.remote_id, &k.name)
        }) {
            let name = &orphan.name;
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
                        "provider key {} ({name}) was issued but never stored",
                        orphan.remote_id
                    ),
                    self.clock.now(),
                )
                .await;
        }
        Ok(())
    }
}
