//! Delivery: one stored event through the stages that turn its plan into
//! calls on the targets, in the order the event meets them:
//!
//! 1. [`sync`] — pure rules: is this webhook our echo, stale, a change?
//!    which fields of a write does their owner refuse? how do held writes
//!    merge? how does a mirror take new values?
//! 2. the engine plans the event (pure: payload and mirror in, plan out);
//! 3. [`customer`] — find, create or link the customer's record, one event
//!    per person at a time;
//! 4. each action's request is rendered by the engine's one renderer with
//!    the customer known, and [`lookups`] resolves the ids it names;
//! 5. [`http`] sends it within the target's rate limit and classifies the answer;
//! 6. [`journal`] — everything the delivery learnt and its outcome, written
//!    in one transaction.
//!
//! [`Executor`] holds what outlives one event (the HTTP client, id caches,
//! locks, the journal writer) and runs the stages.

use crate::engine::plan::{ActionPlan, FiredMapping, PlanInput, RequestPlan};
use crate::program::{Operation, Program, Target};
use crate::store::{
    ClaimedEvent, HeldWrite, MirrorRecord, PendingWrite, Store, StoreError, SyncLogEntry,
};
use crate::template::scope::Scope;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub mod customer;
pub mod fence;
pub mod http;
pub mod journal;
pub mod limiter;
pub mod lookups;
pub mod oauth;
pub mod sync;
mod tenants;

pub use journal::{Finish, Journal};
pub use sync::Suppression;
use tenants::TENANT_WAIT;
pub use tenants::Tenant;

use http::{Answer, Http, TALLY, Tally, describe, scalar};

/// How one event's delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Worth trying again (timeout, 5xx, 429, the database busy), after
    /// `retry_after` when the target said so.
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

impl Outcome {
    /// A failed call as an outcome.
    pub fn from_failure(failure: http::Failure) -> Outcome {
        if failure.transient {
            Outcome::Transient {
                error: failure.error,
                retry_after: failure.retry_after,
            }
        } else {
            Outcome::Permanent(failure.error)
        }
    }

    /// The local database failed: nothing is lost, the event is tried again.
    pub fn store(e: StoreError) -> Outcome {
        Outcome::Transient {
            error: format!("the local database: {e}"),
            retry_after: None,
        }
    }
}

/// One event's delivery, before its journal is written.
pub struct Delivery {
    pub outcome: Outcome,
    /// Target calls it made.
    pub calls: u64,
    /// What it recorded; the caller adds how the event ends and commits it
    /// with [`Executor::commit`].
    pub journal: Journal,
    /// The people it worked on stay locked until the journal is written:
    /// their next event must read what this one wrote.
    held: customer::Held,
}

/// The event a mapping runs for, as delivery needs it.
pub struct EventRef<'a> {
    pub row: i64,
    pub connection: &'a str,
    pub source: &'a str,
    pub attempt: i64,
    pub occurred_at: Option<i64>,
    /// The plan's `event` (templates of requests read it).
    pub info: &'a Value,
}

impl EventRef<'_> {
    /// A sync log entry of this event.
    #[allow(clippy::too_many_arguments)]
    pub fn entry(
        &self,
        mapping: &str,
        target: &str,
        action: &str,
        customer: Option<&str>,
        request: String,
        status: Option<u16>,
        error: Option<String>,
    ) -> SyncLogEntry {
        SyncLogEntry {
            connection: self.connection.to_string(),
            event_row: self.row,
            mapping: mapping.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            customer: customer.map(str::to_string),
            request,
            status: status.map(i64::from),
            error,
            attempt: self.attempt,
            took_ms: None,
        }
    }
}

/// Sends plans to the targets.
pub struct Executor {
    program: Arc<Program>,
    env: BTreeMap<String, String>,
    store: Store,
    http: Http,
    lookups: lookups::Lookups,
    locks: customer::Locks,
    journal: journal::Writer,
    /// Writes of deliveries not committed yet, for echo detection.
    in_flight: Arc<journal::InFlight>,
    /// Per target: `env` as templates see it, fixed for the executor's life.
    env_values: HashMap<String, Value>,
    /// Per coalescing target: how long its writes are held (none when zero).
    coalesce_windows: HashMap<String, Duration>,
    /// The other connections (tenants), by name: this executor delivers the
    /// events of the `default` connection and hands each other event to its
    /// connection's executor (see [`Tenant`]).
    tenants: Arc<HashMap<String, Tenant>>,
}

