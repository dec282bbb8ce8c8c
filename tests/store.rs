//! The inbox on a real SQLite file and, when `MAPPER_TEST_POSTGRES_URL` is
//! set (CI sets it), on PostgreSQL: same code path, same assertions.

mod common;

use sqlx::Connection;

use common::postgres::FreshPostgres;

use mapper::store::{EventState, Inbox, Inserted, NewEvent, ReplayFilter, Store};

fn event(key: &str) -> NewEvent {
    NewEvent {
        connection: "default".into(),
        source: "stickycards".into(),
        event_type: "CardInstalledEvent".into(),
        event_id: None,
        dedup_key: key.into(),
        occurred_at: Some(1_700_000_000_000),
        customer_key: None,
        headers: serde_json::json!({"content-type": "application/json"}),
        body: br#"{"event_type":"CardInstalledEvent"}"#.to_vec(),
        state: EventState::Received,
        note: None,
    }
}

async fn exercise(store: Store) {
    assert!(store.ping().await);
    let first = store
        .insert_events(&[event("k1"), event("k2"), event("k1")])
        .await
        .unwrap();
    let Inserted::New(id1) = first[0] else {
        panic!("{first:?}")
    };
    assert!(matches!(first[1], Inserted::New(id2) if id2 != id1));
    assert_eq!(
        first[2],
        Inserted::Duplicate(id1),
        "a repeated key in the same batch"
    );
    assert_eq!(
        store.insert_events(&[event("k1")]).await.unwrap(),
        vec![Inserted::Duplicate(id1)]
    );
    let (state, body) = store.event(id1).await.unwrap().unwrap();
    assert_eq!(state, "received");
    assert_eq!(body, br#"{"event_type":"CardInstalledEvent"}"#.to_vec());

    // 200 concurrent webhooks, half of them redeliveries, through the group-commit writer.
    let inbox = Inbox::start(store.clone(), 64);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let inbox = inbox.clone();
        tasks.push(tokio::spawn(async move {
            inbox.store(event(&format!("c{}", i % 100))).await
        }));
    }
    let mut new = std::collections::BTreeMap::new();
    let mut duplicates = Vec::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Inserted::New(id) => {
                new.insert(id, ());
            }
            Inserted::Duplicate(id) => duplicates.push(id),
        }
    }
    assert_eq!(new.len(), 100, "each key stored once");
    assert_eq!(duplicates.len(), 100);
    assert!(
        duplicates.iter().all(|id| new.contains_key(id)),
        "a duplicate answers with the first id"
    );
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.iter().map(|c| c.count).sum::<i64>(), 102);

    // An unmapped event is replayed once a filter matches it, and only then.
    let mut unmapped = event("u1");
    unmapped.state = EventState::Unmapped;
    unmapped.event_type = "CouponRedeemedEvent".into();
    let id = store.insert_events(&[unmapped]).await.unwrap()[0].id();
    let by = |source: Option<&str>, event_type: Option<&str>| ReplayFilter {
        source: source.map(str::to_string),
        event_type: event_type.map(str::to_string),
        ..Default::default()
    };
    assert_eq!(store.replay(&by(Some("slicktext"), None)).await.unwrap(), 0);
    assert_eq!(
        store
            .replay(&by(None, Some("CardInstalledEvent")))
            .await
            .unwrap(),
        0
    );
    let future = ReplayFilter {
        since_ms: Some(i64::MAX),
        ..Default::default()
    };
    assert_eq!(store.replay(&future).await.unwrap(), 0);
    let exact = ReplayFilter {
        id: Some(id),
        ..Default::default()
    };
    assert_eq!(store.replay(&exact).await.unwrap(), 1);
    assert_eq!(store.event(id).await.unwrap().unwrap().0, "received");
    assert_eq!(
        store.replay(&ReplayFilter::default()).await.unwrap(),
        0,
        "nothing dead or unmapped is left"
    );
}

#[tokio::test]
async fn inbox_on_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let store = Store::open(&url).await.unwrap();
    exercise(store).await;
    // Reopening runs no migration twice and keeps the rows.
    let again = Store::open(&url).await.unwrap();
    let rows: i64 = again.counts().await.unwrap().iter().map(|c| c.count).sum();
    assert_eq!(rows, 103);
}

