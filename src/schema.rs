//! The JSON Schema of the mapping language, derived from the model, with
//! what the derive cannot know: descriptions and examples of every key, and
//! the names of sources, targets, operations and filters as enums.

use crate::config::load::{Parsed, load_dir};
use crate::config::model::{MappingFile, ProjectFile, SourceFile, TargetFile, TestFile};
use schemars::JsonSchema;
use std::path::Path;

/// Any file of a mapping folder; told apart by the first key.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
enum MappingFolderFile {
    Mappings(MappingFile),
    Tests(TestFile),
    Source(SourceFile),
    Target(TargetFile),
    Project(ProjectFile),
}

/// Names only a mapping folder knows, offered by editors as enums.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KnownNames {
    /// Source names (`sources/*.yaml`), sorted.
    pub sources: Vec<String>,
    /// Target names (`targets/*.yaml`), sorted.
    pub targets: Vec<String>,
    /// Operation names of every target profile, sorted, `http` last.
    pub ops: Vec<String>,
}

impl KnownNames {
    /// The names the source and target profiles of `root` declare (every
    /// profile, selected or not). A folder that cannot be read gives none.
    pub fn of_folder(root: &Path) -> Self {
        let loaded = load_dir(root);
        let mut names = KnownNames::default();
        for (_, file) in &loaded.files {
            match file {
                Parsed::Source(s) => names.sources.push(s.source.value.clone()),
                Parsed::Target(t) => {
                    names.targets.push(t.target.value.clone());
                    names.ops.extend(t.operations.keys().cloned());
                }
                _ => {}
            }
        }
        for list in [&mut names.sources, &mut names.targets, &mut names.ops] {
            list.sort();
            list.dedup();
        }
        if !names.ops.is_empty() {
            names.ops.push("http".into());
        }
        names
    }
}

/// The shipped mapping folder of this checkout, whose names the committed
/// schema offers (`cargo run -- schema > schemas/mapping.schema.json`).
fn shipped_folder() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

/// The schema as pretty JSON (draft-07, what yaml-language-server validates),
/// ending in a newline, with the names of the shipped mapping folder.
pub fn schema_json() -> String {
    schema_json_with(&KnownNames::of_folder(&shipped_folder()))
}

/// The schema with the given names as enums (none: no enum for them).
pub fn schema_json_with(names: &KnownNames) -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<MappingFolderFile>();
    schema.insert("title".into(), "mapper mapping folder file".into());
    schema.insert(
        "description".into(),
        "A file of a mapper mapping folder: mappings, tests, a source or target profile, or mapper.yaml. See README's mapping reference.".into(),
    );
    let mut value = serde_json::to_value(&schema).unwrap_or_default();
    annotate(&mut value, names);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// Descriptions of keys whose model field has none of its own (the type it
