//! Types through templates (M025): what a template yields, told from its
//! filters, operators and the payload schema's types of what it reads, held
//! to the parameter's declared type and to a provisioned custom field's
//! `data_type`.

mod common;
use common::copy_dir;

use mapper::config::diagnostic::Diagnostic;
use std::path::Path;

/// The shipped set plus one mapping on Sticky Cards' `CardInstalledEvent`
/// whose `upsert_contact` (or `op`) takes `with`; the M025 diagnostics.
fn m025(op: &str, with: &str) -> Vec<Diagnostic> {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), &dir.path().join("mappings"));
    copy_dir(Path::new("schemas"), &dir.path().join("schemas"));
    let text = format!(
        "mappings:\n  - name: extra\n    source: stickycards\n    event: CardInstalledEvent\n    target: ghl\n    order: 99\n    select:\n      first_name: $.first_name\n      balance: $.card.balance\n      installed: $.card.installed_date\n      phone: $.phone_number\n      segments: $.segments[*]\n    customer:\n      match:\n        - phone: \"{{{{ phone | e164 }}}}\"\n    actions:\n      - op: {op}\n        with:\n{with}"
    );
    std::fs::write(dir.path().join("mappings/extra.yaml"), text).unwrap();
    let compiled = mapper::config::compile::compile_dir(&dir.path().join("mappings"));
    let other: Vec<&Diagnostic> = compiled
        .diagnostics
        .iter()
        // M013: the shipped `sc-card-installed` fires on the same event without `order:`.
        .filter(|d| d.is_error() && !["M025", "M013"].contains(&d.code.as_str()))
        .collect();
    assert!(other.is_empty(), "only M025 is under test: {other:#?}");
    compiled
        .diagnostics
        .into_iter()
        .filter(|d| d.code.as_str() == "M025")
        .collect()
}

/// One `custom_fields` entry of `upsert_contact`.
fn field(key: &str, value: &str) -> Vec<Diagnostic> {
    m025(
        "upsert_contact",
        &format!("          custom_fields:\n            {key}: \"{value}\"\n"),
    )
}

fn one(diags: &[Diagnostic], wants: &[&str]) {
    assert_eq!(diags.len(), 1, "want one M025: {diags:#?}");
    let d = &diags[0];
    assert!(d.is_error(), "{d:?}");
    for w in wants {
        assert!(
            d.message.contains(w) || d.hint.as_deref().unwrap_or("").contains(w),
            "`{w}` missing from {d:#?}"
        );
    }
}

fn none(diags: &[Diagnostic]) {
    assert!(diags.is_empty(), "want no M025: {diags:#?}");
}

#[test]
fn text_into_a_boolean_parameter_is_an_error_a_comparison_is_not() {
    one(
        &m025("upsert_contact", "          dnd: \"{{ first_name }}\"\n"),
        &["`upsert_contact.dnd` takes a boolean", "text"],
    );
    none(&m025(
        "upsert_contact",
        "          dnd: \"{{ first_name == 'yes' }}\"\n",
    ));
}

#[test]
fn text_into_a_numerical_field_is_an_error_unless_the_number_filter_converts_it() {
    one(
        &field("loyalty_points", "{{ first_name | trim }}"),
        &[
            "custom field `loyalty_points` (NUMERICAL)",
            "`number` filter",
        ],
    );
    // The project's own text filters yield text too.
    one(
        &field("loyalty_points", "{{ phone | e164 }}"),
        &["filter `e164`"],
    );
    none(&field("loyalty_points", "{{ first_name | number }}"));
    none(&field("loyalty_points", "{{ balance }}"));
    none(&field("loyalty_points", "{{ installed | unix }}"));
    none(&field("loyalty_points", "{{ segments | length }}"));
}

#[test]
fn a_list_into_a_text_parameter_is_an_error() {
    one(
        &m025(
            "upsert_contact",
            "          first_name: \"{{ first_name | split_list }}\"\n",
        ),
        &["`upsert_contact.first_name` takes text", "a list", "join"],
    );
    // A wildcard selector finds a list.
    one(
        &m025("upsert_contact", "          city: \"{{ segments }}\"\n"),
        &["a list"],
    );
    none(&m025(
        "upsert_contact",
        "          city: \"{{ segments | join(', ') }}\"\n",
    ));
    // And the other way round: text where a list goes.
    one(
        &m025("add_tags", "          tags: \"{{ first_name }}\"\n"),
        &["takes a list", "split_list"],
    );
    none(&m025(
        "add_tags",
        "          tags: \"{{ first_name | split_list | compact }}\"\n",
    ));
}

