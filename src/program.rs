//! The compiled form of a mapping set: what the interpreter runs.
//!
//! Everything here was checked by `config::compile`; selectors and templates
//! are compiled, `@field` aliases resolved, profiles chosen.

use crate::config::model::{EnvVar, Param, RateLimit, Settings, VerifySpec};
use crate::template::{StrTpl, Templates};

/// The parts of the mapping vocabulary the interpreter reads, named here so
/// that `engine` depends on the program alone, never on `config`.
pub use crate::config::model::{BodyFormat, BodySpec, Missing, Unmatched};
use crate::jsonpath::Selector;
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

/// A value tree whose strings may be templates.
#[derive(Debug, Clone)]
pub enum ValueTpl {
    Lit(Value),
    Str(StrTpl),
    List(Vec<ValueTpl>),
    Map(Vec<(String, ValueTpl)>),
    /// `{$each: "{{ list }}", $emit: …}`: one `$emit` per item, `item` bound to it.
    Each {
        over: StrTpl,
        emit: Box<ValueTpl>,
    },
}

/// A checked, compiled mapping set.
#[derive(Debug)]
pub struct Program {
    pub root: PathBuf,
    pub settings: Settings,
    pub sources: IndexMap<String, Source>,
    pub targets: IndexMap<String, Target>,
    /// In execution order: by `order`, then by name.
    pub mappings: Vec<Mapping>,
    /// (source, event) → indexes into `mappings`, in execution order.
    pub by_event: HashMap<(String, String), Vec<usize>>,
    /// Declared things to create on first use: target → lookup → key → declaration.
    pub provision: IndexMap<String, IndexMap<String, IndexMap<String, Value>>>,
    pub templates: Templates,
    /// Project `vars:`, seen by mapping templates as `vars`.
    pub vars: Value,
    /// Rules run on a clock over the mirror.
    pub schedules: Vec<Schedule>,
    /// Field (mirror name) → the target that owns it (`ownership:`).
    pub owners: HashMap<String, String>,
}

/// A compiled `schedules:` entry.
#[derive(Debug)]
pub struct Schedule {
    pub name: String,
    pub every: std::time::Duration,
    /// Whose mirror is read.
    pub source: String,
    pub when: StrTpl,
    pub event: String,
    pub reset_event: Option<String>,
}

/// The active profile of a source.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub profile: String,
    pub file: PathBuf,
    pub body: BodySpec,
    pub event_type: Selector,
    pub event_names: IndexMap<String, String>,
    pub default_event: Option<String>,
    pub event_id: Option<Selector>,
    pub dedup: Vec<Selector>,
    /// The customer id, which orders delivery and keys the mirror.
    pub customer: Vec<Selector>,
    /// What the mirror keeps, by name.
    pub mirror: Vec<(String, MirrorValue)>,
    /// The target whose records this source's customers are.
    pub describes: Option<String>,
    /// Webhooks carry the record's whole state (echo and stale apply).
    pub snapshots: bool,
    pub time: Option<Selector>,
    pub time_zone: Option<String>,
    pub attempt_field: Option<String>,
    pub verify: VerifySpec,
    /// Events that have a payload schema.
    pub events: Vec<String>,
    /// How its webhooks find their connection (`route:`).
    pub route: Option<Route>,
}

/// A source's `route:`: the connection of a webhook is the one whose
/// `variable` has the value `by` selects in its body.
#[derive(Debug, Clone)]
pub struct Route {
    pub by: Selector,
    pub variable: String,
}

/// The connection a webhook of an unknown tenant is kept under:
/// `VARIABLE=value` (never a connection's name: names have no `=`). The
/// worker delivers it once a connection with that value exists.
pub fn routed_connection(variable: &str, value: &str) -> String {
    format!("{variable}={value}")
}

impl Source {
    /// The inbox key that orders delivery of this customer's events:
    /// `<scope>:<id>`, the scope being the target the source describes (so
    /// GHL's contact and workflow webhooks share one order) or the source.
    pub fn ordering_key(&self, customer_id: &str) -> String {
        let scope = self.describes.as_deref().unwrap_or(&self.name);
        format!("{scope}:{customer_id}")
    }
}

/// The customer id inside an ordering key (see [`Source::ordering_key`]).
pub fn customer_of_ordering_key(key: &str) -> &str {
    key.split_once(':').map_or(key, |(_, id)| id)
}

/// How a mirror value is read from a payload.
#[derive(Debug)]
pub enum MirrorValue {
    /// Selectors; the first that finds a value wins.
    Paths(Vec<Selector>),
    /// A template over `payload`, `known` (ids of lookups) and `vars`: a
    /// custom field GHL sends by id, read by its key.
    Template(StrTpl),
}

