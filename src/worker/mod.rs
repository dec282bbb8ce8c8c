//! Workers: take due events from the inbox, deliver them, record the outcome,
//! retry transient failures with exponential backoff and jitter.

pub mod coalesce;
pub mod schedule;

use crate::store::{
    CLAIM_LEASE_MS, ClaimShares, ClaimedEvent, EventState, LEASE_RENEWAL_MS, Renewal, RunSummary,
    Store, StoreError, now_ms,
};
use crate::targets::fence::Fence;
use crate::targets::{Executor, Finish, Outcome, Suppression};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

/// How workers retry.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// After this many attempts a failing event is dead.
    pub max_attempts: i64,
    /// First retry delay; doubled on each attempt.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Events claimed at a time.
    pub batch: i64,
    /// Events delivered at once (each a different customer).
    pub concurrency: usize,
    /// Sleep when nothing is due.
    pub idle: Duration,
    /// At start, re-queue events left `processing` by a stopped process
    /// (SQLite). Off for a process that runs beside `serve` (resync).
    pub recover_processing: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(600),
            batch: 32,
            concurrency: 8,
            idle: Duration::from_millis(200),
            recover_processing: true,
        }
    }
}

/// The delay before attempt `attempt + 1`: exponential, capped, with ±20% jitter,
/// and never shorter than what the target asked for (`Retry-After`).
pub fn backoff(config: &WorkerConfig, attempt: i64, asked: Option<Duration>) -> Duration {
    let exp = config
        .base_delay
        .saturating_mul(1u32 << attempt.clamp(0, 20) as u32)
        .min(config.max_delay);
    // Jitter spreads retries of a burst; the clock's nanoseconds are random enough for that.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.8 + f64::from(nanos % 400) / 1000.0;
    let jittered = exp.mul_f64(factor);
    match asked {
        Some(a) if a > jittered => a,
        _ => jittered,
    }
}

