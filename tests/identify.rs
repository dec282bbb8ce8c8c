//! How the shipped sources tell a repeated webhook from a new one.

use mapper::config::compile::compile_dir;
use mapper::program::Program;
use serde_json::{Value, json};
use std::path::Path;

fn program() -> Program {
    compile_dir(Path::new("mappings"))
        .program
        .expect("the shipped mappings compile")
}

fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("examples/payloads/stickycards/{name}.json"))
        .expect("example payload");
    serde_json::from_str(&text).expect("example is JSON")
}

fn key(program: &Program, payload: &Value) -> String {
    program
        .identify("stickycards", payload)
        .expect("identified")
        .dedup_key
}

#[test]
fn declared_dedup_fields_make_the_key() {
    let program = program();
    let scan = example("CardScannedEvent");
    let mut other_time = scan.clone();
    other_time["timestamp"] = json!("2031-01-01 00:00:00");
    let mut other_text = scan.clone();
    other_text["note"] = json!("not one of the key's fields");
    assert_ne!(key(&program, &scan), key(&program, &other_time));
    assert_eq!(key(&program, &scan), key(&program, &other_text));
}

/// With none of `customer_id`, `card_id` and `timestamp`, two different
/// events are not one duplicate of the other: the body is the key.
#[test]
fn a_body_without_any_dedup_field_is_keyed_by_itself() {
    let program = program();
    let mut first = example("CardScannedEvent");
    for field in ["customer_id", "card_id", "timestamp"] {
        first.as_object_mut().expect("an object").remove(field);
    }
    let mut second = first.clone();
    second["email"] = json!("someone.else@example.com");
    assert_ne!(key(&program, &first), key(&program, &second));
    assert_eq!(key(&program, &first), key(&program, &first.clone()));
}