/// Events of one customer are claimed one at a time, in order; other
/// customers' events are claimed beside them. The mirror keeps the newest
/// value of each field whatever order events are applied in.
async fn ordering_and_mirror(store: Store, url: &str) {
    let for_customer = |key: &str, customer: Option<&str>| {
        let mut e = event(key);
        e.customer_key = customer.map(str::to_string);
        e
    };
    let ids: Vec<i64> = store
        .insert_events(&[
            for_customer("a1", Some("A")),
            for_customer("a2", Some("A")),
            for_customer("b1", Some("B")),
            for_customer("n1", None),
            for_customer("a3", Some("A")),
            for_customer("n2", None),
        ])
        .await
        .unwrap()
        .iter()
        .map(|i| i.id())
        .collect();
    let claimed: Vec<i64> = store
        .claim_due(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        claimed,
        vec![ids[0], ids[2], ids[3], ids[5]],
        "the head of A, B, and events with no customer"
    );
    assert!(
        store.claim_due(10).await.unwrap().is_empty(),
        "A's next event waits while its first is in flight"
    );
    // A retry keeps the customer's later events waiting until it is done.
    store
        .finish(ids[0], EventState::Retrying, 0, Some("503"))
        .await
        .unwrap();
    let again: Vec<i64> = store
        .claim_due(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(again, vec![ids[0]]);
    store
        .finish(ids[0], EventState::Delivered, 0, None)
        .await
        .unwrap();
    let next: Vec<i64> = store
        .claim_due(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(next, vec![ids[1]]);
    // A dead event does not block the customer for ever.
    store
        .finish(ids[1], EventState::Dead, 0, Some("422"))
        .await
        .unwrap();
    let last = store.claim_due(10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].id, ids[4]);
    assert_eq!(last[0].customer_key.as_deref(), Some("A"));
    assert!(
        store.claim_due(10).await.unwrap().is_empty(),
        "a claim is held for its lease"
    );
    // The process holding it dies; once the lease is over, the event is claimed again.
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE events SET next_attempt_at = 0 WHERE id = {}",
        ids[4]
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let again = store.claim_due(10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (ids[4], 2));

    let values = |pairs: &[(&str, serde_json::Value)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<serde_json::Map<_, _>>()
    };
    assert_eq!(store.mirror("default", "sc", "A").await.unwrap(), None);
    let stale = store
        .update_mirror(
            "default",
            "sc",
            "A",
            &values(&[("email", "new@x.com".into()), ("balance", 25.into())]),
            Some(2_000),
            ids[4],
        )
        .await
        .unwrap();
    assert!(stale.is_empty());
    // An older event arriving late changes only what nothing newer has set.
    let stale = store
        .update_mirror(
            "default",
            "sc",
            "A",
            &values(&[("email", "old@x.com".into()), ("first_name", "Ann".into())]),
            Some(1_000),
            ids[0],
        )
        .await
        .unwrap();
    assert_eq!(stale, vec!["email".to_string()]);
    let record = store.mirror("default", "sc", "A").await.unwrap().unwrap();
    assert_eq!(record.fields["email"], "new@x.com");
    assert_eq!(record.fields["first_name"], "Ann");
    assert_eq!(record.fields["balance"], 25);
    assert_eq!(record.last_activity, Some(2_000));
    store
        .put_link("default", "sc", "A", "ghl", "contact-1")
        .await
        .unwrap();
    assert_eq!(
        store.links_of("default", "sc", "A").await.unwrap(),
        vec![("ghl".to_string(), "contact-1".to_string())]
    );
}

#[tokio::test]
async fn ordering_and_mirror_on_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("order.db").display());
    ordering_and_mirror(Store::open(&url).await.unwrap(), &url).await;
}