/// refers to is described instead, which editors do not show on the key).
const DESCRIPTIONS: &[(&str, &str, &str)] = &[
    (
        "MappingFile",
        "mappings",
        "The mappings of this file: each turns one source event into target actions.",
    ),
    (
        "Mapping",
        "description",
        "What the mapping does, for people reading plans and logs.",
    ),
    (
        "Mapping",
        "source",
        "The source whose events this mapping handles (a file under sources/).",
    ),
    (
        "Mapping",
        "target",
        "The target this mapping writes to (a file under targets/).",
    ),
    (
        "Mapping",
        "actions",
        "What to do on the target, in order: operations of its profile, or `http`.",
    ),
    (
        "SelectFull",
        "from",
        "A selector (`$.path` or `@field`), or a list of them tried in order.",
    ),
    (
        "Action",
        "when",
        "A condition over the select names: the action runs only when it holds.",
    ),
    (
        "TestFile",
        "tests",
        "Mapping test cases: a payload in, the expected plan out.",
    ),
    (
        "TestCase",
        "name",
        "What the case shows, printed by `mapper test`.",
    ),
    ("TestCase", "source", "The source the payload comes from."),
    (
        "TestCase",
        "exact",
        "Compare the whole plan, not only the keys `expect` gives.",
    ),
    (
        "SourceFile",
        "description",
        "What this profile of the platform is, for people.",
    ),
    (
        "SourceFile",
        "body",
        "How the webhook body is encoded (JSON, or a form field holding JSON).",
    ),
    (
        "SourceFile",
        "event",
        "Where the event's type, id, time and customer are in the payload.",
    ),
    (
        "SourceFile",
        "verify",
        "How `serve` verifies that a webhook comes from the platform.",
    ),
    ("BodySpec", "format", "`json` (default) or `form`."),
    (
        "VerifySpec",
        "method",
        "none, token, hmac, standard_webhooks, ghl or internal.",
    ),
    ("VerifySpec", "algorithm", "The HMAC hash: sha256 or md5."),
    (
        "SignedPart",
        "form_field",
        "The form field whose raw value (before URL-decoding into JSON) is signed.",
    ),
    (
        "VerifySpec",
        "encoding",
        "How the signature is written: hex or base64.",
    ),
    (
        "VerifySpec",
        "timestamp_header",
        "A header carrying the signed timestamp, checked against `tolerance_seconds`.",
    ),
    (
        "VerifySpec",
        "tolerance_seconds",
        "How old a signed timestamp may be.",
    ),
    (
        "VerifySpec",
        "rsa_public_key_env",
        "The variable holding GHL's legacy RSA public key (PEM).",
    ),
    (
        "TargetFile",
        "target",
        "Target name, used by mappings' `target:`.",
    ),
    (
        "TargetFile",
        "profile",
        "Profile name; `mapper.yaml` `profiles:` picks one per target (default `default`).",
    ),
    (
        "TargetFile",
        "description",
        "What this profile of the API is, for people.",
    ),
    (
        "TargetFile",
        "rate_limit",
        "Requests allowed per window, and per day: the client-side limiter.",
    ),
    (
        "TargetFile",
        "operations",
        "What mappings can ask of this API (`op:`), each a request template.",
    ),
    ("EnvVar", "description", "What the variable holds."),
    (
        "CustomerCapability",
        "create",
        "How a customer is created when no search finds one.",
    ),
    (
        "FindSpec",
        "request",
        "The search request; `{{ value }}` is the key searched for.",
    ),
    ("RequestSpec", "method", "The HTTP method."),
    (
        "RequestSpec",
        "path",
        "The path after the base URL; a template.",
    ),
    (
        "RequestSpec",
        "query",
        "Query parameters; values are templates.",
    ),
    (
        "RequestSpec",
        "body",
        "The JSON body; strings are templates, `$each`/`$emit` build lists.",
    ),
    (
        "CreateSpec",
        "request",
        "The create request; `keys` holds the matching keys.",
    ),
    ("CreateSpec", "id", "Selector of the new id in the answer."),
    (
        "LookupSpec",
        "description",
        "What the lookup resolves, for people.",
    ),
    (
        "Operation",
        "description",
        "What the operation does, for people and `check`'s hints.",
    ),
    (
        "Operation",
        "params",
        "The parameters mappings pass under `with:`, with their types.",
    ),
    (
        "Operation",
        "request",
        "The request sent; reads `params`, `customer`, `env`, `known`.",
    ),
    ("Param", "required", "Mappings must give it."),
    (
        "Param",
        "type",
        "any, string, number, integer, boolean, list or map; templates are held to it.",
    ),
    (
        "Param",
        "description",
        "What the parameter means, shown in `check`'s hints.",
    ),
    (
        "ScheduleSpec",
        "name",
        "Rule name, part of each raised event's de-duplication key.",
    ),
    (
        "ScheduleSpec",
        "description",
        "What the rule is for, for people.",
    ),
];