#[test]
fn a_date_field_takes_what_the_date_filter_yields_not_raw_text() {
    none(&field("card_installed_date", "{{ installed | date }}"));
    none(&field(
        "card_installed_date",
        "{{ installed | datetime(tz='UTC') }}",
    ));
    one(
        &field("card_installed_date", "{{ installed }}"),
        &["(DATE) takes a date", "`date` filter"],
    );
    one(
        &field("card_installed_date", "{{ installed | unix }}"),
        &["a number"],
    );
}

#[test]
fn default_and_inline_if_yield_both_branches() {
    one(
        &field("loyalty_points", "{{ balance | default('none') }}"),
        &["can yield text", "default"],
    );
    none(&field("loyalty_points", "{{ balance | default(0) }}"));
    one(
        &field("loyalty_points", "{{ first_name if balance > 0 else 0 }}"),
        &["if … else"],
    );
    none(&field(
        "loyalty_points",
        "{{ (first_name | number) if first_name is defined else 0 }}",
    ));
    // No `else`: missing when the condition fails, which is never a type error.
    none(&field("loyalty_points", "{{ balance if balance > 0 }}"));
}

#[test]
fn pick_is_not_judged_until_a_filter_says_what_it_yields() {
    none(&field(
        "loyalty_points",
        "{{ segments | pick('id', 'a', 'value') }}",
    ));
    none(&field(
        "loyalty_points",
        "{{ segments | pick('id', 'a', 'value') | number }}",
    ));
    one(
        &field(
            "loyalty_points",
            "{{ segments | pick('id', 'a', 'value') | lower }}",
        ),
        &["filter `lower`"],
    );
}

#[test]
fn text_with_a_template_in_it_is_text() {
    one(
        &field("loyalty_points", "Balance {{ balance }}"),
        &["text with a template in it"],
    );
    none(&field("card_status", "Balance {{ balance }}"));
}

#[test]
fn a_literal_custom_field_value_is_held_to_its_data_type() {
    one(
        &m025(
            "upsert_contact",
            "          custom_fields:\n            loyalty_points: lots\n",
        ),
        &["a literal", "(NUMERICAL) takes a number"],
    );
    none(&m025(
        "upsert_contact",
        "          custom_fields:\n            loyalty_points: 12\n            card_installed_date: \"2025-03-01\"\n            card_status: installed\n",
    ));
    one(
        &m025(
            "upsert_contact",
            "          custom_fields:\n            card_installed_date: soon\n",
        ),
        &["(DATE) takes a date"],
    );
}

#[test]
fn a_field_of_several_paths_yields_what_the_paths_the_event_has_yield() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), &dir.path().join("mappings"));
    copy_dir(Path::new("schemas"), &dir.path().join("schemas"));
    // A field listing one path per payload shape: only `$.first_name` is in
    // this event's payload, so the field yields its text.
    let profile = dir.path().join("mappings/sources/stickycards.yaml");
    let text = std::fs::read_to_string(&profile).unwrap().replace(
        "fields:\n",
        "fields:\n  nickname: [$.member.nick_name, $.first_name]\n",
    );
    std::fs::write(&profile, text).unwrap();
    let mapping = "mappings:\n  - name: extra\n    source: stickycards\n    event: CardInstalledEvent\n    target: ghl\n    order: 99\n    select:\n      nick: \"@nickname\"\n      phone: \"@phone\"\n    customer:\n      match:\n        - phone: \"{{ phone | e164 }}\"\n    actions:\n      - op: upsert_contact\n        with:\n          custom_fields:\n            loyalty_points: \"{{ nick }}\"\n";
    std::fs::write(dir.path().join("mappings/extra.yaml"), mapping).unwrap();
    let compiled = mapper::config::compile::compile_dir(&dir.path().join("mappings"));
    let found: Vec<&Diagnostic> = compiled
        .diagnostics
        .iter()
        .filter(|d| d.code.as_str() == "M025")
        .collect();
    assert_eq!(found.len(), 1, "{:#?}", compiled.diagnostics);
    assert!(found[0].message.contains("`nick`"), "{found:#?}");
}
