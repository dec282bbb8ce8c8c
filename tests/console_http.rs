//! The operator console over real HTTP, without a browser: who gets in,
//! what a state-changing request must carry, what is masked, and how bad
//! input is answered. The store queries behind it run on SQLite and, when
//! `MAPPER_TEST_POSTGRES_URL` is set, on PostgreSQL.

use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running};
use mapper::sandbox::{Fault, GhlSandbox, StickyCardsSandbox};
use mapper::store::{EventQuery, EventState, NewEvent, ReplayFilter, Store, SyncLogEntry};
use reqwest::redirect::Policy;
use std::time::Duration;

mod common;
use common::{copy_dir, serve_env, settle, simulators};

const TOKEN: &str = "console-test-token-0123456789";

struct Console {
    base: String,
    db: String,
    running: Running,
    ghl: GhlSandbox,
    _sc: StickyCardsSandbox,
    _dir: tempfile::TempDir,
}

async fn start(ui_token: Option<&str>) -> Console {
    start_in(ui_token, "mappings", false).await
}

/// As [`start`], on the mapping folder `mappings`, reloaded when it changes if `watch`.
async fn start_in(ui_token: Option<&str>, mappings: &str, watch: bool) -> Console {
    let (ghl, sc) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("console.db").display());
    let program = mapper::config::compile::compile_dir(std::path::Path::new(mappings))
        .program
        .expect("the mappings check clean");
    let mut config = AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        watch.then(|| mappings.into()),
        Env::from_map(serve_env(&ghl, &sc)),
    );
    config.coalesce_window = Some(Duration::ZERO);
    config.ui_token = ui_token.map(str::to_string);
    let running = App::start(config).await.expect("the app starts");
    Console {
        base: running.url().unwrap(),
        db,
        running,
        ghl,
        _sc: sc,
        _dir: dir,
    }
}

/// A form body.
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencoding::encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// A Sticky Cards scan of `customer` (the example payload, with its email and phone).
fn scan(customer: &str) -> Vec<u8> {
    std::fs::read_to_string("examples/payloads/stickycards/CardScannedEvent.json")
        .unwrap()
        .replace("cus_1001", customer)
        .into_bytes()
}

/// How many attempt rows show a latency (`<td class="time">N ms</td>`).
fn attempts_with_latency(page: &str) -> usize {
    page.split("<td class=\"time\">")
        .skip(1)
        .filter(|cell| {
            cell.split("</td>")
                .next()
                .and_then(|t| t.strip_suffix(" ms"))
                .is_some_and(|n| n.parse::<u64>().is_ok())
        })
        .count()
}