/// With many customers each holding many waiting events, a claim hands out
/// exactly the oldest pending event of every customer whose head is due,
/// whatever code moves events out of the queue (the worker's `finish`, a
/// bulk `UPDATE`, a replay that puts an older event back in front).
async fn claim_with_backlog(store: Store, url: &str) {
    const CUSTOMERS: usize = 40;
    const PER_CUSTOMER: usize = 25;
    let mut batch = Vec::new();
    // Interleaved, as webhooks of many people arrive.
    for n in 0..PER_CUSTOMER {
        for c in 0..CUSTOMERS {
            let mut e = event(&format!("c{c}-{n}"));
            e.customer_key = Some(format!("sc:{c}"));
            batch.push(e);
        }
    }
    let ids: Vec<i64> = store
        .insert_events(&batch)
        .await
        .unwrap()
        .iter()
        .map(|i| i.id())
        .collect();
    // ids[n * CUSTOMERS + c] is customer c's n-th event.
    let id_of = |c: usize, n: usize| ids[n * CUSTOMERS + c];
    let claim = |limit: i64| {
        let store = store.clone();
        async move {
            store
                .claim_due(limit)
                .await
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect::<Vec<i64>>()
        }
    };
    // In id order, a limit at a time, one per customer.
    let first = claim(15).await;
    assert_eq!(first, (0..15).map(|c| id_of(c, 0)).collect::<Vec<_>>());
    let rest = claim(100).await;
    assert_eq!(
        rest,
        (15..CUSTOMERS).map(|c| id_of(c, 0)).collect::<Vec<_>>()
    );
    assert!(claim(100).await.is_empty(), "every head is in flight");

    // Even customers' heads are delivered, odd ones' retried later: only the
    // even customers' second events come next.
    for c in 0..CUSTOMERS {
        let (state, at) = if c % 2 == 0 {
            (EventState::Delivered, 0)
        } else {
            (EventState::Retrying, i64::MAX / 2)
        };
        store.finish(id_of(c, 0), state, at, None).await.unwrap();
    }
    let second = claim(100).await;
    assert_eq!(
        second,
        (0..CUSTOMERS)
            .step_by(2)
            .map(|c| id_of(c, 1))
            .collect::<Vec<_>>(),
        "a retrying head blocks its customer's later events"
    );

    // Another writer settles events behind the store's back, in bulk: the
    // even customers' second and third events. Their fourth come next.
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let settled: Vec<String> = (0..CUSTOMERS)
        .step_by(2)
        .flat_map(|c| [id_of(c, 1), id_of(c, 2)])
        .map(|id| id.to_string())
        .collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE events SET state = 'delivered' WHERE id IN ({})",
        settled.join(", ")
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let fourth = claim(100).await;
    assert_eq!(
        fourth,
        (0..CUSTOMERS)
            .step_by(2)
            .map(|c| id_of(c, 3))
            .collect::<Vec<_>>()
    );

    // Customer 0's delivered first event is replayed: it is older than the
    // one in flight, so it waits, and once that one is done it goes first.
    store
        .finish(id_of(0, 0), EventState::Dead, 0, Some("422"))
        .await
        .unwrap();
    assert_eq!(
        store
            .replay(&mapper::store::ReplayFilter {
                states: vec![EventState::Dead],
                id: Some(id_of(0, 0)),
                ..Default::default()
            })
            .await
            .unwrap(),
        1
    );
    store
        .finish(id_of(0, 3), EventState::Delivered, 0, None)
        .await
        .unwrap();
    assert_eq!(claim(100).await, vec![id_of(0, 0)]);
    store
        .finish(id_of(0, 0), EventState::Delivered, 0, None)
        .await
        .unwrap();
    assert_eq!(claim(100).await, vec![id_of(0, 4)]);

    // The odd customers' retries come due: each goes before its later events.
    sqlx::query("UPDATE events SET next_attempt_at = 0 WHERE state = 'retrying'")
        .execute(&mut conn)
        .await
        .unwrap();
    let retried = claim(100).await;
    assert_eq!(
        retried,
        (1..CUSTOMERS)
            .step_by(2)
            .map(|c| id_of(c, 0))
            .collect::<Vec<_>>()
    );

    // Those in flight are done; the rest is drained one claim after
    // another: every customer's events in arrival order.
    for id in fourth[1..].iter().chain(&retried).chain(&[id_of(0, 4)]) {
        store
            .finish(*id, EventState::Delivered, 0, None)
            .await
            .unwrap();
    }
    let mut seen: std::collections::HashMap<usize, usize> = Default::default();
    let mut handed = 0;
    loop {
        let got = store.claim_due(7).await.unwrap();
        if got.is_empty() {
            break;
        }
        let mut customers = std::collections::HashSet::new();
        for e in got {
            assert!(customers.insert(e.customer_key.clone()), "one per customer");
            let position = ids.iter().position(|id| *id == e.id).unwrap();
            let (n, c) = (position / CUSTOMERS, position % CUSTOMERS);
            if let Some(last) = seen.insert(c, n) {
                assert!(n > last, "customer {c}: event {n} after {last}");
            }
            handed += 1;
            store
                .finish(e.id, EventState::Delivered, 0, None)
                .await
                .unwrap();
        }
    }
    let pending: i64 = store
        .counts()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.state != "delivered" && c.state != "dead")
        .map(|c| c.count)
        .sum();
    assert_eq!(pending, 0, "nothing is left behind");
    assert!(handed > 0);
}

