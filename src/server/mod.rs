//! The webhook receiver: verify, decode, identify, store durably, then acknowledge.
//!
//! A webhook is acknowledged only once it is committed to the inbox; nothing
//! is processed in the request. What cannot be stored is answered so that the
//! platform retries (GHL retries only on 429).

pub mod error;
pub mod oauth;
pub mod ui;
pub mod verify;

pub use error::ReceiveError;

use crate::engine::decode;
use crate::metrics::Metrics;
use crate::program::Program;
use crate::store::{EventState, Inbox, Inserted, NewEvent, Store};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use verify::Verifier;

/// A checked mapping set with its sources' verifiers: swapped as a whole on reload.
pub struct Loaded {
    pub program: Arc<Program>,
    pub verifiers: HashMap<String, Verifier>,
    /// The stored connections' verifiers, by connection then source; a
    /// source whose secret a connection lacks is that reason instead.
    pub tenants: HashMap<String, HashMap<String, Result<Verifier, String>>>,
    /// For sources with `route:`: variable → value → the connection whose
    /// variable has that value (`default` included).
    pub routes: HashMap<String, HashMap<String, String>>,
}

/// Each stored connection's verifiers: `env_of` gives a connection's
/// variables. A source a connection cannot verify is kept with the reason,
/// so its other sources still receive.
pub fn tenant_verifiers<'a>(
    program: &Program,
    connections: impl IntoIterator<Item = (&'a str, &'a dyn Fn(&str) -> Option<String>)>,
) -> HashMap<String, HashMap<String, Result<Verifier, String>>> {
    connections
        .into_iter()
        .map(|(connection, env)| {
            let by_source = program
                .sources
                .iter()
                .map(|(name, source)| {
                    (
                        name.clone(),
                        Verifier::new(&source.verify, env).map_err(|e| e.to_string()),
                    )
                })
                .collect();
            (connection.to_string(), by_source)
        })
        .collect()
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
    /// The inbox's latest failure to store a webhook, and when; cleared by
    /// the next webhook stored (see [`readyz`]).
    pub inbox_failure: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// Whether `inbox_failure` holds one: a webhook stored while none is
    /// recorded (nearly always) reads this flag instead of taking the lock.
    inbox_failed: std::sync::atomic::AtomicBool,
}

/// How long `/readyz` answers 503 after the inbox failed to store a
/// webhook, unless one is stored meanwhile: long enough for a load balancer
/// to send the traffic to another replica, short enough that this one is
/// tried again soon (a disk freed, a database back) without a restart.
pub const INBOX_FAILURE_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

