//! The files of a mapping set, as written by hand.
//!
//! Four kinds of file live in a mapping folder, told apart by their first key:
//! `settings:` (the project file, `mapper.yaml`), `source:` (how a platform's
//! webhooks look), `target:` (how an API is called), `mappings:` (what to do
//! with an event) and `tests:` (mapping test cases). These structs derive
//! their JSON Schema; `mapper schema` prints it.

use super::node::Node;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A string, or a list of strings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

// ---------------------------------------------------------------- project

/// `mapper.yaml`: which profiles are active and set-wide defaults.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// Defaults used by filters and the engine.
    pub settings: Settings,
    /// The active profile of each source and target (`name: profile`).
    /// Switching a platform's API or payload shape is this one line.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    pub profiles: IndexMap<String, Spanned<String>>,
    /// Constants the mappings read as `vars.<name>` (e.g. a card template id).
    #[serde(default)]
    pub vars: IndexMap<String, serde_json::Value>,
    /// Named things the engine creates on first use, per target and lookup:
    /// `ghl: { custom_field: { loyalty_points: { name: Loyalty Points, data_type: NUMERICAL } } }`.
    #[serde(default)]
    pub provision: IndexMap<String, IndexMap<String, IndexMap<String, Node>>>,
    /// Rules run on a clock over the customer mirror instead of on a webhook.
    #[serde(default)]
    pub schedules: Vec<ScheduleSpec>,
    /// The side that owns each synced field, by target: `ghl: [email, phone]`.
    /// Field names are the mirror names of the source that describes the
    /// target. A write to the owner from another side's event that happened
    /// before the owner's last change of the field is refused for that field
    /// and logged as a conflict; the owner's own changes always go through.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, Vec<String>>")]
    pub ownership: IndexMap<String, Vec<Spanned<String>>>,
}

/// A rule run every `every` over the mirror of one source's customers. For
/// each customer it raises an event of the built-in `schedule` source that
/// mappings handle like any webhook: `event` when `when` starts holding and
/// again whenever `inactive_days` moves while it holds, `reset_event` once
/// when it stops holding.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Tick length: `30s`, `15m`, `1h`, `1d`.
    #[schemars(with = "String")]
    pub every: Spanned<String>,
    /// The source whose customers' mirror is read.
    #[schemars(with = "String")]
    pub source: Spanned<String>,
    /// Condition over `fields` (the mirror), `last_activity` (RFC 3339),
    /// `inactive_days` (whole days since the last activity), `customer_id`, `vars`.
    #[schemars(with = "String")]
    pub when: Spanned<String>,
    /// Event raised when `when` starts holding, and when `inactive_days` moves while it holds.
    pub event: String,
    /// Event raised once when `when` stops holding for a customer it held for.
    #[serde(default)]
    pub reset_event: Option<String>,
}

/// Set-wide defaults.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Region used by the `e164` filter for numbers written without a country code (ISO 3166 alpha-2).
    #[serde(default = "default_region")]
    pub phone_region: String,
    /// Time zone for timestamps that carry none (IANA name), unless a source says otherwise.
    #[serde(default = "default_tz")]
    pub time_zone: String,
}

fn default_region() -> String {
    "US".into()
}
fn default_tz() -> String {
    "UTC".into()
}

// ---------------------------------------------------------------- sources

/// A source profile: how one platform's webhooks are encoded, identified and verified.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// Source name, used in mappings and in the webhook route `/webhooks/{source}`.
    #[schemars(with = "String")]
    pub source: Spanned<String>,
    /// Profile name; `mapper.yaml` `profiles:` picks one per source (default `default`).
    #[serde(default = "default_profile")]
    #[schemars(with = "String")]
    pub profile: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Folder of the payload JSON Schemas, one `<Event>.schema.json` per event, relative to this file.
    #[schemars(with = "String")]
    pub schemas: Spanned<String>,
    #[serde(default)]
    pub body: BodySpec,
    pub event: EventSpec,
    pub verify: VerifySpec,
    /// Named selectors that mappings use as `@name`, so one mapping serves every profile of the source.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, OneOrMany>")]
    pub fields: IndexMap<String, Spanned<OneOrMany>>,
    /// What the local mirror keeps of each customer (`event.customer`): name →
    /// selectors or `@field`s, tried in order. Updated after each delivered
    /// event, field by field, never with an older event's value.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, OneOrMany>")]
    pub mirror: IndexMap<String, Spanned<OneOrMany>>,
    /// The target whose records this source's customers are (GHL's webhooks
    /// describe GHL contacts): their mirror values also refresh what the
    /// engine knows of that record, e.g. the tags a person removed by hand.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub describes: Option<Spanned<String>>,
    /// Each webhook carries the record's whole current state (GHL's contact
    /// webhooks), rather than reporting something that happened (a payment).
    /// Then one that changes nothing just after mapper wrote the record is an
    /// echo, and one whose changes are all older than what is applied is
    /// stale: neither is synced.
    #[serde(default)]
    pub snapshots: bool,
    /// Which connection (tenant) a webhook posted to `/webhooks/{source}`
    /// is for, read from its body: GHL's webhooks name their location. A
    /// webhook whose value no connection has is stored `unmapped` with
    /// that reason, never delivered by another tenant.
    #[serde(default)]
    pub route: Option<RouteSpec>,
}

