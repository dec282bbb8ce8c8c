//! `mapper resync` over real HTTP with the simulators: a GHL location
//! emptied and rebuilt from the Sticky Cards mirror (then left alone by a
//! second run), customer exports in CSV and JSON lines with broken lines,
//! a run killed halfway and continued without creating anything twice, and
//! the target's rate limit holding for a whole run.

use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running};
use mapper::sandbox::ghl::{GhlConfig, GhlSandbox};
use mapper::sandbox::{Fault, LoggedRequest, RateLimit, StickyCardsSandbox};
use mapper::store::Store;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::postgres::FreshPostgres;
use common::{copy_dir, settle, simulators};

/// The variables a run needs, pointing at the simulators.
fn target_env(ghl: &GhlSandbox, sc: &StickyCardsSandbox) -> Vec<(&'static str, String)> {
    vec![
        ("GHL_API_BASE_URL", ghl.base_url()),
        ("GHL_API_TOKEN", ghl.token().to_string()),
        ("GHL_LOCATION_ID", ghl.location_id().to_string()),
        ("STICKYCARDS_API_BASE_URL", sc.base_url()),
        ("STICKYCARDS_API_KEY", sc.api_key().to_string()),
    ]
}

fn resync_command(
    db: &str,
    mappings: &str,
    ghl: &GhlSandbox,
    sc: &StickyCardsSandbox,
    args: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mapper"));
    command
        .arg("resync")
        .args(args)
        .env("MAPPER_DATABASE_URL", db)
        .env("MAPPER_MAPPINGS", mappings)
        .env_remove("RUST_LOG");
    for (k, v) in target_env(ghl, sc) {
        command.env(k, v);
    }
    command
}

/// Runs `mapper resync ARGS` to the end.
async fn resync(
    db: &str,
    mappings: &str,
    ghl: &GhlSandbox,
    sc: &StickyCardsSandbox,
    args: &[&str],
) -> Output {
    let mut command = resync_command(db, mappings, ghl, sc, args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// What `mapper serve` runs, in this process, on a database the test keeps
/// after stopping it.
struct Serving {
    running: Running,
    base: String,
}

async fn serve(db: &str, ghl: &GhlSandbox, sc: &StickyCardsSandbox) -> Serving {
    let mut env: Vec<(&str, String)> = target_env(ghl, sc);
    for (k, v) in [
        ("STICKYCARDS_WEBHOOK_TOKEN", "sc-token"),
        ("SIGNALMIND_WEBHOOK_TOKEN", "sm-token"),
        ("SLICKTEXT_WEBHOOK_SECRET", "st-secret"),
        ("GHL_WORKFLOW_WEBHOOK_TOKEN", "wf-token"),
    ] {
        env.push((k, v.to_string()));
    }
    let program = mapper::config::compile::compile_dir(Path::new("mappings"))
        .program
        .unwrap();
    let config = AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        env.into_iter().collect::<Env>(),
    );
    let running = App::start(config).await.unwrap();
    Serving {
        base: running.url().unwrap(),
        running,
    }
}

/// A copy of the shipped mapping set with the GHL profile's rate limit replaced.
fn mappings_with_ghl_limit(limit: &str) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for sub in ["mappings", "schemas", "examples"] {
        copy_dir(Path::new(sub), &copy.path().join(sub));
    }
    let file = copy.path().join("mappings/targets/ghl.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = text.replace(
        "rate_limit: { requests: 100, per_seconds: 10, daily: 200000, per: location }",
        limit,
    );
    assert_ne!(edited, text);
    std::fs::write(&file, edited).unwrap();
    copy
}

