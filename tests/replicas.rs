//! What keeps several `serve` replicas on one PostgreSQL database as safe as
//! one process (issue #11): a rate-limit window they all count in, people's
//! locks they all respect, and claims that are short leases a live worker
//! renews. The PostgreSQL cases run when `MAPPER_TEST_POSTGRES_URL` is set
//! (CI sets it); the lease cases also run on a SQLite file.

mod common;

use common::postgres::FreshPostgres;
use mapper::config::model::RateLimit;
use mapper::store::{
    CLAIM_LEASE_MS, ClaimShares, EventState, Inserted, NewEvent, Renewal, Store, StoreError, now_ms,
};
use mapper::targets::Finish;
use mapper::targets::journal::{Journal, Writer};
use mapper::targets::limiter::Limiter;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn event(customer: &str, n: u32) -> NewEvent {
    event_of("default", customer, n)
}

fn event_of(connection: &str, customer: &str, n: u32) -> NewEvent {
    NewEvent {
        connection: connection.into(),
        source: "stickycards".into(),
        event_type: "CardInstalledEvent".into(),
        event_id: None,
        dedup_key: format!("{customer}-{n}"),
        occurred_at: Some(1_700_000_000_000),
        customer_key: Some(customer.into()),
        headers: serde_json::json!({}),
        body: b"{}".to_vec(),
        state: EventState::Received,
        note: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_count_their_calls_in_one_window() {
    let Some(pg) = FreshPostgres::create("replica_window").await else {
        return;
    };
    let (a, b) = (
        Store::open(&pg.url).await.unwrap(),
        Store::open(&pg.url).await.unwrap(),
    );
    let limit = RateLimit {
        requests: 4,
        per_seconds: 1,
        daily: None,
        per: None,
    };
    let limiters = [
        Arc::new(Limiter::shared(a.clone(), "loc1")),
        Arc::new(Limiter::shared(b.clone(), "loc1")),
    ];
    let start = Instant::now();
    let mut sends = Vec::new();
    for n in 0..12 {
        let (limiter, limit) = (limiters[n % 2].clone(), limit.clone());
        sends.push(tokio::spawn(async move {
            limiter.acquire("ghl", Some(&limit)).await.unwrap();
            start.elapsed()
        }));
    }
    let mut at = Vec::new();
    for s in sends {
        at.push(s.await.unwrap());
    }
    at.sort();
    // 12 calls at 4 per second from two processes: the window is one.
    for i in 4..at.len() {
        assert!(
            at[i] - at[i - 4] >= Duration::from_secs(1),
            "calls {} and {i} in one window: {at:?}",
            i - 4
        );
    }
    // Another connection has a window of its own.
    let other = Limiter::shared(a.clone(), "loc2");
    let t = Instant::now();
    other.acquire("ghl", Some(&limit)).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(500));
    drop((a, b, limiters, other));
    pg.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_locked_by_one_replica_waits_in_the_other() {
    let Some(pg) = FreshPostgres::create("replica_people").await else {
        return;
    };
    let (a, b) = (
        Store::open(&pg.url).await.unwrap(),
        Store::open(&pg.url).await.unwrap(),
    );
    let phone = vec!["key|ghl|phone:+15550100".to_string()];
    let held = a.lock_people(&phone).await.unwrap();
    let waiting = {
        let (b, phone) = (b.clone(), phone.clone());
        tokio::spawn(async move {
            let lock = b.lock_people(&phone).await.unwrap();
            (Instant::now(), lock)
        })
    };
    // Someone else is not held up.
    let t = Instant::now();
    let other = b
        .lock_people(&["key|ghl|phone:+15550199".to_string()])
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(other);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiting.is_finished(),
        "the second replica waits for the person"
    );
    let released = Instant::now();
    drop(held);
    let (got, lock) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the person is free once the first replica lets go")
        .unwrap();
    assert!(got >= released);
    drop(lock);
    // A replica that dies holding a person frees them: the lock ends with
    // its session (here a session of its own, closed as a killed process's is).
    let mut dying = <sqlx::AnyConnection as sqlx::Connection>::connect(&pg.url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut dying).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(phone[0].as_str())
        .execute(&mut dying)
        .await
        .unwrap();
    let waiting = {
        let (a, phone) = (a.clone(), phone.clone());
        tokio::spawn(async move { a.lock_people(&phone).await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "held by the other session");
    drop(dying);
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("a closed session's people are free")
        .unwrap()
        .unwrap();
    drop((a, b));
    pg.drop().await;
}

async fn leases_are_renewed_while_held_and_lapse_when_not(store: Store) {
    let mut ids = Vec::new();
    for n in 0..3 {
        match store
            .insert_events(&[event(&format!("c{n}"), n)])
            .await
            .unwrap()[0]
        {
            Inserted::New(id) => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    let before = now_ms();
    let claimed = store.claim_due(10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    // The lease is seconds, not minutes.
    assert!(store.claim_due(10).await.unwrap().is_empty());
    let renewed = store
        .renew_leases(&ids[..2], before + 3 * CLAIM_LEASE_MS)
        .await
        .unwrap();
    assert_eq!(renewed.extended, ids[..2].to_vec());
    // A delivered event's lease is not renewed.
    store
        .finish(ids[0], EventState::Delivered, now_ms(), None)
        .await
        .unwrap();
    assert_eq!(
        store
            .renew_leases(&ids, before + 3 * CLAIM_LEASE_MS)
            .await
            .unwrap()
            .extended,
        ids[1..].to_vec()
    );
    assert_eq!(
        store.renew_leases(&[], 0).await.unwrap(),
        Renewal::default()
    );
}

#[tokio::test]
async fn leases_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("m.db").display()))
        .await
        .unwrap();
    leases_are_renewed_while_held_and_lapse_when_not(store).await;
}

#[tokio::test]
async fn leases_on_postgres() {
    let Some(pg) = FreshPostgres::create("replica_leases").await else {
        return;
    };
    let store = Store::open(&pg.url).await.unwrap();
    leases_are_renewed_while_held_and_lapse_when_not(store.clone()).await;
    drop(store);
    pg.drop().await;
}

/// Replica `a` claims an event, stalls past its lease, and `b` takes the
/// event over: `a` can neither renew the lease nor write its journal (the
/// event's outcome is `b`'s to record), and `b`'s journal lands.
async fn a_replica_that_stalled_past_its_lease_is_fenced_out(a: Store, b: Store, url: &str) {
    let id = match a.insert_events(&[event("stalled", 1)]).await.unwrap()[0] {
        Inserted::New(id) => id,
        other => panic!("{other:?}"),
    };
    let claimed = a.claim_due(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].lease_until >= now_ms() + CLAIM_LEASE_MS - 1_000);
    assert!(b.claim_due(10).await.unwrap().is_empty(), "leased to a");
    // a stalls: its lease runs out without a renewal.
    sqlx::any::install_default_drivers();
    let mut raw = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET next_attempt_at = 0 WHERE id = $1")
        .bind(id)
        .execute(&mut raw)
        .await
        .unwrap();
    let taken = b.claim_due(10).await.unwrap();
    assert_eq!(taken.iter().map(|e| e.id).collect::<Vec<_>>(), [id]);
    assert!(
        a.renew_leases(&[id], now_ms() + CLAIM_LEASE_MS)
            .await
            .unwrap()
            == Renewal::default(),
        "a's renewal must not extend b's lease"
    );
    let finished = |error: &str| {
        let mut journal = Journal::new("default");
        journal.finish(
            id,
            Finish::State {
                state: EventState::Dead,
                next_attempt_at: now_ms(),
                error: Some(error.into()),
            },
        );
        journal
    };
    let late = Writer::start(a.clone()).commit(finished("from a")).await;
    assert!(
        matches!(late, Err(StoreError::LeaseLost(lost)) if lost == id),
        "{late:?}"
    );
    assert_eq!(a.event(id).await.unwrap().unwrap().0, "processing");
    Writer::start(b.clone())
        .commit(finished("from b"))
        .await
        .unwrap();
    assert_eq!(b.event(id).await.unwrap().unwrap().0, "dead");
    let error: Option<String> = sqlx::query_scalar("SELECT last_error FROM events WHERE id = $1")
        .bind(id)
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(error.as_deref(), Some("from b"));
}

/// The same for a held write being flushed: `a` claims it and stalls, `b`
/// takes it over; `a`'s renewal and outcome are refused, `b`'s land.
async fn a_flusher_that_stalled_past_its_lease_is_fenced_out(a: Store, b: Store, url: &str) {
    let write = mapper::store::HeldWrite {
        connection: "default".into(),
        target: "stickycards".into(),
        record_id: "cus_1".into(),
        op: "change_card_balance".into(),
        params: serde_json::json!({"amount": 5}),
        mapping: "ghl-bonus-points-changed".into(),
        event_row: 1,
        occurred_at: None,
    };
    let keep_later = |_: &serde_json::Value, later: &serde_json::Value| later.clone();
    let held = a.hold_write(&write, 0, keep_later).await.unwrap();
    let mine = a.claim_due_writes(10).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert!(
        b.claim_due_writes(10).await.unwrap().is_empty(),
        "leased to a"
    );
    let mut raw = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::query("UPDATE pending_writes SET due_at = 0 WHERE id = $1")
        .bind(held.id)
        .execute(&mut raw)
        .await
        .unwrap();
    let theirs = b.claim_due_writes(10).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert!(
        a.renew_write_leases(&[held.id], now_ms() + CLAIM_LEASE_MS)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        a.fail_write(&mine[0], 8, "from a").await,
        Err(StoreError::WriteLeaseLost(_))
    ));
    assert!(matches!(
        a.retry_write(&mine[0], 0, "from a", true, keep_later).await,
        Err(StoreError::WriteLeaseLost(_))
    ));
    assert!(matches!(
        a.finish_write(&mine[0]).await,
        Err(StoreError::WriteLeaseLost(_))
    ));
    assert_eq!(b.pending_writes().await.unwrap()[0].state, "flushing");
    b.finish_write(&theirs[0]).await.unwrap();
    assert!(b.pending_writes().await.unwrap().is_empty());
}

#[tokio::test]
async fn fencing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let (a, b) = (
        Store::open(&url).await.unwrap(),
        Store::open(&url).await.unwrap(),
    );
    a_replica_that_stalled_past_its_lease_is_fenced_out(a.clone(), b.clone(), &url).await;
    a_flusher_that_stalled_past_its_lease_is_fenced_out(a, b, &url).await;
}

