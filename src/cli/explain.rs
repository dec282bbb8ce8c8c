//! `mapper explain CODE`: the long form of a diagnostic code, with a wrong
//! and a right example, as a compiler's `--explain` gives it.

use std::process::ExitCode;

/// One code's long form: what it means, a wrong example, the right one.
struct Explanation {
    code: &'static str,
    title: &'static str,
    meaning: &'static str,
    wrong: &'static str,
    right: &'static str,
}

const EXPLANATIONS: &[Explanation] = &[
    Explanation {
        code: "M001",
        title: "the file is not valid YAML",
        meaning: "The YAML parser stopped at the position shown. Most often: a string holding `{{` or `: ` that is not quoted, or an indentation that does not line up.",
        wrong: "with: { body: {{ comment }} }",
        right: "with: { body: \"{{ comment }}\" }",
    },
    Explanation {
        code: "M002",
        title: "valid YAML of the wrong shape",
        meaning: "A key the file kind does not know (a typo), a value of the wrong type, or a required key missing. `mapper schema` prints every allowed key; editors with the YAML language server complete them.",
        wrong: "mappings:\n  - name: x\n    sourse: stickycards",
        right: "mappings:\n  - name: x\n    source: stickycards",
    },
    Explanation {
        code: "M003",
        title: "a JSONPath selector does not compile",
        meaning: "Selectors are RFC 9535 JSONPath, starting at `$` (the payload root); `@name` reads a field of the source profile instead. The caret points into the path.",
        wrong: "select: { balance: card.balance }",
        right: "select: { balance: $.card.balance }",
    },
    Explanation {
        code: "M004",
        title: "a template or condition does not compile",
        meaning: "Templates are minijinja: `{{ expression }}`, filters after `|`. Conditions (`when:`) are bare expressions.",
        wrong: "when: \"{{ type == 'debit' \"",
        right: "when: \"type == 'debit'\"",
    },
    Explanation {
        code: "M005",
        title: "a template uses a name that is not defined there",
        meaning: "Mapping templates see the `select:` names, `event`, `previous`, `known`, `vars`; target templates see `params`, `customer`, `env`, `known`, `event`. Declare the value under `select:` first.",
        wrong: "select: { phone: \"@phone\" }\n… body: \"{{ phone_number }}\"",
        right: "select: { phone: \"@phone\" }\n… body: \"{{ phone }}\"",
    },
    Explanation {
        code: "M006",
        title: "a template uses an unknown filter or test",
        meaning: "README's mapping reference lists every filter (e164, email, date, number, split_list, pick…) besides minijinja's built-ins.",
        wrong: "\"{{ phone | e146 }}\"",
        right: "\"{{ phone | e164 }}\"",
    },
    Explanation {
        code: "M007",
        title: "unknown source",
        meaning: "`source:` names a source defined by a file under sources/ (`source: NAME`).",
        wrong: "source: stickycard",
        right: "source: stickycards",
    },
    Explanation {
        code: "M008",
        title: "the source has no such event",
        meaning: "A source's events are its payload schemas: `<Event>.schema.json` in its `schemas:` folder. Add one (`mapper new` infers it from a sample) or fix the name.",
        wrong: "event: CardInstalled",
        right: "event: CardInstalledEvent",
    },
    Explanation {
        code: "M009",
        title: "unknown target or profile",
        meaning: "`target:` names a target file under targets/; `profiles:` in mapper.yaml picks one profile per source or target that has several.",
        wrong: "profiles: { stickycards: boomerang }",
        right: "profiles: { stickycards: boomerangme }",
    },
    Explanation {
        code: "M010",
        title: "the target has no such operation, lookup or customer search key",
        meaning: "`op:` names an operation of the target profile (or `http` for a raw request); `customer.match` keys are the target's `customer.find` keys.",
        wrong: "- op: add_tag",
        right: "- op: add_tags",
    },
    Explanation {
        code: "M011",
        title: "a parameter is missing or unknown; a setting is missing",
        meaning: "`with:` must give every `required` parameter of the operation and no undeclared one; a source's verification method needs its settings (e.g. `secret_env`).",
        wrong: "- op: add_note\n  with: { text: hi }",
        right: "- op: add_note\n  with: { body: hi }",
    },
    Explanation {
        code: "M012",
        title: "a selector can never match the event's payload schema",
        meaning: "The path names a property the event's schema does not declare. The hint names the nearest declared path; when the schema accepts undeclared properties and the payload really carries it, declare it in the schema file named (or `mapper schema infer SAMPLE --merge SCHEMA`). As a warning: the path is marked `deprecated` because newer samples no longer carry it.",
        wrong: "balance: $.card.balanse",
        right: "balance: $.card.balance",
    },
    Explanation {
        code: "M013",
        title: "two mappings fire for the same event and target without `order:`",
        meaning: "When several mappings handle one event on one target, each must say `order: N` (lower runs first) so the sequence is written down.",
        wrong: "- name: a\n  event: X\n- name: b\n  event: X",
        right: "- name: a\n  event: X\n  order: 10\n- name: b\n  event: X\n  order: 20",
    },
    Explanation {
        code: "M014",
        title: "an environment variable is used but not declared",
        meaning: "A target profile reads `env.NAME` only for variables it declares under `env:` (with `default` and `secret`).",
        wrong: "headers: { Authorization: \"Bearer {{ env.GHL_TOKEN }}\" }",
        right: "env: { GHL_TOKEN: { secret: true } }\nheaders: { Authorization: \"Bearer {{ env.GHL_TOKEN }}\" }",
    },
    Explanation {
        code: "M015",
        title: "the target's API cannot do what the action asks",
        meaning: "The target profile lists what its API cannot do, with the reason. Remove the action, or add `if_supported: true` to drop it (with a warning) under profiles that cannot.",
        wrong: "- op: set_segments\n  with: { segments: \"{{ tags }}\" }",
        right: "- op: set_segments\n  if_supported: true\n  with: { segments: \"{{ tags }}\" }",
    },
    Explanation {
        code: "M016",
        title: "a name is used twice or is reserved",
        meaning: "Mapping names are unique in the folder; `event`, `previous`, `known`, `vars` are reserved names in templates.",
        wrong: "select: { event: $.event_type }",
        right: "select: { event_type: $.event_type }",
    },
    Explanation {
        code: "M017",
        title: "a `@field` is not declared by the source profile",
        meaning: "`@name` reads a field the source profile declares under `fields:`; a typo inside a profile's own field is reported in the source file.",
        wrong: "phone: \"@phonenumber\"",
        right: "phone: \"@phone\"",
    },
    Explanation {
        code: "M018",
        title: "a custom field is written but not declared under `provision`",
        meaning: "Every custom field a mapping writes is declared in mapper.yaml with its data type, so it can be created with the right type on first use.",
        wrong: "custom_fields: { visits: \"{{ n }}\" }",
        right: "provision: { ghl: { custom_field: { visits: { name: Visits, data_type: NUMERICAL } } } }",
    },
    Explanation {
        code: "M019",
        title: "a mapping test is malformed",
        meaning: "A case gives exactly one of `payload`, `payload_file` (relative to the test file) or `body`. Tests are read by `check` and `test` only, never by `serve`.",
        wrong: "- name: t\n  source: stickycards\n  expect: {}",
        right: "- name: t\n  source: stickycards\n  payload_file: ../../examples/payloads/stickycards/CardInstalledEvent.json\n  expect: {}",
    },
    Explanation {
        code: "M020",
        title: "a value is not allowed or out of range",
        meaning: "A literal parameter of the wrong type or outside its `enum`; a setting that is not a country code, time zone or HTTP method.",
        wrong: "with: { status: closed }",
        right: "with: { status: lost }",
    },
    Explanation {
        code: "M021",
        title: "a file or folder cannot be read",
        meaning: "A source's payload schemas folder that cannot be read is one error for the source: its mappings' events and selectors are not checked until it can be read.",
        wrong: "schemas: ../schemas/events/stickycards",
        right: "schemas: ../../schemas/events/stickycards",
    },
    Explanation {
        code: "M022",
        title: "reserved: the committed JSON Schema is stale",
        meaning: "The test suite fails when schemas/mapping.schema.json differs from `mapper schema`; regenerate it.",
        wrong: "(edited src/config/model.rs only)",
        right: "cargo run -- schema > schemas/mapping.schema.json",
    },
    Explanation {
        code: "M023",
        title: "a tag written to GHL would come back as a segment",
        meaning: "GHL's tag webhooks are turned into Sticky Cards segments minus `vars.not_segments`. A tag this integration writes must be in that list, or it returns as a segment (a warning).",
        wrong: "vars: { not_segments: [churned] }\n… add_tags: { tags: [inactive 30d] }",
        right: "vars: { not_segments: [churned, inactive 30d] }",
    },
    Explanation {
        code: "M024",
        title: "a `TODO:` placeholder is left in an action",
        meaning: "`mapper new` writes one placeholder action; replace it with what the event should do, then `mapper test --update` the test (a warning).",
        wrong: "with: { body: \"TODO: replace this action\" }",
        right: "with: { body: \"Gift card received: {{ amount }}\" }",
    },
    Explanation {
        code: "M025",
        title: "a template can yield a type its destination cannot take",
        meaning: "The checker follows types through templates — filters (`number` gives a number, `date` a date, `split_list` a list, `e164` text…), comparisons and tests, `default(x)`, both branches of `a if c else b`, literals, and the payload schema's type of each value read — and holds them to the parameter's declared type (string, number, boolean, list, map) and to a custom field's `data_type` (NUMERICAL a number, DATE a date, TEXT one value). Anything that can arrive of another type is an error until a filter converts it; what it cannot tell (`pick`, an attribute, an unknown filter) is not judged.",
        wrong: "custom_fields:\n  loyalty_points: \"{{ balance_text | default('none') }}\"\n  card_installed_date: \"{{ installed }}\"\nfirst_name: \"{{ names | split_list }}\"",
        right: "custom_fields:\n  loyalty_points: \"{{ balance_text | number | default(0) }}\"\n  card_installed_date: \"{{ installed | date }}\"\nfirst_name: \"{{ names | split_list | first }}\"",
    },
];