impl Executor {
    /// An executor reading the target profiles' environment variables from `env`.
    pub fn new(program: Arc<Program>, store: Store, env: BTreeMap<String, String>) -> Executor {
        let mut env_values = HashMap::new();
        let mut headers = HashMap::new();
        for target in program.targets.values() {
            let value = env_value_of(target, &env);
            let mut scope = Scope::new();
            scope.set("env", &value);
            let rendered: Vec<(String, String)> = target
                .headers
                .iter()
                .filter_map(|(name, tpl)| {
                    let v = program.templates.eval_scope(tpl, &scope).ok()?;
                    Some((name.clone(), scalar(&v).unwrap_or_else(|| v.to_string())))
                })
                .collect();
            headers.insert(target.name.clone(), rendered);
            env_values.insert(target.name.clone(), value);
        }
        let coalesce_windows = program
            .targets
            .values()
            .filter_map(|t| Some((t.name.clone(), t.coalesce_window.filter(|w| !w.is_zero())?)))
            .collect();
        Executor {
            journal: journal::Writer::start(store.clone()),
            in_flight: Default::default(),
            program,
            env,
            store,
            http: Http::new(headers),
            lookups: Default::default(),
            locks: Default::default(),
            env_values,
            coalesce_windows,
            tenants: Default::default(),
        }
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

    /// This executor, counting its requests in `previous`'s rate-limit windows
    /// and writing through its journal writer (an executor replacing another
    /// after a reload).
    pub fn sharing_limits_with(self, previous: &Executor) -> Executor {
        self.sharing_journal_with(previous)
            .with_limits(previous.http.limiter.clone())
    }

    /// This executor, delivering `connection`'s events (its calls are
    /// counted under that name).
    pub fn for_connection_named(mut self, connection: &str) -> Executor {
        self.http.connection = connection.to_string();
        self
    }

    /// This executor, counting its calls and outcomes in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Executor {
        self.http.metrics = metrics;
        self
    }

