//! The per-key families: what each one says about a credential, and their rendering into
//! cached chunks.
//!
//! They are rendered from compact [`KeyRow`]s cut from the store's records as they stream
//! in, family by family (every credential's sample of one family, then the next family), so
//! each family's `# HELP` and `# TYPE` lines come once. Two parts are cached apart:
//!
//! - the families that depend only on the store ([`KeyFamily`]), once per store
//!   generation;
//! - the families that move with the clock ([`ClockedFamily`]), at most once per second,
//!   from a small per-key table kept with the generation.

use super::gzip::{Chunk, ChunkWriter};
use super::text::{escape_label, FamilyWriter, Value};
use crate::model::{split_usage_unit, CheckStatus, UnixTime};
use crate::store::{CredentialState, Revocations};

/// A per-key family that changes only when the store does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFamily {
    Created,
    Expiry,
    Valid,
    CheckStatus,
    LastCheck,
    NextRotation,
    LastRotation,
    ConsecutiveFailures,
    CreditRemaining,
    Usage,
    RotationsTotal,
    RevocationsTotal,
    PreviousKeysPastGrace,
    NeedsAttention,
}

impl KeyFamily {
    /// Every store-dependent family, in the order served.
    pub(crate) const ALL: [KeyFamily; 14] = [
        KeyFamily::Created,
        KeyFamily::Expiry,
        KeyFamily::Valid,
        KeyFamily::CheckStatus,
        KeyFamily::LastCheck,
        KeyFamily::NextRotation,
        KeyFamily::LastRotation,
        KeyFamily::ConsecutiveFailures,
        KeyFamily::CreditRemaining,
        KeyFamily::Usage,
        KeyFamily::RotationsTotal,
        KeyFamily::RevocationsTotal,
        KeyFamily::PreviousKeysPastGrace,
        KeyFamily::NeedsAttention,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyFamily::Created => "keyrotd_key_created_timestamp_seconds",
            KeyFamily::Expiry => "keyrotd_key_expiry_timestamp_seconds",
            KeyFamily::Valid => "keyrotd_key_valid",
            KeyFamily::CheckStatus => "keyrotd_key_check_status",
            KeyFamily::LastCheck => "keyrotd_key_last_check_timestamp_seconds",
            KeyFamily::NextRotation => "keyrotd_key_next_rotation_timestamp_seconds",
            KeyFamily::LastRotation => "keyrotd_key_last_rotation_timestamp_seconds",
            KeyFamily::ConsecutiveFailures => "keyrotd_rotation_consecutive_failures",
            KeyFamily::CreditRemaining => "keyrotd_key_credit_remaining",
            KeyFamily::Usage => "keyrotd_key_usage",
            KeyFamily::RotationsTotal => "keyrotd_rotations_total",
            KeyFamily::RevocationsTotal => "keyrotd_revocations_total",
            KeyFamily::PreviousKeysPastGrace => "keyrotd_previous_keys_past_grace",
            KeyFamily::NeedsAttention => "keyrotd_rotation_needs_attention",
        }
    }

    pub(crate) fn help(self) -> &'static str {
        match self {
            KeyFamily::Created => "Unix time the current key was created.",
            KeyFamily::Expiry => {
                "Unix time the current key expires (provider-reported or policy)."
            }
            KeyFamily::Valid => {
                "1 if the last conclusive check found the current key valid, 0 if invalid; absent until the first conclusive check."
            }
            KeyFamily::CheckStatus => "One-hot status of the last check of the current key.",
            KeyFamily::LastCheck => "Unix time of the last check attempt of the current key.",
            KeyFamily::NextRotation => "Unix time the next rotation is due.",
            KeyFamily::LastRotation => "Unix time of the last successful rotation.",
            KeyFamily::ConsecutiveFailures => "Failed rotation attempts since the last success.",
            KeyFamily::CreditRemaining => {
                "Balance or limit remaining as reported by the provider, in `unit`."
            }
            KeyFamily::Usage => {
                "Spend of the current key in the current UTC `period` (daily, weekly, monthly) as reported by the provider, in `unit`."
            }
            KeyFamily::RotationsTotal => "Finished rotations by result (success or failure).",
            KeyFamily::RevocationsTotal => {
                "Revocation attempts of replaced keys by result (success, failure, or retired_locally: the provider cannot revoke and the key is still live there)."
            }
            KeyFamily::PreviousKeysPastGrace => {
                "Replaced keys past their grace period still live at the provider because revoking them failed."
            }
            KeyFamily::NeedsAttention => {
                "1 while a failed rotation waits for a delivery target to take the current key back (both keys live, nothing revoked)."
            }
        }
    }

    /// The family's metric type, as the text format writes it.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            KeyFamily::RotationsTotal | KeyFamily::RevocationsTotal => "counter",
            _ => "gauge",
        }
    }

    /// Writes this family's samples of one credential (none when it has no value).
    fn write(self, row: &KeyRow, out: &mut FamilyWriter<'_>) {
        let labels = &row.labels;
        let key = row.key;
        let single = match self {
            KeyFamily::Created => key.map(|(created, _)| created),
            KeyFamily::Expiry => key.and_then(|(_, expires)| expires),
            KeyFamily::Valid => key.and(row.valid).map(i64::from),
            KeyFamily::LastCheck => key.and(row.last_check_at),
            KeyFamily::NextRotation => row.next_rotation_at,
            KeyFamily::LastRotation => row.last_rotated_at,
            KeyFamily::ConsecutiveFailures => Some(row.consecutive_failures),
            KeyFamily::PreviousKeysPastGrace => Some(row.revocations.past_grace as i64),
            KeyFamily::NeedsAttention => Some(i64::from(row.needs_attention)),
            KeyFamily::CheckStatus => {
                if let (Some(status), Some(_)) = (row.check_status, key) {
                    for candidate in CheckStatus::ALL {
                        out.sample(
                            labels,
                            Some(("status", candidate.as_str())),
                            Value::Int((candidate == status) as i64),
                        );
                    }
                }
                None
            }
            KeyFamily::CreditRemaining => {
                for (unit, remaining) in &row.credits {
                    if split_usage_unit(unit).is_none() {
                        out.sample(labels, Some(("unit", unit)), Value::Float(*remaining));
                    }
                }
                None
            }
            KeyFamily::Usage => {
                for (unit, used) in &row.credits {
                    if let Some((unit, period)) = split_usage_unit(unit) {
                        let mut with_period = String::with_capacity(labels.len() + 24);
                        with_period.push_str(labels);
                        with_period.push_str(",period=\"");
                        escape_label(&mut with_period, period);
                        with_period.push('"');
                        out.sample(&with_period, Some(("unit", unit)), Value::Float(*used));
                    }
                }
                None
            }
            KeyFamily::RotationsTotal => {
                for (result, count) in [
                    ("success", row.rotations_succeeded),
                    ("failure", row.rotations_failed),
                ] {
                    out.sample(labels, Some(("result", result)), Value::Int(count as i64));
                }
                None
            }
            KeyFamily::RevocationsTotal => {
                let r = &row.revocations;
                for (result, count) in [
                    ("success", r.succeeded),
                    ("failure", r.failed),
                    ("retired_locally", r.retired_locally),
                ] {
                    out.sample(labels, Some(("result", result)), Value::Int(count as i64));
                }
                None
            }
        };
        if let Some(value) = single {
            out.sample(labels, None, Value::Int(value));
        }
    }
}

