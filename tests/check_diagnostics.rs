//! `mapper check` diagnostics: one broken file per class, asserting code, line and column.

mod common;
use common::copy_dir;

use mapper::config::compile::compile_dir_with_tests;
use mapper::config::diagnostic::Diagnostic;
use std::path::{Path, PathBuf};

/// The minimal valid set plus `extra` files; returns the diagnostics.
fn check_with(extra: &[(&str, &str)]) -> (tempfile::TempDir, Vec<Diagnostic>) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("tests/fixtures/minimal"), dir.path());
    for (name, text) in extra {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let compiled = compile_dir_with_tests(dir.path());
    (dir, compiled.diagnostics)
}

/// Asserts exactly one error with `code`, in `file`, at `line:col`; returns it.
fn expect_one(extra: &[(&str, &str)], code: &str, file: &str, line: u32, col: u32) -> Diagnostic {
    let (_dir, diags) = check_with(extra);
    let matching: Vec<&Diagnostic> = diags.iter().filter(|d| d.code.as_str() == code).collect();
    assert_eq!(matching.len(), 1, "want one {code}, got: {diags:#?}");
    let d = matching[0].clone();
    assert!(d.file.ends_with(file), "{d:?}");
    assert_eq!((d.line, d.col), (line, col), "position of {d:?}");
    d
}

const HEAD: &str =
    "mappings:\n  - name: m1\n    source: shop\n    event: Order\n    order: 5\n    target: crm\n";

fn mapping(rest: &str) -> String {
    format!("{HEAD}{rest}")
}

#[test]
fn minimal_fixture_is_valid() {
    let (_dir, diags) = check_with(&[]);
    assert!(diags.is_empty(), "{diags:#?}");
}

#[test]
fn m001_yaml_syntax() {
    let d = expect_one(
        &[("bad.yaml", "mappings:\n  - name: x\n    source: \"shop\n")],
        "M001",
        "bad.yaml",
        3,
        13,
    );
    assert!(d.hint.is_some());
}

#[test]
fn m002_unknown_key_points_at_the_key() {
    let text = "mappings:\n  - name: m1\n    sourse: shop\n    event: Order\n    target: crm\n    actions: []\n";
    let d = expect_one(&[("bad.yaml", text)], "M002", "bad.yaml", 3, 5);
    assert!(d.message.contains("unknown field `sourse`"), "{d:?}");
}

#[test]
fn m003_invalid_jsonpath_points_inside_the_path() {
    let text = mapping("    select:\n      b: \"$.card[\"\n    actions: []\n");
    let d = expect_one(&[("bad.yaml", &text)], "M003", "bad.yaml", 8, 17);
    assert!(d.message.contains("$.card["), "{d:?}");
}

#[test]
fn m004_template_syntax() {
    let text =
        mapping("    actions:\n      - op: update\n        with: { balance: \"{{ 1 + }}\" }\n");
    let d = expect_one(&[("bad.yaml", &text)], "M004", "bad.yaml", 9, 32);
    assert!(d.message.contains("syntax error"), "{d:?}");
}

#[test]
fn m005_unknown_name_suggests_the_selected_one() {
    let text = mapping(
        "    select:\n      balance: $.card.balance\n    actions:\n      - op: update\n        with: { balance: \"{{ balanse }}\" }\n",
    );
    let d = expect_one(&[("bad.yaml", &text)], "M005", "bad.yaml", 11, 26);
    assert!(d.hint.unwrap().contains("did you mean `balance`"));
}

#[test]
fn m006_unknown_filter_suggests_a_close_one() {
    let text = mapping(
        "    select:\n      phone: \"@phone\"\n    customer:\n      match:\n        - phone: \"{{ phone | e165 }}\"\n    actions: []\n",
    );
    let d = expect_one(&[("bad.yaml", &text)], "M006", "bad.yaml", 11, 18);
    assert!(d.hint.unwrap().contains("e164"));
}

#[test]
fn m007_unknown_source() {
    let text = "mappings:\n  - name: m1\n    source: shopp\n    event: Order\n    target: crm\n    actions: []\n";
    let d = expect_one(&[("bad.yaml", text)], "M007", "bad.yaml", 3, 13);
    assert!(d.hint.unwrap().contains("`shop`"));
}

