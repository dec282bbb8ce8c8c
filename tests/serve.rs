//! `mapper serve` over real HTTP on loopback with a real SQLite file.

use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running};
use std::process::Command;
use std::time::Duration;

mod common;

use common::postgres::FreshPostgres;
use common::{copy_dir, serve_in, settle, simulators};

/// The app `mapper serve` runs, in this process, on a fresh SQLite file.
struct Server {
    base: String,
    db: String,
    _running: Running,
    _dir: tempfile::TempDir,
}

const SECRETS: [(&str, &str); 4] = [
    ("STICKYCARDS_WEBHOOK_TOKEN", "sc-token"),
    ("SIGNALMIND_WEBHOOK_TOKEN", "sm-token"),
    ("SLICKTEXT_WEBHOOK_SECRET", "st-secret"),
    ("GHL_WORKFLOW_WEBHOOK_TOKEN", "wf-token"),
];

async fn start() -> Server {
    start_in("mappings").await
}

async fn start_in(mappings: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("inbox.db").display());
    let program = mapper::config::compile::compile_dir(std::path::Path::new(mappings))
        .program
        .expect("the mappings check clean");
    let config = AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        Some(mappings.into()),
        SECRETS.into_iter().collect::<Env>(),
    );
    let running = App::start(config).await.expect("the app starts");
    Server {
        base: running.url().unwrap(),
        db,
        _running: running,
        _dir: dir,
    }
}

/// The command line's contract: `mapper serve` without the webhook secrets
/// does not start, exits 1 and names every variable to set.
#[test]
fn refuses_to_start_without_webhook_secrets_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("inbox.db").display());
    let mut command = Command::new(env!("CARGO_BIN_EXE_mapper"));
    command.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &db,
        "--mappings",
        "mappings",
    ]);
    for (k, _) in SECRETS {
        command.env_remove(k);
    }
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for (var, _) in SECRETS {
        assert!(err.contains(var), "{var} not named in:\n{err}");
    }
}

/// The same through the library: the error names each source and variable.
#[tokio::test]
async fn the_app_refuses_to_start_without_webhook_secrets() {
    let program = mapper::config::compile::compile_dir(std::path::Path::new("mappings"))
        .program
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = AppConfig::serve(
        program,
        DatabaseUrl::sqlite(&dir.path().join("x.db")),
        "127.0.0.1:0".parse().unwrap(),
        None,
        Env::from_map(Default::default()),
    );
    config.worker.concurrency = 1;
    let Err(mapper::app::StartError::Secrets(missing)) = App::start(config).await else {
        panic!("must not start without secrets");
    };
    let text = missing.to_string();
    for (var, _) in SECRETS {
        assert!(text.contains(var), "{var} not named in {text}");
    }
}

