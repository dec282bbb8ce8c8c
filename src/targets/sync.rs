//! The two-way sync rules, as pure functions: what an event changes, whether
//! a webhook is our own echo or stale, which fields of a write its owner
//! refuses, how held writes merge, how a mirror takes new values.
//!
//! Nothing here reads the database or calls a target: the delivery stages
//! (`customer`, `lookups`, `http`, `journal`) gather the inputs and act on the
//! answer. Every rule is tested over tables of cases below.

use crate::config::model::{TrackMode, Tracks};
use crate::program::{Coalesce, Operation, Program};
use crate::store::MirrorRecord;
use crate::template::scope::Scope;
use crate::template::{EvalError, StrTpl, Templates};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A webhook that brings back what the engine wrote within this long is its echo.
pub const ECHO_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Equal for the purpose of sync: case, surrounding blanks, number spelling
/// ("10" and 10.0) and list order do not count, and a missing value equals an
/// empty one.
pub fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn empty(v: Option<&Value>) -> bool {
        match v {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.trim().is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            _ => false,
        }
    }
    fn norm(v: &Value) -> String {
        match v {
            Value::String(s) => {
                let t = s.trim();
                match t.parse::<f64>() {
                    Ok(n)
                        if !t.is_empty()
                            && t.chars()
                                .all(|c| c.is_ascii_digit() || c == '.' || c == '-') =>
                    {
                        n.to_string()
                    }
                    _ => t.to_lowercase(),
                }
            }
            Value::Number(n) => n.as_f64().map(|f| f.to_string()).unwrap_or_default(),
            other => other.to_string(),
        }
    }
    if empty(a) && empty(b) {
        return true;
    }
    match (a, b) {
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            let mut x: Vec<String> = x.iter().map(norm).collect();
            let mut y: Vec<String> = y.iter().map(norm).collect();
            x.sort();
            y.sort();
            x == y
        }
        (Some(x), Some(y)) => norm(x) == norm(y),
        _ => false,
    }
}

/// Whether `name` holds a value from an event later than `at` (no time, no
/// judgement: an event without an occurrence time is never stale).
pub fn set_after(record: &MirrorRecord, name: &str, at: Option<i64>) -> bool {
    match (at, record.field_times.get(name)) {
        (Some(at), Some(applied)) => applied.as_i64().is_some_and(|t| t > at),
        _ => false,
    }
}

/// What an event changes in a customer's mirror.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    /// Changed values the event is the newest word on.
    pub fresh: Vec<String>,
    /// Changed values a later event has already set.
    pub stale: Vec<String>,
}

impl Change {
    /// Compares an event's values with the mirror.
    pub fn between(
        record: &MirrorRecord,
        values: &Map<String, Value>,
        occurred_at: Option<i64>,
    ) -> Change {
        let mut change = Change::default();
        for (name, value) in values {
            if same_value(record.fields.get(name), Some(value)) {
                continue;
            }
            if set_after(record, name, occurred_at) {
                change.stale.push(name.clone());
            } else {
                change.fresh.push(name.clone());
            }
        }
        change
    }
}

/// Why a webhook is not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppression {
    /// It brings back what the engine wrote.
    Echo,
    /// It only carries values older than those already applied.
    Stale,
}

impl Suppression {
    /// The sync log's and the inbox's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Suppression::Echo => "echo",
            Suppression::Stale => "stale",
        }
    }
}

/// Whether a snapshot webhook (a source with `snapshots: true`) is to be
/// synced, and why not: nothing fresh and something stale is stale; nothing
/// changed at all shortly after the engine wrote the record is its echo.
pub fn suppression(
    change: &Change,
    record: &MirrorRecord,
    now_ms: i64,
) -> Option<(Suppression, String)> {
    if !change.fresh.is_empty() {
        return None;
    }
    if !change.stale.is_empty() {
        return Some((
            Suppression::Stale,
            format!(
                "stale: {} already hold values from a later event; nothing synced",
                change.stale.join(", ")
            ),
        ));
    }
    if record
        .written_at
        .is_some_and(|at| now_ms - at < ECHO_WINDOW_MS)
    {
        return Some((
            Suppression::Echo,
            "echo, suppressed: the record holds what mapper wrote to it".to_string(),
        ));
    }
    None
}

/// The mirror as the mappings see it (`previous`): a late event's older
/// values must not look like changes, so for them `previous` is what the
/// event itself says.
pub fn previous_for_mappings(
    record: &MirrorRecord,
    change: &Change,
    values: &Map<String, Value>,
) -> Value {
    let mut previous = record.fields.clone();
    for name in &change.stale {
        if let Some(v) = values.get(name) {
            previous.insert(name.clone(), v.clone());
        }
    }
    Value::Object(previous)
}