/// A source's webhooks route themselves to a connection: the one whose
/// `variable` has the value `by` selects.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// JSONPath of the value, e.g. `$.locationId`.
    #[schemars(with = "String")]
    pub by: Spanned<String>,
    /// The variable a connection holds that value in, e.g. `GHL_LOCATION_ID`.
    pub variable: String,
}

pub fn default_profile() -> Spanned<String> {
    Spanned {
        value: "default".into(),
        referenced: serde_saphyr::Location::UNKNOWN,
        defined: serde_saphyr::Location::UNKNOWN,
    }
}

/// How the webhook body is encoded.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodySpec {
    #[serde(default)]
    pub format: BodyFormat,
    /// With `format: form`, the form field that holds the JSON document.
    #[serde(default)]
    pub field: Option<String>,
    /// Accept single-quoted strings, as some platforms' samples use.
    #[serde(default)]
    pub lenient: bool,
    /// Largest accepted body in bytes (default 1 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    #[default]
    Json,
    /// `application/x-www-form-urlencoded` with the JSON inside one field.
    Form,
}

/// Where the event's type, id and time are.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// Selector of the event type.
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub type_path: Spanned<String>,
    /// Event type used when the `type` selector finds nothing (GHL workflow webhooks carry none).
    #[serde(default)]
    pub default: Option<String>,
    /// Renames raw type values (e.g. SignalMind's `T` → `Transaction`).
    #[serde(default)]
    pub names: IndexMap<String, String>,
    /// Selector of the platform's event id, when it sends one.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub id: Option<Spanned<String>>,
    /// Selectors whose values, with the event type, form the de-duplication key when there is no id.
    /// Without either, the key is a hash of the body.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub dedup: Vec<Spanned<String>>,
    /// Selector of the occurrence time.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub time: Option<Spanned<String>>,
    /// Selectors of the platform's customer id, tried in order. Events of one
    /// customer are delivered one at a time in arrival order; different
    /// customers in parallel. Without it (or when none finds a value) an
    /// event has no ordering constraint.
    #[serde(default)]
    #[schemars(with = "Option<OneOrMany>")]
    pub customer: Option<Spanned<OneOrMany>>,
    /// Time zone of timestamps without an offset (IANA name).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Fields that only say which delivery attempt this is, left out of the body hash.
    #[serde(default)]
    pub attempt: Option<String>,
}

