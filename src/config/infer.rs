//! Payload JSON Schemas inferred from sample webhook bodies (`mapper new`,
//! `mapper schema infer`), and what changed between a schema and newer samples.
//!
//! Inference is deliberately plain: the types seen, which keys every sample
//! carries (required) and which only some do (optional), and a few formats
//! the mappings care about (email, phone, date-time, date, numbers sent as
//! strings). Objects stay open (`additionalProperties: true`): platforms add
//! fields, and a sample never shows all of them.

use serde_json::{Map, Value, json};

/// The schema of one sample value.
pub fn infer(value: &Value) -> Value {
    match value {
        Value::Null => json!({"type": "null"}),
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"type": "integer"}),
        Value::Number(_) => json!({"type": "number"}),
        Value::String(s) => {
            let mut schema = Map::new();
            schema.insert("type".into(), json!("string"));
            match string_format(s) {
                Some(Format::Pattern(p)) => {
                    schema.insert("pattern".into(), json!(p));
                }
                Some(Format::Named(f)) => {
                    schema.insert("format".into(), json!(f));
                }
                None => {}
            }
            Value::Object(schema)
        }
        Value::Array(items) => {
            let mut schema = json!({"type": "array"});
            if let Some(merged) = items.iter().map(infer).reduce(|a, b| merge(&a, &b)) {
                schema["items"] = merged;
            }
            schema
        }
        Value::Object(fields) => {
            let properties: Map<String, Value> =
                fields.iter().map(|(k, v)| (k.clone(), infer(v))).collect();
            let required: Vec<Value> = fields.keys().map(|k| json!(k)).collect();
            json!({
                "type": "object",
                "additionalProperties": true,
                "properties": properties,
                "required": required,
            })
        }
    }
}

/// The schema of several samples of one event: a key missing from one of
/// them is optional.
pub fn infer_all(samples: &[Value]) -> Option<Value> {
    samples.iter().map(infer).reduce(|a, b| merge(&a, &b))
}

enum Format {
    Named(&'static str),
    Pattern(&'static str),
}

/// A string's format, when it is one the mappings' filters care about.
fn string_format(s: &str) -> Option<Format> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    if chrono::DateTime::parse_from_rfc3339(t).is_ok()
        || chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").is_ok()
        || chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
    {
        return Some(Format::Named("date-time"));
    }
    if chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok() {
        return Some(Format::Named("date"));
    }
    if is_email(t) {
        return Some(Format::Named("email"));
    }
    let digits = t.chars().filter(char::is_ascii_digit).count();
    let phone_chars = t
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c));
    if phone_chars
        && (8..=15).contains(&digits)
        && (t.starts_with('+') || t.contains(['(', '-', ' ']))
    {
        return Some(Format::Named("phone"));
    }
    if t.parse::<f64>().is_ok_and(f64::is_finite) && t.chars().any(|c| c.is_ascii_digit()) {
        return Some(Format::Pattern("^-?[0-9]+(\\.[0-9]+)?$"));
    }
    None
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !s.contains(char::is_whitespace)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

fn types(schema: &Value) -> Vec<String> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => vec![],
    }
}