/// A per-key family whose value moves with the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClockedFamily {
    Age,
    ExpiresIn,
}

impl ClockedFamily {
    /// Every clock-dependent family, in the order served.
    pub(crate) const ALL: [ClockedFamily; 2] = [ClockedFamily::Age, ClockedFamily::ExpiresIn];

    pub(crate) fn name(self) -> &'static str {
        match self {
            ClockedFamily::Age => "keyrotd_key_age_seconds",
            ClockedFamily::ExpiresIn => "keyrotd_key_expires_in_seconds",
        }
    }

    pub(crate) fn help(self) -> &'static str {
        match self {
            ClockedFamily::Age => "Age of the current key in seconds.",
            ClockedFamily::ExpiresIn => {
                "Seconds until the current key expires; negative once expired."
            }
        }
    }

    pub(crate) fn kind(self) -> &'static str {
        "gauge"
    }

    /// The value for `key` at `now`; `None` when the family has no sample for it.
    fn value(self, key: &ClockedKey, now: UnixTime) -> Option<i64> {
        match self {
            ClockedFamily::Age => Some((now - key.created_at).max(0)),
            ClockedFamily::ExpiresIn => key.expires_at.map(|expires| expires - now),
        }
    }
}

/// What the per-key families need of one credential, cut from its full record.
#[derive(Debug)]
pub(crate) struct KeyRow {
    /// `{credential="..",provider=".."` (escaped, without its closing brace so extra labels
    /// can follow).
    labels: Box<str>,
    /// (created, expires) of the current key.
    key: Option<(UnixTime, Option<UnixTime>)>,
    valid: Option<bool>,
    check_status: Option<CheckStatus>,
    last_check_at: Option<UnixTime>,
    next_rotation_at: Option<UnixTime>,
    last_rotated_at: Option<UnixTime>,
    consecutive_failures: i64,
    rotations_succeeded: u64,
    rotations_failed: u64,
    revocations: Revocations,
    credits: Box<[(String, f64)]>,
    needs_attention: bool,
}