/// The command line's contract: a database URL that names no database is a
/// usage error, before anything starts.
#[test]
fn a_database_url_of_no_known_kind_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args([
            "serve",
            "--database",
            "mysql://x",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sqlite://FILE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stores_then_acknowledges_and_refuses_bad_requests_precisely() {
    let server = start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{}", server.base, path);
    let installed = std::fs::read("examples/payloads/stickycards/CardInstalledEvent.json").unwrap();

    assert_eq!(
        http.get(url("/healthz")).send().await.unwrap().status(),
        200
    );
    let ready: serde_json::Value = http
        .get(url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);

    // Stored, then acknowledged with the delivery id; a redelivery gets the same id.
    let send = |body: Vec<u8>, token: &'static str| {
        http.post(url(&format!("/webhooks/stickycards?token={token}")))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = send(installed.clone(), "sc-token").await.unwrap();
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(first["status"], "accepted");
    let again = send(installed.clone(), "sc-token").await.unwrap();
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["delivery_id"], first["delivery_id"]);

    // Refusals: each with its status and a message saying what is wrong.
    let r = send(installed.clone(), "wrong").await.unwrap();
    assert_eq!(r.status(), 401);
    let refused: serde_json::Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "signature", "{refused}");
    assert_eq!(refused["header"], "token", "the query parameter: {refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("token does not match"),
        "{refused}"
    );
    let r = http
        .post(url("/webhooks/nosuch"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let refused: serde_json::Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "unknown_source", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("stickycards"),
        "the known sources are listed: {refused}"
    );
    let r = send(
        b"{\n  \"event_type\": \"CardInstalledEvent\",\n  oops\n}".to_vec(),
        "sc-token",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let refused: serde_json::Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "malformed", "{refused}");
    assert_eq!(refused["field"], "body", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("line 3, column 3"),
        "{refused}"
    );
    // Its own client: the server closes a connection whose body it did not read.
    let r = reqwest::Client::new()
        .post(url("/webhooks/stickycards?token=sc-token"))
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = http
        .post(url("/webhooks/stickycards?token=sc-token"))
        .header("content-type", "application/xml")
        .body(installed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let refused: serde_json::Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "content_type", "{refused}");
    assert_eq!(refused["header"], "content-type", "{refused}");
    let r = send(br#"{"customer_id": "x"}"#.to_vec(), "sc-token")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("no event type"));

    // An event no mapping handles is kept as unmapped.
    let r = send(
        br#"{"event_type": "CouponRedeemedEvent", "customer_id": "c1"}"#.to_vec(),
        "sc-token",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["status"],
        "unmapped"
    );

    // SlickText: form-encoded, HMAC-MD5 of the raw `data` field.
    let form =
        std::fs::read_to_string("examples/payloads/slicktext/LoyaltyEventCreated.joined.form")
            .unwrap();
    let data = form.trim().strip_prefix("data=").unwrap();
    let data = urlencoding::decode(&data.replace('+', " "))
        .unwrap()
        .into_owned();
    let signature = hex::encode(mapper::server::verify::hmac_md5(
        b"st-secret",
        data.as_bytes(),
    ));
    let r = http
        .post(url("/webhooks/slicktext"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Slicktext-Signature", &signature)
        .body(form.trim().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let r = http
        .post(url("/webhooks/slicktext"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Slicktext-Signature", "00")
        .body(form.trim().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "mapper_webhooks_accepted_total{source=\"stickycards\",connection=\"default\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "mapper_webhooks_duplicate_total{source=\"stickycards\",connection=\"default\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"signature\""), "{metrics}");

    // What was acknowledged is in the database file.
    let store = mapper::store::Store::open(&server.db).await.unwrap();
    let counts = store.counts().await.unwrap();
    let total: i64 = counts.iter().map(|c| c.count).sum();
    assert_eq!(total, 3, "{counts:?}");
    assert!(
        counts
            .iter()
            .any(|c| c.state == "unmapped" && c.event_type == "CouponRedeemedEvent")
    );

    // Operators see it, and can re-queue it once a mapping exists.
    let status = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(["status", "--database", &server.db, "--format", "json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["totals"]["unmapped"], 1, "{status}");
    let replay = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args([
            "replay",
            "--database",
            &server.db,
            "--state",
            "unmapped",
            "--source",
            "stickycards",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout).trim(),
        "re-queued 1 event(s)"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args([
            "replay",
            "--database",
            &server.db,
            "--since",
            "yesterday-ish",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a usage error");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_concurrent_webhooks_is_stored_once_each() {
    let server = start().await;
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let http = http.clone();
        let url = format!("{}/webhooks/stickycards", server.base);
        tasks.push(tokio::spawn(async move {
            let body = format!(
                r#"{{"event_type":"CardScannedEvent","timestamp":"2025-03-05T10:00:{:02}Z","customer_id":"cus_{}","card_id":"c"}}"#,
                i % 50,
                i % 50
            );
            http.post(url)
                .header("X-Webhook-Token", "sc-token")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        50,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 50);
    let store = mapper::store::Store::open(&server.db).await.unwrap();
    assert_eq!(
        store
            .counts()
            .await
            .unwrap()
            .iter()
            .map(|c| c.count)
            .sum::<i64>(),
        50
    );
}

/// The mapping folder is reloaded when it changes: a broken set is refused and
/// the old one keeps serving; a good set replaces it.
#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_refuses_a_broken_set_and_applies_a_good_one() {
    let copy = tempfile::tempdir().unwrap();
    for sub in ["mappings", "schemas", "examples"] {
        copy_dir(std::path::Path::new(sub), &copy.path().join(sub));
    }
    let mappings = copy.path().join("mappings");
    let server = start_in(mappings.to_str().unwrap()).await;
    let http = reqwest::Client::new();
    let scan = |second: u32| {
        http.post(format!("{}/webhooks/stickycards?token=sc-token", server.base))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"event_type":"CardScannedEvent","timestamp":"2025-03-05T10:00:{second:02}Z","customer_id":"cus_9"}}"#
            ))
            .send()
    };
    let status_of = |v: serde_json::Value| v["status"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        status_of(scan(1).await.unwrap().json().await.unwrap()),
        "accepted"
    );

    let ready = || async {
        http.get(format!("{}/readyz", server.base))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let before = ready().await["mappings"].as_u64().unwrap();
    std::fs::write(
        mappings.join("broken.yaml"),
        "mappings:\n  - name: x\n    sourse: y\n",
    )
    .unwrap();
    let mut refused = serde_json::Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused = ready().await;
        if refused["last_reload"] == "failed" {
            break;
        }
    }
    assert_eq!(refused["last_reload"], "failed", "{refused}");
    assert!(
        refused["reload_error"]
            .as_str()
            .unwrap_or("")
            .contains("M002"),
        "{refused}"
    );
    assert_eq!(
        status_of(scan(2).await.unwrap().json().await.unwrap()),
        "accepted",
        "the old set still serves"
    );
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mapper_config_last_reload_ok 0"),
        "{metrics}"
    );

    // A good set: without the engagement mappings, a scan is no longer mapped.
    std::fs::remove_file(mappings.join("broken.yaml")).unwrap();
    std::fs::remove_file(mappings.join("stickycards-ghl/engagement.yaml")).unwrap();
    std::fs::remove_file(mappings.join("stickycards-ghl/engagement.test.yaml")).unwrap();
    let mut applied = serde_json::Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        applied = ready().await;
        if applied["last_reload"] == "ok" && applied["mappings"].as_u64() != Some(before) {
            break;
        }
    }
    assert_eq!(applied["last_reload"], "ok", "{applied}");
    assert!(applied["mappings"].as_u64().unwrap() < before, "{applied}");
    assert_eq!(
        status_of(scan(3).await.unwrap().json().await.unwrap()),
        "unmapped"
    );

    // Reading the folder (each reload does) and rewriting a file with the
    // same content are no change: the count of reloads stays where it is.
    let reloads = || async {
        let text = http
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("mapper_config_reloads_total{result=\"ok\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = reloads().await;
    let same = std::fs::read(mappings.join("mapper.yaml")).unwrap();
    std::fs::write(mappings.join("mapper.yaml"), same).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        reloads().await,
        settled,
        "nothing changed, nothing reloaded"
    );
}

/// After a delivery, `/metrics` has the histograms of issue #10 with their
/// buckets: acknowledgement by source, lag from storing to delivery, and
/// target requests by target and status class.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_a_delivery_have_histogram_buckets() {
    let (ghl, sc) = simulators().await;
    let s = serve_in(&ghl, &sc, &[], "mappings").await;
    let body = std::fs::read("examples/payloads/stickycards/CardInstalledEvent.json").unwrap();
    assert_eq!(
        common::post(&s, "stickycards", "?token=sc-token", &body).await,
        202
    );
    let counts = settle(&s.db).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");
    let text = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let has = |name: &str, labels: &[&str]| {
        lines
            .iter()
            .any(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
    };
    assert!(
        has(
            "mapper_webhook_ack_seconds_bucket{",
            &["le=\"", "source=\"stickycards\""]
        ),
        "{text}"
    );
    assert!(
        has("mapper_delivery_lag_seconds_bucket{", &["le=\"+Inf\""]),
        "{text}"
    );
    assert!(
        has(
            "mapper_target_request_seconds_bucket{",
            &["le=\"", "target=\"ghl\"", "status=\"2xx\""]
        ),
        "{text}"
    );
    assert!(
        has(
            "mapper_target_requests_total{",
            &["target=\"ghl\"", "status=\"2xx\""]
        ),
        "{text}"
    );
    assert!(
        has("mapper_deliveries_total{", &["outcome=\"delivered\""]),
        "{text}"
    );
    assert!(has("mapper_target_calls_per_event_count", &[]), "{text}");
    assert!(
        has("mapper_events{", &["state=\"delivered\""]),
        "the queue depth: {text}"
    );
    // One delivered event: the lag histogram counted exactly it.
    assert!(
        lines.contains(&"mapper_delivery_lag_seconds_count{connection=\"default\"} 1"),
        "{text}"
    );
    // The handle the app exposes is the one `/metrics` reads.
    assert_eq!(
        s.running
            .metrics
            .render(&s.running.store)
            .await
            .lines()
            .count(),
        lines.len()
    );
}

/// The command line's contract, as an operator meets it: `mapper serve`
/// says where it listens, answers there, and stops cleanly (exit 0) on
/// SIGTERM. The only test that reads the address from the binary's output.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn the_serve_command_listens_where_it_says_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("inbox.db").display());
    let mut command = Command::new(env!("CARGO_BIN_EXE_mapper"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .args(["--workers", "2", "--coalesce-window", "30s"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in SECRETS {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = lines.by_ref().map_while(Result::ok).find_map(|line| {
        let at = line.find("listening for webhooks on http://")?;
        let rest = &line[at + "listening for webhooks on ".len()..];
        Some(rest.split("/webhooks").next()?.to_string())
    });
    // Keep reading so that the server never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let Some(base) = base else {
        let _ = child.kill();
        panic!("serve did not say where it listens");
    };
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop");
    let _ = drain.join();
}

/// The same app on PostgreSQL when `MAPPER_TEST_POSTGRES_URL` is set (CI
/// sets it): a webhook is stored, delivered to the simulator and counted.
#[tokio::test(flavor = "multi_thread")]
async fn the_app_on_postgres_receives_and_delivers() {
    let Some(pg) = FreshPostgres::create("app").await else {
        return;
    };
    let url = pg.url.clone();

    let (ghl, sc) = simulators().await;
    // Without the inactivity schedule, whose first tick may come within the
    // test and deliver an event of its own for this customer (the example
    // is dated 2025): the counts below are the webhook's.
    let copy = tempfile::tempdir().unwrap();
    for sub in ["mappings", "schemas", "examples"] {
        copy_dir(std::path::Path::new(sub), &copy.path().join(sub));
    }
    let mappings = copy.path().join("mappings");
    std::fs::remove_dir_all(mappings.join("schedules-ghl")).unwrap();
    let program = mapper::config::compile::compile_dir(&mappings)
        .program
        .unwrap();
    let mut config = AppConfig::serve(
        program,
        url.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        Env::from_map(common::serve_env(&ghl, &sc)),
    );
    config.coalesce_window = Some(Duration::ZERO);
    let running = App::start(config).await.unwrap();
    assert!(running.store.is_postgres());
    let body = std::fs::read("examples/payloads/stickycards/CardInstalledEvent.json").unwrap();
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/webhooks/stickycards?token=sc-token",
            running.url().unwrap()
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let counts = settle(&url).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");
    assert_eq!(ghl.contacts().len(), 1);
    let text = running.metrics.render(&running.store).await;
    assert!(
        text.contains("mapper_deliveries_total{outcome=\"delivered\",connection=\"default\"} 1"),
        "{text}"
    );
    running.shutdown().await;
    pg.drop().await;
}