/// A time `days_ago` days back, RFC 3339 (recent, so the inactivity schedule stays quiet).
fn days_ago(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The value of a contact's custom field, by key.
fn field(ghl: &GhlSandbox, contact: &mapper::sandbox::ghl::Contact, key: &str) -> Option<Value> {
    let id = ghl
        .custom_fields()
        .into_iter()
        .find(|f| f.field_key == format!("contact.{key}"))?
        .id;
    contact.custom_field(&id).cloned()
}

fn writes(log: &[LoggedRequest]) -> Vec<String> {
    log.iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// Seeds the Sticky Cards mirror of `n` customers as their webhooks would have.
async fn seed_mirror(db: &str, n: usize) {
    let store = Store::open(db).await.unwrap();
    for i in 0..n {
        let fields = json!({
            "email": format!("Customer{i}@Example.com"),
            "phone": format!("+1 415 555 {:04}", 3000 + i),
            "first_name": format!("C{i}"),
            "last_name": "Resync",
            "card_id": format!("card_{i}"),
            "card_status": "installed",
            "loyalty_points": 10 * i,
            "card_installed_date": days_ago(20),
            "last_activity": days_ago(2),
            "segments": ["Regulars"],
        });
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        store
            .update_mirror(
                "default",
                "stickycards",
                &format!("cus_{i:03}"),
                &fields,
                Some(mapper::store::now_ms()),
                0,
            )
            .await
            .unwrap();
    }
}

/// Webhooks go through `serve` into the mirror and GHL; the location is
/// then emptied (a fresh simulator). `--relink` rebuilds every contact with
/// its fields and tags from the mirror; a second run (a new one: the first
/// finished) finds nothing to change and makes no write.
#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_ghl_is_rebuilt_from_the_mirror_and_a_second_run_changes_nothing() {
    let (ghl, sc) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let installed = days_ago(10);
    let webhooks = [
        json!({"event_type": "CardInstalledEvent", "timestamp": installed, "customer_id": "cus_1",
               "card_id": "card_1", "email": "Ana.Lima@Example.com", "phone_number": "+1 (415) 555-2671",
               "first_name": "Ana", "last_name": "Lima",
               "card": {"id": "card_1", "status": "installed", "balance": 10, "installed_date": installed}}),
        json!({"event_type": "CustomerSegmentLinkedEvent", "timestamp": days_ago(5), "customer_id": "cus_1",
               "card_id": "card_1", "email": "Ana.Lima@Example.com", "phone_number": "+1 (415) 555-2671",
               "card": {"id": "card_1", "status": "installed", "balance": 25, "installed_date": installed},
               "segment": {"id": "seg_vip", "name": "VIP"}, "segments": ["Regulars", "VIP"]}),
        json!({"event_type": "CustomerCreatedEvent", "timestamp": days_ago(9), "customer_id": "cus_2",
               "email": "bea.santos@example.com", "first_name": "Bea", "last_name": "Santos"}),
        json!({"event_type": "CustomerReferralCreatedEvent", "timestamp": days_ago(3), "customer_id": "cus_2",
               "email": "bea.santos@example.com", "first_name": "Bea", "last_name": "Santos", "referral_count": 1}),
        json!({"event_type": "CardInstalledEvent", "timestamp": days_ago(8), "customer_id": "cus_3",
               "card_id": "card_3", "phone_number": "+1 415 555 0133", "first_name": "Caio", "last_name": "Reis",
               "card": {"id": "card_3", "status": "installed", "balance": 0, "installed_date": days_ago(8)}}),
        json!({"event_type": "CardRemovedEvent", "timestamp": days_ago(1), "customer_id": "cus_3",
               "card_id": "card_3", "phone_number": "+1 415 555 0133",
               "card": {"id": "card_3", "status": "removed", "balance": 0}}),
    ];
    {
        let s = serve(&db, &ghl, &sc).await;
        let http = reqwest::Client::new();
        for body in &webhooks {
            let status = http
                .post(format!("{}/webhooks/stickycards?token=sc-token", s.base))
                .json(body)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status.as_u16(), 202);
        }
        let counts = settle(&db).await;
        assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");
        assert_eq!(ghl.contacts().len(), 3);
        s.running.shutdown().await;
    }
    // Only a payment is a purchase: card events leave last_purchase_date out of the mirror.
    let store = Store::open(&db).await.unwrap();
    let mirror = store
        .mirror("default", "stickycards", "cus_1")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !mirror.fields.contains_key("last_purchase_date"),
        "{:?}",
        mirror.fields
    );

    // The location is emptied: a new GHL with nothing in it (a location of
    // its own, so its contact ids are not the old ones).
    let empty = GhlSandbox::start(GhlConfig {
        location_id: "loc_rebuilt".into(),
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    let out = resync(
        &db,
        "mappings",
        &empty,
        &sc,
        &[
            "--target",
            "ghl",
            "--from-mirror",
            "stickycards",
            "--relink",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "created 3, updated 0, unchanged 0, failed 0",
        "{}",
        stderr(&out)
    );
    let contacts = empty.contacts();
    assert_eq!(contacts.len(), 3, "{contacts:?}");
    let ana = empty.contact_by_email("ana.lima@example.com").unwrap();
    assert_eq!(ana.phone.as_deref(), Some("+14155552671"));
    assert_eq!(ana.first_name.as_deref(), Some("Ana"));
    assert_eq!(ana.last_name.as_deref(), Some("Lima"));
    assert_eq!(field(&empty, &ana, "loyalty_points"), Some(json!(25)));
    assert_eq!(field(&empty, &ana, "card_status"), Some(json!("installed")));
    assert_eq!(
        field(&empty, &ana, "card_installed"),
        Some(json!("installed"))
    );
    assert_eq!(field(&empty, &ana, "card_id"), Some(json!("card_1")));
    assert_eq!(
        field(&empty, &ana, "stickycards_customer_id"),
        Some(json!("cus_1"))
    );
    assert_eq!(
        field(&empty, &ana, "card_installed_date"),
        Some(json!(installed[..10]))
    );
    assert_eq!(field(&empty, &ana, "last_purchase_date"), None);
    let mut tags = ana.tags.clone();
    tags.sort();
    assert_eq!(tags, ["card holder", "regulars", "vip"]);
    let bea = empty.contact_by_email("bea.santos@example.com").unwrap();
    assert_eq!(field(&empty, &bea, "referral_count"), Some(json!(1)));
    assert_eq!(bea.tags, ["referrer"]);
    let caio = empty.contact_by_phone("+14155550133").unwrap();
    assert_eq!(field(&empty, &caio, "card_status"), Some(json!("removed")));
    assert_eq!(
        field(&empty, &caio, "card_installed"),
        Some(json!("removed"))
    );
    assert!(caio.tags.is_empty(), "{:?}", caio.tags);

    // Nothing changed since: the next run writes nothing.
    empty.clear_request_log();
    let again = resync(
        &db,
        "mappings",
        &empty,
        &sc,
        &["--target", "ghl", "--from-mirror", "stickycards"],
    )
    .await;
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(
        stdout(&again),
        "created 0, updated 0, unchanged 3, failed 0",
        "{}",
        stderr(&again)
    );
    assert!(
        writes(&empty.request_log()).is_empty(),
        "{:?}",
        writes(&empty.request_log())
    );
    assert_eq!(empty.contacts().len(), 3);
}

/// A CSV export (quoted fields, a BOM, a blank line, a row without an id, a
/// row with a missing column) and then a JSON lines export (one customer
/// changed, one new, one line broken): counts are exact, broken lines are
/// named by number, and the exit code says something failed.
#[tokio::test(flavor = "multi_thread")]
async fn exports_in_csv_and_json_lines_are_imported_with_exact_counts() {
    let (ghl, sc) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let csv = dir.path().join("customers.csv");
    std::fs::write(
        &csv,
        "\u{feff}customer_id,email,phone,first_name,last_name,loyalty_points,segments\r\n\
         cus_a,ana@example.com,+1 415 555 0101,Ana,\"Lima, Jr.\",120,\"VIP, Regulars\"\r\n\
         \r\n\
         cus_b,ben@example.com,+1 415 555 0102,Ben,Ortiz,35,\r\n\
         cus_x,broken@example.com,Only,Four\r\n\
         ,carla@example.com,,Carla,Mendes,,Lunch\r\n",
    )
    .unwrap();
    let out = resync(
        &db,
        "mappings",
        &ghl,
        &sc,
        &[
            "--target",
            "ghl",
            "--import",
            csv.to_str().unwrap(),
            "--source",
            "stickycards",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "created 3, updated 0, unchanged 0, failed 1",
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("failed: line 5: 4 field(s), the header has 7"),
        "{}",
        stderr(&out)
    );
    let ana = ghl.contact_by_email("ana@example.com").unwrap();
    assert_eq!(ana.last_name.as_deref(), Some("Lima, Jr."));
    assert_eq!(field(&ghl, &ana, "loyalty_points"), Some(json!(120)));
    let mut tags = ana.tags.clone();
    tags.sort();
    assert_eq!(tags, ["regulars", "vip"]);
    let carla = ghl.contact_by_email("carla@example.com").unwrap();
    assert_eq!(
        field(&ghl, &carla, "stickycards_customer_id"),
        Some(json!("email:carla@example.com")),
        "an export without ids links the customer by its email"
    );
    assert_eq!(carla.tags, ["lunch"]);

    let jsonl = dir.path().join("customers.jsonl");
    std::fs::write(
        &jsonl,
        "{\"customer_id\": \"cus_a\", \"email\": \"ana@example.com\", \"loyalty_points\": 150, \"segments\": [\"VIP\"]}\n\
         {\"customer_id\": \"cus_c\", \"email\": \"caio@example.com\", \"first_name\": \"Caio\", \"referral_count\": 2}\n\
         {\"customer_id\": \"cus_d\", \"email\": \n\
         \n",
    )
    .unwrap();
    let out = resync(
        &db,
        "mappings",
        &ghl,
        &sc,
        &[
            "--target",
            "ghl",
            "--import",
            jsonl.to_str().unwrap(),
            "--source",
            "stickycards",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "created 1, updated 1, unchanged 0, failed 1",
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("failed: line 3: not valid JSON"),
        "{}",
        stderr(&out)
    );
    let ana = ghl.contact_by_email("ana@example.com").unwrap();
    assert_eq!(field(&ghl, &ana, "loyalty_points"), Some(json!(150)));
    let caio = ghl.contact_by_email("caio@example.com").unwrap();
    assert_eq!(caio.tags, ["referrer"]);
    assert_eq!(ghl.contacts().len(), 4);
}

/// A run is killed halfway (the GHL profile paced slow so it takes a
/// while), then the same `--run` is run again while GHL answers some
/// requests with 500: it finishes, retrying those, and no contact is created
/// twice. Running it once more changes nothing and says the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_is_continued_without_creating_anything_twice() {
    let (ghl, sc) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let customers = 10;
    seed_mirror(&db, customers).await;
    let copy = mappings_with_ghl_limit("rate_limit: { requests: 6, per_seconds: 1 }");
    let mappings = copy.path().join("mappings");
    let mappings = mappings.to_str().unwrap();
    let args = [
        "--target",
        "ghl",
        "--from-mirror",
        "stickycards",
        "--run",
        "march",
    ];

    let mut child = resync_command(&db, mappings, &ghl, &sc, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while ghl.contacts().len() < 3 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let made = ghl.contacts().len();
    assert!(
        (3..customers).contains(&made),
        "killed with {made} contacts made"
    );

    ghl.inject_on("/contacts/", Fault::Status(500), 2);
    let continued = Instant::now();
    let out = resync(&db, mappings, &ghl, &sc, &args).await;
    // What the killed process was delivering is due at once, not when its
    // 10-minute claim would have ended.
    assert!(
        continued.elapsed() < Duration::from_secs(120),
        "{:?}",
        continued.elapsed()
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("continuing run march"),
        "{}",
        stderr(&out)
    );
    let summary = stdout(&out);
    let counts: Vec<usize> = summary
        .split(", ")
        .filter_map(|part| part.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(counts.len(), 4, "{summary}");
    assert_eq!(counts[0] + counts[1], customers, "{summary}");
    assert_eq!(counts[3], 0, "{summary}");
    let log = ghl.request_log();
    assert!(
        log.iter().any(|r| r.status == Some(500)),
        "the faults were served"
    );
    let creates = log
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/contacts/" && r.status == Some(200))
        .count()
        + log
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/contacts/" && r.status == Some(201))
            .count();
    assert_eq!(creates, customers, "each contact created once");
    let mut emails: Vec<String> = ghl.contacts().into_iter().filter_map(|c| c.email).collect();
    emails.sort();
    emails.dedup();
    assert_eq!(emails.len(), customers);
    assert_eq!(ghl.contacts().len(), customers);

    // The run is complete: the same command again has nothing to do.
    ghl.clear_request_log();
    let out = resync(&db, mappings, &ghl, &sc, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), summary);
    assert!(writes(&ghl.request_log()).is_empty());
}

/// The other way: GHL contacts (as their webhooks left them in the mirror)
/// become Sticky Cards customers with their names, email, phone and
/// segments (tags without `vars.not_segments`); once done, a second run
/// finds them up to date.
#[tokio::test(flavor = "multi_thread")]
async fn ghl_contacts_are_resynced_to_sticky_cards_once() {
    let (ghl, sc) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let store = Store::open(&db).await.unwrap();
    for (id, fields) in [
        (
            "ghl_c_1",
            json!({"email": "rosa.diaz@example.com", "phone": "+14155550111", "first_name": "Rosa",
                   "last_name": "Diaz", "tags": ["VIP", "card holder", "Brunch Club"]}),
        ),
        (
            "ghl_c_2",
            json!({"email": "ivo.pires@example.com", "first_name": "Ivo", "tags": ["referrer"]}),
        ),
    ] {
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        store
            .update_mirror(
                "default",
                "ghl",
                id,
                &fields,
                Some(mapper::store::now_ms()),
                0,
            )
            .await
            .unwrap();
    }
    let args = ["--target", "stickycards", "--from-mirror", "ghl"];
    let out = resync(&db, "mappings", &ghl, &sc, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "created 2, updated 0, unchanged 0, failed 0",
        "{}",
        stderr(&out)
    );
    let rosa = sc.customer_by_email("rosa.diaz@example.com").unwrap();
    assert_eq!(rosa.first_name.as_deref(), Some("Rosa"));
    assert_eq!(rosa.last_name.as_deref(), Some("Diaz"));
    assert_eq!(rosa.phone.as_deref(), Some("+14155550111"));
    assert_eq!(rosa.segments, ["vip", "brunch club"]);
    let ivo = sc.customer_by_email("ivo.pires@example.com").unwrap();
    assert!(ivo.segments.is_empty(), "{:?}", ivo.segments);
    assert!(sc.cards().is_empty(), "a resync issues no card");

    sc.clear_request_log();
    let again = resync(&db, "mappings", &ghl, &sc, &args).await;
    assert_eq!(
        stdout(&again),
        "created 0, updated 0, unchanged 2, failed 0",
        "{}",
        stderr(&again)
    );
    assert!(writes(&sc.request_log()).is_empty());
}

/// The most requests that arrived within any `window`.
fn busiest_window(log: &[LoggedRequest], window: Duration) -> usize {
    let mut times: Vec<Instant> = log.iter().map(|r| r.received).collect();
    times.sort();
    let (mut best, mut start) = (0, 0);
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// A run paces its requests by the target profile's rate limit, as live
/// traffic: a GHL allowing 10 requests a second never answers 429.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_keeps_to_the_target_rate_limit() {
    let ghl = GhlSandbox::start(GhlConfig {
        rate_limit: RateLimit {
            max: 10,
            interval: Duration::from_secs(1),
            daily: None,
        },
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    let sc = StickyCardsSandbox::start(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    let customers = 12;
    seed_mirror(&db, customers).await;
    let copy = mappings_with_ghl_limit("rate_limit: { requests: 10, per_seconds: 1 }");
    let mappings = copy.path().join("mappings");
    let out = resync(
        &db,
        mappings.to_str().unwrap(),
        &ghl,
        &sc,
        &[
            "--target",
            "ghl",
            "--from-mirror",
            "stickycards",
            "--workers",
            "16",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("created {customers}, updated 0, unchanged 0, failed 0")
    );
    let log = ghl.request_log();
    assert!(log.len() > 4 * customers, "{} requests", log.len());
    assert_eq!(
        log.iter().filter(|r| r.status == Some(429)).count(),
        0,
        "no 429"
    );
    assert!(busiest_window(&log, Duration::from_secs(1)) <= 10);
}

/// Mistakes in the command are refused before anything is stored, with exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2_with_the_reason() {
    let (ghl, sc) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mapper.db").display());
    seed_mirror(&db, 1).await;
    let cases: [(&[&str], &str); 6] = [
        (
            &["--target", "crm", "--from-mirror", "stickycards"],
            "unknown target `crm`",
        ),
        (
            &["--target", "ghl", "--from-mirror", "stickycard"],
            "unknown source `stickycard`",
        ),
        (
            &["--target", "ghl", "--from-mirror", "schedule"],
            "mapper's own events",
        ),
        (
            &["--target", "stickycards", "--from-mirror", "stickycards"],
            "no mapping writes a `stickycards` customer's snapshot to `stickycards`",
        ),
        (
            &[
                "--target",
                "ghl",
                "--import",
                "/nonexistent/export.csv",
                "--source",
                "stickycards",
            ],
            "cannot read /nonexistent/export.csv",
        ),
        (
            &[
                "--target",
                "ghl",
                "--from-mirror",
                "stickycards",
                "--run",
                "a/b",
            ],
            "cannot name a run",
        ),
    ];
    for (args, expected) in cases {
        let out = resync(&db, "mappings", &ghl, &sc, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let store = Store::open(&db).await.unwrap();
    assert!(
        store
            .counts()
            .await
            .unwrap()
            .iter()
            .all(|c| c.source != "resync"),
        "nothing was stored"
    );
    assert!(ghl.request_log().is_empty());
}

fn snapshot(run: &str, customer: &str) -> mapper::store::NewEvent {
    mapper::store::NewEvent {
        connection: "default".into(),
        source: "resync".into(),
        event_type: "CustomerSnapshot".into(),
        event_id: None,
        dedup_key: mapper::store::resync::snapshot_key(run, customer),
        occurred_at: Some(1_700_000_000_000),
        customer_key: Some(format!("stickycards:{customer}")),
        headers: json!({}),
        body: br#"{"event":"CustomerSnapshot"}"#.to_vec(),
        state: mapper::store::EventState::Received,
        note: None,
    }
}

/// What `mapper resync` asks of the store, on the engine's two databases.
async fn run_queries(store: Store) {
    use mapper::store::resync::ResyncRun;
    use mapper::store::{EventState, SyncLogEntry};
    let run = ResyncRun {
        name: "r1".into(),
        target: "ghl".into(),
        source: "stickycards".into(),
        origin: "mirror".into(),
        started_at: 1_000,
        finished_at: None,
    };
    store.begin_resync_run("default", &run).await.unwrap();
    assert_eq!(
        store.resync_run("default", "r1").await.unwrap(),
        Some(run.clone())
    );
    assert_eq!(
        store
            .unfinished_resync_run("default", "ghl", "stickycards", "mirror")
            .await
            .unwrap()
            .map(|r| r.name),
        Some("r1".into())
    );
    // A run whose name starts like another's has snapshots of its own.
    let ids = store
        .insert_events(&[
            snapshot("r1", "cus_1"),
            snapshot("r1", "cus_2"),
            snapshot("r1", "cus_3"),
            snapshot("r10", "cus_1"),
            snapshot("r1", "cus_1"),
        ])
        .await
        .unwrap();
    assert!(matches!(ids[4], mapper::store::Inserted::Duplicate(_)));
    let mut stored: Vec<String> = store
        .resync_customers("default", "r1")
        .await
        .unwrap()
        .into_iter()
        .collect();
    stored.sort();
    assert_eq!(stored, ["cus_1", "cus_2", "cus_3"]);
    let log = |row: i64, action: &str, status: Option<i64>| SyncLogEntry {
        connection: "default".into(),
        event_row: row,
        mapping: "m".into(),
        action: action.into(),
        target: "ghl".into(),
        customer: None,
        request: String::new(),
        status,
        error: None,
        attempt: 1,
        took_ms: None,
    };
    let (a, b, c) = (ids[0].id(), ids[1].id(), ids[2].id());
    store
        .log_attempt(&log(a, "create_customer", Some(200)))
        .await
        .unwrap();
    store
        .log_attempt(&log(a, "upsert_contact", Some(200)))
        .await
        .unwrap();
    store
        .log_attempt(&log(b, "upsert_contact", Some(500)))
        .await
        .unwrap();
    store
        .log_attempt(&log(b, "upsert_contact", Some(200)))
        .await
        .unwrap();
    store.log_attempt(&log(c, "add_tags", None)).await.unwrap();
    for id in [a, b] {
        store
            .finish(id, EventState::Delivered, 0, None)
            .await
            .unwrap();
    }
    store
        .finish(c, EventState::Dead, 0, Some("400: no"))
        .await
        .unwrap();
    let outcomes = store.resync_outcomes("default", "r1").await.unwrap();
    let seen: Vec<(&str, &str, bool, bool)> = outcomes
        .iter()
        .map(|o| {
            (
                o.customer_id.as_str(),
                o.state.as_str(),
                o.created,
                o.called,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("cus_1", "delivered", true, true),
            ("cus_2", "delivered", false, true),
            ("cus_3", "dead", false, false)
        ]
    );
    assert_eq!(outcomes[2].last_error.as_deref(), Some("400: no"));
    assert_eq!(
        store.requeue_dead_snapshots("default", "r1").await.unwrap(),
        1
    );
    assert_eq!(
        store
            .requeue_dead_snapshots("default", "r10")
            .await
            .unwrap(),
        0
    );
    let outcomes = store.resync_outcomes("default", "r1").await.unwrap();
    assert_eq!(outcomes[2].state, "received");

    store.finish_resync_run("default", "r1").await.unwrap();
    assert!(
        store
            .unfinished_resync_run("default", "ghl", "stickycards", "mirror")
            .await
            .unwrap()
            .is_none()
    );
    // Continuing a finished run opens it again, as it was.
    store.begin_resync_run("default", &run).await.unwrap();
    assert_eq!(
        store
            .resync_run("default", "r1")
            .await
            .unwrap()
            .unwrap()
            .finished_at,
        None
    );

    store
        .put_link("default", "stickycards", "cus_1", "ghl", "c1")
        .await
        .unwrap();
    store
        .put_link("default", "stickycards", "cus_1", "stickycards", "cus_1")
        .await
        .unwrap();
    store
        .put_link("default", "stickycards", "cus_2", "ghl", "c2")
        .await
        .unwrap();
    let mut fields = serde_json::Map::new();
    fields.insert("tags".into(), json!(["vip"]));
    store
        .remember("default", "ghl", "c1", &fields)
        .await
        .unwrap();
    assert_eq!(
        store.records_of("default", "ghl").await.unwrap()["c1"]["tags"],
        json!(["vip"])
    );
    store
        .forget_link("default", "stickycards", "cus_1", "ghl")
        .await
        .unwrap();
    let links = store.links_from("default", "stickycards").await.unwrap();
    assert_eq!(
        links["cus_1"],
        [("stickycards".to_string(), "cus_1".to_string())]
    );
    assert_eq!(links["cus_2"], [("ghl".to_string(), "c2".to_string())]);
}

#[tokio::test]
async fn run_queries_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("runs.db").display());
    run_queries(Store::open(&url).await.unwrap()).await;
}

/// The same on PostgreSQL when `MAPPER_TEST_POSTGRES_URL` is set (CI sets it).
#[tokio::test]
async fn run_queries_on_postgres() {
    let Some(pg) = FreshPostgres::create("resync").await else {
        return;
    };
    let store = Store::open(&pg.url).await.unwrap();
    assert!(store.is_postgres());
    run_queries(store).await;
    pg.drop().await;
}
