//! Two-way sync comes to rest: both simulators send their webhooks back to
//! `mapper serve`, as the real platforms do after every change (the engine's
//! own included). Changes are made on both sides as people would; after each
//! one the system must go quiet with a bounded number of API calls, no event
//! dead, and both sides equal.

use mapper::sandbox::ghl::{GhlSandbox, GhlWebhooks};
use mapper::sandbox::{StickyCardsSandbox, StickyCardsWebhooks};
use mapper::store::Store;
use std::time::Duration;

mod common;
use common::{Serve, serve_in, settle_within, simulators};

/// Waits until the engine has nothing left to do and neither simulator has
/// a webhook left to send; returns how many events the engine stored.
async fn rest(s: &Serve, ghl: &GhlSandbox, sc: &StickyCardsSandbox) -> i64 {
    let store = Store::open(&s.db).await.unwrap();
    let mut last = -1;
    for _ in 0..60 {
        ghl.webhooks_idle().await;
        sc.webhooks_idle().await;
        settle_within(&s.db, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let total: i64 = store.counts().await.unwrap().iter().map(|c| c.count).sum();
        if total == last && ghl.webhooks_pending() == 0 && sc.webhooks_pending() == 0 {
            return total;
        }
        last = total;
    }
    panic!("the system did not come to rest: events keep coming");
}

/// API calls so far, leaving out the one-time listing and creation of GHL
/// custom fields and pipelines (cached for the life of the process).
fn calls(ghl: &GhlSandbox, sc: &StickyCardsSandbox) -> usize {
    let one_time = |path: &str| path.ends_with("/customFields") || path.ends_with("/pipelines");
    ghl.request_log()
        .iter()
        .filter(|r| !one_time(&r.path))
        .count()
        + sc.request_log().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_on_both_sides_come_to_rest_with_both_sides_equal() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let key = ed25519_dalek::SigningKey::from_bytes(&[21u8; 32]);
    let pem = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    let (ghl, sc) = simulators().await;
    let http = reqwest::Client::new();
    // The location already has the custom field people use to give points.
    http.post(format!(
        "{}/locations/{}/customFields",
        ghl.base_url(),
        ghl.location_id()
    ))
    .bearer_auth(ghl.token())
    .header("Version", "2021-07-28")
    .json(&serde_json::json!({"name": "Bonus Points", "dataType": "NUMERICAL", "model": "contact"}))
    .send()
    .await
    .unwrap();
    let bonus_field = ghl
        .custom_fields()
        .into_iter()
        .find(|f| f.field_key == "contact.bonus_points")
        .unwrap()
        .id;
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
    sc.set_webhooks(Some(StickyCardsWebhooks::new(format!(
        "{}/webhooks/stickycards?token=sc-token",
        s.base
    ))))
    .unwrap();
    let dead = |s: &Serve| {
        let db = s.db.clone();
        async move {
            Store::open(&db)
                .await
                .unwrap()
                .counts()
                .await
                .unwrap()
                .iter()
                .filter(|c| c.state == "dead")
                .map(|c| c.count)
                .sum::<i64>()
        }
    };
    let mut report = Vec::new();

    // 1. Someone adds a contact in GHL: it becomes a Sticky Cards customer with a card.
    let before = calls(&ghl, &sc);
    let created: serde_json::Value = http
        .post(format!("{}/contacts/", ghl.base_url()))
        .bearer_auth(ghl.token())
        .header("Version", "2021-07-28")
        .json(&serde_json::json!({
            "locationId": ghl.location_id(),
            "firstName": "Rosa", "lastName": "Diaz",
            "email": "rosa.diaz@example.com", "phone": "+14155550111"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let contact_id = created["contact"]["id"].as_str().unwrap().to_string();
    let events_after_create = rest(&s, &ghl, &sc).await;
    report.push(("contact created in GHL", calls(&ghl, &sc) - before - 1));
    assert_eq!(dead(&s).await, 0);
    let customers = sc.customers();
    assert_eq!(customers.len(), 1, "{customers:?}");
    assert_eq!(sc.cards().len(), 1, "one card issued");
    assert_eq!(ghl.contacts().len(), 1, "no second contact from the echoes");

    // 2. Someone tags the contact "VIP" in GHL: it becomes a segment.
    let before = calls(&ghl, &sc);
    ghl.edit_contact(&contact_id, |c| c.tags.push("VIP".into()))
        .unwrap();
    rest(&s, &ghl, &sc).await;
    report.push(("tag added in GHL", calls(&ghl, &sc) - before));
    assert_eq!(sc.customers()[0].segments, vec!["vip".to_string()]);

    // 3. Someone gives 10 bonus points in GHL: the card gets them, and GHL
    //    shows the new balance in loyalty_points.
    let before = calls(&ghl, &sc);
    let start = sc.cards()[0].balance;
    ghl.edit_contact(&contact_id, |c| {
        c.custom_fields
            .push(mapper::sandbox::ghl::CustomFieldValue {
                id: bonus_field.clone(),
                value: 10.into(),
            })
    })
    .unwrap();
    rest(&s, &ghl, &sc).await;
    report.push(("bonus points set in GHL", calls(&ghl, &sc) - before));
    assert_eq!(sc.cards()[0].balance, start + 10);

    // 4. Staff change the balance in Sticky Cards: GHL shows it.
    let before = calls(&ghl, &sc);
    let card = sc.cards()[0].id.clone();
    sc.set_card_balance(&card, 42).unwrap();
    let total = rest(&s, &ghl, &sc).await;
    report.push(("balance changed in Sticky Cards", calls(&ghl, &sc) - before));
    assert_eq!(dead(&s).await, 0);

    // Both sides agree.
    let contact = ghl.contact(&contact_id).unwrap();
    let customer = sc.customers()[0].clone();
    assert_eq!(contact.email, customer.email);
    assert_eq!(contact.phone, customer.phone);
    assert_eq!(contact.first_name, customer.first_name);
    assert_eq!(contact.last_name, customer.last_name);
    let points_field = ghl
        .custom_fields()
        .into_iter()
        .find(|f| f.field_key == "contact.loyalty_points")
        .unwrap()
        .id;
    let points = contact
        .custom_fields
        .iter()
        .find(|f| f.id == points_field)
        .and_then(|f| f.value.as_f64());
    assert_eq!(points, Some(42.0), "GHL shows the card's balance");

    // Every change was settled by a bounded number of calls: none loops.
    eprintln!(
        "API calls per change: {report:?}; events stored: {events_after_create} after the create, {total} in all"
    );
    // The floor is one call per change on the other side; the create costs
    // the matching (two searches on Sticky Cards, one on GHL), the customer,
    // its card, and the two writes of its ids back to GHL.
    let bounds = [8, 1, 2, 1];
    for ((change, n), bound) in report.iter().zip(bounds) {
        assert!(*n <= bound, "{change}: {n} calls (at most {bound})");
    }
    let store = Store::open(&s.db).await.unwrap();
    let echoes: i64 = store
        .counts()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.state == "echo")
        .map(|c| c.count)
        .sum();
    assert!(echoes > 0, "the engine's own writes came back as echoes");
}
