//! The webhook receiver: verify, decode, identify, store durably, then acknowledge.
//!
//! A webhook is acknowledged only once it is committed to the inbox; nothing
//! is processed in the request. What cannot be stored is answered so that the
//! platform retries (GHL retries only on 429).

pub mod telemetry;
pub mod verify;

use crate::engine::decode::{self, DecodeError};
use crate::engine::program::Program;
use crate::store::{EventState, Inbox, Inserted, NewEvent, Store};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use verify::Verifier;

/// A checked mapping set with its sources' verifiers: swapped as a whole on reload.
pub struct Loaded {
    pub program: Arc<Program>,
    pub verifiers: HashMap<String, Verifier>,
}

/// The outcome of the latest reload of the mapping folder.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub ok: u64,
    pub failed: u64,
    /// The diagnostics of the last refused set, while it is the latest attempt.
    pub last_error: Option<String>,
}

/// Everything the handlers share.
pub struct AppState {
    pub loaded: arc_swap::ArcSwap<Loaded>,
    pub store: Store,
    pub inbox: Inbox,
    pub connection: String,
    pub metrics: Metrics,
    pub reload: std::sync::Mutex<ReloadStatus>,
}

impl AppState {
    /// State serving `loaded`.
    pub fn new(loaded: Loaded, store: Store, inbox: Inbox, connection: String) -> AppState {
        AppState {
            loaded: arc_swap::ArcSwap::from_pointee(loaded),
            store,
            inbox,
            connection,
            metrics: Metrics::default(),
            reload: std::sync::Mutex::new(ReloadStatus::default()),
        }
    }
}

/// Counters exposed on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    received: Counters,
    accepted: Counters,
    duplicate: Counters,
    rejected: Counters,
}

#[derive(Default)]
struct Counters(std::sync::Mutex<HashMap<(String, String), u64>>);

