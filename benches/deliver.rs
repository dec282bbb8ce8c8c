//! Load test of delivery: Sticky Cards `CardScannedEvent` webhooks of already
//! linked customers, posted to the real router and delivered by the real
//! worker to the GHL simulator (one `PUT /contacts/{id}` each), against the
//! simulator's own rate for that same PUT sent straight from a client,
//! measured in the same run over loopback.
//!
//! `cargo bench --bench deliver` (env `DELIVER_EVENTS`, default 2000;
//! `DELIVER_WORKERS`, default `1,8`)

/// The allocator the `mapper` binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running};
use mapper::config::compile::compile_dir;
use mapper::program::Program;
use mapper::sandbox::ghl::{GhlConfig, GhlSandbox};
use mapper::sandbox::{RateLimit, StickyCardsConfig, StickyCardsSandbox};
use mapper::store::{DEFAULT_CONNECTION, Store, SyncLogEntry};
use mapper::worker::WorkerConfig;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Concurrent clients of the baseline, as many as mapper's default workers.
const PUTTERS: usize = 8;
/// Concurrent webhook senders, as in `benches/ingest.rs`.
const POSTERS: usize = 64;
/// Distinct Sticky Cards customers the events are spread over.
const CUSTOMERS: usize = 50;
const TOKEN: &str = "bench";
/// A run that needs longer is stuck (e.g. events retrying), not slow:
/// `DELIVER_EVENTS=4000` at one worker settles in about 4 minutes.
const SETTLE_LIMIT: Duration = Duration::from_secs(900);

struct Load {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn p50(&mut self) -> Duration {
        self.latencies.sort();
        self.latencies
            .get(self.latencies.len() / 2)
            .copied()
            .unwrap_or_default()
    }
}

type MakeRequest = Arc<dyn Fn(usize) -> reqwest::RequestBuilder + Send + Sync>;

/// Sends requests `0..total` from `tasks` concurrent tasks; a request counts
/// as ok on a 2xx answer.
async fn load(tasks: usize, total: usize, request: MakeRequest) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (request, next) = (request.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let (mut latencies, mut failed) = (Vec::new(), 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let ok = request(i)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    latencies.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        }));
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for h in handles {
        let (l, f) = h.await.expect("a load task panicked");
        latencies.extend(l);
        failed += f;
    }
    Load {
        ok: latencies.len(),
        failed,
        elapsed: started.elapsed(),
        latencies,
    }
}

fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .expect("reqwest client")
}

fn phone(c: usize) -> String {
    format!("+1 (415) 555-{:04}", 2000 + c)
}

fn email(c: usize) -> String {
    format!("bench.{c}@example.com")
}

/// Event `seq` of customer `c`: the shipped example with the customer's
/// identity, and a time of its own so that no two events share a
/// de-duplication key.
fn scan_event(example: &Value, c: usize, seq: usize) -> String {
    let at = chrono::NaiveDate::from_ymd_opt(2025, 3, 10)
        .and_then(|d| d.and_hms_opt(9, 0, 0))
        .expect("valid start time")
        + chrono::TimeDelta::seconds(seq as i64);
    let at = at.format("%Y-%m-%d %H:%M:%S").to_string();
    let mut v = example.clone();
    v["customer_id"] = json!(format!("cus_b{c}"));
    v["card_id"] = json!(format!("card_b{c}"));
    v["card"]["id"] = json!(format!("card_b{c}"));
    v["email"] = json!(email(c));
    v["phone_number"] = json!(phone(c));
    v["timestamp"] = json!(at);
    v["last_activity"] = json!(at);
    v.to_string()
}

async fn ghl_simulator() -> GhlSandbox {
    GhlSandbox::start(GhlConfig {
        rate_limit: RateLimit::unlimited(),
        ..Default::default()
    })
    .await
    .expect("GHL simulator starts")
}

