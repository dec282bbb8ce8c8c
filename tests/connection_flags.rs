//! `mapper status`, `log` and `replay` with `--connection NAME` (issue #11):
//! the real binary against a SQLite file seeded through `mapper::store`
//! with events, attempts and held writes of several connections.

use mapper::store::{EventState, HeldWrite, NewEvent, Store, SyncLogEntry};
use std::collections::BTreeMap;
use std::process::{Command, Output};

fn event(connection: &str, key: &str, event_type: &str, state: EventState) -> NewEvent {
    NewEvent {
        connection: connection.into(),
        source: "stickycards".into(),
        event_type: event_type.into(),
        event_id: None,
        dedup_key: key.into(),
        occurred_at: Some(1_700_000_000_000),
        customer_key: Some("cus_1".into()),
        headers: serde_json::json!({"content-type": "application/json"}),
        body: br#"{"event_type":"CardInstalledEvent"}"#.to_vec(),
        state,
        note: None,
    }
}

fn attempt(connection: &str, event_row: i64, request: &str) -> SyncLogEntry {
    SyncLogEntry {
        connection: connection.into(),
        event_row,
        mapping: "card-installed".into(),
        action: "upsert_contact".into(),
        target: "ghl".into(),
        customer: Some("cus_1".into()),
        request: request.into(),
        status: Some(500),
        error: Some("simulated".into()),
        attempt: 1,
        took_ms: Some(3),
    }
}

/// A database with stored connections `acme` (enabled) and `beta` (disabled,
/// no events), and events of `acme`, `default` and `gone` (a connection
/// removed since: its events stay):
/// - acme: 2 dead (with errors), 1 delivered; an attempt for customer cus_1; a held write;
/// - default: 1 dead (with an error), 1 unmapped; an attempt for customer cus_1;
/// - gone: 1 dead.
async fn seed() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let store = Store::open(&db).await.unwrap();
    store
        .add_connection("acme", &BTreeMap::new(), None)
        .await
        .unwrap();
    store
        .add_connection("beta", &BTreeMap::new(), None)
        .await
        .unwrap();
    assert!(
        store
            .disable_connection("beta", "card billing paused")
            .await
            .unwrap()
    );
    let ids: Vec<i64> = store
        .insert_events(&[
            event("acme", "a1", "CardInstalledEvent", EventState::Received),
            event("acme", "a2", "CardInstalledEvent", EventState::Received),
            event("acme", "a3", "CardInstalledEvent", EventState::Received),
            event("default", "d1", "CardInstalledEvent", EventState::Received),
            event("default", "d2", "CouponRedeemedEvent", EventState::Unmapped),
            event("gone", "g1", "CardInstalledEvent", EventState::Received),
        ])
        .await
        .unwrap()
        .iter()
        .map(|i| i.id())
        .collect();
    let now = mapper::store::now_ms();
    for (id, error) in [
        (ids[0], "acme boom 1"),
        (ids[1], "acme boom 2"),
        (ids[3], "default boom"),
        (ids[5], "gone boom"),
    ] {
        store
            .finish(id, EventState::Dead, now, Some(error))
            .await
            .unwrap();
    }
    store
        .finish(ids[2], EventState::Delivered, now, None)
        .await
        .unwrap();
    store
        .log_attempt(&attempt("acme", ids[0], "PUT acme-request"))
        .await
        .unwrap();
    store
        .log_attempt(&attempt("default", ids[3], "PUT default-request"))
        .await
        .unwrap();
    store
        .hold_write(
            &HeldWrite {
                connection: "acme".into(),
                target: "stickycards".into(),
                record_id: "cus_1".into(),
                op: "add_stamps".into(),
                params: serde_json::json!({"amount": 1}),
                mapping: "stamps".into(),
                event_row: ids[2],
                occurred_at: Some(1_700_000_000_000),
            },
            60_000,
            |_, new| new.clone(),
        )
        .await
        .unwrap();
    drop(store);
    (dir, db)
}

