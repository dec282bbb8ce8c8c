//! `mapper new` writes `customer:` from what it recognised in the sample —
//! the id as the link, the phone and email as match keys — and reads
//! name/value pair lists (SignalMind form `Fields`) one pair at a time.

mod common;
use common::copy_dir;

use std::path::Path;
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

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for part in ["mappings", "schemas", "examples"] {
        copy_dir(Path::new(part), &dir.path().join(part));
    }
    dir
}

/// Runs `mapper new` for a new source; returns the mapping written and the
/// plan its test recorded (the first case's `expect`).
fn new_event(root: &Path, source: &str, event: &str, sample: &str) -> (String, serde_json::Value) {
    let out = mapper(
        root,
        &[
            "new", "--source", source, "--event", event, "--from", sample,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let folder = root.join(format!("mappings/{source}-ghl"));
    let stem: String = {
        let mut s = String::new();
        for (i, c) in event.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                s.push('-');
            }
            s.push(c.to_ascii_lowercase());
        }
        s
    };
    let mapping = std::fs::read_to_string(folder.join(format!("{stem}.yaml"))).unwrap();
    let test = std::fs::read_to_string(folder.join(format!("{stem}.test.yaml"))).unwrap();
    let expect = test
        .lines()
        .find_map(|l| l.trim().strip_prefix("expect: "))
        .expect("an expect line");
    let plan: serde_json::Value = serde_json::from_str(expect).unwrap();
    let run = mapper(
        root,
        &["test", &format!("mappings/{source}-ghl/{stem}.test.yaml")],
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    (mapping, plan)
}

#[test]
fn the_sample_id_links_the_customer_and_its_phone_and_email_match() {
    let dir = project();
    let (mapping, plan) = new_event(
        dir.path(),
        "gifts",
        "CardInstalledEvent",
        "examples/payloads/stickycards/CardInstalledEvent.json",
    );
    assert!(
        mapping.contains(
            "    customer:\n      link: \"{{ customer_id }}\"\n      match:\n        - phone: \"{{ phone | e164 }}\"\n        - email: \"{{ email | email }}\"\n      when_unmatched: create\n"
        ),
        "{mapping}"
    );
    let customer = &plan["mappings"][0]["customer"];
    assert_eq!(customer["link"], "cus_1001", "{plan:#}");
    assert_eq!(customer["match"][0]["value"], "+14155552671", "{plan:#}");
    assert_eq!(
        customer["match"][1]["value"], "ana.lima@example.com",
        "{plan:#}"
    );
}

#[test]
fn a_signalmind_form_reads_each_field_by_name() {
    let dir = project();
    let (mapping, plan) = new_event(
        dir.path(),
        "forms",
        "FormSubmit",
        "examples/payloads/signalmind/FormSubmit.contact.json",
    );
    // Each pair of `Fields` is a value of its own, read by its name.
    assert!(
        mapping.contains("      email: \"$.Fields[?@.Name == 'Email'].Value\""),
        "{mapping}"
    );
    assert!(
        mapping.contains("      phone: \"$.Fields[?@.Name == 'Phone'].Value\""),
        "{mapping}"
    );
    assert!(
        mapping.contains("      # message: \"$.Fields[?@.Name == 'Message'].Value\""),
        "{mapping}"
    );
    // A filter finds a list: the match keys take its first item.
    assert!(
        mapping.contains("        - phone: \"{{ phone | first | e164 }}\""),
        "{mapping}"
    );
    let keys = &plan["mappings"][0]["customer"]["match"];
    assert_eq!(keys[0]["value"], "+15125550148", "{plan:#}");
    assert_eq!(keys[1]["value"], "marta.reyes@example.com", "{plan:#}");
    // The source profile names the event by its code.
    let source = std::fs::read_to_string(dir.path().join("mappings/sources/forms.yaml")).unwrap();
    assert!(source.contains("type: \"$.EventTypeCode\""), "{source}");
    assert!(source.contains("names: { \"F\": FormSubmit }"), "{source}");
}

#[test]
fn a_sample_with_only_an_id_links_and_skips_the_unmatched() {
    let dir = project();
    std::fs::write(
        dir.path().join("ping.json"),
        r#"{"type": "Ping", "member_id": "m_7", "note": "hello"}"#,
    )
    .unwrap();
    let (mapping, plan) = new_event(dir.path(), "pings", "Ping", "ping.json");
    assert!(
        mapping.contains("    customer:\n      link: \"{{ customer_id }}\"\n"),
        "{mapping}"
    );
    assert!(
        mapping.contains("      when_unmatched: skip\n"),
        "{mapping}"
    );
    assert_eq!(plan["mappings"][0]["customer"]["link"], "m_7", "{plan:#}");
}

#[test]
fn a_new_event_toward_sticky_cards_checks_and_its_test_passes() {
    let dir = project();
    let root = dir.path();
    let out = mapper(
        root,
        &[
            "new",
            "--source",
            "crm",
            "--event",
            "ContactCreate",
            "--from",
            "examples/payloads/ghl/ContactCreate.json",
            "--target",
            "stickycards",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mapping =
        std::fs::read_to_string(root.join("mappings/crm-stickycards/contact-create.yaml")).unwrap();
    assert!(mapping.contains("    target: stickycards\n"), "{mapping}");
    assert!(
        mapping.contains("      link: \"{{ customer_id }}\"\n"),
        "{mapping}"
    );
    assert!(mapping.contains("      - op: send_push\n"), "{mapping}");
    let check = mapper(root, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let test = mapper(
        root,
        &["test", "mappings/crm-stickycards/contact-create.test.yaml"],
    );
    assert_eq!(test.status.code(), Some(0), "{}", text(&test));
    assert!(
        text(&test).contains("1 passed, 0 failed"),
        "{}",
        text(&test)
    );
}