/// Merges an event's values into a mirror. A field keeps its value when the
/// stored one came from a later event (webhooks arrive out of order and
/// retries arrive late); those fields are returned as stale.
pub fn apply_event(
    record: &mut MirrorRecord,
    values: &Map<String, Value>,
    occurred_at: Option<i64>,
    now_ms: i64,
) -> Vec<String> {
    let mut stale = Vec::new();
    for (name, value) in values {
        if set_after(record, name, occurred_at) {
            stale.push(name.clone());
            continue;
        }
        if let Some(at) = occurred_at
            && !same_value(record.fields.get(name), Some(value))
        {
            record.changed_times.insert(name.clone(), at.into());
        }
        record.fields.insert(name.clone(), value.clone());
        match occurred_at {
            Some(at) => record.field_times.insert(name.clone(), at.into()),
            None => record.field_times.remove(name),
        };
    }
    let activity = occurred_at.unwrap_or(now_ms);
    record.last_activity = Some(record.last_activity.map_or(activity, |t| t.max(activity)));
    record.updated_at = now_ms;
    stale
}

/// Records in a mirror what the engine wrote to the record it describes, as
/// if its source had said it, so the webhook the write causes changes
/// nothing. `learnt_at`: when what was written happened on the other side
/// (the time of the change, for ownership); `applied_at`: when the target
/// applied it at the earliest (the request's departure), the values' time
/// against later webhooks.
pub fn apply_reflection(
    record: &mut MirrorRecord,
    values: &Map<String, Value>,
    learnt_at: Option<i64>,
    applied_at: i64,
    now_ms: i64,
) {
    for (name, value) in values {
        if !same_value(record.fields.get(name), Some(value)) {
            record
                .changed_times
                .insert(name.clone(), learnt_at.unwrap_or(now_ms).into());
        }
        record.fields.insert(name.clone(), value.clone());
        record.field_times.insert(name.clone(), applied_at.into());
    }
    record.updated_at = now_ms;
    record.written_at = Some(now_ms);
}

