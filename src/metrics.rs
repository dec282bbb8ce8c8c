//! What `GET /metrics` shows, as a handle: one [`Metrics`] per running app,
//! created by `App::start` and handed to the receiver, the worker and the
//! executor. Two apps in one process (tests, benches) count apart.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client): a
//! registry is a value, not a process-wide recorder, which is what lets the
//! handle be passed rather than reached for.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BySource {
    source: String,
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rejection {
    source: String,
    reason: String,
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByOutcome {
    outcome: String,
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByConnection {
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetStatus {
    target: String,
    status: String,
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByResult {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoredEvents {
    source: String,
    event: String,
    state: String,
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldWrites {
    target: String,
    op: String,
    state: String,
    connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByWriter {
    writer: String,
}

type Seconds = Gauge<f64, std::sync::atomic::AtomicU64>;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn ack_buckets() -> Histogram {
    // 0.5 ms to about 4 s: an acknowledgement waits for one group commit.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

fn lag_buckets() -> Histogram {
    // 10 ms to about 3 h: retries back off up to 10 minutes, 8 times.
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

fn calls_buckets() -> Histogram {
    Histogram::new([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 13.0, 21.0])
}

fn request_buckets() -> Histogram {
    // 5 ms to about 20 s, a target's default timeout.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

struct Inner {
    registry: Registry,
    received: Family<BySource, Counter>,
    accepted: Family<BySource, Counter>,
    duplicate: Family<BySource, Counter>,
    rejected: Family<Rejection, Counter>,
    ack_seconds: Histograms<BySource>,
    deliveries: Family<ByOutcome, Counter>,
    delivery_lag: Histograms<ByConnection>,
    target_requests: Family<TargetStatus, Counter>,
    target_seconds: Histograms<TargetStatus>,
    calls_per_event: Histograms<ByConnection>,
    reloads: Family<ByResult, Counter>,
    last_reload_ok: Gauge,
    events: Family<StoredEvents, Gauge>,
    held_writes: Family<HeldWrites, Gauge>,
    held_merged: Family<HeldWrites, Gauge>,
    writer_busy: Family<ByWriter, Seconds>,
    /// Scrapes refresh the gauges read from the database, then encode: one at a time.
    scrape: tokio::sync::Mutex<()>,
}

/// The app's counters, gauges and histograms; cheap to clone (one shared registry).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A fresh registry with every metric `/metrics` documents.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let received = Family::<BySource, Counter>::default();
        registry.register(
            "mapper_webhooks_received",
            "Webhooks received, per source",
            received.clone(),
        );
        let accepted = Family::<BySource, Counter>::default();
        registry.register(
            "mapper_webhooks_accepted",
            "Webhooks stored as new events, per source",
            accepted.clone(),
        );
        let duplicate = Family::<BySource, Counter>::default();
        registry.register(
            "mapper_webhooks_duplicate",
            "Webhooks recognised as an event already stored, per source",
            duplicate.clone(),
        );
        let rejected = Family::<Rejection, Counter>::default();
        registry.register(
            "mapper_webhooks_rejected",
            "Webhooks refused, per source and reason",
            rejected.clone(),
        );
        let ack_seconds: Histograms<BySource> = Family::new_with_constructor(ack_buckets);
        registry.register(
            "mapper_webhook_ack_seconds",
            "Time from a webhook's arrival to its acknowledgement, per source",
            ack_seconds.clone(),
        );
        let deliveries = Family::<ByOutcome, Counter>::default();
        registry.register(
            "mapper_deliveries",
            "Processed events (and held writes sent), by outcome",
            deliveries.clone(),
        );
        let delivery_lag: Histograms<ByConnection> = Family::new_with_constructor(lag_buckets);
        registry.register(
            "mapper_delivery_lag_seconds",
            "Time from storing an event to its delivery, for events this process stored",
            delivery_lag.clone(),
        );
        let target_requests = Family::<TargetStatus, Counter>::default();
        registry.register(
            "mapper_target_requests",
            "Requests to targets, by target and status class (error: no answer)",
            target_requests.clone(),
        );
        let target_seconds: Histograms<TargetStatus> =
            Family::new_with_constructor(request_buckets);
        registry.register(
            "mapper_target_request_seconds",
            "Duration of one request to a target, by target and status class",
            target_seconds.clone(),
        );
        let calls_per_event: Histograms<ByConnection> = Family::new_with_constructor(calls_buckets);
        registry.register(
            "mapper_target_calls_per_event",
            "Target calls made for one processed event",
            calls_per_event.clone(),
        );
        // The default connection's series are shown from the start, empty.
        let default = ByConnection {
            connection: crate::store::DEFAULT_CONNECTION.to_string(),
        };
        let _ = delivery_lag.get_or_create(&default);
        let _ = calls_per_event.get_or_create(&default);
        let reloads = Family::<ByResult, Counter>::default();
        registry.register(
            "mapper_config_reloads",
            "Reloads of the mapping folder, by result",
            reloads.clone(),
        );
        // Both results are shown from the start, at 0.
        for result in ["ok", "failed"] {
            let _ = reloads.get_or_create(&ByResult {
                result: result.into(),
            });
        }
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        registry.register(
            "mapper_config_last_reload_ok",
            "1 when the latest reload of the mapping folder was applied (or none was tried)",
            last_reload_ok.clone(),
        );
        let events = Family::<StoredEvents, Gauge>::default();
        registry.register(
            "mapper_events",
            "Stored events per source, event and state (the queue depth)",
            events.clone(),
        );
        let held_writes = Family::<HeldWrites, Gauge>::default();
        registry.register(
            "mapper_held_writes",
            "Held (coalesced) writes per target, operation and state",
            held_writes.clone(),
        );
        let held_merged = Family::<HeldWrites, Gauge>::default();
        registry.register(
            "mapper_held_writes_merged",
            "Writes merged into the held writes, per target, operation and state",
            held_merged.clone(),
        );
        let writer_busy = Family::<ByWriter, Seconds>::default();
        registry.register(
            "mapper_sqlite_writer_busy_seconds",
            "Seconds this process's SQLite writers held the one write turn since it started, by writer",
            writer_busy.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            received,
            accepted,
            duplicate,
            rejected,
            ack_seconds,
            deliveries,
            delivery_lag,
            target_requests,
            target_seconds,
            calls_per_event,
            reloads,
            last_reload_ok,
            events,
            held_writes,
            held_merged,
            writer_busy,
            scrape: tokio::sync::Mutex::new(()),
        }))
    }

    /// A webhook arrived for a known source, for `connection` (the one its
    /// path names, or `default`; a GHL webhook, routed by its body, counts
    /// under the connection of its location once it is read).
    pub fn webhook_received(&self, source: &str, connection: &str) {
        self.0
            .received
            .get_or_create(&by_source(source, connection))
            .inc();
    }

    /// A webhook was refused; `reason` is the error code it was answered with.
    pub fn webhook_rejected(&self, source: &str, connection: &str, reason: &str) {
        self.0
            .rejected
            .get_or_create(&Rejection {
                source: source.to_string(),
                reason: reason.to_string(),
                connection: connection.to_string(),
            })
            .inc();
    }

    /// A webhook was stored and acknowledged.
    pub fn webhook_accepted(&self, source: &str, connection: &str) {
        self.0
            .accepted
            .get_or_create(&by_source(source, connection))
            .inc();
    }

    /// A webhook was an event already stored.
    pub fn webhook_duplicate(&self, source: &str, connection: &str) {
        self.0
            .duplicate
            .get_or_create(&by_source(source, connection))
            .inc();
    }

    /// How long answering a webhook of `source` took, whatever the answer.
    pub fn webhook_answered(&self, source: &str, connection: &str, took: Duration) {
        self.0
            .ack_seconds
            .get_or_create(&by_source(source, connection))
            .observe(took.as_secs_f64());
    }

    /// One event (or held write) of `connection` processed, by outcome
    /// (`delivered`, `retrying`, `dead`, …), with the target calls it made
    /// and, for an event, when the inbox stored it (the lag from storing to
    /// delivery).
    pub fn event_processed(
        &self,
        connection: &str,
        outcome: &str,
        calls: u64,
        received_at: Option<i64>,
    ) {
        self.0
            .deliveries
            .get_or_create(&ByOutcome {
                outcome: outcome.to_string(),
                connection: connection.to_string(),
            })
            .inc();
        let by_connection = ByConnection {
            connection: connection.to_string(),
        };
        self.0
            .calls_per_event
            .get_or_create(&by_connection)
            .observe(calls as f64);
        // Only a delivery ends the lag: stored → delivered, whichever
        // process stored it and however many attempts it took.
        if let Some(at) = received_at
            && outcome == "delivered"
        {
            let lag_ms = (crate::store::now_ms() - at).max(0);
            self.0
                .delivery_lag
                .get_or_create(&by_connection)
                .observe(lag_ms as f64 / 1000.0);
        }
    }

    /// One request of `connection` to `target`: its answer's status
    /// (`None`: no answer) and duration.
    pub fn target_call(&self, connection: &str, target: &str, status: Option<u16>, took: Duration) {
        let labels = TargetStatus {
            target: target.to_string(),
            status: match status {
                Some(s) => format!("{}xx", s / 100),
                None => "error".to_string(),
            },
            connection: connection.to_string(),
        };
        self.0.target_requests.get_or_create(&labels).inc();
        self.0
            .target_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The mapping folder was reloaded (`ok`) or a changed set refused.
    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.0
            .reloads
            .get_or_create(&ByResult {
                result: result.into(),
            })
            .inc();
        self.0.last_reload_ok.set(i64::from(ok));
    }

    /// The registry in the OpenMetrics text format, after reading the
    /// gauges that live in the database from `store`.
    pub async fn render(&self, store: &crate::store::Store) -> String {
        let _one_at_a_time = self.0.scrape.lock().await;
        if let Ok(counts) = store.counts_for(None).await {
            self.0.events.clear();
            for c in counts {
                self.0
                    .events
                    .get_or_create(&StoredEvents {
                        source: c.source,
                        event: c.event_type,
                        state: c.state,
                        connection: c.connection,
                    })
                    .set(c.count);
            }
        }
        if let Ok(held) = store.held_counts().await {
            self.0.held_writes.clear();
            self.0.held_merged.clear();
            for (connection, target, op, state, rows, writes) in held {
                let labels = HeldWrites {
                    target,
                    op,
                    state,
                    connection,
                };
                self.0.held_writes.get_or_create(&labels).set(rows);
                self.0.held_merged.get_or_create(&labels).set(writes);
            }
        }
        if !store.is_postgres() {
            for (writer, held) in store.write_gate_busy_by() {
                self.0
                    .writer_busy
                    .get_or_create(&ByWriter {
                        writer: writer.name().into(),
                    })
                    .set(held.as_secs_f64());
            }
        }
        self.encode()
    }

    /// The registry as it stands, in the OpenMetrics text format.
    fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a label that cannot be encoded
        // leaves the text cut short rather than the scrape refused.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}

fn by_source(source: &str, connection: &str) -> BySource {
    BySource {
        source: source.to_string(),
        connection: connection.to_string(),
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn documented_names_are_there_from_the_start() {
        let text = Metrics::new().encode();
        assert!(line(&text, "mapper_config_reloads_total{result=\"ok\"} 0").is_some());
        assert!(line(&text, "mapper_config_reloads_total{result=\"failed\"} 0").is_some());
        assert!(line(&text, "mapper_config_last_reload_ok 1").is_some());
        assert!(
            line(
                &text,
                "mapper_target_calls_per_event_count{connection=\"default\"} 0"
            )
            .is_some()
        );
        assert!(
            line(
                &text,
                "mapper_delivery_lag_seconds_count{connection=\"default\"} 0"
            )
            .is_some()
        );
    }

    #[test]
    fn a_target_call_is_counted_and_timed_by_status_class() {
        let m = Metrics::new();
        m.target_call("default", "ghl", Some(201), Duration::from_millis(30));
        m.target_call("default", "ghl", None, Duration::from_secs(20));
        m.target_call("acme", "ghl", Some(200), Duration::from_millis(30));
        let text = m.encode();
        assert!(
            line(
                &text,
                "mapper_target_requests_total{target=\"ghl\",status=\"2xx\",connection=\"default\"} 1"
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "mapper_target_request_seconds_count{target=\"ghl\",status=\"error\",connection=\"default\"} 1"
            )
            .is_some(),
            "{text}"
        );
        // 30 ms falls in the 40 ms bucket (5 ms doubling), not in the 20 ms one.
        assert!(
            line(
                &text,
                "mapper_target_request_seconds_bucket{le=\"0.02\",target=\"ghl\",status=\"2xx\",connection=\"default\"} 0"
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "mapper_target_request_seconds_bucket{le=\"0.04\",target=\"ghl\",status=\"2xx\",connection=\"default\"} 1"
            )
            .is_some(),
            "{text}"
        );
    }

    #[test]
    fn delivery_lag_counts_delivered_events_from_when_they_were_stored() {
        let m = Metrics::new();
        let stored = crate::store::now_ms() - 1_500;
        m.webhook_accepted("stickycards", "default");
        m.event_processed("default", "retrying", 1, Some(stored));
        m.event_processed("default", "delivered", 2, Some(stored));
        m.event_processed("default", "dead", 1, Some(stored));
        // A held write has no stored event: no lag.
        m.event_processed("default", "delivered", 1, None);
        m.event_processed("default", "delivered", 1, Some(stored));
        m.event_processed("acme", "delivered", 1, Some(stored));
        let text = m.encode();
        assert!(
            line(
                &text,
                "mapper_delivery_lag_seconds_count{connection=\"default\"} 2"
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "mapper_delivery_lag_seconds_count{connection=\"acme\"} 1"
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "mapper_deliveries_total{outcome=\"delivered\",connection=\"default\"} 3"
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "mapper_target_calls_per_event_count{connection=\"default\"} 5"
            )
            .is_some(),
            "{text}"
        );
    }

    #[test]
    fn two_handles_count_apart_and_clones_count_together() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.clone().webhook_received("ghl", "default");
        a.webhook_received("ghl", "default");
        assert!(
            line(
                &a.encode(),
                "mapper_webhooks_received_total{source=\"ghl\",connection=\"default\"} 2"
            )
            .is_some()
        );
        assert!(line(&b.encode(), "mapper_webhooks_received_total{").is_none());
    }
}
