//! `mapper test`: mapping test cases, payload in → expected plan.

use super::{same_file, set_root};
use crate::config::compile::{Compiled, compile_dir_under, compile_dir_with_tests};
use crate::config::model::TestCase;
use crate::engine::decode::decode;
use crate::engine::plan::PlanInput;
use crate::program::Program;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `mapper test` was asked.
pub struct TestOptions<'a> {
    pub paths: &'a [PathBuf],
    pub verbose: bool,
    /// `NAME=PROFILE` selections every case runs under.
    pub profiles: &'a [(String, String)],
    /// Rewrite the expected plan of failing cases with the actual one.
    pub update: bool,
}

/// A `--profile` value that is neither `NAME=PROFILE` nor a bare `PROFILE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: write NAME=PROFILE, e.g. stickycards=boomerangme")]
pub struct BadProfileFlag(pub String);

/// Parses `--profile NAME=PROFILE` (a bare `PROFILE` names the profile of
/// whichever source or target has it, and is resolved later).
pub fn parse_profile(text: &str) -> Result<(String, String), BadProfileFlag> {
    match text.split_once('=') {
        Some((n, p)) if !n.trim().is_empty() && !p.trim().is_empty() => {
            Ok((n.trim().to_string(), p.trim().to_string()))
        }
        None if !text.trim().is_empty() => Ok((String::new(), text.trim().to_string())),
        _ => Err(BadProfileFlag(text.to_string())),
    }
}

/// Runs the mapping tests of folders or test files: exit 0 when all pass,
/// 1 otherwise, 2 when a path given does not exist or a profile is unknown.
pub fn run(o: &TestOptions) -> ExitCode {
    let mut passed = 0usize;
    let mut failed = 0usize;
    let mut skipped = 0usize;
    let mut updated = 0usize;
    if let Some(missing) = o.paths.iter().find(|p| !p.exists()) {
        eprintln!("error: {}: no such file or folder", missing.display());
        return ExitCode::from(2);
    }
    for path in o.paths {
        let root = set_root(path);
        let compiled = compile_dir_with_tests(&root);
        let Some(program) = &compiled.program else {
            for d in compiled.diagnostics.iter().filter(|d| d.is_error()) {
                eprint!(
                    "{}",
                    d.render(compiled.texts.get(&d.file).map(String::as_str))
                );
            }
            eprintln!(
                "{}: the mapping folder has errors; no test can run",
                root.display()
            );
            failed += 1;
            continue;
        };
        let cli = match resolve_profiles(o.profiles, &root) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let only = (!path.is_dir()).then(|| path.clone());
        // Test files that do not check fail here, once each, with their diagnostics.
        let mut broken: Vec<&Path> = Vec::new();
        for d in compiled.diagnostics.iter().filter(|d| d.is_error()) {
            if only.as_ref().is_some_and(|f| !same_file(&d.file, f)) {
                continue;
            }
            if !broken.contains(&d.file.as_path()) {
                broken.push(&d.file);
                failed += 1;
            }
            eprint!(
                "{}",
                d.render(compiled.texts.get(&d.file).map(String::as_str))
            );
        }
        // Rewritten last, bottom-up in each file, so earlier cases keep their lines.
        let mut updates: Vec<(&PathBuf, &TestCase, Value)> = Vec::new();
        // One program per profile selection the cases ask for.
        let mut programs: BTreeMap<Vec<(String, String)>, Option<Program>> = BTreeMap::new();
        for (file, case) in &compiled.tests {
            if only.as_ref().is_some_and(|f| !same_file(file, f))
                || broken.contains(&file.as_path())
            {
                continue;
            }
            let shown = file
                .strip_prefix(&root)
                .unwrap_or(file)
                .display()
                .to_string();
            let selection = match selection(case, &cli) {
                Ok(s) => s,
                Err(why) => {
                    skipped += 1;
                    println!("skip  {shown}: {} ({why})", case.name.value);
                    continue;
                }
            };
            let program = if selection.is_empty() {
                Some(program)
            } else {
                programs
                    .entry(selection.clone())
                    .or_insert_with(|| compile_dir_under(&root, &selection).program)
                    .as_ref()
            };
            let Some(program) = program else {
                failed += 1;
                println!(
                    "FAIL  {shown}:{}: {}\n      the folder has errors under {}: `mapper check`",
                    case.name.referenced.line(),
                    case.name.value,
                    shown_selection(&selection)
                );
                continue;
            };
            let under = if selection.is_empty() {
                String::new()
            } else {
                format!(" [{}]", shown_selection(&selection))
            };
            match run_case(program, &compiled, file, case) {
                Ok(()) => {
                    passed += 1;
                    println!("ok    {shown}: {}{under}", case.name.value);
                }
                Err((why, actual)) => {
                    println!(
                        "FAIL  {shown}:{}: {}{under}\n      {why}",
                        case.name.referenced.line(),
                        case.name.value
                    );
                    if (o.verbose || o.update)
                        && let Some(a) = &actual
                    {
                        println!(
                            "      actual plan: {}",
                            serde_json::to_string_pretty(a).unwrap_or_default()
                        );
                    }
                    match (o.update, actual) {
                        (true, Some(a)) => updates.push((file, case, a)),
                        _ => failed += 1,
                    }
                }
            }
        }
        updates
            .sort_by_key(|(file, case, _)| (*file, std::cmp::Reverse(case.name.referenced.line())));
        for (file, case, actual) in updates {
            match update_case(file, case, &actual) {
                Ok(()) => {
                    updated += 1;
                    println!("updated {}: {}", file.display(), case.name.value);
                }
                Err(e) => {
                    failed += 1;
                    println!("not updated {}: {}: {e}", file.display(), case.name.value);
                }
            }
        }
    }
    let mut summary = format!("{passed} passed, {failed} failed");
    if skipped > 0 {
        summary.push_str(&format!(", {skipped} skipped"));
    }
    if updated > 0 {
        summary.push_str(&format!(", {updated} updated"));
    }
    println!("{summary}");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `--profile` selections with bare profile names given their source or target.
fn resolve_profiles(
    given: &[(String, String)],
    root: &Path,
) -> Result<Vec<(String, String)>, String> {
    if given.is_empty() {
        return Ok(Vec::new());
    }
    let all = crate::config::load::load_dir(root).profiles();
    let mut out = Vec::new();
    for (name, profile) in given {
        let names: Vec<&String> = if name.is_empty() {
            all.iter()
                .filter(|(_, ps)| ps.contains(profile))
                .map(|(n, _)| n)
                .collect()
        } else {
            vec![name]
        };
        if names.is_empty()
            || names
                .iter()
                .any(|n| !all.get(*n).is_some_and(|ps| ps.contains(profile)))
        {
            let known: Vec<String> = all
                .iter()
                .filter(|(_, ps)| ps.len() > 1)
                .map(|(n, ps)| format!("{n}={}", ps.join("|")))
                .collect();
            return Err(format!(
                "no profile `{profile}`{}; profiles: {}",
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" of `{name}`")
                },
                known.join(", ")
            ));
        }
        for n in names {
            out.push((n.clone(), profile.clone()));
        }
    }
    Ok(out)
}