/// Every code that has a long form.
pub fn codes() -> impl Iterator<Item = &'static str> {
    EXPLANATIONS.iter().map(|e| e.code)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// The long form of `code` (`M012`, `m12`, `12`), or `None`.
pub fn explain(code: &str) -> Option<String> {
    let digits: String = code.chars().filter(char::is_ascii_digit).collect();
    let n: u32 = digits.parse().ok()?;
    let wanted = format!("M{n:03}");
    let e = EXPLANATIONS.iter().find(|e| e.code == wanted)?;
    Some(format!(
        "{}: {}\n\n{}\n\nWrong:\n\n{}\nRight:\n\n{}",
        e.code,
        e.title,
        e.meaning,
        indent(e.wrong),
        indent(e.right)
    ))
}

/// Runs `mapper explain`: 0 printed, 2 for a code that does not exist.
pub fn run(code: &str) -> ExitCode {
    match explain(code) {
        Some(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "error: no diagnostic code `{code}`; codes: {}",
                codes().collect::<Vec<_>>().join(", ")
            );
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_of_the_checker_is_explained() {
        use crate::config::diagnostic::Code::*;
        let all = [
            M001, M002, M003, M004, M005, M006, M007, M008, M009, M010, M011, M012, M013, M014,
            M015, M016, M017, M018, M019, M020, M021, M022, M023, M024, M025,
        ];
        for c in all {
            let text = explain(c.as_str()).unwrap_or_else(|| panic!("{} unexplained", c.as_str()));
            assert!(text.starts_with(c.as_str()), "{text}");
            assert!(text.contains("Wrong:") && text.contains("Right:"), "{text}");
        }
        assert_eq!(codes().count(), all.len());
        assert!(explain("m12").is_some_and(|t| t.starts_with("M012")));
        assert!(explain("M999").is_none());
        assert!(explain("nope").is_none());
    }
}
