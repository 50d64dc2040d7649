//! Row mapping: the column lists of credentials and key versions, and the records read from
//! them, shared by every file of the backend that reads either.

use crate::store::{CredentialRecord, KeyVersion};
use sqlx::postgres::PgRow;
use sqlx::Row;

/// The columns of a [`KeyVersion`], as a literal: statements that must be `&'static str`
/// take it through `concat!`.
macro_rules! version_columns {
    () => {
        "v.id, c.name, v.stage, v.fingerprint, v.provider_key_id, v.rotation_id,
     v.created_at, v.expires_at, v.stage_changed_at, v.last_check_at, v.last_check_status,
     v.sealed_secret IS NOT NULL"
    };
}
pub(super) use version_columns;
pub(super) const VERSION_COLUMNS: &str = version_columns!();
/// Columns in [`VERSION_COLUMNS`]: a query's own columns follow them.
pub(super) const VERSION_COLUMN_COUNT: usize = 12;

pub(super) fn version_from_row(row: &PgRow) -> KeyVersion {
    version_from_row_at(row, 0)
}

/// A version whose [`VERSION_COLUMNS`] start at column `at`.
pub(super) fn version_from_row_at(row: &PgRow, at: usize) -> KeyVersion {
    KeyVersion {
        id: row.get(at),
        credential: row.get(at + 1),
        stage: row
            .get::<String, _>(at + 2)
            .parse()
            .unwrap_or(crate::model::Stage::Failed),
        fingerprint: row.get(at + 3),
        provider_key_id: row.get(at + 4),
        rotation_id: row.get(at + 5),
        created_at: row.get(at + 6),
        expires_at: row.get(at + 7),
        stage_changed_at: row.get(at + 8),
        last_check_at: row.get(at + 9),
        last_check_status: row
            .get::<Option<String>, _>(at + 10)
            .and_then(|s| s.parse().ok()),
        has_secret: row.get(at + 11),
    }
}

/// Read from `credentials c`.
pub(super) const CREDENTIAL_COLUMNS: &str =
    "c.id, c.name, c.provider, c.provider_kind, c.created_at,
     c.removed_at, c.next_rotation_at, c.last_rotated_at, c.consecutive_failures,
     c.check_status, c.valid, c.last_check_at, c.check_detail";
/// Columns in [`CREDENTIAL_COLUMNS`]: a query's own columns follow them.
pub(super) const CREDENTIAL_COLUMN_COUNT: usize = 13;

pub(super) fn credential_from_row(row: &PgRow) -> CredentialRecord {
    CredentialRecord {
        id: row.get(0),
        name: row.get(1),
        provider: row.get(2),
        provider_kind: row.get(3),
        created_at: row.get(4),
        removed_at: row.get(5),
        next_rotation_at: row.get(6),
        last_rotated_at: row.get(7),
        consecutive_failures: row.get(8),
        check_status: row.get::<Option<String>, _>(9).and_then(|s| s.parse().ok()),
        valid: row.get::<Option<i64>, _>(10).map(|v| v != 0),
        last_check_at: row.get(11),
        check_detail: row.get(12),
    }
}
