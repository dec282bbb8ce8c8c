//! The inbox on a real SQLite file and, when `MAPPER_TEST_POSTGRES_URL` is
//! set (CI sets it), on PostgreSQL: same code path, same assertions.

use mapper::store::{EventState, Inbox, Inserted, NewEvent, ReplayFilter, Store};
use sqlx::Connection;

fn event(key: &str) -> NewEvent {
    NewEvent {
        connection: "default".into(),
        source: "stickycards".into(),
        event_type: "CardInstalledEvent".into(),
        event_id: None,
        dedup_key: key.into(),
        occurred_at: Some(1_700_000_000_000),
        headers: serde_json::json!({"content-type": "application/json"}),
        body: br#"{"event_type":"CardInstalledEvent"}"#.to_vec(),
        state: EventState::Received,
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

#[tokio::test]
async fn inbox_on_postgres() {
    let Ok(admin_url) = std::env::var("MAPPER_TEST_POSTGRES_URL") else {
        eprintln!("MAPPER_TEST_POSTGRES_URL is not set: skipping the PostgreSQL run");
        return;
    };
    sqlx::any::install_default_drivers();
    let name = format!("mapper_test_{}", std::process::id());
    let mut admin = sqlx::AnyConnection::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin_url);
    let store = Store::open(&format!("{base}/{name}")).await.unwrap();
    assert!(store.is_postgres());
    exercise(store).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
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
