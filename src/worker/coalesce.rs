//! The flusher: sends held (coalesced) writes once their window is over.
//!
//! Writes to a target that declares `coalesce:` wait in the store, merged
//! per customer record and operation; this loop sends each as one call when
//! due, retrying like event delivery (backoff, `Retry-After`, a spent daily
//! budget waits without costing an attempt).

use super::{StopOnDrop, WorkerConfig, backoff};
use crate::store::{FLUSH_LEASE_MS, LEASE_RENEWAL_MS, PendingWrite, Store, StoreError, now_ms};
use crate::targets::fence::Fence;
use crate::targets::{Executor, Outcome};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The held writes this flusher has claimed and not yet settled, with their
/// leases: renewed while they wait their turn or their rate limit.
#[derive(Clone, Default)]
struct Claimed(Arc<Mutex<HashMap<i64, Fence>>>);

impl Claimed {
    fn take(&self, writes: &[PendingWrite], until: i64) {
        if let Ok(mut held) = self.0.lock() {
            for write in writes {
                held.insert(write.id, Fence::until(until));
            }
        }
    }

    fn fence(&self, id: i64) -> Fence {
        self.0
            .lock()
            .ok()
            .and_then(|held| held.get(&id).cloned())
            .unwrap_or_default()
    }

    fn release(&self, id: i64) {
        if let Ok(mut held) = self.0.lock() {
            held.remove(&id);
        }
    }
}

/// Renews the leases of the writes `claimed` holds; a lease the database
/// did not renew (another flusher took the write) stops its call.
async fn renew(store: Store, claimed: Claimed) {
    let every = Duration::from_millis(LEASE_RENEWAL_MS as u64);
    loop {
        tokio::time::sleep(every).await;
        let ids: Vec<i64> = match claimed.0.lock() {
            Ok(held) => held.keys().copied().collect(),
            Err(_) => continue,
        };
        let until = now_ms() + FLUSH_LEASE_MS;
        match store.renew_write_leases(&ids, until).await {
            Ok(renewed) => {
                if let Ok(held) = claimed.0.lock() {
                    crate::targets::fence::apply_renewal(
                        ids.iter()
                            .filter_map(|id| held.get(id).map(|fence| (*id, fence))),
                        &renewed,
                        &[],
                        until,
                    );
                }
            }
            Err(e) => {
                tracing::warn!(writes = ids.len(), error = %e, "cannot renew the leases of held writes being sent; another flusher may take them when they end")
            }
        }
    }
}

/// Held writes claimed at a time.
const BATCH: i64 = 16;
/// How often the store is asked for due writes when none were.
const POLL: Duration = Duration::from_millis(250);

/// Runs until `shutdown` turns true; the write being sent finishes first.
pub async fn run(
    store: Store,
    executor: Arc<arc_swap::ArcSwap<Executor>>,
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    // One process owns a SQLite file: a write it was sending when it died
    // goes out again now, not when its lease ends.
    if !store.is_postgres()
        && let Ok(held) = store.pending_writes().await
    {
        let executor = executor.load_full();
        for write in held.iter().filter(|w| w.state == "flushing") {
            let merge = |a: &serde_json::Value, b: &serde_json::Value| {
                executor.merge_held(&write.target, &write.op, a, b)
            };
            if let Err(e) = store
                .retry_write(
                    write,
                    now_ms(),
                    "mapper stopped while sending it",
                    false,
                    merge,
                )
                .await
            {
                // It stays `flushing` until its lease ends, then goes out.
                tracing::warn!(write = write.id, error = %e, "cannot re-queue a held write left being sent");
            }
        }
    }
    let claimed = Claimed::default();
    let _renewing = StopOnDrop(tokio::spawn(renew(store.clone(), claimed.clone())));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let claimed_at = now_ms();
        let due = match store.claim_due_writes(BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim held writes");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if due.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let executor = executor.load_full();
        claimed.take(&due, claimed_at + FLUSH_LEASE_MS);
        // One at a time, oldest first: two writes of one record keep their order.
        let mut rest = due.into_iter();
        for write in rest.by_ref() {
            claimed
                .fence(write.id)
                .guard(flush_one(&store, &executor, &config, &write))
                .await;
            claimed.release(write.id);
            if *shutdown.borrow() {
                break;
            }
        }
        // Claimed but not sent because we are stopping: due again at once.
        for write in rest {
            claimed.release(write.id);
            let merge = |a: &serde_json::Value, b: &serde_json::Value| {
                executor.merge_held(&write.target, &write.op, a, b)
            };
            if let Err(e) = store
                .retry_write(&write, now_ms(), "not sent: mapper stopped", false, merge)
                .await
            {
                tracing::warn!(write = write.id, error = %e, "cannot give back a claimed held write; it goes out when its lease ends");
            }
        }
    }
}

/// Sends one held write and records the outcome.
async fn flush_one(
    store: &Store,
    executor: &Executor,
    config: &WorkerConfig,
    write: &PendingWrite,
) {
    let (outcome, calls) = executor.flush(write).await;
    let merge = |a: &serde_json::Value, b: &serde_json::Value| {
        executor.merge_held(&write.target, &write.op, a, b)
    };
    let attempts = write.attempts + 1;
    let label = match &outcome {
        Outcome::Delivered | Outcome::Suppressed { .. } => "delivered",
        Outcome::Paused { .. } => "paused",
        Outcome::Transient { .. } if attempts < config.max_attempts => "retrying",
        _ => "dead",
    };
    executor
        .metrics()
        .event_processed(&write.connection, label, calls, None);
    let result = match &outcome {
        Outcome::Delivered | Outcome::Suppressed { .. } => store.finish_write(write).await,
        Outcome::Paused { error, until } => {
            store
                .retry_write(
                    write,
                    now_ms() + until.as_millis() as i64,
                    error,
                    false,
                    merge,
                )
                .await
        }
        Outcome::Transient { error, retry_after } if attempts < config.max_attempts => {
            let delay = backoff(config, write.attempts, *retry_after);
            tracing::warn!(write = write.id, target = %write.target, op = %write.op, attempt = attempts, delay_ms = delay.as_millis() as u64, %error, "held write will retry");
            store
                .retry_write(
                    write,
                    now_ms() + delay.as_millis() as i64,
                    error,
                    true,
                    merge,
                )
                .await
        }
        Outcome::Transient { error, .. } | Outcome::Permanent(error) => {
            tracing::error!(write = write.id, target = %write.target, op = %write.op, attempt = attempts, %error, "held write failed");
            store.fail_write(write, attempts, error).await
        }
    };
    if let Err(lost @ StoreError::WriteLeaseLost(_)) = &result {
        tracing::warn!(write = write.id, error = %lost, "held write left to the flusher that holds it now");
    } else if let Err(e) = result {
        // The row stays claimed; its lease runs out and it is sent again.
        tracing::error!(write = write.id, error = %e, "cannot record a held write's outcome");
    }
}