/// The active profile of a target.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub profile: String,
    pub file: PathBuf,
    pub base_url: StrTpl,
    pub env: IndexMap<String, EnvVar>,
    pub headers: Vec<(String, StrTpl)>,
    pub rate_limit: Option<RateLimit>,
    /// How long one request may take.
    pub timeout: std::time::Duration,
    pub error_message: Option<Selector>,
    pub customer: Option<CustomerCapability>,
    pub lookups: IndexMap<String, Lookup>,
    pub operations: IndexMap<String, Operation>,
    /// How long writes of coalescing operations are held back (`coalesce.window`).
    pub coalesce_window: Option<std::time::Duration>,
}

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: StrTpl,
    pub query: Option<ValueTpl>,
    pub body: Option<ValueTpl>,
}

#[derive(Debug)]
pub struct CustomerCapability {
    pub link: String,
    pub find: IndexMap<String, (Request, Selector)>,
    pub create: Option<Create>,
}

#[derive(Debug)]
pub struct Create {
    pub request: Request,
    pub id: Selector,
    pub duplicate_id: Option<Selector>,
    /// What a successful create makes the record hold, by mirror name.
    pub reflects: Vec<(String, StrTpl)>,
    /// Operations whose body the create carries for a new customer.
    pub carries: Vec<String>,
}

#[derive(Debug)]
pub struct Lookup {
    pub list: Request,
    pub items: Selector,
    pub key: StrTpl,
    pub id: StrTpl,
    pub create: Option<Create>,
}

#[derive(Debug)]
pub struct Operation {
    pub needs_customer: bool,
    pub params: IndexMap<String, Param>,
    pub request: Request,
    /// Answer values kept for the customer's record.
    pub remember: Vec<(String, Selector)>,
    /// A set on the customer's record this operation keeps in step.
    pub tracks: Option<crate::config::model::Tracks>,
    /// What a successful call makes the record hold, by mirror name.
    pub reflects: Vec<(String, StrTpl)>,
    /// Reflected values computed from what the record holds (`mirror`): the
    /// call changes them (adds tags) rather than replacing them, so a newer
    /// value on the target never refuses it.
    pub relative: Vec<String>,
    /// How held writes merge; `None`: never held back.
    pub coalesce: Option<Coalesce>,
    /// Repeating a call may apply it twice (see the model's `idempotent`).
    pub idempotent: bool,
}

/// How two held writes of one operation to one record become one.
#[derive(Debug)]
pub struct Coalesce {
    /// Parameters a later write adds to the earlier one's.
    pub sum: Vec<String>,
    /// Over the later write's `params`: add only when true (always, when absent).
    pub sum_when: Option<StrTpl>,
}

impl Operation {
    /// The parameter a `reflects:` value is copied from, when it is a plain
    /// `{{ params.a.b }}`: leaving that parameter out leaves the value unwritten.
    pub fn reflected_param(&self, field: &str) -> Option<Vec<String>> {
        let (_, tpl) = self.reflects.iter().find(|(name, _)| name == field)?;
        let StrTpl::Var(steps) = tpl else { return None };
        let mut path = Vec::new();
        for step in steps {
            match step {
                crate::template::native::Step::Attr(a) => path.push(a.clone()),
                crate::template::native::Step::Index(_) => return None,
            }
        }
        (path.len() > 1 && path[0] == "params").then(|| path.split_off(1))
    }
}

/// One compiled mapping.
#[derive(Debug)]
pub struct Mapping {
    pub name: String,
    pub file: PathBuf,
    pub source: String,
    pub events: Vec<String>,
    pub when: Option<StrTpl>,
    pub order: Option<i64>,
    pub target: String,
    pub selects: Vec<Select>,
    pub customer: Option<CustomerMatch>,
    pub actions: Vec<Action>,
}

#[derive(Debug)]
pub struct Select {
    pub name: String,
    /// Tried in order; the first that finds something wins.
    pub paths: Vec<Selector>,
    pub missing: Missing,
    pub default: Option<Value>,
}

#[derive(Debug)]
pub struct CustomerMatch {
    /// The source whose link it is, when not the mapping's.
    pub link_source: Option<String>,
    pub link: Option<StrTpl>,
    pub keys: Vec<(String, StrTpl)>,
    pub when_unmatched: Unmatched,
}

#[derive(Debug)]
pub struct Action {
    pub op: String,
    pub when: Option<StrTpl>,
    pub params: ValueTpl,
    /// `http` actions carry their own request; others use the target operation's.
    pub raw_http: bool,
    /// Run only when this event created the customer on the target.
    pub only_if_created: bool,
}
