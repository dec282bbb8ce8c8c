//! Client-side rate limiting per target, so a burst of webhooks drains at the
//! rate the API allows instead of collecting 429s.
//!
//! A sliding window: at most `requests` sends in any `per_seconds`, which
//! also keeps a fixed-window server satisfied. A token bucket (GCRA) would
//! allow a full burst plus the refill within one window (up to twice the
//! limit), which GHL answers with 429. The window is stretched by a small
//! margin (5% + 250 ms) because the server counts arrivals, and network
//! delay can bring two sends closer together on arrival than they left (a
//! 70 ms margin still met a 429 in the burst test).
//!
//! A daily budget, when declared, is counted per UTC day; once spent (or when
//! the target says `X-RateLimit-Daily-Remaining: 0`), `acquire` refuses with
//! the time until the reset, so the worker parks the event instead of
//! burning its retries.

use crate::config::model::RateLimit;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Bucket {
    /// Send times of the last `requests` calls (some may lie in the future: reserved slots).
    sent: VecDeque<Instant>,
    /// Earliest next send, set when the target said its window is spent.
    blocked_until: Option<Instant>,
    day: i64,
    used_today: u32,
    /// The target said the day's budget is spent.
    day_spent: bool,
}

/// One window per target.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Extra room on every window (see the module documentation).
fn margin(per: Duration) -> Duration {
    per / 20 + Duration::from_millis(250)
}

impl Limiter {
    /// Waits until `target` may send one more request. `Err` carries how long
    /// until the daily budget resets: nothing is sent before then.
    pub async fn acquire(&self, target: &str, limit: Option<&RateLimit>) -> Result<(), Duration> {
        let Some(limit) = limit else { return Ok(()) };
        let wait = {
            let mut buckets = self.buckets.lock().await;
            let now = Instant::now();
            let bucket = buckets.entry(target.to_string()).or_default();
            if bucket.day != today() {
                bucket.day = today();
                bucket.used_today = 0;
                bucket.day_spent = false;
            }
            if bucket.day_spent || limit.daily.is_some_and(|d| bucket.used_today >= d) {
                return Err(until_next_utc_day());
            }
            bucket.used_today += 1;
            if limit.requests == 0 || limit.per_seconds == 0 {
                return Ok(());
            }
            let per = Duration::from_secs(u64::from(limit.per_seconds));
            let window = per + margin(per);
            let mut at = now.max(bucket.blocked_until.unwrap_or(now));
            if bucket.sent.len() >= limit.requests as usize
                && let Some(oldest) = bucket.sent.pop_front()
            {
                at = at.max(oldest + window);
            }
            bucket.sent.push_back(at);
            while bucket.sent.len() > limit.requests as usize {
                bucket.sent.pop_front();
            }
            at - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The target said its window is spent: nothing more until it has passed.
    pub async fn exhausted(&self, target: &str, window: Duration) {
        let mut buckets = self.buckets.lock().await;
        let bucket = buckets.entry(target.to_string()).or_default();
        let resume = Instant::now() + window;
        bucket.blocked_until = Some(bucket.blocked_until.map_or(resume, |b| b.max(resume)));
    }

    /// The target said the day's budget is spent.
    pub async fn day_spent(&self, target: &str) {
        let mut buckets = self.buckets.lock().await;
        let bucket = buckets.entry(target.to_string()).or_default();
        bucket.day = today();
        bucket.day_spent = true;
    }
}

fn today() -> i64 {
    chrono::Utc::now().timestamp() / 86_400
}

/// Time until the next UTC midnight, when daily budgets reset.
pub fn until_next_utc_day() -> Duration {
    let now = chrono::Utc::now().timestamp();
    Duration::from_secs((86_400 - now.rem_euclid(86_400)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, daily: Option<u32>) -> RateLimit {
        RateLimit {
            requests,
            per_seconds: 1,
            daily,
            per: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_never_more_than_the_limit_in_any_window() {
        let limiter = Limiter::default();
        let limit = limit(10, None);
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..35 {
            limiter.acquire("ghl", Some(&limit)).await.unwrap();
            sent.push(Instant::now());
        }
        assert!(
            sent[9] - start < Duration::from_millis(5),
            "the first 10 pass at once"
        );
        for (i, t) in sent.iter().enumerate().skip(10) {
            assert!(
                *t - sent[i - 10] >= Duration::from_secs(1),
                "send {i} is a full window after send {}",
                i - 10
            );
        }
        // Another target has its own window.
        let other = Instant::now();
        limiter.acquire("stickycards", Some(&limit)).await.unwrap();
        assert!(other.elapsed() < Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_window() {
        let limiter = std::sync::Arc::new(Limiter::default());
        let limit = limit(5, None);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..15 {
            let (limiter, limit) = (limiter.clone(), limit.clone());
            tasks.push(tokio::spawn(async move {
                limiter.acquire("ghl", Some(&limit)).await.unwrap();
                Instant::now() - start
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap());
        }
        at.sort();
        assert!(at[4] < Duration::from_millis(5));
        assert!(at[5] >= Duration::from_secs(1) && at[10] >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_daily_budget_refuses_until_the_reset() {
        let limiter = Limiter::default();
        let limit = limit(100, Some(3));
        for _ in 0..3 {
            limiter.acquire("ghl", Some(&limit)).await.unwrap();
        }
        let until = limiter.acquire("ghl", Some(&limit)).await.unwrap_err();
        assert!(until <= Duration::from_secs(86_400) && until > Duration::ZERO);
        // The target's own word counts too.
        let other = Limiter::default();
        other.day_spent("ghl").await;
        assert!(other.acquire("ghl", Some(&limit)).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_window_reported_by_the_target_holds_the_next_send() {
        let limiter = Limiter::default();
        let limit = limit(100, None);
        limiter.exhausted("ghl", Duration::from_secs(10)).await;
        let start = Instant::now();
        limiter.acquire("ghl", Some(&limit)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(10));
    }
}
