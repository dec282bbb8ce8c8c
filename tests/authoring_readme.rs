//! README's "Adding an event with `mapper new`" table, step by step, on a
//! copy of the shipped set: the commands it gives print and write what it
//! says.

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

#[test]
fn the_new_event_walkthrough_of_readme_is_true() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let steps = [
        "| 1 | `mapper new --source stickycards --event CardGiftedEvent --from gifted.json` |",
        "| 3 | `mapper check` |",
        "| 4 | `mapper test --update mappings/stickycards-ghl/card-gifted-event.test.yaml` |",
        "| 5 | `mapper test` |",
    ];
    for s in steps {
        assert!(readme.contains(s), "README no longer has step `{s}`");
    }

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for part in ["mappings", "schemas", "examples"] {
        copy_dir(Path::new(part), &root.join(part));
    }
    let sample =
        std::fs::read_to_string(root.join("examples/payloads/stickycards/CardInstalledEvent.json"))
            .unwrap()
            .replace("\"CardInstalledEvent\"", "\"CardGiftedEvent\"");
    std::fs::write(root.join("gifted.json"), sample).unwrap();

    // 1: three files written, each said, and the TODO as warning M024.
    let out = mapper(
        root,
        &[
            "new",
            "--source",
            "stickycards",
            "--event",
            "CardGiftedEvent",
            "--from",
            "gifted.json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    for f in [
        "schemas/events/stickycards/CardGiftedEvent.schema.json",
        "mappings/stickycards-ghl/card-gifted-event.yaml",
        "mappings/stickycards-ghl/card-gifted-event.test.yaml",
    ] {
        assert!(said.contains(&format!("wrote {f}")), "{said}");
        assert!(root.join(f).is_file(), "{f}");
    }
    assert!(said.contains("warning[M024]"), "{said}");
    let mapping_file = root.join("mappings/stickycards-ghl/card-gifted-event.yaml");
    let mapping = std::fs::read_to_string(&mapping_file).unwrap();
    for written in [
        "      customer_id: \"$.customer_id\"",
        "      email: \"$.email\"",
        "      phone: \"$.phone_number\"",
        "      # first_name: \"$.first_name\"",
        "      link: \"{{ customer_id }}\"",
        "        - phone: \"{{ phone | e164 }}\"",
        "        - email: \"{{ email | email }}\"",
        "      - op: add_note",
        "TODO:",
        "profiles: { stickycards: [seed] }",
    ] {
        assert!(mapping.contains(written), "`{written}` not in {mapping}");
    }

    // 2: uncomment a value, replace the TODO action.
    let todo_line = mapping
        .lines()
        .find(|l| l.contains("TODO: replace"))
        .unwrap()
        .to_string();
    let edited = mapping
        .replace("      # first_name: ", "      first_name: ")
        .replace(
            &todo_line,
            "        with: { body: \"{{ first_name }} received a gift card\" }",
        );
    std::fs::write(&mapping_file, edited).unwrap();

    // 3: the folder checks, no warning left.
    let check = mapper(root, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    assert!(text(&check).contains("ok: no errors"), "{}", text(&check));
    assert!(!text(&check).contains("M024"), "{}", text(&check));

    // 4: the recorded plan differs; --update shows it and records the new one.
    let test_file = "mappings/stickycards-ghl/card-gifted-event.test.yaml";
    let update = mapper(root, &["test", "--update", test_file]);
    assert_eq!(update.status.code(), Some(0), "{}", text(&update));
    assert!(
        text(&update).contains("0 passed, 0 failed, 1 updated"),
        "{}",
        text(&update)
    );
    assert!(
        text(&update).contains("Ana received a gift card"),
        "{}",
        text(&update)
    );

    // 5: every case passes, the new one included.
    let all = mapper(root, &["test"]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all));
    assert!(
        text(&all).contains("ok    stickycards-ghl/card-gifted-event.test.yaml"),
        "{}",
        text(&all)
    );
}

/// Each row of README's diagnostic table names the command printing its
/// long form, and that command prints it.
#[test]
fn every_diagnostic_code_of_readme_gives_its_explain_command() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| M0")).collect();
    let codes: Vec<String> = (1..=25).map(|n| format!("M{n:03}")).collect();
    assert_eq!(rows.len(), codes.len(), "{rows:#?}");
    for (row, code) in rows.iter().zip(&codes) {
        assert!(row.starts_with(&format!("| {code} |")), "{row}");
        assert!(
            row.ends_with(&format!("| `mapper explain {code}` |")),
            "{row}"
        );
        let out = mapper(Path::new("."), &["explain", code]);
        assert_eq!(out.status.code(), Some(0), "{code}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(code.as_str()),
            "{}",
            text(&out)
        );
    }
}
