//! Fair delivery across connections (issue #11): 200 connections, each with
//! its own GHL location on its own simulator held to GHL's per-location
//! limit (100 requests per 10 s), webhooks posted over HTTP to the real
//! router(s) and delivered by the real worker(s).
//!
//! - Scenario 1, "one backlog": one connection gets a backlog of
//!   `FAIR_BACKLOG` events at once while every other connection receives a
//!   trickle of 1 event per second for `FAIR_SECONDS`. Measured: the quiet
//!   connections' wait from acknowledgement (`events.received_at`, stamped
//!   in the inbox insert whose commit the 202 waits for) to delivery (the
//!   `sync_log.at` of the journal that recorded the event delivered), and
//!   GHL calls per second of the backlogged connection and of all together.
//! - Scenario 2, "all backlogs": every connection gets `FAIR_EACH` events
//!   at once. Measured: aggregate GHL calls per second against the sum of
//!   the limits (200 × 10/s), and 429s.
//!
//! Each scenario runs on one replica with a SQLite file, and, when
//! `MAPPER_TEST_POSTGRES_URL` names a PostgreSQL server, on 3 replicas
//! (3 `App::start` on one fresh database, each with its own router and
//! worker; webhooks posted to them in turn).
//!
//! `cargo bench --bench fairness`; env `FAIR_CONNECTIONS` (200),
//! `FAIR_BACKLOG` (20000), `FAIR_EACH` (300), `FAIR_SECONDS` (60),
//! `FAIR_WORKERS` (8, the `--workers` of each replica), `FAIR_SCENARIOS`
//! (`1,2`), `FAIR_REPLICAS` (`1,3`); `RUST_LOG` (e.g. `warn`) prints the
//! replicas' logs; `FAIR_PG_SESSIONS` caps the PostgreSQL sessions of the
//! replicas together (a role of the bench's own with that connection limit).

/// The allocator the `mapper` binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running};
use mapper::config::compile::compile_dir;
use mapper::sandbox::ghl::{GhlConfig, GhlSandbox};
use mapper::sandbox::{RateLimit, StickyCardsConfig, StickyCardsSandbox};
use mapper::secrets::SecretKey;
use mapper::store::Store;
use mapper::worker::WorkerConfig;
use serde_json::{Value, json};
use sqlx::{Connection, Row};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "7f3e2a19c0b84d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e";
const SC_TOKEN: &str = "fair-sc-token";
/// GHL's limit per location (reference §rate limits): 100 per 10 s.
const LIMIT_MAX: u32 = 100;
const LIMIT_INTERVAL: Duration = Duration::from_secs(10);
/// The per-location limit in requests per second.
const LIMIT_PER_S: f64 = LIMIT_MAX as f64 / 10.0;
/// Customers of the backlogged connection(s): events of one customer are
/// delivered in order, one at a time, so a backlog is spread over several.
const BACKLOG_CUSTOMERS: usize = 20;
/// Customers of each quiet connection, taken in turn by its trickle.
const QUIET_CUSTOMERS: usize = 3;
const POSTERS: usize = 64;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn connection_name(i: usize) -> String {
    format!("c{i:03}")
}

/// Sticky Cards `CardScannedEvent` number `seq` of customer `c` of
/// connection `conn`, with a time of its own (no two share a dedup key).
fn scan_event(example: &Value, conn: usize, c: usize, seq: usize) -> Vec<u8> {
    let at = chrono::NaiveDate::from_ymd_opt(2025, 3, 10)
        .and_then(|d| d.and_hms_opt(9, 0, 0))
        .expect("valid start time")
        + chrono::TimeDelta::seconds(seq as i64);
    let at = at.format("%Y-%m-%d %H:%M:%S").to_string();
    let mut v = example.clone();
    let id = format!("f{conn}_{c}");
    v["customer_id"] = json!(format!("cus_{id}"));
    v["card_id"] = json!(format!("card_{id}"));
    v["card"]["id"] = json!(format!("card_{id}"));
    v["email"] = json!(format!("{id}@example.com"));
    v["phone_number"] = json!(format!(
        "+1 (415) 7{:02}-{:04}",
        conn % 100,
        c + 1000 * (conn / 100)
    ));
    v["timestamp"] = json!(at);
    v["last_activity"] = json!(at);
    v.to_string().into_bytes()
}