/// How a webhook proves it comes from the platform. Enforced by `mapper serve`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    pub method: VerifyMethod,
    /// Environment variable holding the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Header carrying the token or signature.
    #[serde(default)]
    pub header: Option<String>,
    /// Query parameter carrying the token.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub algorithm: Option<HmacAlgorithm>,
    #[serde(default)]
    pub encoding: Option<SignatureEncoding>,
    /// Text before the signature in the header (e.g. `sha256=`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// What is signed: the raw body, or the raw value of one form field.
    #[serde(default)]
    pub signed: Option<SignedPart>,
    #[serde(default)]
    pub timestamp_header: Option<String>,
    #[serde(default)]
    pub tolerance_seconds: Option<u64>,
    /// Environment variables overriding built-in public keys (GHL).
    #[serde(default)]
    pub public_key_env: Option<String>,
    #[serde(default)]
    pub rsa_public_key_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMethod {
    /// Accept anything. Must be said explicitly.
    None,
    /// A shared secret in a header or query parameter.
    Token,
    /// HMAC of the body.
    Hmac,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    StandardWebhooks,
    /// GoHighLevel marketplace webhooks (Ed25519 `x-ghl-signature`, legacy RSA `x-wh-signature`).
    Ghl,
    /// Events mapper raises itself (`schedules:`): never accepted over HTTP.
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    Sha256,
    Md5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignedPart {
    /// The raw body, as received.
    Body,
    /// The raw value of this form field.
    FormField(String),
}

// ---------------------------------------------------------------- targets

/// A target profile: one REST API, declared as request templates.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    #[schemars(with = "String")]
    pub target: Spanned<String>,
    #[serde(default = "default_profile")]
    #[schemars(with = "String")]
    pub profile: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Base URL template, e.g. `{{ env.GHL_API_BASE_URL }}`.
    #[schemars(with = "String")]
    pub base_url: Spanned<String>,
    /// Environment variables the profile reads.
    #[serde(default)]
    pub env: IndexMap<String, EnvVar>,
    /// Headers sent with every request (templates; auth goes here).
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    pub headers: IndexMap<String, Spanned<String>>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Seconds a request may take before it counts as failed (and is retried); default 20.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Where the error message is in an error response.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub error_message: Option<Spanned<String>>,
    /// Find-or-create of the customer record, with a cached link.
    #[serde(default)]
    pub customer: Option<CustomerCapability>,
    /// Id lookups by name, cached, optionally creating what is missing.
    #[serde(default)]
    pub lookups: IndexMap<String, LookupSpec>,
    #[serde(default)]
    pub operations: IndexMap<String, Operation>,
    /// Operations this API cannot do, with the reason `mapper check` reports.
    #[serde(default)]
    pub unsupported: IndexMap<String, String>,
    /// Writes held back per customer record and merged over a window, then
    /// sent as one call (operations say how they merge with `coalesce:`).
    #[serde(default)]
    pub coalesce: Option<CoalesceSpec>,
}

/// How long a target's writes are held back to be merged.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoalesceSpec {
    /// From the first held write to the call: `5m`, `30s`; `0s` sends every write at once.
    /// `mapper serve --coalesce-window` overrides it.
    #[schemars(with = "String")]
    pub window: Spanned<String>,
}

/// How two held writes of one operation to one record become one.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OpCoalesce {
    /// `latest`: parameter by parameter, the later write's value wins.
    Keyword(CoalesceKeyword),
    Rules(CoalesceRules),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CoalesceKeyword {
    Latest,
}

/// Merge rules beyond "the later value wins".
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoalesceRules {
    /// Parameters a later write adds to the earlier one's (a balance delta)
    /// instead of replacing; the other parameters of the earlier write stay.
    #[serde(default)]
    pub sum: Vec<String>,
    /// Condition over the later write's `params`: only then is it added
    /// (`params.mode == 'add'`); otherwise it replaces, as with `latest`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub sum_when: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    #[serde(default)]
    pub description: Option<String>,
    /// Used when the variable is unset; a variable with no default is required at run time.
    #[serde(default)]
    pub default: Option<String>,
    /// Never printed (plans and logs show `***`).
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// Window length in seconds.
    pub per_seconds: u32,
    /// Requests allowed per day, if the API has a daily budget.
    #[serde(default)]
    pub daily: Option<u32>,
    /// What the budget is counted per (`location` for GHL).
    #[serde(default)]
    pub per: Option<String>,
}

