//! `mapper` installed as a GHL marketplace app (issue #11), over real HTTP
//! against the GHL simulator's OAuth: the callback creates the connection of
//! the location, deliveries carry its OAuth access token, which is refreshed
//! once for many concurrent deliveries and once after a 401; a refused
//! refresh disables only its connection; GHL's UNINSTALL and INSTALL
//! webhooks disable and enable it; the tokens are not readable in the
//! SQLite file.

mod common;

use common::postgres::FreshPostgres;

use common::GhlSigner;
use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running};
use mapper::config::compile::compile_dir;
use mapper::sandbox::ghl::GhlSandbox;
use mapper::sandbox::{GhlConfig, StickyCardsConfig, StickyCardsSandbox};
use mapper::secrets::SecretKey;
use mapper::store::Store;
use mapper::store::connections::TokenPolicy;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const KEY: &str = "7f3e2a19c0b84d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e";
const REDIRECT: &str = "http://127.0.0.1/oauth/ghl/callback";
/// The location installed through OAuth; its connection takes its name.
const LOCATION: &str = "loc_oauth";

fn customer(id: &str, phone: &str) -> Vec<u8> {
    format!(
        r#"{{"event_type":"CustomerCreatedEvent","timestamp":"2025-03-05T10:00:00Z","customer_id":"{id}","phone_number":"{phone}","email":"{id}@example.com","first_name":"Ada","last_name":"L"}}"#
    )
    .into_bytes()
}

/// A GHL location whose static token (a PIT) no connection of the test
/// has: a call it accepts carried an OAuth access token.
async fn ghl_at(location: &str, token: &str, lifetime: Duration) -> GhlSandbox {
    let mut config = GhlConfig {
        location_id: location.into(),
        token: token.into(),
        ..GhlConfig::default()
    };
    config.oauth.access_token_lifetime = lifetime;
    GhlSandbox::start(config).await.unwrap()
}

struct Fixture {
    /// The OAuth location's GHL (its OAuth server is the process's
    /// `GHL_API_BASE_URL`: the callback exchanges codes there).
    ghl: GhlSandbox,
    sc: StickyCardsSandbox,
    signer: GhlSigner,
    db: String,
    dir: tempfile::TempDir,
    store: Store,
    key: SecretKey,
}

impl Fixture {
    /// On a fresh SQLite file.
    async fn new(lifetime: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
        Fixture::on(lifetime, db, dir).await
    }

    /// On the database `db`.
    async fn on(lifetime: Duration, db: String, dir: tempfile::TempDir) -> Fixture {
        Fixture {
            ghl: ghl_at(LOCATION, "pit-nobody-has", lifetime).await,
            sc: StickyCardsSandbox::start(StickyCardsConfig::default())
                .await
                .unwrap(),
            signer: GhlSigner::new(23),
            store: Store::open(&db).await.unwrap(),
            key: SecretKey::from_env_value(KEY).unwrap(),
            db,
            dir,
        }
    }