/// The GHL simulator's rate for the engine's call: `PUT /contacts/{id}` with
/// the two custom fields a scan writes, on contacts that exist.
async fn baseline(total: usize) -> Load {
    let ghl = ghl_simulator().await;
    let base = ghl.base_url();
    let auth = format!("Bearer {}", ghl.token());
    let http = client(PUTTERS);
    let call = move |method: reqwest::Method, path: String, body: Value| {
        http.request(method, format!("{base}{path}"))
            .header("Authorization", &auth)
            .header("Version", "2021-07-28")
            .header("Accept", "application/json")
            .json(&body)
    };
    let mut fields = Vec::new();
    for (name, kind) in [
        ("StickyCards Customer ID", "TEXT"),
        ("Last Activity", "DATE"),
    ] {
        let answer: Value = call(
            reqwest::Method::POST,
            format!("/locations/{}/customFields", ghl.location_id()),
            json!({"name": name, "dataType": kind, "model": "contact"}),
        )
        .send()
        .await
        .expect("create a custom field")
        .json()
        .await
        .expect("custom field answer");
        fields.push(
            answer["customField"]["id"]
                .as_str()
                .expect("custom field id")
                .to_string(),
        );
    }
    let mut contacts = Vec::new();
    for c in 0..CUSTOMERS {
        let answer: Value = call(
            reqwest::Method::POST,
            "/contacts/".to_string(),
            json!({"locationId": ghl.location_id(), "phone": phone(c), "email": email(c)}),
        )
        .send()
        .await
        .expect("create a contact")
        .json()
        .await
        .expect("contact answer");
        contacts.push(
            answer["contact"]["id"]
                .as_str()
                .expect("contact id")
                .to_string(),
        );
    }
    let put: MakeRequest = Arc::new(move |i| {
        let c = i % CUSTOMERS;
        call(
            reqwest::Method::PUT,
            format!("/contacts/{}", contacts[c]),
            json!({"customFields": [
                {"id": fields[0], "field_value": format!("cus_b{c}")},
                {"id": fields[1], "field_value": "2025-03-10"},
            ]}),
        )
    });
    let _ = load(PUTTERS, total / 8, put.clone()).await; // warm-up
    let run = load(PUTTERS, total, put).await;
    assert_eq!(run.failed, 0, "the GHL simulator refused direct PUTs");
    run
}

/// `mapper serve` in this process, as `App::start` wires it, without the
/// folder watcher, the scheduled rules and the flusher of held writes.
async fn start_mapper(
    program: Program,
    database: &str,
    env: BTreeMap<String, String>,
    workers: usize,
) -> Running {
    let mut config = AppConfig::new(
        program,
        database.parse::<DatabaseUrl>().expect("a database URL"),
    );
    config.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.env = Env::from_map(env);
    config.worker = WorkerConfig {
        concurrency: workers,
        ..Default::default()
    };
    App::start(config).await.expect("mapper starts")
}

struct Settled {
    delivered: i64,
    dead: i64,
}

/// Polls the store until no event is waiting, retrying or in flight.
async fn settle(store: &Store, expected: i64) -> Settled {
    let limit = Instant::now() + SETTLE_LIMIT;
    loop {
        let counts = store.counts().await.expect("count events");
        let count = |state: &str| -> i64 {
            counts
                .iter()
                .filter(|c| c.state == state)
                .map(|c| c.count)
                .sum()
        };
        let settled = Settled {
            delivered: count("delivered"),
            dead: count("dead"),
        };
        let total: i64 = counts.iter().map(|c| c.count).sum();
        if total >= expected && settled.delivered + settled.dead + count("unmapped") == total {
            return settled;
        }
        assert!(
            Instant::now() < limit,
            "events not settled after {SETTLE_LIMIT:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Delivery {
    workers: usize,
    rate: f64,
    elapsed: Duration,
    ghl_calls: usize,
    stickycards_calls: usize,
    delivered: i64,
    dead: i64,
    /// Committed writes to the SQLite file per event in the measured phase.
    commits_per_event: f64,
    /// Share of the run each kind of writer held the SQLite write turn.
    writer_by: Vec<(&'static str, f64)>,
    /// CPU time of the whole process over the measured phase, in cores.
    cpu_cores: f64,
    /// Share of the measured phase during which a SQLite writer (inbox,
    /// claim or journal) held the process's one write turn.
    writer_busy: f64,
}

/// The rows of a table, read beside mapper's own pool: the worker's
/// batches (one claim and one run summary each) are not otherwise visible.
async fn rows(db: &Path, count: &'static str) -> i64 {
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(db))
        .await
        .expect("open the database file");
    let n = sqlx::query_scalar(count)
        .fetch_one(&mut conn)
        .await
        .expect("count rows");
    let _ = conn.close().await;
    n
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which may itself hold spaces: state is
    // field 3, utime 14, stime 15, in USER_HZ ticks (100 on Linux).
    let fields: Vec<u64> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect())
        .unwrap_or_default();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 10)
}