/// The narrowest schema both `a` and `b` satisfy: types united, properties
/// united (required only where both require them), formats kept when they
/// agree. Keywords of `a` that inference does not produce (descriptions,
/// enums written by hand) are kept.
pub fn merge(a: &Value, b: &Value) -> Value {
    let (Some(ao), Some(bo)) = (a.as_object(), b.as_object()) else {
        return a.clone();
    };
    let mut out = ao.clone();
    let (ta, tb) = (types(a), types(b));
    // An untyped schema accepts anything already.
    if !ta.is_empty() {
        let mut all = ta.clone();
        for t in &tb {
            if !all.contains(t) {
                all.push(t.clone());
            }
        }
        // `integer` is a `number`: keep the wider one only.
        if all.contains(&"number".to_string()) {
            all.retain(|t| t != "integer");
        }
        if tb.is_empty() {
            out.remove("type");
        } else {
            out.insert(
                "type".into(),
                if all.len() == 1 {
                    json!(all[0])
                } else {
                    json!(all)
                },
            );
        }
    }
    // A null sample says nothing about a string's format; two strings keep
    // a format only when they agree on it.
    for key in ["format", "pattern"] {
        match (ao.get(key), bo.get(key)) {
            (Some(fa), fb) if fb != Some(fa) && tb != ["null"] => {
                out.remove(key);
            }
            (None, Some(fb)) if ta == ["null"] => {
                out.insert(key.into(), fb.clone());
            }
            _ => {}
        }
    }
    let (pa, pb) = (
        ao.get("properties").and_then(Value::as_object),
        bo.get("properties").and_then(Value::as_object),
    );
    if pa.is_some() || pb.is_some() {
        let mut props = pa.cloned().unwrap_or_default();
        for (k, v) in pb.into_iter().flatten() {
            let merged = match props.get(k) {
                Some(existing) => merge(existing, v),
                None => v.clone(),
            };
            props.insert(k.clone(), merged);
        }
        out.insert("properties".into(), Value::Object(props));
        let req = |o: &Map<String, Value>| -> Vec<String> {
            o.get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (ra, rb) = (req(ao), req(bo));
        // Only an object sample says which keys it lacks; a null one says nothing.
        let both: Vec<Value> = if pa.is_none() {
            rb.iter().map(|k| json!(k)).collect()
        } else if pb.is_none() {
            ra.iter().map(|k| json!(k)).collect()
        } else {
            ra.iter()
                .filter(|k| rb.contains(k))
                .map(|k| json!(k))
                .collect()
        };
        if both.is_empty() {
            out.remove("required");
        } else {
            out.insert("required".into(), Value::Array(both));
        }
        if !out.contains_key("additionalProperties") {
            out.insert("additionalProperties".into(), json!(true));
        }
    }
    match (ao.get("items"), bo.get("items")) {
        (Some(ia), Some(ib)) => {
            out.insert("items".into(), merge(ia, ib));
        }
        (None, Some(ib)) => {
            out.insert("items".into(), ib.clone());
        }
        _ => {}
    }
    Value::Object(out)
}

/// How a schema and newer samples differ.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Paths the samples carry that the schema did not declare.
    pub added: Vec<String>,
    /// Paths the schema required that no sample carries any more (renamed or removed).
    pub removed: Vec<String>,
    /// Optional paths of the schema no sample carries (nothing to do: noted only).
    pub unseen: Vec<String>,
}

/// Widens `schema` with `samples` and says what changed. Required paths no
/// sample carries any more are marked `deprecated: true` (and no longer
/// required), so `mapper check` warns about selectors that read them.
pub fn widen(schema: &Value, samples: &[Value]) -> Option<(Value, Diff)> {
    let seen = infer_all(samples)?;
    let mut before = Vec::new();
    paths(schema, "$", &mut before);
    let mut after = Vec::new();
    paths(&seen, "$", &mut after);
    let mut diff = Diff::default();
    for (p, _) in &after {
        if !before.iter().any(|(q, _)| q == p) {
            diff.added.push(p.clone());
        }
    }
    let mut merged = merge(schema, &seen);
    for (p, required) in &before {
        if after.iter().any(|(q, _)| q == p) {
            continue;
        }
        // Only the first missing level is reported: its children went with it.
        if diff
            .removed
            .iter()
            .chain(&diff.unseen)
            .any(|r| p.starts_with(&format!("{r}.")) || p.starts_with(&format!("{r}[")))
        {
            continue;
        }
        if *required {
            diff.removed.push(p.clone());
            mark_deprecated(&mut merged, p);
        } else {
            diff.unseen.push(p.clone());
        }
    }
    Some((merged, diff))
}

