//! Several connections on one `serve` (issue #11): each stored connection
//! receives on `/webhooks/{source}/{connection}` with its own secrets and
//! delivers to its own GHL location with its own credentials, over real HTTP
//! against one GHL simulator per location.

mod common;

use common::postgres::FreshPostgres;

use common::{serve_env, settle};
use mapper::app::{App, AppConfig, DatabaseUrl, Env, StartError};
use mapper::config::compile::compile_dir;
use mapper::sandbox::ghl::GhlSandbox;
use mapper::sandbox::{GhlConfig, StickyCardsConfig, StickyCardsSandbox};
use mapper::secrets::SecretKey;
use mapper::store::Store;
use std::collections::BTreeMap;
use std::path::Path;

const KEY: &str = "7f3e2a19c0b84d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e";

fn customer(id: &str, phone: &str) -> Vec<u8> {
    format!(
        r#"{{"event_type":"CustomerCreatedEvent","timestamp":"2025-03-05T10:00:00Z","customer_id":"{id}","phone_number":"{phone}","email":"{id}@example.com","first_name":"Ada","last_name":"L"}}"#
    )
    .into_bytes()
}

async fn ghl_for(location: &str, token: &str) -> GhlSandbox {
    GhlSandbox::start(GhlConfig {
        location_id: location.into(),
        token: token.into(),
        ..GhlConfig::default()
    })
    .await
    .unwrap()
}