/// Warms mapper up with one event per customer (links, custom field ids and
/// lookups cached), then times `total` more from the first post until the
/// store has settled them all.
async fn deliver(workers: usize, total: usize, example: &Value) -> Delivery {
    let ghl = ghl_simulator().await;
    let sc = StickyCardsSandbox::start(StickyCardsConfig::default())
        .await
        .expect("Sticky Cards simulator starts");
    let mut program = compile_dir(Path::new("mappings"))
        .program
        .expect("mappings compile");
    // The shipped GHL profile holds mapper to GHL's 100 requests per 10 s;
    // lifted, so what is measured is mapper, not the configured limit.
    program
        .targets
        .get_mut("ghl")
        .expect("the shipped mappings have a ghl target")
        .rate_limit = None;
    let mut env: BTreeMap<String, String> = [
        "STICKYCARDS_WEBHOOK_TOKEN",
        "SIGNALMIND_WEBHOOK_TOKEN",
        "GHL_WORKFLOW_WEBHOOK_TOKEN",
        "SLICKTEXT_WEBHOOK_SECRET",
    ]
    .into_iter()
    .map(|name| (name.to_string(), TOKEN.to_string()))
    .collect();
    env.insert("GHL_API_BASE_URL".into(), ghl.base_url());
    env.insert("GHL_API_TOKEN".into(), ghl.token().to_string());
    env.insert("GHL_LOCATION_ID".into(), ghl.location_id().to_string());
    env.insert("STICKYCARDS_API_BASE_URL".into(), sc.base_url());
    env.insert("STICKYCARDS_API_KEY".into(), sc.api_key().to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("deliver.db");
    let db = format!("sqlite://{}", file.display());
    let mapper = start_mapper(program, &db, env, workers).await;

    let http = client(POSTERS);
    let url = format!(
        "{}/webhooks/stickycards",
        mapper.url().expect("mapper receives webhooks")
    );
    let post = |bodies: Vec<String>| -> MakeRequest {
        let (http, url) = (http.clone(), url.clone());
        Arc::new(move |i| {
            http.post(&url)
                .header("content-type", "application/json")
                .header("X-Webhook-Token", TOKEN)
                .body(bodies[i].clone())
        })
    };

    let warm: Vec<String> = (0..CUSTOMERS).map(|c| scan_event(example, c, c)).collect();
    let warmed = load(POSTERS, CUSTOMERS, post(warm)).await;
    assert_eq!(warmed.failed, 0, "mapper refused warm-up webhooks");
    let settled = settle(&mapper.store, CUSTOMERS as i64).await;
    assert_eq!(
        settled.delivered, CUSTOMERS as i64,
        "warm-up events not all delivered"
    );
    assert_eq!(
        ghl.contacts().len(),
        CUSTOMERS,
        "one GHL contact per customer"
    );

    let bodies: Vec<String> = (0..total)
        .map(|i| scan_event(example, i % CUSTOMERS, CUSTOMERS + i))
        .collect();
    let (ghl_before, sc_before) = (ghl.request_log().len(), sc.request_log().len());
    let batches_before = rows(&file, "SELECT COUNT(*) FROM run_summaries").await;
    let commits_before = mapper.store.commits();
    let gate_before = mapper.store.write_gate_busy();
    let gate_by_before = mapper.store.write_gate_busy_by();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let posting = tokio::spawn(load(POSTERS, total, post(bodies)));
    let settled = settle(&mapper.store, (CUSTOMERS + total) as i64).await;
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let gate = mapper.store.write_gate_busy() - gate_before;
    let writer_by = mapper
        .store
        .write_gate_busy_by()
        .iter()
        .zip(gate_by_before)
        .map(|((writer, after), (_, before))| {
            (
                writer.name(),
                (*after - before).as_secs_f64() / elapsed.as_secs_f64(),
            )
        })
        .collect();
    let posted = posting.await.expect("posting task");
    assert_eq!(posted.failed, 0, "mapper refused webhooks");
    let ghl_calls = ghl.request_log().len() - ghl_before;
    let stickycards_calls = sc.request_log().len() - sc_before;

    // Write transactions of delivery: the journals (several deliveries and
    // the run summaries share one when they finish together), counted by
    // the store, plus one claim per batch (a batch writes one run summary).
    let journals = mapper.store.commits() - commits_before;
    mapper.shutdown().await;
    let delivered = settled.delivered - CUSTOMERS as i64;
    let batches = rows(&file, "SELECT COUNT(*) FROM run_summaries").await - batches_before;
    let commits = journals as i64 + batches;
    Delivery {
        workers,
        rate: delivered as f64 / elapsed.as_secs_f64(),
        elapsed,
        ghl_calls,
        stickycards_calls,
        delivered,
        dead: settled.dead,
        commits_per_event: commits as f64 / total as f64,
        cpu_cores: cpu.as_secs_f64() / elapsed.as_secs_f64(),
        writer_busy: gate.as_secs_f64() / elapsed.as_secs_f64(),
        writer_by,
    }
}

/// Serial cost of each store call a worker makes per event, on a fresh
/// file in the same directory kind: where a delivery's time goes. Also the
/// cost of one sync-log insert when `PUTTERS` tasks insert at once, as
/// parallel deliveries do.
async fn store_costs(reps: u32) -> (Vec<(&'static str, Duration)>, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("costs.db").display());
    let store = Store::open(&db).await.expect("open the store");
    let event = mapper::store::NewEvent {
        connection: DEFAULT_CONNECTION.to_string(),
        source: "stickycards".into(),
        event_type: "CardScannedEvent".into(),
        event_id: None,
        dedup_key: "bench".into(),
        occurred_at: Some(0),
        customer_key: Some("cus_b0".into()),
        headers: json!({}),
        body: b"{}".to_vec(),
        state: mapper::store::EventState::Received,
        note: None,
    };
    let id = store
        .insert_events(&[event])
        .await
        .expect("insert an event")[0]
        .id();
    store
        .put_link(DEFAULT_CONNECTION, "stickycards", "cus_b0", "ghl", "c0")
        .await
        .expect("link");
    let mirror: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "email": "bench.0@example.com", "phone": "+1 (415) 555-2000",
        "first_name": "Ana", "last_name": "Lima", "card_id": "card_b0",
        "card_status": "installed", "loyalty_points": 110,
        "card_installed_date": "2025-03-03T14:10:45Z",
        "last_activity": "2025-03-10 09:15:02", "segments": ["Regulars"],
    }))
    .expect("mirror values");
    let entry = SyncLogEntry {
        connection: DEFAULT_CONNECTION.to_string(),
        event_row: id,
        mapping: "sc-card-scanned".into(),
        action: "upsert_contact".into(),
        target: "ghl".into(),
        customer: Some("c0".into()),
        request: "PUT http://127.0.0.1/contacts/c0 {\"customFields\":[]}".into(),
        status: Some(200),
        error: None,
        attempt: 1,
        took_ms: None,
    };
    let mut spent = [Duration::ZERO; 8];
    for rep in 0..reps {
        let mut timed = |slot: usize, t: Instant| spent[slot] += t.elapsed();
        let t = Instant::now();
        let claimed = store.claim_due(1).await.expect("claim");
        assert_eq!(claimed.len(), 1, "the event is due again");
        timed(0, t);
        let t = Instant::now();
        let _ = store
            .mirror(DEFAULT_CONNECTION, "stickycards", "cus_b0")
            .await
            .expect("read the mirror");
        let _ = store
            .link(DEFAULT_CONNECTION, "stickycards", "cus_b0", "ghl")
            .await
            .expect("read the link");
        let _ = store
            .record_fields(DEFAULT_CONNECTION, "ghl", "c0")
            .await
            .expect("read the record");
        timed(1, t);
        let t = Instant::now();
        store.log_attempt(&entry).await.expect("log an attempt");
        timed(2, t);
        let t = Instant::now();
        store
            .update_mirror(
                DEFAULT_CONNECTION,
                "stickycards",
                "cus_b0",
                &mirror,
                Some(i64::from(rep)),
                id,
            )
            .await
            .expect("update the mirror");
        timed(3, t);
        let t = Instant::now();
        // `received`, not `delivered`, so the next rep claims it again: the same write.
        store
            .finish(id, mapper::store::EventState::Received, 0, None)
            .await
            .expect("finish");
        timed(4, t);
        let t = Instant::now();
        store
            .record_run(DEFAULT_CONNECTION, 0, 1, 1, 0)
            .await
            .expect("record the run");
        timed(5, t);
    }
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..PUTTERS {
        let (store, entry) = (store.clone(), entry.clone());
        let share = reps / PUTTERS as u32;
        writers.push(tokio::spawn(async move {
            for _ in 0..share {
                store.log_attempt(&entry).await.expect("log an attempt");
            }
        }));
    }
    for w in writers {
        w.await.expect("a writer task panicked");
    }
    let concurrent = started.elapsed() / (reps / PUTTERS as u32 * PUTTERS as u32);
    let serial = [
        "claim (UPDATE … RETURNING)",
        "mirror + link + record reads",
        "sync-log insert",
        "mirror update (read + upsert)",
        "finish (UPDATE state)",
        "run summary insert",
    ]
    .into_iter()
    .zip(spent)
    .map(|(name, d)| (name, d / reps))
    .collect();
    (serial, concurrent)
}