    /// Where this executor counts its calls and outcomes.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.http.metrics
    }

    /// The mapping set this executor delivers with.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    /// The declared target variables that are unset (deliveries to those targets fail until they are set).
    pub fn unset_variables(&self) -> Vec<String> {
        self.program
            .targets
            .values()
            .flat_map(|t| {
                self.unset_of(t)
                    .into_iter()
                    .map(move |name| format!("{name} (target `{}`)", t.name))
            })
            .collect()
    }

    fn unset_of(&self, target: &Target) -> Vec<String> {
        target
            .env
            .iter()
            .filter(|(name, decl)| {
                decl.default.is_none() && self.env.get(*name).is_none_or(|v| v.is_empty())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Delivers one stored event. Its journal is not written yet: add how
    /// the event ends ([`Journal::finish`]) and [`Executor::commit`] it.
    pub async fn deliver(&self, event: &ClaimedEvent) -> Delivery {
        let executor = match self.for_connection(&event.connection) {
            Ok(executor) => executor,
            Err(error) => {
                return Delivery {
                    outcome: Outcome::Paused {
                        error,
                        until: TENANT_WAIT,
                    },
                    calls: 0,
                    journal: Journal::shared(&event.connection, &self.in_flight),
                    held: Vec::new(),
                };
            }
        };
        let mut journal = Journal::shared(&event.connection, &executor.in_flight);
        let mut held = Vec::new();
        let (outcome, calls) = counted(executor.run(event, &mut journal, &mut held)).await;
        Delivery {
            outcome,
            calls,
            journal,
            held,
        }
    }

    /// Writes a delivery's journal in one transaction (shared with other
    /// deliveries committing at the same moment), then frees its people.
    pub async fn commit(&self, delivery: Delivery) -> Result<(), StoreError> {
        let Delivery { journal, held, .. } = delivery;
        let settled = journal.clone();
        let written = self.journal.commit(journal).await;
        settled.settled();
        drop(held);
        written
    }

    /// Writes a delivery's journal, keeping it (and its locks) when that
    /// fails so the caller may try again.
    pub async fn try_commit(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let written = self.journal.commit(delivery.journal.clone()).await;
        if written.is_ok() {
            delivery.journal.settled();
        }
        written
    }

    /// Records a worker batch's summary with the next journals written.
    pub fn record_run(&self, run: crate::store::RunSummary) {
        self.journal.commit_later(Journal::run_summary(run));
    }

    /// Plans the event against the customer's mirror, runs each fired
    /// mapping, then records what the event taught about the customer.
    async fn run(
        &self,
        event: &ClaimedEvent,
        journal: &mut Journal,
        held: &mut customer::Held,
    ) -> Outcome {
        let (connection, source) = (event.connection.as_str(), event.source.as_str());
        let Some(src) = self.program.sources.get(source) else {
            return Outcome::Permanent(format!("source `{source}` is no longer defined"));
        };
        let payload = match crate::engine::decode::decode(&event.body, &src.body) {
            Ok(p) => p,
            Err(e) => return Outcome::Permanent(e.to_string()),
        };
        for target in self.program.targets.values() {
            if self.unset_of(target).is_empty() {
                self.lookups.preload(&self.lookup_ctx(target), target).await;
            }
        }
        let known = Value::clone(&self.lookups.known());
        // The person's records are locked before their mirrors are read: a
        // delivery writing one of them (from the other side's event) holds
        // it until its journal is written, so this event's echo and stale
        // checks see that write even when its webhook outran the answer.
        let person = event
            .customer_key
            .as_deref()
            .map(crate::program::customer_of_ordering_key);
        if let Some(person) = person {
            let kind = src.describes.as_deref().unwrap_or(source);
            let mut keys = vec![customer::Locks::record_key(kind, person)];
            match journal.links_of(&self.store, source, person).await {
                Ok(links) => keys.extend(
                    links
                        .iter()
                        .map(|(target, id)| customer::Locks::record_key(target, id)),
                ),
                Err(e) => return Outcome::store(e),
            }
            self.locks.hold(keys, held).await;
        }
        // The mirror is kept by the customer id inside the ordering key.
        let customer_id = person
            .map(str::to_string)
            .filter(|_| !src.mirror.is_empty());
        let mut values = Map::new();
        let mut previous = None;
        if let Some(key) = &customer_id {
            let record = match journal.mirror_of(&self.store, source, key).await {
                Ok(record) => record,
                Err(e) => return Outcome::store(e),
            };
            // What this event says of the customer, read once: for the echo
            // and stale checks now, for the mirror after delivery.
            values = self.program.mirror_values(source, &payload, &known);
            if let Some(record) = record {
                let change = sync::Change::between(&record, &values, event.occurred_at);
                if src.snapshots
                    && let Some((kind, note)) =
                        sync::suppression(&change, &record, crate::store::now_ms())
                {
                    journal.log(SyncLogEntry {
                        connection: connection.to_string(),
                        event_row: event.id,
                        mapping: String::new(),
                        action: kind.as_str().to_string(),
                        target: src.describes.clone().unwrap_or_default(),
                        customer: Some(key.clone()),
                        request: note.clone(),
                        status: None,
                        error: None,
                        attempt: event.attempts,
                        took_ms: None,
                    });
                    return Outcome::Suppressed { kind, note };
                }
                previous = Some(sync::previous_for_mappings(&record, &change, &values));
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
        tracing::debug!(event = event.id, fired = plan.mappings.len(), skipped = ?plan.skipped, "planned");
        let info = serde_json::to_value(&plan.event).unwrap_or(Value::Null);
        let ev = EventRef {
            row: event.id,
            connection,
            source,
            attempt: event.attempts,
            occurred_at: event.occurred_at,
            info: &info,
        };
        // Every person this event works on is locked before the first call,
        // all at once in one order, so two events never wait on each other.
        let keys = plan
            .mappings
            .iter()
            .filter_map(|fired| {
                let c = fired.customer.as_ref()?;
                Some(customer::Locks::keys_of(&fired.target, source, c))
            })
            .flatten()
            .collect();
        self.locks.hold(keys, held).await;
        for fired in &plan.mappings {
            let outcome = self.run_mapping(&ev, fired, &input, journal).await;
            if outcome != Outcome::Delivered {
                return outcome;
            }
        }
        if let Some(key) = &customer_id {
            journal.mirror(
                (source, key),
                values,
                event.occurred_at,
                event.id,
                src.describes.as_deref(),
            );
        }
        Outcome::Delivered
    }

    async fn run_mapping(
        &self,
        ev: &EventRef<'_>,
        fired: &FiredMapping,
        input: &PlanInput,
        journal: &mut Journal,
    ) -> Outcome {
        let Some(target) = self.program.targets.get(&fired.target) else {
            return Outcome::Permanent(format!("target `{}` is not defined", fired.target));
        };
        let unset = self.unset_of(target);
        if !unset.is_empty() {
            return Outcome::Permanent(format!(
                "target `{}` needs {} (unset); set it, restart, and `mapper replay` the dead events",
                fired.target,
                unset.join(", ")
            ));
        }
        let mut carried: Vec<(usize, Value)> = Vec::new();
        // When the create that carried this mapping's writes left.
        let mut created_at = None;
        let (customer_id, created) = match &fired.customer {
            None => (None, false),
            Some(plan) => {
                carried = self.carried_bodies(ev, target, fired, input).await;
                let bodies: Vec<Value> = carried.iter().map(|(_, b)| b.clone()).collect();
                match customer::find_or_create(
                    self,
                    ev,
                    target,
                    &fired.name,
                    plan,
                    &bodies,
                    journal,
                )
                .await
                {
                    Err(outcome) => return outcome,
                    // Nothing matched and nothing may be created: skipped by design.
                    Ok(None) => return Outcome::Delivered,
                    Ok(Some(found)) => {
                        if let (Some((answer, sent_at)), Some(cap)) = (
                            &found.create_answer,
                            target.customer.as_ref().and_then(|c| c.create.as_ref()),
                        ) {
                            let keys = Value::Object(
                                plan.keys
                                    .iter()
                                    .map(|k| (k.key.clone(), k.value.clone()))
                                    .collect(),
                            );
                            self.reflect(
                                journal,
                                target,
                                &found.id,
                                &cap.reflects,
                                &[("keys", &keys), ("answer", answer)],
                                (ev.occurred_at, *sent_at),
                            )
                            .await;
                        }
                        created_at = found.create_answer.as_ref().map(|(_, at)| *at);
                        (Some(found.id), found.created)
                    }
                }
            }
        };
        if !created {
            carried.clear();
        }
        for (index, action) in fired.actions.iter().enumerate() {
            if action.only_if_created && !created {
                continue;
            }
            let outcome = match (
                customer_id.as_deref(),
                carried.iter().find(|(i, _)| *i == index),
            ) {
                (Some(id), Some((_, body))) => {
                    let sent_at = created_at.unwrap_or_else(crate::store::now_ms);
                    self.carried(ev, (fired, action), target, (id, sent_at), body, journal)
                        .await;
                    continue;
                }
                _ => {
                    self.run_action(
                        ev,
                        fired,
                        target,
                        action,
                        customer_id.as_deref(),
                        input,
                        journal,
                    )
                    .await
                }
            };
            if outcome != Outcome::Delivered {
                return outcome;
            }
        }
        Outcome::Delivered
    }

    /// The bodies of the mapping's actions the target's customer create
    /// carries (`customer.create.carries`), rendered for a customer not yet
    /// created, by action index. An action whose request needs the
    /// customer's id or a value not known yet is not carried.
    async fn carried_bodies(
        &self,
        ev: &EventRef<'_>,
        target: &Target,
        fired: &FiredMapping,
        input: &PlanInput,
    ) -> Vec<(usize, Value)> {
        let Some(cap) = target.customer.as_ref().and_then(|c| c.create.as_ref()) else {
            return Vec::new();
        };
        let Some(plan) = &fired.customer else {
            return Vec::new();
        };
        if cap.carries.is_empty() || plan.create.is_none() {
            return Vec::new();
        }
        let mut bodies = Vec::new();
        for (index, action) in fired.actions.iter().enumerate() {
            if !cap.carries.contains(&action.op) {
                continue;
            }
            // Rendered as `plan` shows it: the path names the customer still
            // unknown, the body must not.
            let Ok(mut request) = self.program.render_operation(
                &target.name,
                &action.op,
                &action.params,
                input,
                ev.info,
            ) else {
                continue;
            };
            if self
                .lookups
                .resolve(&self.lookup_ctx(target), target, &mut request)
                .await
                .is_err()
            {
                continue;
            }
            let Some(body) = request.body else { continue };
            let body_only = RequestPlan {
                method: request.method,
                url: String::new(),
                path: String::new(),
                query: None,
                body: Some(body.clone()),
            };
            if lookups::unresolved(&body_only).is_none() {
                bodies.push((index, body));
            }
        }
        bodies
    }

    /// An action the customer's create carried: what it would have taught
    /// is recorded, as if it had been its own call.
    async fn carried(
        &self,
        ev: &EventRef<'_>,
        (fired, action): (&FiredMapping, &ActionPlan),
        target: &Target,
        (id, sent_at): (&str, i64),
        body: &Value,
        journal: &mut Journal,
    ) {
        if let Some(op) = target.operations.get(&action.op) {
            self.record_answer(
                journal,
                target,
                op,
                id,
                &action.params,
                &Value::Null,
                (ev.occurred_at, sent_at),
            )
            .await;
            if let Some(tracks) = &op.tracks {
                let record = journal
                    .record_fields(&self.store, &target.name, id)
                    .await
                    .unwrap_or_default();
                let set = sync::tracked_set_after(tracks, Some(body), &record);
                journal.remember(
                    &target.name,
                    id,
                    Map::from_iter([(tracks.record.clone(), set)]),
                );
            }
        }
        journal.log(ev.entry(
            &fired.name,
            &target.name,
            &action.op,
            Some(id),
            format!("carried by create_customer: {}", compact(body)),
            Some(200),
            None,
        ));
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_action(
        &self,
        ev: &EventRef<'_>,
        fired: &FiredMapping,
        target: &Target,
        action: &ActionPlan,
        customer_id: Option<&str>,
        input: &PlanInput,
        journal: &mut Journal,
    ) -> Outcome {
        let log = |action: &str, request: String, status: Option<u16>, error: Option<String>| {
            ev.entry(
                &fired.name,
                &target.name,
                action,
                customer_id,
                request,
                status,
                error,
            )
        };
        let op = target.operations.get(&action.op);
        let mut params = std::borrow::Cow::Borrowed(&action.params);
        if let (Some(id), Some(op), Some(at)) = (customer_id, op, ev.occurred_at)
            && !self.describes(ev.source, &target.name)
        {
            let write = sync::Write {
                target: &target.name,
                op,
                params: &action.params,
                occurred_at: at,
            };
            let refused = match self.refusal(journal, target, id, &write).await {
                Ok(r) => r,
                Err(outcome) => return outcome,
            };
            if let Some(refusal) = refused {
                tracing::info!(event = ev.row, mapping = %fired.name, "{}", refusal.note);
                journal.log(log(refusal.action, refusal.note, None, None));
                match refusal.params {
                    None => return Outcome::Delivered,
                    Some(kept) => params = std::borrow::Cow::Owned(kept),
                }
            }
        }
        if let (Some(id), Some(op)) = (customer_id, op)
            && let Some(rule) = &op.coalesce
            && let Some(window) = self.coalesce_windows.get(&target.name)
        {
            let write = HeldWrite {
                connection: ev.connection.to_string(),
                target: target.name.clone(),
                record_id: id.to_string(),
                op: action.op.clone(),
                params: params.as_ref().clone(),
                mapping: fired.name.clone(),
                event_row: ev.row,
                occurred_at: ev.occurred_at,
            };
            let merge = |earlier: &Value, later: &Value| {
                sync::merge_held(&self.program, rule, earlier, later)
            };
            return match self
                .store
                .hold_write(&write, window.as_millis() as i64, merge)
                .await
            {
                Ok(held) => {
                    let note = format!(
                        "held to coalesce ({} write(s) so far); goes out at {} {}",
                        held.writes,
                        crate::store::format_ms(held.due_at),
                        compact(params.as_ref())
                    );
                    journal.log(log(&action.op, note, None, None));
                    Outcome::Delivered
                }
                Err(e) => Outcome::Transient {
                    error: format!("cannot hold a write to coalesce: {e}"),
                    retry_after: None,
                },
            };
        }
        let record = match customer_id {
            Some(id) => match journal.record_fields(&self.store, &target.name, id).await {
                Ok(r) => r,
                Err(e) => return Outcome::store(e),
            },
            None => Value::Null,
        };
        let mut request = match self
            .request(
                ev,
                target,
                action,
                &params,
                customer_id,
                input,
                journal,
                &record,
            )
            .await
        {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let tracks = op
            .and_then(|o| o.tracks.as_ref())
            .filter(|_| customer_id.is_some());
        if let Some(tracks) = tracks
            && !sync::tracked_body(tracks, request.body.as_mut(), &record)
        {
            journal.log(log(
                &action.op,
                format!(
                    "skipped: every value is already in the record's `{}`",
                    tracks.record
                ),
                None,
                None,
            ));
            return Outcome::Delivered;
        }
        let written = match (customer_id, op) {
            (Some(id), Some(op)) => Some(WrittenRecord {
                op,
                record_id: id,
                params: &params,
                occurred_at: ev.occurred_at,
            }),
            _ => None,
        };
        let summary = describe(&request);
        // A call the target applies every time (not idempotent) is marked
        // before it leaves; a mark an earlier attempt left means that
        // attempt may have applied it: it is reported, not sent again.
        let once = op
            .filter(|op| !op.idempotent)
            .map(|_| once_step(fired, action));
        if let Some(step) = &once {
            match self.store.sent_in_doubt(ev.row, step).await {
                Ok(Some(at)) => {
                    let note = format!(
                        "not sent again: an earlier attempt sent it at {} and its answer was never recorded; `{}` is not idempotent and `{}` offers no way to tell whether it was applied: {summary}",
                        crate::store::format_ms(at),
                        action.op,
                        target.name
                    );
                    tracing::warn!(event = ev.row, mapping = %fired.name, "{note}");
                    journal.log(log(&action.op, note, None, None));
                    journal.settle_send(ev.row, step);
                    return Outcome::Delivered;
                }
                Ok(None) => {}
                Err(e) => return Outcome::store(e),
            }
        }
        let mark = once.as_deref().map(|step| (ev.row, step));
        let (outcome, unanswered) = self
            .send_journaled(journal, target, &request, written, mark, |status, error| {
                log(&action.op, summary.clone(), status, error)
            })
            .await;
        if let Some(step) = &once
            && !unanswered
        {
            journal.settle_send(ev.row, step);
        }
        if let (Outcome::Delivered, Some(tracks), Some(id)) = (&outcome, tracks, customer_id) {
            let set = sync::tracked_set_after(tracks, request.body.as_ref(), &record);
            journal.remember(
                &target.name,
                id,
                Map::from_iter([(tracks.record.clone(), set)]),
            );
        }
        outcome
    }

    /// The fields of `write` that the owner of the record's fields refuses,
    /// judged against the mirrors of the sources describing the record.
    async fn refusal(
        &self,
        journal: &Journal,
        target: &Target,
        record_id: &str,
        write: &sync::Write<'_>,
    ) -> Result<Option<sync::Refusal>, Outcome> {
        let mirrors = self
            .mirrors_of(journal, target, record_id)
            .await
            .map_err(Outcome::store)?;
        Ok(sync::refused_fields(
            &self.program.templates,
            &self.program.owners,
            write,
            &mirrors,
        ))
    }

    /// Sends a rendered request and journals it: its sync-log entry (made
    /// by `entry` from the answer's status and error) and, when it
    /// succeeded on a known record, what the answer taught about it. Also
    /// says whether the request may have arrived unanswered (it may have
    /// been applied).
    ///
    /// `mark`: (event, step) of a call that is not idempotent, marked once
    /// the rate limiter let it go, just before it leaves.
    async fn send_journaled(
        &self,
        journal: &mut Journal,
        target: &Target,
        request: &RequestPlan,
        written: Option<WrittenRecord<'_>>,
        mark: Option<(i64, &str)>,
        entry: impl Fn(Option<u16>, Option<String>) -> SyncLogEntry,
    ) -> (Outcome, bool) {
        let before = async {
            match mark {
                Some((row, step)) => self
                    .store
                    .mark_sending(row, step)
                    .await
                    .map_err(|e| format!("cannot mark the call before it leaves: {e}")),
                None => Ok(()),
            }
        };
        let sent = self.http.send_timed_after(target, request, before).await;
        let (sent_at, took) = (sent.departed_at, sent.took_ms);
        match sent.answer {
            Answer::Ok(answer) => {
                if let Some(w) = written {
                    self.record_answer(
                        journal,
                        target,
                        w.op,
                        w.record_id,
                        w.params,
                        &answer,
                        (w.occurred_at, sent_at),
                    )
                    .await;
                }
                journal.log(entry(Some(200), None).took(took));
                (Outcome::Delivered, false)
            }
            Answer::Failed(failure) => {
                journal.log(entry(failure.status, Some(failure.error.clone())).took(took));
                let unanswered = failure.unanswered;
                (Outcome::from_failure(failure), unanswered)
            }
        }
    }

    /// The concrete request of an action: an operation rendered by the
    /// engine for the customer found, or a raw request with the customer's
    /// values put in; then the ids of lookups.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        ev: &EventRef<'_>,
        target: &Target,
        action: &ActionPlan,
        params: &Value,
        customer_id: Option<&str>,
        input: &PlanInput,
        journal: &Journal,
        record: &Value,
    ) -> Result<RequestPlan, Outcome> {
        let customer = match customer_id {
            Some(id) => self
                .customer_value(journal, target, id, record)
                .await
                .map_err(Outcome::store)?,
            None => Value::Object(Map::new()),
        };
        let mut request = if target.operations.contains_key(&action.op) {
            self.program
                .render_operation_for(&target.name, &action.op, params, input, ev.info, &customer)
                .map_err(|e| {
                    if e.0.contains("customer.") && customer_id.is_some() {
                        Outcome::Permanent(format!("{e} (not known for this customer yet)"))
                    } else {
                        Outcome::Permanent(e.0)
                    }
                })?
        } else {
            let mut raw = action.request.clone();
            put_customer(&mut raw, &customer);
            raw
        };
        self.lookups
            .resolve(&self.lookup_ctx(target), target, &mut request)
            .await?;
        if let Some(left) = lookups::unresolved(&request) {
            return Err(Outcome::Permanent(format!(
                "cannot resolve {left} (not known for this customer yet)"
            )));
        }
        Ok(request)
    }

    /// `customer` in an operation's templates at delivery: its id, what the
    /// sources describing the target last said of the record (their mirror)
    /// and what answers taught (`remember:`), the latter winning.
    async fn customer_value(
        &self,
        journal: &Journal,
        target: &Target,
        id: &str,
        record: &Value,
    ) -> Result<Value, StoreError> {
        let mut customer = Map::new();
        for mirror in self.mirrors_of(journal, target, id).await? {
            customer.extend(mirror.fields);
        }
        if let Value::Object(fields) = record {
            customer.extend(fields.clone());
        }
        customer.insert("id".into(), Value::String(id.to_string()));
        Ok(Value::Object(customer))
    }

    /// The mirrors of the sources whose webhooks describe `target`'s records, for one record.
    async fn mirrors_of(
        &self,
        journal: &Journal,
        target: &Target,
        id: &str,
    ) -> Result<Vec<MirrorRecord>, StoreError> {
        let mut mirrors = Vec::new();
        for src in self.describing(&target.name) {
            if let Some(m) = journal.mirror_of(&self.store, &src.name, id).await? {
                mirrors.push(m);
            }
        }
        Ok(mirrors)
    }

    fn describing<'a>(
        &'a self,
        target: &'a str,
    ) -> impl Iterator<Item = &'a crate::program::Source> + 'a {
        self.program
            .sources
            .values()
            .filter(move |s| s.describes.as_deref() == Some(target) && !s.mirror.is_empty())
    }

    /// Whether `source`'s webhooks describe `target`'s records: its events
    /// are never refused by the target's newer values (their own staleness
    /// is the mirror's business).
    fn describes(&self, source: &str, target: &str) -> bool {
        self.program
            .sources
            .get(source)
            .is_some_and(|s| s.describes.as_deref() == Some(target))
    }

    /// What a successful call of `op` taught about the record: what it now
    /// holds (`reflects:`, for its webhook to be an echo) and the answer's
    /// values kept for later requests (`remember:`).
    #[allow(clippy::too_many_arguments)]
    async fn record_answer(
        &self,
        journal: &mut Journal,
        target: &Target,
        op: &Operation,
        record_id: &str,
        params: &Value,
        answer: &Value,
        times: (Option<i64>, i64),
    ) {
        self.reflect(
            journal,
            target,
            record_id,
            &op.reflects,
            &[("params", params), ("answer", answer)],
            times,
        )
        .await;
        let kept: Map<String, Value> = op
            .remember
            .iter()
            .filter_map(|(name, path)| Some((name.clone(), path.select(answer)?)))
            .collect();
        journal.remember(&target.name, record_id, kept);
    }

    /// Records in the mirrors of the sources that describe `target` what a
    /// successful call made `record_id` hold, so its webhook is an echo.
    /// `times`: when what was written happened on the other side, and when
    /// the request left (see [`sync::apply_reflection`]).
    async fn reflect(
        &self,
        journal: &mut Journal,
        target: &Target,
        record_id: &str,
        reflects: &[(String, crate::template::StrTpl)],
        inputs: &[(&str, &Value)],
        times: (Option<i64>, i64),
    ) {
        if reflects.is_empty() {
            return;
        }
        let sources: Vec<String> = self
            .describing(&target.name)
            .map(|s| s.name.clone())
            .collect();
        for source in sources {
            let mirror = match journal.mirror_of(&self.store, &source, record_id).await {
                Ok(Some(m)) => Value::Object(m.fields),
                _ => Value::Object(Map::new()),
            };
            let values = sync::reflected_values(&self.program.templates, reflects, inputs, &mirror);
            journal.reflect(&source, record_id, values, times);
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
            Some(rule) => sync::merge_held(&self.program, rule, earlier, later),
            None => later.clone(),
        }
    }

    /// Sends one held (coalesced) write, writes its journal, and says how
    /// many calls it took.
    pub async fn flush(&self, write: &PendingWrite) -> (Outcome, u64) {
        match self.for_connection(&write.connection) {
            Ok(executor) if !std::ptr::eq(executor, self) => {
                return Box::pin(executor.flush(write)).await;
            }
            Ok(_) => {}
            Err(error) => {
                return (
                    Outcome::Paused {
                        error,
                        until: TENANT_WAIT,
                    },
                    0,
                );
            }
        }
        // The record is held while it is written, as a delivery holds it, so
        // the webhook the write causes is read against its reflection.
        let mut held = Vec::new();
        let mut keys = vec![customer::Locks::record_key(&write.target, &write.record_id)];
        for source in self.describing(&write.target) {
            match self
                .store
                .links_of(&write.connection, &source.name, &write.record_id)
                .await
            {
                Ok(links) => keys.extend(
                    links
                        .iter()
                        .map(|(target, id)| customer::Locks::record_key(target, id)),
                ),
                Err(e) => return (Outcome::store(e), 0),
            }
        }
        self.locks.hold(keys, &mut held).await;
        let mut journal = Journal::shared(&write.connection, &self.in_flight);
        let (mut outcome, calls) = counted(self.flush_write(write, &mut journal)).await;
        let settled = journal.clone();
        let written = self.journal.commit(journal).await;
        settled.settled();
        if let Err(e) = written {
            // What the write taught cannot be kept: send it again rather
            // than leave its log and reflections unwritten.
            outcome = Outcome::store(e);
        }
        (outcome, calls)
    }

    async fn flush_write(&self, write: &PendingWrite, journal: &mut Journal) -> Outcome {
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
        if let Some(at) = write.occurred_at
            && !self.describes(&origin, &target.name)
        {
            let check = sync::Write {
                target: &target.name,
                op,
                params: &write.params,
                occurred_at: at,
            };
            let refused = match self
                .refusal(journal, target, &write.record_id, &check)
                .await
            {
                Ok(r) => r,
                Err(outcome) => return outcome,
            };
            if let Some(refusal) = refused {
                let note = format!("while held: {}", refusal.note);
                journal.log(held_entry(write, refusal.action, note, None, None));
                match refusal.params {
                    Some(kept) => params = std::borrow::Cow::Owned(kept),
                    None => return Outcome::Delivered,
                }
            }
        }
        self.lookups.preload(&self.lookup_ctx(target), target).await;
        let input = PlanInput {
            env: self.env.clone(),
            mask_secrets: false,
            known: Value::clone(&self.lookups.known()),
            previous: None,
        };
        let record = match journal
            .record_fields(&self.store, &write.target, &write.record_id)
            .await
        {
            Ok(r) => r,
            Err(e) => return Outcome::store(e),
        };
        let customer = match self
            .customer_value(journal, target, &write.record_id, &record)
            .await
        {
            Ok(c) => c,
            Err(e) => return Outcome::store(e),
        };
        let mut request = match self.program.render_operation_for(
            &write.target,
            &write.op,
            &params,
            &input,
            &Value::Null,
            &customer,
        ) {
            Ok(r) => r,
            Err(e) => return Outcome::Permanent(e.0),
        };
        if let Err(outcome) = self
            .lookups
            .resolve(&self.lookup_ctx(target), target, &mut request)
            .await
        {
            return outcome;
        }
        if let Some(left) = lookups::unresolved(&request) {
            return Outcome::Permanent(format!(
                "cannot resolve {left} (not known for this customer yet)"
            ));
        }
        let summary = format!(
            "coalesced {} write(s) of event(s) {:?}: {}",
            write.writes,
            write.event_rows,
            describe(&request)
        );
        let written = WrittenRecord {
            op,
            record_id: &write.record_id,
            params: &params,
            occurred_at: write.occurred_at,
        };
        self.send_journaled(
            journal,
            target,
            &request,
            Some(written),
            None,
            |status, error| held_entry(write, &write.op, summary.clone(), status, error),
        )
        .await
        .0
    }

    fn lookup_ctx<'a>(&'a self, target: &Target) -> lookups::Ctx<'a> {
        lookups::Ctx {
            program: &self.program,
            http: &self.http,
            env: self.env_values.get(&target.name).unwrap_or(&Value::Null),
            store: &self.store,
            connection: &self.http.connection,
        }
    }
}

/// A write on one known record: what a successful answer is recorded against.
struct WrittenRecord<'a> {
    op: &'a Operation,
    record_id: &'a str,
    /// The parameters sent (after ownership refusals).
    params: &'a Value,
    /// When what was written happened on the other side.
    occurred_at: Option<i64>,
}

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

/// The name of an action's call within its event, for the marks of calls
/// that are not idempotent: its mapping, its place among the mapping's
/// actions and its operation.
fn once_step(fired: &FiredMapping, action: &ActionPlan) -> String {
    let index = fired
        .actions
        .iter()
        .position(|a| std::ptr::eq(a, action))
        .unwrap_or(0);
    format!("{}/{index}/{}", fired.name, action.op)
}

/// A sync log entry about a held write (logged against its latest event).
fn held_entry(
    write: &PendingWrite,
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
        took_ms: None,
    }
}

