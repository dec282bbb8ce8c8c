//! Workers: take due events from the inbox, deliver them, record the outcome,
//! retry transient failures with exponential backoff and jitter.

use crate::store::{EventState, Store, now_ms};
use crate::targets::{Executor, Outcome};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
    /// Sleep when nothing is due.
    pub idle: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(600),
            batch: 32,
            idle: Duration::from_millis(200),
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
/// `executor` is swapped when the mapping folder is reloaded; each batch uses
/// the one current when it starts.
pub async fn run(
    store: Store,
    executor: Arc<arc_swap::ArcSwap<Executor>>,
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(n) = store.recover_processing().await
        && n > 0
    {
        tracing::info!(
            events = n,
            "re-queued events left in processing by an earlier stop"
        );
    }
    loop {
        if *shutdown.borrow() {
            return;
        }
        let claimed = match store.claim_due(config.batch).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim events");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(config.idle) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let started = now_ms();
        let executor = executor.load_full();
        let (mut delivered, mut failed) = (0i64, 0i64);
        for event in &claimed {
            let _ = executor.take_calls();
            let outcome = executor
                .deliver(
                    event.id,
                    &event.connection,
                    &event.source,
                    &event.body,
                    event.attempts,
                )
                .await;
            let label = match &outcome {
                Outcome::Delivered => "delivered",
                Outcome::Transient { .. } if event.attempts < config.max_attempts => "retrying",
                _ => "dead",
            };
            crate::server::telemetry::event_processed(label, executor.take_calls());
            let result = match &outcome {
                Outcome::Delivered => {
                    delivered += 1;
                    store
                        .finish(event.id, EventState::Delivered, now_ms(), None)
                        .await
                }
                Outcome::Transient { error, retry_after }
                    if event.attempts < config.max_attempts =>
                {
                    failed += 1;
                    let delay = backoff(&config, event.attempts - 1, *retry_after);
                    tracing::warn!(event = event.id, attempt = event.attempts, delay_ms = delay.as_millis() as u64, %error, "will retry");
                    store
                        .finish(
                            event.id,
                            EventState::Retrying,
                            now_ms() + delay.as_millis() as i64,
                            Some(error),
                        )
                        .await
                }
                Outcome::Transient { error, .. } | Outcome::Permanent(error) => {
                    failed += 1;
                    tracing::error!(event = event.id, attempt = event.attempts, %error, "dead");
                    store
                        .finish(event.id, EventState::Dead, now_ms(), Some(error))
                        .await
                }
            };
            if let Err(e) = result {
                tracing::error!(event = event.id, error = %e, "cannot record the outcome");
            }
        }
        let _ = store
            .record_run(
                &event_connection(&claimed),
                started,
                claimed.len() as i64,
                delivered,
                failed,
            )
            .await;
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