/// The database of one run: a SQLite file, or a fresh PostgreSQL database.
enum Db {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        admin: String,
        name: String,
        url: String,
    },
}

impl Db {
    async fn new(replicas: usize) -> Option<Db> {
        if replicas == 1 {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("fair.db").display());
            return Some(Db::Sqlite { _dir: dir, url });
        }
        let admin = std::env::var("MAPPER_TEST_POSTGRES_URL").ok()?;
        sqlx::any::install_default_drivers();
        let name = format!("mapper_fair_{}", std::process::id());
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .expect("connect to MAPPER_TEST_POSTGRES_URL");
        // `FAIR_PG_SESSIONS`: the replicas log in as a role of their own
        // limited to that many sessions, as on a server whose other clients
        // leave only that many free (a superuser is not held to a limit).
        let sessions = std::env::var("FAIR_PG_SESSIONS")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok());
        let mut statements = vec![
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS {name}"),
        ];
        match sessions {
            Some(n) => statements.extend([
                format!("CREATE ROLE {name} LOGIN CONNECTION LIMIT {n}"),
                format!("CREATE DATABASE {name} OWNER {name}"),
            ]),
            None => statements.push(format!("CREATE DATABASE {name}")),
        }
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("create the bench database");
        }
        let mut url = reqwest::Url::parse(&admin).expect("MAPPER_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        if sessions.is_some() {
            url.set_username(&name).expect("a user name");
            url.set_password(None).expect("no password");
        }
        let url = url.to_string();
        Some(Db::Postgres { admin, name, url })
    }

    fn url(&self) -> &str {
        match self {
            Db::Sqlite { url, .. } => url,
            Db::Postgres { url, .. } => url,
        }
    }

    async fn drop(self) {
        if let Db::Postgres { admin, name, .. } = self
            && let Ok(mut conn) = sqlx::AnyConnection::connect(&admin).await
        {
            for sql in [
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("DROP ROLE IF EXISTS {name}"),
            ] {
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
}

/// The simulators, the stored connections and the running replicas.
struct Setup {
    ghl: Vec<GhlSandbox>,
    _default_ghl: GhlSandbox,
    _sc: StickyCardsSandbox,
    apps: Vec<Running>,
    store: Store,
    http: reqwest::Client,
    example: Value,
    posted: AtomicUsize,
}

impl Setup {
    async fn start(db: &Db, connections: usize, replicas: usize, workers: usize) -> Setup {
        let limit = RateLimit {
            max: LIMIT_MAX,
            interval: LIMIT_INTERVAL,
            daily: None,
        };
        let mut ghl = Vec::with_capacity(connections);
        for i in 0..connections {
            ghl.push(
                GhlSandbox::start(GhlConfig {
                    location_id: format!("loc_{i:03}"),
                    token: format!("pit-{i:03}"),
                    rate_limit: limit.clone(),
                    ..GhlConfig::default()
                })
                .await
                .expect("GHL simulator starts"),
            );
        }
        let default_ghl = GhlSandbox::start(GhlConfig {
            location_id: "loc_default".into(),
            token: "pit-default".into(),
            rate_limit: limit.clone(),
            ..GhlConfig::default()
        })
        .await
        .expect("GHL simulator starts");
        let sc = StickyCardsSandbox::start(StickyCardsConfig {
            rate_limit: RateLimit::unlimited(),
            ..StickyCardsConfig::default()
        })
        .await
        .expect("Sticky Cards simulator starts");
        let store = Store::open(db.url()).await.expect("open the store");
        let key = SecretKey::from_env_value(KEY).expect("a key");
        for (i, g) in ghl.iter().enumerate() {
            let vars: BTreeMap<String, String> = [
                ("GHL_API_BASE_URL", g.base_url()),
                ("GHL_API_TOKEN", g.token().to_string()),
                ("GHL_LOCATION_ID", g.location_id().to_string()),
                ("STICKYCARDS_WEBHOOK_TOKEN", SC_TOKEN.to_string()),
                ("STICKYCARDS_API_KEY", sc.api_key().to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            store
                .add_connection(&connection_name(i), &vars, Some(&key))
                .await
                .expect("add a connection");
        }
        let env: BTreeMap<String, String> = [
            ("STICKYCARDS_WEBHOOK_TOKEN", "default-sc-token".to_string()),
            ("SIGNALMIND_WEBHOOK_TOKEN", "sm-token".to_string()),
            ("SLICKTEXT_WEBHOOK_SECRET", "st-secret".to_string()),
            ("GHL_WORKFLOW_WEBHOOK_TOKEN", "wf-token".to_string()),
            ("GHL_API_BASE_URL", default_ghl.base_url()),
            ("GHL_API_TOKEN", default_ghl.token().to_string()),
            ("GHL_LOCATION_ID", default_ghl.location_id().to_string()),
            ("STICKYCARDS_API_BASE_URL", sc.base_url()),
            ("STICKYCARDS_API_KEY", sc.api_key().to_string()),
            ("MAPPER_SECRET_KEY", KEY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // On PostgreSQL each open store holds up to 26 sessions (10 + 16 for
        // people locks): the bench reads through the first replica's.
        drop(store);
        let mut apps = Vec::new();
        for _ in 0..replicas {
            let program = compile_dir(Path::new("mappings"))
                .program
                .expect("mappings compile");
            let mut config = AppConfig::serve(
                program,
                db.url().parse::<DatabaseUrl>().expect("a database URL"),
                "127.0.0.1:0".parse().expect("an address"),
                None,
                Env::from_map(env.clone()),
            );
            // Every write leaves at once: what is measured is each call.
            config.coalesce_window = Some(Duration::ZERO);
            config.worker = WorkerConfig {
                concurrency: workers,
                ..WorkerConfig::default()
            };
            apps.push(App::start(config).await.expect("mapper starts"));
        }
        let example: Value = serde_json::from_str(
            &std::fs::read_to_string("examples/payloads/stickycards/CardScannedEvent.json")
                .expect("example payload"),
        )
        .expect("example payload is JSON");
        Setup {
            ghl,
            _default_ghl: default_ghl,
            _sc: sc,
            store: apps[0].store.clone(),
            apps,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(POSTERS)
                .build()
                .expect("reqwest client"),
            example,
            posted: AtomicUsize::new(0),
        }
    }

    /// Posts event `seq` of customer `c` of connection `conn` to the next
    /// replica; true on 202.
    async fn post(&self, conn: usize, c: usize, seq: usize) -> bool {
        let n = self.posted.fetch_add(1, Ordering::Relaxed);
        let app = &self.apps[n % self.apps.len()];
        let url = format!(
            "{}/webhooks/stickycards/{}",
            app.url().expect("receiving"),
            connection_name(conn)
        );
        self.http
            .post(url)
            .header("content-type", "application/json")
            .header("X-Webhook-Token", SC_TOKEN)
            .body(scan_event(&self.example, conn, c, seq))
            .send()
            .await
            .map(|r| r.status().as_u16() == 202)
            .unwrap_or(false)
    }

    /// Posts `events` (connection, customer, seq) from `POSTERS` tasks.
    async fn post_all(self: &Arc<Self>, events: Vec<(usize, usize, usize)>) -> usize {
        let events = Arc::new(events);
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..POSTERS {
            let (setup, events, next) = (self.clone(), events.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut failed = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(conn, c, seq)) = events.get(i) else {
                        break;
                    };
                    if !setup.post(conn, c, seq).await {
                        failed += 1;
                    }
                }
                failed
            }));
        }
        let mut failed = 0;
        for t in tasks {
            failed += t.await.expect("a poster panicked");
        }
        failed
    }

    /// Counts of events by state.
    async fn counts(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for c in self.store.counts().await.expect("count events") {
            *out.entry(c.state.clone()).or_insert(0) += c.count;
        }
        out
    }

    /// Waits until no event is waiting or in flight, at most `limit`; true
    /// when settled.
    async fn settle(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            let counts = self.counts().await;
            let open: i64 = ["received", "processing", "retrying"]
                .iter()
                .map(|s| counts.get(*s).copied().unwrap_or(0))
                .sum();
            if open == 0 {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GHL calls made so far, per location.
    fn calls(&self) -> Vec<usize> {
        self.ghl.iter().map(|g| g.request_log().len()).collect()
    }

    fn count_429(&self) -> usize {
        self.ghl
            .iter()
            .map(|g| {
                g.request_log()
                    .iter()
                    .filter(|r| r.status == Some(429))
                    .count()
            })
            .sum()
    }

    /// One event per customer, delivered: contacts created and linked,
    /// custom field ids cached, so that each measured event is one PUT.
    /// Then waits out the rate windows the warm-up used.
    async fn warm_up(self: &Arc<Self>, customers: &[usize]) {
        let events: Vec<(usize, usize, usize)> = customers
            .iter()
            .enumerate()
            .flat_map(|(conn, &n)| (0..n).map(move |c| (conn, c, 0)))
            .collect();
        let total = events.len();
        let started = Instant::now();
        assert_eq!(self.post_all(events).await, 0, "warm-up webhooks refused");
        assert!(
            self.settle(Duration::from_secs(600)).await,
            "warm-up not settled: {:?}",
            self.counts().await
        );
        let counts = self.counts().await;
        assert_eq!(
            counts.get("delivered").copied().unwrap_or(0),
            total as i64,
            "warm-up not all delivered: {counts:?}"
        );
        eprintln!(
            "  warm-up: {total} events delivered in {:.1?}",
            started.elapsed()
        );
        tokio::time::sleep(LIMIT_INTERVAL + Duration::from_secs(1)).await;
    }

    async fn shutdown(self) {
        for app in self.apps {
            app.shutdown().await;
        }
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// (received_at, delivered at) of the delivered events of connections
/// other than `except` received in `[from, to)`, and how many such events
/// are not delivered.
async fn waits(db: &str, except: &str, from: i64, to: i64) -> (Vec<i64>, i64) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(db)
        .await
        .expect("open the database");
    let rows = sqlx::query(
        "SELECT e.received_at, MAX(s.at) FROM events e JOIN sync_log s ON s.event_row = e.id \
         WHERE e.connection <> $1 AND e.received_at >= $2 AND e.received_at < $3 \
         AND e.state = 'delivered' GROUP BY e.id, e.received_at",
    )
    .bind(except)
    .bind(from)
    .bind(to)
    .fetch_all(&mut conn)
    .await
    .expect("read waits");
    let mut waits: Vec<i64> = rows
        .iter()
        .map(|r| r.get::<i64, _>(1) - r.get::<i64, _>(0))
        .collect();
    waits.sort_unstable();
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE connection <> $1 AND received_at >= $2 \
         AND received_at < $3 AND state <> 'delivered'",
    )
    .bind(except)
    .bind(from)
    .bind(to)
    .fetch_one(&mut conn)
    .await
    .expect("count open events");
    let _ = conn.close().await;
    (waits, open)
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect())
        .unwrap_or_default();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 10)
}

/// CPU used during a run: this process (the replicas, the simulators and
/// the senders), the PostgreSQL server's processes (backends, WAL writer,
/// checkpointer: all processes named `postgres`, so another client's
/// sessions would count too), and the whole machine (every process, in
/// cores), with the load average at the end.
struct Cpu {
    own: Duration,
    postgres: HashMap<u32, u64>,
    machine: (u64, u64),
    at: Instant,
}

/// Clock ticks of a process (user + system) from `/proc/{pid}/stat`, with
/// its command name.
fn proc_ticks(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once(" (")?.1.to_string();
    let fields: Vec<u64> = rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect();
    Some((comm, fields.get(11)? + fields.get(12)?))
}

/// Busy and total ticks of all cores from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).unwrap_or(&0) + cpu.get(4).unwrap_or(&0);
    (total - idle, total)
}

impl Cpu {
    fn now() -> Cpu {
        let mut postgres = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if let (Ok(pid), Some((comm, ticks))) = (name.parse::<u32>(), proc_ticks(&name))
                    && comm == "postgres"
                {
                    postgres.insert(pid, ticks);
                }
            }
        }
        Cpu {
            own: cpu_time(),
            postgres,
            machine: machine_ticks(),
            at: Instant::now(),
        }
    }

    /// "bench x, PostgreSQL y, machine z (load a)" in cores, since `self`.
    fn since(&self, replicas: usize) -> String {
        let end = Cpu::now();
        let seconds = end.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let own = (end.own - self.own).as_secs_f64() / seconds;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let (busy, total) = (
            end.machine.0.saturating_sub(self.machine.0),
            end.machine.1.saturating_sub(self.machine.1),
        );
        let machine = cores * busy as f64 / total.max(1) as f64;
        let load = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .next()
            .unwrap_or("?")
            .to_string();
        if replicas > 1 {
            let ticks: u64 = end
                .postgres
                .iter()
                .map(|(pid, t)| t.saturating_sub(self.postgres.get(pid).copied().unwrap_or(0)))
                .sum();
            // 100 ticks a second, as `cpu_time` assumes.
            let postgres = ticks as f64 / 100.0 / seconds;
            format!("bench {own:.2}, PostgreSQL {postgres:.2}, machine {machine:.2} (load {load})")
        } else {
            format!("bench {own:.2}, machine {machine:.2} (load {load})")
        }
    }
}

