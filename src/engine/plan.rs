//! Evaluating a program against one event: which mappings fire, how the
//! customer is found, and the concrete requests each action sends.

use crate::program::{Action, Mapping, Program, Request, Source, Target, ValueTpl};
use crate::program::{Missing, Unmatched};
use crate::template::scope::Scope;
use crate::template::{EvalError, Templates, placeholder};
use minijinja::value::{Serde, Value as MjValue};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What the engine needs besides the payload. All of it comes from the caller:
/// the interpreter reads no environment, file or database itself.
#[derive(Debug, Default, Clone)]
pub struct PlanInput {
    /// Environment variables visible to target templates (`env.X`).
    pub env: BTreeMap<String, String>,
    /// Show secret variables as `***` (plans printed for people).
    pub mask_secrets: bool,
    /// Ids already known to lookups and customers: `{custom_field: {key: id}}`.
    pub known: Value,
    /// Last-known values of the customer (the local mirror).
    pub previous: Option<Value>,
}

/// Identity of an event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventInfo {
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Equal for redeliveries of the same event.
    pub dedup_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    /// The platform's customer id (`event.customer`): delivery order is kept per customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
}

/// The result of planning one event.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub event: EventInfo,
    /// No mapping is defined for this event (it is stored and can be replayed once one is).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unmapped: bool,
    /// Mappings that fired, in execution order.
    pub mappings: Vec<FiredMapping>,
    /// Mappings for this event that did not fire, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Mappings that failed for this record (e.g. a `missing: fail` value absent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RecordError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub mapping: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordError {
    pub mapping: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FiredMapping {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<i64>,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<CustomerPlan>,
    pub actions: Vec<ActionPlan>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_actions: Vec<SkippedAction>,
}