async fn post_scan(c: &Console, customer: &str) -> u16 {
    client()
        .post(format!("{}/webhooks/stickycards", c.base))
        .header("content-type", "application/json")
        .header("X-Webhook-Token", "sc-token")
        .header("X-Signature", "not-a-secret-to-show")
        .body(scan(customer))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Logs in through the form: the session cookie (`name=value`).
async fn login(c: &Console) -> String {
    let r = client()
        .post(format!("{}/ui/login", c.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

/// A page's CSRF token, read from its hidden form field.
async fn csrf_of(c: &Console, cookie: &str) -> String {
    let html = get_html(c, cookie, "/ui/actions").await;
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..at + 64].to_string()
}

async fn get_html(c: &Console, cookie: &str, path: &str) -> String {
    let r = client()
        .get(format!("{}{path}", c.base))
        .header("cookie", cookie)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.text().await.unwrap()
}

#[tokio::test]
async fn without_the_variable_the_console_is_not_there() {
    let c = start(None).await;
    for path in ["/ui", "/ui/login", "/ui/events", "/ui/assets/htmx.min.js"] {
        let r = client()
            .get(format!("{}{path}", c.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = client()
        .post(format!("{}/ui/login", c.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The webhook routes are as they were.
    assert_eq!(post_scan(&c, "cus_1").await, 202);
}

#[tokio::test]
async fn an_empty_token_is_refused_at_start() {
    let (ghl, sc) = simulators().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    let program = mapper::config::compile::compile_dir(std::path::Path::new("mappings"))
        .program
        .unwrap();
    let mut config = AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        Env::from_map(serve_env(&ghl, &sc)),
    );
    config.ui_token = Some(String::new());
    let err = App::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("MAPPER_UI_TOKEN"), "{err}");
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_and_a_wrong_token_is_refused() {
    let c = start(Some(TOKEN)).await;
    let wrong = client()
        .post(format!("{}/ui/login", c.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", "console-test-token-012345678")]))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("That token was refused")
    );

    let r = client()
        .post(format!("{}/ui/login", c.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("token", TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(
            cookie.split("; ").any(|a| a == attribute),
            "{attribute} missing from {cookie}"
        );
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let page = get_html(&c, &session, "/ui").await;
    assert!(page.contains("Overview"));
    let r = client().get(format!("{}/ui", c.base)).send().await.unwrap();
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );

    // Logging out forgets the session.
    let csrf = csrf_of(&c, &session).await;
    let r = client()
        .post(format!("{}/ui/logout", c.base))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = client()
        .get(format!("{}/ui", c.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn strangers_are_sent_to_the_login_or_refused() {
    let c = start(Some(TOKEN)).await;
    let browser = client()
        .get(format!("{}/ui/events", c.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 303);
    assert_eq!(browser.headers()["location"], "/ui/login");
    let script = client()
        .get(format!("{}/ui/events", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 401);
    let body: serde_json::Value = script.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    for auth in [
        "Bearer wrong",
        "Bearer ",
        "Basic Y29uc29sZTp0ZXN0",
        &format!("Bearer {TOKEN}x"),
    ] {
        let r = client()
            .get(format!("{}/ui", c.base))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{auth}");
    }
    let forged = client()
        .get(format!("{}/ui", c.base))
        .header("cookie", format!("mapper_ui={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let r = client()
        .get(format!("{}/ui", c.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_replay_without_the_csrf_token_is_refused() {
    let c = start(Some(TOKEN)).await;
    c.ghl.inject(Fault::Status(400), 1000);
    assert_eq!(post_scan(&c, "cus_dead").await, 202);
    settle(&c.db).await;
    let store = Store::open(&c.db).await.unwrap();
    let dead = store
        .list_events(&EventQuery {
            state: Some("dead".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let id = dead.rows.first().expect("a dead event").id;
    let session = login(&c).await;
    let url = format!("{}/ui/events/{id}/replay", c.base);

    let without = client()
        .post(&url)
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("x", "1")]))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 403);
    let body: serde_json::Value = without.json().await.unwrap();
    assert_eq!(body["error"], "csrf");
    let wrong = client()
        .post(&url)
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", "0".repeat(64).as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    // Another session's token is not this one's.
    let other = login(&c).await;
    let others_csrf = csrf_of(&c, &other).await;
    let crossed = client()
        .post(&url)
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", others_csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(crossed.status(), 403);
    // Every other state-changing route refuses the same way.
    for path in ["/ui/replay", "/ui/held/requeue", "/ui/logout"] {
        let r = client()
            .post(format!("{}{path}", c.base))
            .header("cookie", &session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("state=dead&confirm=yes")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    assert_eq!(
        store.event(id).await.unwrap().unwrap().0,
        "dead",
        "a refused replay changed nothing"
    );

    // A script with the bearer token needs the CSRF token too.
    let bearer = format!("Bearer {TOKEN}");
    let r = client()
        .post(&url)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let csrf: serde_json::Value = client()
        .get(format!("{}/ui/csrf", c.base))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    c.ghl.clear_faults();
    let r = client()
        .post(&url)
        .header("authorization", &bearer)
        .header("x-csrf-token", csrf["csrf"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["replayed"], 1);
    settle(&c.db).await;
    assert_eq!(store.event(id).await.unwrap().unwrap().0, "delivered");
}

#[tokio::test]
async fn personal_data_is_masked_until_revealed_and_secrets_never_shown() {
    let c = start(Some(TOKEN)).await;
    assert_eq!(post_scan(&c, "cus_mask").await, 202);
    settle(&c.db).await;
    let session = login(&c).await;
    let store = Store::open(&c.db).await.unwrap();
    let id = store
        .list_events(&EventQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .rows[0]
        .id;
    let masked = get_html(&c, &session, &format!("/ui/events/{id}")).await;
    assert!(!masked.contains("Ana.Lima@Example.com"), "email shown");
    assert!(!masked.contains("555-2671"), "phone shown");
    assert!(masked.contains("A•••@E•••.com"));
    // Each call of the event shows how long it took (departure to answer).
    let took = attempts_with_latency(&masked);
    assert!(took > 0, "no attempt shows its latency:\n{masked}");
    let revealed = get_html(&c, &session, &format!("/ui/events/{id}?reveal=1")).await;
    assert!(revealed.contains("Ana.Lima@Example.com"));
    assert!(revealed.contains("+1 (415) 555-2671"));
    for page in [&masked, &revealed] {
        assert!(!page.contains("sc-token"), "the webhook token is shown");
        assert!(
            !page.contains("not-a-secret-to-show"),
            "a signature is shown"
        );
        assert!(!page.contains(c.ghl.token()), "the GHL token is shown");
    }
    // The customer's page masks the mirror the same way.
    let customer = get_html(&c, &session, "/ui/customers/cus_mask").await;
    assert!(!customer.contains("Ana.Lima@Example.com"));
    assert!(customer.contains("cus_mask"));
    // The list finds the customer by email and by phone, typed as a person would.
    for q in ["ana.lima@example.com", "415-555-2671", "cus_mask"] {
        let list = get_html(
            &c,
            &session,
            &format!("/ui/events?customer={}", urlencode(q)),
        )
        .await;
        assert!(list.contains(&format!("/ui/events/{id}\"")), "{q}");
    }
    let none = get_html(&c, &session, "/ui/events?customer=nobody%40example.com").await;
    assert!(none.contains("No event matches"));
}

fn urlencode(s: &str) -> String {
    s.replace('@', "%40").replace(' ', "+")
}

#[tokio::test]
async fn bad_input_gets_a_json_error_not_a_panic() {
    let c = start(Some(TOKEN)).await;
    let bearer = format!("Bearer {TOKEN}");
    for (path, status, code) in [
        ("/ui/events/abc", 400, "bad_request"),
        ("/ui/events/99999", 404, "not_found"),
        ("/ui/events?state=lost", 400, "bad_request"),
        ("/ui/events?from=yesterday-ish", 400, "bad_request"),
        ("/ui/events?before=x", 400, "bad_request"),
        ("/ui/customers/nobody", 404, "not_found"),
        ("/ui/assets/nope.js", 404, "not_found"),
        ("/ui/events?customer=%FF", 400, "bad_request"),
    ] {
        let r = client()
            .get(format!("{}{path}", c.base))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
        {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], code, "{path}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    let csrf: serde_json::Value = client()
        .get(format!("{}/ui/csrf", c.base))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = client()
        .post(format!("{}/ui/replay", c.base))
        .header("authorization", &bearer)
        .header("x-csrf-token", csrf["csrf"].as_str().unwrap())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("state=delivered")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_filtered_replay_shows_its_count_and_needs_a_confirmation() {
    let c = start(Some(TOKEN)).await;
    c.ghl.inject(Fault::Status(400), 1000);
    for i in 0..3 {
        assert_eq!(post_scan(&c, &format!("cus_f{i}")).await, 202);
    }
    settle(&c.db).await;
    c.ghl.clear_faults();
    let bearer = format!("Bearer {TOKEN}");
    let csrf: serde_json::Value = client()
        .get(format!("{}/ui/csrf", c.base))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let csrf = csrf["csrf"].as_str().unwrap().to_string();
    let post = |body: String| {
        client()
            .post(format!("{}/ui/replay", c.base))
            .header("authorization", &bearer)
            .header("x-csrf-token", &csrf)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let preview = post("state=dead&source=stickycards".into()).await.unwrap();
    assert_eq!(preview.status(), 200);
    assert!(preview.text().await.unwrap().contains("Replay 3 event(s)?"));
    // A confirmation for another count is shown the count again, and nothing moves.
    let stale = post("state=dead&source=stickycards&confirm=yes&expected=2".into())
        .await
        .unwrap();
    assert!(stale.text().await.unwrap().contains("The count changed"));
    let done = post("state=dead&source=stickycards&confirm=yes&expected=3".into())
        .await
        .unwrap();
    let body: serde_json::Value = done.json().await.unwrap();
    assert_eq!(body["replayed"], 3);
    let counts = settle(&c.db).await;
    assert!(
        counts
            .iter()
            .all(|x| x.state == "delivered" || x.source != "stickycards"),
        "{counts:?}"
    );
    drop(c.running);
}

/// The console's queries on one database: what the pages read.
async fn queries_on(store: &Store) {
    let connection = format!("console-{}", std::process::id());
    let event = |i: usize, state: EventState| NewEvent {
        connection: connection.clone(),
        source: "stickycards".into(),
        event_type: if i.is_multiple_of(2) {
            "CardScannedEvent"
        } else {
            "CustomerUpdated"
        }
        .into(),
        event_id: None,
        dedup_key: format!("{connection}-{i}-{}", mapper::store::now_ms()),
        occurred_at: None,
        customer_key: Some(format!("stickycards:{connection}-cus{}", i % 3)),
        headers: serde_json::json!({}),
        body: b"{}".to_vec(),
        state,
        note: None,
    };
    let mut batch = Vec::new();
    for i in 0..7 {
        batch.push(event(
            i,
            if i < 2 {
                EventState::Unmapped
            } else {
                EventState::Received
            },
        ));
    }
    let ids: Vec<i64> = store
        .insert_events(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id())
        .collect();
    store
        .finish(ids[2], EventState::Dead, 0, Some("400 simulated"))
        .await
        .unwrap();
    let counts = store.state_counts().await.unwrap();
    let mine = |state: &str| {
        counts
            .iter()
            .filter(|c| c.connection == connection && c.state == state)
            .map(|c| c.count)
            .sum::<i64>()
    };
    assert_eq!(
        (mine("unmapped"), mine("dead"), mine("received")),
        (2, 1, 4)
    );

    let key = format!("stickycards:{connection}-cus0");
    let page = store
        .list_events(&EventQuery {
            customer_keys: Some(vec![key.clone()]),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    // Customer 0 has events 0, 3 and 6: newest first, two a page.
    assert_eq!(page.total, 3);
    assert_eq!(
        page.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[6], ids[3]]
    );
    let next = store
        .list_events(&EventQuery {
            customer_keys: Some(vec![key]),
            before_id: page.next_before,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    assert_eq!(next.next_before, None);
    let typed = store
        .list_events(&EventQuery {
            state: Some("received".into()),
            event_type: Some("CustomerUpdated".into()),
            source: Some("stickycards".into()),
            from_ms: Some(0),
            to_ms: Some(i64::MAX),
            customer_keys: Some(
                (0..3)
                    .map(|i| format!("stickycards:{connection}-cus{i}"))
                    .collect(),
            ),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(typed.total, 2, "events 3 and 5");

    let record = store.event_record(ids[2]).await.unwrap().unwrap();
    assert_eq!(record.row.state, "dead");
    assert_eq!(record.row.last_error.as_deref(), Some("400 simulated"));
    assert_eq!(record.body, b"{}");

    // The replay count is what the replay then does.
    let filter = ReplayFilter {
        source: Some("stickycards".into()),
        since_ms: Some(mapper::store::now_ms() - 60_000),
        ..Default::default()
    };
    let before = store.replay_count(&filter).await.unwrap();
    assert!(before >= 3);

    store
        .log_attempt(&SyncLogEntry {
            connection: connection.clone(),
            event_row: ids[2],
            mapping: "m".into(),
            action: "upsert".into(),
            target: "ghl".into(),
            customer: Some(format!("{connection}-ghl1")),
            request: "POST /contacts/".into(),
            status: Some(400),
            error: Some("bad".into()),
            attempt: 1,
            took_ms: None,
        })
        .await
        .unwrap();
    let attempts = store.attempts_of_event(ids[2]).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].at > 0);
    assert_eq!(
        store
            .attempts_for_records(&[format!("{connection}-ghl1")])
            .await
            .unwrap()
            .len(),
        1
    );
    let minutes = store
        .calls_per_minute(mapper::store::now_ms() - 120_000)
        .await
        .unwrap();
    assert!(
        minutes
            .iter()
            .any(|(t, at, n)| t == "ghl" && *at % 60_000 == 0 && *n >= 1)
    );
    assert!(
        store
            .calls_since("ghl", mapper::store::utc_day_start_ms())
            .await
            .unwrap()
            >= 1
    );
    assert!(store.queue_depth().await.unwrap() >= 4);
    let _ = store.held_state_counts().await.unwrap();

    store
        .put_link(
            &connection,
            "stickycards",
            &format!("{connection}-cus0"),
            "ghl",
            &format!("{connection}-ghl1"),
        )
        .await
        .unwrap();
    let mut values = serde_json::Map::new();
    values.insert(
        "email".into(),
        serde_json::json!(format!("{connection}@example.com")),
    );
    values.insert("phone".into(), serde_json::json!("+15550001234"));
    store
        .update_mirror(
            &connection,
            "stickycards",
            &format!("{connection}-cus0"),
            &values,
            Some(1),
            ids[0],
        )
        .await
        .unwrap();
    for typed in [
        format!("{connection}@EXAMPLE.com"),
        format!("{connection}-ghl1"),
    ] {
        let ids = store.customer_ids_matching(&typed).await.unwrap();
        assert!(
            ids.contains(&format!("{connection}-cus0")),
            "{typed}: {ids:?}"
        );
        assert!(
            ids.contains(&format!("{connection}-ghl1")),
            "{typed}: {ids:?}"
        );
    }
    // Wildcards typed by a person are text, not patterns.
    assert_eq!(
        store.customer_ids_matching("%").await.unwrap(),
        vec!["%".to_string()]
    );
}

#[tokio::test]
async fn the_console_queries_run_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("q.db").display()))
        .await
        .unwrap();
    queries_on(&store).await;
}

#[tokio::test]
async fn the_console_queries_run_on_postgres() {
    let Ok(url) = std::env::var("MAPPER_TEST_POSTGRES_URL") else {
        eprintln!("skipped: MAPPER_TEST_POSTGRES_URL is not set");
        return;
    };
    let store = Store::open(&url).await.unwrap();
    queries_on(&store).await;
}

/// `mapper demo` turns the console on and says where it is.
#[test]
fn the_demo_prints_the_console_url() {
    let folder = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mapper"))
        .arg("demo")
        .arg("--mappings")
        .arg(repo.join("mappings"))
        .arg("--examples")
        .arg(repo.join("examples/payloads"))
        .current_dir(folder.path())
        .env("MAPPER_UI_TOKEN", "demo-console-token-1234")
        .env_remove("MAPPER_COALESCE_WINDOW")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("console: "))
        .unwrap_or_else(|| panic!("no console line in:\n{stdout}"));
    assert!(line.starts_with("console: http://127.0.0.1:"), "{line}");
    assert!(
        line.ends_with("/ui (log in with the token demo-console-token-1234)"),
        "{line}"
    );
}

/// The mappings view lists the files loaded and, after a refused reload,
/// the diagnostics with their file, line and column.
#[tokio::test(flavor = "multi_thread")]
async fn the_mappings_view_shows_a_refused_reload_with_its_place() {
    let copy = tempfile::tempdir().unwrap();
    for sub in ["mappings", "schemas", "examples"] {
        copy_dir(std::path::Path::new(sub), &copy.path().join(sub));
    }
    let folder = copy.path().join("mappings");
    let c = start_in(Some(TOKEN), folder.to_str().unwrap(), true).await;
    let bearer = format!("Bearer {TOKEN}");
    let page = || async {
        client()
            .get(format!("{}/ui/mappings", c.base))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = page().await;
    assert!(before.contains("id=\"reload-state\">ok"), "{before}");
    // minijinja escapes `/` in HTML.
    assert!(before.contains("sources&#x2f;stickycards.yaml"), "{before}");
    std::fs::write(
        folder.join("broken.yaml"),
        "mappings:\n  - name: x\n    sourse: y\n",
    )
    .unwrap();
    let mut after = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = page().await;
        if after.contains("was refused") {
            break;
        }
    }
    assert!(after.contains("was refused"), "{after}");
    let at = after.find("broken.yaml:").expect("the file named") + "broken.yaml:".len();
    let place: String = after[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ':')
        .collect();
    let parts: Vec<&str> = place.split(':').filter(|p| !p.is_empty()).collect();
    assert!(parts.len() >= 2, "no line:col after the file in {after}");
}

/// A held write that failed is listed (masked) and re-queued from the console,
/// through the store function `mapper replay --held` uses.
#[tokio::test]
async fn failed_held_writes_are_listed_and_re_queued() {
    let c = start(Some(TOKEN)).await;
    let store = Store::open(&c.db).await.unwrap();
    let held = store
        .hold_write(
            &mapper::store::HeldWrite {
                connection: "default".into(),
                target: "stickycards".into(),
                record_id: "cus_held".into(),
                op: "update_customer".into(),
                params: serde_json::json!({"email": "held.person@example.com"}),
                mapping: "sc-test".into(),
                event_row: 1,
                occurred_at: None,
            },
            3_600_000,
            |_, later| later.clone(),
        )
        .await
        .unwrap();
    let held = store
        .pending_writes()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.id == held.id)
        .unwrap();
    store
        .fail_write(&held, 5, "422 rejected for held.person@example.com")
        .await
        .unwrap();
    let session = login(&c).await;
    let page = get_html(&c, &session, "/ui/actions").await;
    assert!(page.contains("cus_held"));
    assert!(!page.contains("held.person@example.com"), "email shown");
    let csrf = csrf_of(&c, &session).await;
    let r = client()
        .post(format!("{}/ui/held/requeue", c.base))
        .header("cookie", &session)
        .header("accept", "text/html")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/actions?requeued=1&left=0");
    // Re-queued with fresh attempts. The running worker may already have
    // sent it again (Sticky Cards has no `cus_held`: it fails again, with
    // one attempt), so the attempts tell, not the state.
    let write = store
        .pending_writes()
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.id == held.id)
        .expect("the held write is kept");
    assert!(
        write.state != "failed" || write.attempts < 5,
        "{} after {} attempts",
        write.state,
        write.attempts
    );
}