/// Calls per second of one connection held to its window, from the arrival
/// times of its calls in a run that started with its window empty: over
/// whole windows, from the first call after the first window's burst
/// (number `LIMIT_MAX`) to the last call a whole number of windows' worth
/// of calls later. A connection that uses its window fully sends its calls
/// in bursts of up to `LIMIT_MAX` once a window; counting calls in a
/// stretch of time that does not line up with them gives between one and
/// two bursts' worth, whichever the phase, so this counts them call to
/// call instead. `None` with fewer than `2 × LIMIT_MAX + 1` calls.
fn sustained_rate(arrivals: &[Instant]) -> Option<f64> {
    let per = LIMIT_MAX as usize;
    let first = per;
    let windows = arrivals.len().checked_sub(first + 1)? / per;
    if windows == 0 {
        return None;
    }
    let last = first + windows * per;
    let span = arrivals[last].duration_since(arrivals[first]).as_secs_f64();
    Some((last - first) as f64 / span.max(1e-9))
}

struct Params {
    connections: usize,
    backlog: usize,
    each: usize,
    seconds: u64,
    workers: usize,
}

/// Scenario 1: connection 0 gets the backlog, the others 1 event/s each.
async fn one_backlog(p: &Params, replicas: usize) -> Option<String> {
    let db = Db::new(replicas).await?;
    let setup = Arc::new(Setup::start(&db, p.connections, replicas, p.workers).await);
    let mut customers = vec![QUIET_CUSTOMERS; p.connections];
    customers[0] = BACKLOG_CUSTOMERS;
    setup.warm_up(&customers).await;

    let calls_before = setup.calls();
    let cpu_before = Cpu::now();
    let started = Instant::now();
    let t0 = now_ms();
    let backlog: Vec<(usize, usize, usize)> = (0..p.backlog)
        .map(|i| (0, i % BACKLOG_CUSTOMERS, 1 + i))
        .collect();
    let posting = {
        let setup = setup.clone();
        tokio::spawn(async move { setup.post_all(backlog).await })
    };
    // The trickle: each second, one event for every quiet connection.
    let mut refused = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut measure_from = None;
    for second in 0..p.seconds as usize {
        tick.tick().await;
        if second == 11 {
            measure_from = Some(((), setup.calls()));
        }
        let mut sends = Vec::new();
        for conn in 1..p.connections {
            let setup = setup.clone();
            sends.push(tokio::spawn(async move {
                setup.post(conn, second % QUIET_CUSTOMERS, 1 + second).await
            }));
        }
        for s in sends {
            if !s.await.unwrap_or(false) {
                refused += 1;
            }
        }
    }
    tick.tick().await;
    let t1 = now_ms();
    let elapsed = started.elapsed();
    let calls_after = setup.calls();
    let cpu = cpu_before.since(replicas);
    let backlog_arrivals: Vec<Instant> = setup.ghl[0].request_log()[calls_before[0]..]
        .iter()
        .map(|r| r.received)
        .filter(|t| *t <= started + elapsed)
        .collect();
    let sustained = sustained_rate(&backlog_arrivals);
    let backlog_refused = posting.await.expect("backlog poster");
    // The trickle's last events get the time to be delivered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, calls_from) = measure_from.expect("a run of more than 11 s");
    let window = elapsed.saturating_sub(Duration::from_secs(11));
    let backlog_calls = (calls_after[0] - calls_from[0]) as f64 / window.as_secs_f64();
    let quiet_calls: usize = (1..p.connections)
        .map(|i| calls_after[i] - calls_from[i])
        .sum();
    let quiet_rate = quiet_calls as f64 / window.as_secs_f64();
    let all_calls: usize = calls_after
        .iter()
        .zip(&calls_before)
        .map(|(a, b)| a - b)
        .sum();
    let counts = setup.counts().await;
    let n429 = setup.count_429();
    eprintln!("  all GHL calls in the run: {all_calls}");
    // Read once the replicas are stopped: on PostgreSQL their pools hold
    // most of the server's connections.
    Arc::into_inner(setup)
        .expect("posters done")
        .shutdown()
        .await;
    let (w, open) = waits(db.url(), &connection_name(0), t0, t1).await;
    let quiet = p.connections - 1;
    let demand = LIMIT_PER_S + quiet as f64;
    let line = format!(
        "| one backlog ({}) | {} replica{} × {} workers | {:.0} s | {} trickle events: p50 {} ms, p99 {} ms, max {} ms, {} not delivered | backlog {} (after 11 s: {:.2}/s, {:.0}%) | quiet {:.1}/s ({:.0}% of their {quiet}/s) | all {} (after 11 s: {:.1}/s, {:.0}%) | {} | {} | {} | {:?} |",
        p.backlog,
        replicas,
        if replicas == 1 { "" } else { "s" },
        p.workers,
        elapsed.as_secs_f64(),
        w.len() as i64 + open,
        percentile(&w, 0.5),
        percentile(&w, 0.99),
        w.last().copied().unwrap_or(0),
        open,
        sustained.map_or(
            "over whole windows: too few calls".to_string(),
            |r| format!(
                "{r:.2}/s over whole windows ({:.0}% of {LIMIT_PER_S}/s)",
                100.0 * r / LIMIT_PER_S
            )
        ),
        backlog_calls,
        100.0 * backlog_calls / LIMIT_PER_S,
        quiet_rate,
        100.0 * quiet_rate / quiet as f64,
        sustained.map_or("—".to_string(), |r| format!(
            "{:.1}/s = {:.0}% of {demand:.0}/s",
            r + quiet_rate,
            100.0 * (r + quiet_rate) / demand
        )),
        backlog_calls + quiet_rate,
        100.0 * (backlog_calls + quiet_rate) / demand,
        n429,
        refused + backlog_refused,
        cpu,
        counts,
    );
    db.drop().await;
    Some(line)
}