/// One HTTP request, as templates.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[schemars(with = "String")]
    pub method: Spanned<String>,
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    #[serde(default)]
    pub query: Option<Node>,
    #[serde(default)]
    pub body: Option<Node>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerCapability {
    /// Name of the link in the local mirror (e.g. `ghl_contact_id`).
    pub link: String,
    /// Searches by matching key, tried in the mapping's key order.
    #[serde(default)]
    pub find: IndexMap<String, FindSpec>,
    #[serde(default)]
    pub create: Option<CreateSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FindSpec {
    pub request: RequestSpec,
    /// Selector of the found id in the response; nothing found means no match.
    #[schemars(with = "String")]
    pub id: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSpec {
    pub request: RequestSpec,
    #[schemars(with = "String")]
    pub id: Spanned<String>,
    /// Selector of the existing id in a "duplicate" error answer.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub duplicate_id: Option<Spanned<String>>,
    /// As an operation's `reflects:`, over `keys` (the match keys), `answer` and `mirror`.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    pub reflects: IndexMap<String, Spanned<String>>,
    /// Operations whose request body a customer create carries (the API's
    /// create takes the same fields): when a mapping creates the customer,
    /// its actions of these operations are sent inside the create instead of
    /// as calls of their own.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub carries: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    #[serde(default)]
    pub description: Option<String>,
    /// Lists every item (answered once, then cached).
    pub list: RequestSpec,
    /// Selector of the items in the list response.
    #[schemars(with = "String")]
    pub items: Spanned<String>,
    /// Template giving an item's key (`item` is the item).
    #[schemars(with = "String")]
    pub key: Spanned<String>,
    /// Template giving an item's id.
    #[schemars(with = "String")]
    pub id: Spanned<String>,
    /// Creates a missing item from its `provision` declaration (`item`).
    #[serde(default)]
    pub create: Option<CreateSpec>,
}

/// One operation of a target API.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub description: Option<String>,
    /// The operation acts on a resolved customer (`customer.id` in templates).
    #[serde(default)]
    pub needs_customer: bool,
    #[serde(default)]
    pub params: IndexMap<String, Param>,
    /// Parameters the API has no field for, with the reason.
    #[serde(default)]
    pub unsupported_params: IndexMap<String, String>,
    pub request: RequestSpec,
    /// Values of the answer kept for the customer's record (`card_id: $.id`),
    /// read by later requests as `customer.<name>`.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    pub remember: IndexMap<String, Spanned<String>>,
    /// Keeps a set on the customer's record in step with this operation
    /// (tags): values already known are not sent again.
    #[serde(default)]
    pub tracks: Option<Tracks>,
    /// What the record holds after a successful call, in the mirror names of
    /// the sources that `describes:` this target (templates over `params`,
    /// `answer` and `mirror`, the current mirror). The webhook the call
    /// causes then brings nothing new, and is recorded as an echo.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    pub reflects: IndexMap<String, Spanned<String>>,
    /// Hold this operation's writes back and merge them (when the target
    /// declares `coalesce:`); absent, every write goes out at once.
    #[serde(default)]
    pub coalesce: Option<OpCoalesce>,
    /// `false` for a call the API applies every time it receives it, with no
    /// way to ask whether it did (GHL's notes): once such a call may have
    /// reached the API without its answer being recorded (a timeout, a
    /// crash), it is not sent again, and the sync log says so. Default
    /// `true`: a call is repeated until its answer is known.
    #[serde(default = "idempotent_by_default")]
    pub idempotent: bool,
}

fn idempotent_by_default() -> bool {
    true
}

/// How an operation changes a set kept on the customer's record.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tracks {
    /// The record field holding the set (`tags`).
    pub record: String,
    /// The top-level body field carrying the list this request sends (`tags`).
    pub list: String,
    /// `add`: values the record already has are left out of the request, and
    /// the call is skipped when none is left; on success the rest join the
    /// set. `remove`: always sent (the record may not know everything the
    /// target has); on success they leave the set.
    pub mode: TrackMode,
    /// Compare without case (GHL lowercases tags).
    #[serde(default)]
    pub fold_case: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrackMode {
    Add,
    Remove,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Param {
    #[serde(default)]
    pub required: bool,
    #[serde(default, rename = "type")]
    pub kind: ParamKind,
    #[serde(default)]
    pub description: Option<String>,
    /// Allowed values.
    #[serde(default, rename = "enum")]
    pub one_of: Option<Vec<serde_json::Value>>,
    /// For a `map` whose keys name things of a lookup (custom fields): the lookup.
    #[serde(default)]
    pub keys_from: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    #[default]
    Any,
    String,
    Number,
    Integer,
    Boolean,
    List,
    Map,
}

// ---------------------------------------------------------------- mappings

/// A file of mappings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// A place for YAML anchors (`&name`) reused by the mappings below; not read otherwise.
    #[serde(default)]
    pub shared: Option<Node>,
    pub mappings: Vec<Mapping>,
}

/// What to do on a target when a source event arrives.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Unique name, shown in plans and logs.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[schemars(with = "String")]
    pub source: Spanned<String>,
    /// Event type, or a list of them.
    #[schemars(with = "OneOrMany")]
    pub event: Spanned<OneOrMany>,
    /// Condition over the selected values; the mapping fires only when it is true.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
    /// Position among the mappings that fire for the same event and target (lower first).
    #[serde(default)]
    pub order: Option<i64>,
    #[schemars(with = "String")]
    pub target: Spanned<String>,
    /// Named values taken from the payload.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, SelectSpec>")]
    pub select: IndexMap<String, Spanned<SelectSpec>>,
    /// How the customer is found on the target.
    #[serde(default)]
    pub customer: Option<CustomerSpec>,
    /// The profiles this mapping is written for, by source or target name
    /// (`{ stickycards: [seed] }`); under any other it is left out. Without
    /// it, `mapper check` holds the mapping to every profile.
    #[serde(default)]
    pub profiles: IndexMap<String, Vec<String>>,
    pub actions: Vec<Action>,
}

