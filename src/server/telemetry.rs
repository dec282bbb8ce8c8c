//! Delivery counters shared by the worker, the executor and `/metrics`.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Delivery {
    outcomes: BTreeMap<&'static str, u64>,
    /// target → (status class, count)
    requests: BTreeMap<(String, String), u64>,
    /// target → (total seconds, count)
    latency: BTreeMap<String, (f64, u64)>,
    /// target calls made for delivered or failed events: (calls, events)
    calls_per_event: (u64, u64),
}

static DELIVERY: LazyLock<Mutex<Delivery>> = LazyLock::new(Default::default);

/// Counts one processed event by outcome (`delivered`, `retrying`, `dead`) and its target calls.
pub fn event_processed(outcome: &'static str, calls: u64) {
    if let Ok(mut d) = DELIVERY.lock() {
        *d.outcomes.entry(outcome).or_default() += 1;
        d.calls_per_event.0 += calls;
        d.calls_per_event.1 += 1;
    }
}

/// Counts one call to a target with its answer's status (`None`: no answer).
pub fn target_call(target: &str, status: Option<u16>, took: Duration) {
    if let Ok(mut d) = DELIVERY.lock() {
        let class = match status {
            Some(s) => format!("{}xx", s / 100),
            None => "error".to_string(),
        };
        *d.requests.entry((target.to_string(), class)).or_default() += 1;
        let entry = d.latency.entry(target.to_string()).or_default();
        entry.0 += took.as_secs_f64();
        entry.1 += 1;
    }
}

/// The counters in Prometheus text format.
pub fn render(out: &mut String) {
    let Ok(d) = DELIVERY.lock() else { return };
    out.push_str("# TYPE mapper_deliveries_total counter\n");
    for (outcome, n) in &d.outcomes {
        out.push_str(&format!(
            "mapper_deliveries_total{{outcome=\"{outcome}\"}} {n}\n"
        ));
    }
    out.push_str("# TYPE mapper_target_requests_total counter\n");
    for ((target, class), n) in &d.requests {
        out.push_str(&format!(
            "mapper_target_requests_total{{target=\"{target}\",status=\"{class}\"}} {n}\n"
        ));
    }
    out.push_str("# TYPE mapper_target_request_seconds summary\n");
    for (target, (sum, count)) in &d.latency {
        out.push_str(&format!(
            "mapper_target_request_seconds_sum{{target=\"{target}\"}} {sum:.6}\n"
        ));
        out.push_str(&format!(
            "mapper_target_request_seconds_count{{target=\"{target}\"}} {count}\n"
        ));
    }
    out.push_str("# TYPE mapper_target_calls_per_event summary\n");
    out.push_str(&format!(
        "mapper_target_calls_per_event_sum {}\n",
        d.calls_per_event.0
    ));
    out.push_str(&format!(
        "mapper_target_calls_per_event_count {}\n",
        d.calls_per_event.1
    ));
}