/// The profiles a case runs under: its own, then `--profile`'s; a case
/// written for another profile than `--profile` asks for is skipped.
fn selection(case: &TestCase, cli: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = case
        .profiles
        .iter()
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect();
    for (name, profile) in cli {
        match out.iter().find(|(n, _)| n == name) {
            Some((_, p)) if p != profile => {
                return Err(format!("written for {name}={p}"));
            }
            Some(_) => {}
            None => out.push((name.clone(), profile.clone())),
        }
    }
    out.sort();
    Ok(out)
}

fn shown_selection(selection: &[(String, String)]) -> String {
    selection
        .iter()
        .map(|(n, p)| format!("{n}={p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rewrites the `expect:` of one case in its file with the actual plan's
/// mappings (and errors, when there are some): what `mapper new` writes.
fn update_case(file: &Path, case: &TestCase, actual: &Value) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let start = (case.name.referenced.line() as usize).saturating_sub(1);
    let value_line = (case.expect.pos.line as usize).saturating_sub(1);
    let key = (start..=value_line.min(lines.len().saturating_sub(1)))
        .rev()
        .find(|i| lines[*i].trim_start().starts_with("expect:"))
        .ok_or_else(|| format!("cannot find `expect:` of `{}`", case.name.value))?;
    let indent = lines[key].len() - lines[key].trim_start().len();
    let mut end = key + 1;
    while end < lines.len() {
        let l = lines[end];
        let deeper = l.len() - l.trim_start().len() > indent;
        if l.trim().is_empty() || deeper {
            end += 1;
        } else {
            break;
        }
    }
    // Trailing blank lines belong to what follows.
    while end > key + 1 && lines[end - 1].trim().is_empty() {
        end -= 1;
    }
    let mut expect = serde_json::Map::new();
    if case.exact {
        if let Some(o) = actual.as_object() {
            expect = o.clone();
        }
    } else {
        expect.insert("mappings".into(), actual["mappings"].clone());
        if let Some(errors) = actual.get("errors") {
            expect.insert("errors".into(), errors.clone());
        }
    }
    let json = serde_json::to_string(&Value::Object(expect)).map_err(|e| e.to_string())?;
    let mut out: Vec<String> = lines[..key].iter().map(|l| l.to_string()).collect();
    out.push(format!("{}expect: {json}", " ".repeat(indent)));
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    let mut new_text = out.join("\n");
    if text.ends_with('\n') {
        new_text.push('\n');
    }
    std::fs::write(file, new_text).map_err(|e| format!("{}: {e}", file.display()))
}

type CaseError = (String, Option<Value>);

/// Runs one case: plan the payload and compare with `expect`.
pub fn run_case(
    program: &Program,
    compiled: &Compiled,
    file: &Path,
    case: &TestCase,
) -> Result<(), CaseError> {
    let source = &case.source.value;
    let src = program
        .sources
        .get(source)
        .ok_or_else(|| (format!("unknown source `{source}`"), None))?;
    let payload = match (&case.payload, &case.payload_file) {
        (Some(p), None) => p.to_json(),
        (None, Some(f)) => {
            let path = file.parent().unwrap_or(Path::new(".")).join(&f.value);
            let body = match compiled.payload_files.get(&path) {
                Some(Ok(body)) => body,
                Some(Err(e)) => return Err((format!("payload file {} {e}", path.display()), None)),
                None => {
                    return Err((
                        format!("payload file {} was not read", path.display()),
                        None,
                    ));
                }
            };
            decode(body, &src.body).map_err(|e| (format!("{}: {e}", path.display()), None))?
        }
        _ => {
            return Err((
                "give exactly one of `payload` or `payload_file`".into(),
                None,
            ));
        }
    };
    let input = PlanInput {
        env: case
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        mask_secrets: true,
        known: serde_json::to_value(&case.known).unwrap_or(Value::Null),
        previous: case.previous.clone(),
    };
    let plan = program
        .plan(source, &payload, &input)
        .map_err(|e| (e.to_string(), None))?;
    let actual = serde_json::to_value(&plan).map_err(|e| (e.to_string(), None))?;
    let expected = case.expect.to_json();
    if expected.get("errors").is_none()
        && let Some(errors) = actual.get("errors")
    {
        return Err((
            format!("unexpected record errors (add `errors:` to expect them): {errors}"),
            Some(actual),
        ));
    }
    let outcome = if case.exact {
        let mut want = expected.clone();
        // `exact` compares what was asked about; the event identity is implied.
        if let (Some(w), Some(a)) = (want.as_object_mut(), actual.as_object()) {
            for key in ["event", "skipped", "errors"] {
                if !w.contains_key(key)
                    && let Some(v) = a.get(key)
                {
                    w.insert(key.into(), v.clone());
                }
            }
        }
        if want == actual {
            Ok(())
        } else {
            Err(first_difference(&want, &actual, "", true).unwrap_or_else(|| "plans differ".into()))
        }
    } else {
        match first_difference(&expected, &actual, "", false) {
            None => Ok(()),
            Some(d) => Err(d),
        }
    };
    outcome.map_err(|why| (why, Some(actual)))
}

/// Where `actual` departs from `expected` (subset semantics unless `exact`):
/// objects need the expected keys; lists need the same length, item by item.
pub fn first_difference(expected: &Value, actual: &Value, at: &str, exact: bool) -> Option<String> {
    let here = if at.is_empty() {
        "plan".to_string()
    } else {
        at.to_string()
    };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let path = format!("{here}.{k}");
                match a.get(k) {
                    Some(av) => {
                        if let Some(d) = first_difference(ev, av, &path, exact) {
                            return Some(d);
                        }
                    }
                    None if ev.is_null() => {}
                    None => return Some(format!("{path}: expected {ev}, but it is absent")),
                }
            }
            if exact && let Some(extra) = a.keys().find(|k| !e.contains_key(*k)) {
                return Some(format!("{here}.{extra}: not expected, found {}", a[extra]));
            }
            None
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Some(format!(
                    "{here}: expected {} item(s), found {}: {}",
                    e.len(),
                    a.len(),
                    summarize(actual)
                ));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (ev, av))| first_difference(ev, av, &format!("{here}[{i}]"), exact))
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => None,
        (e, a) if e == a => None,
        (e, a) => Some(format!("{here}: expected {e}, found {a}")),
    }
}

fn summarize(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(300).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_semantics() {
        let actual = json!({"a": 1, "b": [{"x": 1, "y": 2}], "c": "z"});
        assert_eq!(
            first_difference(&json!({"b": [{"x": 1}]}), &actual, "", false),
            None
        );
        assert!(
            first_difference(&json!({"b": []}), &actual, "", false)
                .unwrap()
                .contains("expected 0 item")
        );
        assert!(
            first_difference(&json!({"a": 2}), &actual, "", false)
                .unwrap()
                .contains("plan.a: expected 2, found 1")
        );
        assert!(
            first_difference(&json!({"q": 1}), &actual, "", false)
                .unwrap()
                .contains("absent")
        );
        assert!(first_difference(&json!({"a": 1}), &actual, "", true).is_some());
        assert_eq!(
            first_difference(&json!({"a": 1.0}), &actual, "", false),
            None
        );
    }
}
