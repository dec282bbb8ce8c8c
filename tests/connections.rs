//! Connections: `mapper connection …` run as the real binary on a temporary
//! SQLite file, and the store API (`mapper::store::connections`) on SQLite
//! and, when `MAPPER_TEST_POSTGRES_URL` is set, on PostgreSQL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mapper::secrets::SecretKey;
use mapper::store::Store;
use mapper::store::connections::{ConnectionError, OAuthTokens};
use serde_json::Value;
use sqlx::Connection as _;

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
    let Ok(admin_url) = std::env::var("MAPPER_TEST_POSTGRES_URL") else {
        eprintln!("MAPPER_TEST_POSTGRES_URL is not set: skipping the PostgreSQL run");
        return;
    };
    sqlx::any::install_default_drivers();
    let name = format!("mapper_test_{}_connections", std::process::id());
    let mut admin = sqlx::AnyConnection::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin_url);
    let store = Store::open(&format!("{base}/{name}")).await.unwrap();
    assert!(store.is_postgres());
    exercise(store.clone()).await;
    drop(store);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}