#[test]
fn m008_unknown_event() {
    let text = "mappings:\n  - name: m1\n    source: shop\n    event: Ordr\n    target: crm\n    actions: []\n";
    let d = expect_one(&[("bad.yaml", text)], "M008", "bad.yaml", 4, 12);
    assert!(d.hint.unwrap().contains("`Order`"));
}

#[test]
fn m009_unknown_target() {
    let text = "mappings:\n  - name: m1\n    source: shop\n    event: Order\n    target: cmr\n    actions: []\n";
    expect_one(&[("bad.yaml", text)], "M009", "bad.yaml", 5, 13);
}

#[test]
fn m010_unknown_operation() {
    let text = mapping("    actions:\n      - op: updat\n");
    let d = expect_one(&[("bad.yaml", &text)], "M010", "bad.yaml", 8, 13);
    assert!(d.hint.unwrap().contains("`update`"));
}

#[test]
fn m011_unknown_and_missing_parameters() {
    let text = mapping("    actions:\n      - op: update\n        with: { balanse: 1 }\n");
    let d = expect_one(&[("bad.yaml", &text)], "M011", "bad.yaml", 9, 17);
    assert!(d.hint.unwrap().contains("`balance`"));
    let text = mapping("    actions:\n      - op: tag\n        with: {}\n");
    let d = expect_one(&[("bad.yaml", &text)], "M011", "bad.yaml", 9, 15);
    assert!(d.message.contains("needs parameter `tags`"), "{d:?}");
}

#[test]
fn m012_selector_that_can_never_match_gets_the_nearest_path() {
    let text = mapping("    select:\n      b: $.card.balanse\n    actions: []\n");
    let d = expect_one(&[("bad.yaml", &text)], "M012", "bad.yaml", 8, 10);
    assert!(d.message.contains("`$.card` has no `balanse`"), "{d:?}");
    assert_eq!(d.hint.as_deref(), Some("did you mean `$.card.balance`?"));
}

#[test]
fn m013_colliding_mappings_need_an_order() {
    let text = "mappings:\n  - name: m1\n    source: shop\n    event: Order\n    target: crm\n    actions: []\n  - name: m2\n    source: shop\n    event: Order\n    target: crm\n    actions: []\n".to_string();
    let (_dir, diags) = check_with(&[("bad.yaml", &text)]);
    let at: Vec<(u32, u32)> = diags
        .iter()
        .filter(|d| d.code.as_str() == "M013")
        .map(|d| (d.line, d.col))
        .collect();
    assert_eq!(
        at,
        vec![(2, 11), (7, 11)],
        "every unordered mapping of the group is reported: {diags:#?}"
    );
    assert!(diags[0].hint.as_deref().unwrap_or("").contains("order"));
    let ordered = format!(
        "{HEAD}    actions: []\n  - name: m2\n    source: shop\n    event: Order\n    order: 2\n    target: crm\n    actions: []\n"
    );
    let (_dir, diags) = check_with(&[("bad.yaml", &ordered)]);
    assert!(diags.is_empty(), "{diags:#?}");
}

#[test]
fn m014_undeclared_environment_variable() {
    let target = "target: other\nbase_url: \"{{ env.OTHER_URL }}\"\nenv:\n  OTHER_URLS: {}\n";
    let d = expect_one(
        &[("targets/other.yaml", target)],
        "M014",
        "other.yaml",
        2,
        11,
    );
    assert!(d.hint.unwrap().contains("OTHER_URLS"));
}

#[test]
fn m015_unsupported_operation_cites_the_reason() {
    let text = mapping("    actions:\n      - op: teleport\n");
    let d = expect_one(&[("bad.yaml", &text)], "M015", "bad.yaml", 8, 13);
    assert!(
        d.message.contains("the CRM cannot teleport customers"),
        "{d:?}"
    );
    let optional = mapping("    actions:\n      - op: teleport\n        if_supported: true\n");
    let (_dir, diags) = check_with(&[("bad.yaml", &optional)]);
    let m015: Vec<&Diagnostic> = diags.iter().filter(|d| d.code.as_str() == "M015").collect();
    assert_eq!(m015.len(), 2, "{diags:#?}");
    assert!(
        m015.iter().all(|d| !d.is_error()),
        "if_supported turns it into a warning"
    );
    assert!(
        m015.iter().any(|d| d.message.contains("disabled")),
        "a mapping left with no action is disabled: {diags:#?}"
    );
}

