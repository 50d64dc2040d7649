//! Waiting for the database at start-up. A replica started before its PostgreSQL server is
//! up, or while it refuses this user, says so and tries again with capped exponential
//! backoff instead of exiting: under systemd a crash loop would hit its start limit and
//! leave the replica down for good once the database came back. Only
//! [`StoreError::Unavailable`] is waited out; a wrong master key, a corrupt or newer store
//! is an error at once, as restarting would not fix it.

use crate::backoff::Backoff;
use crate::store::{StoreError, StoreResult};
use std::future::Future;
use std::time::Duration;

/// From 1 s, doubling, to at most a minute between attempts.
pub(super) const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Runs `attempt` until it answers anything but `Unavailable`, sleeping `backoff` between
/// tries; `None` if `stop` completes first. Every wait is logged (target and reason; the
/// target never holds a password) and reported through `status` (systemd's `STATUS=`).
pub(super) async fn retry_while_unavailable<T, F, Fut>(
    mut attempt: F,
    backoff: Backoff,
    stop: impl Future<Output = ()>,
    status: impl Fn(&str),
) -> StoreResult<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    tokio::pin!(stop);
    let mut failures: u32 = 0;
    loop {
        let (target, reason) = match attempt().await {
            Ok(value) => return Ok(Some(value)),
            Err(StoreError::Unavailable { target, reason }) => (target, reason),
            Err(error) => return Err(error),
        };
        let delay = backoff.delay(failures, &mut rand::thread_rng());
        failures = failures.saturating_add(1);
        tracing::error!(
            %target,
            %reason,
            attempts = failures,
            retry_in = %crate::config::format_duration(delay),
            "the database is unavailable; waiting for it"
        );
        status(&format!("waiting for the database {target}: {reason}"));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    fn unavailable() -> StoreError {
        StoreError::Unavailable {
            target: "postgres://keyrotd@db/keyrotd".into(),
            reason: "connection refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_database_is_retried_with_growing_waits_until_it_answers() {
        let attempts = Mutex::new(Vec::new());
        let statuses = Mutex::new(Vec::new());
        let start = Instant::now();
        let opened = retry_while_unavailable(
            || {
                let mut attempts = attempts.lock().unwrap();
                attempts.push(start.elapsed());
                let result = if attempts.len() < 4 {
                    Err(unavailable())
                } else {
                    Ok("store")
                };
                async move { result }
            },
            BACKOFF,
            std::future::pending(),
            |status| statuses.lock().unwrap().push(status.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(opened, Some("store"));
        let attempts = attempts.into_inner().unwrap();
        assert_eq!(attempts.len(), 4);
        // Equal jitter: the n-th wait lies in [ceiling/2, ceiling], ceilings 1s, 2s, 4s.
        for (n, pair) in attempts.windows(2).enumerate() {
            let wait = pair[1] - pair[0];
            let ceiling = BACKOFF.ceiling(n as u32);
            assert!(wait >= ceiling / 2 && wait <= ceiling, "wait {n}: {wait:?}");
        }
        let statuses = statuses.into_inner().unwrap();
        assert_eq!(statuses.len(), 3);
        assert_eq!(
            statuses[0],
            "waiting for the database postgres://keyrotd@db/keyrotd: connection refused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn any_other_error_ends_the_wait_at_once() {
        let mut calls = 0;
        let error = retry_while_unavailable(
            || {
                calls += 1;
                async { Err::<(), _>(StoreError::MasterKeyRequired) }
            },
            BACKOFF,
            std::future::pending(),
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(error, StoreError::MasterKeyRequired));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait() {
        let stop = tokio::time::sleep(Duration::from_millis(300));
        let opened = retry_while_unavailable(
            || async { Err::<(), _>(unavailable()) },
            BACKOFF,
            stop,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(opened, None);
    }
}
