//! Authoring from real payloads: `mapper new` and `mapper schema infer`, run
//! as a person runs them, on a copy of the shipped set.

mod common;
use common::copy_dir;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mapper(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mapper"))
        .current_dir(dir)
        .env_remove("MAPPER_MAPPINGS")
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

/// A copy of the shipped mappings, schemas and examples.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for part in ["mappings", "schemas", "examples"] {
        copy_dir(Path::new(part), &dir.path().join(part));
    }
    dir
}

/// `N passed, M failed` of `mapper test`.
fn counts(out: &Output) -> (usize, usize) {
    let t = text(out);
    let last = t
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("");
    let mut words = last.split(' ');
    let passed = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let failed = words
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(usize::MAX);
    (passed, failed)
}

/// Every example payload of the four platforms becomes a new source and event
/// whose files check and whose test passes.
#[test]
fn new_on_every_example_payload_writes_files_that_check_and_pass() {
    let dir = project();
    let root = dir.path();
    let before = counts(&mapper(root, &["test"]));
    assert_eq!(before.1, 0, "the shipped tests pass first");
    let mut made = 0;
    for platform in [
        "stickycards",
        "stickycards-boomerangme",
        "slicktext",
        "signalmind",
        "ghl",
    ] {
        let mut samples: Vec<PathBuf> =
            std::fs::read_dir(root.join("examples/payloads").join(platform))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
        samples.sort();
        assert!(!samples.is_empty(), "{platform} has example payloads");
        for (i, sample) in samples.iter().enumerate() {
            let file = sample.file_name().unwrap().to_str().unwrap();
            let event = file.split('.').next().unwrap();
            let source = format!("try_{platform}_{i}");
            let out = mapper(
                root,
                &[
                    "new",
                    "--source",
                    &source,
                    "--event",
                    event,
                    "--from",
                    sample.to_str().unwrap(),
                ],
            );
            assert_eq!(out.status.code(), Some(0), "{file}: {}", text(&out));
            let stem = text(&out);
            assert!(
                stem.contains(&format!("wrote mappings/sources/{source}.yaml")),
                "{stem}"
            );
            assert!(
                stem.contains("warning[M024]"),
                "the TODO is reported: {stem}"
            );
            made += 1;
        }
    }
    let check = mapper(root, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let after = mapper(root, &["test"]);
    assert_eq!(counts(&after), (before.0 + made, 0), "{}", text(&after));
}

#[test]
fn new_for_an_existing_source_fires_on_the_new_event_and_never_overwrites() {
    let dir = project();
    let root = dir.path();
    let sample =
        std::fs::read_to_string(root.join("examples/payloads/stickycards/CardInstalledEvent.json"))
            .unwrap()
            .replace("\"CardInstalledEvent\"", "\"CardGiftedEvent\"");
    std::fs::write(root.join("gifted.json"), sample).unwrap();
    let args = [
        "new",
        "--source",
        "stickycards",
        "--event",
        "CardGiftedEvent",
        "--from",
        "gifted.json",
    ];
    let out = mapper(root, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let schema = root.join("schemas/events/stickycards/CardGiftedEvent.schema.json");
    assert!(schema.is_file(), "{}", text(&out));
    let mapping = root.join("mappings/stickycards-ghl/card-gifted-event.yaml");
    let written = std::fs::read_to_string(&mapping).unwrap();
    assert!(written.contains("      email: \"$.email\""), "{written}");
    assert!(
        written.contains("      phone: \"$.phone_number\""),
        "{written}"
    );
    assert!(
        written.contains("      # first_name: \"$.first_name\""),
        "{written}"
    );
    let test = mapper(
        root,
        &[
            "test",
            "mappings/stickycards-ghl/card-gifted-event.test.yaml",
        ],
    );
    assert_eq!(counts(&test), (1, 0), "{}", text(&test));
    assert!(
        written.contains("profiles: { stickycards: [seed] }"),
        "{written}"
    );
    let check = mapper(root, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let all = mapper(root, &["test"]);
    assert_eq!(counts(&all).1, 0, "{}", text(&all));
    let plan =
        std::fs::read_to_string(root.join("mappings/stickycards-ghl/card-gifted-event.test.yaml"))
            .unwrap();
    assert!(plan.contains("stickycards-card-gifted-event"), "{plan}");

    // A second run writes nothing.
    let edited = format!("{written}# edited by hand\n");
    std::fs::write(&mapping, &edited).unwrap();
    let again = mapper(root, &args);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(&mapping).unwrap(), edited);
}

#[test]
fn two_samples_that_differ_make_the_missing_field_optional() {
    let dir = project();
    let root = dir.path();
    std::fs::write(
        root.join("a.json"),
        r#"{"type": "Gifted", "id": "g1", "email": "ana@example.com", "note": "hi", "at": "2025-03-03T14:10:45Z"}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("b.json"),
        r#"{"type": "Gifted", "id": "g2", "email": "bo@example.com", "at": "2025-03-04"}"#,
    )
    .unwrap();
    let out = mapper(
        root,
        &[
            "new", "--source", "gifts", "--event", "Gifted", "--from", "a.json", "b.json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("schemas/events/gifts/Gifted.schema.json")).unwrap(),
    )
    .unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        required.contains(&"email") && required.contains(&"id"),
        "{schema:#}"
    );
    assert!(!required.contains(&"note"), "note is optional: {schema:#}");
    assert_eq!(schema["properties"]["email"]["format"], "email");
    assert!(
        schema["properties"]["at"].get("format").is_none(),
        "date-time and date disagree"
    );
    let test = mapper(root, &["test"]);
    assert_eq!(counts(&test).1, 0, "{}", text(&test));
    let source = std::fs::read_to_string(root.join("mappings/sources/gifts.yaml")).unwrap();
    assert!(source.contains("type: \"$.type\""), "{source}");
}

#[test]
fn schema_infer_reports_added_and_removed_fields_and_check_warns() {
    let dir = project();
    let root = dir.path();
    std::fs::write(
        root.join("old.json"),
        r#"{"type": "Gifted", "id": "g1", "email": "ana@example.com", "phone": "+1 (415) 555-2671"}"#,
    )
    .unwrap();
    let out = mapper(
        root,
        &[
            "new", "--source", "gifts", "--event", "Gifted", "--from", "old.json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The platform renamed `email` and added `device_type`.
    std::fs::write(
        root.join("new.json"),
        r#"{"type": "Gifted", "id": "g2", "email_address": "bo@example.com", "phone": "+1 (415) 555-2671", "device_type": "ios"}"#,
    )
    .unwrap();
    let schema = "schemas/events/gifts/Gifted.schema.json";
    let out = mapper(root, &["schema", "infer", "new.json", "--merge", schema]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("+ $.email_address"), "{t}");
    assert!(t.contains("+ $.device_type"), "{t}");
    assert!(t.contains("- $.email "), "{t}");
    assert!(!t.contains("- $.phone"), "{t}");
    let check = mapper(root, &["check", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let warned = v["diagnostics"].as_array().unwrap().iter().any(|d| {
        d["code"] == "M012"
            && d["severity"] == "warning"
            && d["message"].as_str().unwrap_or("").contains("`$.email`")
    });
    assert!(warned, "{v:#}");
    // Without --merge it prints the schema.
    let out = mapper(root, &["schema", "infer", "new.json"]);
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["properties"]["device_type"]["type"], "string");
}

#[test]
fn test_update_rewrites_the_expected_plans_of_failing_cases() {
    let dir = project();
    let root = dir.path();
    // Every Sticky Cards write now carries one more custom field: the
    // list-length expectations of existing cases break.
    let file = root.join("mappings/stickycards-ghl/customers.yaml");
    let changed = std::fs::read_to_string(&file).unwrap().replace(
        "    stickycards_customer_id: \"{{ customer_id | string }}\"\n",
        "    stickycards_customer_id: \"{{ customer_id | string }}\"\n    card_installed: seen\n",
    );
    std::fs::write(&file, changed).unwrap();
    let before = mapper(
        root,
        &["test", "mappings/stickycards-ghl/customers.test.yaml"],
    );
    let (_, failing) = counts(&before);
    assert!(failing >= 2, "{}", text(&before));
    let update = mapper(
        root,
        &[
            "test",
            "--update",
            "mappings/stickycards-ghl/customers.test.yaml",
        ],
    );
    let t = text(&update);
    assert_eq!(update.status.code(), Some(0), "{t}");
    assert!(t.contains("actual plan"), "the diff is shown first: {t}");
    assert_eq!(t.matches("\nupdated ").count(), failing, "{t}");
    let after = mapper(
        root,
        &["test", "mappings/stickycards-ghl/customers.test.yaml"],
    );
    assert_eq!(counts(&after).1, 0, "{}", text(&after));
    let rewritten =
        std::fs::read_to_string(root.join("mappings/stickycards-ghl/customers.test.yaml")).unwrap();
    assert!(
        rewritten.contains("\"field_value\":\"seen\""),
        "{rewritten}"
    );
}

#[test]
fn test_runs_each_case_under_its_profile_and_under_a_chosen_one() {
    let dir = project();
    let root = dir.path();
    let all = mapper(root, &["test"]);
    let t = text(&all);
    assert_eq!(counts(&all).1, 0, "{t}");
    assert!(
        t.contains("[stickycards=boomerangme]"),
        "boomerangme cases run: {t}"
    );
    let boomerangme = mapper(root, &["test", "--profile", "stickycards=boomerangme"]);
    let t = text(&boomerangme);
    assert_eq!(boomerangme.status.code(), Some(0), "{t}");
    assert!(t.contains("skipped"), "seed-only cases are skipped: {t}");
    assert!(
        t.contains("skip  stickycards-ghl/customers.test.yaml"),
        "{t}"
    );
    let unknown = mapper(root, &["test", "--profile", "stickycards=nope"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
}
