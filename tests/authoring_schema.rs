//! The JSON Schema of mapping files, for editors: every key described and
//! exemplified, and the names known statically offered as enums.

use mapper::schema::{KnownNames, filter_names, schema_json, schema_json_with};
use serde_json::Value;
use std::path::Path;

/// Every `properties` entry anywhere in the schema, with its path.
fn properties<'a>(node: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (k, v) in props {
                    out.push((format!("{path}.{k}"), v));
                }
            }
            for (k, v) in map {
                properties(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                properties(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn schema() -> Value {
    serde_json::from_str(&schema_json()).unwrap()
}

#[test]
fn every_property_has_a_description_and_examples() {
    let schema = schema();
    let mut all = Vec::new();
    properties(&schema, "", &mut all);
    assert!(all.len() > 100, "the walk finds the keys: {}", all.len());
    let undescribed: Vec<&String> = all
        .iter()
        .filter(|(_, p)| {
            p.get("description")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        undescribed.is_empty(),
        "keys without a description: {undescribed:?}"
    );
    let unexemplified: Vec<&String> = all
        .iter()
        .filter(|(_, p)| {
            p.get("examples")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        unexemplified.is_empty(),
        "keys without examples: {unexemplified:?}"
    );
}

/// The enum of one of a key's `anyOf` alternatives.
fn names_of(schema: &Value, def: &str, key: &str) -> Vec<String> {
    let p = &schema["definitions"][def]["properties"][key];
    p["anyOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{def}.{key} has no anyOf: {p:#}"))
        .iter()
        .find_map(|a| a["enum"].as_array())
        .unwrap_or_else(|| panic!("{def}.{key} has no enum: {p:#}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn ops_sources_and_targets_of_the_shipped_set_are_enums() {
    let schema = schema();
    let shipped = KnownNames::of_folder(Path::new("mappings"));
    let ops = names_of(&schema, "Action", "op");
    for op in [
        "upsert_contact",
        "add_tags",
        "change_card_balance",
        "send_push",
        "http",
    ] {
        assert!(ops.iter().any(|o| o == op), "{op} missing from {ops:?}");
    }
    assert_eq!(ops, shipped.ops);
    for (def, key) in [
        ("Mapping", "source"),
        ("TestCase", "source"),
        ("ScheduleSpec", "source"),
    ] {
        assert_eq!(names_of(&schema, def, key), shipped.sources, "{def}.{key}");
    }
    for s in [
        "stickycards",
        "slicktext",
        "signalmind",
        "ghl",
        "ghl-workflow",
    ] {
        assert!(
            shipped.sources.iter().any(|n| n == s),
            "{s}: {:?}",
            shipped.sources
        );
    }
    assert_eq!(
        names_of(&schema, "Mapping", "target"),
        ["ghl", "stickycards"]
    );
    assert_eq!(
        names_of(&schema, "SourceFile", "describes"),
        ["ghl", "stickycards"]
    );
    // A name of one's own folder still validates: the other alternative.
    let pattern = &schema["definitions"]["Mapping"]["properties"]["source"]["anyOf"][1]["pattern"];
    assert!(pattern.is_string(), "{pattern}");
    // The HTTP methods.
    let methods = schema["definitions"]["RequestSpec"]["properties"]["method"]["enum"]
        .as_array()
        .unwrap();
    assert!(methods.iter().any(|m| m == "POST"));
}

#[test]
fn filters_of_the_engine_are_an_enum() {
    let schema = schema();
    let listed: Vec<&str> = schema["definitions"]["filter"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for f in mapper::template::filters::FILTERS {
        assert!(listed.contains(f), "project filter {f} missing");
    }
    for f in ["default", "join", "lower", "map", "first"] {
        assert!(listed.contains(&f), "built-in {f} missing");
    }
    assert_eq!(listed.len(), filter_names().len());
    // Every listed name really is a filter of the engine.
    let env = mapper::template::environment(minijinja::Value::from(()));
    for f in &listed {
        let out = env.render_str(&format!("{{{{ [1] | {f} }}}}"), ());
        assert!(
            !matches!(&out, Err(e) if e.kind() == minijinja::ErrorKind::UnknownFilter),
            "{f} is not a filter"
        );
    }
}

#[test]
fn without_a_folder_the_names_are_left_open() {
    let schema: Value = serde_json::from_str(&schema_json_with(&KnownNames::default())).unwrap();
    let source = &schema["definitions"]["Mapping"]["properties"]["source"];
    assert!(source.get("anyOf").is_none(), "{source:#}");
    assert_eq!(source["type"], "string");
}

/// Whether `v` fits `schema` as far as types, enums, consts and `$ref`s
/// to the definitions go (enough to catch a wrong example).
fn fits(v: &Value, schema: &Value, defs: &Value) -> bool {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/definitions/");
        return fits(v, &defs[name], defs);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array)
            && !alts.iter().any(|a| fits(v, a, defs))
        {
            return false;
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array)
        && !all.iter().all(|a| fits(v, a, defs))
    {
        return false;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return false;
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        return false;
    }
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed = |t: &str| t == kind || (t == "number" && kind == "integer");
    match schema.get("type") {
        Some(Value::String(t)) => allowed(t),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).any(allowed),
        _ => true,
    }
}

#[test]
fn every_example_fits_its_key() {
    let schema = schema();
    let defs = schema["definitions"].clone();
    // The check itself tells a wrong value.
    assert!(!fits(&Value::from("sometimes"), &defs["Missing"], &defs));
    assert!(!fits(
        &Value::from(5),
        &schema["definitions"]["Mapping"]["properties"]["name"],
        &defs
    ));
    assert!(fits(&Value::from("fail"), &defs["Missing"], &defs));
    let mut all = Vec::new();
    properties(&schema, "", &mut all);
    let mut wrong = Vec::new();
    for (path, p) in &all {
        // The key's own schema without its examples.
        let mut own = (*p).clone();
        if let Some(o) = own.as_object_mut() {
            o.remove("examples");
        }
        for e in p["examples"].as_array().into_iter().flatten() {
            if !fits(e, &own, &defs) {
                wrong.push(format!("{path}: {e}"));
            }
        }
    }
    assert!(wrong.is_empty(), "examples that do not fit: {wrong:#?}");
}
