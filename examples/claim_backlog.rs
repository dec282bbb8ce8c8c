//! One claim with 50,000 events waiting, on SQLite or PostgreSQL: how long
//! it takes and how the database runs it (BENCHMARKS.md, issue #10).
//!
//! ```sh
//! cargo run --release --example claim_backlog                       # SQLite file in a temp dir
//! cargo run --release --example claim_backlog -- postgres://postgres@127.0.0.1/test
//! cargo run --release --example claim_backlog -- --before …         # the claim of migration 0005
//! ```
//!
//! Two backlogs of 50,000 waiting events each, on a fresh database:
//! * `hot`: 50 customers with 900 waiting events each whose oldest is in
//!   flight (a worker holds it, e.g. waiting on the target's rate limit),
//!   behind 20,000 delivered events of theirs, then 5,000 customers with one
//!   waiting event each;
//! * `spread`: 10,000 customers with 5 waiting events each, interleaved.
//!
//! Each claim takes 8 events and the example then marks them delivered (as
//! a worker would), so every claim also recomputes the heads of the
//! customers just served. `--before` runs, on the same data, the claim
//! statement of migration 0005 with its indexes recreated.
//! With a PostgreSQL URL, a database `claim_backlog_<pid>` is created beside
//! it and dropped at the end.

use mapper::store::{EventState, NewEvent, Store};
use sqlx::Connection;
use std::time::{Duration, Instant};

const LIMIT: i64 = 8;

fn event(n: usize, customer: String) -> NewEvent {
    NewEvent {
        connection: "default".into(),
        source: "stickycards".into(),
        event_type: "CardScannedEvent".into(),
        event_id: None,
        dedup_key: format!("e{n}"),
        occurred_at: None,
        customer_key: Some(customer),
        headers: serde_json::json!({}),
        body: br#"{"event_type":"CardScannedEvent"}"#.to_vec(),
        state: EventState::Received,
        note: None,
    }
}

/// The claim before migration 0008, verbatim.
fn before_sql(postgres: bool) -> String {
    let lock = if postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    format!(
        "UPDATE events SET state = 'processing', attempts = attempts + 1, next_attempt_at = $3 WHERE id IN \
         (SELECT e.id FROM events e WHERE e.state IN ('received', 'retrying', 'processing') AND e.next_attempt_at <= $1 \
         AND (e.customer_key IS NULL OR NOT EXISTS (SELECT 1 FROM events p WHERE p.connection = e.connection \
         AND p.customer_key = e.customer_key AND p.id < e.id \
         AND p.state IN ('received', 'retrying', 'processing'))) \
         ORDER BY e.id LIMIT $2{lock}) \
         RETURNING id"
    )
}

async fn fill(store: &Store, events: Vec<NewEvent>) -> Vec<i64> {
    let mut ids = Vec::with_capacity(events.len());
    for chunk in events.chunks(500) {
        let stored = store.insert_events(chunk).await.expect("insert");
        ids.extend(stored.iter().map(|s| s.id()));
    }
    ids
}

