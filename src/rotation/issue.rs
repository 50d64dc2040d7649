//! The issue step: a new key from the provider (or an operator's imported one), stored
//! before anything else happens, after the sweep of keys an interrupted rotation issued
//! but never stored (`orphans.rs`).

use super::{issued_key_name, CredentialRuntime, Engine, StepError};
use crate::model::Stage;
use crate::providers::{CurrentKey, IssueRequest};
use crate::store::{KeyVersion, Lease, NewKey, Rotation};
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
            // A previous owner of this rotation may have issued a key and died before storing
            // it. Adoption issues nothing, so sweep now: once the adopted key carries this
            // rotation's id, the orphan's name would pass for the adopted key's. Best effort:
            // a listing that fails must not block an operator's key (the next issue sweeps).
            if let Some(issuer) = &rt.issuer {
                self.renew(lease, "issue").await?;
                if let Err(sweep) = self.delete_orphans(rt, issuer.as_ref()).await {
                    tracing::warn!(credential = %rt.name, reason = %sweep.reason, "could not sweep orphaned keys before adopting an imported key; the next issue retries");
                }
            }
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
        let installation = self
            .store
            .installation_id()
            .await
            .map_err(|e| StepError::transient("issue", e.to_string()))?;
        let name = issued_key_name(&installation, &rt.name, &rotation.id);
        self.renew(lease, "issue").await?;
        self.delete_orphans(rt, issuer.as_ref()).await?;
        let (current, current_secret) = self.key_in_use(rt).await?;
        let replaces = current.as_ref().map(|v| CurrentKey {
            remote_id: v.provider_key_id.as_deref(),
            secret: current_secret.as_ref(),
        });
        let now = self.clock.now();
        let request = IssueRequest {
            name: &name,
            replaces,
            expires_at: rt.policy.provider_expiry(now),
            now,
        };
        self.renew(lease, "issue").await?;
        let issued = issuer.issue(&request).await.map_err(|e| {
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
}