    /// The process's environment of `serve`: the app's OAuth client, the
    /// key, the webhook secrets of the `default` connection (whose location
    /// is none of the test's).
    fn env(&self) -> BTreeMap<String, String> {
        let oauth = self.ghl.oauth().config();
        [
            ("STICKYCARDS_WEBHOOK_TOKEN", "sc-token".to_string()),
            ("SIGNALMIND_WEBHOOK_TOKEN", "sm-token".to_string()),
            ("SLICKTEXT_WEBHOOK_SECRET", "st-secret".to_string()),
            ("GHL_WORKFLOW_WEBHOOK_TOKEN", "wf-token".to_string()),
            ("GHL_WEBHOOK_PUBLIC_KEY", self.signer.pem.clone()),
            ("GHL_API_BASE_URL", self.ghl.base_url()),
            ("GHL_API_TOKEN", "pit-default".to_string()),
            ("GHL_LOCATION_ID", "loc_default".to_string()),
            ("STICKYCARDS_API_BASE_URL", self.sc.base_url()),
            ("STICKYCARDS_API_KEY", self.sc.api_key().to_string()),
            ("MAPPER_SECRET_KEY", KEY.to_string()),
            ("GHL_OAUTH_CLIENT_ID", oauth.client_id),
            ("GHL_OAUTH_CLIENT_SECRET", oauth.client_secret),
            ("GHL_OAUTH_REDIRECT_URI", REDIRECT.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    async fn serve(&self, env: BTreeMap<String, String>, policy: TokenPolicy) -> Running {
        let program = compile_dir(Path::new("mappings")).program.unwrap();
        let mut config = AppConfig::serve(
            program,
            self.db.parse::<DatabaseUrl>().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            None,
            Env::from_map(env),
        );
        config.coalesce_window = Some(Duration::ZERO);
        config.token_policy = policy;
        App::start(config).await.unwrap()
    }

    /// Gives the installed connection its Sticky Cards values, as an
    /// operator does after the install (`mapper connection set`), and
    /// waits until serve takes its Sticky Cards webhooks.
    async fn complete(&self, base: &str, name: &str, token: &str) {
        let vars: BTreeMap<String, String> = [
            ("STICKYCARDS_WEBHOOK_TOKEN", token.to_string()),
            ("STICKYCARDS_API_KEY", self.sc.api_key().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        self.store
            .set_connection_vars(name, &vars, Some(&self.key))
            .await
            .unwrap();
        wait_for_route(base, name, token).await;
    }

    /// The connection's tokens, opened.
    async fn tokens(&self, name: &str) -> mapper::store::connections::OAuthTokens {
        self.store
            .connection(name)
            .await
            .unwrap()
            .unwrap()
            .tokens(&self.key)
            .unwrap()
            .expect("the connection has OAuth tokens")
    }
}

/// Refreshes within 3 s of the expiry; waiting replicas look every 20 ms.
fn policy() -> TokenPolicy {
    TokenPolicy {
        refresh_before_ms: 3_000,
        lease_ms: 10_000,
        poll: Duration::from_millis(20),
        wait: Duration::from_secs(15),
    }
}

/// `GET /oauth/ghl/callback?QUERY`: the status and the JSON answer.
async fn callback(base: &str, query: &str) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .get(format!("{base}/oauth/ghl/callback{query}"))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

async fn post_sc(base: &str, name: &str, token: &str, body: &[u8]) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/webhooks/stickycards/{name}?token={token}"))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Waits until serve has picked the connection up (it looks every 5 s):
/// its Sticky Cards route stops answering 404 / 503. The probe is a body
/// without an event type, refused with 400 and never stored.
async fn wait_for_route(base: &str, name: &str, token: &str) {
    for _ in 0..150 {
        let status = post_sc(base, name, token, b"{}").await;
        if status == 400 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("serve did not pick up the connection `{name}` within 15 s");
}

/// (connection, event type, state, last_error) of every stored event, by id.
async fn events(db: &str) -> Vec<(String, String, String, Option<String>)> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db).await.unwrap();
    sqlx::query("SELECT connection, event_type, state, last_error FROM events ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Waits until every event is delivered; panics with them otherwise.
async fn all_delivered(db: &str) {
    let counts = common::settle(db).await;
    assert!(
        counts.iter().all(|c| c.state == "delivered"),
        "{counts:?}\n{:?}",
        events(db).await
    );
}

/// Waits until an undelivered event's `last_error` contains `text`; the event.
async fn waiting_with(db: &str, text: &str) -> (String, String, String, Option<String>) {
    for _ in 0..150 {
        if let Some(e) = events(db)
            .await
            .into_iter()
            .find(|e| e.2 != "delivered" && e.3.as_deref().is_some_and(|m| m.contains(text)))
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no event waits with `{text}`: {:?}", events(db).await);
}

/// A GHL marketplace webhook of `kind` for `location`, signed as GHL signs.
fn lifecycle(kind: &str, location: &str, n: u32) -> Value {
    json!({
        "type": kind,
        "locationId": location,
        "webhookId": format!("wh_{kind}_{location}_{n}"),
        // GHL's signed timestamp must be recent (replay protection).
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

#[tokio::test]
async fn the_callback_installs_the_location_and_deliveries_use_its_token() {
    let f = Fixture::new(Duration::from_secs(86_399)).await;
    let running = f.serve(f.env(), policy()).await;
    let base = running.url().unwrap();

    let code = f.ghl.oauth().issue_location_code(LOCATION);
    let (status, answer) = callback(&base, &format!("?code={code}")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["installed"][0]["connection"], LOCATION, "{answer}");
    assert_eq!(answer["installed"][0]["location_id"], LOCATION);
    assert_eq!(answer["installed"][0]["created"], true);
    assert!(
        answer["message"].as_str().unwrap().contains(LOCATION),
        "{answer}"
    );
    let stored = f.store.connection(LOCATION).await.unwrap().unwrap();
    assert!(stored.enabled);
    assert_eq!(stored.location_id.as_deref(), Some(LOCATION));
    assert!(stored.sealed_tokens.is_some());
    assert!(
        !stored.sealed_vars.contains_key("GHL_API_TOKEN"),
        "no PIT was stored"
    );
    assert_eq!(f.ghl.oauth().grants().authorization_code, 1);

    f.complete(&base, LOCATION, "sc-oauth").await;
    let status = post_sc(
        &base,
        LOCATION,
        "sc-oauth",
        &customer("c_oauth", "+1 415 555 0131"),
    )
    .await;
    assert_eq!(status, 202);
    all_delivered(&f.db).await;
    // The location's static token is nobody's: GHL took the OAuth token.
    assert!(f.ghl.contact_by_email("c_oauth@example.com").is_some());
    let refused: Vec<_> = f
        .ghl
        .request_log()
        .into_iter()
        .filter(|r| r.status == Some(401) || r.status == Some(403))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(f.ghl.oauth().grants().refresh_token, 0, "nothing expired");

    // A second install of the same location updates its connection.
    let code = f.ghl.oauth().issue_location_code(LOCATION);
    let (status, answer) = callback(&base, &format!("?code={code}")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["installed"][0]["connection"], LOCATION);
    assert_eq!(answer["installed"][0]["created"], false);
    assert_eq!(f.store.connections().await.unwrap().len(), 1);
    // A browser gets a page saying which connection was installed.
    let code = f.ghl.oauth().issue_location_code(LOCATION);
    let page = reqwest::Client::new()
        .get(format!("{base}/oauth/ghl/callback?code={code}"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = page.text().await.unwrap();
    assert!(
        page.contains(&format!("connection <code>{LOCATION}</code> updated")),
        "{page}"
    );

    // The tokens are sealed: neither is in any file of the database.
    let tokens = f.tokens(LOCATION).await;
    running.shutdown().await;
    for entry in std::fs::read_dir(f.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        for secret in [&tokens.access_token, &tokens.refresh_token] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a token in clear",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn an_agency_install_gets_a_token_for_each_approved_location() {
    let f = Fixture::new(Duration::from_secs(86_399)).await;
    let running = f.serve(f.env(), policy()).await;
    let base = running.url().unwrap();
    let code = f.ghl.oauth().issue_agency_code(&[LOCATION, "loc_second"]);
    let (status, answer) = callback(&base, &format!("?code={code}")).await;
    assert_eq!(status, 200, "{answer}");
    let names: Vec<&str> = answer["installed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["connection"].as_str())
        .collect();
    assert_eq!(names, vec![LOCATION, "loc_second"], "{answer}");
    assert_eq!(f.ghl.oauth().grants().location_token, 2);
    for name in names {
        let c = f.store.connection(name).await.unwrap().unwrap();
        assert_eq!(c.location_id.as_deref(), Some(name));
        assert!(c.sealed_tokens.is_some());
    }
    // The location tokens work on the API: a delivery with one succeeds.
    f.complete(&base, LOCATION, "sc-agency").await;
    let status = post_sc(
        &base,
        LOCATION,
        "sc-agency",
        &customer("c_agency", "+1 415 555 0141"),
    )
    .await;
    assert_eq!(status, 202);
    all_delivered(&f.db).await;
    assert!(f.ghl.contact_by_email("c_agency@example.com").is_some());
    running.shutdown().await;
}

#[tokio::test]
async fn callback_refusals_say_what_to_fix() {
    let f = Fixture::new(Duration::from_secs(86_399)).await;
    let running = f.serve(f.env(), policy()).await;
    let base = running.url().unwrap();

    let (status, answer) = callback(&base, "").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("missing_code"))
    );
    assert_eq!(answer["field"], "code");

    // A code GHL does not know: its 400 is relayed.
    let (status, answer) = callback(&base, "?code=not-a-code").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "code_refused");
    assert_eq!(answer["ghl"]["error"], "invalid_grant", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("authorization code is invalid"),
        "{answer}"
    );
    // A code is single-use.
    let code = f.ghl.oauth().issue_location_code(LOCATION);
    assert_eq!(callback(&base, &format!("?code={code}")).await.0, 200);
    let (status, answer) = callback(&base, &format!("?code={code}")).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("code_refused"))
    );
    running.shutdown().await;

    // Without the app's secret, or without the key: 503 naming the variable.
    let mut env = f.env();
    env.remove("GHL_OAUTH_CLIENT_SECRET");
    env.remove("GHL_OAUTH_REDIRECT_URI");
    let running = f.serve(env, policy()).await;
    let base = running.url().unwrap();
    let code = f.ghl.oauth().issue_location_code("loc_other");
    let (status, answer) = callback(&base, &format!("?code={code}")).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "oauth_not_configured");
    assert_eq!(answer["variable"], "GHL_OAUTH_CLIENT_SECRET");
    assert_eq!(
        answer["variables"],
        json!(["GHL_OAUTH_CLIENT_SECRET", "GHL_OAUTH_REDIRECT_URI"])
    );
    running.shutdown().await;

    let fresh = Fixture::new(Duration::from_secs(86_399)).await;
    let mut env = fresh.env();
    env.remove("MAPPER_SECRET_KEY");
    let running = fresh.serve(env, policy()).await;
    let base = running.url().unwrap();
    let code = fresh.ghl.oauth().issue_location_code(LOCATION);
    let (status, answer) = callback(&base, &format!("?code={code}")).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "no_secret_key");
    assert_eq!(answer["variable"], "MAPPER_SECRET_KEY");
    assert!(fresh.store.connections().await.unwrap().is_empty());
    // The code was not spent on an install that could not be stored.
    assert_eq!(fresh.ghl.oauth().grants().authorization_code, 0);
    running.shutdown().await;
}

/// GHL's tokens live seconds here: many deliveries find the token about to
/// expire at the same moment, and exactly one of them refreshes it.
#[tokio::test]
async fn concurrent_deliveries_near_expiry_refresh_once() {
    let f = Fixture::new(Duration::from_secs(12)).await;
    let running = f.serve(f.env(), policy()).await;
    let base = running.url().unwrap();
    let code = f.ghl.oauth().issue_location_code(LOCATION);
    assert_eq!(callback(&base, &format!("?code={code}")).await.0, 200);
    f.complete(&base, LOCATION, "sc-burst").await;
    // One delivery first: the custom fields are listed and created once.
    assert_eq!(
        post_sc(
            &base,
            LOCATION,
            "sc-burst",
            &customer("c_first", "+1 415 555 0150")
        )
        .await,
        202
    );
    all_delivered(&f.db).await;

    // Wait until the stored token is within the refresh window (3 s), then
    // send a burst of customers at once.
    loop {
        let left = f.tokens(LOCATION).await.access_expires_at - mapper::store::now_ms();
        if left < 2_800 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = f.ghl.oauth().grants().refresh_token;
    let posts = (0..8).map(|i| {
        let body = customer(&format!("c_burst{i}"), &format!("+1 415 555 016{i}"));
        let base = base.clone();
        async move { post_sc(&base, LOCATION, "sc-burst", &body).await }
    });
    let statuses = futures_join(posts).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    all_delivered(&f.db).await;
    let refreshes = f.ghl.oauth().grants().refresh_token - before;
    assert_eq!(refreshes, 1, "one refresh for the whole burst");
    for i in 0..8 {
        assert!(
            f.ghl
                .contact_by_email(&format!("c_burst{i}@example.com"))
                .is_some()
        );
    }
    assert_eq!(f.ghl.oauth().grants().refused, 0);
    running.shutdown().await;
}

/// Runs the futures at once; their outputs in order.
async fn futures_join<F: std::future::Future<Output = u16> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<u16> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// GHL refuses a token before its stated expiry (revoked, or its clock):
/// the call's 401 refreshes it once, and the call is sent again.
#[tokio::test]
async fn a_401_refreshes_once_and_the_call_succeeds() {
    let f = Fixture::new(Duration::from_secs(86_399)).await;
    let running = f.serve(f.env(), policy()).await;
    let base = running.url().unwrap();
    let code = f.ghl.oauth().issue_location_code(LOCATION);
    assert_eq!(callback(&base, &format!("?code={code}")).await.0, 200);
    f.complete(&base, LOCATION, "sc-401").await;
    assert_eq!(
        post_sc(
            &base,
            LOCATION,
            "sc-401",
            &customer("c_before", "+1 415 555 0170")
        )
        .await,
        202
    );
    all_delivered(&f.db).await;
    let old = f.tokens(LOCATION).await;

    f.ghl.oauth().expire_access_tokens();
    assert_eq!(
        post_sc(
            &base,
            LOCATION,
            "sc-401",
            &customer("c_after", "+1 415 555 0171")
        )
        .await,
        202
    );
    all_delivered(&f.db).await;
    assert!(f.ghl.contact_by_email("c_after@example.com").is_some());
    assert_eq!(f.ghl.oauth().grants().refresh_token, 1);
    let refused: Vec<_> = f
        .ghl
        .request_log()
        .into_iter()
        .filter(|r| r.status == Some(401))
        .collect();
    assert_eq!(refused.len(), 1, "one call met the expired token");
    let new = f.tokens(LOCATION).await;
    assert_ne!(new.access_token, old.access_token);
    assert_ne!(new.refresh_token, old.refresh_token);
    running.shutdown().await;
}

/// A refresh token GHL refuses (`invalid_grant`) disables its connection,
/// with the reason in `mapper status`; its events wait, and another
/// connection keeps delivering.
#[tokio::test]
async fn a_refused_refresh_disables_only_that_connection() {
    let f = Fixture::new(Duration::from_secs(86_399)).await;
    // Another location, with a PIT, on its own GHL.
    let other = ghl_at("loc_pit", "pit-bakery", Duration::from_secs(86_399)).await;
    let vars: BTreeMap<String, String> = [
        ("GHL_API_BASE_URL", other.base_url()),
        ("GHL_API_TOKEN", "pit-bakery".to_string()),
        ("GHL_LOCATION_ID", "loc_pit".to_string()),
        ("STICKYCARDS_WEBHOOK_TOKEN", "sc-bakery".to_string()),
        ("STICKYCARDS_API_KEY", f.sc.api_key().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    f.store
        .add_connection("bakery", &vars, Some(&f.key))
        .await
        .unwrap();
    let running = f.serve(f.env(), policy()).await;
    let base = running.url().unwrap();
    let code = f.ghl.oauth().issue_location_code(LOCATION);
    assert_eq!(callback(&base, &format!("?code={code}")).await.0, 200);
    f.complete(&base, LOCATION, "sc-refused").await;

    // GHL no longer honours the refresh token, and the access token expires.
    let tokens = f.tokens(LOCATION).await;
    assert!(f.ghl.oauth().revoke_refresh_token(&tokens.refresh_token));
    f.ghl.oauth().expire_access_tokens();
    assert_eq!(
        post_sc(
            &base,
            LOCATION,
            "sc-refused",
            &customer("c_refused", "+1 415 555 0180")
        )
        .await,
        202
    );
    let waiting = waiting_with(&f.db, "refused").await;
    assert_eq!(waiting.0, LOCATION);
    assert_eq!(waiting.2, "retrying", "kept, not dead: {waiting:?}");
    let c = f.store.connection(LOCATION).await.unwrap().unwrap();
    assert!(!c.enabled);
    let reason = c.disabled_reason.unwrap_or_default();
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert!(f.ghl.contact_by_email("c_refused@example.com").is_none());
    assert_eq!(f.ghl.oauth().grants().refused, 1);

    // The other connection goes on.
    assert_eq!(
        post_sc(
            &base,
            "bakery",
            "sc-bakery",
            &customer("c_bakery", "+1 415 555 0181")
        )
        .await,
        202
    );
    for _ in 0..150 {
        if other.contact_by_email("c_bakery@example.com").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(other.contact_by_email("c_bakery@example.com").is_some());
    assert!(f.store.connection("bakery").await.unwrap().unwrap().enabled);

    // `mapper status` shows the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(["status", "--database", &f.db, "--format", "json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = status["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == LOCATION)
        .cloned()
        .unwrap();
    assert_eq!(listed["enabled"], false, "{status}");
    assert!(
        listed["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("install the app for this location again"),
        "{listed}"
    );
    running.shutdown().await;
}

/// GHL's UNINSTALL disables the connection of its location (its events are
/// kept, not delivered); INSTALL enables it again.
#[tokio::test]
async fn uninstall_disables_and_install_enables() {
    let f = Fixture::new(Duration::from_secs(86_399)).await;
    let running = f.serve(f.env(), policy()).await;
    let base = running.url().unwrap();
    // An install webhook before the callback: recorded, nothing to enable.
    let (status, answer) = f
        .signer
        .post_answer(&base, &lifecycle("INSTALL", LOCATION, 1))
        .await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("accepted")));
    let code = f.ghl.oauth().issue_location_code(LOCATION);
    assert_eq!(callback(&base, &format!("?code={code}")).await.0, 200);
    f.complete(&base, LOCATION, "sc-life").await;

    let (status, answer) = f
        .signer
        .post_answer(&base, &lifecycle("UNINSTALL", LOCATION, 2))
        .await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("accepted")));
    let c = f.store.connection(LOCATION).await.unwrap().unwrap();
    assert!(!c.enabled);
    assert_eq!(c.disabled_reason.as_deref(), Some("uninstalled from GHL"));
    assert_eq!(
        post_sc(
            &base,
            LOCATION,
            "sc-life",
            &customer("c_kept", "+1 415 555 0190")
        )
        .await,
        202
    );
    let kept = waiting_with(&f.db, "uninstalled from GHL").await;
    assert_eq!(kept.1, "CustomerCreatedEvent");
    assert_eq!(kept.2, "retrying", "{kept:?}");
    assert!(f.ghl.contact_by_email("c_kept@example.com").is_none());

    let (status, _) = f
        .signer
        .post_answer(&base, &lifecycle("INSTALL", LOCATION, 3))
        .await;
    assert_eq!(status, 202);
    let c = f.store.connection(LOCATION).await.unwrap().unwrap();
    assert!(c.enabled);
    assert_eq!(c.disabled_reason, None);

    // The lifecycle webhooks are stored as done, each with what it did.
    let stored = events(&f.db).await;
    let notes: Vec<(String, String)> = stored
        .iter()
        .filter(|e| e.1 == "INSTALL" || e.1 == "UNINSTALL")
        .map(|e| (e.2.clone(), e.3.clone().unwrap_or_default()))
        .collect();
    assert_eq!(notes.len(), 3, "{stored:?}");
    assert!(
        notes.iter().all(|(state, _)| state == "delivered"),
        "{notes:?}"
    );
    assert!(
        notes[0]
            .1
            .contains("no connection has GHL_LOCATION_ID = loc_oauth yet")
    );
    assert!(notes[1].1.contains("disabled: uninstalled from GHL"));
    assert!(notes[2].1.contains("enabled: installed from GHL"));

    // What an operator disabled, an INSTALL leaves disabled.
    f.store
        .disable_connection(LOCATION, "paused by the agency")
        .await
        .unwrap();
    let (status, answer) = f
        .signer
        .post_answer(&base, &lifecycle("INSTALL", LOCATION, 4))
        .await;
    assert_eq!(status, 202, "{answer}");
    let c = f.store.connection(LOCATION).await.unwrap().unwrap();
    assert!(!c.enabled, "an operator's disable outlives an INSTALL");
    assert_eq!(c.disabled_reason.as_deref(), Some("paused by the agency"));
    f.store.enable_connection(LOCATION).await.unwrap();

    // Once serve has seen it enabled (it looks every 5 s), new events are
    // delivered (an event taken while it was disabled waits a minute).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let body = customer("c_back", "+1 415 555 0191");
    assert_eq!(post_sc(&base, LOCATION, "sc-life", &body).await, 202);
    for _ in 0..200 {
        if f.ghl.contact_by_email("c_back@example.com").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(f.ghl.contact_by_email("c_back@example.com").is_some());
    running.shutdown().await;
}

/// The bearer a connection's executor asks at each call, asked by 16 calls
/// at the same moment with the stored token inside the refresh window: one
/// refresh at GHL, and every call gets the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_callers_share_one_refresh() {
    use mapper::targets::oauth::{Bearer, OAuthClient, TokenEndpoint};
    let f = Fixture::new(Duration::from_secs(86_399)).await;
    let endpoint = TokenEndpoint::new(&f.ghl.base_url());
    let config = f.ghl.oauth().config();
    let client = OAuthClient {
        client_id: config.client_id,
        client_secret: config.client_secret,
    };
    let code = f.ghl.oauth().issue_location_code(LOCATION);
    let answer = endpoint
        .exchange_code(&client, &code, REDIRECT)
        .await
        .unwrap();
    let vars = [("GHL_LOCATION_ID".to_string(), LOCATION.to_string())]
        .into_iter()
        .collect();
    let c = f
        .store
        .add_connection("direct", &vars, Some(&f.key))
        .await
        .unwrap();
    // Stored as expiring in one second: inside the 3 s window.
    let mut tokens = answer.tokens(mapper::store::now_ms());
    tokens.access_expires_at = mapper::store::now_ms() + 1_000;
    assert!(
        f.store
            .store_tokens("direct", c.token_version, &tokens, &f.key)
            .await
            .unwrap()
    );
    let bearer = std::sync::Arc::new(Bearer::new(
        "direct",
        f.store.clone(),
        f.key.clone(),
        Ok(client),
        endpoint,
        policy(),
    ));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let bearer = bearer.clone();
            tokio::spawn(async move { bearer.token(None).await })
        })
        .collect();
    let mut got = Vec::new();
    for call in calls {
        got.push(call.await.unwrap().unwrap());
    }
    assert_eq!(f.ghl.oauth().grants().refresh_token, 1);
    let fresh = f.tokens("direct").await;
    assert_ne!(fresh.access_token, tokens.access_token);
    assert!(got.iter().all(|t| *t == fresh.access_token));
}

/// The install, a delivery, a 401's refresh and an UNINSTALL on PostgreSQL.
#[tokio::test]
async fn install_refresh_and_uninstall_on_postgres() {
    let Some(pg) = FreshPostgres::create("oauth_flow").await else {
        return;
    };
    let url = pg.url.clone();
    let f = Fixture::on(
        Duration::from_secs(86_399),
        url,
        tempfile::tempdir().unwrap(),
    )
    .await;
    assert!(f.store.is_postgres());
    let running = f.serve(f.env(), policy()).await;
    let base = running.url().unwrap();
    let code = f.ghl.oauth().issue_location_code(LOCATION);
    assert_eq!(callback(&base, &format!("?code={code}")).await.0, 200);
    f.complete(&base, LOCATION, "sc-pg").await;
    let body = customer("c_pg", "+1 415 555 0200");
    assert_eq!(post_sc(&base, LOCATION, "sc-pg", &body).await, 202);
    all_delivered(&f.db).await;
    f.ghl.oauth().expire_access_tokens();
    let body = customer("c_pg2", "+1 415 555 0201");
    assert_eq!(post_sc(&base, LOCATION, "sc-pg", &body).await, 202);
    all_delivered(&f.db).await;
    assert!(f.ghl.contact_by_email("c_pg2@example.com").is_some());
    assert_eq!(f.ghl.oauth().grants().refresh_token, 1);
    let (status, _) = f
        .signer
        .post_answer(&base, &lifecycle("UNINSTALL", LOCATION, 1))
        .await;
    assert_eq!(status, 202);
    let c = f.store.connection(LOCATION).await.unwrap().unwrap();
    assert_eq!(c.disabled_reason.as_deref(), Some("uninstalled from GHL"));
    running.shutdown().await;
    drop(f);
    pg.drop().await;
}