#[tokio::test]
async fn fencing_on_postgres() {
    let Some(pg) = FreshPostgres::create("replica_fencing").await else {
        return;
    };
    let (a, b) = (
        Store::open(&pg.url).await.unwrap(),
        Store::open(&pg.url).await.unwrap(),
    );
    a_replica_that_stalled_past_its_lease_is_fenced_out(a.clone(), b.clone(), &pg.url).await;
    a_flusher_that_stalled_past_its_lease_is_fenced_out(a.clone(), b.clone(), &pg.url).await;
    drop((a, b));
    pg.drop().await;
}

/// `serve` warns when the server has fewer free sessions than a replica may
/// open: what it reads is the server's room and a replica's 19.
#[tokio::test]
async fn the_sessions_a_replica_may_open_are_known() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&format!("sqlite://{}", dir.path().join("m.db").display()))
        .await
        .unwrap();
    assert_eq!(sqlite.session_room().await, None);
    let Some(pg) = FreshPostgres::create("replica_sessions").await else {
        return;
    };
    let store = Store::open(&pg.url).await.unwrap();
    let (free, wanted) = store.session_room().await.expect("PostgreSQL says");
    assert_eq!(wanted, 19);
    assert!(free > 0, "{free}");
    drop(store);
    pg.drop().await;
}