#[test]
fn m016_duplicate_mapping_name() {
    let text = "mappings:\n  - name: order-balance\n    source: shop\n    event: Order\n    order: 1\n    target: crm\n    actions: []\n";
    // Files are read in name order, so the second use is the one in ok.yaml.
    let d = expect_one(&[("bad.yaml", text)], "M016", "ok.yaml", 2, 11);
    assert!(d.hint.unwrap().contains("bad.yaml:2:11"));
}

#[test]
fn m017_unknown_field_alias() {
    let text = mapping("    select:\n      e: \"@emial\"\n    actions: []\n");
    let d = expect_one(&[("bad.yaml", &text)], "M017", "bad.yaml", 8, 10);
    assert!(d.message.contains("@emial"));
}

#[test]
fn m018_custom_field_not_provisioned() {
    let text = mapping(
        "    actions:\n      - op: update\n        with:\n          fields: { pionts: 1 }\n",
    );
    let d = expect_one(&[("bad.yaml", &text)], "M018", "bad.yaml", 10, 21);
    assert!(d.message.contains("provision.crm.field"), "{d:?}");
}

#[test]
fn m020_value_not_allowed() {
    let text = mapping("    actions:\n      - op: update\n        with: { status: pending }\n");
    let d = expect_one(&[("bad.yaml", &text)], "M020", "bad.yaml", 9, 25);
    assert!(d.message.contains("[\"open\",\"closed\"]"), "{d:?}");
}

#[test]
fn all_errors_are_reported_in_one_run() {
    let text = mapping(
        "    select:\n      b: $.card.balanse\n    actions:\n      - op: updat\n      - op: teleport\n",
    );
    let (_dir, diags) = check_with(&[("bad.yaml", &text)]);
    let codes: Vec<&str> = diags.iter().map(|d| d.code.as_str()).collect();
    assert_eq!(codes, vec!["M012", "M010", "M015"], "{diags:#?}");
}

#[test]
fn rendered_diagnostic_has_caret_under_the_column() {
    let text = mapping("    select:\n      b: $.card.balanse\n    actions: []\n");
    let (dir, diags) = check_with(&[("bad.yaml", &text)]);
    let path: PathBuf = dir.path().join("bad.yaml");
    let rendered = diags[0].render(Some(&std::fs::read_to_string(path).unwrap()));
    assert!(rendered.contains(":8:10: error[M012]"), "{rendered}");
    assert!(
        rendered.contains("8 |       b: $.card.balanse\n  |          ^"),
        "{rendered}"
    );
}

#[test]
fn m019_malformed_test_case() {
    let text =
        "tests:\n  - name: t1\n    source: shop\n    payload_file: nowhere.json\n    expect: {}\n";
    let d = expect_one(&[("bad.test.yaml", text)], "M019", "bad.test.yaml", 4, 19);
    assert!(d.message.contains("does not exist"), "{d:?}");
    let text = "tests:\n  - name: t1\n    source: shop\n    expect: {}\n";
    let d = expect_one(&[("bad.test.yaml", text)], "M019", "bad.test.yaml", 2, 11);
    assert!(d.message.contains("exactly one"), "{d:?}");
}

#[test]
fn a_broken_project_file_does_not_cascade() {
    let (_dir, diags) = check_with(&[("mapper.yaml", "settings:\n  phone_region: [US\n")]);
    let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    assert_eq!(
        errors.len(),
        1,
        "only the project file's own error: {diags:#?}"
    );
    assert!(errors[0].file.ends_with("mapper.yaml"));
    assert!(
        diags
            .iter()
            .any(|d| !d.is_error() && d.message.contains("did not run"))
    );
}

