//! The leadership loop on tokio's paused clock, against a scripted lease store: when it
//! starts acting, and above all when it stops (the renew deadline, a failed or lost claim,
//! an answer that comes too late).

use super::*;
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

const HOLDER: &str = "a:1:x";

/// What the scripted store does with one claim.
#[derive(Clone)]
enum Step {
    Lead(i64),
    Follow,
    Fail,
    /// Answers after this long.
    Late(Duration, Box<Step>),
}

/// Answers claims from a script; once it runs out, claims never answer.
#[derive(Default)]
struct Scripted {
    steps: Mutex<VecDeque<Step>>,
    claims: Mutex<Vec<Instant>>,
}

fn lease(holder: &str, epoch: i64) -> Leadership {
    Leadership {
        holder: holder.into(),
        epoch,
        acquired_at: 0,
        expires_at: 3,
        left: 3,
    }
}

#[async_trait]
impl LeaderStore for Scripted {
    async fn claim_leadership(&self, holder: &str, _ttl: i64) -> StoreResult<LeaderClaim> {
        self.claims.lock().unwrap().push(Instant::now());
        let step = self.steps.lock().unwrap().pop_front();
        let mut step = match step {
            Some(step) => step,
            None => std::future::pending().await,
        };
        loop {
            return match step {
                Step::Lead(epoch) => Ok(LeaderClaim::Leading(lease(holder, epoch))),
                Step::Follow => Ok(LeaderClaim::Following(Some(lease("b:2:y", 7)))),
                Step::Fail => Err(StoreError::Busy { path: "db".into() }),
                Step::Late(delay, then) => {
                    tokio::time::sleep(delay).await;
                    step = *then;
                    continue;
                }
            };
        }
    }

    async fn release_leadership(&self, _token: &LeaderToken) -> StoreResult<()> {
        Ok(())
    }

    async fn leadership(&self) -> StoreResult<Option<Leadership>> {
        Ok(None)
    }
}

/// lease 3s, renew every 1s, deadline 2s: the values the integration tests use.
fn timing() -> LeaderTiming {
    LeaderTiming {
        lease: Duration::from_secs(3),
        renew_interval: Duration::from_secs(1),
        renew_deadline: Duration::from_secs(2),
    }
}

struct Run {
    store: Arc<Scripted>,
    acting: watch::Receiver<Option<LeaderToken>>,
    gauges: LeaderGauges,
    start: Instant,
    task: JoinHandle<()>,
}

fn start(steps: Vec<Step>) -> Run {
    let store = Arc::new(Scripted {
        steps: Mutex::new(steps.into()),
        ..Scripted::default()
    });
    let gauges = LeaderGauges::new().unwrap();
    let (elector, acting) = Elector::new(
        store.clone(),
        HOLDER.into(),
        timing(),
        gauges.clone(),
        Box::new(|_| {}),
    );
    let start = Instant::now();
    Run {
        store,
        acting,
        gauges,
        start,
        task: elector.spawn(),
    }
}

impl Run {
    /// Waits for the next change of the acting term; answers it and how long after the
    /// start it came.
    async fn next_change(&mut self) -> (Option<i64>, Duration) {
        self.acting.changed().await.expect("loop running");
        let epoch = self.acting.borrow_and_update().as_ref().map(|t| t.epoch);
        (epoch, self.start.elapsed())
    }

    fn claims(&self) -> Vec<Duration> {
        let claims = self.store.claims.lock().unwrap();
        claims.iter().map(|at| *at - self.start).collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(start_paused = true)]
async fn a_leader_whose_claim_hangs_stops_acting_at_its_renew_deadline() {
    let mut run = start(vec![Step::Lead(1)]);
    assert_eq!(run.next_change().await, (Some(1), S(0)));
    assert_eq!(run.gauges.leader.get(), 1);
    assert_eq!(run.gauges.epoch.get(), 1);
    // The claim at 1s never answers: acting ends 2s after the start of the claim at 0s,
    // not a moment later (and not at the lease's end, 3s).
    assert_eq!(run.next_change().await, (None, S(2)));
    assert_eq!(run.gauges.leader.get(), 0);
    assert_eq!(run.claims(), vec![S(0), S(1)]);
}

#[tokio::test(start_paused = true)]
async fn renewals_move_the_deadline_to_the_start_of_the_last_successful_claim() {
    let mut run = start(vec![Step::Lead(1), Step::Lead(1), Step::Lead(1)]);
    assert_eq!(run.next_change().await, (Some(1), S(0)));
    // Renewed at 1s and 2s (the same term: no change), then the claim at 3s hangs.
    assert_eq!(run.next_change().await, (None, S(4)));
}

#[tokio::test(start_paused = true)]
async fn a_failed_claim_steps_down_at_once() {
    let mut run = start(vec![Step::Lead(1), Step::Fail]);
    assert_eq!(run.next_change().await, (Some(1), S(0)));
    assert_eq!(run.next_change().await, (None, S(1)));
    assert_eq!(run.gauges.store_up.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn another_holder_steps_down_at_once_and_its_epoch_is_exported() {
    let mut run = start(vec![Step::Lead(1), Step::Follow]);
    assert_eq!(run.next_change().await, (Some(1), S(0)));
    assert_eq!(run.next_change().await, (None, S(1)));
    assert_eq!(run.gauges.store_up.get(), 1);
    assert_eq!(run.gauges.epoch.get(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_slow_claim_ends_the_term_at_the_deadline_and_its_late_answer_is_not_acted_on() {
    // The claim at 1s answers "leading" at 3.5s: past the deadline (2s) of the last success
    // and past its own (1s + 2s). The term ends at 2s and does not come back with it; the
    // next claim (at 3.5s, its interval over) leads again.
    let mut run = start(vec![
        Step::Lead(1),
        Step::Late(Duration::from_millis(2500), Box::new(Step::Lead(1))),
        Step::Lead(1),
    ]);
    assert_eq!(run.next_change().await, (Some(1), S(0)));
    assert_eq!(run.next_change().await, (None, S(2)));
    assert_eq!(
        run.next_change().await,
        (Some(1), Duration::from_millis(3500))
    );
    assert_eq!(run.claims(), vec![S(0), S(1), Duration::from_millis(3500)]);
}

#[tokio::test(start_paused = true)]
async fn a_new_epoch_is_a_new_term() {
    let mut run = start(vec![Step::Lead(1), Step::Lead(2)]);
    assert_eq!(run.next_change().await, (Some(1), S(0)));
    assert_eq!(run.next_change().await, (Some(2), S(1)));
}

#[tokio::test(start_paused = true)]
async fn a_standby_never_acts() {
    let mut run = start(vec![Step::Follow, Step::Follow, Step::Fail, Step::Lead(3)]);
    // The first change is the lead at 3s: nothing was published before it.
    assert_eq!(run.next_change().await, (Some(3), S(3)));
}

#[tokio::test(start_paused = true)]
async fn a_claim_unanswered_for_a_lease_counts_as_a_failed_round_trip() {
    let mut run = start(vec![
        Step::Lead(1),
        Step::Late(S(60), Box::new(Step::Lead(1))),
        Step::Lead(1),
    ]);
    assert_eq!(run.next_change().await, (Some(1), S(0)));
    assert_eq!(run.next_change().await, (None, S(2)));
    // The claim at 1s is given up at 4s (one lease), the store marked down, and the next
    // claim goes out at once and leads again.
    assert_eq!(run.next_change().await, (Some(1), S(4)));
    assert_eq!(run.claims(), vec![S(0), S(1), S(4)]);
}
