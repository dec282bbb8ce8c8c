//! Sync rules over real HTTP with both simulators: writes to Sticky Cards
//! held and merged per customer (coalescing), and fields refused to the
//! side that owns them (ownership).

use mapper::sandbox::ghl::{CustomFieldValue, GhlSandbox, GhlWebhooks};
use mapper::store::Store;
use std::process::Command;
use std::time::Duration;

mod common;
use common::{
    Serve, create_contact, create_custom_field as custom_field, post, serve_holding, serve_in,
    settle_within, simulators,
};

/// An Ed25519 key pair: the simulator signs with it, serve checks with the PEM.
fn signing_key() -> (ed25519_dalek::SigningKey, String) {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let key = ed25519_dalek::SigningKey::from_bytes(&[33u8; 32]);
    let pem = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    (key, pem)
}

async fn rest(s: &Serve, ghl: &GhlSandbox) {
    for _ in 0..3 {
        ghl.webhooks_idle().await;
        settle_within(&s.db, Duration::from_secs(30)).await;
    }
}

/// `mapper status --format json` of the serve's database.
fn status(s: &Serve) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mapper"))
        .args(["status", "--format", "json", "--database", &s.db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn set_bonus(ghl: &GhlSandbox, contact: &str, field: &str, value: i64) {
    ghl.edit_contact(contact, |c| {
        c.custom_fields.retain(|f| f.id != field);
        c.custom_fields.push(CustomFieldValue {
            id: field.to_string(),
            value: value.into(),
        });
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_to_sticky_cards_in_one_window_go_out_as_one_call_per_operation() {
    let (key, pem) = signing_key();
    let (ghl, sc) = simulators().await;
    let bonus = custom_field(&ghl, "Bonus Points", "bonus_points").await;
    let s = serve_holding(
        &ghl,
        &sc,
        &[("GHL_WEBHOOK_PUBLIC_KEY", pem.as_str())],
        "mappings",
        Duration::from_secs(4),
    )
    .await;
    ghl.set_webhooks(Some(GhlWebhooks::new(
        format!("{}/webhooks/ghl", s.base),
        key,
    )))
    .unwrap();

    // A contact created in GHL: the customer is created (a create cannot
    // wait: later writes need its id) and issued a card; its fields wait.
    let contact = create_contact(
        &ghl,
        serde_json::json!({
            "firstName": "Rosa", "lastName": "Diaz",
            "email": "rosa.diaz@example.com", "phone": "+14155550111"
        }),
    )
    .await;
    rest(&s, &ghl).await;
    assert_eq!(sc.customers().len(), 1);
    assert_eq!(sc.cards().len(), 1, "the card is issued at once");
    let card = sc.cards()[0].clone();

    // Within the window: three bonus changes (10, 25, 30) and two renames.
    set_bonus(&ghl, &contact, &bonus, 10);
    rest(&s, &ghl).await;
    set_bonus(&ghl, &contact, &bonus, 25);
    rest(&s, &ghl).await;
    ghl.edit_contact(&contact, |c| c.first_name = Some("Rosalind".into()))
        .unwrap();
    rest(&s, &ghl).await;
    set_bonus(&ghl, &contact, &bonus, 30);
    ghl.edit_contact(&contact, |c| c.first_name = Some("Rosalie".into()))
        .unwrap();
    rest(&s, &ghl).await;

    // Nothing has gone out yet; `mapper status` shows what waits.
    let balance_calls = |sc: &mapper::sandbox::StickyCardsSandbox| {
        sc.request_log()
            .into_iter()
            .filter(|r| r.path.ends_with("/balance"))
            .collect::<Vec<_>>()
    };
    assert!(balance_calls(&sc).is_empty(), "balance writes are held");
    let st = status(&s);
    let held = st["held_writes"].as_array().unwrap();
    let balance = held
        .iter()
        .find(|w| w["op"] == "change_card_balance")
        .unwrap_or_else(|| panic!("{st:#}"));
    assert_eq!(balance["writes"], 3, "{balance}");
    assert_eq!(balance["params"]["amount"], 30, "10 + 15 + 5: {balance}");
    assert_eq!(balance["state"], "waiting");
    let upsert = held
        .iter()
        .find(|w| w["op"] == "upsert_customer")
        .unwrap_or_else(|| panic!("{st:#}"));
    assert_eq!(upsert["params"]["first_name"], "Rosalie", "the latest wins");
    assert_eq!(
        upsert["params"]["email"], "rosa.diaz@example.com",
        "earlier values stay"
    );

    // After the window: one call each, with the merged values.
    for _ in 0..100 {
        if status(&s)["held_writes"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status(&s)["held_writes"].as_array().unwrap().is_empty());
    let calls = balance_calls(&sc);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0].body.as_ref().unwrap()["balance"],
        30,
        "{:?}",
        calls[0].body
    );
    assert_eq!(sc.card(&card.id).unwrap().balance, card.balance + 30);
    let upserts: Vec<_> = sc
        .request_log()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/customers")
        .collect();
    assert_eq!(upserts.len(), 2, "the create, then one upsert: {upserts:?}");
    let customer = sc.customers()[0].clone();
    assert_eq!(customer.first_name.as_deref(), Some("Rosalie"));
    assert_eq!(customer.email.as_deref(), Some("rosa.diaz@example.com"));

    // The sync log names the merged writes.
    let store = Store::open(&s.db).await.unwrap();
    let log = store
        .sync_log(None, Some(customer.id.as_str()))
        .await
        .unwrap();
    let flushed = log
        .iter()
        .find(|e| e.action == "change_card_balance" && e.status == Some(200))
        .unwrap_or_else(|| panic!("{log:?}"));
    assert!(
        flushed.request.starts_with("coalesced 3 write(s)"),
        "{}",
        flushed.request
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_field_its_owner_changed_later_is_refused_and_logged_as_a_conflict() {
    let (key, pem) = signing_key();
    let (ghl, sc) = simulators().await;
    let s = serve_in(
        &ghl,
        &sc,
        &[("GHL_WEBHOOK_PUBLIC_KEY", pem.as_str())],
        "mappings",
    )
    .await;
    ghl.set_webhooks(Some(GhlWebhooks::new(
        format!("{}/webhooks/ghl", s.base),
        key,
    )))
    .unwrap();
    let customer = sc.add_customer(
        Some("Ana"),
        Some("ana.lima@example.com"),
        Some("+14155552671"),
    );
    let at = |offset_s: i64| {
        (chrono::Utc::now() + chrono::Duration::seconds(offset_s))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let sc_event = |kind: &str, time: String, first_name: &str, balance: i64| {
        serde_json::json!({
            "event_type": kind,
            "timestamp": time,
            "customer_id": customer.id,
            "card_id": "card_5001",
            "email": "ana.lima@example.com",
            "phone_number": "+1 (415) 555-2671",
            "first_name": first_name,
            "last_name": "Lima",
            "card": {"id": "card_5001", "status": "installed", "balance": balance, "installed_date": "2025-03-03T14:10:45Z"},
        })
        .to_string()
    };

    // The Sticky Cards customer becomes a GHL contact (its event is 10 min old).
    let created = sc_event("CustomerCreatedEvent", at(-600), "Ana", 0);
    assert_eq!(
        post(&s, "stickycards", "?token=sc-token", created.as_bytes()).await,
        202
    );
    rest(&s, &ghl).await;
    assert_eq!(ghl.contacts().len(), 1);
    let contact = ghl.contacts()[0].id.clone();

    // Someone renames the contact in GHL, which owns contact information.
    ghl.edit_contact(&contact, |c| c.first_name = Some("Anabel".into()))
        .unwrap();
    rest(&s, &ghl).await;

    // A Sticky Cards event from before the rename arrives late: its card data
    // is written, its first name is refused.
    let late = sc_event("CardInstalledEvent", at(-300), "Ana", 40);
    assert_eq!(
        post(&s, "stickycards", "?token=sc-token", late.as_bytes()).await,
        202
    );
    rest(&s, &ghl).await;
    let now = ghl.contact(&contact).unwrap();
    assert_eq!(
        now.first_name.as_deref(),
        Some("Anabel"),
        "the owner's newer value stays"
    );
    let points = ghl
        .custom_fields()
        .into_iter()
        .find(|f| f.field_key == "contact.loyalty_points")
        .unwrap()
        .id;
    let value = |c: &mapper::sandbox::ghl::Contact, id: &str| {
        c.custom_fields
            .iter()
            .find(|f| f.id == id)
            .and_then(|f| f.value.as_f64())
    };
    assert_eq!(
        value(&now, &points),
        Some(40.0),
        "the rest of the event is synced"
    );
    let store = Store::open(&s.db).await.unwrap();
    let log = store.sync_log(None, Some(contact.as_str())).await.unwrap();
    let conflict = log
        .iter()
        .find(|e| e.action == "conflict")
        .unwrap_or_else(|| panic!("no conflict logged: {log:?}"));
    assert!(
        conflict.request.contains("ghl owns `first_name`")
            && conflict.request.contains("sent without them"),
        "{}",
        conflict.request
    );
    let counts = store.counts().await.unwrap();
    assert!(counts.iter().all(|c| c.state != "dead"), "{counts:?}");

    // A Sticky Cards change made after the rename goes through: the owner's
    // value is older than it.
    let newer = sc_event("CardInstalledEvent", at(5), "Ann", 41);
    assert_eq!(
        post(&s, "stickycards", "?token=sc-token", newer.as_bytes()).await,
        202
    );
    rest(&s, &ghl).await;
    let now = ghl.contact(&contact).unwrap();
    assert_eq!(now.first_name.as_deref(), Some("Ann"));
    assert_eq!(value(&now, &points), Some(41.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_write_the_owner_overtook_while_it_waited_is_refused_when_due() {
    use mapper::sandbox::StickyCardsWebhooks;
    let (key, pem) = signing_key();
    let (ghl, sc) = simulators().await;
    let s = serve_holding(
        &ghl,
        &sc,
        &[("GHL_WEBHOOK_PUBLIC_KEY", pem.as_str())],
        "mappings",
        Duration::from_secs(3),
    )
    .await;
    ghl.set_webhooks(Some(GhlWebhooks::new(
        format!("{}/webhooks/ghl", s.base),
        key,
    )))
    .unwrap();
    sc.set_webhooks(Some(StickyCardsWebhooks::new(format!(
        "{}/webhooks/stickycards?token=sc-token",
        s.base
    ))))
    .unwrap();
    let contact = create_contact(
        &ghl,
        serde_json::json!({ "firstName": "Noor",
            "email": "noor@example.com", "phone": "+14155550177"
        }),
    )
    .await;
    rest(&s, &ghl).await;
    sc.webhooks_idle().await;
    rest(&s, &ghl).await;
    let card = sc.cards()[0].clone();
    // Wait for the creation's held writes to go out first.
    for _ in 0..80 {
        if status(&s)["held_writes"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status_field = ghl
        .custom_fields()
        .into_iter()
        .find(|f| f.field_key == "contact.card_status")
        .map(|f| f.id);
    let status_field = match status_field {
        Some(id) => id,
        None => custom_field(&ghl, "Card Status", "card_status").await,
    };

    // Someone marks the card inactive in GHL: the status write is held...
    ghl.edit_contact(&contact, |c| {
        c.custom_fields.retain(|f| f.id != status_field);
        c.custom_fields.push(CustomFieldValue {
            id: status_field.clone(),
            value: "inactive".into(),
        });
    })
    .unwrap();
    rest(&s, &ghl).await;
    let held = status(&s)["held_writes"].clone();
    assert!(
        held.as_array()
            .unwrap()
            .iter()
            .any(|w| w["op"] == "set_card_status"),
        "{held:#}"
    );
    // ...and before it goes out, the card (Sticky Cards owns its status) is installed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sc.install_card(&card.id).unwrap();
    sc.webhooks_idle().await;
    rest(&s, &ghl).await;
    for _ in 0..80 {
        if status(&s)["held_writes"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status(&s)["held_writes"].as_array().unwrap().is_empty());
    let status_calls: Vec<_> = sc
        .request_log()
        .into_iter()
        .filter(|r| r.path.ends_with("/status"))
        .collect();
    assert!(
        status_calls.is_empty(),
        "the owner's newer status stays: {status_calls:?}"
    );
    assert_eq!(
        sc.card(&card.id).unwrap().status,
        "Active",
        "not deactivated"
    );
    let store = Store::open(&s.db).await.unwrap();
    let customer = sc.customers()[0].id.clone();
    let log = store.sync_log(None, Some(customer.as_str())).await.unwrap();
    assert!(
        log.iter().any(|e| e.action == "conflict"
            && e.request.starts_with("while held:")
            && e.request.contains("card_status")),
        "{log:#?}"
    );
}
