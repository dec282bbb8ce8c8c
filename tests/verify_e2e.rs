//! Webhook verification through `mapper serve` over real HTTP: GHL's legacy RSA
//! `x-wh-signature`, and Standard Webhooks on a fixture source.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running, StartError};
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Duration;

/// The app `mapper serve` runs, in this process.
struct Server {
    base: String,
    _running: Running,
    _dir: tempfile::TempDir,
}

/// What the shipped mappings need to start (as in tests/serve.rs).
const SHIPPED_SECRETS: [(&str, &str); 4] = [
    ("STICKYCARDS_WEBHOOK_TOKEN", "sc-token"),
    ("SIGNALMIND_WEBHOOK_TOKEN", "sm-token"),
    ("SLICKTEXT_WEBHOOK_SECRET", "st-secret"),
    ("GHL_WORKFLOW_WEBHOOK_TOKEN", "wf-token"),
];

/// Starts the app with exactly these variables (nothing from the process's
/// environment); the error when it does not start.
async fn start(mappings: &str, env: &[(&str, &str)]) -> Result<Server, StartError> {
    let dir = tempfile::tempdir().unwrap();
    let program = mapper::config::compile::compile_dir(std::path::Path::new(mappings))
        .program
        .expect("the mappings check clean");
    let config = AppConfig::serve(
        program,
        DatabaseUrl::sqlite(&dir.path().join("x.db")),
        "127.0.0.1:0".parse().unwrap(),
        None,
        env.iter().copied().collect::<Env>(),
    );
    let running = App::start(config).await?;
    Ok(Server {
        base: running.url().unwrap(),
        _running: running,
        _dir: dir,
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Status and body of a POST.
async fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut req = http()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn json_field(text: &str, field: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v[field].as_str().map(str::to_string))
        .unwrap_or_default()
}

// ---- GHL legacy RSA ----

/// SHA-256 in counter mode: enough entropy-shaped bytes for a throwaway test
/// key, and the same key on every run.
struct TestRng(u64);

impl rsa::rand_core::TryRng for TestRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        use sha2::Digest;
        for chunk in dst.chunks_mut(32) {
            self.0 += 1;
            let block = sha2::Sha256::digest(self.0.to_le_bytes());
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

impl rsa::rand_core::TryCryptoRng for TestRng {}

/// Key generation takes seconds in a debug build: once per test binary.
fn rsa_key() -> &'static rsa::PrivateKey {
    static KEY: OnceLock<rsa::PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::PrivateKey::new(&mut TestRng(7), 2048).unwrap())
}

fn rsa_public_pem() -> String {
    use rsa::pkcs8::EncodePublicKey;
    rsa_key()
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
}

fn rsa_sign(body: &[u8]) -> String {
    B64.encode(rsa_key().pkcs1v15_sign::<sha2::Sha256>(body).unwrap())
}

/// The example ContactCreate, stamped now so it is inside the replay window.
fn contact_create() -> Vec<u8> {
    let mut payload: Value =
        serde_json::from_slice(&std::fs::read("examples/payloads/ghl/ContactCreate.json").unwrap())
            .unwrap();
    payload["timestamp"] = serde_json::json!(chrono::Utc::now().to_rfc3339());
    serde_json::to_vec(&payload).unwrap()
}

fn with_rsa_key(pem: &str) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&str, String)> = SHIPPED_SECRETS
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    env.push(("GHL_WEBHOOK_RSA_PUBLIC_KEY", pem.to_string()));
    // The example's location: GHL's webhooks go to the connection of theirs.
    env.push(("GHL_LOCATION_ID", "loc_demo".to_string()));
    env
}