impl AppState {
    /// State serving `loaded`, with metrics of its own.
    pub fn new(loaded: Loaded, store: Store, inbox: Inbox, connection: String) -> AppState {
        AppState {
            loaded: arc_swap::ArcSwap::from_pointee(loaded),
            store,
            inbox,
            connection,
            metrics: Metrics::new(),
            reload: std::sync::Mutex::new(ReloadStatus::default()),
            inbox_failure: std::sync::Mutex::new(None),
            inbox_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Remembers how the latest attempt to store a webhook went.
    fn inbox_went(&self, failure: Option<&str>) {
        use std::sync::atomic::Ordering;
        if failure.is_none() && !self.inbox_failed.load(Ordering::Relaxed) {
            return;
        }
        self.inbox_failed
            .store(failure.is_some(), Ordering::Relaxed);
        if let Ok(mut latest) = self.inbox_failure.lock() {
            match failure {
                Some(reason) => *latest = Some((std::time::Instant::now(), reason.to_string())),
                None if latest.is_some() => *latest = None,
                None => {}
            }
        }
    }

    /// Why webhooks are refused now, if the inbox failed lately.
    fn inbox_refusing(&self) -> Option<String> {
        let latest = self.inbox_failure.lock().ok()?;
        latest
            .as_ref()
            .filter(|(at, _)| at.elapsed() < INBOX_FAILURE_HOLD)
            .map(|(_, reason)| reason.clone())
    }

    /// This state, counting in `metrics` (the app's handle).
    pub fn with_metrics(mut self, metrics: Metrics) -> AppState {
        self.metrics = metrics;
        self
    }
}

/// The sources whose verification cannot be set up, each with why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(|(source, e)| format!("source `{source}`: {e}")).collect::<Vec<_>>().join("; "))]
pub struct MissingSecrets(pub Vec<(String, verify::SecretError)>);

/// Resolves every source's verification secrets; the error names each missing variable.
pub fn verifiers(
    program: &Program,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Verifier>, MissingSecrets> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for (name, source) in &program.sources {
        match Verifier::new(&source.verify, env) {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(e) => missing.push((name.clone(), e)),
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(MissingSecrets(missing))
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
        .route("/webhooks/{source}/{connection}", post(receive_for))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // Per-source limits are checked in the handler; this caps what is read at all.
        .layer(DefaultBodyLimit::max(largest as usize + 1))
        .with_state(state)
}

/// A webhook of the `default` connection (the environment's).
async fn receive(
    State(state): State<Arc<AppState>>,
    Path(source_name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    receive_as(state, source_name, None, query, headers, body).await
}

/// A webhook of a stored connection, verified with its secrets.
async fn receive_for(
    State(state): State<Arc<AppState>>,
    Path((source_name, connection)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    receive_as(state, source_name, Some(connection), query, headers, body).await
}

async fn receive_as(
    state: Arc<AppState>,
    source_name: String,
    connection: Option<String>,
    query: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    // This request finishes with the set it started with, even if a reload lands meanwhile.
    let loaded = state.loaded.load_full();
    let verifier = match &connection {
        None => Ok(loaded.verifiers.get(&source_name)),
        Some(name) if name == crate::store::DEFAULT_CONNECTION => {
            Ok(loaded.verifiers.get(&source_name))
        }
        Some(name) => match loaded.tenants.get(name) {
            None => Err(ReceiveError::UnknownConnection { name: name.clone() }),
            Some(by_source) => match by_source.get(&source_name) {
                None => Ok(None),
                Some(Ok(verifier)) => Ok(Some(verifier)),
                Some(Err(reason)) => Err(ReceiveError::ConnectionNotReady {
                    connection: name.clone(),
                    source_name: source_name.clone(),
                    reason: reason.clone(),
                }),
            },
        },
    };
    let verifier = match verifier {
        Ok(verifier) => verifier,
        Err(refused) => return refused.into_response(),
    };
    // A source that routes itself (GHL's webhooks name their location)
    // finds its connection in its body, unless the path named one.
    let routed = connection.is_none();
    let connection = connection.unwrap_or_else(|| state.connection.clone());
    let Some(source) = loaded.program.sources.get(&source_name) else {
        // Not counted: the label would be whatever a stranger puts in the path.
        return ReceiveError::UnknownSource {
            name: source_name,
            known: loaded.program.sources.keys().cloned().collect(),
        }
        .into_response();
    };
    let body = match body {
        Ok(body) => body,
        // Longer than the router's cap (the largest source's limit): the
        // same JSON refusal as a body over this source's own limit.
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let refused = ReceiveError::TooLarge {
                name: source_name.clone(),
                size: headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok()),
                limit: source.body.max_bytes.unwrap_or(decode::DEFAULT_MAX_BYTES),
            };
            state.metrics.webhook_received(&source_name, &connection);
            state
                .metrics
                .webhook_rejected(&source_name, &connection, refused.code());
            return refused.into_response();
        }
        // The body could not be read at all (broken framing): HTTP's own answer.
        Err(e) => return e.into_response(),
    };
    // Counted under the connection it was stored for: a GHL webhook's is
    // known only once its body names its location.
    let mut counted_as = connection.clone();
    let response = match accept(
        &state,
        &loaded,
        Target {
            source,
            source_name: &source_name,
            connection: &connection,
            verifier,
            routed,
        },
        query,
        &headers,
        &body,
    )
    .await
    {
        Ok(accepted) => {
            counted_as.clone_from(&accepted.connection);
            state.metrics.webhook_received(&source_name, &counted_as);
            if accepted.duplicate {
                state.metrics.webhook_duplicate(&source_name, &counted_as);
            } else {
                state.metrics.webhook_accepted(&source_name, &counted_as);
            }
            accepted.into_response()
        }
        Err(refused) => {
            if let ReceiveError::NotStored { reason, .. } = &refused {
                tracing::error!(source = %source_name, error = %reason, "could not store a webhook");
            }
            state.metrics.webhook_received(&source_name, &counted_as);
            state
                .metrics
                .webhook_rejected(&source_name, &counted_as, refused.code());
            refused.into_response()
        }
    };
    state
        .metrics
        .webhook_answered(&source_name, &counted_as, started.elapsed());
    response
}

/// A webhook stored in the inbox: new (202) or a duplicate (200).
struct Accepted {
    delivery_id: i64,
    duplicate: bool,
    mapped: bool,
    event_type: String,
    /// The connection it was stored for, as the metrics name it (`unrouted`
    /// for a webhook whose location no connection has: its value is not a
    /// label, or every stranger's location would be a time series).
    connection: String,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let (status, word) = match (self.duplicate, self.mapped) {
            (true, _) => (StatusCode::OK, "duplicate"),
            (false, true) => (StatusCode::ACCEPTED, "accepted"),
            (false, false) => (StatusCode::ACCEPTED, "unmapped"),
        };
        (
            status,
            Json(json!({
                "delivery_id": self.delivery_id,
                "status": word,
                "event": self.event_type,
            })),
        )
            .into_response()
    }
}

/// Where a webhook goes: its source, the connection it is for, and the
/// verifier of that connection's secrets (none: the source is unsigned).
struct Target<'a> {
    source: &'a crate::program::Source,
    source_name: &'a str,
    connection: &'a str,
    verifier: Option<&'a Verifier>,
    /// The path named no connection: a source with `route:` finds it.
    routed: bool,
}

/// The checks of README's table, in its order, then the commit.
async fn accept(
    state: &AppState,
    loaded: &Loaded,
    target: Target<'_>,
    query: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Accepted, ReceiveError> {
    let Target {
        source,
        source_name,
        connection,
        verifier,
        routed,
    } = target;
    let program = &loaded.program;
    let limit = source.body.max_bytes.unwrap_or(decode::DEFAULT_MAX_BYTES);
    if body.len() as u64 > limit {
        return Err(ReceiveError::TooLarge {
            name: source_name.to_string(),
            size: Some(body.len() as u64),
            limit,
        });
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
        let (allowed, expected) = match source.body.format {
            crate::config::model::BodyFormat::Json => (json_like || media == "text/plain", "JSON"),
            crate::config::model::BodyFormat::Form => (
                json_like || media == "application/x-www-form-urlencoded",
                "a form",
            ),
        };
        if !allowed {
            return Err(ReceiveError::ContentType {
                name: source_name.to_string(),
                media,
                expected,
            });
        }
    }
    let text = std::str::from_utf8(body).unwrap_or("");
    let form_field = |name: &str| decode::form_field(text, name);
    if let Some(v) = verifier {
        let now = chrono::Utc::now().timestamp();
        v.verify(headers, query.as_deref(), body, now, &form_field)
            .map_err(ReceiveError::Signature)?;
    }
    let payload = decode::decode(body, &source.body).map_err(ReceiveError::Malformed)?;
    let event = program
        .identify(source_name, &payload)
        .map_err(ReceiveError::NoEventType)?;
    let mut mapped = program
        .by_event
        .contains_key(&(source_name.to_string(), event.event_type.clone()));
    let mut connection = connection.to_string();
    let mut note = None;
    if routed
        && let Some(route) = &source.route
        && let Some(value) = route.by.select(&payload).and_then(|v| match v {
            serde_json::Value::String(text) => Some(text),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    {
        match loaded
            .routes
            .get(&route.variable)
            .and_then(|owners| owners.get(&value))
        {
            Some(owner) => connection = owner.clone(),
            None => {
                // Kept, not refused (the sender would only retry), and never
                // delivered by another tenant: it waits under its value
                // until a connection has it.
                connection = crate::program::routed_connection(&route.variable, &value);
                mapped = false;
                note = Some(format!(
                    "no connection has {} = {value}: add one (`mapper connection add NAME --set {}={value} …`), then `mapper replay --state unmapped`",
                    route.variable, route.variable
                ));
            }
        }
    }
    // GHL's INSTALL / UNINSTALL act on the connection of their location
    // here, once verified (`oauth::lifecycle`); the event is kept as done.
    let lifecycle = oauth::lifecycle(&state.store, source, &event.event_type, &payload)
        .await
        .map_err(|e| ReceiveError::NotStored {
            reason: e.to_string(),
            ghl: true,
        })?;
    let applied = lifecycle.is_some();
    if applied {
        mapped = true;
        note = lifecycle;
    }
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
    let counted_as = if mapped || !connection.contains('=') {
        connection.clone()
    } else {
        "unrouted".to_string()
    };
    let new_event = NewEvent {
        connection,
        source: source_name.to_string(),
        event_type: event.event_type.clone(),
        event_id: event.id.clone(),
        dedup_key: event.dedup_key.clone(),
        occurred_at,
        // Sources that describe the same records (GHL's contact webhooks and
        // its workflow webhooks) share one delivery order per customer.
        customer_key: event.customer.as_deref().map(|id| source.ordering_key(id)),
        headers: serde_json::Value::Object(kept_headers),
        body: body.to_vec(),
        state: if applied {
            EventState::Delivered
        } else if mapped {
            EventState::Received
        } else {
            EventState::Unmapped
        },
        note,
    };
    let stored = state.inbox.store(new_event).await;
    state.inbox_went(stored.as_ref().err().map(|e| e.to_string()).as_deref());
    match stored {
        Ok(Inserted::New(id)) => Ok(Accepted {
            delivery_id: id,
            duplicate: false,
            mapped,
            event_type: event.event_type,
            connection: counted_as,
        }),
        Ok(Inserted::Duplicate(id)) => Ok(Accepted {
            delivery_id: id,
            duplicate: true,
            mapped,
            event_type: event.event_type,
            connection: counted_as,
        }),
        Err(e) => Err(ReceiveError::NotStored {
            reason: e.to_string(),
            // GHL sends both its signed webhooks and its workflows' requests
            // (a source that `describes: ghl`), and retries either only on a
            // 429: a 503 would lose a workflow's request for good.
            ghl: source.verify.method == crate::config::model::VerifyMethod::Ghl
                || source.describes.as_deref() == Some("ghl"),
        }),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let reload = state.reload.lock().map(|r| r.clone()).unwrap_or_default();
    if !state.store.ping().await {
        return ReceiveError::NotReady.into_response();
    }
    // The database may answer reads while writes fail (a full disk, a
    // read-only file): a replica refusing webhooks is not ready for them.
    if let Some(reason) = state.inbox_refusing() {
        return ReceiveError::InboxFailing { reason }.into_response();
    }
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
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state.store).await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
