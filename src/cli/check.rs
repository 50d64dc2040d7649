//! `keyrotd check [NAME]`: probes keys at their providers now, records the results like the
//! daemon's sweep does, prints them, and exits 2 if a key is invalid — for scripts and for
//! an operator who will not wait for the next scheduled check.

use super::{render, ExitError, JsonFlag, Setup, EXIT_INVALID_KEY};
use crate::checks::{self, CheckOutcome, CheckTarget, Checker};
use crate::clock::{Clock, SystemClock};
use crate::model::CheckStatus;
use crate::providers::ProviderTelemetry;
use crate::store::MasterKeyNeed;
use crate::store::Store;
use anyhow::bail;
use clap::Args;
use std::sync::Arc;

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Only this credential (default: all).
    name: Option<String>,
    #[command(flatten)]
    json: JsonFlag,
}

/// One probed credential: its outcome, or why it could not be probed.
pub(crate) struct CheckRow<'a> {
    pub(crate) target: &'a CheckTarget,
    pub(crate) outcome: Result<CheckOutcome, String>,
}

pub(crate) async fn run(args: CheckArgs, setup: &Setup) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(
        setup
            .open_synced_store(MasterKeyNeed::Always, clock.now())
            .await?,
    );
    let targets = targets(setup, args.name.as_deref())?;
    let rows = sweep(&store, &clock, setup.config.checks.max_concurrent, &targets).await?;
    let any_invalid = rows.iter().any(|row| {
        row.outcome
            .as_ref()
            .is_ok_and(|o| o.report.status == CheckStatus::Invalid)
    });
    if args.json.json {
        render::print_json(&render::json::check(&rows))?;
    } else {
        print!("{}", render::table::check(&rows, clock.now()));
    }
    store.close().await;
    if any_invalid {
        return Err(ExitError {
            code: EXIT_INVALID_KEY,
            message: "at least one key is invalid".into(),
        }
        .into());
    }
    Ok(())
}

/// The credentials to probe: all of them, or the one named.
fn targets(setup: &Setup, name: Option<&str>) -> anyhow::Result<Arc<[CheckTarget]>> {
    let telemetry = ProviderTelemetry::new();
    let mut targets = checks::build_targets(&setup.config, &telemetry)?;
    if let Some(name) = name {
        targets.retain(|t| *t.credential == *name);
        if targets.is_empty() {
            bail!("unknown credential {name:?}");
        }
    }
    Ok(targets.into())
}

/// Probes every target and records the results, a row per target in the targets' order.
async fn sweep<'a>(
    store: &Arc<dyn Store>,
    clock: &Arc<dyn Clock>,
    max_concurrent: usize,
    targets: &'a Arc<[CheckTarget]>,
) -> anyhow::Result<Vec<CheckRow<'a>>> {
    let checker = Arc::new(Checker::new(
        store.clone(),
        clock.clone(),
        max_concurrent,
        0.0,
    ));
    // The sweep runs as a task on the runtime's workers, not on this thread under
    // `block_on`: there, each finished check's permit woke this thread through a futex, and
    // each check it spawned had to wake a worker. Only the sweep: running every command as
    // a task kept the daemon's resident memory higher from READY on (BENCHMARKS.md).
    let sweep = tokio::spawn({
        let targets = targets.clone();
        async move { checker.check_all(&targets).await }
    });
    let outcomes = match sweep.await {
        Ok(outcomes) => outcomes?,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => return Err(error.into()),
    };
    Ok(targets
        .iter()
        .zip(outcomes)
        .map(|(target, outcome)| CheckRow {
            target,
            outcome: outcome.map_err(|error| error.to_string()),
        })
        .collect())
}
