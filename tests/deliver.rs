//! End to end over real HTTP: webhooks posted to `mapper serve` end up in the
//! GHL and Sticky Cards simulators, through the durable inbox and the worker.

use mapper::sandbox::ghl::GhlSandbox;
use mapper::sandbox::{Fault, StickyCardsSandbox};
use mapper::store::Store;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{Serve, copy_dir, post, serve_in, settle, simulators};

async fn serve(ghl: &GhlSandbox, sc: &StickyCardsSandbox) -> Serve {
    serve_in(ghl, sc, &[], "mappings").await
}

async fn serve_with(
    ghl: &GhlSandbox,
    sc: &StickyCardsSandbox,
    extra_env: &[(&str, &str)],
) -> Serve {
    serve_in(ghl, sc, extra_env, "mappings").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_card_installed_webhook_becomes_a_ghl_contact_with_fields_and_tag() {
    let (ghl, sc) = simulators().await;
    let s = serve(&ghl, &sc).await;
    let body = std::fs::read("examples/payloads/stickycards/CardInstalledEvent.json").unwrap();
    assert_eq!(post(&s, "stickycards", "?token=sc-token", &body).await, 202);
    let counts = settle(&s.db).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");

    let contacts = ghl.contacts();
    assert_eq!(contacts.len(), 1, "one contact");
    let contact = &contacts[0];
    assert_eq!(contact.phone.as_deref(), Some("+14155552671"));
    assert_eq!(contact.email.as_deref(), Some("ana.lima@example.com"));
    assert_eq!(contact.first_name.as_deref(), Some("Ana"));
    assert_eq!(contact.tags, vec!["card holder".to_string()]);
    let field = |key: &str| {
        let f = ghl
            .custom_fields()
            .into_iter()
            .find(|f| f.field_key == format!("contact.{key}"))
            .unwrap_or_else(|| panic!("custom field {key} was provisioned"));
        contact.custom_field(&f.id).cloned()
    };
    assert_eq!(
        field("stickycards_customer_id"),
        Some(serde_json::json!("cus_1001"))
    );
    assert_eq!(
        field("card_installed"),
        Some(serde_json::json!("installed"))
    );
    assert_eq!(field("loyalty_points"), Some(serde_json::json!(0)));
    assert_eq!(
        field("card_installed_date"),
        Some(serde_json::json!("2025-03-03"))
    );

    // The same webhook again changes nothing; a new event for the same customer reuses the link.
    assert_eq!(post(&s, "stickycards", "?token=sc-token", &body).await, 200);
    let balance =
        std::fs::read("examples/payloads/stickycards/CardBalanceUpdatedEvent.json").unwrap();
    assert_eq!(
        post(&s, "stickycards", "?token=sc-token", &balance).await,
        202
    );
    settle(&s.db).await;
    let contacts = ghl.contacts();
    assert_eq!(contacts.len(), 1, "still one contact");
    assert_eq!(
        field_value(&ghl, &contacts[0], "loyalty_points"),
        Some(serde_json::json!(120))
    );
    let searches = ghl
        .request_log()
        .iter()
        .filter(|r| r.path.starts_with("/contacts/search/duplicate"))
        .count();
    assert_eq!(
        searches, 2,
        "the second event is linked: no new search (phone, then email, once)"
    );
    let metrics = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mapper_deliveries_total{outcome=\"delivered\",connection=\"default\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "mapper_target_requests_total{target=\"ghl\",status=\"2xx\",connection=\"default\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("mapper_target_request_seconds_count{target=\"ghl\",status=\"2xx\",connection=\"default\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mapper_target_calls_per_event_count{connection=\"default\"} 2"),
        "{metrics}"
    );

    // The operator asks by the Sticky Cards id: the link, the mirror and the
    // attempts made on the linked contact.
    let out = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(["log", "--database", &s.db, "--customer", "cus_1001"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let contact = &ghl.contacts()[0];
    assert!(
        text.contains(&format!(
            "customer cus_1001 of stickycards: linked to ghl {}",
            contact.id
        )),
        "{text}"
    );
    assert!(text.contains("card_status: \"installed\""), "{text}");
    assert!(text.contains("upsert_contact → ghl [200]"), "{text}");
}

fn field_value(
    ghl: &GhlSandbox,
    contact: &mapper::sandbox::ghl::Contact,
    key: &str,
) -> Option<serde_json::Value> {
    let id = ghl
        .custom_fields()
        .into_iter()
        .find(|f| f.field_key == format!("contact.{key}"))?
        .id;
    contact.custom_field(&id).cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_failing_with_500_then_recovering_gets_the_event_once() {
    let (ghl, sc) = simulators().await;
    ghl.inject_on("/contacts/", Fault::Status(500), 1);
    let s = serve(&ghl, &sc).await;
    let body = std::fs::read("examples/payloads/stickycards/CardScannedEvent.json").unwrap();
    assert_eq!(post(&s, "stickycards", "?token=sc-token", &body).await, 202);
    // The first attempt fails; the retry comes after the backoff (about 2 s).
    let counts = settle(&s.db).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");
    assert_eq!(
        ghl.contacts().len(),
        1,
        "exactly one contact despite the retry"
    );
    let store = Store::open(&s.db).await.unwrap();
    let log = store.sync_log(Some(1), None).await.unwrap();
    assert!(
        log.iter().any(|e| e.status == Some(500)),
        "the failed attempt is in the sync log: {log:?}"
    );
}

/// A GHL contact created in GHL (signed with a test Ed25519 key) becomes a
/// Sticky Cards customer, and gets a card because this event created it.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_ghl_contact_create_becomes_a_sticky_cards_customer_with_a_card() {
    use base64::Engine;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use ed25519_dalek::{Signer, SigningKey};
    let signing = SigningKey::from_bytes(&[9u8; 32]);
    let pem = signing
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    let (ghl, sc) = simulators().await;
    let s = serve_with(&ghl, &sc, &[("GHL_WEBHOOK_PUBLIC_KEY", pem.as_str())]).await;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read("examples/payloads/ghl/ContactCreate.json").unwrap())
            .unwrap();
    payload["timestamp"] = serde_json::json!(chrono::Utc::now().to_rfc3339());
    let body = serde_json::to_vec(&payload).unwrap();
    let signature =
        base64::engine::general_purpose::STANDARD.encode(signing.sign(&body).to_bytes());
    let post_signed = |sig: String| {
        reqwest::Client::new()
            .post(format!("{}/webhooks/ghl", s.base))
            .header("content-type", "application/json")
            .header("x-ghl-signature", sig)
            .body(body.clone())
            .send()
    };
    assert_eq!(
        post_signed("AAAA".into()).await.unwrap().status(),
        401,
        "a bad signature is refused"
    );
    assert_eq!(post_signed(signature).await.unwrap().status(), 202);
    let counts = settle(&s.db).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");
    let customers = sc.customers();
    assert_eq!(customers.len(), 1, "{customers:?}");
    let email = payload["email"].as_str().unwrap_or_default().to_lowercase();
    assert_eq!(
        customers[0].email.as_deref().map(str::to_lowercase),
        Some(email)
    );
    let cards = sc.cards();
    assert_eq!(
        cards.len(),
        1,
        "a card is issued to the new customer: {cards:?}"
    );
    assert_eq!(
        cards[0].customer_id.as_deref(),
        Some(customers[0].id.as_str())
    );
}

/// `mapper demo` runs the whole pipeline on a fresh machine with no credentials.
#[test]
fn the_demo_delivers_every_example_and_prints_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("demo.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(["demo", "--database", &db])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("GHL location loc_demo: 4 contacts"), "{text}");
    assert!(text.contains("tags: card expired, referrer, vip"), "{text}");
    assert!(text.contains("Sticky Cards: 1 customers"), "{text}");
    assert!(text.contains("push: Your reward is ready!"), "{text}");
    let inbox: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("inbox:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(!inbox.is_empty(), "{text}");
    assert!(
        inbox
            .iter()
            .all(|l| l.contains("delivered") || l.contains("unmapped")),
        "nothing dead or waiting:\n{text}"
    );
}

/// Twenty events for one new customer arriving together create one contact.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_for_one_new_customer_creates_exactly_one_contact() {
    let (ghl, sc) = simulators().await;
    let s = serve(&ghl, &sc).await;
    let mut posts = Vec::new();
    for i in 0..20 {
        let body = format!(
            r#"{{"event_type":"CardScannedEvent","timestamp":"2025-03-05T10:00:{i:02}Z","customer_id":"cus_77","phone_number":"+1 415 555 0177","email":"burst@example.com"}}"#
        );
        let url = format!("{}/webhooks/stickycards?token=sc-token", s.base);
        posts.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    for p in posts {
        assert_eq!(p.await.unwrap(), 202);
    }
    let counts = settle(&s.db).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");
    let contacts = ghl.contacts();
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(contacts[0].phone.as_deref(), Some("+14155550177"));
    let creates = ghl
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/contacts/")
        .count();
    assert_eq!(creates, 1, "one create, then the stored link");
}

/// An event that arrived before its mapping existed is kept, and delivered
/// once the mapping is added (hot reload) and the event replayed.
#[tokio::test(flavor = "multi_thread")]
async fn an_unmapped_event_is_delivered_after_its_mapping_is_added_and_replayed() {
    let copy = tempfile::tempdir().unwrap();
    for sub in ["mappings", "schemas", "examples"] {
        copy_dir(std::path::Path::new(sub), &copy.path().join(sub));
    }
    let mappings = copy.path().join("mappings");
    let held = copy.path().join("engagement.yaml");
    std::fs::rename(mappings.join("stickycards-ghl/engagement.yaml"), &held).unwrap();
    std::fs::remove_file(mappings.join("stickycards-ghl/engagement.test.yaml")).unwrap();
    let (ghl, sc) = simulators().await;
    let s = serve_in(&ghl, &sc, &[], mappings.to_str().unwrap()).await;
    let body = std::fs::read("examples/payloads/stickycards/CardScannedEvent.json").unwrap();
    assert_eq!(post(&s, "stickycards", "?token=sc-token", &body).await, 202);
    let counts = settle(&s.db).await;
    assert!(counts.iter().all(|c| c.state == "unmapped"), "{counts:?}");
    assert!(ghl.contacts().is_empty());

    std::fs::rename(&held, mappings.join("stickycards-ghl/engagement.yaml")).unwrap();
    let http = reqwest::Client::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ready: serde_json::Value = http
            .get(format!("{}/readyz", s.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["mappings"].as_u64().unwrap_or(0) >= 35 {
            break;
        }
    }
    let replay = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(["replay", "--database", &s.db, "--state", "unmapped"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout).trim(),
        "re-queued 1 event(s)"
    );
    let counts = settle(&s.db).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");
    assert_eq!(ghl.contacts().len(), 1);
}