/// A lease whose event is locked by a transaction (this process's journal
/// finishing it) is skipped, not waited for: waiting deadlocked against a
/// journal group locking the same events in another order. It is answered
/// busy (still this store's), neither extended nor lost.
#[tokio::test]
async fn a_renewal_skips_events_locked_by_a_journal_on_postgres() {
    let Some(pg) = FreshPostgres::create("replica_renew_busy").await else {
        return;
    };
    let store = Store::open(&pg.url).await.unwrap();
    for n in 0..2 {
        store
            .insert_events(&[event(&format!("busy{n}"), n)])
            .await
            .unwrap();
    }
    let ids: Vec<i64> = store
        .claim_due(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 2);
    let mut journal = <sqlx::AnyConnection as sqlx::Connection>::connect(&pg.url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut journal).await.unwrap();
    sqlx::query("SELECT id FROM events WHERE id = $1 FOR UPDATE")
        .bind(ids[0])
        .execute(&mut journal)
        .await
        .unwrap();
    let renewal = tokio::time::timeout(
        Duration::from_secs(5),
        store.renew_leases(&ids, now_ms() + CLAIM_LEASE_MS),
    )
    .await
    .expect("a locked row is skipped, not waited for")
    .unwrap();
    assert_eq!(
        renewal,
        Renewal {
            extended: vec![ids[1]],
            busy: vec![ids[0]],
        }
    );
    drop(journal);
    drop(store);
    pg.drop().await;
}