/// Puts the customer's values into a raw request's `${customer.NAME}`
/// placeholders: a string that is one placeholder alone takes the value with
/// its JSON type; one that embeds it has its text spliced in.
fn put_customer(request: &mut RequestPlan, customer: &Value) {
    fn text(v: &Value) -> String {
        scalar(v).unwrap_or_else(|| v.to_string())
    }
    fn walk(v: &mut Value, customer: &Value) {
        match v {
            Value::String(s) if s.contains("${customer.") => {
                if let Some(name) = s
                    .strip_prefix("${customer.")
                    .and_then(|r| r.strip_suffix('}'))
                    && !name.contains('}')
                    && let Some(found) = customer.get(name)
                {
                    *v = found.clone();
                    return;
                }
                let mut out = s.clone();
                if let Value::Object(fields) = customer {
                    for (name, value) in fields {
                        out = out.replace(&format!("${{customer.{name}}}"), &text(value));
                    }
                }
                *s = out;
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, customer)),
            Value::Object(map) => map.values_mut().for_each(|i| walk(i, customer)),
            _ => {}
        }
    }
    for part in [&mut request.query, &mut request.body]
        .into_iter()
        .flatten()
    {
        walk(part, customer);
    }
    let mut path = Value::String(request.path.clone());
    walk(&mut path, customer);
    let path = text(&path);
    request.url = request.url.replace(&request.path, &path);
    request.path = path;
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
    fn a_raw_request_takes_the_customer_values_with_their_types() {
        let mut request = RequestPlan {
            method: "POST".into(),
            url: "http://h/c/${customer.id}/x".into(),
            path: "/c/${customer.id}/x".into(),
            query: None,
            body: Some(
                json!({"id": "${customer.id}", "points": "${customer.points}", "note": "for ${customer.id}"}),
            ),
        };
        put_customer(&mut request, &json!({"id": "c1", "points": 40}));
        assert_eq!(request.path, "/c/c1/x");
        assert_eq!(request.url, "http://h/c/c1/x");
        assert_eq!(
            request.body,
            Some(json!({"id": "c1", "points": 40, "note": "for c1"}))
        );
    }
}