/// Runs until `shutdown` turns true; events in flight finish first.
///
/// Up to `config.concurrency` events are delivered at once. The inbox hands
/// out only the oldest pending event of each customer, so a customer's
/// events apply one after another in arrival order while other customers'
/// go in parallel. `executor` is swapped when the mapping folder is
/// reloaded; each batch uses the one current when it was claimed.
pub async fn run(
    store: Store,
    executor: Arc<arc_swap::ArcSwap<Executor>>,
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    if config.recover_processing
        && let Ok(n) = store.recover_processing().await
        && n > 0
    {
        tracing::info!(
            events = n,
            "re-queued events left in processing by an earlier stop"
        );
    }
    let concurrency = config.concurrency.max(1);
    let slots = Arc::new(ConnectionSlots::new(concurrency));
    let finished = Arc::new(Notify::new());
    let journals = Arc::new(Semaphore::new(JOURNALS_WAITING.max(concurrency)));
    let leases = Leases::default();
    let _renewing = StopOnDrop(tokio::spawn(renew(store.clone(), leases.clone())));
    let mut batches = JoinSet::new();
    let mut last_claim = std::time::Instant::now();
    let mut found_more = false;
    loop {
        while batches.try_join_next().is_some() {}
        if *shutdown.borrow() {
            while batches.join_next().await.is_some() {}
            return;
        }
        // Each connection may hold its slots and `CLAIM_ROUNDS` more rounds
        // of them, and is topped up once a round is left: a busy worker pays
        // one claim (a turn of SQLite's one writer) per round of
        // deliveries, and a slot that frees finds its next event claimed
        // (deliver bench: 0.48 → 0.18 commits per event with one round
        // ahead → two). A backlog held to its rate limit fills only its own
        // share; the others' events are claimed beside it.
        let holding = leases.by_connection();
        let held: usize = holding.values().sum();
        let shares = ClaimShares {
            holding: &holding,
            each: concurrency * (1 + CLAIM_ROUNDS),
            round: concurrency,
        };
        let room = (shares.each.max(MAX_HELD))
            .saturating_sub(held)
            .min(config.batch.max(1) as usize);
        // A claim is worth making when a connection it holds has room for a
        // round, when it holds nothing, when the last claim found events
        // (more may wait), or once per idle period (another connection's
        // events may have arrived).
        let worth = room > 0
            && (held == 0
                || found_more
                || holding.keys().any(|c| shares.room_of(c) > 0)
                || last_claim.elapsed() >= config.idle);
        if !worth {
            tokio::select! {
                _ = tokio::time::sleep(config.idle) => {}
                _ = finished.notified() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        last_claim = std::time::Instant::now();
        let mut claimed = {
            match store.claim_due_fairly(room as i64, &shares).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim events");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        };
        found_more = claimed.len() == room;
        // An event this worker still holds comes back when a renewal was
        // late and its lease lapsed: it is being delivered, not again.
        claimed.retain(|event| leases.take(event));
        if claimed.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(config.idle) => {}
                _ = finished.notified() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        batches.spawn(run_batch(
            executor.load_full(),
            config.clone(),
            claimed,
            Slots {
                free: slots.clone(),
                finished: finished.clone(),
                journals: journals.clone(),
                stopping: shutdown.clone(),
                leases: leases.clone(),
            },
        ));
    }
}

/// The events a worker has claimed and not yet finished: their leases are
/// renewed while they wait for a slot, their rate limit or their journal.
/// By event id: its connection, whether it is still before or in its slot
/// (not yet waiting for its journal), and its lease as last renewed.
#[derive(Clone, Default)]
struct Leases(Arc<std::sync::Mutex<HashMap<i64, Held>>>);

struct Held {
    connection: String,
    active: bool,
    fence: Fence,
}

impl Leases {
    /// Records a claimed event; false when this worker holds it already
    /// (its lease lapsed and it claimed it again: the delivery under way
    /// goes on, under the new lease).
    fn take(&self, event: &ClaimedEvent) -> bool {
        let Ok(mut ids) = self.0.lock() else {
            return true;
        };
        match ids.get(&event.id) {
            Some(held) => {
                held.fence.renewed(event.lease_until);
                false
            }
            None => {
                ids.insert(
                    event.id,
                    Held {
                        connection: event.connection.clone(),
                        active: true,
                        fence: Fence::until(event.lease_until),
                    },
                );
                true
            }
        }
    }

    /// The lease of a held event, which its delivery's calls check.
    fn fence(&self, id: i64) -> Fence {
        self.0
            .lock()
            .ok()
            .and_then(|ids| ids.get(&id).map(|held| held.fence.clone()))
            .unwrap_or_default()
    }

    /// The event's calls are made; it waits for its journal. It keeps its
    /// lease but no longer counts against its connection's share.
    fn settling(&self, id: i64) {
        if let Ok(mut ids) = self.0.lock()
            && let Some(held) = ids.get_mut(&id)
        {
            held.active = false;
        }
    }

    /// How many events this worker holds of each connection, before or in
    /// their slot (what a fair claim shares out, see
    /// [`Store::claim_due_fairly`]).
    fn by_connection(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        if let Ok(ids) = self.0.lock() {
            for held in ids.values().filter(|held| held.active) {
                *counts.entry(held.connection.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The event is finished (or given up): its lease is left to lapse.
    fn release(&self, id: i64) {
        if let Ok(mut ids) = self.0.lock() {
            ids.remove(&id);
        }
    }

    fn held(&self) -> Vec<i64> {
        self.0
            .lock()
            .map(|ids| ids.keys().copied().collect())
            .unwrap_or_default()
    }

    /// A renewal to `until` of the leases asked for in `asked` went as
    /// `renewal` says; those neither extended nor busy are lost (the events
    /// were taken over).
    fn renewed(&self, asked: &[i64], renewal: &Renewal, until: i64) {
        let Ok(ids) = self.0.lock() else {
            return;
        };
        crate::targets::fence::apply_renewal(
            asked
                .iter()
                .filter_map(|id| ids.get(id).map(|held| (*id, &held.fence))),
            &renewal.extended,
            &renewal.busy,
            until,
        );
    }
}

/// Renews the leases of every event `leases` holds, for as long as the
/// worker runs: a replica that dies stops renewing, and its events are
/// taken over once their lease ends ([`CLAIM_LEASE_MS`]). A lease the
/// database did not renew (another worker took the event) stops the calls
/// of its delivery ([`Fence`]).
async fn renew(store: Store, leases: Leases) {
    let every = Duration::from_millis(LEASE_RENEWAL_MS as u64);
    loop {
        tokio::time::sleep(every).await;
        let ids = leases.held();
        let until = now_ms() + CLAIM_LEASE_MS;
        match store.renew_leases(&ids, until).await {
            Ok(renewal) => {
                if renewal.extended.len() + renewal.busy.len() < ids.len() {
                    tracing::debug!(
                        asked = ids.len(),
                        extended = renewal.extended.len(),
                        busy = renewal.busy.len(),
                        "some claimed events are finished or were taken over"
                    );
                }
                leases.renewed(&ids, &renewal, until);
            }
            Err(e) => {
                tracing::warn!(events = ids.len(), error = %e, "cannot renew the leases of claimed events; another worker may take them when they end, and their calls stop before then")
            }
        }
    }
}

/// Stops a background task when its owner returns.
struct StopOnDrop(tokio::task::JoinHandle<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Events a worker holds at most, all connections together: bounds the
/// deliveries in flight (each connection has its own slots) and the leases
/// it renews.
const MAX_HELD: usize = 512;

/// Rounds of slots a worker claims ahead (see [`run`]).
const CLAIM_ROUNDS: usize = 2;

/// Each connection's deliveries in flight, at most the worker's concurrency
/// each: one connection's events waiting for its rate limit or its slow
/// target hold its own slots, never another's.
struct ConnectionSlots {
    each: usize,
    of: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl ConnectionSlots {
    fn new(each: usize) -> ConnectionSlots {
        ConnectionSlots {
            each,
            of: Default::default(),
        }
    }

    /// Waits for a slot of `connection`'s; freed when the permit is dropped.
    async fn acquire(&self, connection: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = match self.of.lock() {
            Ok(mut of) => {
                // A connection that has gone quiet gives its entry back.
                if of.len() > 1024 {
                    of.retain(|_, s| s.available_permits() < self.each);
                }
                of.entry(connection.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.each)))
                    .clone()
            }
            Err(_) => return None,
        };
        semaphore.acquire_owned().await.ok()
    }
}

/// What a batch shares with the claiming loop.
struct Slots {
    /// Each connection's deliveries in flight.
    free: Arc<ConnectionSlots>,
    /// Wakes the claiming loop when a slot frees or an event starts.
    finished: Arc<Notify>,
    /// One permit per journal waiting for its commit: bounds the deliveries
    /// whose calls are made but whose journal is not yet written.
    journals: Arc<Semaphore>,
    /// Turns true when the worker is asked to stop.
    stopping: watch::Receiver<bool>,
    /// The claimed events whose leases this worker renews.
    leases: Leases,
}

/// Journals that may wait for their commit at once, all slots together:
/// the journal writer's largest group.
const JOURNALS_WAITING: usize = 64;

/// Delivers one claimed batch (distinct customers), each event as a slot
/// frees, and writes its run summary.
async fn run_batch(
    executor: Arc<Executor>,
    config: WorkerConfig,
    claimed: Vec<ClaimedEvent>,
    slots: Slots,
) {
    let started = now_ms();
    let connection = event_connection(&claimed);
    let processed = claimed.len() as i64;
    let mut events = JoinSet::new();
    // Each event waits for a slot of its own connection's, so one
    // connection's full slots hold up none of the batch's other events.
    for event in claimed {
        let (executor, config, slots_of, finished, journals, stopping, leases) = (
            executor.clone(),
            config.clone(),
            slots.free.clone(),
            slots.finished.clone(),
            slots.journals.clone(),
            slots.stopping.clone(),
            slots.leases.clone(),
        );
        events.spawn(async move {
            // The semaphores are never closed; were one, its events would
            // stay `processing` until their lease ends and be taken again.
            let Some(slot) = slots_of.acquire(&event.connection).await else {
                leases.release(event.id);
                return false;
            };
            finished.notify_one();
            let delivery = leases
                .fence(event.id)
                .guard(deliver_one(&executor, &config, &event))
                .await;
            // The slot frees once the calls are made, while the journal
            // waits for its commit: journals then meet in larger groups (one
            // transaction each) than the number of slots allows. Nothing is
            // lost by it: the event stays `processing`, and its customer's
            // next event is neither claimable nor able to take its people,
            // until the journal is written.
            let journal_turn = journals.acquire_owned().await;
            drop(slot);
            leases.settling(event.id);
            finished.notify_one();
            let delivered = commit_delivery(&executor, &event, delivery, stopping).await;
            leases.release(event.id);
            drop(journal_turn);
            delivered
        });
    }
    let (mut delivered, mut failed) = (0i64, 0i64);
    while let Some(result) = events.join_next().await {
        match result {
            Ok(true) => delivered += 1,
            _ => failed += 1,
        }
    }
    executor.record_run(RunSummary {
        connection,
        started_at: started,
        processed,
        delivered,
        failed,
    });
}

/// Delivers one event: its calls, and its journal with how it ends, ready
/// to be committed by [`commit_delivery`].
async fn deliver_one(
    executor: &Executor,
    config: &WorkerConfig,
    event: &ClaimedEvent,
) -> crate::targets::Delivery {
    let mut delivery = executor.deliver(event).await;
    let outcome = delivery.outcome.clone();
    let finish = decide(config, event, &outcome, now_ms());
    let label = match &finish {
        Finish::State { state, .. } => state.as_str(),
        Finish::Defer { .. } => "paused",
    };
    executor.metrics().event_processed(
        &event.connection,
        label,
        delivery.calls,
        Some(event.received_at),
    );
    log_outcome(event, &outcome, &finish);
    delivery.journal.finish(event.id, finish);
    delivery
}

/// Writes a delivery's journal; true when the event was delivered.
async fn commit_delivery(
    executor: &Executor,
    event: &ClaimedEvent,
    delivery: crate::targets::Delivery,
    mut stopping: watch::Receiver<bool>,
) -> bool {
    let outcome = delivery.outcome.clone();
    // A database busy for a moment (SQLite's writer lock held past its
    // timeout) must not leave the event `processing` until its lease ends,
    // with every later event of the customer waiting behind it. The people
    // it worked on stay locked meanwhile: their next event must see this one.
    let mut pause = Duration::from_millis(250);
    for _ in 0..8 {
        match executor.try_commit(&delivery).await {
            Ok(()) => {
                drop(delivery);
                return matches!(outcome, Outcome::Delivered | Outcome::Suppressed { .. });
            }
            Err(lost @ StoreError::LeaseLost(_)) => {
                // Another worker took the event over while this one stalled:
                // it delivers and journals the event; nothing is lost here.
                tracing::warn!(event = event.id, error = %lost, "journal left to the worker that holds the event now");
                return false;
            }
            Err(e) => {
                tracing::warn!(event = event.id, error = %e, retry_in_ms = pause.as_millis() as u64, "cannot write the delivery's journal yet");
                // Asked to stop (a read-only or full disk, a database gone):
                // the event stays `processing` and is delivered again on the
                // next start, rather than holding the shutdown for as long
                // as the retries last.
                if *stopping.borrow() {
                    tracing::error!(event = event.id, error = %e, "stopping without the delivery's journal; the event is delivered again on the next start");
                    return false;
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopping.wait_for(|stop| *stop) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
    match executor.commit(delivery).await {
        Ok(()) => matches!(outcome, Outcome::Delivered | Outcome::Suppressed { .. }),
        Err(e) => {
            // The event stays `processing`: its lease ends and it is taken
            // again. It is never reported delivered without its log.
            tracing::error!(event = event.id, error = %e, "cannot write the delivery's journal");
            false
        }
    }
}

/// How an event ends in the inbox after a delivery with `outcome`: a
/// transient failure is retried with backoff until `max_attempts`, then dead.
pub fn decide(config: &WorkerConfig, event: &ClaimedEvent, outcome: &Outcome, now: i64) -> Finish {
    let state = |state, next_attempt_at, error: Option<&String>| Finish::State {
        state,
        next_attempt_at,
        error: error.cloned(),
    };
    match outcome {
        Outcome::Delivered => state(EventState::Delivered, now, None),
        Outcome::Suppressed {
            kind: Suppression::Echo,
            ..
        } => state(EventState::Echo, now, None),
        Outcome::Suppressed {
            kind: Suppression::Stale,
            ..
        } => state(EventState::Stale, now, None),
        Outcome::Paused { error, until } => Finish::Defer {
            until: now + until.as_millis() as i64,
            reason: error.clone(),
        },
        Outcome::Transient { error, retry_after } if event.attempts < config.max_attempts => {
            let delay = backoff(config, event.attempts - 1, *retry_after);
            state(
                EventState::Retrying,
                now + delay.as_millis() as i64,
                Some(error),
            )
        }
        Outcome::Transient { error, .. } | Outcome::Permanent(error) => {
            state(EventState::Dead, now, Some(error))
        }
    }
}

fn log_outcome(event: &ClaimedEvent, outcome: &Outcome, finish: &Finish) {
    match (outcome, finish) {
        (Outcome::Suppressed { note, .. }, _) => tracing::info!(event = event.id, "{note}"),
        (Outcome::Paused { error, until }, _) => {
            tracing::warn!(event = event.id, resume_in_s = until.as_secs(), %error, "paused")
        }
        (
            Outcome::Transient { error, .. },
            Finish::State {
                state: EventState::Retrying,
                next_attempt_at,
                ..
            },
        ) => {
            tracing::warn!(event = event.id, attempt = event.attempts, delay_ms = next_attempt_at - now_ms(), %error, "will retry")
        }
        (Outcome::Transient { error, .. } | Outcome::Permanent(error), _) => {
            tracing::error!(event = event.id, attempt = event.attempts, %error, "dead")
        }
        _ => {}
    }
}

fn event_connection(claimed: &[crate::store::ClaimedEvent]) -> String {
    claimed
        .first()
        .map(|e| e.connection.clone())
        .unwrap_or_else(|| crate::store::DEFAULT_CONNECTION.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(attempts: i64) -> ClaimedEvent {
        ClaimedEvent {
            id: 7,
            connection: "default".into(),
            source: "stickycards".into(),
            event_type: "CardScannedEvent".into(),
            body: Vec::new(),
            attempts,
            customer_key: None,
            occurred_at: None,
            received_at: 0,
            lease_until: 0,
        }
    }

    #[test]
    fn how_an_event_ends_over_a_table_of_outcomes() {
        let c = WorkerConfig::default();
        let now = 1_000_000;
        let state_of =
            |attempts: i64, outcome: Outcome| match decide(&c, &event(attempts), &outcome, now) {
                Finish::State {
                    state,
                    next_attempt_at,
                    error,
                } => (state.as_str(), next_attempt_at - now, error),
                Finish::Defer { until, reason } => ("deferred", until - now, Some(reason)),
            };
        let transient = || Outcome::Transient {
            error: "503".into(),
            retry_after: None,
        };
        assert_eq!(state_of(1, Outcome::Delivered), ("delivered", 0, None));
        assert_eq!(
            state_of(
                1,
                Outcome::Suppressed {
                    kind: Suppression::Echo,
                    note: String::new()
                }
            )
            .0,
            "echo"
        );
        assert_eq!(
            state_of(
                1,
                Outcome::Suppressed {
                    kind: Suppression::Stale,
                    note: String::new()
                }
            )
            .0,
            "stale"
        );
        let (state, delay, error) = state_of(1, transient());
        assert_eq!((state, error.as_deref()), ("retrying", Some("503")));
        assert!((1_600..=2_400).contains(&delay), "{delay}");
        assert_eq!(
            state_of(c.max_attempts, transient()).0,
            "dead",
            "out of attempts"
        );
        assert_eq!(state_of(1, Outcome::Permanent("422".into())).0, "dead");
        let asked = Outcome::Transient {
            error: "429".into(),
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(state_of(1, asked).1, 60_000, "Retry-After is honoured");
        let paused = Outcome::Paused {
            error: "budget".into(),
            until: Duration::from_secs(30),
        };
        assert_eq!(
            state_of(3, paused),
            ("deferred", 30_000, Some("budget".to_string()))
        );
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let c = WorkerConfig::default();
        let first = backoff(&c, 0, None);
        assert!(
            first >= Duration::from_millis(1600) && first <= Duration::from_millis(2400),
            "{first:?}"
        );
        let later = backoff(&c, 3, None);
        assert!(later >= Duration::from_millis(12_800), "{later:?}");
        assert!(backoff(&c, 30, None) <= Duration::from_secs(720));
        assert_eq!(
            backoff(&c, 0, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
    }
}
