//! Load test of webhook acceptance: durable `POST /webhooks/stickycards`
//! against a bare axum handler that accepts and discards, measured in the same
//! run with the same client (64 connections over loopback).
//!
//! mapper is measured alone and with the operator console mounted
//! (`MAPPER_UI_TOKEN`), two runs each in alternating order.
//!
//! `cargo bench --bench ingest` (env `INGEST_REQUESTS`, default 20000)

/// The allocator the `mapper` binary uses (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::Router;
use axum::routing::post;
use mapper::config::compile::compile_dir;
use mapper::server::{self, AppState};
use mapper::store::{Inbox, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 64;

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(
    url: String,
    total: usize,
    body: impl Fn(usize) -> String + Send + Sync + 'static,
) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let body = Arc::new(body);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, url, body, next) = (client.clone(), url.clone(), body.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let ok = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("X-Webhook-Token", "bench")
                    .body(body(i))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    latencies.push(t.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        if let Ok(l) = w.await {
            all.extend(l);
        }
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn main() {
    let total: usize = std::env::var("INGEST_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let payload =
            std::fs::read_to_string("examples/payloads/stickycards/CardScannedEvent.json")
                .expect("payload");
        // Distinct events, so every request is a durable insert (not a duplicate).
        let make = move |i: usize| payload.replacen("\"cus_1001\"", &format!("\"cus_{i}\""), 1);

        let bare = serve(Router::new().route(
            "/webhooks/{source}",
            post(|| async { axum::http::StatusCode::ACCEPTED }),
        ))
        .await;
        let _ = load(format!("{bare}/webhooks/stickycards"), 2000, make.clone()).await; // warm-up
        let baseline = load(format!("{bare}/webhooks/stickycards"), total, make.clone()).await;

        // mapper alone, and mapper with the operator console mounted beside
        // the receiver (`MAPPER_UI_TOKEN` set), each on a fresh database,
        // twice, in alternating order: neither gets the quieter moment.
        let mut plain = Vec::new();
        let mut with_console = Vec::new();
        let mut stored = 0;
        for round in 0..2 {
            let order = if round == 0 { [false, true] } else { [true, false] };
            for console in order {
                let (url, store, _dir) = mapper(console).await;
                let offset = 1_000_000 * (1 + round * 2 + usize::from(console));
                let _ = load(format!("{url}/webhooks/stickycards"), 2000, {
                    let make = make.clone();
                    move |i| make(i + offset + 500_000)
                })
                .await;
                let run = load(format!("{url}/webhooks/stickycards"), total, {
                    let make = make.clone();
                    move |i| make(i + offset)
                })
                .await;
                if !console {
                    stored = store
                        .counts()
                        .await
                        .map(|c| c.iter().map(|c| c.count).sum())
                        .unwrap_or(0);
                }
                if console { &mut with_console } else { &mut plain }.push(run);
            }
        }
        let mean = |runs: &[Run]| runs.iter().map(|r| r.rate).sum::<f64>() / runs.len() as f64;
        let worst_p99 = |runs: &[Run]| runs.iter().map(|r| r.p99).max().unwrap_or_default();
        let best_p50 = |runs: &[Run]| runs.iter().map(|r| r.p50).min().unwrap_or_default();

        println!("requests per run: {total}, connections: {CONNECTIONS}");
        println!(
            "bare axum (accept and drop): {:>9.0} req/s  p50 {:>7.2?}  p99 {:>7.2?}",
            baseline.rate, baseline.p50, baseline.p99
        );
        println!(
            "mapper (verify, decode, durable insert): {:>9.0} req/s  p50 {:>7.2?}  p99 {:>7.2?}  (mean of {} runs: {})",
            mean(&plain),
            best_p50(&plain),
            worst_p99(&plain),
            plain.len(),
            plain.iter().map(|r| format!("{:.0}", r.rate)).collect::<Vec<_>>().join(", ")
        );
        println!(
            "ratio: {:.1}% of bare axum's rate; rows stored: {stored}",
            100.0 * mean(&plain) / baseline.rate
        );
        println!(
            "mapper with the console mounted (MAPPER_UI_TOKEN set): {:>9.0} req/s  p50 {:>7.2?}  p99 {:>7.2?}  (mean of {} runs: {})",
            mean(&with_console),
            best_p50(&with_console),
            worst_p99(&with_console),
            with_console.len(),
            with_console.iter().map(|r| format!("{:.0}", r.rate)).collect::<Vec<_>>().join(", ")
        );
        println!(
            "ratio with the console: {:.1}% of bare axum's rate",
            100.0 * mean(&with_console) / baseline.rate
        );
        if let Some(kb) = peak_rss_kb() {
            println!(
                "peak RSS of this process (client + both servers): {:.1} MiB",
                kb as f64 / 1024.0
            );
        }
    });
}

/// The receiver on a fresh SQLite file, with the console beside it when
/// `console`: its address, its store, and the folder to keep alive.
async fn mapper(console: bool) -> (String, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("ingest.db").display());
    let store = Store::open(&db).await.expect("store");
    let program = compile_dir(Path::new("mappings"))
        .program
        .expect("mappings compile");
    let env = |name: &str| {
        Some(if name.ends_with("TOKEN") || name.ends_with("SECRET") {
            "bench".to_string()
        } else {
            String::new()
        })
    };
    let verifiers = server::verifiers(&program, &env).expect("verifiers");
    let state = Arc::new(AppState::new(
        server::Loaded {
            tenants: Default::default(),
            routes: Default::default(),
            program: Arc::new(program),
            verifiers,
        },
        store.clone(),
        Inbox::start(store.clone(), 256),
        "default".into(),
    ));
    let mut app = server::router(state.clone());
    if console {
        app = app.merge(server::ui::router(state, "bench-console-token").expect("console"));
    }
    (serve(app).await, store, dir)
}

fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