/// The shipped set with `ownership:` replaced.
fn shipped_with_ownership(ownership: &str) -> (tempfile::TempDir, Vec<Diagnostic>) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), &dir.path().join("mappings"));
    copy_dir(Path::new("schemas"), &dir.path().join("schemas"));
    copy_dir(Path::new("examples"), &dir.path().join("examples"));
    let project = dir.path().join("mappings/mapper.yaml");
    let text = std::fs::read_to_string(&project).unwrap();
    let cut = text.find("\nownership:").unwrap();
    std::fs::write(&project, format!("{}\n{ownership}", &text[..cut])).unwrap();
    let compiled = compile_dir_with_tests(&dir.path().join("mappings"));
    (dir, compiled.diagnostics)
}

#[test]
fn ownership_names_mirror_fields_of_the_owner_and_one_owner_each() {
    let (_dir, diags) = shipped_with_ownership(
        "ownership:\n  ghl: [first_nmae, phone]\n  stickycards: [phone]\n  crm: [email]\n",
    );
    let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    let typo = errors
        .iter()
        .find(|d| d.code.as_str() == "M017")
        .unwrap_or_else(|| panic!("{diags:#?}"));
    assert!(typo.message.contains("first_nmae"), "{typo:?}");
    assert!(
        typo.hint.as_deref().unwrap_or("").contains("first_name"),
        "{typo:?}"
    );
    assert!(
        typo.file.ends_with("mapper.yaml") && typo.line > 1 && typo.col == 9,
        "{typo:?}"
    );
    let twice = errors
        .iter()
        .find(|d| d.code.as_str() == "M016")
        .unwrap_or_else(|| panic!("{diags:#?}"));
    assert!(twice.message.contains("owned by both"), "{twice:?}");
    assert!(
        errors
            .iter()
            .any(|d| d.code.as_str() == "M009" && d.message.contains("`crm`")),
        "{diags:#?}"
    );
    let (_dir, diags) = shipped_with_ownership("ownership:\n  ghl: [phone]\n");
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
}

/// Every error of `diags`.
fn errors(diags: &[Diagnostic]) -> Vec<&Diagnostic> {
    diags.iter().filter(|d| d.is_error()).collect()
}

#[test]
fn a_typo_inside_an_anchor_is_reported_once_at_the_anchor_with_a_note_per_use() {
    let text = "shared:\n  sel: &sel\n    b: $.card.balanse\nmappings:\n  - name: m1\n    source: shop\n    event: Order\n    order: 1\n    target: crm\n    select: *sel\n    actions: []\n  - name: m2\n    source: shop\n    event: Order\n    order: 2\n    target: crm\n    select:\n      <<: *sel\n      p: \"@phone\"\n    actions: []\n";
    let d = expect_one(&[("anchored.yaml", text)], "M012", "anchored.yaml", 3, 8);
    assert_eq!(d.notes.len(), 2, "{d:#?}");
    assert!(
        d.notes[0].contains("mapping `m1`") && d.notes[0].contains("anchored.yaml:10:"),
        "{d:#?}"
    );
    assert!(
        d.notes[1].contains("mapping `m2`") && d.notes[1].contains("anchored.yaml:18:"),
        "{d:#?}"
    );
    assert_eq!(d.hint.as_deref(), Some("did you mean `$.card.balance`?"));
}

#[test]
fn a_typo_in_a_source_field_is_reported_in_the_source_profile() {
    let source = std::fs::read_to_string("tests/fixtures/minimal/sources/shop.yaml")
        .unwrap()
        .replace("phone: $.customer.phone", "phone: $.customer.phnoe");
    let line = source
        .lines()
        .position(|l| l.contains("phnoe"))
        .expect("the fixture declares @phone") as u32
        + 1;
    let d = expect_one(
        &[("sources/shop.yaml", &source)],
        "M012",
        "sources/shop.yaml",
        line,
        10,
    );
    assert!(d.message.contains("`@phone`"), "{d:#?}");
    assert_eq!(d.notes.len(), 1, "{d:#?}");
    assert!(d.notes[0].contains("mapping `order-balance`"), "{d:#?}");
    assert!(d.notes[0].contains("ok.yaml:"), "{d:#?}");
    assert_eq!(
        d.hint.as_deref(),
        Some("did you mean `$.customer.phone`?"),
        "{d:#?}"
    );
}