async fn run(shape: &str, url: &str, before: bool) {
    let store = Store::open(url).await.expect("open the store");
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    let mut n = 0;
    let mut next = |customer: String| {
        n += 1;
        event(n, customer)
    };
    match shape {
        "hot" => {
            let history: Vec<NewEvent> = (0..20_000)
                .map(|i| next(format!("hot:{}", i % 50)))
                .collect();
            let done = fill(&store, history).await;
            sqlx::query("UPDATE events SET state = 'delivered' WHERE id <= $1")
                .bind(done.iter().copied().max().unwrap_or(0))
                .execute(&mut conn)
                .await
                .expect("history");
            let backlog: Vec<NewEvent> = (0..45_000)
                .map(|i| next(format!("hot:{}", i % 50)))
                .collect();
            fill(&store, backlog).await;
            // The 50 heads go in flight and stay there.
            let held = store.claim_due(50).await.expect("claim the hot heads");
            assert_eq!(held.len(), 50);
            let tail: Vec<NewEvent> = (0..5_000).map(|i| next(format!("one:{i}"))).collect();
            fill(&store, tail).await;
        }
        _ => {
            let backlog: Vec<NewEvent> = (0..50_000)
                .map(|i| next(format!("c:{}", i % 10_000)))
                .collect();
            fill(&store, backlog).await;
        }
    }
    let postgres = store.is_postgres();
    if postgres {
        sqlx::query("ANALYZE")
            .execute(&mut conn)
            .await
            .expect("analyze");
    }
    if before {
        for index in [
            "CREATE INDEX IF NOT EXISTS events_customer_state ON events (connection, customer_key, state, id)",
            "CREATE INDEX IF NOT EXISTS events_pending ON events (id) \
             WHERE state IN ('received', 'retrying', 'processing')",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(index))
                .execute(&mut conn)
                .await
                .expect("the indexes of 0005");
        }
        if postgres {
            sqlx::query("ANALYZE")
                .execute(&mut conn)
                .await
                .expect("analyze");
        }
    }
    // The claim of 0005 takes seconds here: a few are enough to show it.
    let claims: usize = std::env::var("CLAIM_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if before { 5 } else { 60 });
    let at_start: i64 = sqlx::Row::try_get(
        &sqlx::query(
            "SELECT COUNT(*) FROM events WHERE state IN ('received', 'retrying', 'processing')",
        )
        .fetch_one(&mut conn)
        .await
        .expect("count"),
        0,
    )
    .expect("count");
    let mut times = Vec::with_capacity(claims);
    let mut handed = 0;
    for _ in 0..claims {
        let t = Instant::now();
        let ids: Vec<i64> = if before {
            let now = mapper::store::now_ms();
            let rows = sqlx::query(sqlx::AssertSqlSafe(before_sql(postgres)))
                .bind(now)
                .bind(LIMIT)
                .bind(now + 600_000)
                .fetch_all(&mut conn)
                .await
                .expect("claim");
            rows.iter()
                .map(|r| sqlx::Row::try_get::<i64, _>(r, 0).expect("id"))
                .collect()
        } else {
            store
                .claim_due(LIMIT)
                .await
                .expect("claim")
                .iter()
                .map(|e| e.id)
                .collect()
        };
        times.push(t.elapsed());
        handed += ids.len();
        for id in ids {
            store
                .finish(id, EventState::Delivered, 0, None)
                .await
                .expect("finish");
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} {shape:<6} {}: {at_start} waiting, {claims} claims of {LIMIT} ({handed} handed out): median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        if postgres { "postgres" } else { "sqlite  " },
        if before {
            "before (0005)"
        } else {
            "heads (0008)"
        },
        ms(times[claims / 2]),
        ms(times[claims * 9 / 10]),
        ms(times[claims - 1]),
    );
    if !before && std::env::var_os("CLAIM_EXPLAIN").is_some() {
        for line in store.explain_claim(LIMIT).await.expect("explain") {
            println!("    {line}");
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let before = args.iter().any(|a| a == "--before");
    let postgres = args.iter().find(|a| a.starts_with("postgres"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        sqlx::any::install_default_drivers();
        for shape in ["hot", "spread"] {
            match postgres {
                Some(admin_url) => {
                    let name = format!("claim_backlog_{}_{shape}", std::process::id());
                    let mut admin = sqlx::AnyConnection::connect(admin_url)
                        .await
                        .expect("connect");
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                        .execute(&mut admin)
                        .await
                        .expect("create database");
                    let base = admin_url
                        .rsplit_once('/')
                        .map_or(admin_url.as_str(), |(b, _)| b);
                    run(shape, &format!("{base}/{name}"), before).await;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await
                    .expect("drop database");
                }
                None => {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let url = format!("sqlite://{}", dir.path().join("claim.db").display());
                    run(shape, &url, before).await;
                }
            }
        }
    });
}
