//! Helpers shared by the integration tests (each test file uses some of them).
#![allow(dead_code)]

use mapper::sandbox::StickyCardsSandbox;
use mapper::sandbox::ghl::GhlSandbox;
use mapper::store::Store;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A `mapper serve` child process wired to the simulators.
pub struct Serve {
    pub base: String,
    pub db: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mapper serve` on a free port with a fresh SQLite file.
pub fn serve_in(
    ghl: &GhlSandbox,
    sc: &StickyCardsSandbox,
    extra_env: &[(&str, &str)],
    mappings: &str,
) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let mut command = Command::new(env!("CARGO_BIN_EXE_mapper"));
    // Most tests assert each write as it happens: no holding back unless a
    // test asks for a window.
    command.env("MAPPER_COALESCE_WINDOW", "0s");
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let mut child = command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
            "--mappings",
            mappings,
        ])
        .env("STICKYCARDS_WEBHOOK_TOKEN", "sc-token")
        .env("SIGNALMIND_WEBHOOK_TOKEN", "sm-token")
        .env("SLICKTEXT_WEBHOOK_SECRET", "st-secret")
        .env("GHL_WORKFLOW_WEBHOOK_TOKEN", "wf-token")
        .env("GHL_API_BASE_URL", ghl.base_url())
        .env("GHL_API_TOKEN", ghl.token())
        .env("GHL_LOCATION_ID", ghl.location_id())
        .env("STICKYCARDS_API_BASE_URL", sc.base_url())
        .env("STICKYCARDS_API_KEY", sc.api_key())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut base = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        if let Some(at) = line.find("http://") {
            let addr: String = line[at + 7..]
                .chars()
                .take_while(|c| *c != '/' && !c.is_whitespace())
                .collect();
            base = format!("http://{addr}");
            break;
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if std::env::var("SERVE_LOG").is_ok() {
                eprintln!("serve: {l}");
            }
        }
    });
    assert!(base.starts_with("http://"), "serve did not start");
    Serve {
        child,
        base,
        db,
        _dir: dir,
    }
}

/// Posts a JSON body; the status, or 0 when the request failed.
pub async fn post(s: &Serve, source: &str, query: &str, body: &[u8]) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/webhooks/{source}{query}", s.base))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Waits (up to 15 s) until no event is received, retrying or processing.
pub async fn settle(db: &str) -> Vec<mapper::store::Count> {
    settle_within(db, Duration::from_secs(15)).await
}

/// Waits until no event is received, retrying or processing.
pub async fn settle_within(db: &str, limit: Duration) -> Vec<mapper::store::Count> {
    let store = Store::open(db).await.unwrap();
    for _ in 0..(limit.as_millis() / 100) {
        let counts = store.counts().await.unwrap();
        if counts
            .iter()
            .all(|c| ["delivered", "dead", "unmapped", "echo", "stale"].contains(&c.state.as_str()))
        {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.counts().await.unwrap()
}

/// Both simulators with their default (documented) behaviour.
pub async fn simulators() -> (GhlSandbox, StickyCardsSandbox) {
    let ghl = GhlSandbox::start(mapper::sandbox::GhlConfig::default())
        .await
        .unwrap();
    let sc = StickyCardsSandbox::start(mapper::sandbox::StickyCardsConfig::default())
        .await
        .unwrap();
    (ghl, sc)
}

/// Waits until neither simulator has a webhook to send, every stored event
/// is in a final state and the number of events has stopped growing (a
/// loop keeps it growing until `limit`, then this panics). Returns the
/// number of events stored.
pub async fn rest_within(
    store: &Store,
    ghl: &GhlSandbox,
    sc: &StickyCardsSandbox,
    limit: Duration,
) -> i64 {
    let deadline = std::time::Instant::now() + limit;
    let finals = ["delivered", "dead", "unmapped", "echo", "stale"];
    let mut last = -1;
    let mut quiet = 0;
    while std::time::Instant::now() < deadline {
        let counts = store.counts().await.unwrap();
        let total: i64 = counts.iter().map(|c| c.count).sum();
        // Writes held to coalesce are work still to do, and their calls cause webhooks.
        let holding = store
            .pending_writes()
            .await
            .unwrap()
            .iter()
            .any(|w| w.state != "failed");
        let settled = counts.iter().all(|c| finals.contains(&c.state.as_str()))
            && !holding
            && ghl.webhooks_pending() == 0
            && sc.webhooks_pending() == 0;
        if settled && total == last {
            // Twice in a row, 400 ms apart: a webhook that a delivery just
            // caused has had the time to leave (delay and jitter) and be
            // stored.
            quiet += 1;
            if quiet >= 2 {
                return total;
            }
        } else {
            quiet = 0;
        }
        last = total;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let counts = store.counts().await.unwrap();
    // An event whose outcome could not be stored stays `processing` for
    // its whole lease (finding 5 of tests/soak_findings.rs).
    let stuck = counts.iter().any(|c| c.state == "processing");
    panic!(
        "no rest within {limit:?}{}: {counts:?}, {} + {} webhooks pending",
        if stuck {
            " (events left `processing`: see serve's log, SERVE_LOG=1)"
        } else {
            ""
        },
        ghl.webhooks_pending(),
        sc.webhooks_pending()
    );
}

/// Posts a GHL webhook body to serve, signed as GHL signs it (Ed25519 over
/// the exact bytes, in `x-ghl-signature`); the status and the answer.
pub async fn post_ghl(
    s: &Serve,
    key: &ed25519_dalek::SigningKey,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    use base64::Engine as _;
    use ed25519_dalek::Signer as _;
    let bytes = serde_json::to_vec(body).unwrap();
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&bytes).to_bytes());
    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/ghl", s.base))
        .header("content-type", "application/json")
        .header("x-ghl-signature", signature)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// A webhook receiver that keeps what it gets (answering 200), so that a
/// test can hand the webhooks to serve itself, in the order it chooses.
pub struct Held {
    pub url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Held {
    pub async fn start() -> Held {
        use std::sync::{Arc, Mutex};
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&got);
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let keep = Arc::clone(&keep);
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    keep.lock().unwrap().push(v);
                }
                axum::http::StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hold", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Held {
            url,
            got,
            _task: task,
        }
    }

    /// The bodies received so far, oldest first, and forgets them.
    pub fn take(&self) -> Vec<serde_json::Value> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

/// Creates a contact through GHL's API, as a person does in GHL; its id.
pub async fn create_contact(ghl: &GhlSandbox, fields: serde_json::Value) -> String {
    let mut body = fields;
    body["locationId"] = ghl.location_id().into();
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/contacts/", ghl.base_url()))
        .bearer_auth(ghl.token())
        .header("Version", "2021-07-28")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["contact"]["id"].as_str().unwrap().to_string()
}

/// Creates a NUMERICAL contact custom field, as a person does in GHL; its id.
pub async fn create_custom_field(ghl: &GhlSandbox, name: &str, key: &str) -> String {
    reqwest::Client::new()
        .post(format!(
            "{}/locations/{}/customFields",
            ghl.base_url(),
            ghl.location_id()
        ))
        .bearer_auth(ghl.token())
        .header("Version", "2021-07-28")
        .json(&serde_json::json!({"name": name, "dataType": "NUMERICAL", "model": "contact"}))
        .send()
        .await
        .unwrap();
    ghl.custom_fields()
        .into_iter()
        .find(|f| f.field_key == format!("contact.{key}"))
        .unwrap()
        .id
}