impl Counters {
    fn add(&self, source: &str, reason: &str) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry((source.to_string(), reason.to_string()))
                .or_default() += 1;
        }
    }
    fn render(&self, name: &str, label: &str, out: &mut String) {
        if let Ok(map) = self.0.lock() {
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort();
            for ((source, extra), n) in rows {
                if label.is_empty() {
                    out.push_str(&format!("{name}{{source=\"{source}\"}} {n}\n"));
                } else {
                    out.push_str(&format!(
                        "{name}{{source=\"{source}\",{label}=\"{extra}\"}} {n}\n"
                    ));
                }
            }
        }
    }
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Resolves every source's verification secrets; the error names each missing variable.
pub fn verifiers(
    program: &Program,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Verifier>, Vec<String>> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for (name, source) in &program.sources {
        match Verifier::new(&source.verify, env) {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(e) => missing.push(format!("source `{name}`: {e}")),
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// The HTTP routes.
pub fn router(state: Arc<AppState>) -> Router {
    let largest = state
        .loaded
        .load()
        .program
        .sources
        .values()
        .map(|s| s.body.max_bytes.unwrap_or(decode::DEFAULT_MAX_BYTES))
        .max()
        .unwrap_or(decode::DEFAULT_MAX_BYTES);
    Router::new()
        .route("/webhooks/{source}", post(receive))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Per-source limits are checked in the handler; this caps what is read at all.
        .layer(DefaultBodyLimit::max(largest as usize + 1))
        .with_state(state)
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn receive(
    State(state): State<Arc<AppState>>,
    Path(source_name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    // This request finishes with the set it started with, even if a reload lands meanwhile.
    let loaded = state.loaded.load_full();
    let program = &loaded.program;
    let Some(source) = program.sources.get(&source_name) else {
        let known: Vec<&String> = program.sources.keys().collect();
        return problem(
            StatusCode::NOT_FOUND,
            format!("unknown source `{source_name}`; sources: {known:?}"),
        );
    };
    state.metrics.received.add(&source_name, "");
    let reject = |status: StatusCode, reason: &str, message: String| {
        state.metrics.rejected.add(&source_name, reason);
        problem(status, message)
    };
    let limit = source.body.max_bytes.unwrap_or(decode::DEFAULT_MAX_BYTES);
    if body.len() as u64 > limit {
        return reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "body is {} bytes, over the limit of {limit} bytes for source `{source_name}`",
                body.len()
            ),
        );
    }
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let json_like = media == "application/json" || media.ends_with("+json");
        let allowed = match source.body.format {
            crate::config::model::BodyFormat::Json => json_like || media == "text/plain",
            crate::config::model::BodyFormat::Form => {
                json_like || media == "application/x-www-form-urlencoded"
            }
        };
        if !allowed {
            return reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content_type",
                format!(
                    "content type `{media}` is not what source `{source_name}` sends ({:?})",
                    source.body.format
                ),
            );
        }
    }
    let text = std::str::from_utf8(&body).unwrap_or("");
    let form_field = |name: &str| decode::form_field(text, name);
    if let Some(v) = loaded.verifiers.get(&source_name) {
        let now = chrono::Utc::now().timestamp();
        if let Err(refused) = v.verify(&headers, query.as_deref(), &body, now, &form_field) {
            return reject(StatusCode::UNAUTHORIZED, "signature", refused.0);
        }
    }
    let payload = match decode::decode(&body, &source.body) {
        Ok(p) => p,
        Err(e @ DecodeError::TooLarge { .. }) => {
            return reject(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string());
        }
        Err(e) => return reject(StatusCode::BAD_REQUEST, "malformed", e.to_string()),
    };
    let event = match program.identify(&source_name, &payload) {
        Ok(e) => e,
        Err(e) => return reject(StatusCode::BAD_REQUEST, "no_event_type", e.to_string()),
    };
    let mapped = program
        .by_event
        .contains_key(&(source_name.clone(), event.event_type.clone()));
    let occurred_at = event
        .occurred_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    let kept_headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            n == "content-type"
                || n == "user-agent"
                || n.starts_with("webhook-")
                || n.starts_with("x-")
        })
        .filter(|(name, _)| !name.as_str().contains("token"))
        .filter_map(|(name, value)| Some((name.to_string(), json!(value.to_str().ok()?))))
        .collect();
    let new_event = NewEvent {
        connection: state.connection.clone(),
        source: source_name.clone(),
        event_type: event.event_type.clone(),
        event_id: event.id.clone(),
        dedup_key: event.dedup_key.clone(),
        occurred_at,
        // Sources that describe the same records (GHL's contact webhooks and
        // its workflow webhooks) share one delivery order per customer.
        customer_key: event.customer.as_deref().map(|id| source.ordering_key(id)),
        headers: serde_json::Value::Object(kept_headers),
        body: body.to_vec(),
        state: if mapped {
            EventState::Received
        } else {
            EventState::Unmapped
        },
    };
    match state.inbox.store(new_event).await {
        Ok(Inserted::New(id)) => {
            state.metrics.accepted.add(&source_name, "");
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "delivery_id": id,
                    "status": if mapped { "accepted" } else { "unmapped" },
                    "event": event.event_type,
                })),
            )
                .into_response()
        }
        Ok(Inserted::Duplicate(id)) => {
            state.metrics.duplicate.add(&source_name, "");
            (
                StatusCode::OK,
                Json(
                    json!({ "delivery_id": id, "status": "duplicate", "event": event.event_type }),
                ),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(source = %source_name, error = %e, "could not store a webhook");
            // GHL retries only on 429; the others retry on any non-2xx.
            let status = if source.verify.method == crate::config::model::VerifyMethod::Ghl {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut response = reject(
                status,
                "store_failed",
                format!("the event could not be stored; retry later ({e})"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            response
        }
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let reload = state.reload.lock().map(|r| r.clone()).unwrap_or_default();
    if state.store.ping().await {
        (
            StatusCode::OK,
            Json(json!({
                "ready": true,
                "mappings": state.loaded.load().program.mappings.len(),
                "last_reload": if reload.last_error.is_some() { "failed" } else { "ok" },
                "reload_error": reload.last_error,
            })),
        )
            .into_response()
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database does not answer",
        )
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    out.push_str("# TYPE mapper_webhooks_received_total counter\n");
    state
        .metrics
        .received
        .render("mapper_webhooks_received_total", "", &mut out);
    out.push_str("# TYPE mapper_webhooks_accepted_total counter\n");
    state
        .metrics
        .accepted
        .render("mapper_webhooks_accepted_total", "", &mut out);
    out.push_str("# TYPE mapper_webhooks_duplicate_total counter\n");
    state
        .metrics
        .duplicate
        .render("mapper_webhooks_duplicate_total", "", &mut out);
    out.push_str("# TYPE mapper_webhooks_rejected_total counter\n");
    state
        .metrics
        .rejected
        .render("mapper_webhooks_rejected_total", "reason", &mut out);
    telemetry::render(&mut out);
    if let Ok(reload) = state.reload.lock() {
        out.push_str("# TYPE mapper_config_reloads_total counter\n");
        out.push_str(&format!(
            "mapper_config_reloads_total{{result=\"ok\"}} {}\n",
            reload.ok
        ));
        out.push_str(&format!(
            "mapper_config_reloads_total{{result=\"failed\"}} {}\n",
            reload.failed
        ));
        out.push_str("# TYPE mapper_config_last_reload_ok gauge\n");
        out.push_str(&format!(
            "mapper_config_last_reload_ok {}\n",
            u8::from(reload.last_error.is_none())
        ));
    }
    if let Ok(counts) = state.store.counts().await {
        out.push_str("# TYPE mapper_events gauge\n");
        for c in counts {
            out.push_str(&format!(
                "mapper_events{{source=\"{}\",event=\"{}\",state=\"{}\"}} {}\n",
                c.source, c.event_type, c.state, c.count
            ));
        }
    }
    if let Ok(held) = state.store.held_counts().await {
        out.push_str("# TYPE mapper_held_writes gauge\n");
        for (target, op, st, rows, _) in &held {
            out.push_str(&format!(
                "mapper_held_writes{{target=\"{target}\",op=\"{op}\",state=\"{st}\"}} {rows}\n"
            ));
        }
        out.push_str("# TYPE mapper_held_writes_merged gauge\n");
        for (target, op, st, _, writes) in &held {
            out.push_str(&format!(
                "mapper_held_writes_merged{{target=\"{target}\",op=\"{op}\",state=\"{st}\"}} {writes}\n"
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