/// Mean time of `claim_due(1)` on a store holding `total` events of
/// `CUSTOMERS` customers, the oldest `delivered` of them delivered and the
/// rest waiting: what one claim costs as the measured phase drains, and
/// what this bench's own 20 ms poll of `Store::counts()` costs beside it.
async fn claim_cost(total: usize, delivered: &[usize]) -> Vec<(usize, Duration, Duration)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("claim.db");
    let store = Store::open(&format!("sqlite://{}", file.display()))
        .await
        .expect("open the store");
    let events: Vec<_> = (0..total)
        .map(|i| mapper::store::NewEvent {
            connection: DEFAULT_CONNECTION.to_string(),
            source: "stickycards".into(),
            event_type: "CardScannedEvent".into(),
            event_id: None,
            dedup_key: format!("k{i}"),
            occurred_at: Some(i as i64),
            customer_key: Some(format!("cus_b{}", i % CUSTOMERS)),
            headers: json!({}),
            body: b"{}".to_vec(),
            state: mapper::store::EventState::Received,
            note: None,
        })
        .collect();
    for chunk in events.chunks(256) {
        store.insert_events(chunk).await.expect("insert events");
    }
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&file))
        .await
        .expect("open the database file");
    let mut out = Vec::new();
    for &done in delivered {
        // Ids start at 1 in insertion order: the oldest `done` are delivered.
        sqlx::query("UPDATE events SET state = 'delivered' WHERE id <= $1")
            .bind(done as i64)
            .execute(&mut conn)
            .await
            .expect("mark events delivered");
        let reps = 10;
        let mut spent = Duration::ZERO;
        for _ in 0..reps {
            let t = Instant::now();
            let claimed = store.claim_due(1).await.expect("claim");
            spent += t.elapsed();
            let event = claimed.first().expect("an event is due");
            store
                .finish(event.id, mapper::store::EventState::Received, 0, None)
                .await
                .expect("put the event back");
        }
        let t = Instant::now();
        for _ in 0..reps {
            store.counts().await.expect("count events");
        }
        out.push((done, spent / reps, t.elapsed() / reps));
    }
    let _ = conn.close().await;
    out
}

