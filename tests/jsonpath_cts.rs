//! The RFC 9535 compliance test suite, run through our JSONPath module.
//!
//! The suite lives in `../shared/reference/jsonpath-cts/cts.json`, beside the
//! checkout, not in the repository: a fresh clone has nothing beside it, so
//! `cargo test` skips this test with its reason, and `.ci/run` (where the
//! material is) runs it with `--ignored`.

use mapper::jsonpath::Selector;
use serde_json::Value;
use std::path::Path;

fn suite() -> Value {
    let path = Path::new("../shared/reference/jsonpath-cts/cts.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the compliance suite is expected in shared/ beside the checkout)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

#[test]
#[ignore = "needs ../shared/reference/jsonpath-cts (run by .ci/run)"]
fn rfc9535_compliance_suite_passes_entirely() {
    let suite = suite();
    let tests = suite["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 703, "the suite has 703 cases");
    let mut failures = Vec::new();
    for case in tests {
        let name = case["name"].as_str().unwrap_or("?");
        let selector = case["selector"].as_str().unwrap_or("");
        let parsed = Selector::parse(selector);
        if case.get("invalid_selector").and_then(Value::as_bool) == Some(true) {
            if parsed.is_ok() {
                failures.push(format!("{name}: `{selector}` should be rejected"));
            }
            continue;
        }
        let Ok(sel) = parsed else {
            failures.push(format!("{name}: `{selector}` wrongly rejected"));
            continue;
        };
        let got: Vec<Value> = sel.query(&case["document"]).into_iter().cloned().collect();
        // The shortcut for singular paths must pick the node the full query picks.
        if sel.is_singular() {
            let first_non_null = got.first().filter(|v| !v.is_null()).cloned();
            if sel.select(&case["document"]) != first_non_null {
                failures.push(format!("{name}: `{selector}`: singular shortcut disagrees"));
            }
        }
        let got = Value::Array(got);
        let ok = match (case.get("result"), case.get("results")) {
            (Some(want), _) => &got == want,
            (None, Some(Value::Array(any))) => any.iter().any(|w| w == &got),
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: `{selector}` gave {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 703 failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
