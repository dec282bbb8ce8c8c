//! Helpers shared by the integration tests (each test file uses some of them).
#![allow(dead_code)]

pub mod postgres;

use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running};
use mapper::config::compile::compile_dir;
use mapper::sandbox::StickyCardsSandbox;
use mapper::sandbox::ghl::GhlSandbox;
use mapper::store::Store;
use std::collections::BTreeMap;
use std::path::Path;
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

/// The app `mapper serve` runs, started in this process and wired to the simulators.
pub struct Serve {
    pub base: String,
    pub db: String,
    pub running: Running,
    _dir: tempfile::TempDir,
}

/// The webhook secrets the tests post with, and the simulators' API.
pub fn serve_env(ghl: &GhlSandbox, sc: &StickyCardsSandbox) -> BTreeMap<String, String> {
    [
        ("STICKYCARDS_WEBHOOK_TOKEN", "sc-token".to_string()),
        ("SIGNALMIND_WEBHOOK_TOKEN", "sm-token".to_string()),
        ("SLICKTEXT_WEBHOOK_SECRET", "st-secret".to_string()),
        ("GHL_WORKFLOW_WEBHOOK_TOKEN", "wf-token".to_string()),
        ("GHL_API_BASE_URL", ghl.base_url()),
        ("GHL_API_TOKEN", ghl.token().to_string()),
        ("GHL_LOCATION_ID", ghl.location_id().to_string()),
        ("STICKYCARDS_API_BASE_URL", sc.base_url()),
        ("STICKYCARDS_API_KEY", sc.api_key().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Starts what `mapper serve` runs, on a free port with a fresh SQLite
/// file, watching `mappings`; `extra_env` adds to (or replaces) the
/// variables of [`serve_env`]. Every write goes out at once: most tests
/// assert each write as it happens.
pub async fn serve_in(
    ghl: &GhlSandbox,
    sc: &StickyCardsSandbox,
    extra_env: &[(&str, &str)],
    mappings: &str,
) -> Serve {
    serve_holding(ghl, sc, extra_env, mappings, Duration::ZERO).await
}

/// As [`serve_in`], holding writes to coalescing targets for `window`.
pub async fn serve_holding(
    ghl: &GhlSandbox,
    sc: &StickyCardsSandbox,
    extra_env: &[(&str, &str)],
    mappings: &str,
    window: Duration,
) -> Serve {
    if std::env::var("SERVE_LOG").is_ok() {
        // The app logs through `tracing`, here as `mapper serve` logs to stderr.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let mut env = serve_env(ghl, sc);
    for (k, v) in extra_env {
        env.insert(k.to_string(), v.to_string());
    }
    let program = compile_dir(Path::new(mappings))
        .program
        .expect("the mapping folder checks clean");
    let mut config = AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        Some(mappings.into()),
        Env::from_map(env),
    );
    config.coalesce_window = Some(window);
    let running = App::start(config).await.expect("the app starts");
    Serve {
        base: running.url().unwrap(),
        db,
        running,
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

/// Signs GHL webhooks with a test key that `serve` is told to trust.
pub struct GhlSigner {
    pub key: ed25519_dalek::SigningKey,
    pub pem: String,
}

impl GhlSigner {
    pub fn new(seed: u8) -> GhlSigner {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let pem = key
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        GhlSigner { key, pem }
    }

    /// Posts `payload` to `/webhooks/ghl`, signed; the status (0: no answer).
    pub async fn post(&self, base: &str, payload: &serde_json::Value) -> u16 {
        use base64::Engine;
        use ed25519_dalek::Signer;
        let body = serde_json::to_vec(payload).unwrap();
        let signature =
            base64::engine::general_purpose::STANDARD.encode(self.key.sign(&body).to_bytes());
        reqwest::Client::new()
            .post(format!("{base}/webhooks/ghl"))
            .header("content-type", "application/json")
            .header("x-ghl-signature", signature)
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// As [`GhlSigner::post`], with the answer's JSON.
    pub async fn post_answer(
        &self,
        base: &str,
        payload: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        use base64::Engine;
        use ed25519_dalek::Signer;
        let body = serde_json::to_vec(payload).unwrap();
        let signature =
            base64::engine::general_purpose::STANDARD.encode(self.key.sign(&body).to_bytes());
        let answer = reqwest::Client::new()
            .post(format!("{base}/webhooks/ghl"))
            .header("content-type", "application/json")
            .header("x-ghl-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or_default())
    }
}