fn as_refs<'a>(env: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ghl_legacy_rsa_signature_end_to_end() {
    let env = with_rsa_key(&rsa_public_pem());
    let server = start("mappings", &as_refs(&env))
        .await
        .expect("server starts");
    let url = format!("{}/webhooks/ghl", server.base);
    let body = contact_create();
    let signature = rsa_sign(&body);

    let (status, text) = post(&url, &[("x-wh-signature", &signature)], &body).await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(json_field(&text, "status"), "accepted", "{text}");

    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'A').unwrap();
    tampered[at] = b'B';
    let (status, text) = post(&url, &[("x-wh-signature", &signature)], &tampered).await;
    assert_eq!(status, 401, "{text}");
    assert!(
        json_field(&text, "message").contains("x-wh-signature does not match the body"),
        "{text}"
    );
    assert_eq!(json_field(&text, "header"), "x-wh-signature", "{text}");

    let (status, text) = post(&url, &[], &body).await;
    assert_eq!(status, 401, "{text}");
    assert!(
        json_field(&text, "message").contains("missing x-ghl-signature"),
        "{text}"
    );

    // GHL's placeholder for the header it did not sign with.
    let (status, text) = post(
        &url,
        &[("x-ghl-signature", "N/A"), ("x-wh-signature", &signature)],
        &body,
    )
    .await;
    assert_eq!(status, 200, "the same webhookId again: {text}");
    assert_eq!(json_field(&text, "status"), "duplicate", "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ghl_rsa_only_request_without_a_configured_key_is_refused_with_guidance() {
    let server = start("mappings", &SHIPPED_SECRETS)
        .await
        .expect("server starts");
    let body = contact_create();
    let (status, text) = post(
        &format!("{}/webhooks/ghl", server.base),
        &[("x-wh-signature", &rsa_sign(&body))],
        &body,
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(json_field(&text, "error"), "signature", "{text}");
    let error = json_field(&text, "message");
    assert!(error.contains("set GHL_WEBHOOK_RSA_PUBLIC_KEY"), "{text}");
    assert!(error.contains("x-ghl-signature"), "{text}");
}

#[tokio::test]
async fn serve_refuses_to_start_with_an_unparsable_rsa_key_and_names_the_variable() {
    let env = with_rsa_key("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n");
    let Err(err) = start("mappings", &as_refs(&env)).await else {
        panic!("must not start");
    };
    assert!(
        err.to_string().contains("GHL_WEBHOOK_RSA_PUBLIC_KEY"),
        "{err}"
    );
}

/// The command line's contract for the same: exit 1, the variable named on stderr.
#[test]
fn the_serve_command_names_an_unparsable_rsa_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mapper"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(format!("sqlite://{}", dir.path().join("x.db").display()))
        .env(
            "GHL_WEBHOOK_RSA_PUBLIC_KEY",
            "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
        );
    for (k, v) in SHIPPED_SECRETS {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GHL_WEBHOOK_RSA_PUBLIC_KEY"), "{err}");
}

// ---- Standard Webhooks ----

const STANDARD: &str = "tests/fixtures/verify-standard";
const STANDARD_KEY: &[u8] = b"verify-e2e standard webhooks key";

fn standard_secret(key: &[u8]) -> String {
    format!("whsec_{}", B64.encode(key))
}

fn standard_sign(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    let signed = [format!("{id}.{ts}.").as_bytes(), body].concat();
    format!(
        "v1,{}",
        B64.encode(mapper::server::verify::hmac_sha256(key, &signed))
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_end_to_end() {
    let secret = standard_secret(STANDARD_KEY);
    let server = start(STANDARD, &[("VERIFY_E2E_HOOKS_SECRET", &secret)])
        .await
        .expect("server starts");
    let url = format!("{}/webhooks/hooks", server.base);
    let send = |id: &'static str, ts: i64, signature: String, body: &'static [u8]| {
        let url = url.clone();
        async move {
            let ts = ts.to_string();
            post(
                &url,
                &[
                    ("webhook-id", id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &signature),
                ],
                body,
            )
            .await
        }
    };

    let body: &[u8] = br#"{"type":"ping","id":"evt_1","data":{"n":1}}"#;
    let t = now();
    let (status, text) = send(
        "msg_1",
        t,
        standard_sign(STANDARD_KEY, "msg_1", t, body),
        body,
    )
    .await;
    assert_eq!(status, 202, "{text}");

    // Key rotation: the old key's signature first, the current one among others.
    let rotated: &[u8] = br#"{"type":"ping","id":"evt_2"}"#;
    let old = standard_sign(b"the previous key, being retired", "msg_2", t, rotated);
    let current = standard_sign(STANDARD_KEY, "msg_2", t, rotated);
    let (status, text) = send("msg_2", t, format!("{old} v1a,ignored {current}"), rotated).await;
    assert_eq!(status, 202, "{text}");

    let fresh: &[u8] = br#"{"type":"ping","id":"evt_3"}"#;
    let stale = t - 600;
    let (status, text) = send(
        "msg_3",
        stale,
        standard_sign(STANDARD_KEY, "msg_3", stale, fresh),
        fresh,
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert!(
        json_field(&text, "message").contains("more than 300"),
        "{text}"
    );

    let (status, text) = send(
        "msg_3",
        t,
        standard_sign(b"some other secret", "msg_3", t, fresh),
        fresh,
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert!(
        json_field(&text, "message").contains("no webhook-signature matches"),
        "{text}"
    );

    let all = [
        ("webhook-id", "msg_3"),
        ("webhook-timestamp", &t.to_string()),
        (
            "webhook-signature",
            &standard_sign(STANDARD_KEY, "msg_3", t, fresh),
        ),
    ]
    .map(|(k, v)| (k, v.to_string()));
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let headers: Vec<(&str, &str)> = all
            .iter()
            .filter(|(k, _)| *k != missing)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let (status, text) = post(&url, &headers, fresh).await;
        assert_eq!(status, 401, "{text}");
        assert!(
            json_field(&text, "message").contains(&format!("missing {missing} header")),
            "{text}"
        );
        assert_eq!(json_field(&text, "error"), "signature", "{text}");
        assert_eq!(
            json_field(&text, "header"),
            missing,
            "names the header: {text}"
        );
    }

    // A redelivery: same webhook-id and body, signed again at a later time. It
    // is recognised by the body's `id` (event.id), not by webhook-id.
    let later = t + 5;
    let (status, text) = send(
        "msg_1",
        later,
        standard_sign(STANDARD_KEY, "msg_1", later, body),
        body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_field(&text, "status"), "duplicate", "{text}");
}