/// A connection with a backlog of 200 customers, two quiet ones with one
/// event each, stored after the backlog: the quiet ones are claimed at once,
/// and the backlog gets only its share while the worker holds its events.
async fn claims_are_shared_among_connections(store: Store) {
    let backlog: Vec<NewEvent> = (0..200)
        .map(|n| event_of("busy", &format!("b{n}"), n))
        .collect();
    store.insert_events(&backlog).await.unwrap();
    store
        .insert_events(&[event_of("quiet1", "q1", 0), event_of("quiet2", "q2", 0)])
        .await
        .unwrap();
    let nothing = std::collections::HashMap::new();
    let claimed = store
        .claim_due_fairly(6, &ClaimShares::equal(&nothing))
        .await
        .unwrap();
    let of = |c: &str| claimed.iter().filter(|e| e.connection == c).count();
    assert_eq!(
        (of("busy"), of("quiet1"), of("quiet2")),
        (4, 1, 1),
        "each connection its part of 6, and the backlog what the quiet ones leave: {:?}",
        claimed.iter().map(|e| &e.connection).collect::<Vec<_>>()
    );
    // The worker holds 24 of the backlog, its cap; 2 more quiet events arrive.
    store
        .insert_events(&[event_of("quiet1", "q1b", 1), event_of("quiet2", "q2b", 1)])
        .await
        .unwrap();
    let holding = std::collections::HashMap::from([("busy".to_string(), 24)]);
    let capped = ClaimShares {
        holding: &holding,
        each: 24,
        round: 8,
    };
    let next = store.claim_due_fairly(6, &capped).await.unwrap();
    let of = |c: &str| next.iter().filter(|e| e.connection == c).count();
    assert_eq!(
        (of("quiet1"), of("quiet2"), of("busy")),
        (1, 1, 0),
        "a connection at its cap gets nothing more; the quiet ones theirs"
    );
    // Holding 17 of 24, the backlog has no room for a round of 8: it waits
    // for one, and a quiet connection's new event is claimed alone.
    store
        .insert_events(&[event_of("quiet3", "q3", 0)])
        .await
        .unwrap();
    let holding = std::collections::HashMap::from([("busy".to_string(), 17)]);
    let topped = ClaimShares {
        holding: &holding,
        ..capped
    };
    let alone = store.claim_due_fairly(6, &topped).await.unwrap();
    assert_eq!(
        alone
            .iter()
            .map(|e| e.connection.as_str())
            .collect::<Vec<_>>(),
        ["quiet3"]
    );
    // With room for a round (16 held), the backlog is topped up.
    let holding = std::collections::HashMap::from([("busy".to_string(), 16)]);
    let round = ClaimShares {
        holding: &holding,
        ..capped
    };
    assert_eq!(store.claim_due_fairly(20, &round).await.unwrap().len(), 8);
    // The others have nothing due: the backlog gets the whole claim.
    let rest = store
        .claim_due_fairly(20, &ClaimShares::equal(&nothing))
        .await
        .unwrap();
    assert_eq!(rest.len(), 20);
    assert!(rest.iter().all(|e| e.connection == "busy"));
    // Oldest first within a connection.
    assert!(rest.windows(2).all(|w| w[0].id < w[1].id));
}

#[tokio::test]
async fn fair_claims_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("m.db").display()))
        .await
        .unwrap();
    claims_are_shared_among_connections(store).await;
}

#[tokio::test]
async fn fair_claims_on_postgres() {
    let Some(pg) = FreshPostgres::create("replica_fair").await else {
        return;
    };
    let store = Store::open(&pg.url).await.unwrap();
    claims_are_shared_among_connections(store.clone()).await;
    drop(store);
    pg.drop().await;
}