/// Every declared property path of a schema, with whether its parent requires it.
fn paths(schema: &Value, prefix: &str, out: &mut Vec<(String, bool)>) {
    if out.len() > 10_000 {
        return;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (name, child) in props {
            let path = join(prefix, name);
            out.push((path.clone(), required.contains(&name.as_str())));
            paths(child, &path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        paths(items, &format!("{prefix}[*]"), out);
    }
}

/// `$.a` + `b` as a JSONPath, bracketed when the name needs it.
pub fn join(prefix: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        format!("{prefix}.{name}")
    } else {
        format!(
            "{prefix}['{}']",
            name.replace('\\', "\\\\").replace('\'', "\\'")
        )
    }
}

fn mark_deprecated(schema: &mut Value, path: &str) {
    let mut steps = Vec::new();
    if let Ok(sel) = crate::jsonpath::Selector::parse(path) {
        steps = sel.steps().to_vec();
    }
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    let mut node = schema;
    for step in parents {
        node = match step {
            crate::jsonpath::Step::Name(n) => {
                match node.pointer_mut(&format!("/properties/{}", escape(n))) {
                    Some(next) => next,
                    None => return,
                }
            }
            _ => match node.get_mut("items") {
                Some(next) => next,
                None => return,
            },
        };
    }
    let crate::jsonpath::Step::Name(name) = last else {
        return;
    };
    if let Some(req) = node.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| r.as_str() != Some(name));
    }
    if let Some(prop) = node.pointer_mut(&format!("/properties/{}", escape(name)))
        && let Some(obj) = prop.as_object_mut()
    {
        obj.insert("deprecated".into(), json!(true));
    }
}

fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Every leaf of a sample with its JSONPath (`[*]` for list items), in the
/// sample's order.
pub fn leaves(value: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    collect_leaves(value, "$", &mut out);
    out
}

