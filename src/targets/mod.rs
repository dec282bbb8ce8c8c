//! Delivery: turning a plan into calls on the target APIs.
//!
//! The plan says everything that can be known without calling anything; what
//! is left are `${…}` placeholders. This module resolves them with the few
//! capabilities target profiles declare — find-or-create of the customer with
//! a stored link, ids by name from a cached listing, and creation of missing
//! items from `provision:` — then sends each request and classifies the answer.

use crate::config::model::{TrackMode, Tracks};
use crate::engine::plan::{FiredMapping, PlanInput, RequestPlan};
use crate::engine::program::{Program, Target};
use crate::engine::scope::Scope;
use crate::store::{ClaimedEvent, Store, SyncLogEntry};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

pub mod limiter;

/// Held while one task lists or creates something others would repeat.
type Gate = Arc<Mutex<()>>;

/// What one delivery did, beyond its outcome.
#[derive(Default)]
struct Tally {
    calls: std::cell::Cell<u64>,
    /// Set when a target's daily budget stopped the delivery.
    paused: std::cell::Cell<Option<Duration>>,
}

tokio::task_local! {
    /// The tally of the event the current task delivers.
    static TALLY: Tally;
}

/// How one event's delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Worth trying again (timeout, 5xx, 429), after `retry_after` when the target said so.
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Trying again would fail the same way (4xx with a reason, missing data).
    Permanent(String),
    /// A target's daily budget is spent: wait `until` its reset. Not a failed
    /// attempt, so it costs the event none of its retries.
    Paused {
        error: String,
        until: Duration,
    },
    /// Nothing to sync: the webhook is the echo of the engine's own write,
    /// or only carries values older than those already applied.
    Suppressed {
        kind: Suppression,
        note: String,
    },
}

/// Why a webhook was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppression {
    Echo,
    Stale,
}

/// A cached listing is listed again after this long.
const LISTING_TTL: Duration = Duration::from_secs(600);
/// A key missing from a listing this young is created without listing again
/// (a create refused as a duplicate still lists again).
const LISTING_FRESH: Duration = Duration::from_secs(60);

/// A webhook that brings back what the engine wrote within this long is its echo.
const ECHO_WINDOW_MS: i64 = 10 * 60 * 1000;

/// What an event changes in a customer's mirror.
#[derive(Debug, Default, PartialEq)]
struct Change {
    /// Changed values the event is the newest word on.
    fresh: Vec<String>,
    /// Changed values a later event has already set.
    stale: Vec<String>,
}

impl Change {
    fn between(
        record: &crate::store::MirrorRecord,
        values: &serde_json::Map<String, Value>,
        occurred_at: Option<i64>,
    ) -> Change {
        let mut change = Change::default();
        for (name, value) in values {
            if same_value(record.fields.get(name), Some(value)) {
                continue;
            }
            if record.set_after(name, occurred_at) {
                change.stale.push(name.clone());
            } else {
                change.fresh.push(name.clone());
            }
        }
        change
    }
}

use crate::store::same_value;

/// Runs one delivery with its own tally: the calls it made, and a failure
/// caused by a spent daily budget turned into a pause.
async fn counted(delivery: impl std::future::Future<Output = Outcome>) -> (Outcome, u64) {
    TALLY
        .scope(Tally::default(), async {
            let outcome = delivery.await;
            let (calls, paused) = TALLY.with(|t| (t.calls.get(), t.paused.get()));
            let outcome = match (outcome, paused) {
                (Outcome::Transient { error, .. }, Some(until)) => Outcome::Paused { error, until },
                (other, _) => other,
            };
            (outcome, calls)
        })
        .await
}

/// A sync log entry about a held write (logged against its latest event).
fn held_entry(
    write: &crate::store::PendingWrite,
    action: &str,
    request: String,
    status: Option<u16>,
    error: Option<String>,
) -> SyncLogEntry {
    SyncLogEntry {
        connection: write.connection.clone(),
        event_row: write.event_rows.last().copied().unwrap_or(0),
        mapping: write.mappings.join(", "),
        action: action.to_string(),
        target: write.target.clone(),
        customer: Some(write.record_id.clone()),
        request,
        status: status.map(i64::from),
        error,
        attempt: write.attempts + 1,
    }
}

/// The event a mapping runs for, as delivery needs it.
struct EventRef<'a> {
    row: i64,
    connection: &'a str,
    source: &'a str,
    attempt: i64,
    occurred_at: Option<i64>,
    /// The plan's `event` (templates of a re-rendered request read it).
    info: &'a Value,
}

/// Fields of an action refused: their owner, or the target record, holds
/// a newer value.
struct Refusal {
    /// `conflict` (an owned field) or `stale`, as the sync log says.
    action: &'static str,
    /// The action's parameters without the refused ones; `None` when
    /// nothing is left worth sending.
    params: Option<Value>,
    /// For the sync log.
    note: String,
}

/// Whether a parameter value would write anything.
fn has_value(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Object(m) => m.values().any(has_value),
        _ => true,
    }
}

/// Removes `path` from a parameter tree; true when it was there.
fn remove_path(params: &mut Value, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => params
            .as_object_mut()
            .is_some_and(|m| m.remove(last).is_some()),
        [first, rest @ ..] => params
            .get_mut(first)
            .is_some_and(|inner| remove_path(inner, rest)),
    }
}

fn param_at<'v>(params: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(params, |v, key| v.get(key))
}

