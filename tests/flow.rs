//! Delivery under load and failure, over real HTTP with the simulators:
//! the rate limit holds for a burst of thousands, a spent daily budget parks
//! events, one customer's events apply in order while customers run in
//! parallel, and a timed-out call is retried without duplicate effects.

use mapper::sandbox::ghl::{GhlConfig, GhlSandbox};
use mapper::sandbox::{Fault, LoggedRequest, RateLimit, StickyCardsConfig, StickyCardsSandbox};
use mapper::store::Store;
use std::time::{Duration, Instant};

mod common;
use common::{GhlSigner, copy_dir, serve_in, settle_within, simulators};

/// A copy of the shipped mapping set with `edit` applied to the GHL target
/// profile (rate limits, timeouts a test needs).
fn mappings_with_ghl(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for sub in ["mappings", "schemas", "examples"] {
        copy_dir(std::path::Path::new(sub), &copy.path().join(sub));
    }
    let ghl = copy.path().join("mappings/targets/ghl.yaml");
    let text = std::fs::read_to_string(&ghl).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&ghl, edited).unwrap();
    copy
}

fn with_rate_limit(text: String, limit: &str) -> String {
    text.replace(
        "rate_limit: { requests: 100, per_seconds: 10, daily: 200000, per: location }",
        limit,
    )
}

fn scan(customer: usize, second: usize) -> String {
    format!(
        r#"{{"event_type":"CardScannedEvent","timestamp":"2025-03-05T10:{:02}:{:02}Z","customer_id":"cus_{customer}","phone_number":"+1 415 555 {:04}","email":"c{customer}@example.com","first_name":"C{customer}"}}"#,
        second / 60,
        second % 60,
        1000 + customer
    )
}

/// Posts bodies to a source, `parallel` at a time; every answer must be 202.
async fn post_all(base: &str, source_query: &str, bodies: Vec<String>, parallel: usize) {
    let client = reqwest::Client::new();
    let url = format!("{base}/webhooks/{source_query}");
    let mut pending = bodies.into_iter();
    loop {
        let chunk: Vec<String> = pending.by_ref().take(parallel).collect();
        if chunk.is_empty() {
            break;
        }
        let mut tasks = Vec::new();
        for body in chunk {
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 202);
        }
    }
}

