//! The flusher: sends held (coalesced) writes once their window is over.
//!
//! Writes to a target that declares `coalesce:` wait in the store, merged
//! per customer record and operation; this loop sends each as one call when
//! due, retrying like event delivery (backoff, `Retry-After`, a spent daily
//! budget waits without costing an attempt).

use super::{WorkerConfig, backoff};
use crate::store::{PendingWrite, Store, now_ms};
use crate::targets::{Executor, Outcome};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
    loop {
        if *shutdown.borrow() {
            return;
        }
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
        // One at a time, oldest first: two writes of one record keep their order.
        let mut rest = due.into_iter();
        for write in rest.by_ref() {
            flush_one(&store, &executor, &config, &write).await;
            if *shutdown.borrow() {
                break;
            }
        }
        // Claimed but not sent because we are stopping: due again at once.
        for write in rest {
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
        Outcome::Delivered | Outcome::Suppressed { .. } => store.finish_write(write.id).await,
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
            store.fail_write(write.id, attempts, error).await
        }
    };
    if let Err(e) = result {
        // The row stays claimed; its lease runs out and it is sent again.
        tracing::error!(write = write.id, error = %e, "cannot record a held write's outcome");
    }
}
