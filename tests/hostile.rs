//! The hostile-input corpus (`tests/hostile/*/*.case`, see its README.md):
//! every case is sent over real HTTP (a raw TCP client, so chunked bodies,
//! lying lengths and bytes no client library would send go out as written)
//! to the app `mapper serve` runs with the shipped mappings, and its answer
//! is held to the case's `expect:`. Around the corpus: no panic anywhere in
//! the process, no row stored for a refusal (one per new event), and
//! `serve` still answering at the end.

mod common;

#[path = "hostile/cases.rs"]
mod hostile_cases;

use hostile_cases::{Case, Prepared};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hostile_case_gets_its_documented_answer() {
    count_panics();
    let (ghl, sc) = common::simulators().await;
    let pem = mapper::fuzzing::ghl_test_public_pem();
    let s = common::serve_in(
        &ghl,
        &sc,
        &[("GHL_WEBHOOK_PUBLIC_KEY", pem.as_str())],
        "mappings",
    )
    .await;
    let address = s.running.address.unwrap();
    let cases = Case::load_all();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let before = stored(&s).await;
        let prepared = case.prepare(n, ghl.location_id());
        let mut answers = Vec::new();
        for request in &prepared {
            answers.push(hostile_cases::send(address, request).await);
        }
        let after = stored(&s).await;
        if let Err(why) = check(case, &prepared, &answers, after - before) {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    // Still serving, and still storing.
    let alive = hostile_cases::send(
        address,
        &hostile_cases::Request::get("/healthz".to_string()),
    )
    .await;
    assert_eq!(alive.status, 200, "serve stopped answering");
    let last = Case::parse(
        "after-corpus",
        b"request: POST /webhooks/stickycards?token=sc-token\nexpect: 202 accepted\nbody:\n{\"event_type\":\"CustomerCreatedEvent\",\"customer_id\":\"after\",\"timestamp\":\"2025-01-01T00:00:00Z\"}\n",
    );
    let answer = hostile_cases::send(address, &last.prepare(cases.len(), "")[0]).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic in the process");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    s.running.shutdown().await;
}

/// Events stored so far, whatever their state (the worker moves them on).
async fn stored(s: &common::Serve) -> i64 {
    // The inbox commits before it answers: nothing is in flight here.
    tokio::time::sleep(Duration::from_millis(1)).await;
    s.running
        .store
        .counts()
        .await
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum()
}

fn check(
    case: &Case,
    prepared: &Prepared,
    answers: &[hostile_cases::Answer],
    new_rows: i64,
) -> Result<(), String> {
    let Some(last) = answers.last() else {
        return Err("nothing sent".into());
    };
    let accepted = answers.iter().filter(|a| a.status == 202).count() as i64;
    if new_rows != accepted {
        return Err(format!(
            "{new_rows} rows stored for {accepted} answers 202 ({:?})",
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        ));
    }
    if last.status != case.expect.status {
        return Err(format!(
            "answered {} (expected {}): {}",
            last.status,
            case.expect.status,
            last.text_short()
        ));
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&last.body).ok();
    let Some(word) = &case.expect.word else {
        return Ok(());
    };
    if word == "-" {
        // The router's own answer (no route, wrong method): not ours to shape.
        return Ok(());
    }
    let Some(json) = json else {
        return Err(format!("answer is not JSON: {}", last.text_short()));
    };
    let key = if (200..300).contains(&last.status) {
        "status"
    } else {
        "error"
    };
    if json[key] != serde_json::json!(word) {
        return Err(format!("{key} is {} (expected {word}): {json}", json[key]));
    }
    if !(200..300).contains(&last.status) && !json["message"].is_string() {
        return Err(format!("no message: {json}"));
    }
    if let Some(reason) = &case.expect.reason {
        let message = json["message"].as_str().unwrap_or("");
        if !message.contains(reason.as_str()) {
            return Err(format!("message lacks `{reason}`: {json}"));
        }
    }
    if let Some(h) = &case.expect.header
        && json["header"] != serde_json::json!(h)
    {
        return Err(format!(
            "header is {} (expected {h}): {json}",
            json["header"]
        ));
    }
    if let Some(f) = &case.expect.field
        && json["field"] != serde_json::json!(f)
    {
        return Err(format!("field is {} (expected {f}): {json}", json["field"]));
    }
    let _ = prepared;
    Ok(())
}
