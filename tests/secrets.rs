//! Secrets and personal data stay out of the logs and the sync log: the
//! hostile corpus plus one valid delivery of every example payload go
//! through `serve` (delivered to the simulators) with every log record at
//! `trace` captured, then every log line, every row of `sync_log` and the
//! stored webhook headers are searched for the webhook secrets, the API
//! credentials and the full phone numbers the deliveries carried.

mod common;

#[path = "hostile/cases.rs"]
mod hostile_cases;

use base64::Engine as _;
use ed25519_dalek::Signer as _;
use hostile_cases::Case;
use sqlx::Row as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Everything logged by the process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The phone numbers of a payload: every string under a key naming a
/// phone (SlickText's `Number` too) with at least 7 digits.
fn phones(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = k.to_ascii_lowercase();
                if let Some(s) = v.as_str()
                    && (key.contains("phone") || key == "number")
                    && s.chars().filter(char::is_ascii_digit).count() >= 7
                {
                    out.push(s.to_string());
                }
                phones(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| phones(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_or_phone_number_is_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

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
    let env = common::serve_env(&ghl, &sc);
    let mut secrets: Vec<String> = [
        "STICKYCARDS_WEBHOOK_TOKEN",
        "SIGNALMIND_WEBHOOK_TOKEN",
        "SLICKTEXT_WEBHOOK_SECRET",
        "GHL_WORKFLOW_WEBHOOK_TOKEN",
        "GHL_API_TOKEN",
        "STICKYCARDS_API_KEY",
    ]
    .iter()
    .map(|k| env[*k].clone())
    .collect();
    secrets.retain(|s| s.len() >= 6);
    assert_eq!(
        secrets.len(),
        6,
        "every secret is long enough to search for"
    );

    // The hostile corpus: refusals log their reasons.
    let cases = Case::load_all();
    for (n, case) in cases.iter().enumerate() {
        for request in case.prepare(n, ghl.location_id()) {
            hostile_cases::send(address, &request).await;
        }
    }

    // One valid delivery of every example payload of the webhook sources.
    let http = reqwest::Client::new();
    let key = mapper::fuzzing::ghl_test_key();
    let mut numbers = Vec::new();
    let mut delivered = 0;
    for source in [
        "stickycards",
        "signalmind",
        "slicktext",
        "ghl",
        "ghl-workflow",
    ] {
        let dir = std::path::Path::new("examples/payloads").join(source);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .collect();
        files.sort();
        for file in files {
            let raw = std::fs::read(&file).unwrap();
            let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&raw) else {
                continue;
            };
            phones(&doc, &mut numbers);
            let url = format!("{}/webhooks/{source}", s.base);
            let request = match source {
                "slicktext" => {
                    let data = serde_json::to_string(&doc).unwrap();
                    let sig = hex::encode(mapper::server::verify::hmac_md5(
                        env["SLICKTEXT_WEBHOOK_SECRET"].as_bytes(),
                        data.as_bytes(),
                    ));
                    http.post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("x-slicktext-signature", sig)
                        .body(format!("data={}", urlencoding::encode(&data)))
                }
                "ghl" => {
                    doc["timestamp"] = chrono::Utc::now().to_rfc3339().into();
                    doc["locationId"] = ghl.location_id().into();
                    let body = serde_json::to_vec(&doc).unwrap();
                    let sig = base64::engine::general_purpose::STANDARD
                        .encode(key.sign(&body).to_bytes());
                    http.post(&url)
                        .header("content-type", "application/json")
                        .header("x-ghl-signature", sig)
                        .body(body)
                }
                "ghl-workflow" => http
                    .post(&url)
                    .header("x-webhook-token", &env["GHL_WORKFLOW_WEBHOOK_TOKEN"])
                    .json(&doc),
                "signalmind" => http
                    .post(format!("{url}?token={}", env["SIGNALMIND_WEBHOOK_TOKEN"]))
                    .json(&doc),
                _ => http
                    .post(format!("{url}?token={}", env["STICKYCARDS_WEBHOOK_TOKEN"]))
                    .json(&doc),
            };
            let status = request.send().await.unwrap().status().as_u16();
            assert!(
                status == 202 || status == 200,
                "{} answered {status}",
                file.display()
            );
            delivered += 1;
        }
    }
    assert!(delivered >= 30, "only {delivered} example payloads posted");
    common::settle_within(&s.db, Duration::from_secs(60)).await;

    // Each number as sent, and its E.164 form (what the engine writes).
    let mut needles: Vec<(String, &str)> = secrets.iter().map(|s| (s.clone(), "secret")).collect();
    numbers.sort();
    numbers.dedup();
    assert!(numbers.len() >= 3, "phone numbers found: {numbers:?}");
    for n in &numbers {
        needles.push((n.clone(), "phone"));
        if let Some(e164) = mapper::template::filters::normalize_phone(n, "US") {
            needles.push((e164.clone(), "phone"));
            // Without the `+`, as in a URL-encoded query or a digits-only log.
            needles.push((e164.trim_start_matches('+').to_string(), "phone"));
        }
    }
    needles.sort();
    needles.dedup();

    // The sync log and the stored headers of every webhook.
    let pool = sqlx::SqlitePool::connect(&s.db).await.unwrap();
    let mut rows = Vec::new();
    for row in sqlx::query(
        "SELECT mapping || ' ' || action || ' ' || target || ' ' || COALESCE(customer, '') || ' ' \
         || request || ' ' || COALESCE(error, '') FROM sync_log",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    {
        rows.push(("sync_log", row.get::<String, _>(0)));
    }
    let sync_rows = rows.len();
    for row in sqlx::query("SELECT headers FROM events")
        .fetch_all(&pool)
        .await
        .unwrap()
    {
        rows.push(("events.headers", row.get::<String, _>(0)));
    }
    assert!(
        sync_rows >= 20,
        "only {sync_rows} sync log rows: nothing was delivered?"
    );

    // A canary through the same subscriber at the lowest level: the search
    // must find it (and only it is then set aside), or it finds nothing.
    let canary = format!("canary {} {}", secrets[0], numbers[0]);
    tracing::trace!(target: "mapper::canary", "{canary}");
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let found = |needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
    assert!(found(&canary) == 1 && found(&secrets[0]) >= 1 && found(&numbers[0]) >= 1);
    let logs: String = logs
        .lines()
        .filter(|l| !l.contains("mapper::canary"))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Ok(path) = std::env::var("SECRETS_LOG_TO") {
        // To read what was searched.
        std::fs::write(path, &logs).unwrap();
    }
    let lines = logs.lines().count();
    assert!(lines > 1000, "only {lines} log lines captured at trace");
    let mut leaks = Vec::new();
    for (needle, kind) in &needles {
        for line in logs.lines().filter(|l| l.contains(needle.as_str())) {
            leaks.push(format!("log: {kind} `{needle}` in {}", clip(line)));
        }
        for (table, text) in &rows {
            // The sync log is what mapper sent: phone numbers are the data
            // it syncs (shown by `mapper log`); secrets never belong there.
            if *kind == "phone" && *table == "sync_log" {
                continue;
            }
            if text.contains(needle.as_str()) {
                leaks.push(format!("{table}: {kind} `{needle}` in {}", clip(text)));
            }
        }
    }
    leaks.sort();
    leaks.dedup();
    assert!(
        leaks.is_empty(),
        "{} leaks ({lines} log lines, {} rows searched):\n{}",
        leaks.len(),
        rows.len(),
        leaks.join("\n")
    );
    s.running.shutdown().await;
}

fn clip(text: &str) -> String {
    text.chars().take(400).collect()
}
