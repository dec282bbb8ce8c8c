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

//!
//! Several `serve` replicas on one PostgreSQL database share each window
//! through the database ([`Limiter::shared`]): a location sees at most its
//! limit in total, however many processes deliver its events. The window's
//! state is one row per (connection, target), updated under a row lock by
//! the same rule as the in-memory window ([`Window::reserve`]).

use crate::config::model::RateLimit;
use crate::store::Store;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The state of one target's window, in milliseconds on one clock (the
/// process's monotonic clock in memory, the wall clock when shared).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Window {
    /// Send times of the last `requests` calls (some may lie in the future: reserved slots).
    pub sent: VecDeque<i64>,
    /// Earliest next send, set when the target said its window is spent.
    pub blocked_until: i64,
    /// The UTC day `used_today` counts.
    pub day: i64,
    pub used_today: u32,
    /// The target said the day's budget is spent.
    pub day_spent: bool,
}

/// The daily budget is spent: nothing is sent before the next UTC day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DaySpent;

/// Why a send may not go now.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// The daily budget is spent: nothing is sent for this long (until the reset).
    DaySpent(Duration),
    /// The shared window could not be read or written (the database did
    /// not answer, several times): nothing was sent, since other replicas
    /// may have spent the window.
    Unreadable(String),
}

/// Tries of a shared window before a send is refused as [`Refused::Unreadable`].
const SHARED_TRIES: u32 = 3;

impl Window {
    /// Reserves the next send allowed by `limit` at `now` on `today` (a UTC
    /// day number); returns when it may leave.
    pub fn reserve(&mut self, now: i64, today: i64, limit: &RateLimit) -> Result<i64, DaySpent> {
        if self.day != today {
            self.day = today;
            self.used_today = 0;
            self.day_spent = false;
        }
        if self.day_spent || limit.daily.is_some_and(|d| self.used_today >= d) {
            return Err(DaySpent);
        }
        self.used_today += 1;
        if limit.requests == 0 || limit.per_seconds == 0 {
            return Ok(now);
        }
        let per = Duration::from_secs(u64::from(limit.per_seconds));
        let window = (per + margin(per)).as_millis() as i64;
        let mut at = now.max(self.blocked_until);
        if self.sent.len() >= limit.requests as usize
            && let Some(oldest) = self.sent.pop_front()
        {
            at = at.max(oldest + window);
        }
        self.sent.push_back(at);
        while self.sent.len() > limit.requests as usize {
            self.sent.pop_front();
        }
        Ok(at)
    }

    /// The target said its window is spent: nothing more before `resume`.
    pub fn exhausted(&mut self, resume: i64) {
        self.blocked_until = self.blocked_until.max(resume);
    }

    /// The target said the day's budget is spent.
    pub fn spend_day(&mut self, today: i64) {
        self.day = today;
        self.day_spent = true;
    }
}

/// The windows of one executor's targets.
#[derive(Debug)]
pub struct Limiter {
    kept: Kept,
}

#[derive(Debug)]
enum Kept {
    /// In this process: one window per target, on the monotonic clock
    /// counted from `since`.
    Memory {
        since: Instant,
        windows: Mutex<HashMap<String, Window>>,
    },
    /// In the database, shared by every process delivering `connection`.
    Shared { store: Store, connection: String },
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            kept: Kept::Memory {
                since: Instant::now(),
                windows: Mutex::default(),
            },
        }
    }
}

/// Extra room on every window (see the module documentation).
fn margin(per: Duration) -> Duration {
    per / 20 + Duration::from_millis(250)
}

impl Limiter {
    /// Windows kept in `store` for `connection`'s targets, counted by every
    /// process that delivers its events.
    pub fn shared(store: Store, connection: &str) -> Limiter {
        Limiter {
            kept: Kept::Shared {
                store,
                connection: connection.to_string(),
            },
        }
    }

    /// Whether the windows are kept in the database.
    pub fn is_shared(&self) -> bool {
        matches!(self.kept, Kept::Shared { .. })
    }

    /// Changes `target`'s window with `change` (given now on the window's
    /// clock); returns what `change` returned and the clock's now.
    async fn with_window<T>(
        &self,
        target: &str,
        change: impl FnOnce(&mut Window, i64) -> T,
    ) -> Result<(T, i64), crate::store::StoreError> {
        match &self.kept {
            Kept::Memory { since, windows } => {
                let mut windows = windows.lock().await;
                let now = since.elapsed().as_millis() as i64;
                let window = windows.entry(target.to_string()).or_default();
                Ok((change(window, now), now))
            }
            Kept::Shared { store, connection } => {
                store.change_rate_window(connection, target, change).await
            }
        }
    }

    /// Waits until `target` may send one more request, or says why it may not.
    pub async fn acquire(&self, target: &str, limit: Option<&RateLimit>) -> Result<(), Refused> {
        let Some(limit) = limit else { return Ok(()) };
        let mut tries = 0;
        let wait = loop {
            let reserved = self
                .with_window(target, |w, now| w.reserve(now, today(), limit))
                .await;
            match reserved {
                Ok((Ok(at), now)) => break Duration::from_millis((at - now).max(0) as u64),
                Ok((Err(DaySpent), _)) => return Err(Refused::DaySpent(until_next_utc_day())),
                // The shared window cannot be read: never send unreserved
                // (other replicas may have spent the window); try again
                // after a moment, then give the call back to be retried.
                Err(e) => {
                    tries += 1;
                    tracing::warn!(target, error = %e, tries, "cannot reserve a send in the shared rate-limit window");
                    if tries >= SHARED_TRIES {
                        return Err(Refused::Unreadable(e.to_string()));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// The target said its window is spent: nothing more until it has passed.
    pub async fn exhausted(&self, target: &str, window: Duration) {
        let ms = window.as_millis() as i64;
        if let Err(e) = self
            .with_window(target, |w, now| w.exhausted(now + ms))
            .await
        {
            tracing::warn!(target, error = %e, "cannot record a spent rate-limit window");
        }
    }

    /// The target said the day's budget is spent.
    pub async fn day_spent(&self, target: &str) {
        if let Err(e) = self.with_window(target, |w, _| w.spend_day(today())).await {
            tracing::warn!(target, error = %e, "cannot record a spent daily budget");
        }
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
        let Err(Refused::DaySpent(until)) = limiter.acquire("ghl", Some(&limit)).await else {
            panic!("the budget is spent");
        };
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
