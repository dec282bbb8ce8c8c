//! GHL `bonus_points` → Sticky Cards card balance on the seed profile, over
//! real HTTP. Seed 000 names `PUT /cards/{id}/balance` with `balance
//! (integer)` only; the simulator refuses any other field, as a strict server
//! would. A delta must then arrive as the card's new absolute balance: its
//! last-known balance (from the card's own webhooks) plus the delta.

use mapper::sandbox::StickyCardsWebhooks;
use mapper::sandbox::ghl::{CustomFieldValue, GhlSandbox, GhlWebhooks};
use mapper::store::Store;
use std::time::Duration;

const REST: Duration = Duration::from_secs(60);

mod common;
use common::{create_contact, create_custom_field, rest_within, serve_in, simulators};

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
async fn bonus_points_reach_the_card_as_its_new_absolute_balance() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let key = ed25519_dalek::SigningKey::from_bytes(&[44u8; 32]);
    let pem = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    let (ghl, sc) = simulators().await;
    let bonus = create_custom_field(&ghl, "Bonus Points", "bonus_points").await;
    // Writes go out at once: the balance read must be the one at delivery.
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

    let store = Store::open(&s.db).await.unwrap();
    let contact = create_contact(
        &ghl,
        serde_json::json!({"firstName": "Ana", "lastName": "Lima",
                           "email": "ana.lima@example.com", "phone": "+14155550123"}),
    )
    .await;
    rest_within(&store, &ghl, &sc, REST).await;
    let card = sc
        .cards()
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no card issued"));

    // A cashier sets the card to 40; the card's webhook tells the engine.
    sc.set_card_balance(&card.id, 40).unwrap();
    rest_within(&store, &ghl, &sc, REST).await;

    // 15 bonus points in GHL: the card holds 55.
    set_bonus(&ghl, &contact, &bonus, 15);
    rest_within(&store, &ghl, &sc, REST).await;
    assert_eq!(sc.card(&card.id).unwrap().balance, 55);

    // Back to 5 (10 taken away): 45.
    set_bonus(&ghl, &contact, &bonus, 5);
    rest_within(&store, &ghl, &sc, REST).await;
    assert_eq!(sc.card(&card.id).unwrap().balance, 45);

    let balance_calls: Vec<_> = sc
        .request_log()
        .into_iter()
        .filter(|r| r.path.ends_with("/balance"))
        .collect();
    assert_eq!(balance_calls.len(), 2, "{balance_calls:?}");
    for call in &balance_calls {
        let body = call.body.as_ref().unwrap();
        assert_eq!(
            body.as_object()
                .map(|b| b.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["balance".to_string()]),
            "only the field the seed names: {body}"
        );
    }
    let dead: i64 = store
        .counts()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.state == "dead")
        .map(|c| c.count)
        .sum();
    assert_eq!(dead, 0, "{:?}", store.last_errors(3).await.unwrap());
}