#[test]
fn a_top_level_typo_gets_the_nearest_path_too() {
    // The name exists under another parent.
    let text = mapping("    select:\n      b: $.balance\n    actions: []\n");
    let d = expect_one(&[("bad.yaml", &text)], "M012", "bad.yaml", 8, 10);
    assert!(
        d.hint.as_deref().unwrap_or("").contains("`$.card.balance`"),
        "{d:#?}"
    );
    // Far from every declared path: still the nearest one, however far.
    let text = mapping("    select:\n      b: $.kind_of_thing\n    actions: []\n");
    let d = expect_one(&[("bad.yaml", &text)], "M012", "bad.yaml", 8, 10);
    assert!(
        d.hint
            .as_deref()
            .unwrap_or("")
            .contains("the nearest declared path is `$.kind`"),
        "{d:#?}"
    );
}

#[test]
fn an_undeclared_property_of_an_open_schema_is_told_to_be_declared() {
    let text = mapping("    select:\n      device: $.device_type\n    actions: []\n");
    let d = expect_one(&[("bad.yaml", &text)], "M012", "bad.yaml", 8, 15);
    let hint = d.hint.unwrap_or_default();
    assert!(hint.contains("declare it"), "{hint}");
    assert!(hint.contains("schemas/Order.schema.json"), "{hint}");
}

#[test]
fn a_missing_schema_folder_is_one_error_not_one_per_mapping() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), &dir.path().join("mappings"));
    copy_dir(Path::new("schemas"), &dir.path().join("schemas"));
    copy_dir(Path::new("examples"), &dir.path().join("examples"));
    std::fs::remove_dir_all(dir.path().join("schemas/events/stickycards")).unwrap();
    let compiled = compile_dir_with_tests(&dir.path().join("mappings"));
    let errs = errors(&compiled.diagnostics);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].code.as_str(), "M021");
    assert!(
        errs[0].file.ends_with("sources/stickycards.yaml"),
        "{errs:#?}"
    );
}

#[test]
fn production_never_reads_tests_or_their_payload_files() {
    let broken = "tests:\n  - name: [unclosed\n";
    let missing =
        "tests:\n  - name: t1\n    source: shop\n    payload_file: nowhere.json\n    expect: {}\n";
    let (dir, diags) = check_with(&[("a.test.yaml", broken), ("b.test.yaml", missing)]);
    assert!(errors(&diags).len() >= 2, "check sees both: {diags:#?}");
    let production = mapper::config::compile::compile_dir(dir.path());
    assert!(
        production.diagnostics.is_empty(),
        "{:#?}",
        production.diagnostics
    );
    assert!(production.program.is_some());
    assert!(production.tests.is_empty());
}

#[test]
fn a_tag_written_to_ghl_that_would_come_back_as_a_segment_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), &dir.path().join("mappings"));
    copy_dir(Path::new("schemas"), &dir.path().join("schemas"));
    let warned = |dir: &Path| -> Vec<Diagnostic> {
        compile_dir_with_tests(&dir.join("mappings"))
            .diagnostics
            .into_iter()
            .filter(|d| d.code.as_str() == "M023")
            .collect()
    };
    // Every tag the shipped set writes to GHL is a segment or listed.
    assert!(warned(dir.path()).is_empty(), "{:#?}", warned(dir.path()));
    // Take the schedule's "inactive 30d" out of `not_segments`: it would
    // come back as a Sticky Cards segment, and the schedule is named.
    let project = dir.path().join("mappings/mapper.yaml");
    let text = std::fs::read_to_string(&project).unwrap();
    assert!(
        text.contains(", inactive 30d]"),
        "the shipped list names it"
    );
    std::fs::write(&project, text.replace(", inactive 30d]", "]")).unwrap();
    let found = warned(dir.path());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(!found[0].is_error());
    assert!(found[0].message.contains("`inactive 30d`"), "{found:#?}");
    assert!(found[0].file.ends_with("schedules-ghl/inactive.yaml"));
}

/// The shipped set plus one mapping file; returns the diagnostics.
fn shipped_plus(name: &str, text: &str) -> (tempfile::TempDir, Vec<Diagnostic>) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), &dir.path().join("mappings"));
    copy_dir(Path::new("schemas"), &dir.path().join("schemas"));
    std::fs::write(dir.path().join("mappings").join(name), text).unwrap();
    let compiled = mapper::config::compile::compile_dir(&dir.path().join("mappings"));
    (dir, compiled.diagnostics)
}

