//! Which replica acts. Every daemon claims the store's leadership lease
//! ([`LeaderStore`]) every `leader_renew_interval`; the one the store answers `Leading`
//! runs the checks, the rotations and the retention pruning, the others serve `/metrics`
//! from the shared store and wait. The same loop runs on SQLite, where daemons sharing a
//! file elect one the same way.
//!
//! The lease expires on the database's clock, but a leader does not wait for that: it stops
//! acting at its *renew deadline*, `leader_renew_deadline` after the start of its last
//! successful claim, measured on its own monotonic clock (tokio's, so tests move it). A
//! claim that hangs, fails or finds another holder ends the term at once; an answer that
//! comes back after the deadline it would set is not acted on. Since the deadline is shorter
//! than the lease, a leader stops before any standby can take over; a leader paused past
//! both (SIGSTOP, a frozen VM) is fenced by the store instead: its rotation writes carry
//! its term's token, refused once the epoch moved on.
//!
//! The loop publishes the acting term on a watch channel; the daemon starts the work on a
//! new token and aborts it on `None`. On SIGTERM the daemon stops the work, then releases
//! the lease, so a standby takes over at its next claim instead of after the TTL.

use crate::config::LeaderTiming;
use crate::store::{LeaderClaim, LeaderStore, LeaderToken, Leadership, StoreError, StoreResult};
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

/// This process's name on the lease: `<instance>:<pid>:<random>`, unique per run, so a
/// restarted daemon never mistakes its predecessor's lease for its own.
pub(crate) fn holder_identity(instance: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{instance}:{}:{}", std::process::id(), &random[..8])
}

/// The leadership series: `keyrotd_leader`, `keyrotd_instance_info{instance}`,
/// `keyrotd_leader_epoch` and `keyrotd_store_up`.
#[derive(Clone)]
pub(crate) struct LeaderGauges {
    leader: IntGauge,
    epoch: IntGauge,
    store_up: IntGauge,
}

impl LeaderGauges {
    pub(crate) fn register(registry: &Registry, instance: &str) -> prometheus::Result<Self> {
        let gauges = LeaderGauges::new()?;
        let info = IntGaugeVec::new(
            Opts::new(
                "keyrotd_instance_info",
                "A metric with a constant '1' value labeled by this replica's `[daemon] instance`.",
            ),
            &["instance"],
        )?;
        info.with_label_values(&[instance]).set(1);
        registry.register(Box::new(info))?;
        registry.register(Box::new(gauges.leader.clone()))?;
        registry.register(Box::new(gauges.epoch.clone()))?;
        registry.register(Box::new(gauges.store_up.clone()))?;
        Ok(gauges)
    }

    fn new() -> prometheus::Result<Self> {
        Ok(LeaderGauges {
            leader: IntGauge::new(
                "keyrotd_leader",
                "1 while this replica leads (runs checks and rotations), else 0.",
            )?,
            epoch: IntGauge::new(
                "keyrotd_leader_epoch",
                "The epoch of the leadership lease as the store last answered it (the same on every replica); it rises at every change of leader.",
            )?,
            store_up: IntGauge::new(
                "keyrotd_store_up",
                "1 if the leadership loop's last round-trip to the store succeeded, else 0.",
            )?,
        })
    }
}

/// The term this replica acts in, as far as the loop knows.
struct Term {
    token: LeaderToken,
    /// When it stops acting unless a claim succeeds first.
    deadline: Instant,
}

/// The leadership loop of one daemon.
pub(crate) struct Elector {
    store: Arc<dyn LeaderStore>,
    holder: String,
    timing: LeaderTiming,
    acting: watch::Sender<Option<LeaderToken>>,
    gauges: LeaderGauges,
    /// Tells systemd (`STATUS=`) what this replica is doing.
    status: Box<dyn Fn(&str) + Send + Sync>,
    /// The holder last reported as leader while standing by (logged when it changes).
    seen_leader: Option<String>,
}

impl Elector {
    pub(crate) fn new(
        store: Arc<dyn LeaderStore>,
        holder: String,
        timing: LeaderTiming,
        gauges: LeaderGauges,
        status: Box<dyn Fn(&str) + Send + Sync>,
    ) -> (Elector, watch::Receiver<Option<LeaderToken>>) {
        let (acting, receiver) = watch::channel(None);
        let elector = Elector {
            store,
            holder,
            timing,
            acting,
            gauges,
            status,
            seen_leader: None,
        };
        (elector, receiver)
    }

    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Claims the lease every renew interval until aborted.
    async fn run(mut self) {
        let mut term: Option<Term> = None;
        let mut next = Instant::now();
        loop {
            self.wait_for_claim(next, &mut term).await;
            let started = Instant::now();
            next = started + self.timing.renew_interval;
            let answer = self.claim(started, &mut term).await;
            self.apply(answer, started, &mut term);
        }
    }

