//! Connections: `mapper connection …` run as the real binary on a temporary
//! SQLite file, and the store API (`mapper::store::connections`) on SQLite
//! and, when `MAPPER_TEST_POSTGRES_URL` is set, on PostgreSQL.

mod common;

use common::postgres::FreshPostgres;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mapper::sandbox::{GhlConfig, GhlSandbox};
use mapper::secrets::SecretKey;
use mapper::store::Store;
use mapper::store::connections::{
    ConnectionError, OAuthTokens, RefreshOutcome, TokenError, TokenPolicy,
};
use serde_json::Value;

const KEY_HEX: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
/// A value that must never be found in clear in the database.
const PIT: &str = "pit-7d3f9a-SECRET-never-in-the-file";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `mapper connection ARGS…` with the shipped mappings, the key when
/// `key`, and no ambient MAPPER_* variables.
fn mapper(db: &str, key: Option<&str>, args: &[&str]) -> Out {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut command = Command::new(env!("CARGO_BIN_EXE_mapper"));
    command
        .current_dir(root)
        .arg("connection")
        .args(args)
        .env_remove("MAPPER_SECRET_KEY")
        .env_remove("MAPPER_MAPPINGS")
        .env("MAPPER_DATABASE_URL", db);
    if let Some(key) = key {
        command.env("MAPPER_SECRET_KEY", key);
    }
    let out = command.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every byte of the SQLite database and its log.
fn db_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("m.db"))
        {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn the_connection_commands_on_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/m.db", dir.path().display());
    let key = Some(KEY_HEX);

    let out = mapper(&db, key, &["list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("no connections"), "{}", out.stdout);

    let token = format!("GHL_API_TOKEN={PIT}");
    let out = mapper(
        &db,
        key,
        &[
            "add",
            "acme",
            "--set",
            "GHL_LOCATION_ID=loc_acme",
            &token,
            "GHL_API_BASE_URL=http://127.0.0.1:9",
            "--set",
            "STICKYCARDS_WEBHOOK_TOKEN=sc-hook-secret",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("added connection acme"),
        "{}",
        out.stdout
    );

    // Secrets as ***; the location and a URL in clear.
    let out = mapper(&db, key, &["list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("acme (enabled)"), "{}", out.stdout);
    assert!(out.stdout.contains("GHL_API_TOKEN=***"), "{}", out.stdout);
    assert!(
        out.stdout.contains("STICKYCARDS_WEBHOOK_TOKEN=***"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("GHL_LOCATION_ID=loc_acme"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("GHL_API_BASE_URL=http://127.0.0.1:9"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(PIT));

    let out = mapper(&db, key, &["list", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "acme");
    assert_eq!(list[0]["enabled"], true);
    assert_eq!(list[0]["location_id"], "loc_acme");
    assert_eq!(list[0]["vars"]["GHL_API_TOKEN"], "***");
    assert_eq!(list[0]["vars"]["GHL_LOCATION_ID"], "loc_acme");

    // Without the key the list still runs: names and the location, values as ***.
    let out = mapper(&db, None, &["list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("GHL_API_BASE_URL=***"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("GHL_LOCATION_ID=loc_acme"),
        "{}",
        out.stdout
    );

    // The database holds no secret in clear (the location id is, which
    // shows the scan reads what is stored).
    let bytes = db_bytes(dir.path());
    assert!(contains(&bytes, "loc_acme"));
    assert!(
        !contains(&bytes, PIT),
        "the token is readable in the database file"
    );
    assert!(!contains(&bytes, "sc-hook-secret"));

    // A variable no profile declares: exit 2, named.
    let out = mapper(&db, key, &["add", "other", "--set", "GHL_API_TOKN=x"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("GHL_API_TOKN"), "{}", out.stderr);
    assert!(
        out.stderr.contains("GHL_API_TOKEN"),
        "a close name is suggested: {}",
        out.stderr
    );

    // A location another connection has: exit 2, naming both.
    let out = mapper(
        &db,
        key,
        &["add", "other", "--set", "GHL_LOCATION_ID=loc_acme"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("loc_acme") && out.stderr.contains("acme"),
        "{}",
        out.stderr
    );

    // No key: any variable is refused, naming the key variable.
    let out = mapper(
        &db,
        None,
        &["add", "other", "--set", "GHL_LOCATION_ID=loc_other"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("MAPPER_SECRET_KEY"), "{}", out.stderr);
    assert!(out.stderr.contains("GHL_LOCATION_ID"), "{}", out.stderr);
    // A key that is not one.
    let out = mapper(
        &db,
        Some("not-a-key"),
        &["add", "other", "--set", "GHL_LOCATION_ID=loc_other"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("MAPPER_SECRET_KEY"), "{}", out.stderr);
    // Usage: a malformed pair, a bad name, the same name twice.
    assert_eq!(
        mapper(&db, key, &["add", "other", "--set", "GHL_LOCATION_ID"]).code,
        2
    );
    assert_eq!(
        mapper(&db, key, &["add", "a/b", "--set", "GHL_LOCATION_ID=l"]).code,
        2
    );
    let out = mapper(
        &db,
        key,
        &["add", "acme", "--set", "GHL_LOCATION_ID=loc_new"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("exists already"), "{}", out.stderr);

    // A second connection, with its own location.
    let out = mapper(
        &db,
        key,
        &["add", "dental", "--set", "GHL_LOCATION_ID=loc_dental"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);

    // set: replaces one value, keeps the others; the same location rule.
    let out = mapper(&db, key, &["set", "acme", "GHL_API_TOKEN=pit-rotated"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = mapper(&db, key, &["set", "acme", "GHL_LOCATION_ID=loc_dental"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("dental"), "{}", out.stderr);
    assert_eq!(
        mapper(&db, key, &["set", "nobody", "GHL_API_TOKEN=x"]).code,
        2
    );
    assert_eq!(mapper(&db, key, &["set", "acme", "NOT_DECLARED=x"]).code, 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let vars = rt.block_on(async {
        let store = Store::open(&db).await.unwrap();
        let key = SecretKey::from_env_value(KEY_HEX).unwrap();
        store
            .connection("acme")
            .await
            .unwrap()
            .unwrap()
            .vars(&key)
            .unwrap()
    });
    assert_eq!(vars["GHL_API_TOKEN"], "pit-rotated");
    assert_eq!(vars["GHL_LOCATION_ID"], "loc_acme");
    assert_eq!(vars["GHL_API_BASE_URL"], "http://127.0.0.1:9");

    // disable, with the reason shown; enable.
    let out = mapper(&db, key, &["disable", "acme", "--reason", "rotating keys"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = mapper(&db, key, &["list"]);
    assert!(
        out.stdout.contains("acme (disabled: rotating keys)"),
        "{}",
        out.stdout
    );
    let list: Value =
        serde_json::from_str(&mapper(&db, key, &["list", "--format", "json"]).stdout).unwrap();
    assert_eq!(list[0]["enabled"], false);
    assert_eq!(list[0]["disabled_reason"], "rotating keys");
    assert_eq!(mapper(&db, key, &["enable", "acme"]).code, 0);
    assert!(
        mapper(&db, key, &["list"])
            .stdout
            .contains("acme (enabled)")
    );
    assert_eq!(mapper(&db, key, &["disable", "nobody"]).code, 2);
    assert_eq!(mapper(&db, key, &["enable", "nobody"]).code, 2);

    // remove; its location is free again.
    assert_eq!(mapper(&db, key, &["remove", "acme"]).code, 0);
    let out = mapper(&db, key, &["remove", "acme"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no connection is named `acme`"),
        "{}",
        out.stderr
    );
    assert!(!mapper(&db, key, &["list"]).stdout.contains("acme"));
    let out = mapper(
        &db,
        key,
        &["add", "acme2", "--set", "GHL_LOCATION_ID=loc_acme"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);

    // A database that cannot be opened is a runtime failure: exit 1.
    let out = mapper("sqlite:///nonexistent-dir/x/m.db", key, &["list"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tokens(n: u32) -> OAuthTokens {
    OAuthTokens {
        access_token: format!("access-{n}"),
        access_expires_at: 1_000 * i64::from(n),
        refresh_token: format!("refresh-{n}"),
    }
}

/// The store API, the same on both databases.
async fn exercise(store: Store) {
    let key = SecretKey::from_env_value(KEY_HEX).unwrap();
    assert!(!store.has_sealed_secrets().await.unwrap());
    // A connection with no variables needs no key.
    store
        .add_connection("bare", &BTreeMap::new(), None)
        .await
        .unwrap();
    assert!(!store.has_sealed_secrets().await.unwrap());
    match store
        .add_connection("nokey", &vars(&[("GHL_API_TOKEN", "x")]), None)
        .await
    {
        Err(ConnectionError::NoKey { variable }) => assert_eq!(variable, "GHL_API_TOKEN"),
        other => panic!("{other:?}"),
    }

    let a = store
        .add_connection(
            "a",
            &vars(&[("GHL_LOCATION_ID", "loc_a"), ("GHL_API_TOKEN", PIT)]),
            Some(&key),
        )
        .await
        .unwrap();
    assert!(a.enabled);
    assert_eq!(a.location_id.as_deref(), Some("loc_a"));
    assert!(!a.sealed_vars["GHL_API_TOKEN"].contains(PIT));
    assert_eq!(a.vars(&key).unwrap()["GHL_API_TOKEN"], PIT);
    assert!(store.has_sealed_secrets().await.unwrap());

    // Another key does not open it.
    let other = SecretKey::from_bytes(&[3; 32]).unwrap();
    assert!(a.vars(&other).is_err());

    assert!(matches!(
        store
            .add_connection("a", &BTreeMap::new(), Some(&key))
            .await,
        Err(ConnectionError::Exists(_))
    ));
    match store
        .add_connection("b", &vars(&[("GHL_LOCATION_ID", "loc_a")]), Some(&key))
        .await
    {
        Err(ConnectionError::DuplicateLocation { location, other }) => {
            assert_eq!((location.as_str(), other.as_str()), ("loc_a", "a"));
        }
        other => panic!("{other:?}"),
    }
    store
        .add_connection("b", &vars(&[("GHL_LOCATION_ID", "loc_b")]), Some(&key))
        .await
        .unwrap();
    assert!(matches!(
        store
            .add_connection("bad name", &BTreeMap::new(), None)
            .await,
        Err(ConnectionError::BadName(_))
    ));

    assert_eq!(
        store
            .connection_for_location("loc_b")
            .await
            .unwrap()
            .map(|c| c.name),
        Some("b".to_string())
    );
    assert!(
        store
            .connection_for_location("loc_x")
            .await
            .unwrap()
            .is_none()
    );

    // set merges; moving to a taken location is refused, to a free one works.
    let b = store
        .set_connection_vars("b", &vars(&[("GHL_API_TOKEN", "pit-b")]), Some(&key))
        .await
        .unwrap();
    assert_eq!(b.vars(&key).unwrap().len(), 2);
    assert!(matches!(
        store
            .set_connection_vars("b", &vars(&[("GHL_LOCATION_ID", "loc_a")]), Some(&key))
            .await,
        Err(ConnectionError::DuplicateLocation { .. })
    ));
    store
        .set_connection_vars("b", &vars(&[("GHL_LOCATION_ID", "loc_b2")]), Some(&key))
        .await
        .unwrap();
    assert!(
        store
            .connection_for_location("loc_b")
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store
            .set_connection_vars("zz", &BTreeMap::new(), Some(&key))
            .await,
        Err(ConnectionError::NotFound(_))
    ));

    assert!(
        store
            .disable_connection("a", "invalid_grant")
            .await
            .unwrap()
    );
    let a = store.connection("a").await.unwrap().unwrap();
    assert!(!a.enabled);
    assert_eq!(a.disabled_reason.as_deref(), Some("invalid_grant"));
    assert!(store.enable_connection("a").await.unwrap());
    let a = store.connection("a").await.unwrap().unwrap();
    assert!(a.enabled && a.disabled_reason.is_none());
    assert!(!store.enable_connection("zz").await.unwrap());

    // Token rotation: compare-and-set on the version.
    assert_eq!(a.token_version, 0);
    assert!(a.tokens(&key).unwrap().is_none());
    assert!(store.store_tokens("a", 0, &tokens(1), &key).await.unwrap());
    assert!(!store.store_tokens("a", 0, &tokens(2), &key).await.unwrap());
    let a = store.connection("a").await.unwrap().unwrap();
    assert_eq!(a.token_version, 1);
    assert_eq!(a.tokens(&key).unwrap(), Some(tokens(1)));
    let sealed = a.sealed_tokens.clone().unwrap();
    assert!(!sealed.refresh_token.contains("refresh-1"));
    assert_eq!(sealed.access_expires_at, 1_000);

    // One refresher at a time; the lease ends with the stored rotation.
    assert!(store.claim_token_refresh("a", 1, 30_000).await.unwrap());
    assert!(!store.claim_token_refresh("a", 1, 30_000).await.unwrap());
    assert!(store.store_tokens("a", 1, &tokens(2), &key).await.unwrap());
    assert!(
        !store.claim_token_refresh("a", 1, 30_000).await.unwrap(),
        "stale version"
    );
    let a = store.connection("a").await.unwrap().unwrap();
    assert_eq!(a.refresh_lease_until, None);
    assert!(store.claim_token_refresh("a", 2, 0).await.unwrap());
    // A lease that ran out can be taken over.
    assert!(store.claim_token_refresh("a", 2, 30_000).await.unwrap());

    // Concurrent rotations from the same version: exactly one wins.
    let (t3, t4) = (tokens(3), tokens(4));
    let (x, y) = tokio::join!(
        store.store_tokens("a", 2, &t3, &key),
        store.store_tokens("a", 2, &t4, &key)
    );
    assert!(x.unwrap() ^ y.unwrap());
    assert_eq!(
        store.connection("a").await.unwrap().unwrap().token_version,
        3
    );

    let names: Vec<String> = store
        .connections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["a", "b", "bare"]);
    assert!(store.remove_connection("a").await.unwrap());
    assert!(!store.remove_connection("a").await.unwrap());
    assert!(store.connection("a").await.unwrap().is_none());
    // Its location is free again.
    store
        .add_connection("a2", &vars(&[("GHL_LOCATION_ID", "loc_a")]), Some(&key))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_store_api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/m.db", dir.path().display()))
        .await
        .unwrap();
    exercise(store).await;
    let bytes = db_bytes(dir.path());
    assert!(!contains(&bytes, PIT));
    assert!(!contains(&bytes, "refresh-4") && !contains(&bytes, "refresh-3"));
}

#[tokio::test]
async fn the_store_api_on_postgres() {
    let Some(pg) = FreshPostgres::create("conn_api").await else {
        return;
    };
    let store = Store::open(&pg.url).await.unwrap();
    assert!(store.is_postgres());
    exercise(store.clone()).await;
    drop(store);
    pg.drop().await;
}

/// What the delivery side will do: one call to GHL's token endpoint with a
/// refresh token, read as a [`RefreshOutcome`]. Counts its calls.
fn ghl_refresh(
    ghl: &GhlSandbox,
    calls: Arc<AtomicUsize>,
) -> impl FnOnce(String) -> std::pin::Pin<Box<dyn Future<Output = RefreshOutcome> + Send>> + Send + use<>
{
    let url = format!("{}/oauth/token", ghl.base_url());
    let config = ghl.oauth().config();
    move |refresh_token: String| {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let body = [
                ("client_id", config.client_id.as_str()),
                ("client_secret", config.client_secret.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.as_str()),
                ("user_type", "Location"),
            ]
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencoding::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
            let answer = reqwest::Client::new()
                .post(url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await;
            let response = match answer {
                Ok(r) => r,
                Err(e) => return RefreshOutcome::Failed(e.to_string()),
            };
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            match status {
                200 => RefreshOutcome::Refreshed(OAuthTokens {
                    access_token: body["access_token"].as_str().unwrap_or_default().into(),
                    access_expires_at: mapper::store::now_ms()
                        + 1000 * body["expires_in"].as_i64().unwrap_or(0),
                    refresh_token: body["refresh_token"].as_str().unwrap_or_default().into(),
                }),
                400 if body["error"] == "invalid_grant" => {
                    RefreshOutcome::Refused(format!("invalid_grant: {}", body["message"]))
                }
                _ => RefreshOutcome::Failed(format!("{status} {body}")),
            }
        })
    }
}

/// Two replicas (two store handles on one database) asking for the token
/// of a connection whose access token has expired, eight at a time: GHL
/// sees one refresh, everyone gets the new token, and it works. A refresh
/// token GHL refuses disables that connection only.
async fn refresh_once(replicas: [Store; 2]) {
    let ghl = GhlSandbox::start(GhlConfig::default()).await.unwrap();
    let key = SecretKey::from_env_value(KEY_HEX).unwrap();
    let store = &replicas[0];
    let location = ghl.location_id().to_string();
    store
        .add_connection(
            "oauth",
            &vars(&[("GHL_LOCATION_ID", &location)]),
            Some(&key),
        )
        .await
        .unwrap();
    store
        .add_connection(
            "other",
            &vars(&[("GHL_LOCATION_ID", "loc_other")]),
            Some(&key),
        )
        .await
        .unwrap();
    // The install: a code exchanged for the first pair, stored as expired.
    let code = ghl.oauth().issue_location_code(&location);
    let config = ghl.oauth().config();
    let body = format!(
        "client_id={}&client_secret={}&grant_type=authorization_code&code={code}",
        config.client_id, config.client_secret
    );
    let first: Value = reqwest::Client::new()
        .post(format!("{}/oauth/token", ghl.base_url()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let installed = OAuthTokens {
        access_token: first["access_token"].as_str().unwrap().into(),
        access_expires_at: mapper::store::now_ms() - 1,
        refresh_token: first["refresh_token"].as_str().unwrap().into(),
    };
    assert!(
        store
            .store_tokens("oauth", 0, &installed, &key)
            .await
            .unwrap()
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let policy = TokenPolicy {
        poll: std::time::Duration::from_millis(20),
        ..TokenPolicy::default()
    };
    let mut asks = Vec::new();
    for i in 0..8 {
        let replica = replicas[i % 2].clone();
        let key = key.clone();
        let refresh = ghl_refresh(&ghl, Arc::clone(&calls));
        asks.push(tokio::spawn(async move {
            replica
                .access_token("oauth", &key, policy, None, refresh)
                .await
        }));
    }
    let mut got = Vec::new();
    for ask in asks {
        got.push(ask.await.unwrap().unwrap());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one refresh across replicas"
    );
    assert!(got.iter().all(|t| t == &got[0]), "{got:?}");
    assert_ne!(got[0], installed.access_token);
    let stored = store.connection("oauth").await.unwrap().unwrap();
    assert_eq!(stored.token_version, 2);
    assert_eq!(stored.refresh_lease_until, None);
    let pipelines = reqwest::Client::new()
        .get(format!(
            "{}/opportunities/pipelines?locationId={location}",
            ghl.base_url()
        ))
        .header("Authorization", format!("Bearer {}", got[0]))
        .header("Version", "2021-07-28")
        .send()
        .await
        .unwrap();
    assert_eq!(pipelines.status().as_u16(), 200);

    // Fresh now: no refresh.
    let again = store
        .access_token(
            "oauth",
            &key,
            policy,
            None,
            ghl_refresh(&ghl, Arc::clone(&calls)),
        )
        .await
        .unwrap();
    assert_eq!(again, got[0]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A 401 with the current token forces one refresh.
    let after_401 = store
        .access_token(
            "oauth",
            &key,
            policy,
            Some(&got[0]),
            ghl_refresh(&ghl, Arc::clone(&calls)),
        )
        .await
        .unwrap();
    assert_ne!(after_401, got[0]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // GHL refuses the refresh token (the app was uninstalled): that
    // connection is disabled with the reason; the other is untouched.
    let current = store.connection("oauth").await.unwrap().unwrap();
    let refresh_token = current.tokens(&key).unwrap().unwrap().refresh_token;
    assert!(ghl.oauth().revoke_refresh_token(&refresh_token));
    let refused = store
        .access_token(
            "oauth",
            &key,
            policy,
            Some(&after_401),
            ghl_refresh(&ghl, Arc::clone(&calls)),
        )
        .await;
    assert!(
        matches!(refused, Err(TokenError::Refused { .. })),
        "{refused:?}"
    );
    let disabled = store.connection("oauth").await.unwrap().unwrap();
    assert!(!disabled.enabled);
    assert!(
        disabled
            .disabled_reason
            .as_deref()
            .unwrap_or_default()
            .contains("invalid_grant"),
        "{:?}",
        disabled.disabled_reason
    );
    assert!(store.connection("other").await.unwrap().unwrap().enabled);
    assert!(matches!(
        store
            .access_token(
                "oauth",
                &key,
                policy,
                None,
                ghl_refresh(&ghl, Arc::clone(&calls))
            )
            .await,
        Err(TokenError::Disabled { .. })
    ));
    assert!(matches!(
        store
            .access_token(
                "other",
                &key,
                policy,
                None,
                ghl_refresh(&ghl, Arc::clone(&calls))
            )
            .await,
        Err(TokenError::NoTokens(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_is_refreshed_once_across_replicas_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/m.db", dir.path().display());
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();
    refresh_once([a, b]).await;
    let bytes = db_bytes(dir.path());
    assert!(
        !contains(&bytes, "sandbox-refresh-"),
        "a refresh token is readable in the file"
    );
    assert!(!contains(&bytes, "sandbox-access-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_is_refreshed_once_across_replicas_on_postgres() {
    let Some(pg) = FreshPostgres::create("conn_refresh").await else {
        return;
    };
    let a = Store::open(&pg.url).await.unwrap();
    let b = Store::open(&pg.url).await.unwrap();
    refresh_once([a.clone(), b.clone()]).await;
    drop((a, b));
    pg.drop().await;
}