const EXTRA: &str = "mappings:\n  - name: extra\n    source: stickycards\n    event: CardInstalledEvent\n    target: ghl\n    order: 99\n    select:\n      first_name: $.first_name\n      balance: $.card.balance\n    customer:\n      match:\n        - email: \"{{ first_name }}\"\n    actions:\n      - op: upsert_contact\n        with:\n";

#[test]
fn a_template_yielding_text_into_a_boolean_or_numerical_field_is_an_error() {
    let text = format!(
        "{EXTRA}          dnd: \"{{{{ first_name }}}}\"\n          custom_fields:\n            loyalty_points: \"{{{{ first_name | trim }}}}\"\n            card_status: \"{{{{ balance }}}}\"\n"
    );
    let (_dir, diags) = shipped_plus("extra.yaml", &text);
    let found: Vec<&Diagnostic> = diags.iter().filter(|d| d.code.as_str() == "M025").collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found
            .iter()
            .all(|d| d.is_error() && d.file.ends_with("extra.yaml"))
    );
    assert!(
        found[0]
            .message
            .contains("`upsert_contact.dnd` takes a boolean")
            && found[0].message.contains("can yield text"),
        "{found:#?}"
    );
    assert_eq!((found[0].line, found[0].col), (16, 16), "{found:#?}");
    assert!(
        found[1]
            .message
            .contains("custom field `loyalty_points` (NUMERICAL)"),
        "{found:#?}"
    );
    // A `number` filter converts; a number into a TEXT field is fine.
    let text = format!(
        "{EXTRA}          dnd: \"{{{{ balance > 0 }}}}\"\n          custom_fields:\n            loyalty_points: \"{{{{ first_name | number }}}}\"\n            card_status: \"Balance {{{{ balance }}}}\"\n"
    );
    let (_dir, diags) = shipped_plus("extra.yaml", &text);
    assert!(
        diags.iter().all(|d| d.code.as_str() != "M025"),
        "{diags:#?}"
    );
}

#[test]
fn a_path_the_other_profile_lacks_is_reported_unless_the_mapping_says_its_profiles() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), &dir.path().join("mappings"));
    copy_dir(Path::new("schemas"), &dir.path().join("schemas"));
    copy_dir(Path::new("examples"), &dir.path().join("examples"));
    // A new event, declared by both profiles' schemas.
    for folder in ["stickycards", "stickycards-boomerangme"] {
        let events = dir.path().join("schemas/events").join(folder);
        std::fs::copy(
            events.join("CardInstalledEvent.schema.json"),
            events.join("CardGiftedEvent.schema.json"),
        )
        .unwrap();
    }
    let mapping = "mappings:\n  - name: seed-only\n    source: stickycards\n    event: CardGiftedEvent\n    target: ghl\n    order: 99\n    select:\n      phone: $.phone_number\n    customer:\n      match:\n        - phone: \"{{ phone | e164 }}\"\n    actions:\n      - op: add_tags\n        with: { tags: [card holder] }\n";
    let file = dir.path().join("mappings/extra.yaml");
    std::fs::write(&file, mapping).unwrap();
    let root = dir.path().join("mappings");
    // Under the selected profile (seed) it is fine…
    assert!(!compile_dir_with_tests(&root).has_errors());
    // …but `check` holds it to boomerangme too.
    let checked = mapper::config::compile::check_dir(&root);
    let errs = errors(&checked.diagnostics);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].code.as_str(), "M012");
    assert!(errs[0].file.ends_with("extra.yaml"));
    assert!(
        errs[0]
            .message
            .contains("under profile `stickycards: boomerangme`"),
        "{errs:#?}"
    );
    // Saying which profiles it supports leaves it out under the others.
    std::fs::write(
        &file,
        mapping.replace(
            "    order: 99\n",
            "    order: 99\n    profiles: { stickycards: [seed] }\n",
        ),
    )
    .unwrap();
    let checked = mapper::config::compile::check_dir(&root);
    assert!(!checked.has_errors(), "{:#?}", checked.diagnostics);
}