/// An action of a fired mapping that did not run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedAction {
    /// Position of the action in the mapping's `actions:` (0-based).
    pub index: usize,
    pub op: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CustomerPlan {
    /// Source-side customer id; a stored link for it is tried first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<Value>,
    /// The source the link belongs to, when not the event's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_source: Option<String>,
    /// Matching keys in priority order, normalised.
    #[serde(rename = "match")]
    pub keys: Vec<MatchKey>,
    pub when_unmatched: Unmatched,
    /// The searches the target would run, one per key, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub find: Vec<RequestPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create: Option<RequestPlan>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MatchKey {
    pub key: String,
    pub value: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionPlan {
    pub op: String,
    /// The evaluated parameters (read by the target's `reflects:` after the call).
    #[serde(skip)]
    pub params: Value,
    /// Run only when this event created the customer on the target.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub only_if_created: bool,
    pub request: RequestPlan,
    /// Fields left out because the value they use is missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<String>,
}

/// A concrete HTTP request; `${…}` marks values resolved at delivery time.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RequestPlan {
    pub method: String,
    pub url: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// Why an event could not be planned at all.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    UnknownSource(String),
    NoEventType { source: String, path: String },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::UnknownSource(s) => write!(f, "unknown source `{s}`"),
            PlanError::NoEventType { source, path } => write!(
                f,
                "payload has no event type: `{path}` (from source `{source}`) found nothing"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

fn to_mj(v: &Value) -> MjValue {
    MjValue::from(Serde(v))
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Program {
    /// The values an event gives the customer's mirror (`mirror:` of its
    /// source). `known` holds the lookup ids, as in `PlanInput`.
    pub fn mirror_values(
        &self,
        source: &str,
        payload: &Value,
        known: &Value,
    ) -> Map<String, Value> {
        let Some(src) = self.sources.get(source) else {
            return Map::new();
        };
        let mut scope = Scope::new();
        scope.set("payload", payload);
        scope.set("known", known);
        scope.set("vars", &self.vars);
        src.mirror
            .iter()
            .filter_map(|(name, how)| {
                let v = match how {
                    crate::program::MirrorValue::Paths(paths) => {
                        paths.iter().find_map(|p| p.select(payload))?
                    }
                    crate::program::MirrorValue::Template(tpl) => {
                        let v = self.templates.eval_scope(tpl, &scope).ok()?;
                        // An id not listed yet, or nothing found: no value, not an empty one.
                        match &v {
                            Value::String(s) if s.is_empty() || s.contains("${") => return None,
                            _ => v,
                        }
                    }
                };
                (!v.is_null()).then(|| (name.clone(), v))
            })
            .collect()
    }

    /// Identifies an event: type, id, de-duplication key, occurrence time.
    pub fn identify(&self, source: &str, payload: &Value) -> Result<EventInfo, PlanError> {
        let src = self
            .sources
            .get(source)
            .ok_or_else(|| PlanError::UnknownSource(source.to_string()))?;
        identify(src, payload, &self.settings.time_zone)
    }

    /// Plans one decoded payload.
    pub fn plan(
        &self,
        source: &str,
        payload: &Value,
        input: &PlanInput,
    ) -> Result<Plan, PlanError> {
        let event = self.identify(source, payload)?;
        let mut plan = Plan {
            event,
            unmapped: false,
            mappings: vec![],
            skipped: vec![],
            errors: vec![],
        };
        let Some(indexes) = self
            .by_event
            .get(&(source.to_string(), plan.event.event_type.clone()))
        else {
            plan.unmapped = true;
            return Ok(plan);
        };
        // Only the targets this event's mappings write to need their `env`.
        let mut env = std::collections::HashMap::new();
        for &i in indexes {
            let target = &self.mappings[i].target;
            if !env.contains_key(target)
                && let Some(t) = self.targets.get(target)
            {
                env.insert(target.clone(), self.env_value(t, input));
            }
        }
        let shared = Shared {
            event: serde_json::to_value(&plan.event).unwrap_or(Value::Null),
            env,
            customer: serde_json::json!({
                "id": placeholder("customer.id"),
                "card_id": placeholder("customer.card_id"),
            }),
            previous: input
                .previous
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
        };
        for &i in indexes {
            let m = &self.mappings[i];
            match self.run_mapping(m, payload, input, &shared) {
                Outcome::Fired(f) => plan.mappings.push(*f),
                Outcome::Skipped(reason) => plan.skipped.push(Skipped {
                    mapping: m.name.clone(),
                    reason,
                }),
                Outcome::Failed(error) => plan.errors.push(RecordError {
                    mapping: m.name.clone(),
                    error,
                }),
            }
        }
        Ok(plan)
    }

    fn run_mapping(
        &self,
        m: &Mapping,
        payload: &Value,
        input: &PlanInput,
        shared: &Shared,
    ) -> Outcome {
        let mut selected: Vec<(&str, Value)> = Vec::with_capacity(m.selects.len());
        for s in &m.selects {
            let found = s.paths.iter().find_map(|p| p.select(payload));
            match (found, &s.default, s.missing) {
                (Some(v), _, _) => selected.push((s.name.as_str(), v)),
                (None, Some(d), _) => selected.push((s.name.as_str(), d.clone())),
                (None, None, Missing::Fail) => {
                    let paths: Vec<&str> = s.paths.iter().map(|p| p.as_str()).collect();
                    return Outcome::Failed(format!(
                        "required value `{}` is missing: {} found nothing in the payload",
                        s.name,
                        paths.join(" | ")
                    ));
                }
                (None, None, Missing::Skip) => {}
            }
        }
        let mut scope = Scope::new();
        scope.set("event", &shared.event);
        scope.set("known", &input.known);
        scope.set("vars", &self.vars);
        scope.set("previous", &shared.previous);
        for (name, value) in &selected {
            scope.set(name, value);
        }
        let t = &self.templates;
        if let Some(when) = &m.when {
            match t.truthy_scope(when, &scope) {
                Ok(true) => {}
                Ok(false) => return Outcome::Skipped("condition `when` is false".into()),
                Err(e) => return Outcome::Failed(format!("condition `when`: {}", describe(&e))),
            }
        }
        let (Some(target), Some(env)) = (self.targets.get(&m.target), shared.env.get(&m.target))
        else {
            return Outcome::Failed(format!("target `{}` is not loaded", m.target));
        };
        let customer = match &m.customer {
            None => None,
            Some(c) => {
                let link = match &c.link {
                    Some(l) => match t.eval_scope(l, &scope) {
                        Ok(v) => Some(v),
                        Err(EvalError::Missing(_)) => None,
                        Err(e) => {
                            return Outcome::Failed(format!("customer link: {}", describe(&e)));
                        }
                    },
                    None => None,
                };
                let mut keys = Vec::new();
                for (key, tpl) in &c.keys {
                    match t.eval_scope(tpl, &scope) {
                        Ok(Value::Null) => {}
                        Ok(Value::String(s)) if s.trim().is_empty() => {}
                        Ok(j) => keys.push(MatchKey {
                            key: key.clone(),
                            value: j,
                        }),
                        Err(EvalError::Missing(_)) => {}
                        Err(e) => {
                            return Outcome::Failed(format!("match key `{key}`: {}", describe(&e)));
                        }
                    }
                }
                if keys.is_empty() && link.is_none() {
                    return Outcome::Skipped(
                        "no matching key has a value (all of them are missing or invalid), so the customer cannot be found"
                            .into(),
                    );
                }
                let (find, create) = match self.customer_requests(target, &keys, env, &input.known)
                {
                    Ok(r) => r,
                    Err(e) => return Outcome::Failed(e),
                };
                let can_create = c.when_unmatched == Unmatched::Create && !keys.is_empty();
                Some(CustomerPlan {
                    link,
                    link_source: c.link_source.clone(),
                    keys,
                    when_unmatched: c.when_unmatched,
                    find,
                    // Creating a contact needs something to create it with: a link alone only finds.
                    create: if can_create { create } else { None },
                })
            }
        };
        let mut fired = FiredMapping {
            name: m.name.clone(),
            order: m.order,
            target: m.target.clone(),
            customer,
            actions: vec![],
            skipped_actions: vec![],
        };
        for (index, a) in m.actions.iter().enumerate() {
            match self.run_action(a, target, &scope, env, input, shared) {
                Ok(Ok(plan)) => fired.actions.push(plan),
                Ok(Err(reason)) => fired.skipped_actions.push(SkippedAction {
                    index,
                    op: a.op.clone(),
                    reason,
                }),
                Err(e) => return Outcome::Failed(format!("action `{}`: {e}", a.op)),
            }
        }
        Outcome::Fired(Box::new(fired))
    }

    fn env_value(&self, target: &Target, input: &PlanInput) -> Value {
        let mut env = Map::new();
        for (name, decl) in &target.env {
            let value = if decl.secret && input.mask_secrets {
                "***".to_string()
            } else {
                input
                    .env
                    .get(name)
                    .cloned()
                    .or_else(|| decl.default.clone())
                    .unwrap_or_else(|| placeholder(&format!("env.{name}")))
            };
            env.insert(name.clone(), Value::String(value));
        }
        Value::Object(env)
    }

    fn customer_requests(
        &self,
        target: &Target,
        keys: &[MatchKey],
        env: &Value,
        known: &Value,
    ) -> Result<(Vec<RequestPlan>, Option<RequestPlan>), String> {
        let Some(cap) = &target.customer else {
            return Ok((vec![], None));
        };
        // A key listed twice (new phone, then old phone) creates with its first value.
        let mut keys_map = Map::new();
        for k in keys {
            keys_map
                .entry(k.key.clone())
                .or_insert_with(|| k.value.clone());
        }
        let keys_value = Value::Object(keys_map);
        let mut base = Scope::new();
        base.set("keys", &keys_value);
        base.set("env", env);
        base.set("known", known);
        let mut find = Vec::new();
        for k in keys {
            if let Some((req, _)) = cap.find.get(&k.key) {
                let mut scope = Scope::child(&base);
                scope.set("value", &k.value);
                find.push(self.render(target, req, &scope)?);
            }
        }
        let create = match &cap.create {
            Some(c) => Some(self.render(target, &c.request, &base)?),
            None => None,
        };
        Ok((find, create))
    }

    /// `Ok(Ok(plan))` fired; `Ok(Err(reason))` skipped; `Err` failed the record.
    fn run_action(
        &self,
        a: &Action,
        target: &Target,
        scope: &Scope,
        env: &Value,
        input: &PlanInput,
        shared: &Shared,
    ) -> Result<Result<ActionPlan, String>, String> {
        let t = &self.templates;
        if let Some(when) = &a.when {
            match t.truthy_scope(when, scope) {
                Ok(true) => {}
                Ok(false) => return Ok(Err("condition `when` is false".into())),
                Err(e) => return Err(format!("condition `when`: {}", describe(&e))),
            }
        }
        let mut omitted = Vec::new();
        let params = eval_value(t, &a.params, scope, &At::Root(""), &mut Some(&mut omitted))?
            .unwrap_or(Value::Object(Map::new()));
        if a.raw_http {
            let request = raw_request(t, target, &params, env)?;
            return Ok(Ok(ActionPlan {
                op: a.op.clone(),
                params: params.clone(),
                only_if_created: a.only_if_created,
                request,
                omitted,
            }));
        }
        let Some(op) = target.operations.get(&a.op) else {
            return Err(format!(
                "operation `{}` is not defined by target `{}`",
                a.op, target.name
            ));
        };
        for (name, p) in &op.params {
            if p.required && params.get(name).is_none_or(Value::is_null) {
                return Ok(Err(format!(
                    "required parameter `{name}` has no value (its source value is missing)"
                )));
            }
        }
        let mut req_scope = Scope::new();
        req_scope.set("params", &params);
        req_scope.set("customer", &shared.customer);
        req_scope.set("env", env);
        req_scope.set("known", &input.known);
        req_scope.set("event", &shared.event);
        // Optional parameters the mapping did not give drop out of the request
        // silently; only values the mapping asked for and could not get are reported.
        let request = self.render(target, &op.request, &req_scope)?;
        Ok(Ok(ActionPlan {
            op: a.op.clone(),
            params: params.clone(),
            only_if_created: a.only_if_created,
            request,
            omitted,
        }))
    }

    /// The request of operation `op` of `target` for `params`, with the
    /// customer's ids left as placeholders: what `plan` shows.
    pub fn render_operation(
        &self,
        target: &str,
        op: &str,
        params: &Value,
        input: &PlanInput,
        event: &Value,
    ) -> Result<RequestPlan, RenderError> {
        let customer = serde_json::json!({
            "id": placeholder("customer.id"),
            "card_id": placeholder("customer.card_id"),
        });
        self.render_operation_for(target, op, params, input, event, &customer)
    }

    /// The request of operation `op` of `target` for `params`, for a
    /// customer delivery has found: `customer` holds its id and what is
    /// known of its record (the mirror of the source describing the target,
    /// and values earlier answers taught). What delivery sends.
    pub fn render_operation_for(
        &self,
        target: &str,
        op: &str,
        params: &Value,
        input: &PlanInput,
        event: &Value,
        customer: &Value,
    ) -> Result<RequestPlan, RenderError> {
        let Some(t) = self.targets.get(target) else {
            return Err(RenderError(format!("target `{target}` is not defined")));
        };
        let Some(operation) = t.operations.get(op) else {
            return Err(RenderError(format!(
                "operation `{op}` is not defined by target `{target}`"
            )));
        };
        let env = self.env_value(t, input);
        let mut scope = Scope::new();
        scope.set("params", params);
        scope.set("customer", customer);
        scope.set("env", &env);
        scope.set("known", &input.known);
        scope.set("event", event);
        self.render_request(t, &operation.request, &scope)
    }

    /// Renders one request of a target (an operation's, a lookup's listing
    /// or creation) in `scope`: the one renderer of requests.
    pub fn render_request(
        &self,
        target: &Target,
        req: &Request,
        scope: &Scope,
    ) -> Result<RequestPlan, RenderError> {
        self.render(target, req, scope).map_err(RenderError)
    }

    fn render(&self, target: &Target, req: &Request, scope: &Scope) -> Result<RequestPlan, String> {
        let t = &self.templates;
        let path = match t.eval_scope(&req.path, scope) {
            Ok(Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(e) => return Err(format!("request path: {}", describe(&e))),
        };
        let query = match &req.query {
            Some(q) => eval_value(t, q, scope, &At::Root("query"), &mut None)?,
            None => None,
        };
        let body = match &req.body {
            Some(b) => eval_value(t, b, scope, &At::Root("body"), &mut None)?,
            None => None,
        };
        let base = self.base_url(target, scope)?;
        Ok(RequestPlan {
            method: req.method.clone(),
            url: join_url(&base, &path),
            path,
            query,
            body,
        })
    }

    fn base_url(&self, target: &Target, scope: &Scope) -> Result<String, String> {
        match self.templates.eval_scope(&target.base_url, scope) {
            Ok(Value::String(s)) => Ok(s),
            Ok(other) => Ok(other.to_string()),
            Err(e) => Err(format!("base_url: {}", describe(&e))),
        }
    }
}

fn raw_request(
    t: &Templates,
    target: &Target,
    params: &Value,
    env: &Value,
) -> Result<RequestPlan, String> {
    let method = params
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("POST")
        .to_ascii_uppercase();
    let path = params
        .get("path")
        .and_then(Value::as_str)
        .ok_or("`http` needs a `path` string")?
        .to_string();
    let mut scope = Scope::new();
    scope.set("env", env);
    let base = match t.eval_scope(&target.base_url, &scope) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => return Err(format!("base_url: {}", describe(&e))),
    };
    Ok(RequestPlan {
        method,
        url: join_url(&base, &path),
        path,
        query: params.get("query").cloned(),
        body: params.get("body").cloned(),
    })
}

fn join_url(base: &str, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        return path.to_string();
    }
    let mut url = String::with_capacity(base.len() + path.len() + 1);
    url.push_str(base.trim_end_matches('/'));
    url.push('/');
    url.push_str(path.trim_start_matches('/'));
    url
}

/// A request that cannot be rendered: what is missing or failed, in words.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// What every mapping of one plan shares, computed once.
struct Shared {
    event: Value,
    /// `env` of each target, by target name.
    env: std::collections::HashMap<String, Value>,
    /// `customer` in operation templates: placeholders resolved at delivery.
    customer: Value,
    previous: Value,
}

enum Outcome {
    Fired(Box<FiredMapping>),
    Skipped(String),
    Failed(String),
}

fn describe(e: &EvalError) -> String {
    match e {
        EvalError::Missing(what) if what.is_empty() => "a value it needs is missing".to_string(),
        EvalError::Missing(what) => format!("missing value ({what})"),
        EvalError::Failed(msg) => msg.clone(),
    }
}

/// Where a value sits in a tree; rendered only when something is omitted or fails.
#[derive(Clone, Copy)]
pub enum At<'a> {
    Root(&'a str),
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Root(name) => f.write_str(name),
            At::Key(parent, key) => {
                let before = parent.to_string();
                if before.is_empty() {
                    f.write_str(key)
                } else {
                    write!(f, "{before}.{key}")
                }
            }
            At::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Evaluates a value tree. `Ok(None)` means "omitted" (a value it needs is missing).
pub(crate) fn eval_value(
    t: &Templates,
    tpl: &ValueTpl,
    scope: &Scope,
    at: &At<'_>,
    omitted: &mut Option<&mut Vec<String>>,
) -> Result<Option<Value>, String> {
    Ok(match tpl {
        ValueTpl::Lit(v) => Some(v.clone()),
        ValueTpl::Str(s) => match t.eval_scope(s, scope) {
            Ok(Value::Null) => None,
            Ok(v) => Some(v),
            Err(EvalError::Missing(_)) => {
                if let Some(list) = omitted {
                    list.push(at.to_string());
                }
                None
            }
            Err(EvalError::Failed(msg)) => return Err(format!("`{at}`: {msg}")),
        },
        ValueTpl::List(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if let Some(v) = eval_value(t, item, scope, &At::Index(at, i), omitted)? {
                    out.push(v);
                }
            }
            Some(Value::Array(out))
        }
        ValueTpl::Map(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                if let Some(v) = eval_value(t, v, scope, &At::Key(at, k), omitted)? {
                    out.insert(k.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        ValueTpl::Each { over, emit } => {
            let items = match t.eval_scope(over, scope) {
                Ok(Value::Array(items)) => items,
                Ok(other) => return Err(format!("`{at}`: `$each` needs a list, found {other}")),
                Err(EvalError::Missing(_)) => {
                    if let Some(list) = omitted {
                        list.push(at.to_string());
                    }
                    return Ok(None);
                }
                Err(EvalError::Failed(msg)) => return Err(format!("`{at}`: {msg}")),
            };
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let mut item_scope = Scope::child(scope);
                item_scope.set("item", item);
                if let Some(v) = eval_value(t, emit, &item_scope, &At::Index(at, i), omitted)? {
                    out.push(v);
                }
            }
            Some(Value::Array(out))
        }
    })
}

fn identify(src: &Source, payload: &Value, default_tz: &str) -> Result<EventInfo, PlanError> {
    let raw_type = src
        .event_type
        .select(payload)
        .as_ref()
        .and_then(scalar_string)
        // A blank type names no event: it could never be mapped or replayed.
        .filter(|t| !t.trim().is_empty())
        .or_else(|| src.default_event.clone())
        .ok_or_else(|| PlanError::NoEventType {
            source: src.name.clone(),
            path: src.event_type.as_str().to_string(),
        })?;
    let event_type = src.event_names.get(&raw_type).cloned().unwrap_or(raw_type);
    let id = src
        .event_id
        .as_ref()
        .and_then(|p| p.select(payload))
        .as_ref()
        .and_then(scalar_string);
    let tz = src.time_zone.as_deref().unwrap_or(default_tz);
    let occurred_at = src
        .time
        .as_ref()
        .and_then(|p| p.select(payload))
        .and_then(|v| {
            crate::template::filters::parse_timestamp(&to_mj(&v), tz)
                .map(|dt| dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        });
    let dedup_key = match &id {
        Some(id) => format!("{}:{}:{}", src.name, event_type, id),
        None => {
            let mut hasher = Sha256::new();
            let parts: Vec<Option<Value>> = src.dedup.iter().map(|p| p.select(payload)).collect();
            if parts.iter().all(Option::is_none) {
                // No id and no declared key in this body (or none declared):
                // the body itself, minus the attempt counter. Hashing the
                // empty parts would make every such event of the type one
                // duplicate of the first.
                let mut body = payload.clone();
                if let (Some(field), Some(obj)) = (&src.attempt_field, body.as_object_mut()) {
                    obj.remove(field);
                }
                hasher.update(body.to_string().as_bytes());
            } else {
                for part in parts {
                    let part = part.map(|v| v.to_string()).unwrap_or_default();
                    hasher.update(part.as_bytes());
                    hasher.update([0u8]);
                }
            }
            let digest = hasher.finalize();
            format!("{}:{}:{}", src.name, event_type, hex::encode(&digest[..12]))
        }
    };
    let customer = src
        .customer
        .iter()
        .find_map(|p| p.select(payload).as_ref().and_then(scalar_string))
        .filter(|c| !c.is_empty());
    Ok(EventInfo {
        source: src.name.clone(),
        event_type,
        id,
        dedup_key,
        occurred_at,
        customer,
    })
}