    /// Sleeps until `next`; a leader whose deadline comes first stops acting then.
    async fn wait_for_claim(&mut self, next: Instant, term: &mut Option<Term>) {
        loop {
            let deadline = term.as_ref().map(|t| t.deadline).filter(|d| *d < next);
            // The deadline first: a process resumed after a pause finds both due, and must
            // stop acting before it does anything else.
            tokio::select! {
                biased;
                _ = sleep_until(deadline.unwrap_or(next)), if deadline.is_some() => {
                    self.step_down(term, "its renew deadline passed before the next claim");
                }
                _ = sleep_until(next) => return,
            }
        }
    }

    /// One claim; a leader whose deadline passes while it waits for the answer stops acting
    /// then, and still takes the answer (the next claim goes on from it).
    async fn claim(
        &mut self,
        started: Instant,
        term: &mut Option<Term>,
    ) -> StoreResult<LeaderClaim> {
        let store = self.store.clone();
        let holder = self.holder.clone();
        let ttl = self.timing.lease_seconds();
        // Bounded by the lease: a claim that hangs longer (a stuck connection) counts as a
        // failed round-trip, and the next one is tried, rather than the loop waiting forever.
        let bound = self.timing.lease;
        let claim = async move {
            tokio::time::timeout(bound, store.claim_leadership(&holder, ttl))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable {
                        target: "the store".into(),
                        reason: format!(
                            "the leadership claim had no answer within {}",
                            crate::config::format_duration(bound)
                        ),
                    })
                })
        };
        tokio::pin!(claim);
        loop {
            let deadline = term.as_ref().map(|t| t.deadline);
            tokio::select! {
                biased;
                _ = sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => {
                    self.step_down(term, "no claim of the lease succeeded before its renew deadline");
                }
                answer = &mut claim => return answer,
            }
        }
    }

    fn apply(
        &mut self,
        answer: StoreResult<LeaderClaim>,
        started: Instant,
        term: &mut Option<Term>,
    ) {
        match answer {
            Ok(LeaderClaim::Leading(lease)) => {
                self.gauges.store_up.set(1);
                self.gauges.epoch.set(lease.epoch);
                let deadline = started + self.timing.renew_deadline;
                if Instant::now() >= deadline {
                    // Acting on it now could outlast the lease it renewed.
                    self.step_down(term, "the claim was answered after its renew deadline");
                    return;
                }
                let token = lease.token();
                match term {
                    Some(current) if current.token == token => current.deadline = deadline,
                    _ => self.take_office(term, token, deadline),
                }
            }
            Ok(LeaderClaim::Following(lease)) => {
                self.gauges.store_up.set(1);
                if let Some(lease) = &lease {
                    self.gauges.epoch.set(lease.epoch);
                }
                self.step_down(term, "another replica holds the lease");
                self.stand_by(lease.as_ref());
            }
            Err(error) => {
                self.gauges.store_up.set(0);
                tracing::warn!(%error, "cannot claim the leadership lease");
                self.step_down(term, "the store did not answer its claim");
                (self.status)("standby; the store does not answer");
            }
        }
    }

    /// A fresh term (a new epoch, or the first): the daemon starts the work under it.
    fn take_office(&mut self, term: &mut Option<Term>, token: LeaderToken, deadline: Instant) {
        let epoch = token.epoch;
        tracing::info!(epoch, holder = %self.holder, "leading (epoch {epoch}): starting checks and rotations");
        *term = Some(Term {
            token: token.clone(),
            deadline,
        });
        self.seen_leader = None;
        self.gauges.leader.set(1);
        self.acting.send_replace(Some(token));
        (self.status)(&format!("leading (epoch {epoch})"));
    }

    /// Ends the term, if there is one: the daemon aborts the work at once.
    fn step_down(&mut self, term: &mut Option<Term>, why: &str) {
        let Some(ended) = term.take() else {
            return;
        };
        tracing::warn!(
            epoch = ended.token.epoch,
            "stepping down: {why}; stopped checks and rotations"
        );
        self.gauges.leader.set(0);
        self.acting.send_replace(None);
        (self.status)(&format!("standby; stepped down ({why})"));
    }

    fn stand_by(&mut self, lease: Option<&Leadership>) {
        let Some(lease) = lease else {
            (self.status)("standby; no leader yet");
            return;
        };
        if self.seen_leader.as_deref() != Some(lease.holder.as_str()) {
            tracing::info!(leader = %lease.holder, epoch = lease.epoch, "standby: another replica leads");
            self.seen_leader = Some(lease.holder.clone());
        }
        let until = chrono::DateTime::<chrono::Utc>::from_timestamp(lease.expires_at, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| lease.expires_at.to_string());
        (self.status)(&format!(
            "standby; leader is {} until {until}",
            lease.holder
        ));
    }
}

#[cfg(test)]
mod tests;