/// Mean time of one committed insert with and without the `fsync` that
/// `synchronous=FULL` adds to every commit (mapper's setting).
async fn commit_cost(dir: &Path, synchronous: SqliteSynchronous, reps: u32) -> Duration {
    let options = SqliteConnectOptions::new()
        .filename(dir.join(format!("{synchronous:?}.db")))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("open a scratch database");
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, request TEXT, at INTEGER)")
        .execute(&mut conn)
        .await
        .expect("create a table");
    let started = Instant::now();
    for i in 0..reps {
        sqlx::query("INSERT INTO t (request, at) VALUES ($1, $2)")
            .bind("PUT http://127.0.0.1/contacts/c0 {\"customFields\":[]}")
            .bind(i64::from(i))
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    let spent = started.elapsed() / reps;
    let _ = conn.close().await;
    spent
}

fn main() {
    // 2000, not more: the run's cost grows faster than the count (each claim
    // reads the whole backlog, see `claim_cost`), and 4000 takes ~7 minutes.
    let total: usize = std::env::var("DELIVER_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let workers: Vec<usize> = std::env::var("DELIVER_WORKERS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let example: Value = serde_json::from_str(
            &std::fs::read_to_string("examples/payloads/stickycards/CardScannedEvent.json")
                .expect("example payload"),
        )
        .expect("example payload is JSON");

        let mut direct = baseline(total).await;
        let mut runs = Vec::new();
        for w in workers {
            runs.push(deliver(w, total, &example).await);
        }
        let (costs, concurrent) = store_costs(200).await;
        let claims = claim_cost(total, &[0, total / 2, total.saturating_sub(CUSTOMERS)]).await;
        let scratch = tempfile::tempdir().expect("tempdir");
        let durable = commit_cost(scratch.path(), SqliteSynchronous::Full, 200).await;
        let lazy = commit_cost(scratch.path(), SqliteSynchronous::Off, 200).await;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

        println!(
            "events per run: {total} over {CUSTOMERS} linked customers, {POSTERS} posters; \
             baseline: {PUTTERS} direct clients"
        );
        println!(
            "GHL simulator, direct PUT /contacts/{{id}}: {:>7.0} req/s  p50 {:>7.2?}",
            direct.rate(),
            direct.p50()
        );
        println!(
            "| workers | events/s | ÷ baseline PUT/s | time | GHL calls/event | Sticky Cards calls | SQLite commits/event | commits/s | SQLite writer busy | CPU (of {cores} cores) | delivered | dead |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &runs {
            println!(
                "| {} | {:.0} | {:.1}% | {:.2?} | {:.2} | {} | {:.2} | {:.0} | {:.0}% | {:.2} | {} | {} |",
                r.workers,
                r.rate,
                100.0 * r.rate / direct.rate(),
                r.elapsed,
                r.ghl_calls as f64 / total as f64,
                r.stickycards_calls,
                r.commits_per_event,
                r.commits_per_event * r.rate,
                100.0 * r.writer_busy,
                r.cpu_cores,
                r.delivered,
                r.dead
            );
        }
        for r in &runs {
            let shares: Vec<String> = r
                .writer_by
                .iter()
                .map(|(name, share)| format!("{name} {:.0}%", 100.0 * share))
                .collect();
            println!(
                "SQLite writer held, {} workers: {}",
                r.workers,
                shares.join(", ")
            );
        }
        println!("store calls of one delivery, timed one at a time (mean of 200):");
        let mut sum = Duration::ZERO;
        for (name, d) in &costs {
            sum += *d;
            println!("  {name:<32} {d:>9.2?}");
        }
        println!("  {:<32} {sum:>9.2?}", "sum");
        println!("  {:<32} {concurrent:>9.2?}", "sync-log insert, 8 at once");
        for (done, claim, counts) in &claims {
            println!(
                "{total} events stored, {done} of them delivered: one claim {claim:>9.2?}, \
                 Store::counts() {counts:>9.2?}"
            );
        }
        println!(
            "one committed insert: {durable:.2?} with synchronous=FULL, {lazy:.2?} with synchronous=OFF"
        );
    });
}