/// The values `reflects:` says a successful call made the record hold, in
/// the mirror names of a source describing it. A template that reads a
/// parameter the call did not send writes nothing there.
pub fn reflected_values(
    templates: &Templates,
    reflects: &[(String, StrTpl)],
    inputs: &[(&str, &Value)],
    mirror: &Value,
) -> Map<String, Value> {
    let mut scope = Scope::new();
    for (name, value) in inputs {
        scope.set(name, value);
    }
    scope.set("mirror", mirror);
    reflects
        .iter()
        .filter_map(|(name, tpl)| {
            let v = match templates.eval_scope(tpl, &scope) {
                Ok(v) => v,
                Err(EvalError::Missing(_)) => return None,
                Err(e) => {
                    tracing::warn!(value = %name, error = ?e, "a `reflects:` template failed; its webhook will look like a change");
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
}

/// Fields of a write refused: their owner, or the target record, holds a
/// newer value.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `conflict` (an owned field) or `stale`, as the sync log says.
    pub action: &'static str,
    /// The parameters without the refused ones; `None` when nothing is left
    /// worth sending.
    pub params: Option<Value>,
    /// For the sync log.
    pub note: String,
}

/// A write to check against what the target record holds.
pub struct Write<'a> {
    /// The target's name.
    pub target: &'a str,
    pub op: &'a Operation,
    pub params: &'a Value,
    /// When the event the write comes from happened.
    pub occurred_at: i64,
}

/// The fields of a write the target record took a newer value of after the
/// event happened, with what is left to send. Such a write would put older
/// information over newer: webhooks arrive out of order and late. A field
/// the target owns (`ownership:` in `mapper.yaml`) is a *conflict*; any other
/// is *stale*. `mirrors`: those of the sources describing the target, for
/// this record. Deltas (`relative`) are never refused: adding points does not
/// overwrite the newer value.
pub fn refused_fields(
    templates: &Templates,
    owners: &HashMap<String, String>,
    write: &Write<'_>,
    mirrors: &[MirrorRecord],
) -> Option<Refusal> {
    let (op, params) = (write.op, write.params);
    if op.reflects.is_empty() || mirrors.is_empty() {
        return None;
    }
    // Which fields this call would set: a plain copy of a parameter when
    // that parameter has a value; otherwise whatever the template gives.
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
                None => templates
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
        if changed <= write.occurred_at {
            continue;
        }
        let what = format!("`{field}` (changed {})", crate::store::format_ms(changed));
        if owners.get(field).map(String::as_str) == Some(write.target) {
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
        said.push(format!("{} owns {}", write.target, conflicts.join(", ")));
    }
    if !stale.is_empty() {
        said.push(format!("{} holds newer {}", write.target, stale.join(", ")));
    }
    let action = if conflicts.is_empty() {
        "stale"
    } else {
        "conflict"
    };
    let note = format!(
        "{action}: {}, changed there after this event ({}); {}",
        said.join("; "),
        crate::store::format_ms(write.occurred_at),
        if left {
            "sent without them"
        } else {
            "nothing sent"
        }
    );
    Some(Refusal {
        action,
        params: left.then_some(kept),
        note,
    })
}

/// Whether a parameter value would write anything.
pub fn has_value(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Object(m) => m.values().any(has_value),
        _ => true,
    }
}

/// Removes `path` from a parameter tree; true when it was there.
pub fn remove_path(params: &mut Value, path: &[String]) -> bool {
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
pub fn merge_held(program: &Program, rule: &Coalesce, earlier: &Value, later: &Value) -> Value {
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

fn track_key(v: &Value, fold_case: bool) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if fold_case { s.to_lowercase() } else { s }
}

/// Leaves out of an `add` body the values the record already has; false
/// when nothing is left to send.
pub fn tracked_body(tracks: &Tracks, body: Option<&mut Value>, record: &Value) -> bool {
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
    match body.and_then(|b| b.get_mut(&tracks.list)) {
        Some(Value::Array(items)) => {
            items.retain(|v| !known.contains(&track_key(v, tracks.fold_case)));
            !items.is_empty()
        }
        _ => true,
    }
}

/// The record's set once a request with `body` succeeded.
pub fn tracked_set_after(tracks: &Tracks, body: Option<&Value>, record: &Value) -> Value {
    let mut set: Vec<Value> = record
        .get(&tracks.record)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sent: Vec<Value> = body
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

/// Two bodies as the one a create carries: the later's keys win, lists are
/// joined without repeats (tags), objects merge key by key.
pub fn carry_into(body: &mut Value, carried: &Value) {
    match (body, carried) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        carry_into(existing, v)
                    }
                    Some(Value::Array(items)) if v.is_array() => {
                        for item in v.as_array().into_iter().flatten() {
                            if !items.contains(item) {
                                items.push(item.clone());
                            }
                        }
                    }
                    Some(existing) if !has_value(v) && has_value(existing) => {}
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (body, carried) => *body = carried.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn record(fields: Value, times: Value) -> MirrorRecord {
        MirrorRecord {
            fields: map(fields),
            field_times: map(times.clone()),
            changed_times: map(times),
            ..Default::default()
        }
    }

    #[test]
    fn same_value_ignores_spelling_but_not_content() {
        let same = |a: Value, b: Value| same_value(Some(&a), Some(&b));
        let table = [
            (json!("Ana@Example.com "), json!("ana@example.com"), true),
            (json!("10"), json!(10.0), true),
            (
                json!(["vip", "card holder"]),
                json!(["card holder", "VIP"]),
                true,
            ),
            (json!("10"), json!(11), false),
            (json!(["vip"]), json!(["vip", "churned"]), false),
            (json!(true), json!("true"), true),
            (json!(0), json!(""), false),
        ];
        for (a, b, expected) in table {
            assert_eq!(same(a.clone(), b.clone()), expected, "{a} vs {b}");
        }
        assert!(same_value(None, Some(&json!(""))));
        assert!(same_value(None, Some(&json!([]))));
        assert!(!same_value(None, Some(&json!("x"))));
        assert!(!same_value(None, Some(&json!(false))), "false is a value");
    }

    #[test]
    fn a_change_is_fresh_unless_a_later_event_set_the_field() {
        let record = record(
            json!({"email": "a@x.com", "phone": "+1", "tags": ["vip"]}),
            json!({"email": 2_000, "phone": 1_000, "tags": 2_000}),
        );
        let values = map(json!({"email": "b@x.com", "phone": "+2", "tags": ["VIP"]}));
        let change = Change::between(&record, &values, Some(1_500));
        assert_eq!(change.fresh, vec!["phone".to_string()]);
        assert_eq!(change.stale, vec!["email".to_string()]);
        // Without an occurrence time nothing can be called stale.
        let change = Change::between(&record, &values, None);
        assert_eq!(change.fresh.len(), 2);
        assert!(change.stale.is_empty());
    }

    #[test]
    fn suppression_over_a_table_of_cases() {
        let now = 10_000_000;
        let written = MirrorRecord {
            written_at: Some(now - 1_000),
            ..Default::default()
        };
        let old_write = MirrorRecord {
            written_at: Some(now - ECHO_WINDOW_MS - 1),
            ..Default::default()
        };
        let change = |fresh: &[&str], stale: &[&str]| Change {
            fresh: fresh.iter().map(|s| s.to_string()).collect(),
            stale: stale.iter().map(|s| s.to_string()).collect(),
        };
        let kind = |c: Change, r: &MirrorRecord| suppression(&c, r, now).map(|(k, _)| k);
        assert_eq!(
            kind(change(&["email"], &[]), &written),
            None,
            "a real change"
        );
        assert_eq!(
            kind(change(&[], &["email"]), &written),
            Some(Suppression::Stale)
        );
        assert_eq!(kind(change(&[], &[]), &written), Some(Suppression::Echo));
        assert_eq!(
            kind(change(&[], &[]), &old_write),
            None,
            "too long after our write"
        );
        assert_eq!(
            kind(change(&[], &[]), &MirrorRecord::default()),
            None,
            "never written"
        );
        assert_eq!(kind(change(&["phone"], &["email"]), &written), None);
    }

    #[test]
    fn stale_values_look_unchanged_to_mappings() {
        let record = record(
            json!({"email": "new@x.com", "phone": "+1"}),
            json!({"email": 2_000}),
        );
        let values = map(json!({"email": "old@x.com", "phone": "+2"}));
        let change = Change::between(&record, &values, Some(1_000));
        let previous = previous_for_mappings(&record, &change, &values);
        assert_eq!(previous, json!({"email": "old@x.com", "phone": "+1"}));
    }

    #[test]
    fn an_event_keeps_newer_values_and_dates_its_changes() {
        let mut r = record(json!({"phone": "+1555"}), json!({"phone": 200}));
        let stale = apply_event(
            &mut r,
            &map(json!({"phone": "+1666", "email": "a@x"})),
            Some(100),
            5,
        );
        assert_eq!(stale, vec!["phone".to_string()]);
        assert_eq!(r.fields["phone"], json!("+1555"));
        assert_eq!(r.fields["email"], json!("a@x"));
        assert_eq!(r.changed_at("email"), Some(100));
        // A repeat of the same value confirms it without changing it.
        let stale = apply_event(&mut r, &map(json!({"email": "A@x "})), Some(300), 6);
        assert!(stale.is_empty());
        assert_eq!(r.changed_at("email"), Some(100));
        assert_eq!(r.last_activity, Some(300));
    }

    #[test]
    fn a_reflection_is_dated_by_departure_and_marks_the_write() {
        let mut r = record(json!({"phone": "+1"}), json!({"phone": 10}));
        apply_reflection(&mut r, &map(json!({"phone": "+2"})), Some(50), 60, 70);
        assert_eq!(r.fields["phone"], json!("+2"));
        assert_eq!(r.field_times["phone"], json!(60));
        assert_eq!(r.changed_at("phone"), Some(50));
        assert_eq!(r.written_at, Some(70));
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

    fn shipped() -> Program {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        match crate::config::compile::compile_dir(&root).program {
            Some(p) => p,
            None => panic!("the shipped mappings do not compile"),
        }
    }

    #[test]
    fn refusals_over_a_table_of_cases() {
        let program = shipped();
        let upsert = &program.targets["ghl"].operations["upsert_contact"];
        // GHL owns names, email and phone in the shipped ownership.
        let mirror = MirrorRecord {
            changed_times: map(json!({"first_name": 2_000, "email": 500})),
            ..Default::default()
        };
        let check = |params: Value, at: i64| {
            refused_fields(
                &program.templates,
                &program.owners,
                &Write {
                    target: "ghl",
                    op: upsert,
                    params: &params,
                    occurred_at: at,
                },
                std::slice::from_ref(&mirror),
            )
        };
        let r = check(json!({"first_name": "Old", "email": "a@x.com"}), 1_000)
            .unwrap_or_else(|| panic!("the first name changed in GHL later"));
        assert_eq!(r.action, "conflict");
        assert_eq!(r.params, Some(json!({"email": "a@x.com"})));
        let r = check(json!({"first_name": "Old"}), 1_000).unwrap_or_else(|| panic!("refused"));
        assert_eq!(r.params, None, "nothing left to send");
        assert_eq!(
            check(json!({"first_name": "New"}), 3_000),
            None,
            "the event is newer"
        );
        assert_eq!(
            check(json!({"last_name": "X"}), 1_000),
            None,
            "unchanged field"
        );
        let none: [MirrorRecord; 0] = [];
        assert_eq!(
            refused_fields(
                &program.templates,
                &program.owners,
                &Write {
                    target: "ghl",
                    op: upsert,
                    params: &json!({"first_name": "Old"}),
                    occurred_at: 1
                },
                &none,
            ),
            None,
            "no mirror: nothing known to be newer"
        );
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

    #[test]
    fn a_create_carries_fields_and_joins_tags() {
        let mut body = json!({"locationId": "L", "phone": "+1", "email": "a@x.com"});
        carry_into(
            &mut body,
            &json!({"firstName": "Ana", "email": "", "customFields": [{"id": "f1", "field_value": 3}]}),
        );
        carry_into(&mut body, &json!({"tags": ["vip"]}));
        carry_into(&mut body, &json!({"tags": ["vip", "card holder"]}));
        assert_eq!(
            body,
            json!({"locationId": "L", "phone": "+1", "email": "a@x.com", "firstName": "Ana",
                   "customFields": [{"id": "f1", "field_value": 3}], "tags": ["vip", "card holder"]})
        );
    }

    fn tracks(mode: TrackMode) -> Tracks {
        Tracks {
            record: "tags".into(),
            list: "tags".into(),
            mode,
            fold_case: true,
        }
    }

    #[test]
    fn tracked_sets_skip_what_the_record_has() {
        let record = json!({"tags": ["VIP"]});
        let mut body = json!({"tags": ["vip", "new"]});
        assert!(tracked_body(
            &tracks(TrackMode::Add),
            Some(&mut body),
            &record
        ));
        assert_eq!(body, json!({"tags": ["new"]}));
        let mut body = json!({"tags": ["vip"]});
        assert!(!tracked_body(
            &tracks(TrackMode::Add),
            Some(&mut body),
            &record
        ));
        assert_eq!(
            tracked_set_after(
                &tracks(TrackMode::Add),
                Some(&json!({"tags": ["new"]})),
                &record
            ),
            json!(["VIP", "new"])
        );
        assert_eq!(
            tracked_set_after(
                &tracks(TrackMode::Remove),
                Some(&json!({"tags": ["vip"]})),
                &record
            ),
            json!([])
        );
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-1000i64..1000).prop_map(Value::from),
            "[ a-zA-Z0-9@.]{0,8}".prop_map(Value::from),
            prop::collection::vec("[a-z]{1,4}", 0..4).prop_map(|v| json!(v)),
        ]
    }

    proptest! {
        #[test]
        fn same_value_is_symmetric_and_reflexive(a in value(), b in value()) {
            prop_assert!(same_value(Some(&a), Some(&a)));
            prop_assert_eq!(same_value(Some(&a), Some(&b)), same_value(Some(&b), Some(&a)));
        }

        #[test]
        fn an_older_event_never_overwrites_a_newer_value(
            first in value(), second in value(), t1 in 0i64..1000, t2 in 0i64..1000,
        ) {
            let mut r = MirrorRecord::default();
            apply_event(&mut r, &map(json!({"f": first.clone()})), Some(t1), 0);
            let stale = apply_event(&mut r, &map(json!({"f": second.clone()})), Some(t2), 0);
            if t2 < t1 {
                prop_assert_eq!(stale, vec!["f".to_string()]);
                prop_assert_eq!(&r.fields["f"], &first);
            } else {
                prop_assert!(stale.is_empty());
                prop_assert_eq!(&r.fields["f"], &second);
            }
            // Whatever the order, the event applied twice changes nothing more.
            let before = r.clone();
            let repeat = map(json!({"f": r.fields["f"].clone()}));
            apply_event(&mut r, &repeat, Some(t1.max(t2)), 0);
            prop_assert_eq!(r.fields, before.fields);
        }

        #[test]
        fn a_change_is_either_fresh_or_stale_never_both(
            stored in value(), incoming in value(), applied in 0i64..100, at in 0i64..100,
        ) {
            let r = record(json!({"f": stored}), json!({"f": applied}));
            let change = Change::between(&r, &map(json!({"f": incoming})), Some(at));
            prop_assert!(change.fresh.len() + change.stale.len() <= 1);
            if !change.stale.is_empty() {
                prop_assert!(applied > at);
            }
        }
    }
}
