//! The `mapper` binary as a user runs it: exit codes, output formats, and the shipped mapping set.

mod common;
use common::copy_dir;

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn mapper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(args)
        .output()
        .expect("run mapper")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn shipped_mappings_check_clean() {
    let out = mapper(&["check", "mappings"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("ok: no errors"));
}

#[test]
fn shipped_mapping_tests_pass() {
    let out = mapper(&["test", "mappings"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let last = t.lines().rev().find(|l| l.contains("passed")).unwrap_or("");
    assert!(last.ends_with(", 0 failed"), "{last}");
    let passed: usize = last.split(' ').next().unwrap_or("0").parse().unwrap_or(0);
    assert!(
        passed >= 20,
        "expected the shipped set to carry many tests, ran {passed}"
    );
}

#[test]
fn check_exit_codes_and_json_format() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mapper.yaml"),
        "settings: { phone_region: US }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "mappings:\n  - name: x\n    sourse: y\n",
    )
    .unwrap();
    let root = dir.path().to_str().unwrap();
    let out = mapper(&["check", root]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("bad.yaml:3:5: error[M002]"),
        "{}",
        text(&out)
    );

    let out = mapper(&["check", "--format", "json", root]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["diagnostics"][0]["code"], "M002");
    assert_eq!(v["diagnostics"][0]["line"], 3);
    assert_eq!(v["diagnostics"][0]["col"], 5);

    assert_eq!(mapper(&["check", "--no-such-flag"]).status.code(), Some(2));
    // A path that does not exist is a usage error, not an invalid set.
    assert_eq!(mapper(&["check", "/no/such/folder"]).status.code(), Some(2));
    assert_eq!(mapper(&["check", "nonexist"]).status.code(), Some(2));
    assert_eq!(mapper(&["test", "/no/such/folder"]).status.code(), Some(2));
}

#[test]
fn committed_schema_is_fresh() {
    let out = mapper(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string("schemas/mapping.schema.json").unwrap();
    assert!(
        committed == String::from_utf8_lossy(&out.stdout),
        "schemas/mapping.schema.json is stale: run `cargo run -- schema > schemas/mapping.schema.json`"
    );
}

#[test]
fn plan_reads_a_file_or_stdin() {
    let file = "examples/payloads/stickycards/CardInstalledEvent.json";
    let out = mapper(&["plan", "--source", "stickycards", file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let from_file: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_file["event"]["type"], "CardInstalledEvent");
    assert_eq!(from_file["mappings"][0]["name"], "sc-card-installed");

    let mut child = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(["plan", "--source", "stickycards", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(file).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let from_stdin: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_file, from_stdin);

    let out = mapper(&["plan", "--source", "nosuch", file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("unknown source `nosuch`"));
}

#[test]
fn plan_reports_malformed_json_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\n  \"event_type\": \"CardInstalledEvent\",\n  oops\n}",
    )
    .unwrap();
    let out = mapper(&["plan", "--source", "stickycards", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("malformed JSON at line 3, column 3"),
        "{}",
        text(&out)
    );
}

/// Source of each example folder (the folder name, or its source for profile folders).
fn example_dirs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("examples/payloads").unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        let source = match name.as_str() {
            "stickycards-boomerangme" => continue,
            other => other.to_string(),
        };
        out.push((name, source));
    }
    out.sort();
    out
}

#[test]
fn every_example_payload_plans_without_error() {
    for (dir, source) in example_dirs() {
        for entry in std::fs::read_dir(Path::new("examples/payloads").join(&dir)).unwrap() {
            let path = entry.unwrap().path();
            let out = mapper(&["plan", "--source", &source, path.to_str().unwrap()]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                text(&out)
            );
        }
    }
}

/// Switching Sticky Cards to the Boomerangme API and payload shape is one line
/// of mapper.yaml: the same mappings then check, and the real-shape payloads
/// fire the same mappings as the seed-shape ones.
#[test]
fn switching_the_stickycards_profile_is_a_yaml_change() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["mappings", "schemas", "examples"] {
        copy_dir(Path::new(sub), &dir.path().join(sub));
    }
    let project = dir.path().join("mappings/mapper.yaml");
    let text_before = std::fs::read_to_string(&project).unwrap();
    let switched = text_before.replace("stickycards: seed", "stickycards: boomerangme");
    assert_ne!(
        text_before, switched,
        "mapper.yaml selects the stickycards profile"
    );
    std::fs::write(&project, switched).unwrap();
    let set = dir.path().join("mappings");
    let out = mapper(&["check", set.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let fired = |root: &Path, payload: &Path| -> Vec<String> {
        let out = mapper(&[
            "plan",
            "--mappings",
            root.to_str().unwrap(),
            "--source",
            "stickycards",
            payload.to_str().unwrap(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            payload.display(),
            text(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    for entry in std::fs::read_dir("examples/payloads/stickycards-boomerangme").unwrap() {
        let real = entry.unwrap().path();
        let seed = Path::new("examples/payloads/stickycards").join(real.file_name().unwrap());
        let with_real_shape = fired(&set, &real);
        assert!(
            !with_real_shape.is_empty(),
            "{}: nothing fired",
            real.display()
        );
        assert_eq!(
            with_real_shape,
            fired(Path::new("mappings"), &seed),
            "{}",
            real.display()
        );
    }
}

/// Every shipped mapping is exercised by at least one mapping test that names it.
#[test]
fn every_shipped_mapping_has_a_test() {
    let compiled = mapper::config::compile::compile_dir_with_tests(Path::new("mappings"));
    let program = compiled.program.expect("the shipped set compiles");
    let mut tested = std::collections::BTreeSet::new();
    for (_, case) in &compiled.tests {
        let expect = case.expect.to_json();
        for m in expect["mappings"].as_array().into_iter().flatten() {
            if let Some(name) = m["name"].as_str() {
                tested.insert(name.to_string());
            }
        }
    }
    let untested: Vec<&str> = program
        .mappings
        .iter()
        .map(|m| m.name.as_str())
        .filter(|n| !tested.contains(*n))
        .collect();
    assert!(untested.is_empty(), "mappings without a test: {untested:?}");
}

#[test]
fn explain_prints_the_long_form_of_a_code() {
    let out = mapper(&["explain", "M012"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.starts_with("M012: "), "{t}");
    assert!(t.contains("Wrong:") && t.contains("Right:"), "{t}");
    assert_eq!(mapper(&["explain", "M999"]).status.code(), Some(2));
    assert_eq!(mapper(&["explain"]).status.code(), Some(2));
}

/// Editors complete and document every key of the mapping language.
#[test]
fn the_mapping_schema_describes_its_keys_and_offers_values() {
    let schema: serde_json::Value = serde_json::from_str(&mapper::schema::schema_json()).unwrap();
    let defs = schema["definitions"].as_object().unwrap();
    let mut undescribed = Vec::new();
    for (name, def) in defs {
        for (key, prop) in def["properties"].as_object().into_iter().flatten() {
            if prop.get("description").is_none() {
                undescribed.push(format!("{name}.{key}"));
            }
        }
    }
    assert!(
        undescribed.is_empty(),
        "keys without a description: {undescribed:?}"
    );
    let ops = defs["Action"]["properties"]["op"]["examples"]
        .as_array()
        .unwrap();
    assert!(ops.iter().any(|o| o == "upsert_contact") && ops.iter().any(|o| o == "http"));
    let methods = defs["RequestSpec"]["properties"]["method"]["enum"]
        .as_array()
        .unwrap();
    assert!(methods.iter().any(|m| m == "POST"));
}