/// A selector, or a selector with what to do when it finds nothing.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SelectSpec {
    /// `$.json.path`, `@field`, or a list of them (first that finds something).
    Path(OneOrMany),
    Full(SelectFull),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectFull {
    pub from: OneOrMany,
    /// What happens when nothing is found: `skip` (default: the value is
    /// absent, fields using it are left out) or `fail` (the event fails with an error).
    #[serde(default)]
    pub missing: Missing,
    /// Value used when nothing is found.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    #[default]
    Skip,
    Fail,
}

/// Which identifiers find the customer, in priority order.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerSpec {
    /// Template of the source-side customer id; a stored link for it is used first.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub link: Option<Spanned<String>>,
    /// Matching keys in priority order: `- phone: "{{ phone | e164 }}"`.
    #[serde(default, rename = "match")]
    #[schemars(with = "Vec<IndexMap<String, String>>")]
    pub match_keys: Vec<IndexMap<String, Spanned<String>>>,
    /// What to do when no key matches.
    #[serde(default)]
    pub when_unmatched: Unmatched,
    /// The source whose stored link `link` is (default: the mapping's own).
    /// A `schedule` event about a Sticky Cards customer uses its link:
    /// `link_source: stickycards`.
    #[serde(default)]
    pub link_source: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    #[default]
    Create,
    Skip,
}

/// One operation call.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Operation of the target profile, or `http` for a raw request.
    #[schemars(with = "String")]
    pub op: Spanned<String>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
    /// Parameters of the operation.
    #[serde(default, rename = "with")]
    pub params: Option<Node>,
    /// Drop this action (with a warning) when the active profile cannot do it,
    /// instead of failing `mapper check`.
    #[serde(default)]
    pub if_supported: bool,
    /// Run only when this event created the customer on the target (e.g. issue a card to a new customer).
    #[serde(default)]
    pub only_if_created: bool,
}

// ---------------------------------------------------------------- tests

/// A file of mapping test cases.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// A place for YAML anchors reused by the tests below; not read otherwise.
    #[serde(default)]
    pub shared: Option<Node>,
    pub tests: Vec<TestCase>,
}

/// Payload in → expected plan.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[schemars(with = "String")]
    pub source: Spanned<String>,
    /// Inline payload.
    #[serde(default)]
    pub payload: Option<Node>,
    /// Payload file, relative to the test file; read as the raw webhook body.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub payload_file: Option<Spanned<String>>,
    /// Environment seen by templates (`env.X`).
    #[serde(default)]
    pub env: IndexMap<String, String>,
    /// Ids already known to lookups: `custom_field: { stickycards_customer_id: cf_123 }`.
    #[serde(default)]
    pub known: IndexMap<String, IndexMap<String, String>>,
    /// Last-known values of the customer (the local mirror), as `previous` in templates.
    #[serde(default)]
    pub previous: Option<serde_json::Value>,
    /// Raw webhook body as text, decoded as the source says (form or JSON).
    #[serde(default)]
    pub body: Option<String>,
    /// Expected plan (subset unless `exact`). `mappings: []` asserts nothing fires.
    /// Record errors fail the case unless `errors:` is given.
    pub expect: Node,
    /// The profiles the case runs under, by source or target name
    /// (`{ stickycards: boomerangme }`); the project's selection otherwise.
    #[serde(default)]
    pub profiles: IndexMap<String, String>,
    #[serde(default)]
    pub exact: bool,
}
