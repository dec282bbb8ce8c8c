//! Client-side rate limiting per target, so a burst of webhooks drains at the
//! rate the API allows instead of collecting 429s.
//!
//! GCRA: requests are spaced by `per / requests` on average, with a burst of
//! up to `requests` within one window; a daily budget, when declared, pauses
//! delivery until the next UTC day once spent. A response that says the
//! window is used up (`X-RateLimit-Remaining: 0`) pushes the next request
//! past the window.

use crate::config::model::RateLimit;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    interval: Duration,
    tolerance: Duration,
    tat: Instant,
    daily: Option<u32>,
    day: i64,
    used_today: u32,
}

/// One bucket per target.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// Waits until `target` may send one more request.
    pub async fn acquire(&self, target: &str, limit: Option<&RateLimit>) {
        let Some(limit) = limit else { return };
        if limit.requests == 0 || limit.per_seconds == 0 {
            return;
        }
        let wait = {
            let mut buckets = self.buckets.lock().await;
            let now = Instant::now();
            let per = Duration::from_secs(u64::from(limit.per_seconds));
            let interval = per / limit.requests;
            let bucket = buckets.entry(target.to_string()).or_insert_with(|| Bucket {
                interval,
                tolerance: per.saturating_sub(interval),
                tat: now,
                daily: limit.daily,
                day: today(),
                used_today: 0,
            });
            let mut wait = Duration::ZERO;
            if let Some(daily) = bucket.daily {
                if bucket.day != today() {
                    bucket.day = today();
                    bucket.used_today = 0;
                }
                if bucket.used_today >= daily {
                    wait = until_next_utc_day();
                    bucket.day += 1;
                    bucket.used_today = 0;
                }
                bucket.used_today += 1;
            }
            let tat = bucket.tat.max(now);
            let earliest = tat.checked_sub(bucket.tolerance).unwrap_or(now);
            if earliest > now {
                wait = wait.max(earliest - now);
            }
            bucket.tat = tat + bucket.interval;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The target said its window is spent: nothing more until it has passed.
    pub async fn exhausted(&self, target: &str, window: Duration) {
        let mut buckets = self.buckets.lock().await;
        if let Some(bucket) = buckets.get_mut(target) {
            let resume = Instant::now() + window;
            // Pushing `tat` past the tolerance makes the next acquire wait for the window.
            bucket.tat = bucket.tat.max(resume + bucket.tolerance);
        }
    }
}

fn today() -> i64 {
    chrono::Utc::now().timestamp() / 86_400
}

fn until_next_utc_day() -> Duration {
    let now = chrono::Utc::now().timestamp();
    Duration::from_secs((86_400 - now.rem_euclid(86_400)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_paces() {
        let limiter = Limiter::default();
        let limit = RateLimit {
            requests: 10,
            per_seconds: 1,
            daily: None,
            per: None,
        };
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            limiter.acquire("ghl", Some(&limit)).await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "a burst of 10 passes at once"
        );
        for _ in 0..10 {
            limiter.acquire("ghl", Some(&limit)).await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(850),
            "the next 10 are paced: {elapsed:?}"
        );
        // Another target has its own budget.
        let other = tokio::time::Instant::now();
        limiter.acquire("stickycards", Some(&limit)).await;
        assert!(other.elapsed() < Duration::from_millis(10));
    }
}
