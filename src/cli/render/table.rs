//! Text tables for people at a terminal: one per listing command, built from the rows the
//! command computed. Keys appear by fingerprint only.

use super::{check_summary, format_time, human_age, relative};
use crate::cli::check::CheckRow;
use crate::cli::key::list::ListedKey;
use crate::cli::key::show::Attention;
use crate::model::UnixTime;
use crate::store::{CredentialRecord, Event, InstallationRow, KeyVersion, Rotation};
use std::fmt::Write as _;

/// `keyrotd key list`: a line per live key, or one saying a credential has none.
pub(crate) fn key_list(rows: &[ListedKey], now: UnixTime) -> String {
    let mut table = Table::new(&[
        "CREDENTIAL",
        "PROVIDER",
        "STAGE",
        "FINGERPRINT",
        "AGE",
        "EXPIRES",
        "LAST CHECK",
    ]);
    let mut attention = Vec::new();
    for ListedKey {
        credential: c,
        version,
        attention: needs,
    } in rows
    {
        if let Some(needs) = needs {
            if !attention.iter().any(|(name, _)| *name == c.name) {
                attention.push((c.name.clone(), needs.clone()));
            }
        }
        match version {
            Some(v) => table.row(vec![
                c.name.clone(),
                c.provider.clone(),
                v.stage.to_string(),
                v.fingerprint.clone(),
                human_age(now - v.created_at),
                v.expires_at
                    .map(|e| relative(now, e))
                    .unwrap_or_else(|| "-".into()),
                check_summary(v, now),
            ]),
            None => table.row(vec![
                c.name.clone(),
                c.provider.clone(),
                "-".into(),
                "(no key)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    let mut out = table.render();
    // Only when something needs attention: the listing is otherwise unchanged.
    for (name, needs) in attention {
        let _ = writeln!(
            out,
            "\n{name}: NEEDS ATTENTION: rotation {} could not put the current key back on every target ({}); both keys stay live",
            needs.rotation, needs.reason
        );
    }
    out
}

/// `keyrotd key show`: the credential's state as labelled lines, then its versions.
pub(crate) fn key_show(
    credential: &CredentialRecord,
    versions: &[KeyVersion],
    credits: &[(String, f64)],
    attention: Option<&Attention>,
    in_flight: Option<&Rotation>,
    now: UnixTime,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "credential:   {}", credential.name);
    let _ = writeln!(
        out,
        "provider:     {} ({})",
        credential.provider, credential.provider_kind
    );
    let _ = writeln!(out, "last check:   {}", last_check(credential, now));
    let _ = writeln!(
        out,
        "next rotation: {}",
        credential
            .next_rotation_at
            .map(|t| relative(now, t))
            .unwrap_or_else(|| "not scheduled".into())
    );
    if !credits.is_empty() {
        let balances: Vec<String> = credits
            .iter()
            .map(
                |(unit, amount)| match crate::model::split_usage_unit(unit) {
                    Some((unit, period)) => format!("{amount} {unit} used {period}"),
                    None => format!("{amount} {unit}"),
                },
            )
            .collect();
        let _ = writeln!(out, "credit:       {}", balances.join(", "));
    }
    if let Some(rotation) = in_flight {
        // The lease is judged on the database's clock; `now` is this host's, close enough
        // for a person to read.
        let lease = if rotation.lease_expires_at > now {
            format!("lease ends {}", relative(now, rotation.lease_expires_at))
        } else {
            format!(
                "lease expired {} ago: any process may take it over",
                human_age(now - rotation.lease_expires_at)
            )
        };
        let _ = writeln!(
            out,
            "in flight:    rotation {} ({}, step {}, started {} ago), owned by {} (epoch {}), {lease}",
            rotation.id,
            rotation.kind.as_str(),
            rotation.step.as_str(),
            human_age(now - rotation.started_at),
            rotation.owner,
            rotation.owner_epoch,
        );
    }
    if let Some(needs) = attention {
        let _ = writeln!(
            out,
            "attention:    NEEDS ATTENTION: rotation {} could not put the current key back on every target ({}); both keys stay live and nothing is revoked until it does (see \"Rotation needs attention\" in docs/runbook.md)",
            needs.rotation, needs.reason
        );
    }
    out.push('\n');
    let mut table = Table::new(&[
        "VERSION",
        "STAGE",
        "FINGERPRINT",
        "CREATED",
        "EXPIRES",
        "LAST CHECK",
        "PROVIDER KEY ID",
    ]);
    for v in versions {
        table.row(vec![
            v.id.to_string(),
            v.stage.to_string(),
            v.fingerprint.clone(),
            format!("{} ago", human_age(now - v.created_at)),
            v.expires_at
                .map(|e| relative(now, e))
                .unwrap_or_else(|| "-".into()),
            check_summary(v, now),
            v.provider_key_id.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// "valid 5m ago (detail)", or "never".
fn last_check(credential: &CredentialRecord, now: UnixTime) -> String {
    match (credential.check_status, credential.last_check_at) {
        (Some(status), Some(at)) => format!(
            "{status} {} ago{}",
            human_age(now - at),
            credential
                .check_detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ),
        _ => "never".into(),
    }
}

/// `keyrotd key history`: the audit trail, oldest first.
pub(crate) fn key_history(events: &[Event]) -> String {
    let mut table = Table::new(&["TIME (UTC)", "EVENT", "VERSION", "ACTOR", "DETAIL"]);
    for e in events {
        table.row(vec![
            format_time(e.at),
            e.kind.clone(),
            e.version_id
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            e.actor.clone(),
            e.detail.clone(),
        ]);
    }
    table.render()
}

/// `keyrotd check`: a line per probed credential, or one saying why it was not probed.
pub(crate) fn check(rows: &[CheckRow], now: UnixTime) -> String {
    let mut table = Table::new(&[
        "CREDENTIAL",
        "PROVIDER",
        "FINGERPRINT",
        "STATUS",
        "CREDIT",
        "EXPIRES",
        "DETAIL",
    ]);
    for CheckRow { target: t, outcome } in rows {
        match outcome {
            Ok(o) => table.row(vec![
                t.credential.to_string(),
                t.provider_name.to_string(),
                o.fingerprint.clone(),
                o.report.status.to_string(),
                {
                    // The credit column shows what is left; a period's spend is in
                    // `--json` and `key show`.
                    let left: Vec<String> = o
                        .report
                        .credit
                        .iter()
                        .filter(|c| crate::model::split_usage_unit(&c.unit).is_none())
                        .map(|c| format!("{:.2} {}", c.remaining, c.unit))
                        .collect();
                    if left.is_empty() {
                        "-".into()
                    } else {
                        left.join(", ")
                    }
                },
                o.report
                    .expires_at
                    .map(|e| relative(now, e))
                    .unwrap_or_else(|| "-".into()),
                o.report.detail.clone(),
            ]),
            Err(error) => table.row(vec![
                t.credential.to_string(),
                t.provider_name.to_string(),
                "-".into(),
                "not checked".into(),
                "-".into(),
                "-".into(),
                error.clone(),
            ]),
        }
    }
    table.render()
}

/// `keyrotd store copy`: what was copied, table by table, and the master key the new store
/// needs.
pub(crate) fn store_copy(
    from: &str,
    to: &str,
    installation: &InstallationRow,
    counts: &[(&str, usize)],
) -> String {
    let mut out = format!(
        "copied installation {} from {from} to {to}\n\n",
        installation.installation_id
    );
    let mut table = Table::new(&["TABLE", "ROWS"]);
    for (name, rows) in counts {
        table.row(vec![name.to_string(), rows.to_string()]);
    }
    out.push_str(&table.render());
    match &installation.master_key_id {
        Some(id) => {
            let _ = writeln!(
                out,
                "\nsecrets stay sealed under master key {id}: install that same key wherever the new store is used"
            );
        }
        None => out.push_str("\nno secret was sealed yet: the new store takes the first master key it is opened with\n"),
    }
    out
}

/// A plain left-aligned text table.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self) -> String {
        let columns = self.rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Written straight into one string, not a string per cell and per line: `keyrotd
        // check` prints a row per credential, and a large fleet makes that report long.
        let line_width: usize = widths.iter().map(|w| w + 2).sum();
        let mut out = String::with_capacity(self.rows.len() * line_width);
        for row in &self.rows {
            let start = out.len();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                let _ = write!(out, "{cell:<width$}");
            }
            let kept = out[start..].trim_end().len();
            out.truncate(start + kept);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell_and_trim_line_ends() {
        let mut table = Table::new(&["NAME", "STATUS", "DETAIL"]);
        table.row(vec!["a".into(), "valid".into(), "-".into()]);
        table.row(vec!["ключ-long".into(), "x".into(), String::new()]);
        assert_eq!(
            table.render(),
            "NAME       STATUS  DETAIL\n\
             a          valid   -\n\
             ключ-long  x\n"
        );
    }
}