fn mapper(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(args)
        .args(["--database", db])
        .env_remove("MAPPER_DATABASE_URL")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_counts_every_connection_and_names_each_row() {
    let (_dir, db) = seed().await;
    let all = json(&mapper(&db, &["status", "--format", "json"]));
    assert_eq!(all["connection"], serde_json::Value::Null);
    assert_eq!(all["totals"]["dead"], 4, "{all}");
    assert_eq!(all["totals"]["delivered"], 1, "{all}");
    assert_eq!(all["totals"]["unmapped"], 1, "{all}");
    assert_eq!(all["by_connection"]["acme"]["dead"], 2, "{all}");
    assert_eq!(all["by_connection"]["default"]["unmapped"], 1, "{all}");
    assert_eq!(all["by_connection"]["gone"]["dead"], 1, "{all}");
    let rows = all["by_event"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["connection"].is_string()), "{all}");
    assert!(
        rows.iter()
            .any(|r| r["connection"] == "acme" && r["state"] == "dead" && r["count"] == 2)
    );
    // Stored connections, enabled or disabled with the reason, and nothing of their values.
    assert_eq!(
        all["connections"],
        serde_json::json!([
            {"name": "acme", "enabled": true, "disabled_reason": null},
            {"name": "beta", "enabled": false, "disabled_reason": "card billing paused"},
        ])
    );
    let errors = all["last_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 4, "{all}");
    assert!(errors.iter().all(|e| e["connection"].is_string()), "{all}");
    assert_eq!(all["held_writes"][0]["connection"], "acme", "{all}");

    // Text: several connections have events, so each gets a line and a column.
    let out = text(&mapper(&db, &["status"]));
    assert!(
        out.starts_with("received: 0  retrying: 0  delivered: 1"),
        "{out}"
    );
    assert!(out.contains("per connection:"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("acme") && l.contains("dead: 2")),
        "{out}"
    );
    assert!(out.contains("disabled: card billing paused"), "{out}");
    assert!(out.contains("CONNECTION"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_with_a_connection_shows_only_its_events_writes_and_errors() {
    let (_dir, db) = seed().await;
    let acme = json(&mapper(
        &db,
        &["status", "--connection", "acme", "--format", "json"],
    ));
    assert_eq!(acme["connection"], "acme");
    assert_eq!(acme["totals"]["dead"], 2, "{acme}");
    assert_eq!(acme["totals"]["unmapped"], 0, "{acme}");
    assert!(
        acme["by_event"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["connection"] == "acme"),
        "{acme}"
    );
    assert_eq!(acme["connections"].as_array().unwrap().len(), 1, "{acme}");
    assert_eq!(acme["connections"][0]["name"], "acme");
    let errors: Vec<&str> = acme["last_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["error"].as_str().unwrap())
        .collect();
    assert_eq!(errors, ["acme boom 2", "acme boom 1"]);
    assert_eq!(acme["held_writes"].as_array().unwrap().len(), 1);

    let default = json(&mapper(
        &db,
        &["status", "--connection", "default", "--format", "json"],
    ));
    assert_eq!(default["totals"]["dead"], 1, "{default}");
    assert_eq!(default["totals"]["unmapped"], 1, "{default}");
    assert_eq!(default["held_writes"], serde_json::json!([]), "{default}");
    assert_eq!(default["connections"], serde_json::json!([]), "{default}");

    // A stored connection with no events is known: all zeros, and its state.
    let beta = text(&mapper(&db, &["status", "--connection", "beta"]));
    assert!(beta.starts_with("connection beta\nreceived: 0"), "{beta}");
    assert!(beta.contains("disabled: card billing paused"), "{beta}");
    assert!(!beta.contains("boom"), "{beta}");

    // One connection's text is the single-location layout: no column.
    let out = text(&mapper(&db, &["status", "--connection", "acme"]));
    assert!(!out.contains("per connection:"), "{out}");
    assert!(!out.contains("CONNECTION"), "{out}");
    assert!(!out.contains("default boom"), "{out}");
    assert!(out.contains("acme boom 1"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_with_a_connection_requeues_only_its_events() {
    let (_dir, db) = seed().await;
    let out = text(&mapper(
        &db,
        &["replay", "--connection", "default", "--state", "unmapped"],
    ));
    assert_eq!(out.trim(), "re-queued 1 event(s)");
    let out = text(&mapper(
        &db,
        &[
            "replay",
            "--connection",
            "acme",
            "--event",
            "CouponRedeemedEvent",
        ],
    ));
    assert_eq!(out.trim(), "re-queued 0 event(s)", "the other filters hold");
    let out = text(&mapper(&db, &["replay", "--connection", "acme"]));
    assert_eq!(out.trim(), "re-queued 2 event(s)");

    let status = json(&mapper(&db, &["status", "--format", "json"]));
    assert_eq!(status["by_connection"]["acme"]["dead"], 0, "{status}");
    assert_eq!(status["by_connection"]["acme"]["received"], 2, "{status}");
    assert_eq!(status["by_connection"]["default"]["dead"], 1, "{status}");
    assert_eq!(
        status["by_connection"]["default"]["received"], 1,
        "{status}"
    );
    assert_eq!(status["by_connection"]["gone"]["dead"], 1, "{status}");

    // A removed connection's events can still be replayed by its name.
    let out = text(&mapper(&db, &["replay", "--connection", "gone"]));
    assert_eq!(out.trim(), "re-queued 1 event(s)");

    // Held writes that failed, one of acme's and one of default's: `replay
    // --held --connection acme` re-queues acme's only.
    let store = Store::open(&db).await.unwrap();
    store
        .hold_write(
            &HeldWrite {
                connection: "default".into(),
                target: "stickycards".into(),
                record_id: "cus_9".into(),
                op: "add_stamps".into(),
                params: serde_json::json!({"amount": 2}),
                mapping: "stamps".into(),
                event_row: 1,
                occurred_at: Some(1_700_000_000_000),
            },
            60_000,
            |_, new| new.clone(),
        )
        .await
        .unwrap();
    for w in store.pending_writes().await.unwrap() {
        store.fail_write(&w, 8, "boom").await.unwrap();
    }
    let out = text(&mapper(&db, &["replay", "--held", "--connection", "acme"]));
    assert_eq!(out.trim(), "re-queued 1 held write(s)");
    let states: Vec<(String, String)> = store
        .pending_writes()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.connection, w.state))
        .collect();
    assert!(
        states.contains(&("acme".into(), "waiting".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("default".into(), "failed".into())),
        "{states:?}"
    );
    // An unknown connection is refused, as for events.
    let out = mapper(&db, &["replay", "--held", "--connection", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn log_with_a_connection_shows_only_its_attempts() {
    let (_dir, db) = seed().await;
    let all = json(&mapper(
        &db,
        &["log", "--customer", "cus_1", "--format", "json"],
    ));
    let connections: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["connection"].as_str().unwrap())
        .collect();
    assert_eq!(connections, ["acme", "default"], "{all}");
    // Mixed connections: each text line says whose it is.
    let out = text(&mapper(&db, &["log", "--customer", "cus_1"]));
    assert!(out.contains("connection acme attempt 1"), "{out}");

    let acme = json(&mapper(
        &db,
        &[
            "log",
            "--customer",
            "cus_1",
            "--connection",
            "acme",
            "--format",
            "json",
        ],
    ));
    assert_eq!(acme.as_array().unwrap().len(), 1, "{acme}");
    assert_eq!(acme[0]["connection"], "acme");
    assert_eq!(acme[0]["request"], "PUT acme-request");
    let out = text(&mapper(
        &db,
        &["log", "--customer", "cus_1", "--connection", "default"],
    ));
    assert!(out.contains("PUT default-request"), "{out}");
    assert!(!out.contains("acme"), "{out}");

    // An event of another connection has no attempts in this one.
    let out = text(&mapper(
        &db,
        &["log", "--event", "1", "--connection", "default"],
    ));
    assert_eq!(out.trim(), "no attempts recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_connection_is_refused_with_the_known_ones() {
    let (_dir, db) = seed().await;
    for args in [
        &["status", "--connection", "acne"][..],
        &["log", "--customer", "cus_1", "--connection", "acne"],
        &["replay", "--connection", "acne"],
    ] {
        let out = mapper(&db, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("unknown connection `acne`")
                && stderr.contains("acme, beta, default, gone"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // Nothing was replayed by the refused command.
    let status = json(&mapper(&db, &["status", "--format", "json"]));
    assert_eq!(status["totals"]["dead"], 4, "{status}");
}