#[tokio::test]
async fn claim_with_backlog_on_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("backlog.db").display());
    claim_with_backlog(Store::open(&url).await.unwrap(), &url).await;
}

#[tokio::test]
async fn claim_with_backlog_on_postgres() {
    let Some((store, pg)) = fresh_postgres("backlog").await else {
        return;
    };
    claim_with_backlog(store, &pg.url).await;
    pg.drop().await;
}

/// A fresh PostgreSQL database for one test and its store, or `None`
/// when `MAPPER_TEST_POSTGRES_URL` is unset.
async fn fresh_postgres(suffix: &str) -> Option<(Store, FreshPostgres)> {
    let pg = FreshPostgres::create(suffix).await?;
    let store = Store::open(&pg.url).await.unwrap();
    assert!(store.is_postgres());
    Some((store, pg))
}

#[tokio::test]
async fn inbox_on_postgres() {
    let Some((store, pg)) = fresh_postgres("inbox").await else {
        return;
    };
    exercise(store).await;
    pg.drop().await;
}

#[tokio::test]
async fn ordering_and_mirror_on_postgres() {
    let Some((store, pg)) = fresh_postgres("order").await else {
        return;
    };
    ordering_and_mirror(store, &pg.url).await;
    pg.drop().await;
}

#[tokio::test]
async fn unusable_urls_are_refused_with_the_reason() {
    let err = Store::open("sqlite::memory:")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("use sqlite://FILE"), "{err}");
    let err = Store::open("mysql://localhost/x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported database URL"), "{err}");
}

