//! `mapper new` (a new event from real payloads) and `mapper schema infer`.
//!
//! `new` writes what a person would write by hand for a new event, ready for
//! `check`: the payload schema inferred from the samples, a mapping skeleton
//! listing every leaf of the sample, a mapping test holding the plan the
//! sample gives today, and, for a source not defined yet, its profile.

use crate::config::compile::{compile_dir, compile_dir_with_tests};
use crate::config::infer;
use crate::config::load::{Parsed, parse_file};
use crate::config::model::{BodyFormat, BodySpec};
use crate::engine::decode::decode;
use crate::engine::plan::PlanInput;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `mapper new` was asked.
pub struct NewOptions<'a> {
    pub source: &'a str,
    pub event: &'a str,
    pub samples: &'a [PathBuf],
    pub target: &'a str,
    pub mappings: &'a Path,
    pub event_type: Option<&'a str>,
    pub force: bool,
}

/// A sample as read: its path, raw bytes and decoded value.
struct Sample {
    path: PathBuf,
    value: Value,
}

/// Runs `mapper new`: 0 written and checked, 1 when it cannot (a file would
/// be overwritten, the folder has errors), 2 usage.
pub fn run_new(o: &NewOptions) -> ExitCode {
    match new(o) {
        Ok(code) => code,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Cannot(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Cannot(String),
}

fn usage(e: impl Into<String>) -> Failure {
    Failure::Usage(e.into())
}

fn cannot(e: impl Into<String>) -> Failure {
    Failure::Cannot(e.into())
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn new(o: &NewOptions) -> Result<ExitCode, Failure> {
    if !is_name(o.source) || !is_name(o.event) {
        return Err(usage(
            "--source and --event are names: letters, digits, `_` and `-`",
        ));
    }
    if o.samples.is_empty() {
        return Err(usage("give at least one sample with --from SAMPLE.json"));
    }
    if !["ghl", "stickycards"].contains(&o.target) {
        return Err(usage(format!(
            "--target is ghl or stickycards, not `{}`",
            o.target
        )));
    }
    if !o.mappings.join("mapper.yaml").is_file() {
        return Err(usage(format!(
            "{} is not a mapping folder (no mapper.yaml); pass --mappings DIR",
            o.mappings.display()
        )));
    }
    let compiled = compile_dir(o.mappings);
    let Some(program) = compiled.program else {
        return Err(cannot(format!(
            "the mapping folder {} has errors; fix them first (`mapper check {}`)",
            o.mappings.display(),
            o.mappings.display()
        )));
    };
    let raw: Vec<(PathBuf, Vec<u8>)> = o
        .samples
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| (p.clone(), b))
                .map_err(|e| usage(format!("cannot read {}: {e}", p.display())))
        })
        .collect::<Result<_, _>>()?;

    let mut written: Vec<PathBuf> = Vec::new();
    let mut planned: Vec<(PathBuf, String)> = Vec::new();
    let existing = program.sources.get(o.source);
    let body = match existing {
        Some(src) => src.body.clone(),
        None => guess_body(&raw[0].1).ok_or_else(|| {
            usage(format!(
                "{}: neither JSON, lenient JSON nor a form with a JSON field",
                raw[0].0.display()
            ))
        })?,
    };
    let samples: Vec<Sample> = raw
        .iter()
        .map(|(path, bytes)| {
            decode(bytes, &body)
                .map(|value| Sample {
                    path: path.clone(),
                    value,
                })
                .map_err(|e| usage(format!("{}: {e}", path.display())))
        })
        .collect::<Result<_, _>>()?;

    // Where the schema goes: the source's `schemas:` folder, or the shipped layout.
    let (source_file, schemas_dir) = match existing {
        Some(src) => {
            let text = std::fs::read_to_string(&src.file)
                .map_err(|e| cannot(format!("{}: {e}", src.file.display())))?;
            let mut diags = Vec::new();
            let Some(Parsed::Source(spec)) = parse_file(&src.file, &text, &mut diags) else {
                return Err(cannot(format!("{} does not parse", src.file.display())));
            };
            let dir = src
                .file
                .parent()
                .unwrap_or(Path::new("."))
                .join(&spec.schemas.value);
            (None, dir)
        }
        None => (
            Some(
                o.mappings
                    .join("sources")
                    .join(format!("{}.yaml", o.source)),
            ),
            o.mappings.join("..").join("schemas/events").join(o.source),
        ),
    };
    let schema_file = crate::config::payload_schema::normalize(
        &schemas_dir.join(format!("{}.schema.json", o.event)),
    );
    let folder = o.mappings.join(format!("{}-{}", o.source, o.target));
    let stem = kebab(o.event);
    let mapping_file = folder.join(format!("{stem}.yaml"));
    let test_file = folder.join(format!("{stem}.test.yaml"));

    let mut planned_files: Vec<&Path> = vec![&schema_file, &mapping_file, &test_file];
    if let Some(f) = &source_file {
        planned_files.push(f);
    }
    let taken: Vec<String> = planned_files
        .iter()
        .filter(|f| f.exists())
        .map(|f| f.display().to_string())
        .collect();
    if !taken.is_empty() && !o.force {
        return Err(cannot(format!(
            "would overwrite {}; nothing was written (--force overwrites)",
            taken.join(", ")
        )));
    }

    // The source profile, for a source not defined yet.
    if let Some(file) = &source_file {
        let type_path = match o.event_type {
            Some(t) => t.to_string(),
            None => guess_event_type(&samples[0].value).ok_or_else(|| {
                usage(
                    "cannot tell where the event type is (no `event_type`, `type`, `event`, `EventTypeCode` key); pass --event-type SELECTOR",
                )
            })?,
        };
        let raw_type = crate::jsonpath::Selector::parse(&type_path)
            .map_err(|e| usage(format!("--event-type `{type_path}`: {}", e.message)))?
            .select(&samples[0].value)
            .and_then(|v| v.as_str().map(String::from));
        let text = source_profile(o.source, &type_path, raw_type.as_deref(), o.event, &body);
        planned.push((file.clone(), text));
    }
    let values: Vec<Value> = samples.iter().map(|s| s.value.clone()).collect();
    let schema = infer::infer_all(&values).unwrap_or(Value::Null);
    let mut schema_text = serde_json::to_string_pretty(&with_header(schema, o.source, o.event))
        .map_err(|e| cannot(e.to_string()))?;
    schema_text.push('\n');
    planned.push((schema_file.clone(), schema_text));
    // The payload schema is written for the selected profile only: under the
    // source's other profiles the event does not exist yet.
    let only_profile = existing
        .filter(|_| {
            crate::config::load::load_dir(o.mappings)
                .profiles()
                .get(o.source)
                .is_some_and(|p| p.len() > 1)
        })
        .map(|src| src.profile.clone());
    let skeleton = mapping_skeleton(o, &samples[0], only_profile.as_deref());
    planned.push((mapping_file.clone(), skeleton));

    for (path, text) in &planned {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| cannot(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(path, text)
            .map_err(|e| cannot(format!("cannot write {}: {e}", path.display())))?;
        written.push(path.clone());
    }

    // The test holds the plan the sample gives today, so later changes show.
    let compiled = compile_dir(o.mappings);
    let Some(program) = compiled.program else {
        for d in compiled.diagnostics.iter().filter(|d| d.is_error()) {
            eprint!(
                "{}",
                d.render(compiled.texts.get(&d.file).map(String::as_str))
            );
        }
        report(&written);
        return Err(cannot(
            "the files written do not check yet (see above); fix them, then write the test with `mapper test --update`",
        ));
    };
    let mut cases = String::from(
        "# yaml-language-server: $schema=../../schemas/mapping.schema.json\n# Written by `mapper new`: each sample and the plan it gave when written.\ntests:\n",
    );
    for sample in &samples {
        let plan = program
            .plan(o.source, &sample.value, &test_input())
            .map_err(|e| cannot(format!("{}: {e}", sample.path.display())))?;
        let plan = serde_json::to_value(&plan).map_err(|e| cannot(e.to_string()))?;
        let mut expect = serde_json::Map::new();
        expect.insert("mappings".into(), plan["mappings"].clone());
        if let Some(errors) = plan.get("errors") {
            expect.insert("errors".into(), errors.clone());
        }
        let payload_file = relative(&sample.path, &folder);
        let name = format!(
            "{} {} from {}",
            o.source,
            o.event,
            sample
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("the sample")
        );
        let _ = writeln!(cases, "  - name: {}", yaml_string(&name));
        let _ = writeln!(cases, "    source: {}", o.source);
        let _ = writeln!(cases, "    payload_file: {}", yaml_string(&payload_file));
        let _ = writeln!(cases, "    env: {{ GHL_LOCATION_ID: loc_demo }}");
        let expect_json =
            serde_json::to_string(&Value::Object(expect)).map_err(|e| cannot(e.to_string()))?;
        let _ = writeln!(cases, "    expect: {expect_json}");
    }
    std::fs::write(&test_file, cases)
        .map_err(|e| cannot(format!("cannot write {}: {e}", test_file.display())))?;
    written.push(test_file.clone());

    let checked = compile_dir_with_tests(o.mappings);
    let mine: Vec<_> = checked
        .diagnostics
        .iter()
        .filter(|d| written.iter().any(|w| super::same_file(&d.file, w)))
        .collect();
    for d in &mine {
        eprint!(
            "{}",
            d.render(checked.texts.get(&d.file).map(String::as_str))
        );
    }
    report(&written);
    if checked.has_errors() {
        eprintln!(
            "the folder has errors: see `mapper check {}`",
            o.mappings.display()
        );
        return Ok(ExitCode::from(1));
    }
    eprintln!(
        "next: edit {} (its TODO), then `mapper test {}`",
        mapping_file.display(),
        test_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn report(written: &[PathBuf]) {
    for w in written {
        println!("wrote {}", w.display());
    }
}

/// What a mapping test shows for `env.X` and secrets.
fn test_input() -> PlanInput {
    PlanInput {
        env: [("GHL_LOCATION_ID".to_string(), "loc_demo".to_string())]
            .into_iter()
            .collect(),
        mask_secrets: true,
        ..Default::default()
    }
}

/// `CardGiftedEvent` → `card-gifted-event`.
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 && !out.ends_with('-') {
            out.push('-');
        }
        if c == '_' {
            out.push('-');
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// `firstName`, `First Name` → `first_name`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower {
                out.push('_');
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_lowercase());
        } else {
            if !out.ends_with('_') && !out.is_empty() {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    let out = out.trim_matches('_').to_string();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("f_{out}")
    } else {
        out
    }
}

/// The YAML form of a string: plain when that reads back the same, else double-quoted.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

/// `a` relative to folder `from`, with `..` steps (both made absolute first).
fn relative(a: &Path, from: &Path) -> String {
    let abs = |p: &Path| {
        std::path::absolute(p)
            .map(|p| crate::config::payload_schema::normalize(&p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let (a, from) = (abs(a), abs(from));
    let ac: Vec<_> = a.components().collect();
    let fc: Vec<_> = from.components().collect();
    let common = ac.iter().zip(&fc).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..fc.len() {
        out.push("..");
    }
    for c in &ac[common..] {
        out.push(c.as_os_str());
    }
    out.display().to_string()
}

/// How a sample body is encoded: JSON, JSON with single quotes, or a form
/// whose one field holds JSON.
fn guess_body(bytes: &[u8]) -> Option<BodySpec> {
    let plain = BodySpec::default();
    if decode(bytes, &plain).is_ok() {
        return Some(plain);
    }
    let lenient = BodySpec {
        lenient: true,
        ..BodySpec::default()
    };
    if decode(bytes, &lenient).is_ok() {
        return Some(lenient);
    }
    let text = std::str::from_utf8(bytes).ok()?;
    for pair in text.split('&') {
        let (field, _) = pair.split_once('=')?;
        let form = BodySpec {
            format: BodyFormat::Form,
            field: Some(field.to_string()),
            ..BodySpec::default()
        };
        if decode(bytes, &form).is_ok_and(|v| v.is_object()) {
            return Some(form);
        }
    }
    None
}

/// Where the event type is, from the keys platforms use for it.
fn guess_event_type(sample: &Value) -> Option<String> {
    const KEYS: &[&str] = &[
        "event_type",
        "eventType",
        "EventTypeCode",
        "type",
        "Type",
        "event",
        "Event",
    ];
    let obj = sample.as_object()?;
    KEYS.iter()
        .find(|k| obj.get(**k).is_some_and(Value::is_string))
        .map(|k| infer::join("$", k))
}

fn source_profile(
    source: &str,
    type_path: &str,
    raw_type: Option<&str>,
    event: &str,
    body: &BodySpec,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# yaml-language-server: $schema=../../schemas/mapping.schema.json\n# Written by `mapper new`. Before serving: set how the platform signs its\n# webhooks (`verify:`), and its event id or de-duplication fields (`event:`)."
    );
    let _ = writeln!(out, "source: {source}");
    let _ = writeln!(out, "schemas: ../../schemas/events/{source}");
    let _ = writeln!(out, "body:");
    match body.format {
        BodyFormat::Json => {
            let _ = writeln!(out, "  format: json");
        }
        BodyFormat::Form => {
            let _ = writeln!(out, "  format: form");
            if let Some(f) = &body.field {
                let _ = writeln!(out, "  field: {}", yaml_string(f));
            }
        }
    }
    if body.lenient {
        let _ = writeln!(out, "  lenient: true");
    }
    let _ = writeln!(out, "event:");
    let _ = writeln!(out, "  type: {}", yaml_string(type_path));
    if let Some(raw) = raw_type.filter(|r| *r != event) {
        let _ = writeln!(out, "  names: {{ {}: {event} }}", yaml_string(raw));
    }
    let token = format!(
        "{}_WEBHOOK_TOKEN",
        source.to_ascii_uppercase().replace('-', "_")
    );
    let _ = writeln!(
        out,
        "verify:\n  method: token\n  secret_env: {token}\n  query: token"
    );
    out
}

/// The payload schema with a title saying where it came from.
fn with_header(schema: Value, source: &str, event: &str) -> Value {
    let mut out = serde_json::Map::new();
    out.insert(
        "$schema".into(),
        Value::String("http://json-schema.org/draft-07/schema#".into()),
    );
    out.insert(
        "title".into(),
        Value::String(format!("{source} {event} (inferred by mapper new)")),
    );
    if let Value::Object(o) = schema {
        out.extend(o);
    }
    Value::Object(out)
}

/// The name a leaf goes by: its key, or for a name/value pair read by a
/// filter (`$.Fields[?@.Name == 'Email'].Value`) the pair's name.
fn label(path: &str) -> String {
    if let Some((_, rest)) = path.split_once("[?@.")
        && let Some((_, quoted)) = rest.split_once("== '")
        && let Some(end) = quoted.rfind("'].")
    {
        return quoted[..end].replace("\\'", "'").replace("\\\\", "\\");
    }
    path.rsplit(['.', '['])
        .next()
        .unwrap_or("")
        .trim_matches(|c| c == '\'' || c == ']')
        .to_string()
}

/// True when a selector finds a list rather than one value (a filter or a wildcard).
fn finds_list(path: &str) -> bool {
    path.contains("[?") || path.contains("[*]")
}

/// What the skeleton reads of a leaf: an identifying role and how surely
/// (higher wins when several leaves could be it), or none.
fn role(path: &str, value: &Value) -> Option<(&'static str, u8)> {
    let key = label(path).to_ascii_lowercase().replace([' ', '-'], "_");
    let format = infer::format_of(value);
    if path.contains("[*]") || value.is_null() || value.is_object() {
        return None;
    }
    if key.contains("email") && value.is_string() {
        return Some(("email", 3));
    }
    if format == Some("email") {
        return Some(("email", 2));
    }
    if key.contains("phone") || key.contains("mobile") || key.contains("cell") {
        return Some(("phone", 3));
    }
    // A digit string with dashes may be a serial number: a phone by its
    // shape alone only when no key says phone.
    if format == Some("phone") && !key.contains("serial") && !key.contains("code") {
        return Some(("phone", 1));
    }
    let id_like = [
        "customer_id",
        "customerid",
        "member_id",
        "memberid",
        "contact_id",
        "contactid",
        "cardholder_id",
        "cardholderid",
        "loyaltymemberid",
        "user_id",
        "userid",
    ];
    if id_like.contains(&key.as_str()) {
        return Some(("customer_id", 3));
    }
    if key == "id" {
        // The id of the person's object (`$.Member.Id`) or of the payload
        // itself (`$.id`), rather than of another object (`$.Reward.Id`).
        let parent = path
            .rsplit_once('.')
            .map(|(p, _)| label(p).to_ascii_lowercase())
            .unwrap_or_default();
        let person = [
            "member",
            "customer",
            "contact",
            "user",
            "cardholder",
            "client",
        ]
        .iter()
        .any(|w| parent.ends_with(w));
        if person {
            return Some(("customer_id", 2));
        }
        if path.matches('.').count() == 1 {
            return Some(("customer_id", 2));
        }
        if path.matches('.').count() == 2 {
            return Some(("customer_id", 1));
        }
    }
    None
}

/// For each role, the path of the leaf that most surely has it (the first
/// of the best).
fn best_roles(leaves: &[(String, Value)]) -> Vec<(&'static str, String)> {
    let mut best: Vec<(&'static str, u8, String)> = Vec::new();
    for (path, value) in leaves {
        let Some((r, score)) = role(path, value) else {
            continue;
        };
        match best.iter_mut().find(|(b, _, _)| *b == r) {
            Some(slot) if slot.1 < score => *slot = (r, score, path.clone()),
            Some(_) => {}
            None => best.push((r, score, path.clone())),
        }
    }
    best.into_iter().map(|(r, _, p)| (r, p)).collect()
}

fn mapping_skeleton(o: &NewOptions, sample: &Sample, only_profile: Option<&str>) -> String {
    const RESERVED: &[&str] = &["event", "previous", "known", "vars"];
    let mut names: Vec<String> = Vec::new();
    let mut taken_roles: Vec<&str> = Vec::new();
    // Roles whose selector finds a list (a name/value pair read by a filter).
    let mut listed_roles: Vec<&str> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let leaves = infer::leaves(&sample.value);
    let roles = best_roles(&leaves);
    for (path, value) in leaves {
        let shown = match &value {
            Value::String(s) if s.chars().count() > 40 => {
                format!("{:?}…", s.chars().take(40).collect::<String>())
            }
            other => other.to_string(),
        };
        let role = roles
            .iter()
            .find(|(_, p)| *p == path)
            .map(|(r, _)| *r)
            .filter(|r| !taken_roles.contains(r));
        let name = match role {
            Some(r) => {
                taken_roles.push(r);
                if finds_list(&path) {
                    listed_roles.push(r);
                }
                r.to_string()
            }
            None => {
                let mut base = snake(&label(&path));
                if RESERVED.contains(&base.as_str()) || names.contains(&base) {
                    base = snake(&path.replace(['$', '[', ']', '*', '\''], " "));
                }
                base
            }
        };
        let mut unique = name.clone();
        let mut n = 2;
        while names.contains(&unique) || RESERVED.contains(&unique.as_str()) {
            unique = format!("{name}_{n}");
            n += 1;
        }
        names.push(unique.clone());
        let comment = if role.is_some() { "" } else { "# " };
        lines.push(format!(
            "      {comment}{unique}: {}   # e.g. {shown}",
            yaml_string(&path)
        ));
    }
    let has = |r: &str| taken_roles.contains(&r);
    // A role read by a filter finds a list: its first item is the value.
    let value_of = |r: &str| {
        if listed_roles.contains(&r) {
            format!("{r} | first")
        } else {
            r.to_string()
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# yaml-language-server: $schema=../../schemas/mapping.schema.json\n# Written by `mapper new` from {}.\n# `select:` lists every value of the sample; uncomment what the actions need.",
        sample
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("the sample")
    );
    let _ = writeln!(out, "mappings:");
    let _ = writeln!(out, "  - name: {}-{}", o.source, kebab(o.event));
    let _ = writeln!(
        out,
        "    description: TODO say what {} {} does on {}.",
        o.source, o.event, o.target
    );
    let _ = writeln!(out, "    source: {}", o.source);
    let _ = writeln!(out, "    event: {}", o.event);
    let _ = writeln!(out, "    target: {}", o.target);
    if let Some(p) = only_profile {
        let _ = writeln!(
            out,
            "    # The event's payload schema exists for this profile only; add it to the\n    # others' schemas folders, then drop this line.\n    profiles: {{ {}: [{p}] }}",
            o.source
        );
    }
    if taken_roles.is_empty() {
        // Every line below is a comment: the map itself must still be written.
        let _ = writeln!(out, "    select: {{}}");
    } else {
        let _ = writeln!(out, "    select:");
    }
    for l in &lines {
        let _ = writeln!(out, "{l}");
    }
    if has("customer_id") || has("phone") || has("email") {
        // The sample's own id links the customer; its phone and email find
        // (or create) them on the target.
        let _ = writeln!(out, "    customer:");
        if has("customer_id") {
            let _ = writeln!(out, "      link: \"{{{{ {} }}}}\"", value_of("customer_id"));
        }
        if has("phone") || has("email") {
            let _ = writeln!(out, "      match:");
            if has("phone") {
                let _ = writeln!(
                    out,
                    "        - phone: \"{{{{ {} | e164 }}}}\"",
                    value_of("phone")
                );
            }
            if has("email") {
                let _ = writeln!(
                    out,
                    "        - email: \"{{{{ {} | email }}}}\"",
                    value_of("email")
                );
            }
            let _ = writeln!(out, "      when_unmatched: create");
        } else {
            let _ = writeln!(
                out,
                "      # No phone or email in the sample: a customer is found by a stored link only."
            );
            let _ = writeln!(out, "      when_unmatched: skip");
        }
    }
    let _ = writeln!(out, "    actions:");
    let (op, param) = match o.target {
        "stickycards" => ("send_push", "message"),
        _ => ("add_note", "body"),
    };
    let _ = writeln!(out, "      - op: {op}");
    let _ = writeln!(
        out,
        "        with: {{ {param}: \"TODO: replace this action with what {} {} should do\" }}",
        o.source, o.event
    );
    out
}

/// Runs `mapper schema infer`: prints the schema of the samples, or widens
/// `--merge SCHEMA` in place and prints what changed.
pub fn run_infer(samples: &[PathBuf], merge: Option<&Path>) -> ExitCode {
    let mut values = Vec::new();
    for path in samples {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        let Some(spec) = guess_body(&bytes) else {
            eprintln!(
                "error: {}: neither JSON, lenient JSON nor a form with a JSON field",
                path.display()
            );
            return ExitCode::from(2);
        };
        match decode(&bytes, &spec) {
            Ok(v) => values.push(v),
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if values.is_empty() {
        eprintln!("error: give at least one sample");
        return ExitCode::from(2);
    }
    let Some(file) = merge else {
        let schema = infer::infer_all(&values).unwrap_or(Value::Null);
        println!(
            "{}",
            serde_json::to_string_pretty(&schema).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    };
    let old: Value = match std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let Some((merged, diff)) = infer::widen(&old, &values) else {
        return ExitCode::from(2);
    };
    for p in &diff.added {
        println!("+ {p}   (added: declared now)");
    }
    for p in &diff.removed {
        println!(
            "- {p}   (required, in no sample: renamed or removed? marked deprecated; `mapper check` warns about selectors reading it)"
        );
    }
    for p in &diff.unseen {
        println!("? {p}   (optional, in no sample: kept)");
    }
    if diff.added.is_empty() && diff.removed.is_empty() {
        println!("no change: the samples fit {}", file.display());
        return ExitCode::SUCCESS;
    }
    let mut text = serde_json::to_string_pretty(&merged).unwrap_or_default();
    text.push('\n');
    if let Err(e) = std::fs::write(file, text) {
        eprintln!("error: cannot write {}: {e}", file.display());
        return ExitCode::from(1);
    }
    println!("widened {}", file.display());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(kebab("CardGiftedEvent"), "card-gifted-event");
        assert_eq!(snake("firstName"), "first_name");
        assert_eq!(snake("Loyalty Member"), "loyalty_member");
        assert_eq!(snake("1st"), "f_1st");
        assert_eq!(
            relative(Path::new("/a/b/c.json"), Path::new("/a/d")),
            "../b/c.json"
        );
    }

    #[test]
    fn roles_go_to_the_leaf_that_most_surely_has_them() {
        let roles = |v: Value| best_roles(&infer::leaves(&v));
        // A reward's id before the member's, a serial number shaped like a phone.
        let r = roles(serde_json::json!({
            "Reward": {"Id": 100},
            "Member": {"Id": "m1", "MemberStatus": {"Id": 2}, "Email": "a@b.io"},
            "data": {"serial_number": "5001-2671", "cardholder_phone": "14155552671"}
        }));
        assert!(r.contains(&("customer_id", "$.Member.Id".into())), "{r:?}");
        assert!(
            r.contains(&("phone", "$.data.cardholder_phone".into())),
            "{r:?}"
        );
        assert!(r.contains(&("email", "$.Member.Email".into())), "{r:?}");
        // A named id beats the payload's own `id` (GHL NoteCreate).
        let r = roles(serde_json::json!({"id": "note_1", "contactId": "c_1"}));
        assert_eq!(r, vec![("customer_id", "$.contactId".to_string())]);
    }
}
