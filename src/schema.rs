//! The JSON Schema of the mapping language, derived from the model.

use crate::config::model::{MappingFile, ProjectFile, SourceFile, TargetFile, TestFile};
use schemars::JsonSchema;

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

/// The schema as pretty JSON (draft-07, what yaml-language-server validates), ending in a newline.
pub fn schema_json() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<MappingFolderFile>();
    schema.insert("title".into(), "mapper mapping folder file".into());
    schema.insert(
        "description".into(),
        "A file of a mapper mapping folder: mappings, tests, a source or target profile, or mapper.yaml. See README's mapping reference.".into(),
    );
    let mut value = serde_json::to_value(&schema).unwrap_or_default();
    annotate(&mut value);
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

/// Values editors can offer: the names the shipped set uses and the HTTP methods.
const EXAMPLES: &[(&str, &str, &[&str])] = &[
    (
        "Mapping",
        "source",
        &[
            "stickycards",
            "slicktext",
            "signalmind",
            "ghl",
            "ghl-workflow",
            "schedule",
            "resync",
        ],
    ),
    ("Mapping", "target", &["ghl", "stickycards"]),
    (
        "TestCase",
        "source",
        &["stickycards", "slicktext", "signalmind", "ghl"],
    ),
    (
        "Action",
        "op",
        &[
            "upsert_contact",
            "add_tags",
            "remove_tags",
            "add_note",
            "upsert_opportunity",
            "upsert_customer",
            "set_segments",
            "change_card_balance",
            "set_card_status",
            "send_push",
            "issue_card",
            "set_preferences",
            "http",
        ],
    ),
    ("SelectFull", "from", &["$.customer.email", "@phone"]),
    (
        "Mapping",
        "when",
        &["type == 'debit' and reward is defined"],
    ),
];

/// Adds descriptions, examples and enums the derive cannot know.
fn annotate(schema: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let Some(defs) = schema.get_mut("definitions").and_then(Value::as_object_mut) else {
        return;
    };
    fn prop<'a>(
        defs: &'a mut serde_json::Map<String, Value>,
        def: &str,
        key: &str,
    ) -> Option<&'a mut serde_json::Map<String, Value>> {
        defs.get_mut(def)?
            .get_mut("properties")?
            .get_mut(key)?
            .as_object_mut()
    }
    for (def, key, text) in DESCRIPTIONS {
        if let Some(p) = prop(defs, def, key) {
            p.entry("description").or_insert_with(|| json!(text));
        }
    }
    for (def, key, examples) in EXAMPLES {
        if let Some(p) = prop(defs, def, key) {
            p.insert("examples".into(), json!(examples));
        }
    }
    if let Some(p) = prop(defs, "RequestSpec", "method") {
        p.insert(
            "enum".into(),
            json!([
                "GET", "POST", "PUT", "PATCH", "DELETE", "get", "post", "put", "patch", "delete"
            ]),
        );
    }
}