/// Held writes: merged per record and operation, claimed once due, put
/// back with the writes that came meanwhile, and failed for the operator.
async fn held_writes(store: Store) {
    use mapper::store::HeldWrite;
    let sum = |a: &serde_json::Value, b: &serde_json::Value| serde_json::json!({"amount": a["amount"].as_i64().unwrap_or(0) + b["amount"].as_i64().unwrap_or(0)});
    let write = |record: &str, amount: i64, row: i64| HeldWrite {
        connection: "default".into(),
        target: "stickycards".into(),
        record_id: record.into(),
        op: "change_card_balance".into(),
        params: serde_json::json!({"amount": amount}),
        mapping: "ghl-bonus-points-changed".into(),
        event_row: row,
        occurred_at: Some(1_700_000_000_000 + row),
    };
    let first = store
        .hold_write(&write("cus_1", 10, 1), 0, sum)
        .await
        .unwrap();
    assert_eq!(first.writes, 1);
    // Concurrent writers on one record (replicas) all land in one row.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let w = write("cus_1", 1, 10 + i);
        tasks.push(tokio::spawn(
            async move { store.hold_write(&w, 0, sum).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().id, first.id);
    }
    store
        .hold_write(&write("cus_2", 5, 2), 60_000, sum)
        .await
        .unwrap();
    let held = store.pending_writes().await.unwrap();
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(held[0].params["amount"], 18);
    assert_eq!(held[0].writes, 9);
    assert_eq!(held[0].event_rows.len(), 9);

    // Only the due one is claimed; a second claim finds nothing.
    let due = store.claim_due_writes(10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].record_id, "cus_1");
    assert_eq!(due[0].state, "flushing");
    assert!(store.claim_due_writes(10).await.unwrap().is_empty());

    // A write arriving while it is being sent opens a new row; a failed send
    // takes it back, the new one merged on top.
    store
        .hold_write(&write("cus_1", 100, 30), 60_000, sum)
        .await
        .unwrap();
    store
        .retry_write(&due[0], 0, "503 from the target", true, sum)
        .await
        .unwrap();
    let held = store.pending_writes().await.unwrap();
    let cus_1: Vec<_> = held.iter().filter(|w| w.record_id == "cus_1").collect();
    assert_eq!(cus_1.len(), 1, "{held:?}");
    assert_eq!(cus_1[0].params["amount"], 118);
    assert_eq!(cus_1[0].writes, 10);
    assert_eq!(cus_1[0].attempts, 1);
    assert_eq!(cus_1[0].state, "waiting");
    assert_eq!(cus_1[0].last_error.as_deref(), Some("503 from the target"));

    let due = store.claim_due_writes(10).await.unwrap();
    assert_eq!(due.len(), 1);
    store
        .fail_write(&due[0], 8, "400: no such card")
        .await
        .unwrap();
    store
        .hold_write(&write("cus_1", 7, 40), 0, sum)
        .await
        .unwrap();
    let held = store.pending_writes().await.unwrap();
    assert_eq!(
        held.iter().filter(|w| w.record_id == "cus_1").count(),
        2,
        "a failed row stays for the operator; new writes start a new one"
    );
    let due = store.claim_due_writes(10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].params["amount"], 7);
    store.finish_write(&due[0]).await.unwrap();
    assert_eq!(store.pending_writes().await.unwrap().len(), 2);
    let counts = store.held_counts().await.unwrap();
    assert!(
        counts.contains(&(
            "default".into(),
            "stickycards".into(),
            "change_card_balance".into(),
            "failed".into(),
            1,
            10
        )),
        "{counts:?}"
    );

    // The operator re-queues the failed one, unless newer writes already wait.
    store
        .hold_write(&write("cus_1", 1, 50), 60_000, sum)
        .await
        .unwrap();
    assert_eq!(store.replay_failed_writes().await.unwrap(), (0, 1));
    let open = store
        .pending_writes()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.record_id == "cus_1" && w.state == "waiting")
        .unwrap();
    store.finish_write(&open).await.unwrap();
    assert_eq!(store.replay_failed_writes().await.unwrap(), (1, 0));
    let back: Vec<_> = store.claim_due_writes(10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].params["amount"].as_i64(), back[0].attempts),
        (Some(118), 0)
    );

    // The mirror knows when each value last changed, not just when it was confirmed.
    let values =
        |phone: &str| serde_json::Map::from_iter([("phone".to_string(), serde_json::json!(phone))]);
    store
        .update_mirror("default", "ghl", "c1", &values("+1555"), Some(100), 1)
        .await
        .unwrap();
    store
        .update_mirror("default", "ghl", "c1", &values("+1555"), Some(200), 2)
        .await
        .unwrap();
    let m = store.mirror("default", "ghl", "c1").await.unwrap().unwrap();
    assert_eq!(m.changed_at("phone"), Some(100));
    assert!(m.set_after("phone", Some(150)));
    store
        .reflect("default", "ghl", "c1", &values("+1666"), Some(250), 260)
        .await
        .unwrap();
    let m = store.mirror("default", "ghl", "c1").await.unwrap().unwrap();
    assert_eq!(
        m.changed_at("phone"),
        Some(250),
        "written by mapper, learnt at 250"
    );
}

#[tokio::test]
async fn held_writes_on_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("held.db").display());
    held_writes(Store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn held_writes_on_postgres() {
    let Some((store, pg)) = fresh_postgres("held").await else {
        return;
    };
    held_writes(store).await;
    pg.drop().await;
}
