//! `mapper test`: mapping test cases, payload in → expected plan.

use super::{same_file, set_root};
use crate::config::compile::{Compiled, compile_dir_with_tests};
use crate::config::model::TestCase;
use crate::engine::decode::decode;
use crate::engine::plan::PlanInput;
use crate::engine::program::Program;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Runs the mapping tests of folders or test files: exit 0 when all pass,
/// 1 otherwise, 2 when a path given does not exist.
pub fn run(paths: &[PathBuf], verbose: bool) -> ExitCode {
    let mut passed = 0usize;
    let mut failed = 0usize;
    if let Some(missing) = paths.iter().find(|p| !p.exists()) {
        eprintln!("error: {}: no such file or folder", missing.display());
        return ExitCode::from(2);
    }
    for path in paths {
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
            match run_case(program, &compiled, file, case) {
                Ok(()) => {
                    passed += 1;
                    println!("ok    {shown}: {}", case.name.value);
                }
                Err((why, actual)) => {
                    failed += 1;
                    println!(
                        "FAIL  {shown}:{}: {}\n      {why}",
                        case.name.referenced.line(),
                        case.name.value
                    );
                    if verbose && let Some(a) = actual {
                        println!(
                            "      actual plan: {}",
                            serde_json::to_string_pretty(&a).unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
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
