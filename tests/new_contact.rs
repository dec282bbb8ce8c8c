//! A new GHL contact costs the two searches and one create: GHL's
//! `POST /contacts/` takes the upsert fields, `customFields` and `tags`, so
//! the create carries what the mapping writes next (`customer.create.carries`
//! in the GHL profile) instead of a create, a PUT and a tag call.

use std::time::Duration;

mod common;
use common::{post, serve_in, settle_within, simulators};

#[tokio::test(flavor = "multi_thread")]
async fn a_new_contact_costs_two_searches_and_one_create_that_carries_its_fields_and_tags() {
    let (ghl, sc) = simulators().await;
    let s = serve_in(&ghl, &sc, &[], "mappings");
    let body = std::fs::read("examples/payloads/stickycards/CardInstalledEvent.json").unwrap();
    assert_eq!(post(&s, "stickycards", "?token=sc-token", &body).await, 202);
    let counts = settle_within(&s.db, Duration::from_secs(30)).await;
    assert!(counts.iter().all(|c| c.state == "delivered"), "{counts:?}");

    // The custom fields' listing and creation happen once per process.
    let one_time = |path: &str| path.contains("/customFields") || path.ends_with("/pipelines");
    let calls: Vec<String> = ghl
        .request_log()
        .iter()
        .filter(|r| !one_time(&r.path))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        calls,
        [
            "GET /contacts/search/duplicate",
            "GET /contacts/search/duplicate",
            "POST /contacts/"
        ],
        "phone, email, create"
    );
    let contact = ghl.contacts()[0].clone();
    assert_eq!(contact.first_name.as_deref(), Some("Ana"));
    assert_eq!(contact.tags, vec!["card holder".to_string()]);
    let value_of = |key: &str| {
        let field = ghl
            .custom_fields()
            .into_iter()
            .find(|f| f.field_key == format!("contact.{key}"))
            .unwrap_or_else(|| panic!("no custom field {key}"));
        contact.custom_field(&field.id).cloned()
    };
    assert_eq!(
        value_of("card_status"),
        Some(serde_json::json!("installed"))
    );
    assert_eq!(value_of("card_id"), Some(serde_json::json!("card_5001")));

    // The next event of that person is one PUT: the link is known, and so
    // is the tag the create carried.
    let mut later: serde_json::Value = serde_json::from_slice(&body).unwrap();
    later["timestamp"] = "2025-03-03T15:00:00Z".into();
    later["first_name"] = "Ana Maria".into();
    assert_eq!(
        post(
            &s,
            "stickycards",
            "?token=sc-token",
            later.to_string().as_bytes()
        )
        .await,
        202
    );
    settle_within(&s.db, Duration::from_secs(30)).await;
    let after: Vec<String> = ghl
        .request_log()
        .iter()
        .filter(|r| !one_time(&r.path))
        .skip(3)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(after, [format!("PUT /contacts/{}", contact.id)]);
    assert_eq!(ghl.contacts().len(), 1);
}