impl From<&CredentialState> for KeyRow {
    fn from(state: &CredentialState) -> KeyRow {
        let c = &state.credential;
        let mut labels = String::with_capacity(c.name.len() + c.provider.len() + 28);
        labels.push_str("{credential=\"");
        escape_label(&mut labels, &c.name);
        labels.push_str("\",provider=\"");
        escape_label(&mut labels, &c.provider);
        labels.push('"');
        KeyRow {
            labels: labels.into_boxed_str(),
            key: state.current.as_ref().map(|k| (k.created_at, k.expires_at)),
            valid: c.valid,
            check_status: c.check_status,
            last_check_at: c.last_check_at,
            next_rotation_at: c.next_rotation_at,
            last_rotated_at: c.last_rotated_at,
            consecutive_failures: c.consecutive_failures,
            rotations_succeeded: state.rotations_succeeded,
            rotations_failed: state.rotations_failed,
            revocations: state.revocations,
            credits: state.credits.clone().into_boxed_slice(),
            needs_attention: state.needs_attention,
        }
    }
}

/// A credential's current key, for the [`ClockedFamily`]s.
#[derive(Debug)]
struct ClockedKey {
    /// `{credential="..",provider=".."}`, escaped.
    labels: Box<str>,
    created_at: UnixTime,
    expires_at: Option<UnixTime>,
}

/// The per-key families, compressed, for one store generation.
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    pub(crate) generation: Option<i64>,
    /// Every [`KeyFamily`].
    pub(crate) fixed: Chunk,
    /// What the clock-dependent families are computed from.
    clocked: Vec<ClockedKey>,
    /// The clock-dependent families, rendered for the second in `.0`.
    timed: Option<(UnixTime, Chunk)>,
}

impl KeyState {
    /// [`KeyState::render_rows`] of a whole snapshot.
    #[cfg(test)]
    pub(crate) fn render(snapshot: &crate::store::Snapshot) -> KeyState {
        let rows: Vec<KeyRow> = snapshot.credentials.iter().map(KeyRow::from).collect();
        KeyState::render_rows(snapshot.generation, &rows)
    }

    /// Renders and compresses the store-dependent families of `rows`, one family at a
    /// time, and keeps what the clocked ones need.
    pub(crate) fn render_rows(generation: i64, rows: &[KeyRow]) -> KeyState {
        let mut out = ChunkWriter::new();
        for family in KeyFamily::ALL {
            let mut writer =
                FamilyWriter::new(&mut out, family.name(), family.help(), family.kind());
            for row in rows {
                family.write(row, &mut writer);
            }
        }
        let clocked = rows
            .iter()
            .filter_map(|row| {
                let (created_at, expires_at) = row.key?;
                Some(ClockedKey {
                    labels: format!("{}}}", row.labels).into_boxed_str(),
                    created_at,
                    expires_at,
                })
            })
            .collect();
        KeyState {
            generation: Some(generation),
            fixed: out.finish(),
            clocked,
            timed: None,
        }
    }

    /// The clock-dependent families at `now`, rendered and compressed at most once per
    /// second.
    pub(crate) fn timed(&mut self, now: UnixTime) -> Chunk {
        if let Some((at, chunk)) = &self.timed {
            if *at == now {
                return chunk.clone();
            }
        }
        let mut out = ChunkWriter::new();
        for family in ClockedFamily::ALL {
            let mut writer =
                FamilyWriter::new(&mut out, family.name(), family.help(), family.kind());
            for key in &self.clocked {
                if let Some(value) = family.value(key, now) {
                    writer.line_closed(&key.labels, value);
                }
            }
        }
        let chunk = out.finish();
        self.timed = Some((now, chunk.clone()));
        chunk
    }
}