fn collect_leaves(value: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (k, v) in fields {
                collect_leaves(v, &join(prefix, k), out);
            }
        }
        Value::Array(items) if name_value_pairs(items).is_some() => {
            // A list of `{Name, Value}` pairs (SignalMind's form `Fields`):
            // each pair is its own leaf, read by a filter on its name.
            for (name_key, value_key, name, v) in name_value_pairs(items).unwrap_or_default() {
                let path = format!(
                    "{prefix}[?@.{name_key} == '{}'].{value_key}",
                    name.replace('\\', "\\\\").replace('\'', "\\'")
                );
                if !out.iter().any(|(p, _)| *p == path) {
                    out.push((path, v));
                }
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            let mut merged = Map::new();
            for item in items.iter().filter_map(Value::as_object) {
                for (k, v) in item {
                    merged.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            collect_leaves(&Value::Object(merged), &format!("{prefix}[*]"), out);
        }
        other => {
            if !out.iter().any(|(p, _)| p == prefix) {
                out.push((prefix.to_string(), other.clone()));
            }
        }
    }
}

/// The pairs of a list whose every item is an object of two keys, one
/// naming (`Name`, `name`, `Key`, `key`, `Label`, `label`, a string) and one
/// holding the value (`Value`, `value`): (name key, value key, name, value).
/// `None` when the list is anything else, or a name repeats.
#[allow(clippy::type_complexity)]
fn name_value_pairs(items: &[Value]) -> Option<Vec<(&str, &str, String, Value)>> {
    const NAME_KEYS: &[&str] = &["Name", "name", "Key", "key", "Label", "label"];
    const VALUE_KEYS: &[&str] = &["Value", "value"];
    if items.is_empty() {
        return None;
    }
    let mut out: Vec<(&str, &str, String, Value)> = Vec::new();
    for item in items {
        let obj = item.as_object().filter(|o| o.len() == 2)?;
        let name_key = NAME_KEYS.iter().find(|k| obj.contains_key(**k))?;
        let value_key = VALUE_KEYS.iter().find(|k| obj.contains_key(**k))?;
        let name = obj.get(*name_key)?.as_str()?.to_string();
        if name.is_empty() || out.iter().any(|(_, _, n, _)| *n == name) {
            return None;
        }
        let value = obj.get(*value_key).cloned().unwrap_or(Value::Null);
        out.push((name_key, value_key, name, value));
    }
    Some(out)
}

/// The format `infer` gives a string, for callers that recognise phones and emails.
pub fn format_of(value: &Value) -> Option<&'static str> {
    match string_format(value.as_str()?)? {
        Format::Named(f) => Some(f),
        Format::Pattern(_) => Some("number"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_missing_from_one_sample_is_optional() {
        let a = json!({"id": "1", "email": "a@example.com", "note": "x"});
        let b = json!({"id": "2", "email": "b@example.com"});
        let s = infer_all(&[a, b]).unwrap();
        assert_eq!(s["required"], json!(["id", "email"]));
        assert!(s["properties"]["note"].is_object());
        assert_eq!(s["properties"]["email"]["format"], "email");
    }

    #[test]
    fn formats() {
        let s = infer(&json!({
            "at": "2025-03-03T14:10:45Z", "day": "2025-03-03", "phone": "+1 (415) 555-2671",
            "n": "12.5", "name": "Ana", "count": 3, "ratio": 0.5
        }));
        let p = &s["properties"];
        assert_eq!(p["at"]["format"], "date-time");
        assert_eq!(p["day"]["format"], "date");
        assert_eq!(p["phone"]["format"], "phone");
        assert!(p["n"]["pattern"].is_string());
        assert!(p["name"].get("format").is_none());
        assert_eq!(p["count"]["type"], "integer");
        assert_eq!(p["ratio"]["type"], "number");
    }

    #[test]
    fn types_unite_and_null_keeps_the_format() {
        let s = infer_all(&[json!({"a": "x@y.io", "n": 1}), json!({"a": null, "n": 1.5})]).unwrap();
        assert_eq!(s["properties"]["a"]["type"], json!(["string", "null"]));
        assert_eq!(s["properties"]["a"]["format"], "email");
        assert_eq!(s["properties"]["n"]["type"], "number");
    }

    #[test]
    fn widen_reports_added_and_removed() {
        let old = infer(&json!({"id": 1, "card": {"balance": 3, "note": "x"}}));
        let mut old = old;
        // `note` was optional in the old schema.
        old["properties"]["card"]["required"] = json!(["balance"]);
        let new = json!({"id": 2, "card": {"points": 3}, "device_type": "ios"});
        let (merged, diff) = widen(&old, &[new]).unwrap();
        assert_eq!(diff.added, vec!["$.card.points", "$.device_type"]);
        assert_eq!(diff.removed, vec!["$.card.balance"]);
        assert_eq!(diff.unseen, vec!["$.card.note"]);
        assert_eq!(
            merged["properties"]["card"]["properties"]["balance"]["deprecated"],
            true
        );
    }

    #[test]
    fn leaves_list_every_path() {
        let l = leaves(&json!({"a": {"b": 1, "c d": [1, 2]}, "items": [{"sku": "x"}, {"qty": 2}]}));
        let p: Vec<&str> = l.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            p,
            vec!["$.a.b", "$.a['c d']", "$.items[*].sku", "$.items[*].qty"]
        );
    }

    #[test]
    fn name_value_pairs_are_leaves_read_by_name() {
        let sample = json!({"Fields": [
            {"Name": "Email", "Value": "a@b.io"},
            {"Name": "It's", "Value": 3}
        ], "tags": [{"Name": "x", "Value": 1, "extra": 2}]});
        let p: Vec<String> = leaves(&sample).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            p,
            vec![
                "$.Fields[?@.Name == 'Email'].Value",
                "$.Fields[?@.Name == 'It\\'s'].Value",
                "$.tags[*].Name",
                "$.tags[*].Value",
                "$.tags[*].extra"
            ]
        );
        // A repeated name is not a pair list: the items are read as any list.
        let twice = json!({"F": [{"Name": "a", "Value": 1}, {"Name": "a", "Value": 2}]});
        assert_eq!(leaves(&twice)[0].0, "$.F[*].Name");
    }
}