/// The most requests that arrived within any `window`.
fn busiest_window(log: &[LoggedRequest], window: Duration) -> usize {
    let mut times: Vec<Instant> = log.iter().map(|r| r.received).collect();
    times.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// The most requests being served at the same moment.
fn most_in_flight(log: &[LoggedRequest]) -> usize {
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    for r in log {
        edges.push((r.received, 1));
        edges.push((r.answered.unwrap_or(r.received), -1));
    }
    edges.sort_by_key(|(at, delta)| (*at, *delta));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

/// Two thousand webhooks for 40 customers arrive at once; the engine sends
/// them at the rate the profile declares (here 100 per second, the
/// simulator enforcing the same), so GHL never answers 429.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_two_thousand_drains_at_the_declared_rate_without_a_429() {
    let ghl = GhlSandbox::start(GhlConfig {
        rate_limit: RateLimit {
            max: 100,
            interval: Duration::from_secs(1),
            daily: Some(200_000),
        },
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    let sc = StickyCardsSandbox::start(StickyCardsConfig::default())
        .await
        .unwrap();
    let copy = mappings_with_ghl(|t| {
        with_rate_limit(
            t,
            "rate_limit: { requests: 100, per_seconds: 1, daily: 200000, per: location }",
        )
    });
    let mappings = copy.path().join("mappings");
    // The inactivity schedule would also write to GHL for these customers
    // (their scans are dated 2025) whenever its first tick comes: this test
    // counts the webhooks' calls only.
    std::fs::remove_dir_all(mappings.join("schedules-ghl")).unwrap();
    let s = serve_in(&ghl, &sc, &[], mappings.to_str().unwrap()).await;
    let customers = 40;
    let bodies: Vec<String> = (0..2000)
        .map(|i| scan(i % customers, i / customers))
        .collect();
    post_all(&s.base, "stickycards?token=sc-token", bodies, 64).await;
    let counts = settle_within(&s.db, Duration::from_secs(240)).await;
    let delivered: i64 = counts
        .iter()
        .filter(|c| c.state == "delivered" && c.source == "stickycards")
        .map(|c| c.count)
        .sum();
    assert_eq!(delivered, 2000, "{counts:?}");
    let log = ghl.request_log();
    let throttled = log.iter().filter(|r| r.status == Some(429)).count();
    assert_eq!(throttled, 0, "no 429 in {} requests", log.len());
    assert!(busiest_window(&log, Duration::from_secs(1)) <= 100);
    assert_eq!(ghl.contacts().len(), customers);
    // A linked customer costs one call per event: the first event of each
    // customer also searches and creates, and lookups are listed once.
    let per_event = log.len() as f64 / 2000.0;
    let mut kinds = std::collections::BTreeMap::new();
    for r in &log {
        let shape: String = r
            .path
            .split('/')
            .map(|part| if part.len() > 12 { "{id}" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        *kinds.entry(format!("{} {shape}", r.method)).or_insert(0) += 1;
    }
    eprintln!("{kinds:?}");
    assert!(
        log.len() <= 2000 + customers * 3 + 10,
        "{} calls for 2000 events ({per_event:.3} per event)",
        log.len()
    );
    assert!(
        most_in_flight(&log) > 1,
        "different customers are delivered in parallel"
    );
}

/// A spent daily budget parks events until the reset: no more calls, no
/// retries used up, nothing dead.
#[tokio::test(flavor = "multi_thread")]
async fn a_spent_daily_budget_parks_events_without_using_their_retries() {
    let (ghl, sc) = simulators().await;
    let copy = mappings_with_ghl(|t| {
        with_rate_limit(
            t,
            "rate_limit: { requests: 100, per_seconds: 10, daily: 12, per: location }",
        )
    });
    let mappings = copy.path().join("mappings");
    let s = serve_in(&ghl, &sc, &[], mappings.to_str().unwrap()).await;
    let bodies: Vec<String> = (0..10).map(|i| scan(i, i)).collect();
    post_all(&s.base, "stickycards?token=sc-token", bodies, 10).await;
    let store = Store::open(&s.db).await.unwrap();
    // Wait until every event is either delivered or parked.
    let mut counts = Vec::new();
    for _ in 0..150 {
        counts = store.counts().await.unwrap();
        let moving: i64 = counts
            .iter()
            .filter(|c| c.state == "received" || c.state == "processing")
            .map(|c| c.count)
            .sum();
        if moving == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = |name: &str| -> i64 {
        counts
            .iter()
            .filter(|c| c.state == name)
            .map(|c| c.count)
            .sum()
    };
    assert_eq!(state("dead"), 0, "{counts:?}");
    assert!(state("retrying") > 0, "the budget ran out: {counts:?}");
    assert_eq!(state("retrying") + state("delivered"), 10);
    assert!(
        ghl.request_log().len() <= 12,
        "{} calls",
        ghl.request_log().len()
    );
    let calls_then = ghl.request_log().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ghl.request_log().len(), calls_then, "paused: nothing sent");
    let errors = store.last_errors(10).await.unwrap();
    assert!(
        errors.iter().any(|e| e
            .4
            .contains("daily request budget of target `ghl` is spent")),
        "{errors:?}"
    );
    // Parked events wait for the next UTC day and have all their attempts left.
    let parked = sqlx_rows(
        &s.db,
        "SELECT attempts, next_attempt_at FROM events WHERE state = 'retrying'",
    )
    .await;
    let tomorrow = (chrono::Utc::now().timestamp() / 86_400 + 1) * 86_400_000;
    for (attempts, next) in parked {
        assert_eq!(attempts, 0);
        assert!(next >= tomorrow - 1_000, "{next} vs {tomorrow}");
    }
}

async fn sqlx_rows(db: &str, sql: &'static str) -> Vec<(i64, i64)> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(db).await.unwrap();
    sqlx::query(sql)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
        .collect()
}

/// Each customer's updates arrive in order and GHL sees them in that order,
/// while several customers are written at the same time; the mirror ends
/// with each customer's latest values.
#[tokio::test(flavor = "multi_thread")]
async fn one_customers_events_apply_in_order_while_customers_run_in_parallel() {
    let (ghl, sc) = simulators().await;
    let s = serve_in(&ghl, &sc, &[], "mappings").await;
    // Every GHL call takes a while, so order and parallelism both show.
    ghl.inject(Fault::Hang(Duration::from_millis(40)), 10_000);
    let customers = 6;
    let versions = 8;
    let mut bodies = Vec::new();
    for v in 0..versions {
        for c in 0..customers {
            bodies.push(format!(
                r#"{{"event_type":"CustomerCreatedEvent","timestamp":"2025-03-05T10:00:{v:02}Z","customer_id":"ord_{c}","phone_number":"+1 415 555 {:04}","email":"o{c}@example.com","first_name":"v{v}","last_name":"L"}}"#,
                2000 + c
            ));
        }
    }
    // Posted one version at a time, so arrival order is version order.
    for chunk in bodies.chunks(customers) {
        post_all(
            &s.base,
            "stickycards?token=sc-token",
            chunk.to_vec(),
            customers,
        )
        .await;
    }
    let counts = settle_within(&s.db, Duration::from_secs(60)).await;
    let store = Store::open(&s.db).await.unwrap();
    assert!(
        counts.iter().all(|c| c.state == "delivered"),
        "{counts:?} {:?}",
        store.last_errors(3).await.unwrap()
    );
    let log = ghl.request_log();
    for c in 0..customers {
        let contact = ghl.contact_by_email(&format!("o{c}@example.com")).unwrap();
        assert_eq!(contact.first_name.as_deref(), Some("v7"));
        // The first version creates the contact (the create carries its
        // fields); the others update it.
        let written: Vec<String> = log
            .iter()
            .filter(|r| {
                (r.method == "PUT" && r.path == format!("/contacts/{}", contact.id))
                    || (r.method == "POST"
                        && r.path == "/contacts/"
                        && r.body.as_ref().and_then(|b| b.get("email"))
                            == Some(&serde_json::json!(format!("o{c}@example.com"))))
            })
            .filter_map(|r| {
                r.body
                    .as_ref()?
                    .get("firstName")?
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        let expected: Vec<String> = (0..versions).map(|v| format!("v{v}")).collect();
        assert_eq!(written, expected, "customer {c} in arrival order");
    }
    assert!(
        most_in_flight(&log) > 1,
        "customers are written in parallel"
    );
    let mirror = store
        .mirror("default", "stickycards", "ord_3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mirror.fields["first_name"], "v7");
    assert_eq!(mirror.fields["email"], "o3@example.com");
    let links = store
        .links_of("default", "stickycards", "ord_3")
        .await
        .unwrap();
    let contact = ghl.contact_by_email("o3@example.com").unwrap();
    assert_eq!(links, vec![("ghl".to_string(), contact.id.clone())]);
}

/// A call that times out is retried; the retry finds what exists instead of
/// creating it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_call_is_retried_without_duplicate_effects() {
    let (ghl, sc) = simulators().await;
    let copy = mappings_with_ghl(|t| {
        t.replace(
            "error_message: $.message",
            "error_message: $.message\ntimeout_seconds: 1",
        )
    });
    let mappings = copy.path().join("mappings");
    let s = serve_in(&ghl, &sc, &[], mappings.to_str().unwrap()).await;
    // GHL creates the contact, but its answer comes after the timeout: the
    // retry must find that contact, not create a second one. Then the tag
    // call is lost the same way; adding a tag twice leaves one.
    ghl.inject_on(
        "POST /contacts/",
        Fault::AnswerLate(Duration::from_secs(3)),
        1,
    );
    let body =
        std::fs::read_to_string("examples/payloads/stickycards/CardInstalledEvent.json").unwrap();
    post_all(&s.base, "stickycards?token=sc-token", vec![body], 1).await;
    let counts = settle_within(&s.db, Duration::from_secs(60)).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");
    assert_eq!(ghl.contacts().len(), 1, "one contact after the retry");
    let creates = ghl
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/contacts/")
        .count();
    assert_eq!(
        creates, 1,
        "the retry found the contact the lost answer created"
    );
    let contact = &ghl.contacts()[0];
    assert_eq!(
        contact.tags.iter().filter(|t| *t == "card holder").count(),
        1
    );
    let store = Store::open(&s.db).await.unwrap();
    let log = store
        .sync_log(None, Some(contact.id.as_str()))
        .await
        .unwrap();
    assert!(!log.is_empty());
    let timed_out = sqlx_rows(
        &s.db,
        "SELECT attempt, COALESCE(status, 0) FROM sync_log WHERE error LIKE '%timed out%' OR error LIKE '%timeout%'",
    )
    .await;
    assert!(!timed_out.is_empty(), "the timeout is in the sync log");
}

/// A tag the engine already added is not sent again; when GHL says the
/// contact lost it (someone removed it by hand), the next event adds it back.
#[tokio::test(flavor = "multi_thread")]
async fn a_known_tag_is_not_sent_again_until_ghl_says_it_is_gone() {
    let signer = GhlSigner::new(5);
    let (ghl, sc) = simulators().await;
    let s = serve_in(
        &ghl,
        &sc,
        &[("GHL_WEBHOOK_PUBLIC_KEY", signer.pem.as_str())],
        "mappings",
    )
    .await;
    let installed = |minute: u32| {
        let mut v: serde_json::Value = serde_json::from_slice(
            &std::fs::read("examples/payloads/stickycards/CardInstalledEvent.json").unwrap(),
        )
        .unwrap();
        v["timestamp"] = format!("2025-03-03T14:{minute:02}:45Z").into();
        v.to_string()
    };
    // Tags go out with a tag call, or inside the create of a new contact.
    let tag_posts = || {
        ghl.request_log()
            .iter()
            .filter(|r| {
                r.method == "POST"
                    && (r.path.ends_with("/tags")
                        || r.body.as_ref().is_some_and(|b| b.get("tags").is_some()))
            })
            .count()
    };
    post_all(
        &s.base,
        "stickycards?token=sc-token",
        vec![installed(10)],
        1,
    )
    .await;
    settle_within(&s.db, Duration::from_secs(20)).await;
    assert_eq!(tag_posts(), 1);
    post_all(
        &s.base,
        "stickycards?token=sc-token",
        vec![installed(11)],
        1,
    )
    .await;
    settle_within(&s.db, Duration::from_secs(20)).await;
    assert_eq!(tag_posts(), 1, "the record says the contact has it");
    let contact = ghl.contacts()[0].clone();
    assert!(contact.tags.contains(&"card holder".to_string()));

    // Someone removes the tag in GHL; GHL tells the engine.
    let removed = reqwest::Client::new()
        .delete(format!("{}/contacts/{}/tags", ghl.base_url(), contact.id))
        .bearer_auth(ghl.token())
        .header("Version", "2021-07-28")
        .json(&serde_json::json!({"tags": ["card holder"]}))
        .send()
        .await
        .unwrap();
    assert!(removed.status().is_success());
    let mut update: serde_json::Value = serde_json::from_slice(
        &std::fs::read("examples/payloads/ghl/ContactTagUpdate.json").unwrap(),
    )
    .unwrap();
    update["id"] = contact.id.clone().into();
    update["locationId"] = ghl.location_id().into();
    update["tags"] = serde_json::json!([]);
    update["timestamp"] = chrono::Utc::now().to_rfc3339().into();
    let status = signer.post(&s.base, &update).await;
    assert_eq!(status, 202);
    let counts = settle_within(&s.db, Duration::from_secs(20)).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");

    post_all(
        &s.base,
        "stickycards?token=sc-token",
        vec![installed(12)],
        1,
    )
    .await;
    settle_within(&s.db, Duration::from_secs(20)).await;
    assert_eq!(tag_posts(), 2, "added again");
    assert!(
        ghl.contact(&contact.id)
            .unwrap()
            .tags
            .contains(&"card holder".to_string())
    );
}

/// `bonus_points` going from 10 to 25 in GHL adds 10, then 15 points to the
/// card: the change is computed against the mirror of the GHL contact, which
/// reads the custom field by key although GHL sends it by id. A contact
/// update that changes no field a mapping cares about calls nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bonus_points_changes_add_their_difference_to_the_card() {
    let signer = GhlSigner::new(7);
    let (ghl, sc) = simulators().await;
    // The location already has the field (a person made it in GHL).
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/locations/{}/customFields",
            ghl.base_url(),
            ghl.location_id()
        ))
        .bearer_auth(ghl.token())
        .header("Version", "2021-07-28")
        .json(&serde_json::json!({"name": "Bonus Points", "dataType": "NUMERICAL", "model": "contact"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let field_id = created["customField"]["id"].as_str().unwrap().to_string();
    let s = serve_in(
        &ghl,
        &sc,
        &[("GHL_WEBHOOK_PUBLIC_KEY", signer.pem.as_str())],
        "mappings",
    )
    .await;

    let mut contact: serde_json::Value =
        serde_json::from_slice(&std::fs::read("examples/payloads/ghl/ContactCreate.json").unwrap())
            .unwrap();
    contact["locationId"] = ghl.location_id().into();
    contact["customFields"] = serde_json::json!([]);
    let send = |kind: &str, n: u32, fields: serde_json::Value| {
        let mut v = contact.clone();
        v["type"] = kind.into();
        v["webhookId"] = format!("wh-{kind}-{n}").into();
        v["timestamp"] = chrono::Utc::now().to_rfc3339().into();
        v["customFields"] = fields;
        v
    };
    assert_eq!(
        signer
            .post(&s.base, &send("ContactCreate", 0, serde_json::json!([])))
            .await,
        202
    );
    settle_within(&s.db, Duration::from_secs(20)).await;
    let cards = sc.cards();
    assert_eq!(cards.len(), 1, "the new customer got a card");
    let start = cards[0].balance;

    let points = |n: i64| serde_json::json!([{ "id": field_id, "value": n }]);
    for (n, value) in [(1u32, 10i64), (2, 25)] {
        assert_eq!(
            signer
                .post(&s.base, &send("ContactUpdate", n, points(value)))
                .await,
            202
        );
        let counts = settle_within(&s.db, Duration::from_secs(20)).await;
        assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");
        assert_eq!(
            sc.cards()[0].balance,
            start + value,
            "after bonus_points = {value}"
        );
    }
    // The same value again (an update of another field): no balance call.
    let before = sc.request_log().len();
    assert_eq!(
        signer
            .post(&s.base, &send("ContactUpdate", 3, points(25)))
            .await,
        202
    );
    settle_within(&s.db, Duration::from_secs(20)).await;
    assert_eq!(sc.cards()[0].balance, start + 25);
    assert_eq!(
        sc.request_log().len(),
        before,
        "nothing changed that a mapping syncs"
    );
}

/// GHL's webhook for a contact as the simulator holds it now (what GHL
/// sends after a change, the engine's own included).
fn contact_webhook(ghl: &GhlSandbox, id: &str, kind: &str, n: u32, at: &str) -> serde_json::Value {
    let c = ghl.contact(id).unwrap();
    serde_json::json!({
        "type": kind,
        "locationId": ghl.location_id(),
        "id": c.id,
        "firstName": c.first_name,
        "lastName": c.last_name,
        "email": c.email,
        "phone": c.phone,
        "tags": c.tags,
        "customFields": c.custom_fields.iter().map(|f| serde_json::json!({"id": f.id, "value": f.value})).collect::<Vec<_>>(),
        "timestamp": at,
        "webhookId": format!("wh-{kind}-{n}"),
    })
}

/// The webhooks GHL sends back after the engine wrote a contact are echoes:
/// recorded as such, nothing synced to Sticky Cards. A webhook older than
/// what the engine wrote is stale. A real change made afterwards in GHL is
/// synced.
#[tokio::test(flavor = "multi_thread")]
async fn the_engines_own_writes_coming_back_are_echoes() {
    let signer = GhlSigner::new(11);
    let (ghl, sc) = simulators().await;
    let s = serve_in(
        &ghl,
        &sc,
        &[("GHL_WEBHOOK_PUBLIC_KEY", signer.pem.as_str())],
        "mappings",
    )
    .await;
    // The customer the Sticky Cards event is about exists there.
    let customer = sc.add_customer(
        Some("Ana"),
        Some("ana.lima@example.com"),
        Some("+14155552671"),
    );
    let mut installed: serde_json::Value = serde_json::from_slice(
        &std::fs::read("examples/payloads/stickycards/CardInstalledEvent.json").unwrap(),
    )
    .unwrap();
    installed["customer_id"] = customer.id.clone().into();
    post_all(
        &s.base,
        "stickycards?token=sc-token",
        vec![installed.to_string()],
        1,
    )
    .await;
    settle_within(&s.db, Duration::from_secs(20)).await;
    let id = ghl.contacts()[0].id.clone();
    let now = || chrono::Utc::now().to_rfc3339();

    // What GHL sends after the create, the PUT and the tag call.
    for (n, kind) in ["ContactCreate", "ContactUpdate", "ContactTagUpdate"]
        .iter()
        .enumerate()
    {
        let hook = contact_webhook(&ghl, &id, kind, n as u32, &now());
        assert_eq!(signer.post(&s.base, &hook).await, 202);
    }
    let counts = settle_within(&s.db, Duration::from_secs(20)).await;
    let ghl_states: Vec<&str> = counts
        .iter()
        .filter(|c| c.source == "ghl")
        .map(|c| c.state.as_str())
        .collect();
    assert!(ghl_states.iter().all(|s| *s == "echo"), "{counts:?}");
    assert!(
        sc.request_log().is_empty(),
        "nothing bounced to Sticky Cards"
    );

    // An update stamped before the engine's write, with an older email: stale.
    let mut old = contact_webhook(&ghl, &id, "ContactUpdate", 10, "2020-01-01T00:00:00Z");
    old["email"] = "old@example.com".into();
    // GHL's webhooks older than 90 minutes are refused at the door; a late
    // retry (GHL retries a 429 about every 10 minutes) is what this stands
    // for, so the check is on the event time the engine stores, not on
    // arrival.
    old["timestamp"] = (chrono::Utc::now() - chrono::Duration::seconds(40 * 60))
        .to_rfc3339()
        .into();
    assert_eq!(signer.post(&s.base, &old).await, 202);
    let counts = settle_within(&s.db, Duration::from_secs(20)).await;
    assert!(
        counts
            .iter()
            .any(|c| c.source == "ghl" && c.state == "stale"),
        "{counts:?}"
    );
    // Past GHL's last retry, a signed body is a replay: refused.
    let mut replayed = contact_webhook(&ghl, &id, "ContactUpdate", 12, &now());
    replayed["timestamp"] = (chrono::Utc::now() - chrono::Duration::seconds(2 * 3600))
        .to_rfc3339()
        .into();
    assert_eq!(signer.post(&s.base, &replayed).await, 401);
    assert!(sc.request_log().is_empty());

    // A person changes the email in GHL: a real change, synced.
    let mut real = contact_webhook(&ghl, &id, "ContactUpdate", 11, &now());
    real["email"] = "ana.new@example.com".into();
    assert_eq!(signer.post(&s.base, &real).await, 202);
    let counts = settle_within(&s.db, Duration::from_secs(20)).await;
    assert!(
        counts.iter().any(|c| c.source == "ghl"
            && c.event_type == "ContactUpdate"
            && c.state == "delivered"),
        "{counts:?}"
    );
    assert!(
        !sc.request_log().is_empty(),
        "the change went to Sticky Cards"
    );
}

/// The shipped `inactive-30d` schedule (run every second here): a customer
/// whose last activity is long ago gets tag "inactive 30d" and
/// inactive_days on GHL; new activity removes the tag. A tick evaluated
/// twice (two replicas) stores its events once.
#[tokio::test(flavor = "multi_thread")]
async fn the_inactivity_schedule_tags_and_untags_contacts() {
    let copy = tempfile::tempdir().unwrap();
    for sub in ["mappings", "schemas", "examples"] {
        copy_dir(std::path::Path::new(sub), &copy.path().join(sub));
    }
    let project = copy.path().join("mappings/mapper.yaml");
    let text = std::fs::read_to_string(&project).unwrap();
    std::fs::write(&project, text.replace("every: 1h", "every: 1s")).unwrap();
    let mappings = copy.path().join("mappings");
    let (ghl, sc) = simulators().await;
    let s = serve_in(&ghl, &sc, &[], mappings.to_str().unwrap()).await;
    let installed =
        std::fs::read_to_string("examples/payloads/stickycards/CardInstalledEvent.json").unwrap();
    post_all(&s.base, "stickycards?token=sc-token", vec![installed], 1).await;
    let has_tag = |tag: &str| {
        ghl.contacts()
            .first()
            .is_some_and(|c| c.tags.iter().any(|t| t == tag))
    };
    let inactive_days = || {
        let contact = ghl.contacts().first().cloned()?;
        let field = ghl
            .custom_fields()
            .into_iter()
            .find(|d| d.field_key.ends_with("inactive_days"))?;
        contact
            .custom_fields
            .iter()
            .find(|f| f.id == field.id)
            .and_then(|f| f.value.as_f64())
    };
    let mut waited = 0;
    while !(has_tag("inactive 30d") && inactive_days().is_some()) && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert!(has_tag("inactive 30d"), "{:?}", ghl.contacts());
    assert!(
        inactive_days().is_some_and(|d| d >= 30.0),
        "{:?}",
        inactive_days()
    );

    // Activity today: the next tick removes the tag.
    let scanned = format!(
        r#"{{"event_type":"CardScannedEvent","timestamp":"{}","customer_id":"cus_1001","card_id":"card_5001"}}"#,
        chrono::Utc::now().to_rfc3339()
    );
    post_all(&s.base, "stickycards?token=sc-token", vec![scanned], 1).await;
    waited = 0;
    while has_tag("inactive 30d") && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert!(!has_tag("inactive 30d"), "{:?}", ghl.contacts());
    assert!(has_tag("card holder"), "other tags stay");

    // Two replicas on one tick: the second stores nothing new. (Its own
    // database, so the running server's ticks do not interleave.)
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display()))
        .await
        .unwrap();
    let compiled = mapper::config::compile::compile_dir(&mappings);
    let program = compiled.program.expect("the copy compiles");
    let rule = &program.schedules[0];
    let tick = 42;
    let mut old = serde_json::Map::new();
    old.insert("email".into(), "x@example.com".into());
    store
        .update_mirror("default", "stickycards", "cus_old", &old, Some(1_000), 0)
        .await
        .unwrap();
    let first = mapper::worker::schedule::run_tick(&store, &program, rule, "default", tick)
        .await
        .unwrap();
    assert_eq!(first.0, 1, "cus_old is inactive");
    let events = |store: Store| async move {
        store
            .counts()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.source == "schedule")
            .map(|c| c.count)
            .sum::<i64>()
    };
    let before = events(store.clone()).await;
    mapper::worker::schedule::run_tick(&store, &program, rule, "default", tick)
        .await
        .unwrap();
    assert_eq!(
        events(store.clone()).await,
        before,
        "the same tick stores nothing twice"
    );
    // A replica that read the rule's state before the first one wrote it
    // raises the event again; the inbox's de-duplication key keeps one.
    let mut unseen = serde_json::Map::new();
    unseen.insert("holds".into(), false.into());
    store
        .update_mirror(
            "default",
            "schedule/inactive-30d",
            "cus_old",
            &unseen,
            Some(mapper::store::now_ms()),
            0,
        )
        .await
        .unwrap();
    let raced = mapper::worker::schedule::run_tick(&store, &program, rule, "default", tick)
        .await
        .unwrap();
    assert_eq!(raced.0, 1, "the second replica raised it too");
    assert_eq!(
        events(store.clone()).await,
        before,
        "and it was stored once"
    );
}