/// Scenario 2: every connection gets `each` events at once.
async fn all_backlogs(p: &Params, replicas: usize) -> Option<String> {
    let db = Db::new(replicas).await?;
    let setup = Arc::new(Setup::start(&db, p.connections, replicas, p.workers).await);
    let customers = 10usize;
    setup.warm_up(&vec![customers; p.connections]).await;
    let calls_before: usize = setup.calls().iter().sum();
    let cpu_before = Cpu::now();
    let started = Instant::now();
    let events: Vec<(usize, usize, usize)> = (0..p.each)
        .flat_map(|i| (0..p.connections).map(move |conn| (conn, i % customers, 1 + i)))
        .collect();
    let total = events.len();
    let posting = {
        let setup = setup.clone();
        tokio::spawn(async move { setup.post_all(events).await })
    };
    // Calls per second, sampled each second until settled or time is up.
    let limit = Duration::from_secs(p.seconds * 3);
    let mut samples = Vec::new();
    let mut last = calls_before;
    let mut settled = false;
    let mut posted_in = None;
    let mut posted_at_sample = 0;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now: usize = setup.calls().iter().sum();
        samples.push(now - last);
        last = now;
        if posted_in.is_none() && posting.is_finished() {
            posted_in = Some(started.elapsed());
            posted_at_sample = samples.len();
        }
        if posting.is_finished() && setup.settle(Duration::ZERO).await {
            settled = true;
            break;
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_before.since(replicas);
    let refused = posting.await.expect("poster");
    let calls: usize = setup.calls().iter().sum::<usize>() - calls_before;
    let counts = setup.counts().await;
    let delivered =
        counts.get("delivered").copied().unwrap_or(0) - (customers * p.connections) as i64;
    let n429 = setup.count_429();
    let sum_limits = LIMIT_PER_S * p.connections as f64;
    let rate = calls as f64 / elapsed.as_secs_f64();
    // The middle of the run: without the first 11 s (the first window's
    // burst) and the last 2 samples (the tail of the last connections).
    let middle: Vec<usize> = samples
        .iter()
        .copied()
        .skip(11)
        .take(samples.len().saturating_sub(13))
        .collect();
    let middle_rate = if middle.is_empty() {
        f64::NAN
    } else {
        middle.iter().sum::<usize>() as f64 / middle.len() as f64
    };
    // Once every backlog is stored (the posting over, so the receiving no
    // longer shares the machine) and before the tail: every connection has
    // work, which is what the scenario asks of the delivery.
    let stored: Vec<usize> = samples
        .iter()
        .copied()
        .skip(posted_at_sample.max(1))
        .take(samples.len().saturating_sub(posted_at_sample.max(1) + 2))
        .collect();
    let stored_rate = if stored.is_empty() {
        f64::NAN
    } else {
        stored.iter().sum::<usize>() as f64 / stored.len() as f64
    };
    let line = format!(
        "| all backlogs ({} each) | {} replica{} × {} workers | {:.0} s{} | {} of {} delivered | posted in {:.1?} | {:.0} calls/s = {:.0}% of {:.0}/s | middle {:.0}/s = {:.0}% | backlogs stored {:.0}/s = {:.0}% over {} s | {} | {} | {} | per-second calls {:?} |",
        p.each,
        replicas,
        if replicas == 1 { "" } else { "s" },
        p.workers,
        elapsed.as_secs_f64(),
        if settled { "" } else { " (time up)" },
        delivered,
        total,
        posted_in.unwrap_or(elapsed),
        rate,
        100.0 * rate / sum_limits,
        sum_limits,
        middle_rate,
        100.0 * middle_rate / sum_limits,
        stored_rate,
        100.0 * stored_rate / sum_limits,
        stored.len(),
        n429,
        refused,
        cpu,
        samples,
    );
    Arc::into_inner(setup)
        .expect("posters done")
        .shutdown()
        .await;
    db.drop().await;
    Some(line)
}

fn main() {
    // The replicas' warnings (a claim that failed, a rate window that could
    // not be read) go to stderr when `RUST_LOG` asks for them.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let p = Params {
        connections: env_usize("FAIR_CONNECTIONS", 200).max(2),
        backlog: env_usize("FAIR_BACKLOG", 20_000),
        each: env_usize("FAIR_EACH", 300),
        seconds: env_usize("FAIR_SECONDS", 60).max(15) as u64,
        workers: env_usize("FAIR_WORKERS", 8),
    };
    let scenarios = env_list("FAIR_SCENARIOS", &[1, 2]);
    let replicas = env_list("FAIR_REPLICAS", &[1, 3]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut lines = Vec::new();
        for &s in &scenarios {
            for &r in &replicas {
                eprintln!("scenario {s}, {r} replica(s)…");
                let line = match s {
                    1 => one_backlog(&p, r).await,
                    _ => all_backlogs(&p, r).await,
                };
                match line {
                    Some(line) => {
                        eprintln!("{line}");
                        lines.push(line);
                    }
                    None => eprintln!(
                        "  skipped: {r} replicas need MAPPER_TEST_POSTGRES_URL (a PostgreSQL server)"
                    ),
                }
            }
        }
        println!(
            "{} connections, each its own location at {LIMIT_MAX} per {LIMIT_INTERVAL:?}",
            p.connections
        );
        println!(
            "| scenario | replicas | run | quiet wait (ack → delivered) / delivered | | | | 429s | refused webhooks | CPU in cores (of {}) | states |",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        for line in lines {
            println!("{line}");
        }
    });
}
