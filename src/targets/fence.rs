//! A delivery's right to call targets: the lease of its event's claim, as
//! this process last renewed it.
//!
//! A process that stalls (a long pause, a database it cannot reach to
//! renew) may wake after its lease ended and another worker took the event
//! over. Calls made then would be made twice. Each call checks, once the
//! rate limiter let it go, that the lease still has [`MARGIN_MS`] to run;
//! otherwise it is not sent, and the journal of the delivery is refused by
//! the store if the event is indeed someone else's now
//! (`StoreError::LeaseLost`).
//!
//! The lease travels as a task-local value around one delivery
//! ([`Fence::guard`]) rather than through every function between the
//! worker and the HTTP client: a call made outside a delivery (a lookup
//! listing at start, the CLI) has no lease and is never fenced.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// How long a lease must still run for a call to leave: the time between
/// the check and the request reaching the target, and the difference
/// between replicas' clocks, stay well below it.
pub const MARGIN_MS: i64 = 2_000;

tokio::task_local! {
    static CURRENT: Fence;
}

/// The end of one claim's lease (epoch ms), shared by the worker that
/// renews it and the delivery that calls targets under it; 0 once lost.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<AtomicI64>);

impl Fence {
    /// A lease that ends at `until` unless renewed.
    pub fn until(until: i64) -> Fence {
        Fence(Arc::new(AtomicI64::new(until)))
    }

    /// The lease was renewed to `until`.
    pub fn renewed(&self, until: i64) {
        self.0.fetch_max(until, Ordering::Relaxed);
    }

    /// The lease is gone (the event was taken over or finished elsewhere).
    pub fn lost(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Whether a call may still leave at `now`.
    pub fn holds(&self, now: i64) -> bool {
        self.0.load(Ordering::Relaxed) - MARGIN_MS > now
    }

    /// Runs `delivery` with this lease guarding every call it makes.
    pub async fn guard<F: Future>(self, delivery: F) -> F::Output {
        CURRENT.scope(self, delivery).await
    }
}

/// Applies a renewal to `until` to the leases asked for, each with its
/// fence: an extended one runs on, a busy one (still this process's, not
/// extended this time) keeps its end, any other is lost.
pub fn apply_renewal<'a>(
    asked: impl Iterator<Item = (i64, &'a Fence)>,
    extended: &[i64],
    busy: &[i64],
    until: i64,
) {
    for (id, fence) in asked {
        if extended.contains(&id) {
            fence.renewed(until);
        } else if !busy.contains(&id) {
            fence.lost();
        }
    }
}

/// Why a call may not leave now, when it runs under a lease that ended
/// (or is about to); `None` outside a delivery or with time left.
pub fn refusal(now: i64) -> Option<String> {
    CURRENT
        .try_with(|fence| {
            (!fence.holds(now)).then(|| {
                "the event's claim lapsed before this call could leave (this process stalled \
                 or could not renew it); another worker may be delivering it"
                    .to_string()
            })
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_leave_only_while_the_lease_has_time_to_run() {
        let now = 1_000_000;
        assert_eq!(refusal(now), None, "outside a delivery nothing is fenced");
        let fence = Fence::until(now + 10_000);
        let held = fence.clone();
        fence
            .guard(async move {
                assert_eq!(refusal(now), None);
                assert!(refusal(now + 8_500).is_some(), "within the margin");
                held.renewed(now + 20_000);
                assert_eq!(refusal(now + 8_500), None, "renewed");
                held.renewed(now + 5_000);
                assert_eq!(
                    refusal(now + 8_500),
                    None,
                    "a late renewal never shortens it"
                );
                held.lost();
                assert!(refusal(now).is_some(), "taken over");
            })
            .await;
    }

    #[test]
    fn a_renewal_extends_keeps_busy_ones_and_loses_the_rest() {
        let (a, b, c) = (
            Fence::until(1_000),
            Fence::until(1_000),
            Fence::until(1_000),
        );
        apply_renewal([(1, &a), (2, &b), (3, &c)].into_iter(), &[1], &[2], 50_000);
        assert!(a.holds(40_000), "extended");
        assert!(b.holds(-1_500) && !b.holds(0), "busy: its end unchanged");
        assert!(!c.holds(-1_500), "lost");
    }
}