async fn post(base: &str, path: &str, query: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let answer = reqwest::Client::new()
        .post(format!("{base}{path}{query}"))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

/// Two GHL locations (the environment's `loc_default`, a tenant's
/// `loc_tenant`), Sticky Cards, and a fresh SQLite file.
struct Fixture {
    default_ghl: GhlSandbox,
    tenant_ghl: GhlSandbox,
    sc: StickyCardsSandbox,
    db: String,
    store: Store,
    key: SecretKey,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
        Fixture::on(db, Some(dir)).await
    }

    /// The same on a fresh PostgreSQL database, when `MAPPER_TEST_POSTGRES_URL` is set.
    async fn on_postgres(suffix: &str) -> Option<(Fixture, FreshPostgres)> {
        let pg = FreshPostgres::create(suffix).await?;
        Some((Fixture::on(pg.url.clone(), None).await, pg))
    }

    async fn on(db: String, dir: Option<tempfile::TempDir>) -> Fixture {
        Fixture {
            default_ghl: ghl_for("loc_default", "pit-default").await,
            tenant_ghl: ghl_for("loc_tenant", "pit-tenant").await,
            sc: StickyCardsSandbox::start(StickyCardsConfig::default())
                .await
                .unwrap(),
            store: Store::open(&db).await.unwrap(),
            key: SecretKey::from_env_value(KEY).unwrap(),
            db,
            _dir: dir,
        }
    }

    /// Stores connection `name` at `location` on the tenant's GHL, taking
    /// Sticky Cards webhooks with `token`.
    async fn add(&self, name: &str, location: &str, token: &str) {
        let vars: BTreeMap<String, String> = [
            ("GHL_API_BASE_URL", self.tenant_ghl.base_url()),
            ("GHL_API_TOKEN", "pit-tenant".to_string()),
            ("GHL_LOCATION_ID", location.to_string()),
            ("STICKYCARDS_WEBHOOK_TOKEN", token.to_string()),
            ("STICKYCARDS_API_KEY", self.sc.api_key().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        self.store
            .add_connection(name, &vars, Some(&self.key))
            .await
            .unwrap();
    }

    /// The environment of `serve`: the default connection's, and the key.
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = serve_env(&self.default_ghl, &self.sc);
        env.insert("MAPPER_SECRET_KEY".into(), KEY.into());
        env
    }
}

#[tokio::test]
async fn two_connections_deliver_the_same_phone_to_their_own_locations() {
    two_connections_case(Fixture::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_connections_on_postgres() {
    let Some((f, pg)) = Fixture::on_postgres("tenants_two").await else {
        return;
    };
    two_connections_case(f).await;
    pg.drop().await;
}

async fn two_connections_case(f: Fixture) {
    f.add("bakery", "loc_tenant", "tenant-sc-token").await;
    let program = compile_dir(Path::new("mappings")).program.unwrap();
    let mut config = AppConfig::serve(
        program,
        f.db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        Env::from_map(f.env()),
    );
    config.coalesce_window = Some(std::time::Duration::ZERO);
    let running = App::start(config).await.unwrap();
    let base = running.url().unwrap();

    let phone = "+1 415 555 0101";
    let (status, _) = post(
        &base,
        "/webhooks/stickycards",
        "?token=sc-token",
        &customer("c_default", phone),
    )
    .await;
    assert_eq!(status, 202);
    // The tenant's route takes its own token, not the environment's.
    let (status, answer) = post(
        &base,
        "/webhooks/stickycards/bakery",
        "?token=sc-token",
        &customer("c_tenant", phone),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = post(
        &base,
        "/webhooks/stickycards/bakery",
        "?token=tenant-sc-token",
        &customer("c_tenant", phone),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = post(
        &base,
        "/webhooks/stickycards/nobody",
        "?token=tenant-sc-token",
        &customer("c_nobody", phone),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"], "unknown_connection");
    assert_eq!(answer["field"], "connection");

    let counts = settle(&f.db).await;
    let delivered: i64 = counts
        .iter()
        .filter(|c| c.state == "delivered")
        .map(|c| c.count)
        .sum();
    assert_eq!(delivered, 2, "{counts:?}");
    // One contact per location, each created with its location's token.
    let at_default = f.default_ghl.contacts();
    let at_tenant = f.tenant_ghl.contacts();
    assert_eq!(at_default.len(), 1, "{at_default:?}");
    assert_eq!(at_tenant.len(), 1, "{at_tenant:?}");
    assert!(
        f.default_ghl
            .contact_by_email("c_default@example.com")
            .is_some()
    );
    assert!(
        f.tenant_ghl
            .contact_by_email("c_tenant@example.com")
            .is_some()
    );
    assert_eq!(
        connections_of_events(&f.db).await,
        vec!["bakery".to_string(), "default".to_string()]
    );
    // Every series says whose it is.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "mapper_webhooks_accepted_total{source=\"stickycards\",connection=\"bakery\"} 1",
        "mapper_webhooks_accepted_total{source=\"stickycards\",connection=\"default\"} 1",
        "mapper_webhooks_rejected_total{source=\"stickycards\",reason=\"signature\",connection=\"bakery\"} 1",
        "mapper_deliveries_total{outcome=\"delivered\",connection=\"bakery\"} 1",
        "mapper_delivery_lag_seconds_count{connection=\"bakery\"} 1",
        "mapper_events{source=\"stickycards\",event=\"CustomerCreatedEvent\",state=\"delivered\",connection=\"bakery\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "mapper_target_requests_total{target=\"ghl\",status=\"2xx\",connection=\"bakery\"}"
        )),
        "{metrics}"
    );
    running.shutdown().await;
}

/// The connections the stored events belong to, sorted.
async fn connections_of_events(db: &str) -> Vec<String> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db).await.unwrap();
    sqlx::query("SELECT DISTINCT connection FROM events ORDER BY connection")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect()
}

#[tokio::test]
async fn a_disabled_connection_keeps_its_events_without_delivering_them() {
    let f = Fixture::new().await;
    f.add("bakery", "loc_tenant", "tenant-sc-token").await;
    f.store
        .disable_connection("bakery", "paused by the agency")
        .await
        .unwrap();
    let running = serve_on(&f.db, f.env()).await;
    let base = running.url().unwrap();
    let (status, answer) = post(
        &base,
        "/webhooks/stickycards/bakery",
        "?token=tenant-sc-token",
        &customer("c_tenant", "+1 415 555 0102"),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    // Taken, found disabled, and put back to wait: never sent.
    let mut waited = None;
    for _ in 0..100 {
        let row = f
            .store
            .last_errors(10)
            .await
            .unwrap()
            .into_iter()
            .find(|(_, _, _, _, error)| error.contains("disabled"));
        if row.is_some() {
            waited = row;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let waited = waited.expect("the event records why it waits");
    assert!(waited.4.contains("paused by the agency"), "{waited:?}");
    assert_eq!(waited.3, "retrying", "{waited:?}");
    assert!(f.tenant_ghl.contacts().is_empty());
    assert!(f.default_ghl.contacts().is_empty());
    running.shutdown().await;
}

#[tokio::test]
async fn serve_refuses_to_start_with_sealed_values_and_no_key() {
    let (ghl, sc) = common::simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let store = Store::open(&db).await.unwrap();
    let key = SecretKey::from_env_value(KEY).unwrap();
    let vars: BTreeMap<String, String> = [("GHL_API_TOKEN", "pit-tenant")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    store
        .add_connection("bakery", &vars, Some(&key))
        .await
        .unwrap();
    let program = compile_dir(Path::new("mappings")).program.unwrap();
    let refused = App::start(AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        Env::from_map(serve_env(&ghl, &sc)),
    ))
    .await;
    match refused {
        Err(StartError::SecretKey(message)) => {
            assert!(message.contains("MAPPER_SECRET_KEY"), "{message}");
            assert!(message.contains("bakery"), "{message}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("started without the key"),
    }
}

/// (connection, state, last_error) of every stored GHL event, by id.
async fn ghl_events(db: &str) -> Vec<(String, String, Option<String>)> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db).await.unwrap();
    sqlx::query("SELECT connection, state, last_error FROM events WHERE source = 'ghl' ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn serve_on(db: &str, env: BTreeMap<String, String>) -> mapper::app::Running {
    let program = compile_dir(Path::new("mappings")).program.unwrap();
    App::start(AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        Env::from_map(env),
    ))
    .await
    .unwrap()
}

/// GHL signs every location's webhooks with one key: `route:` sends each to
/// the connection of its `locationId`, and keeps one no connection has as
/// `unmapped` with the reason until a connection for it exists.
#[tokio::test]
async fn ghl_webhooks_go_to_the_connection_of_their_location() {
    ghl_routing_case(Fixture::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ghl_routing_on_postgres() {
    let Some((f, pg)) = Fixture::on_postgres("tenants_route").await else {
        return;
    };
    ghl_routing_case(f).await;
    pg.drop().await;
}

async fn ghl_routing_case(f: Fixture) {
    let signer = common::GhlSigner::new(11);
    f.add("bakery", "loc_tenant", "tenant-sc-token").await;
    let mut env = f.env();
    env.insert("GHL_WEBHOOK_PUBLIC_KEY".into(), signer.pem.clone());
    let running = serve_on(&f.db, env.clone()).await;
    let base = running.url().unwrap();

    let example: serde_json::Value =
        serde_json::from_slice(&std::fs::read("examples/payloads/ghl/ContactUpdate.json").unwrap())
            .unwrap();
    let at = |location: &str, n: u32| {
        let mut v = example.clone();
        v["locationId"] = location.into();
        v["id"] = format!("ghl_{location}").into();
        v["webhookId"] = format!("wh_{location}_{n}").into();
        // GHL's signed timestamp must be recent (replay protection).
        v["timestamp"] = chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .into();
        v
    };
    let (status, answer) = signer.post_answer(&base, &at("loc_default", 1)).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("accepted")),
        "{answer}"
    );
    let (status, answer) = signer.post_answer(&base, &at("loc_tenant", 2)).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("accepted")),
        "{answer}"
    );
    let (status, answer) = signer.post_answer(&base, &at("loc_nobody", 3)).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("unmapped")),
        "{answer}"
    );
    settle(&f.db).await;
    running.shutdown().await;
    let events = ghl_events(&f.db).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].0, "default");
    assert_eq!(events[1].0, "bakery");
    assert_eq!(events[2].0, "GHL_LOCATION_ID=loc_nobody");
    assert_eq!(events[2].1, "unmapped");
    let reason = events[2].2.clone().unwrap_or_default();
    assert!(
        reason.contains("no connection has GHL_LOCATION_ID = loc_nobody"),
        "{reason}"
    );

    // The location's connection is added, serve restarts, the operator replays.
    f.add("late", "loc_nobody", "late-sc-token").await;
    let running = serve_on(&f.db, env).await;
    let replayed = f
        .store
        .replay(&mapper::store::ReplayFilter {
            states: vec![mapper::store::EventState::Unmapped],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    settle(&f.db).await;
    running.shutdown().await;
    let events = ghl_events(&f.db).await;
    assert_ne!(events[2].1, "unmapped", "{events:?}");
    assert!(
        !events[2]
            .2
            .as_deref()
            .unwrap_or("")
            .contains("no connection has"),
        "{events:?}"
    );
}

/// `mapper connection add` while `serve` runs: within a few seconds its
/// route answers and its events are delivered, with no restart.
#[tokio::test]
async fn a_connection_added_while_serving_is_served_without_a_restart() {
    let f = Fixture::new().await;
    let running = serve_on(&f.db, f.env()).await;
    let base = running.url().unwrap();
    let body = customer("c_late", "+1 415 555 0109");
    let (status, _) = post(
        &base,
        "/webhooks/stickycards/late",
        "?token=late-token",
        &body,
    )
    .await;
    assert_eq!(status, 404);

    f.add("late", "loc_tenant", "late-token").await;
    let mut status = 0;
    for _ in 0..150 {
        (status, _) = post(
            &base,
            "/webhooks/stickycards/late",
            "?token=late-token",
            &body,
        )
        .await;
        if status == 202 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 202, "the new connection was not served within 15 s");
    settle(&f.db).await;
    assert!(
        f.tenant_ghl
            .contact_by_email("c_late@example.com")
            .is_some()
    );
    assert!(f.default_ghl.contacts().is_empty());
    running.shutdown().await;
}