/// Two held writes of one operation as one: the later's values win,
/// parameter by parameter (maps such as custom fields merge key by key),
/// except the `sum` parameters of a later write that adds (`sum_when`),
/// which are added to the earlier's while its other parameters stay.
fn merge_held(
    program: &Program,
    rule: &crate::engine::program::Coalesce,
    earlier: &Value,
    later: &Value,
) -> Value {
    fn deep_merge(into: &mut Value, from: &Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    match a.get_mut(k) {
                        Some(existing) if existing.is_object() && v.is_object() => {
                            deep_merge(existing, v)
                        }
                        _ => {
                            a.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (into, from) => *into = from.clone(),
        }
    }
    let adds = !rule.sum.is_empty()
        && match &rule.sum_when {
            None => true,
            Some(cond) => {
                let mut scope = Scope::new();
                scope.set("params", later);
                program
                    .templates
                    .truthy_scope(cond, &scope)
                    .unwrap_or(false)
            }
        };
    let mut merged = earlier.clone();
    if !adds {
        deep_merge(&mut merged, later);
        return merged;
    }
    let number =
        |v: Option<&Value>| v.and_then(|v| v.as_f64().or_else(|| v.as_str()?.trim().parse().ok()));
    if let (Value::Object(m), Value::Object(l)) = (&mut merged, later) {
        for (k, v) in l {
            if rule.sum.contains(k) {
                let total = number(m.get(k)).unwrap_or(0.0) + number(Some(v)).unwrap_or(0.0);
                let total = if total.fract() == 0.0 && total.abs() < 9.0e15 {
                    Value::from(total as i64)
                } else {
                    Value::from(total)
                };
                m.insert(k.clone(), total);
            } else if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    merged
}

/// A value on one line, shortened for the sync log.
fn compact(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 300 {
        let cut: String = text.chars().take(300).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// The answer of one call.
enum Answer {
    Ok(Value),
    Failed {
        status: Option<u16>,
        error: String,
        transient: bool,
        retry_after: Option<Duration>,
    },
}

/// Sends plans to the targets.
pub struct Executor {
    program: Arc<Program>,
    http: reqwest::Client,
    env: BTreeMap<String, String>,
    store: Store,
    /// (target, lookup) → key → id, listed once.
    lookups: Mutex<HashMap<(String, String), HashMap<String, String>>>,
    /// When each lookup was last listed: listings are refreshed after
    /// `LISTING_TTL` (people add custom fields in GHL while mapper runs),
    /// and a listing younger than `LISTING_FRESH` is trusted on a miss.
    listed_at: Mutex<HashMap<(String, String), std::time::Instant>>,
    /// Serialises listing and creating per lookup.
    lookup_gates: Mutex<HashMap<(String, String), Gate>>,
    /// Serialises work on one customer so two events never create it twice.
    customer_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Shared with the executors that replace this one on reload: the
    /// target's limits do not start over because the YAML changed.
    limiter: Arc<limiter::Limiter>,
    /// Per target: `env` and the rendered headers, fixed for the executor's life.
    env_values: HashMap<String, Value>,
    headers: HashMap<String, Vec<(String, String)>>,
    /// Per coalescing target: how long its writes are held (none when zero).
    coalesce_windows: HashMap<String, Duration>,
    /// Where requests are counted and timed (the app's `/metrics`).
    metrics: crate::metrics::Metrics,
}

impl Executor {
    /// The declared target variables that are unset (deliveries to those targets fail until they are set).
    pub fn unset_variables(&self) -> Vec<String> {
        let mut out = Vec::new();
        for target in self.program.targets.values() {
            for (name, decl) in &target.env {
                if decl.default.is_none() && self.env.get(name).is_none_or(|v| v.is_empty()) {
                    out.push(format!("{name} (target `{}`)", target.name));
                }
            }
        }
        out
    }

    /// An executor reading the target profiles' environment variables from `env`.
    pub fn new(program: Arc<Program>, store: Store, env: BTreeMap<String, String>) -> Executor {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(16)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let mut env_values = HashMap::new();
        let mut headers = HashMap::new();
        let coalesce_windows = program
            .targets
            .values()
            .filter_map(|t| Some((t.name.clone(), t.coalesce_window.filter(|w| !w.is_zero())?)))
            .collect();
        for target in program.targets.values() {
            let value = env_value_of(target, &env);
            let rendered: Vec<(String, String)> = {
                let mut scope = Scope::new();
                scope.set("env", &value);
                target
                    .headers
                    .iter()
                    .filter_map(|(name, tpl)| {
                        let v = program.templates.eval_scope(tpl, &scope).ok()?;
                        Some((name.clone(), scalar(&v).unwrap_or_else(|| v.to_string())))
                    })
                    .collect()
            };
            headers.insert(target.name.clone(), rendered);
            env_values.insert(target.name.clone(), value);
        }
        Executor {
            program,
            http,
            env,
            env_values,
            headers,
            store,
            lookups: Mutex::new(HashMap::new()),
            listed_at: Mutex::new(HashMap::new()),
            lookup_gates: Mutex::new(HashMap::new()),
            customer_locks: Mutex::new(HashMap::new()),
            limiter: Arc::new(limiter::Limiter::default()),
            coalesce_windows,
            metrics: crate::metrics::Metrics::default(),
        }
    }

    /// This executor, counting its requests in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Executor {
        self.metrics = metrics;
        self
    }

    /// Where this executor's requests are counted.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// This executor with every coalescing target's window replaced
    /// (`serve --coalesce-window`); zero sends every write at once.
    pub fn with_coalesce_window(mut self, window: Duration) -> Executor {
        self.coalesce_windows = self
            .program
            .targets
            .values()
            .filter(|t| t.coalesce_window.is_some() && !window.is_zero())
            .map(|t| (t.name.clone(), window))
            .collect();
        self
    }

    /// How long writes to `target` are held, when they are.
    fn coalesce_window(&self, target: &str) -> Option<Duration> {
        self.coalesce_windows.get(target).copied()
    }

    /// The mapping set this executor delivers with.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    /// This executor, counting its requests in `previous`'s rate-limit windows
    /// (an executor replacing another after a reload).
    pub fn sharing_limits_with(mut self, previous: &Executor) -> Executor {
        self.limiter = previous.limiter.clone();
        self
    }

    /// Delivers one stored event and says how many target calls it took.
    pub async fn deliver(&self, event: &ClaimedEvent) -> (Outcome, u64) {
        counted(self.deliver_counted(event)).await
    }

    /// Plans the event against the customer's mirror, runs each fired
    /// mapping, then records what the event taught about the customer.
    async fn deliver_counted(&self, event: &ClaimedEvent) -> Outcome {
        let (row, connection, source, attempt) = (
            event.id,
            event.connection.as_str(),
            event.source.as_str(),
            event.attempts,
        );
        let body = &event.body;
        let Some(src) = self.program.sources.get(source) else {
            return Outcome::Permanent(format!("source `{source}` is no longer defined"));
        };
        let payload = match crate::engine::decode::decode(body, &src.body) {
            Ok(p) => p,
            Err(e) => return Outcome::Permanent(e.to_string()),
        };
        self.preload_lookups().await;
        let known = self.known_ids().await;
        // The mirror is kept by the customer id inside the ordering key.
        let customer_id = event
            .customer_key
            .as_deref()
            .map(|k| crate::engine::program::customer_of_ordering_key(k).to_string());
        let mirror = match &customer_id {
            Some(key) if !src.mirror.is_empty() => {
                match self.store.mirror(connection, source, key).await {
                    Ok(record) => record,
                    Err(e) => {
                        return Outcome::Transient {
                            error: format!("cannot read the customer mirror: {e}"),
                            retry_after: None,
                        };
                    }
                }
            }
            _ => None,
        };
        // What this event says of the customer, read once: for the echo and
        // stale checks now, for the mirror after delivery.
        let values = match &customer_id {
            Some(_) if !src.mirror.is_empty() => {
                self.program.mirror_values(source, &payload, &known)
            }
            _ => serde_json::Map::new(),
        };
        let mut previous = mirror.as_ref().map(|m| Value::Object(m.fields.clone()));
        if let (Some(record), Some(key)) = (&mirror, &customer_id) {
            let change = Change::between(record, &values, event.occurred_at);
            if src.snapshots && change.fresh.is_empty() {
                let now = crate::store::now_ms();
                let (kind, note) = if !change.stale.is_empty() {
                    (
                        Some(Suppression::Stale),
                        format!(
                            "stale: {} already hold values from a later event; nothing synced",
                            change.stale.join(", ")
                        ),
                    )
                } else if record
                    .written_at
                    .is_some_and(|at| now - at < ECHO_WINDOW_MS)
                {
                    (
                        Some(Suppression::Echo),
                        "echo, suppressed: the record holds what mapper wrote to it".to_string(),
                    )
                } else {
                    (None, String::new())
                };
                if let Some(kind) = kind {
                    let _ = self
                        .store
                        .log_attempt(&SyncLogEntry {
                            connection: connection.to_string(),
                            event_row: row,
                            mapping: String::new(),
                            action: match kind {
                                Suppression::Echo => "echo",
                                Suppression::Stale => "stale",
                            }
                            .to_string(),
                            target: src.describes.clone().unwrap_or_default(),
                            customer: Some(key.clone()),
                            request: note.clone(),
                            status: None,
                            error: None,
                            attempt,
                        })
                        .await;
                    return Outcome::Suppressed { kind, note };
                }
            }
            // A late event's older values must not look like changes to the
            // mappings: for them, "previous" is what the event itself says.
            if let Some(Value::Object(prev)) = &mut previous {
                for name in &change.stale {
                    if let Some(v) = values.get(name) {
                        prev.insert(name.clone(), v.clone());
                    }
                }
            }
        }
        let input = PlanInput {
            env: self.env.clone(),
            mask_secrets: false,
            known,
            previous,
        };
        let plan = match self.program.plan(source, &payload, &input) {
            Ok(p) => p,
            Err(e) => return Outcome::Permanent(e.to_string()),
        };
        if let Some(err) = plan.errors.first() {
            return Outcome::Permanent(format!("mapping `{}`: {}", err.mapping, err.error));
        }
        let event_info = serde_json::to_value(&plan.event).unwrap_or(Value::Null);
        for fired in &plan.mappings {
            let outcome = self
                .run_mapping(
                    &EventRef {
                        row,
                        connection,
                        source,
                        attempt,
                        occurred_at: event.occurred_at,
                        info: &event_info,
                    },
                    fired,
                )
                .await;
            if outcome != Outcome::Delivered {
                return outcome;
            }
        }
        if let Some(key) = &customer_id
            && !src.mirror.is_empty()
        {
            let mut values = values;
            // While mappings called targets, this mirror may have changed: a
            // write of ours to the record it describes, or another source's
            // event writing to it, reflected what it made the record hold.
            // Read it again then, or that would be erased.
            let updated = if plan.mappings.is_empty() {
                self.store
                    .update_mirror_from(
                        mirror.unwrap_or_default(),
                        connection,
                        source,
                        key,
                        &values,
                        event.occurred_at,
                        row,
                    )
                    .await
            } else {
                self.store
                    .update_mirror(connection, source, key, &values, event.occurred_at, row)
                    .await
            };
            match updated {
                Ok(stale) => {
                    if !stale.is_empty() {
                        tracing::info!(event = row, customer = %key, fields = ?stale, "older than the mirror's values; kept the newer ones");
                    }
                    values.retain(|name, _| !stale.contains(name));
                    if let Some(described) = &src.describes
                        && !values.is_empty()
                    {
                        // What the target says its record holds beats what the engine remembers writing.
                        let _ = self
                            .store
                            .remember(connection, described, key, &values)
                            .await;
                    }
                }
                // The targets have the event; a mirror that lags one event is repaired by the next.
                Err(e) => {
                    tracing::error!(event = row, error = %e, "cannot update the customer mirror")
                }
            }
        }
        Outcome::Delivered
    }

    async fn run_mapping(&self, ev: &EventRef<'_>, fired: &FiredMapping) -> Outcome {
        let (row, connection, source, attempt) = (ev.row, ev.connection, ev.source, ev.attempt);
        let Some(target) = self.program.targets.get(&fired.target) else {
            return Outcome::Permanent(format!("target `{}` is not defined", fired.target));
        };
        let unset: Vec<&String> = target
            .env
            .iter()
            .filter(|(name, decl)| {
                decl.default.is_none() && self.env.get(*name).is_none_or(|v| v.is_empty())
            })
            .map(|(name, _)| name)
            .collect();
        if !unset.is_empty() {
            return Outcome::Permanent(format!(
                "target `{}` needs {} (unset); set it, restart, and `mapper replay` the dead events",
                fired.target,
                unset
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let log = |action: &str,
                   customer: Option<&str>,
                   request: String,
                   status: Option<u16>,
                   error: Option<String>| SyncLogEntry {
            connection: connection.to_string(),
            event_row: row,
            mapping: fired.name.clone(),
            action: action.to_string(),
            target: fired.target.clone(),
            customer: customer.map(str::to_string),
            request,
            status: status.map(i64::from),
            error,
            attempt,
        };
        // Events of different sources (or keyed differently) may be about the
        // same person: every value that can identify the customer is locked,
        // for the whole mapping, so two of them never both create the
        // customer, nor write one's email while the other creates a contact
        // with it. Locks are taken in sorted order, so two events never wait
        // on each other.
        let mut lock_keys: Vec<String> = Vec::new();
        if let Some(c) = &fired.customer {
            if let Some(link) = &c.link {
                let link_source = c.link_source.as_deref().unwrap_or(source);
                lock_keys.push(format!("{}|{link_source}|link:{link}", fired.target));
            }
            for k in &c.keys {
                lock_keys.push(format!("{}|{}:{}", fired.target, k.key, k.value));
            }
        }
        lock_keys.sort();
        lock_keys.dedup();
        let mut _held = Vec::with_capacity(lock_keys.len());
        for key in lock_keys {
            let lock = {
                let mut locks = self.customer_locks.lock().await;
                // One entry per identifying value ever seen would grow for
                // the life of the process: drop those nobody holds or awaits.
                if locks.len() > 4096 {
                    locks.retain(|_, lock| Arc::strong_count(lock) > 1);
                }
                locks.entry(key).or_default().clone()
            };
            _held.push(lock.lock_owned().await);
        }
        let (customer_id, created) = match &fired.customer {
            None => (None, false),
            Some(c) => {
                let link_source = c.link_source.as_deref().unwrap_or(source);
                let link = c.link.as_ref().map(|l| match l {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                if let Some(link) = &link
                    && let Ok(Some(id)) = self
                        .store
                        .link(connection, link_source, link, &fired.target)
                        .await
                {
                    (Some(id), false)
                } else {
                    let mut found = None;
                    for (request, key) in c.find.iter().zip(&c.keys) {
                        let Some(cap) = &target.customer else { break };
                        let Some((_, id_path)) = cap.find.get(&key.key) else {
                            continue;
                        };
                        match self.send(target, request).await {
                            Answer::Ok(answer) => {
                                if let Some(id) = id_path.select(&answer).and_then(|v| scalar(&v)) {
                                    found = Some(id);
                                    break;
                                }
                            }
                            Answer::Failed {
                                status,
                                error,
                                transient,
                                retry_after,
                            } => {
                                return self
                                    .fail(
                                        log(
                                            "find_customer",
                                            None,
                                            describe(request),
                                            status,
                                            Some(error),
                                        ),
                                        transient,
                                        retry_after,
                                    )
                                    .await;
                            }
                        }
                    }
                    let mut created = false;
                    if found.is_none()
                        && let (Some(create), Some(cap)) = (
                            &c.create,
                            target.customer.as_ref().and_then(|t| t.create.as_ref()),
                        )
                    {
                        let sent_at = crate::store::now_ms();
                        match self.send(target, create).await {
                            Answer::Ok(answer) => {
                                found = cap.id.select(&answer).and_then(|v| scalar(&v));
                                created = found.is_some();
                                if let Some(id) = &found {
                                    // The log says who was created, not only who failed to be:
                                    // `mapper log` and resync's summary read it.
                                    let _ = self
                                        .store
                                        .log_attempt(&log(
                                            "create_customer",
                                            Some(id),
                                            describe(create),
                                            Some(200),
                                            None,
                                        ))
                                        .await;
                                    let keys = Value::Object(
                                        c.keys
                                            .iter()
                                            .map(|k| (k.key.clone(), k.value.clone()))
                                            .collect(),
                                    );
                                    self.reflect(
                                        connection,
                                        target,
                                        id,
                                        &cap.reflects,
                                        &[("keys", &keys), ("answer", &answer)],
                                        (ev.occurred_at, sent_at),
                                    )
                                    .await;
                                }
                            }
                            Answer::Failed {
                                status: Some(400),
                                error,
                                ..
                            } if cap.duplicate_id.is_some() => {
                                // "This location does not allow duplicated contacts": the answer names it.
                                found = self.last_error_body_id(&error, cap);
                                if found.is_none() {
                                    return Outcome::Permanent(error);
                                }
                            }
                            Answer::Failed {
                                status,
                                error,
                                transient,
                                retry_after,
                            } => {
                                return self
                                    .fail(
                                        log(
                                            "create_customer",
                                            None,
                                            describe(create),
                                            status,
                                            Some(error),
                                        ),
                                        transient,
                                        retry_after,
                                    )
                                    .await;
                            }
                        }
                    }
                    let Some(id) = found else {
                        return Outcome::Delivered; // nothing matched and nothing may be created: skipped by design
                    };
                    if let Some(link) = &link {
                        let _ = self
                            .store
                            .put_link(connection, link_source, link, &fired.target, &id)
                            .await;
                        // The link holds the other way too when both sides'
                        // webhooks describe records: a GHL contact synced to
                        // a Sticky Cards customer is that customer's contact.
                        if let Some(back_target) = self
                            .program
                            .sources
                            .get(link_source)
                            .and_then(|s| s.describes.as_deref())
                        {
                            for back_source in self.program.sources.values().filter(|s| {
                                s.describes.as_deref() == Some(fired.target.as_str())
                                    && !s.mirror.is_empty()
                            }) {
                                let known = self
                                    .store
                                    .link(connection, &back_source.name, &id, back_target)
                                    .await;
                                if matches!(known, Ok(None)) {
                                    let _ = self
                                        .store
                                        .put_link(
                                            connection,
                                            &back_source.name,
                                            &id,
                                            back_target,
                                            link,
                                        )
                                        .await;
                                }
                            }
                        }
                    }
                    (Some(id), created)
                }
            }
        };
        for action in &fired.actions {
            if action.only_if_created && !created {
                continue;
            }
            let op = target.operations.get(&action.op);
            // A field its owner changed after this event happened is not
            // this event's to write: leave it out, or the whole action when
            // nothing else is left to send.
            let mut params = std::borrow::Cow::Borrowed(&action.params);
            let mut planned = std::borrow::Cow::Borrowed(&action.request);
            if let (Some(id), Some(op)) = (customer_id.as_deref(), op)
                && let Some(refusal) = self
                    .refused_fields(
                        (ev.connection, ev.source, ev.occurred_at),
                        target,
                        op,
                        &action.params,
                        id,
                    )
                    .await
            {
                let _ = self
                    .store
                    .log_attempt(&log(
                        refusal.action,
                        Some(id),
                        refusal.note.clone(),
                        None,
                        None,
                    ))
                    .await;
                tracing::info!(event = row, mapping = %fired.name, "{}", refusal.note);
                match refusal.params {
                    None => continue,
                    Some(kept) => {
                        let input = PlanInput {
                            env: self.env.clone(),
                            mask_secrets: false,
                            known: self.known_ids().await,
                            previous: None,
                        };
                        match self.program.render_operation(
                            &target.name,
                            &action.op,
                            &kept,
                            &input,
                            ev.info,
                        ) {
                            Ok(r) => planned = std::borrow::Cow::Owned(r),
                            Err(e) => return Outcome::Permanent(e),
                        }
                        params = std::borrow::Cow::Owned(kept);
                    }
                }
            }
            if let (Some(id), Some(op)) = (customer_id.as_deref(), op)
                && let Some(rule) = &op.coalesce
                && let Some(window) = self.coalesce_window(&target.name)
            {
                let write = crate::store::HeldWrite {
                    connection: connection.to_string(),
                    target: target.name.clone(),
                    record_id: id.to_string(),
                    op: action.op.clone(),
                    params: params.as_ref().clone(),
                    mapping: fired.name.clone(),
                    event_row: row,
                    occurred_at: ev.occurred_at,
                };
                let held = self
                    .store
                    .hold_write(&write, window.as_millis() as i64, |earlier, later| {
                        merge_held(&self.program, rule, earlier, later)
                    })
                    .await;
                match held {
                    Ok(held) => {
                        let note = format!(
                            "held to coalesce ({} write(s) so far); goes out at {} {}",
                            held.writes,
                            crate::store::format_ms(held.due_at),
                            compact(params.as_ref())
                        );
                        let _ = self
                            .store
                            .log_attempt(&log(&action.op, Some(id), note, None, None))
                            .await;
                        continue;
                    }
                    Err(e) => {
                        return Outcome::Transient {
                            error: format!("cannot hold a write to coalesce: {e}"),
                            retry_after: None,
                        };
                    }
                }
            }
            let record = match customer_id.as_deref() {
                Some(id) => self
                    .store
                    .record_fields(connection, &fired.target, id)
                    .await
                    .unwrap_or_default(),
                None => Value::Null,
            };
            let mut request = match self
                .resolve(target, &planned, customer_id.as_deref(), &record)
                .await
            {
                Ok(r) => r,
                Err(outcome) => return outcome,
            };
            let tracks = target
                .operations
                .get(&action.op)
                .and_then(|o| o.tracks.as_ref())
                .filter(|_| customer_id.is_some());
            if let Some(tracks) = tracks
                && !tracked_request(tracks, &mut request, &record)
            {
                let _ = self
                    .store
                    .log_attempt(&log(
                        &action.op,
                        customer_id.as_deref(),
                        format!(
                            "skipped: every value is already in the record's `{}`",
                            tracks.record
                        ),
                        None,
                        None,
                    ))
                    .await;
                continue;
            }
            let sent_at = crate::store::now_ms();
            match self.send(target, &request).await {
                Answer::Ok(answer) => {
                    if let (Some(id), Some(op)) = (customer_id.as_deref(), op) {
                        self.record_answer(
                            connection,
                            target,
                            op,
                            id,
                            &params,
                            &answer,
                            (ev.occurred_at, sent_at),
                        )
                        .await;
                    }
                    if let (Some(tracks), Some(id)) = (tracks, customer_id.as_deref()) {
                        let set = tracked_set_after(tracks, &request, &record);
                        let kept = serde_json::Map::from_iter([(tracks.record.clone(), set)]);
                        let _ = self
                            .store
                            .remember(connection, &fired.target, id, &kept)
                            .await;
                    }
                    let _ = self
                        .store
                        .log_attempt(&log(
                            &action.op,
                            customer_id.as_deref(),
                            describe(&request),
                            Some(200),
                            None,
                        ))
                        .await;
                }
                Answer::Failed {
                    status,
                    error,
                    transient,
                    retry_after,
                } => {
                    return self
                        .fail(
                            log(
                                &action.op,
                                customer_id.as_deref(),
                                describe(&request),
                                status,
                                Some(error),
                            ),
                            transient,
                            retry_after,
                        )
                        .await;
                }
            }
        }
        Outcome::Delivered
    }

    /// The fields of an action the target record took a newer value of
    /// after the event happened, with what is left to send. Such a write
    /// would put older information over newer: webhooks arrive out of order
    /// and late. A field the target owns (`ownership:` in `mapper.yaml`) is
    /// a *conflict*; any other is *stale*. Events of the target's own side
    /// are never refused (their own staleness is the mirror's business).
    async fn refused_fields(
        &self,
        (connection, source, occurred_at): (&str, &str, Option<i64>),
        target: &Target,
        op: &crate::engine::program::Operation,
        params: &Value,
        record_id: &str,
    ) -> Option<Refusal> {
        let occurred_at = occurred_at?;
        if op.reflects.is_empty()
            || self
                .program
                .sources
                .get(source)
                .is_some_and(|s| s.describes.as_deref() == Some(target.name.as_str()))
        {
            return None;
        }
        let mut mirrors = Vec::new();
        for src in self.program.sources.values().filter(|s| {
            s.describes.as_deref() == Some(target.name.as_str()) && !s.mirror.is_empty()
        }) {
            if let Ok(Some(m)) = self.store.mirror(connection, &src.name, record_id).await {
                mirrors.push(m);
            }
        }
        if mirrors.is_empty() {
            return None;
        }
        // Which fields this call would set: a plain copy of a parameter when
        // that parameter has a value; otherwise whatever the `reflects:`
        // template gives (a balance delta sets no balance, so it is never
        // refused: adding points does not overwrite the newer value).
        let mirror = mirrors
            .first()
            .map(|m| Value::Object(m.fields.clone()))
            .unwrap_or(Value::Null);
        let written: Vec<(&String, Option<Vec<String>>)> = {
            let mut scope = Scope::new();
            scope.set("params", params);
            scope.set("answer", &Value::Null);
            scope.set("mirror", &mirror);
            op.reflects
                .iter()
                .filter(|(field, _)| !op.relative.contains(field))
                .map(|(field, tpl)| (field, op.reflected_param(field), tpl))
                .filter(|(_, path, tpl)| match path {
                    Some(path) => param_at(params, path).is_some_and(has_value),
                    None => self
                        .program
                        .templates
                        .eval_scope(tpl, &scope)
                        .is_ok_and(|v| has_value(&v)),
                })
                .map(|(field, path, _)| (field, path))
                .collect()
        };
        let (mut conflicts, mut stale) = (Vec::new(), Vec::new());
        let mut kept = params.clone();
        let mut whole = false;
        for (field, path) in written {
            let Some(changed) = mirrors.iter().filter_map(|m| m.changed_at(field)).max() else {
                continue;
            };
            if changed <= occurred_at {
                continue;
            }
            let what = format!("`{field}` (changed {})", crate::store::format_ms(changed));
            if self.program.owners.get(field) == Some(&target.name) {
                conflicts.push(what);
            } else {
                stale.push(what);
            }
            match path {
                Some(path) => {
                    remove_path(&mut kept, &path);
                }
                None => whole = true,
            }
        }
        if conflicts.is_empty() && stale.is_empty() {
            return None;
        }
        let left = !whole && has_value(&kept);
        let mut said = Vec::new();
        if !conflicts.is_empty() {
            said.push(format!("{} owns {}", target.name, conflicts.join(", ")));
        }
        if !stale.is_empty() {
            said.push(format!("{} holds newer {}", target.name, stale.join(", ")));
        }
        let note = format!(
            "{}: {}, changed there after this event ({}); {}",
            if conflicts.is_empty() {
                "stale"
            } else {
                "conflict"
            },
            said.join("; "),
            crate::store::format_ms(occurred_at),
            if left {
                "sent without them"
            } else {
                "nothing sent"
            }
        );
        Some(Refusal {
            action: if conflicts.is_empty() {
                "stale"
            } else {
                "conflict"
            },
            params: left.then_some(kept),
            note,
        })
    }

    /// Sends one held (coalesced) write, and says how many calls it took.
    pub async fn flush(&self, write: &crate::store::PendingWrite) -> (Outcome, u64) {
        counted(self.flush_counted(write)).await
    }

    async fn flush_counted(&self, write: &crate::store::PendingWrite) -> Outcome {
        let Some(target) = self.program.targets.get(&write.target) else {
            return Outcome::Permanent(format!("target `{}` is no longer defined", write.target));
        };
        let Some(op) = target.operations.get(&write.op) else {
            return Outcome::Permanent(format!(
                "operation `{}` is no longer defined by target `{}`",
                write.op, write.target
            ));
        };
        // The owner may have changed a field while the write waited: check
        // again, against the latest event the held write carries.
        let origin = write
            .mappings
            .iter()
            .find_map(|name| self.program.mappings.iter().find(|m| &m.name == name))
            .map(|m| m.source.clone())
            .unwrap_or_default();
        let mut params = std::borrow::Cow::Borrowed(&write.params);
        if let Some(refusal) = self
            .refused_fields(
                (&write.connection, &origin, write.occurred_at),
                target,
                op,
                &write.params,
                &write.record_id,
            )
            .await
        {
            let note = format!("while held: {}", refusal.note);
            let _ = self
                .store
                .log_attempt(&held_entry(write, refusal.action, note, None, None))
                .await;
            match refusal.params {
                Some(kept) => params = std::borrow::Cow::Owned(kept),
                None => return Outcome::Delivered,
            }
        }
        self.preload_lookups().await;
        let input = PlanInput {
            env: self.env.clone(),
            mask_secrets: false,
            known: self.known_ids().await,
            previous: None,
        };
        let planned = match self.program.render_operation(
            &write.target,
            &write.op,
            &params,
            &input,
            &Value::Null,
        ) {
            Ok(p) => p,
            Err(e) => return Outcome::Permanent(e),
        };
        let record = self
            .store
            .record_fields(&write.connection, &write.target, &write.record_id)
            .await
            .unwrap_or_default();
        let request = match self
            .resolve(target, &planned, Some(&write.record_id), &record)
            .await
        {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let summary = format!(
            "coalesced {} write(s) of event(s) {:?}: {}",
            write.writes,
            write.event_rows,
            describe(&request)
        );
        let entry = |status: Option<u16>, error: Option<String>| {
            held_entry(write, &write.op, summary.clone(), status, error)
        };
        let sent_at = crate::store::now_ms();
        match self.send(target, &request).await {
            Answer::Ok(answer) => {
                self.record_answer(
                    &write.connection,
                    target,
                    op,
                    &write.record_id,
                    &params,
                    &answer,
                    (write.occurred_at, sent_at),
                )
                .await;
                let _ = self.store.log_attempt(&entry(Some(200), None)).await;
                Outcome::Delivered
            }
            Answer::Failed {
                status,
                error,
                transient,
                retry_after,
            } => {
                self.fail(entry(status, Some(error)), transient, retry_after)
                    .await
            }
        }
    }

    /// What a successful call of `op` taught about the record: what it now
    /// holds (`reflects:`, for its webhook to be an echo) and the answer's
    /// values kept for later requests (`remember:`).
    #[allow(clippy::too_many_arguments)]
    async fn record_answer(
        &self,
        connection: &str,
        target: &Target,
        op: &crate::engine::program::Operation,
        record_id: &str,
        params: &Value,
        answer: &Value,
        times: (Option<i64>, i64),
    ) {
        self.reflect(
            connection,
            target,
            record_id,
            &op.reflects,
            &[("params", params), ("answer", answer)],
            times,
        )
        .await;
        let kept: serde_json::Map<String, Value> = op
            .remember
            .iter()
            .filter_map(|(name, path)| Some((name.clone(), path.select(answer)?)))
            .collect();
        if !kept.is_empty() {
            let _ = self
                .store
                .remember(connection, &target.name, record_id, &kept)
                .await;
        }
    }

    /// How two held writes of `op` on `target` merge (for the store's retry path).
    pub fn merge_held(&self, target: &str, op: &str, earlier: &Value, later: &Value) -> Value {
        match self
            .program
            .targets
            .get(target)
            .and_then(|t| t.operations.get(op))
            .and_then(|o| o.coalesce.as_ref())
        {
            Some(rule) => merge_held(&self.program, rule, earlier, later),
            None => later.clone(),
        }
    }

    /// Records in the mirrors of the sources that describe `target` what a
    /// successful call made `record_id` hold, so its webhook is an echo.
    /// `times`: when what was written happened on the other side (the
    /// event's occurrence), and when the request left — the target changed
    /// the record after that, so a webhook about it is never older; the
    /// answer's arrival would be later than webhooks of changes people made
    /// meanwhile, and would make them look stale.
    async fn reflect(
        &self,
        connection: &str,
        target: &Target,
        record_id: &str,
        reflects: &[(String, crate::engine::template::StrTpl)],
        inputs: &[(&str, &Value)],
        (learnt_at, sent_at): (Option<i64>, i64),
    ) {
        if reflects.is_empty() {
            return;
        }
        let describing = self.program.sources.values().filter(|s| {
            s.describes.as_deref() == Some(target.name.as_str()) && !s.mirror.is_empty()
        });
        for src in describing {
            let mirror = match self.store.mirror(connection, &src.name, record_id).await {
                Ok(Some(m)) => Value::Object(m.fields),
                _ => Value::Object(Default::default()),
            };
            let values: serde_json::Map<String, Value> = {
                let mut scope = Scope::new();
                for (name, value) in inputs {
                    scope.set(name, value);
                }
                scope.set("mirror", &mirror);
                reflects
                    .iter()
                    .filter_map(|(name, tpl)| {
                        let v = match self.program.templates.eval_scope(tpl, &scope) {
                            Ok(v) => v,
                            // A parameter this call did not send: nothing written there.
                            Err(crate::engine::template::EvalError::Missing(_)) => return None,
                            Err(e) => {
                                tracing::warn!(target = %target.name, value = %name, error = ?e, "a `reflects:` template failed; its webhook will look like a change");
                                return None;
                            }
                        };
                        match &v {
                            Value::Null => None,
                            Value::String(s) if s.is_empty() || s.contains("${") => None,
                            _ => Some((name.clone(), v)),
                        }
                    })
                    .collect()
            };
            if !values.is_empty()
                && let Err(e) = self
                    .store
                    .reflect(
                        connection, &src.name, record_id, &values, learnt_at, sent_at,
                    )
                    .await
            {
                tracing::warn!(error = %e, "cannot record what was written; its webhook will be synced as a change");
            }
        }
    }

    /// Logs a failed attempt and classifies it.
    async fn fail(
        &self,
        entry: SyncLogEntry,
        transient: bool,
        retry_after: Option<Duration>,
    ) -> Outcome {
        let error = entry.error.clone().unwrap_or_default();
        let _ = self.store.log_attempt(&entry).await;
        failed(error, transient, retry_after)
    }

    fn last_error_body_id(
        &self,
        error: &str,
        cap: &crate::engine::program::Create,
    ) -> Option<String> {
        let body = error.split_once(" :: ").map(|(_, b)| b)?;
        let v: Value = serde_json::from_str(body).ok()?;
        cap.duplicate_id
            .as_ref()?
            .select(&v)
            .and_then(|v| scalar(&v))
    }

    /// Lists every lookup once, so templates that read ids (a GHL webhook's
    /// custom fields are keyed by id) see them on the first event too.
    async fn preload_lookups(&self) {
        for target in self.program.targets.values() {
            let configured = target.env.iter().all(|(name, decl)| {
                decl.default.is_some() || self.env.get(name).is_some_and(|v| !v.is_empty())
            });
            if !configured {
                continue;
            }
            for (kind, lookup) in &target.lookups {
                let cache_key = (target.name.clone(), kind.clone());
                if self.listed_within(&cache_key, LISTING_TTL).await {
                    continue;
                }
                let gate = {
                    let mut gates = self.lookup_gates.lock().await;
                    gates.entry(cache_key.clone()).or_default().clone()
                };
                let _held = gate.lock().await;
                // Events delivered in parallel wait for the one listing.
                if self.listed_within(&cache_key, LISTING_TTL).await {
                    continue;
                }
                // A failure here is retried when an action needs the lookup.
                if let Ok(ids) = self
                    .list_lookup(target, lookup, &self.env_value(target))
                    .await
                {
                    self.listed_at
                        .lock()
                        .await
                        .insert(cache_key.clone(), std::time::Instant::now());
                    self.lookups.lock().await.insert(cache_key, ids);
                }
            }
        }
    }

    /// Ids already listed, as the plan's `known`.
    async fn known_ids(&self) -> Value {
        let lookups = self.lookups.lock().await;
        let mut out = serde_json::Map::new();
        for ((_, kind), ids) in lookups.iter() {
            let entry = out
                .entry(kind.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(map) = entry {
                for (k, v) in ids {
                    map.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
        Value::Object(out)
    }

    /// Replaces `${…}` placeholders with real values.
    async fn resolve(
        &self,
        target: &Target,
        request: &RequestPlan,
        customer: Option<&str>,
        record: &Value,
    ) -> Result<RequestPlan, Outcome> {
        let mut text =
            serde_json::to_string(request).map_err(|e| Outcome::Permanent(e.to_string()))?;
        if let Some(id) = customer {
            text = text.replace("${customer.id}", &json_escape(id));
        }
        // Other `customer.<name>` values come from what earlier answers taught us (`remember:`).
        if let Value::Object(fields) = record {
            for (name, value) in fields {
                let v = scalar(value).unwrap_or_else(|| value.to_string());
                text = text.replace(&format!("${{customer.{name}}}"), &json_escape(&v));
            }
        }
        while let Some(start) = text.find("${lookup:") {
            let Some(len) = text[start..].find('}') else {
                break;
            };
            let placeholder = text[start..start + len + 1].to_string();
            let inner = &placeholder[9..placeholder.len() - 1];
            let Some((kind, key)) = inner.split_once(':') else {
                break;
            };
            let id = self.lookup_id(target, kind, key).await?;
            text = text.replace(&placeholder, &json_escape(&id));
        }
        if let Some(at) = text.find("${") {
            let rest: String = text[at..].chars().take_while(|c| *c != '}').collect();
            return Err(Outcome::Permanent(format!(
                "cannot resolve {rest}}} (not known for this customer yet)"
            )));
        }
        serde_json::from_str(&text).map_err(|e| Outcome::Permanent(e.to_string()))
    }

    /// The id of `key` in a target's lookup: cached listing, else created from `provision:`.
    async fn lookup_id(&self, target: &Target, kind: &str, key: &str) -> Result<String, Outcome> {
        let cache_key = (target.name.clone(), kind.to_string());
        let cached = |lookups: &HashMap<(String, String), HashMap<String, String>>| {
            lookups.get(&cache_key).and_then(|m| m.get(key)).cloned()
        };
        if let Some(id) = cached(&*self.lookups.lock().await) {
            return Ok(id);
        }
        // One listing (and creation) per lookup at a time: parallel events
        // needing the same new custom field must not create it twice.
        let gate = {
            let mut gates = self.lookup_gates.lock().await;
            gates.entry(cache_key.clone()).or_default().clone()
        };
        let _held = gate.lock().await;
        if let Some(id) = cached(&*self.lookups.lock().await) {
            return Ok(id);
        }
        let Some(lookup) = target.lookups.get(kind) else {
            return Err(Outcome::Permanent(format!(
                "target `{}` has no lookup `{kind}`",
                target.name
            )));
        };
        let scope_env = self.env_value(target);
        let fresh = if self.listed_within(&cache_key, LISTING_FRESH).await {
            self.lookups.lock().await.get(&cache_key).cloned()
        } else {
            None
        };
        let mut ids = match fresh {
            Some(ids) => ids,
            None => {
                let ids = self.list_lookup(target, lookup, &scope_env).await?;
                self.listed_at
                    .lock()
                    .await
                    .insert(cache_key.clone(), std::time::Instant::now());
                ids
            }
        };
        if !ids.contains_key(key)
            && let Some(create) = &lookup.create
            && let Some(decl) = self
                .program
                .provision
                .get(&target.name)
                .and_then(|p| p.get(kind))
                .and_then(|d| d.get(key))
        {
            let mut item = decl.clone();
            if let Value::Object(map) = &mut item {
                map.entry("key".to_string())
                    .or_insert_with(|| Value::String(key.to_string()));
            }
            let request = {
                let mut create_scope = Scope::new();
                create_scope.set("item", &item);
                create_scope.set("env", &scope_env);
                self.render(target, &create.request, &create_scope)?
            };
            match self.send(target, &request).await {
                Answer::Ok(v) => {
                    if let Some(id) = create.id.select(&v).and_then(|v| scalar(&v)) {
                        ids.insert(key.to_string(), id);
                    }
                }
                Answer::Failed {
                    error,
                    transient: false,
                    ..
                } => {
                    // Someone else (another replica, a person in the UI) may
                    // have created it since the listing: list once more.
                    ids = self.list_lookup(target, lookup, &scope_env).await?;
                    if !ids.contains_key(key) {
                        return Err(Outcome::Permanent(error));
                    }
                }
                Answer::Failed {
                    error, retry_after, ..
                } => return Err(failed(error, true, retry_after)),
            }
        }
        let found = ids.get(key).cloned();
        self.lookups.lock().await.insert(cache_key, ids);
        found.ok_or_else(|| {
            Outcome::Permanent(format!(
                "`{key}` is not a {kind} of target `{}` and is not declared under provision.{}.{kind}",
                target.name, target.name
            ))
        })
    }

    /// Whether a lookup was listed less than `age` ago.
    async fn listed_within(&self, cache_key: &(String, String), age: Duration) -> bool {
        self.listed_at
            .lock()
            .await
            .get(cache_key)
            .is_some_and(|at| at.elapsed() < age)
    }

    /// Lists a lookup: key → id.
    async fn list_lookup(
        &self,
        target: &Target,
        lookup: &crate::engine::program::Lookup,
        scope_env: &Value,
    ) -> Result<HashMap<String, String>, Outcome> {
        // Scopes are not Send: each lives in a block that ends before the next await.
        let list = {
            let mut scope = Scope::new();
            scope.set("env", scope_env);
            self.render(target, &lookup.list, &scope)?
        };
        let listed = match self.send(target, &list).await {
            Answer::Ok(v) => v,
            Answer::Failed {
                error,
                transient,
                retry_after,
                ..
            } => return Err(failed(error, transient, retry_after)),
        };
        let mut ids = HashMap::new();
        for item in lookup.items.query(&listed) {
            let mut item_scope = Scope::new();
            item_scope.set("item", item);
            item_scope.set("env", scope_env);
            let k = self.program.templates.eval_scope(&lookup.key, &item_scope);
            let i = self.program.templates.eval_scope(&lookup.id, &item_scope);
            if let (Ok(k), Ok(i)) = (k, i)
                && let (Some(k), Some(i)) = (scalar(&k), scalar(&i))
            {
                ids.insert(k, i);
            }
        }
        Ok(ids)
    }

    fn env_value(&self, target: &Target) -> Value {
        self.env_values
            .get(&target.name)
            .cloned()
            .unwrap_or_else(|| env_value_of(target, &self.env))
    }

    fn render(
        &self,
        target: &Target,
        req: &crate::engine::program::Request,
        scope: &Scope,
    ) -> Result<RequestPlan, Outcome> {
        let t = &self.program.templates;
        let text = |tpl| match t.eval_scope(tpl, scope) {
            Ok(Value::String(s)) => Ok(s),
            Ok(other) => Ok(other.to_string()),
            Err(e) => Err(Outcome::Permanent(format!("{e:?}"))),
        };
        let path = text(&req.path)?;
        let base = text(&target.base_url)?;
        let value =
            |v: &Option<crate::engine::program::ValueTpl>| -> Result<Option<Value>, Outcome> {
                match v {
                    Some(v) => crate::engine::plan::eval_value(
                        t,
                        v,
                        scope,
                        &crate::engine::plan::At::Root(""),
                        &mut None,
                    )
                    .map_err(Outcome::Permanent),
                    None => Ok(None),
                }
            };
        Ok(RequestPlan {
            method: req.method.clone(),
            url: format!(
                "{}/{}",
                base.trim_end_matches('/'),
                path.trim_start_matches('/')
            ),
            path,
            query: value(&req.query)?,
            body: value(&req.body)?,
        })
    }

    /// Sends one request with the target's headers and classifies the answer.
    async fn send(&self, target: &Target, request: &RequestPlan) -> Answer {
        let method =
            reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut url = request.url.clone();
        if let Some(Value::Object(query)) = &request.query {
            let pairs: Vec<String> = query
                .iter()
                .map(|(k, v)| {
                    let v = scalar(v).unwrap_or_else(|| v.to_string());
                    format!("{}={}", urlencoding::encode(k), urlencoding::encode(&v))
                })
                .collect();
            if !pairs.is_empty() {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&pairs.join("&"));
            }
        }
        if let Err(until) = self
            .limiter
            .acquire(&target.name, target.rate_limit.as_ref())
            .await
        {
            return self.pause(target, until);
        }
        let _ = TALLY.try_with(|t| t.calls.set(t.calls.get() + 1));
        let started = std::time::Instant::now();
        let mut builder = self.http.request(method, &url).timeout(target.timeout);
        let headers = self.headers.get(&target.name).cloned().unwrap_or_default();
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let response = match builder.send().await {
            Ok(r) => {
                self.metrics.target_call(
                    &target.name,
                    Some(r.status().as_u16()),
                    started.elapsed(),
                );
                r
            }
            Err(e) => {
                self.metrics
                    .target_call(&target.name, None, started.elapsed());
                let why = if e.is_timeout() {
                    format!(
                        "no answer within {} s (timed out)",
                        target.timeout.as_secs()
                    )
                } else if e.is_connect() {
                    format!("cannot connect: {}", error_chain(&e))
                } else {
                    error_chain(&e)
                };
                return Answer::Failed {
                    status: None,
                    error: format!("{} {}: {why}", request.method, request.url),
                    transient: true,
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        // GHL says how much of its window is left; at zero, wait for the window.
        let remaining = response
            .headers()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if remaining == Some(0) {
            let window = response
                .headers()
                .get("x-ratelimit-interval-milliseconds")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(10_000);
            self.limiter
                .exhausted(&target.name, Duration::from_millis(window))
                .await;
        }
        let day_spent = response
            .headers()
            .get("x-ratelimit-daily-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            == Some(0);
        if day_spent {
            self.limiter.day_spent(&target.name).await;
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Answer::Ok(json);
        }
        if day_spent && status.as_u16() == 429 {
            return self.pause(target, limiter::until_next_utc_day());
        }
        let message = target
            .error_message
            .as_ref()
            .and_then(|p| p.select(&json))
            .map(|m| match m {
                Value::Array(items) => items
                    .iter()
                    .filter_map(scalar)
                    .collect::<Vec<_>>()
                    .join("; "),
                other => scalar(&other).unwrap_or_else(|| other.to_string()),
            })
            .unwrap_or_else(|| text.chars().take(300).collect());
        Answer::Failed {
            status: Some(status.as_u16()),
            error: format!(
                "{} {} → {}: {message} :: {text}",
                request.method,
                request.path,
                status.as_u16()
            ),
            transient: status.as_u16() == 429 || status.is_server_error(),
            retry_after,
        }
    }
}

impl Executor {
    /// A daily budget is spent: the delivery stops here and resumes after the reset.
    fn pause(&self, target: &Target, until: Duration) -> Answer {
        let _ = TALLY.try_with(|t| t.paused.set(Some(until)));
        Answer::Failed {
            status: None,
            error: format!(
                "the daily request budget of target `{}` is spent; delivery resumes in {} min, at the reset",
                target.name,
                until.as_secs().div_ceil(60)
            ),
            transient: true,
            retry_after: Some(until),
        }
    }
}

fn track_key(v: &Value, fold_case: bool) -> String {
    let s = scalar(v).unwrap_or_else(|| v.to_string());
    if fold_case { s.to_lowercase() } else { s }
}

/// Leaves out of an `add` request the values the record already has; false
/// when nothing is left to send.
fn tracked_request(tracks: &Tracks, request: &mut RequestPlan, record: &Value) -> bool {
    if tracks.mode != TrackMode::Add {
        return true;
    }
    let known: std::collections::HashSet<String> = record
        .get(&tracks.record)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|v| track_key(v, tracks.fold_case))
                .collect()
        })
        .unwrap_or_default();
    match request.body.as_mut().and_then(|b| b.get_mut(&tracks.list)) {
        Some(Value::Array(items)) => {
            items.retain(|v| !known.contains(&track_key(v, tracks.fold_case)));
            !items.is_empty()
        }
        _ => true,
    }
}

/// The record's set once `request` succeeded.
fn tracked_set_after(tracks: &Tracks, request: &RequestPlan, record: &Value) -> Value {
    let mut set: Vec<Value> = record
        .get(&tracks.record)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sent: Vec<Value> = request
        .body
        .as_ref()
        .and_then(|b| b.get(&tracks.list))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let key = |v: &Value| track_key(v, tracks.fold_case);
    match tracks.mode {
        TrackMode::Add => {
            for v in sent {
                if !set.iter().any(|s| key(s) == key(&v)) {
                    set.push(v);
                }
            }
        }
        TrackMode::Remove => {
            let gone: Vec<String> = sent.iter().map(key).collect();
            set.retain(|s| !gone.contains(&key(s)));
        }
    }
    Value::Array(set)
}

/// An error with its causes, which say what actually went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn failed(error: String, transient: bool, retry_after: Option<Duration>) -> Outcome {
    if transient {
        Outcome::Transient { error, retry_after }
    } else {
        Outcome::Permanent(error)
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len().saturating_sub(1)].to_string()
}

fn describe(r: &RequestPlan) -> String {
    match &r.body {
        Some(b) => format!("{} {} {}", r.method, r.path, b),
        None => format!("{} {}", r.method, r.path),
    }
}

/// A target's `env`, as templates see it.
fn env_value_of(target: &Target, env: &BTreeMap<String, String>) -> Value {
    Value::Object(
        target
            .env
            .iter()
            .map(|(name, decl)| {
                let v = env
                    .get(name)
                    .cloned()
                    .or_else(|| decl.default.clone())
                    .unwrap_or_default();
                (name.clone(), Value::String(v))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_value_ignores_spelling_but_not_content() {
        let same = |a: Value, b: Value| same_value(Some(&a), Some(&b));
        assert!(same(json!("Ana@Example.com "), json!("ana@example.com")));
        assert!(same(json!("10"), json!(10.0)));
        assert!(same(
            json!(["vip", "card holder"]),
            json!(["card holder", "VIP"])
        ));
        assert!(same_value(None, Some(&json!(""))));
        assert!(same_value(None, Some(&json!([]))));
        assert!(!same(json!("10"), json!(11)));
        assert!(!same(json!(["vip"]), json!(["vip", "churned"])));
        assert!(!same_value(None, Some(&json!("x"))));
        assert!(!same_value(None, Some(&json!(false))), "false is a value");
    }

    #[test]
    fn a_change_is_fresh_unless_a_later_event_set_the_field() {
        let record = crate::store::MirrorRecord {
            fields: json!({"email": "a@x.com", "phone": "+1", "tags": ["vip"]})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            field_times: json!({"email": 2_000, "phone": 1_000, "tags": 2_000})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..Default::default()
        };
        let values = json!({"email": "b@x.com", "phone": "+2", "tags": ["VIP"]})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let change = Change::between(&record, &values, Some(1_500));
        assert_eq!(change.fresh, vec!["phone".to_string()]);
        assert_eq!(change.stale, vec!["email".to_string()]);
        // Without an occurrence time nothing can be called stale.
        let change = Change::between(&record, &values, None);
        assert_eq!(change.fresh.len(), 2);
        assert!(change.stale.is_empty());
    }

    fn shipped() -> Program {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        match crate::config::compile::compile_dir(&root).program {
            Some(p) => p,
            None => panic!("the shipped mappings do not compile"),
        }
    }

    #[test]
    fn held_balance_writes_add_up_until_an_absolute_balance_replaces_them() {
        let program = shipped();
        let op = &program.targets["stickycards"].operations["change_card_balance"];
        let rule = op
            .coalesce
            .as_ref()
            .unwrap_or_else(|| panic!("not coalesced"));
        let merge = |a: Value, b: Value| merge_held(&program, rule, &a, &b);
        let add = |n: i64| json!({"amount": n, "mode": "add"});
        assert_eq!(merge(add(10), add(15)), add(25));
        assert_eq!(merge(add(10), add(-15)), add(-5));
        assert_eq!(
            merge(add(10), json!({"amount": 40, "mode": "set"})),
            json!({"amount": 40, "mode": "set"}),
            "a later absolute balance replaces the deltas"
        );
        assert_eq!(
            merge(json!({"amount": 40, "mode": "set"}), add(5)),
            json!({"amount": 45, "mode": "set"}),
            "a delta after an absolute balance adds to it"
        );
        assert_eq!(
            merge(json!({"amount": 40}), json!({"amount": 7})),
            json!({"amount": 7}),
            "no mode means set"
        );
    }

    #[test]
    fn held_customer_writes_keep_the_latest_value_of_each_field() {
        let program = shipped();
        let op = &program.targets["stickycards"].operations["upsert_customer"];
        let rule = op
            .coalesce
            .as_ref()
            .unwrap_or_else(|| panic!("not coalesced"));
        let merged = merge_held(
            &program,
            rule,
            &json!({"first_name": "Rosa", "email": "r@x.com", "extra": {"a": 1, "b": 2}}),
            &json!({"first_name": "Rosalie", "phone": "+1", "extra": {"b": 3}}),
        );
        assert_eq!(
            merged,
            json!({"first_name": "Rosalie", "email": "r@x.com", "extra": {"a": 1, "b": 3}, "phone": "+1"})
        );
    }

    #[test]
    fn a_refused_parameter_is_taken_out_of_its_tree() {
        let mut params = json!({"first_name": "Ana", "custom_fields": {"card_status": "x", "loyalty_points": 3}});
        assert!(remove_path(
            &mut params,
            &["custom_fields".into(), "card_status".into()]
        ));
        assert!(remove_path(&mut params, &["first_name".into()]));
        assert!(!remove_path(&mut params, &["phone".into()]));
        assert_eq!(params, json!({"custom_fields": {"loyalty_points": 3}}));
        assert!(has_value(&params));
        assert!(!has_value(&json!({"custom_fields": {}, "email": " "})));
    }

    #[test]
    fn plain_parameter_copies_are_known_as_such() {
        let program = shipped();
        let upsert = &program.targets["ghl"].operations["upsert_contact"];
        assert_eq!(
            upsert.reflected_param("phone"),
            Some(vec!["phone".to_string()])
        );
        assert_eq!(
            upsert.reflected_param("card_status"),
            Some(vec!["custom_fields".to_string(), "card_status".to_string()])
        );
        let balance = &program.targets["stickycards"].operations["change_card_balance"];
        assert_eq!(
            balance.reflected_param("loyalty_points"),
            None,
            "computed, not copied"
        );
    }
}