/// Examples of every key, by definition and key: what the shipped set
/// writes there (JSON, parsed when the schema is printed).
const EXAMPLES: &str = r##"{
  "MappingFile": {
    "shared": [{"contact": {"customer_id": {"from": "@customer_id", "missing": "fail"}, "phone": "@phone"}}],
    "mappings": [[{"name": "sc-card-installed", "source": "stickycards", "event": "CardInstalledEvent", "target": "ghl", "actions": [{"op": "add_tags", "with": {"tags": ["card holder"]}}]}]]
  },
  "Mapping": {
    "name": ["sc-card-installed", "st-loyalty-redemption"],
    "description": ["Card installed → card fields and tag \"Card Holder\"."],
    "event": ["CardInstalledEvent", ["PaymentCompletedSuccessfulEvent", "RecurrentPaymentCompletedSuccessfulEvent"]],
    "when": ["type == 'debit' and reward is defined"],
    "order": [10, 30],
    "select": [{"customer_id": {"from": "@customer_id", "missing": "fail"}, "phone": "@phone", "balance": "$.card.balance"}],
    "customer": [{"link": "{{ customer_id }}", "match": [{"phone": "{{ phone | e164 }}"}, {"email": "{{ email | email }}"}], "when_unmatched": "create"}],
    "profiles": [{"stickycards": ["seed"]}],
    "actions": [[{"op": "add_tags", "with": {"tags": ["card holder"]}}]]
  },
  "SelectFull": {
    "from": ["$.customer.email", "@phone", ["$.Member.ExternalAccountId", "$.Member.ExternalAccountID"]],
    "missing": ["fail", "skip"],
    "default": ["USD", 0]
  },
  "CustomerSpec": {
    "link": ["{{ customer_id }}"],
    "match": [[{"phone": "{{ phone | e164 }}"}, {"email": "{{ email | email }}"}]],
    "when_unmatched": ["create", "skip"],
    "link_source": ["stickycards"]
  },
  "Action": {
    "when": ["reward_cost is defined"],
    "with": [{"tags": ["card holder"]}, {"custom_fields": {"loyalty_points": "{{ balance | number }}"}}],
    "if_supported": [true],
    "only_if_created": [true]
  },
  "TestFile": {
    "shared": [{"env": {"GHL_LOCATION_ID": "loc_demo"}}],
    "tests": [[{"name": "card installed tags the contact", "source": "stickycards", "payload_file": "../../examples/payloads/stickycards/CardInstalledEvent.json", "expect": {"mappings": [{"name": "sc-card-installed"}]}}]]
  },
  "TestCase": {
    "name": ["a refund becomes a lost opportunity"],
    "payload": [{"event_type": "CardInstalledEvent", "customer_id": "cus_1001"}],
    "payload_file": ["../../examples/payloads/stickycards/CardInstalledEvent.json"],
    "env": [{"GHL_LOCATION_ID": "loc_demo"}],
    "known": [{"custom_field": {"loyalty_points": "cf_9"}}],
    "previous": [{"phone": "+14155552671"}],
    "body": ["data=%7B%22Event%22%3A%22LoyaltyEventCreated%22%7D"],
    "expect": [{"mappings": [{"name": "sc-card-installed"}]}, {"mappings": []}],
    "profiles": [{"stickycards": "boomerangme"}],
    "exact": [true]
  },
  "RouteSpec": {
    "by": ["$.locationId"],
    "variable": ["GHL_LOCATION_ID"]
  },
  "SourceFile": {
    "route": [{"by": "$.locationId", "variable": "GHL_LOCATION_ID"}],
    "source": ["stickycards", "signalmind"],
    "profile": ["seed", "boomerangme"],
    "description": ["Sticky Cards webhooks as seed 001 documents them."],
    "schemas": ["../../schemas/events/stickycards"],
    "body": [{"format": "json", "lenient": true}, {"format": "form", "field": "data"}],
    "event": [{"type": "$.event_type", "id": "$.event_id", "time": "$.timestamp"}],
    "verify": [{"method": "token", "secret_env": "STICKYCARDS_WEBHOOK_TOKEN", "query": "token"}],
    "fields": [{"phone": ["$.phone_number", "$.customer.phone"], "customer_id": "$.customer_id"}],
    "mirror": [{"email": "$.email", "loyalty_points": "$.card.balance"}],
    "describes": ["ghl"],
    "snapshots": [true]
  },
  "BodySpec": {
    "format": ["json", "form"],
    "field": ["data"],
    "lenient": [true],
    "max_bytes": [1048576]
  },
  "EventSpec": {
    "type": ["$.event_type", "$.EventTypeCode"],
    "default": ["ContactUpdate"],
    "names": [{"F": "FormSubmit", "S": "UserSignup"}],
    "id": ["$.event_id", "$.webhookId"],
    "dedup": [["$.LoyaltyEvent.LoyaltyEventId", "$.Event"]],
    "time": ["$.timestamp", "$.Timestamp"],
    "customer": ["$.customer_id", ["$.Member.Email", "$.Email"]],
    "time_zone": ["America/Los_Angeles", "UTC"],
    "attempt": ["$.attemptNumber"]
  },
  "VerifySpec": {
    "method": ["token", "hmac", "ghl"],
    "secret_env": ["STICKYCARDS_WEBHOOK_TOKEN", "SLICKTEXT_WEBHOOK_SECRET"],
    "header": ["X-Webhook-Token", "X-Slicktext-Signature"],
    "query": ["token"],
    "algorithm": ["sha256", "md5"],
    "encoding": ["hex", "base64"],
    "prefix": ["sha256="],
    "signed": ["body", {"form_field": "data"}],
    "timestamp_header": ["X-Timestamp"],
    "tolerance_seconds": [300],
    "public_key_env": ["GHL_WEBHOOK_PUBLIC_KEY"],
    "rsa_public_key_env": ["GHL_WEBHOOK_RSA_PUBLIC_KEY"]
  },
  "SignedPart": {
    "form_field": ["data"]
  },
  "TargetFile": {
    "target": ["ghl", "stickycards"],
    "profile": ["default", "boomerangme"],
    "description": ["GoHighLevel (LeadConnector) API v2, one sub-account (location)."],
    "base_url": ["{{ env.GHL_API_BASE_URL }}"],
    "env": [{"GHL_API_TOKEN": {"description": "Private Integration Token.", "secret": true}}],
    "headers": [{"Authorization": "Bearer {{ env.GHL_API_TOKEN }}", "Version": "2021-07-28"}],
    "rate_limit": [{"requests": 100, "per_seconds": 10, "daily": 200000, "per": "location"}],
    "timeout_seconds": [30],
    "error_message": ["$.message"],
    "customer": [{"link": "ghl_contact_id", "find": {"email": {"request": {"method": "GET", "path": "/contacts/search/duplicate", "query": {"email": "{{ value }}"}}, "id": "$.contact.id"}}}],
    "lookups": [{"custom_field": {"list": {"method": "GET", "path": "/locations/{{ env.GHL_LOCATION_ID }}/customFields"}, "items": "$.customFields[*]", "key": "{{ item.fieldKey }}", "id": "{{ item.id }}"}}],
    "operations": [{"add_note": {"params": {"body": {"type": "string", "required": true}}, "request": {"method": "POST", "path": "/contacts/{{ customer.id }}/notes", "body": {"body": "{{ params.body }}"}}}}],
    "unsupported": [{"issue_card": "the Boomerangme API has no card issue endpoint"}],
    "coalesce": [{"window": "5m"}]
  },
  "EnvVar": {
    "description": ["Sub-account Private Integration Token."],
    "default": ["https://services.leadconnectorhq.com"],
    "secret": [true]
  },
  "RateLimit": {
    "requests": [100],
    "per_seconds": [10],
    "daily": [200000],
    "per": ["location"]
  },
  "CustomerCapability": {
    "link": ["ghl_contact_id"],
    "find": [{"phone": {"request": {"method": "GET", "path": "/contacts/search/duplicate", "query": {"number": "{{ value }}"}}, "id": "$.contact.id"}}],
    "create": [{"request": {"method": "POST", "path": "/contacts/", "body": {"phone": "{{ keys.phone }}"}}, "id": "$.contact.id"}]
  },
  "FindSpec": {
    "request": [{"method": "GET", "path": "/contacts/search/duplicate", "query": {"email": "{{ value }}"}}],
    "id": ["$.contact.id"]
  },
  "RequestSpec": {
    "method": ["GET", "POST", "PUT"],
    "path": ["/contacts/{{ customer.id }}/tags"],
    "query": [{"locationId": "{{ env.GHL_LOCATION_ID }}"}],
    "body": [{"tags": "{{ params.tags }}"}]
  },
  "CreateSpec": {
    "request": [{"method": "POST", "path": "/contacts/", "body": {"email": "{{ keys.email }}"}}],
    "id": ["$.contact.id", "$.id"],
    "duplicate_id": ["$.meta.contactId"],
    "reflects": [{"phone": "{{ keys.phone }}", "email": "{{ keys.email }}"}],
    "carries": [["upsert_contact"]]
  },
  "LookupSpec": {
    "description": ["Contact custom fields by key."],
    "list": [{"method": "GET", "path": "/locations/{{ env.GHL_LOCATION_ID }}/customFields", "query": {"model": "contact"}}],
    "items": ["$.customFields[*]"],
    "key": ["{{ item.fieldKey | replace('contact.', '') }}"],
    "id": ["{{ item.id }}"],
    "create": [{"request": {"method": "POST", "path": "/locations/{{ env.GHL_LOCATION_ID }}/customFields", "body": {"name": "{{ item.name }}"}}, "id": "$.customField.id"}]
  },
  "Operation": {
    "description": ["Adds tags to the contact (lowercased by GHL)."],
    "needs_customer": [true],
    "params": [{"tags": {"type": "list", "required": true}}],
    "unsupported_params": [{"tags": "GHL replaces every tag when `tags` is sent on upsert; use add_tags"}],
    "request": [{"method": "POST", "path": "/contacts/{{ customer.id }}/tags", "body": {"tags": "{{ params.tags }}"}}],
    "remember": [{"card_id": "$.id"}],
    "tracks": [{"record": "tags", "list": "tags", "mode": "add"}],
    "reflects": [{"card_status": "{{ params.status }}"}],
    "coalesce": ["latest", {"sum": ["amount"]}],
    "idempotent": [false]
  },
  "Param": {
    "required": [true],
    "type": ["string", "number", "list"],
    "description": ["E.164"],
    "enum": [["open", "won", "lost", "abandoned"]],
    "keys_from": ["custom_field"]
  },
  "Tracks": {
    "record": ["tags"],
    "list": ["tags"],
    "mode": ["add", "remove"],
    "fold_case": [true]
  },
  "CoalesceRules": {
    "sum": [["amount"]],
    "sum_when": ["(params.mode | default('set')) == 'add'"]
  },
  "CoalesceSpec": {
    "window": ["5m", "30s", "0s"]
  },
  "ProjectFile": {
    "settings": [{"phone_region": "US", "time_zone": "UTC"}],
    "profiles": [{"stickycards": "seed", "ghl": "default"}],
    "vars": [{"not_segments": ["churned", "card holder"]}],
    "provision": [{"ghl": {"custom_field": {"loyalty_points": {"name": "Loyalty Points", "data_type": "NUMERICAL"}}}}],
    "schedules": [[{"name": "inactive-30d", "every": "1h", "source": "stickycards", "when": "inactive_days >= 30", "event": "CustomerInactive"}]],
    "ownership": [{"ghl": ["email", "phone"], "stickycards": ["card_status"]}]
  },
  "Settings": {
    "phone_region": ["US", "GB"],
    "time_zone": ["UTC", "America/Los_Angeles"]
  },
  "ScheduleSpec": {
    "name": ["inactive-30d"],
    "description": ["Customers with no activity for 30 days."],
    "every": ["1h", "1d"],
    "when": ["inactive_days >= 30"],
    "event": ["CustomerInactive"],
    "reset_event": ["CustomerActiveAgain"]
  }
}"##;

/// Filters of minijinja the engine has (checked against it when the schema
/// is printed), besides the project's own (`template::filters::FILTERS`).
const BUILTIN_FILTERS: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "urlencode",
    "zip",
];

/// Every filter a template can use: the project's and the engine's built-ins.
pub fn filter_names() -> Vec<String> {
    let env = crate::template::environment(minijinja::Value::from(()));
    let mut out: Vec<String> = crate::template::filters::FILTERS
        .iter()
        .map(|f| f.to_string())
        .collect();
    for name in BUILTIN_FILTERS {
        // A name minijinja does not have (a feature left out) is not offered.
        let known = !matches!(
            env.render_str(&format!("{{{{ [1] | {name} }}}}"), ()),
            Err(e) if e.kind() == minijinja::ErrorKind::UnknownFilter
        );
        if known {
            out.push(name.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A property of a definition, also inside its `oneOf`/`anyOf` variants.
fn prop<'a>(
    defs: &'a mut serde_json::Map<String, serde_json::Value>,
    def: &str,
    key: &str,
) -> Option<&'a mut serde_json::Map<String, serde_json::Value>> {
    // Where the key is: the definition's own properties, or a variant's.
    let node = defs.get(def)?;
    let place = if node.get("properties").and_then(|p| p.get(key)).is_some() {
        None
    } else {
        Some(["oneOf", "anyOf"].iter().find_map(|variants| {
            let list = node.get(*variants)?.as_array()?;
            let i = list
                .iter()
                .position(|v| v.get("properties").and_then(|p| p.get(key)).is_some())?;
            Some((*variants, i))
        })?)
    };
    let node = defs.get_mut(def)?;
    let owner = match place {
        None => node,
        Some((variants, i)) => node.get_mut(variants)?.get_mut(i)?,
    };
    owner.get_mut("properties")?.get_mut(key)?.as_object_mut()
}

/// A name from `names`, or (a folder of one's own) any other name.
fn one_of_names(p: &mut serde_json::Map<String, serde_json::Value>, names: &[String]) {
    use serde_json::json;
    if names.is_empty() {
        return;
    }
    let nullable = p
        .get("type")
        .and_then(|t| t.as_array())
        .is_some_and(|ts| ts.iter().any(|t| t == "null"));
    let mut alternatives = vec![
        json!({ "enum": names }),
        json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]+$" }),
    ];
    if nullable {
        alternatives.push(json!({ "type": "null" }));
    }
    p.insert("examples".into(), json!(names));
    p.insert("anyOf".into(), json!(alternatives));
}

/// Adds descriptions, examples and enums the derive cannot know.
fn annotate(schema: &mut serde_json::Value, names: &KnownNames) {
    use serde_json::{Value, json};
    let Some(defs) = schema.get_mut("definitions").and_then(Value::as_object_mut) else {
        return;
    };
    for (def, key, text) in DESCRIPTIONS {
        if let Some(p) = prop(defs, def, key) {
            p.entry("description").or_insert_with(|| json!(text));
        }
    }
    let examples: Value = serde_json::from_str(EXAMPLES).unwrap_or(Value::Null);
    for (def, keys) in examples.as_object().into_iter().flatten() {
        for (key, values) in keys.as_object().into_iter().flatten() {
            if let Some(p) = prop(defs, def, key) {
                p.entry("examples").or_insert_with(|| values.clone());
            }
        }
    }
    for (def, key) in [
        ("Mapping", "source"),
        ("TestCase", "source"),
        ("ScheduleSpec", "source"),
    ] {
        if let Some(p) = prop(defs, def, key) {
            one_of_names(p, &names.sources);
        }
    }
    for (def, key) in [("Mapping", "target"), ("SourceFile", "describes")] {
        if let Some(p) = prop(defs, def, key) {
            one_of_names(p, &names.targets);
        }
    }
    if let Some(p) = prop(defs, "Action", "op") {
        one_of_names(p, &names.ops);
    }
    if let Some(p) = prop(defs, "RequestSpec", "method") {
        p.insert(
            "enum".into(),
            json!([
                "GET", "POST", "PUT", "PATCH", "DELETE", "get", "post", "put", "patch", "delete"
            ]),
        );
    }
    // Filters are written inside templates, where JSON Schema cannot reach:
    // the list is published for tools, and named in the template keys' text.
    defs.insert(
        "filter".into(),
        json!({
            "description": "A filter templates can use (`{{ value | name }}`): the project's own and minijinja's built-ins.",
            "type": "string",
            "enum": filter_names(),
        }),
    );
}
