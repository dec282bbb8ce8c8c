//! The API simulators over real HTTP on 127.0.0.1 (`mapper::sandbox`).

use std::time::Duration;

use mapper::sandbox::ghl::DuplicateField;
use mapper::sandbox::{
    Fault, GhlConfig, GhlSandbox, GhlWebhooks, RateLimit, StickyCardsConfig, StickyCardsSandbox,
    StickyCardsWebhookFormat, StickyCardsWebhooks,
};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

/// A GHL call with the profile's headers.
async fn ghl(sandbox: &GhlSandbox, method: &str, path: &str, body: Option<Value>) -> Answer {
    let request = client()
        .request(
            method.parse().unwrap(),
            format!("{}{path}", sandbox.base_url()),
        )
        .header("Authorization", format!("Bearer {}", sandbox.token()))
        .header("Version", "2021-07-28")
        .header("Accept", "application/json");
    send(request, body).await
}

async fn send(request: reqwest::RequestBuilder, body: Option<Value>) -> Answer {
    let request = match body {
        Some(b) => request.json(&b),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

async fn start_ghl() -> GhlSandbox {
    GhlSandbox::start(GhlConfig::default()).await.unwrap()
}

async fn create_contact(sandbox: &GhlSandbox, email: Option<&str>, phone: Option<&str>) -> String {
    let mut body = json!({"locationId": sandbox.location_id()});
    if let Some(e) = email {
        body["email"] = json!(e);
    }
    if let Some(p) = phone {
        body["phone"] = json!(p);
    }
    let answer = ghl(sandbox, "POST", "/contacts/", Some(body)).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.body["contact"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn ghl_duplicate_create_answers_400_with_the_existing_contact_id() {
    let sandbox = start_ghl().await;
    let id = create_contact(&sandbox, Some("Ann@Example.com"), Some("+1 555-123-4567")).await;
    let contact = sandbox.contact(&id).unwrap();
    assert_eq!(contact.phone.as_deref(), Some("+15551234567"));

    let dup = ghl(
        &sandbox,
        "POST",
        "/contacts/",
        Some(json!({"locationId": sandbox.location_id(), "email": "ann@example.COM"})),
    )
    .await;
    assert_eq!(dup.status, 400);
    assert_eq!(
        dup.body["message"],
        "This location does not allow duplicated contacts."
    );
    assert_eq!(dup.body["statusCode"], 400);
    assert_eq!(dup.body["meta"]["contactId"], id.as_str());
    assert_eq!(dup.body["meta"]["matchingField"], "email");

    let by_phone = ghl(
        &sandbox,
        "POST",
        "/contacts",
        Some(json!({"locationId": sandbox.location_id(), "phone": "+15551234567"})),
    )
    .await;
    assert_eq!(by_phone.status, 400);
    assert_eq!(by_phone.body["meta"]["matchingField"], "phone");
    assert_eq!(sandbox.contacts().len(), 1);

    // With duplicates allowed, the same create succeeds.
    sandbox.set_allow_duplicates(true);
    create_contact(&sandbox, Some("ann@example.com"), None).await;
    assert_eq!(sandbox.contacts().len(), 2);

    // Get and delete.
    let got = ghl(&sandbox, "GET", &format!("/contacts/{id}"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["contact"]["email"], "Ann@Example.com");
    let deleted = ghl(&sandbox, "DELETE", &format!("/contacts/{id}"), None).await;
    assert_eq!(deleted.body, json!({"succeded": true}));
    let gone = ghl(&sandbox, "GET", &format!("/contacts/{id}"), None).await;
    assert_eq!(gone.status, 400);
}

#[tokio::test]
async fn ghl_tags_are_lowercased_replaced_by_put_and_kept_by_add_and_remove() {
    let sandbox = start_ghl().await;
    let id = create_contact(&sandbox, Some("t@example.com"), None).await;

    let added = ghl(
        &sandbox,
        "POST",
        &format!("/contacts/{id}/tags"),
        Some(json!({"tags": ["VIP", "Gold", "vip"]})),
    )
    .await;
    assert_eq!(added.status, 201);
    assert_eq!(added.body, json!({"tags": ["vip", "gold"]}));

    let more = ghl(
        &sandbox,
        "POST",
        &format!("/contacts/{id}/tags"),
        Some(json!({"tags": ["Newsletter"]})),
    )
    .await;
    assert_eq!(more.body["tags"], json!(["vip", "gold", "newsletter"]));

    let removed = ghl(
        &sandbox,
        "DELETE",
        &format!("/contacts/{id}/tags"),
        Some(json!({"tags": ["GOLD"]})),
    )
    .await;
    assert_eq!(removed.status, 200);
    assert_eq!(removed.body["tags"], json!(["vip", "newsletter"]));

    // `tags` on PUT replaces every tag.
    let put = ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({"firstName": "Tia", "tags": ["Only"]})),
    )
    .await;
    assert_eq!(put.status, 200);
    assert_eq!(put.body["succeded"], true);
    assert_eq!(put.body["contact"]["tags"], json!(["only"]));
    assert_eq!(put.body["contact"]["firstName"], "Tia");
    assert_eq!(sandbox.contact(&id).unwrap().tags, vec!["only"]);

    // A PUT without `tags` keeps them.
    ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({"city": "Austin"})),
    )
    .await;
    assert_eq!(sandbox.contact(&id).unwrap().tags, vec!["only"]);

    let bad = ghl(
        &sandbox,
        "POST",
        &format!("/contacts/{id}/tags"),
        Some(json!({"tags": "vip"})),
    )
    .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["message"], json!(["tags must be an array"]));
}

#[tokio::test]
async fn ghl_custom_fields_are_written_by_id_and_read_back_as_id_value() {
    let sandbox = start_ghl().await;
    let loc = sandbox.location_id().to_string();
    let created = ghl(
        &sandbox,
        "POST",
        &format!("/locations/{loc}/customFields"),
        Some(json!({"name": "Loyalty Points", "dataType": "NUMERICAL", "model": "contact"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let field = &created.body["customField"];
    assert_eq!(field["fieldKey"], "contact.loyalty_points");
    assert_eq!(field["dataType"], "NUMERICAL");
    let field_id = field["id"].as_str().unwrap().to_string();

    let again = ghl(
        &sandbox,
        "POST",
        &format!("/locations/{loc}/customFields"),
        Some(json!({"name": "Loyalty points", "dataType": "TEXT"})),
    )
    .await;
    assert_eq!(again.status, 400);
    let bad_type = ghl(
        &sandbox,
        "POST",
        &format!("/locations/{loc}/customFields"),
        Some(json!({"name": "X", "dataType": "NUMBER"})),
    )
    .await;
    assert_eq!(bad_type.status, 422);

    let listed = ghl(
        &sandbox,
        "GET",
        &format!("/locations/{loc}/customFields?model=contact"),
        None,
    )
    .await;
    assert_eq!(listed.body["customFields"][0]["id"], field_id.as_str());
    let other = ghl(
        &sandbox,
        "GET",
        "/locations/other_loc/customFields?model=contact",
        None,
    )
    .await;
    assert_eq!(other.status, 403);

    let id = create_contact(&sandbox, Some("cf@example.com"), None).await;
    let put = ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({"customFields": [{"id": field_id, "field_value": 120}]})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let got = ghl(&sandbox, "GET", &format!("/contacts/{id}"), None).await;
    assert_eq!(
        got.body["contact"]["customFields"],
        json!([{"id": field_id, "value": 120}])
    );
    assert_eq!(
        sandbox.contact(&id).unwrap().custom_field(&field_id),
        Some(&json!(120))
    );

    // `{id, value}` is the read shape, not the write one.
    let read_shape = ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({"customFields": [{"id": field_id, "value": 5}]})),
    )
    .await;
    assert_eq!(read_shape.status, 422);
    assert_eq!(
        read_shape.body["message"],
        json!(["customFields.0.property value should not exist"])
    );

    let unknown = ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({"customFields": [{"id": "nope", "field_value": 5}]})),
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(
        sandbox.contact(&id).unwrap().custom_field(&field_id),
        Some(&json!(120))
    );

    // An empty value clears the field.
    ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({"customFields": [{"id": field_id, "field_value": ""}]})),
    )
    .await;
    assert!(sandbox.contact(&id).unwrap().custom_fields.is_empty());
}

#[tokio::test]
async fn ghl_unknown_properties_are_422_with_a_message_array() {
    let sandbox = start_ghl().await;
    let id = create_contact(&sandbox, Some("p@example.com"), None).await;
    let answer = ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({"locationId": sandbox.location_id(), "gender": "female", "firstName": "P"})),
    )
    .await;
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.body,
        json!({
            "statusCode": 422,
            "message": ["property locationId should not exist", "property gender should not exist"],
            "error": "Unprocessable Entity"
        })
    );
    assert!(sandbox.contact(&id).unwrap().first_name.is_none());

    // UpdateContactDto has no companyName either (CreateContactDto has).
    let company = ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({"companyName": "Acme"})),
    )
    .await;
    assert_eq!(company.status, 422);

    let typed = ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({"dnd": "yes"})),
    )
    .await;
    assert_eq!(
        typed.body["message"],
        json!(["dnd must be a boolean value"])
    );

    let no_location = ghl(
        &sandbox,
        "POST",
        "/contacts/",
        Some(json!({"email": "x@y.z"})),
    )
    .await;
    assert_eq!(no_location.status, 422);

    // Bad JSON is a 400 in GHL's shape.
    let raw = client()
        .post(format!("{}/contacts/", sandbox.base_url()))
        .header("Authorization", "Bearer sandbox-token")
        .header("Version", "2021-07-28")
        .header("Content-Type", "application/json")
        .body("{\"email\": ");
    let bad = send(raw, None).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["statusCode"], 400);
}

#[tokio::test]
async fn ghl_wrong_token_is_401_and_version_is_required() {
    let sandbox = start_ghl().await;
    let url = format!("{}/contacts/abc", sandbox.base_url());
    let wrong = send(
        client()
            .get(&url)
            .header("Authorization", "Bearer nope")
            .header("Version", "2021-07-28"),
        None,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.body,
        json!({"statusCode": 401, "message": "Invalid token: access token is invalid", "error": "Unauthorized"})
    );
    let missing = send(client().get(&url).header("Version", "2021-07-28"), None).await;
    assert_eq!(missing.status, 401);

    let no_version = send(
        client()
            .get(&url)
            .header("Authorization", "Bearer sandbox-token"),
        None,
    )
    .await;
    assert_eq!(no_version.status, 401);
    assert_eq!(no_version.body["message"], "version header was not found.");
    let old_version = send(
        client()
            .get(&url)
            .header("Authorization", "Bearer sandbox-token")
            .header("Version", "2020-01-01"),
        None,
    )
    .await;
    assert_eq!(old_version.status, 401);
    assert!(sandbox.contacts().is_empty());
    assert_eq!(sandbox.request_log().len(), 4);
}

#[tokio::test]
async fn ghl_rate_limit_answers_429_with_its_headers() {
    let sandbox = GhlSandbox::start(GhlConfig {
        rate_limit: RateLimit {
            max: 3,
            interval: Duration::from_secs(10),
            daily: Some(1000),
        },
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    let path = format!(
        "/opportunities/pipelines?locationId={}",
        sandbox.location_id()
    );
    for remaining in [2, 1, 0] {
        let answer = ghl(&sandbox, "GET", &path, None).await;
        assert_eq!(answer.status, 200);
        let h = |name: &str| answer.headers[name].to_str().unwrap().to_string();
        assert_eq!(h("x-ratelimit-remaining"), remaining.to_string());
        assert_eq!(h("x-ratelimit-max"), "3");
        assert_eq!(h("x-ratelimit-interval-milliseconds"), "10000");
        assert_eq!(h("x-ratelimit-limit-daily"), "1000");
        assert_eq!(
            h("x-ratelimit-daily-remaining"),
            (997 + remaining).to_string()
        );
    }
    let over = ghl(&sandbox, "GET", &path, None).await;
    assert_eq!(over.status, 429);
    assert_eq!(over.body["statusCode"], 429);
    assert_eq!(over.headers["x-ratelimit-remaining"], "0");
    assert_eq!(over.headers["x-ratelimit-daily-remaining"], "997");

    sandbox.reset_rate_limit();
    assert_eq!(ghl(&sandbox, "GET", &path, None).await.status, 200);
}

/// GHL counts its limit per location: each location the simulator is asked
/// about has a window of its own; a request that names none counts against
/// its token's location (the configured one for the static token).
#[tokio::test]
async fn ghl_rate_limit_windows_are_per_location() {
    let sandbox = GhlSandbox::start(GhlConfig {
        rate_limit: RateLimit {
            max: 2,
            interval: Duration::from_secs(10),
            daily: None,
        },
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    let mine = format!(
        "/opportunities/pipelines?locationId={}",
        sandbox.location_id()
    );
    assert_eq!(ghl(&sandbox, "GET", &mine, None).await.status, 200);
    // No location named: the token's (the configured) location.
    let unnamed = ghl(&sandbox, "GET", "/contacts/nobody", None).await;
    assert_eq!(unnamed.status, 400);
    assert_eq!(unnamed.headers["x-ratelimit-remaining"], "0");
    assert_eq!(ghl(&sandbox, "GET", &mine, None).await.status, 429);
    assert_eq!(
        ghl(&sandbox, "GET", "/contacts/nobody", None).await.status,
        429
    );

    // Another location's window is untouched: its requests pass the limit
    // (and are then refused, the token not having access to it).
    let other = ghl(
        &sandbox,
        "GET",
        "/opportunities/pipelines?locationId=loc_other",
        None,
    )
    .await;
    assert_eq!(other.status, 403);
    assert_eq!(other.headers["x-ratelimit-remaining"], "1");
    let by_path = ghl(&sandbox, "GET", "/locations/loc_other/customFields", None).await;
    assert_eq!(by_path.status, 403);
    assert_eq!(by_path.headers["x-ratelimit-remaining"], "0");
    let by_body = ghl(
        &sandbox,
        "POST",
        "/contacts/",
        Some(serde_json::json!({"locationId": "loc_other", "email": "a@example.com"})),
    )
    .await;
    assert_eq!(by_body.status, 429);

    sandbox.reset_rate_limit();
    assert_eq!(ghl(&sandbox, "GET", &mine, None).await.status, 200);
}

#[tokio::test]
async fn ghl_daily_budget_runs_out() {
    let sandbox = GhlSandbox::start(GhlConfig {
        rate_limit: RateLimit {
            max: 100,
            interval: Duration::from_secs(10),
            daily: Some(2),
        },
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    let path = format!(
        "/opportunities/pipelines?locationId={}",
        sandbox.location_id()
    );
    assert_eq!(ghl(&sandbox, "GET", &path, None).await.status, 200);
    assert_eq!(ghl(&sandbox, "GET", &path, None).await.status, 200);
    let over = ghl(&sandbox, "GET", &path, None).await;
    assert_eq!(over.status, 429);
    assert_eq!(over.headers["x-ratelimit-daily-remaining"], "0");
}

#[tokio::test]
async fn ghl_faults_500_429_and_hang() {
    let sandbox = start_ghl().await;
    let loc = sandbox.location_id().to_string();
    let pipelines = format!("/opportunities/pipelines?locationId={loc}");

    sandbox.inject(Fault::Status(500), 2);
    assert_eq!(ghl(&sandbox, "GET", &pipelines, None).await.status, 500);
    let second = ghl(&sandbox, "GET", &pipelines, None).await;
    assert_eq!(second.status, 500);
    assert_eq!(second.body["statusCode"], 500);
    assert_eq!(ghl(&sandbox, "GET", &pipelines, None).await.status, 200);

    sandbox.inject(
        Fault::TooManyRequests {
            retry_after: Some(7),
        },
        1,
    );
    let limited = ghl(&sandbox, "GET", &pipelines, None).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "7");
    sandbox.inject(Fault::TooManyRequests { retry_after: None }, 1);
    let limited = ghl(&sandbox, "GET", &pipelines, None).await;
    assert_eq!(limited.status, 429);
    assert!(limited.headers.get("retry-after").is_none());

    // Only matching paths fail.
    sandbox.inject_on("/contacts", Fault::Status(503), 1);
    assert_eq!(ghl(&sandbox, "GET", &pipelines, None).await.status, 200);
    let contact = ghl(
        &sandbox,
        "POST",
        "/contacts/",
        Some(json!({"locationId": loc, "email": "f@example.com"})),
    )
    .await;
    assert_eq!(contact.status, 503);
    assert!(sandbox.contacts().is_empty());

    // A hang longer than the client's timeout is a timeout.
    sandbox.inject(Fault::Hang(Duration::from_secs(2)), 1);
    let timed_out = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
        .get(format!("{}{pipelines}", sandbox.base_url()))
        .header("Authorization", "Bearer sandbox-token")
        .header("Version", "2021-07-28")
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout());
    // A short hang only delays.
    sandbox.inject(Fault::Hang(Duration::from_millis(100)), 1);
    assert_eq!(ghl(&sandbox, "GET", &pipelines, None).await.status, 200);

    let log = sandbox.request_log();
    assert_eq!(log.len(), 9);
    let statuses: Vec<Option<u16>> = log.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses[..8],
        [
            Some(500),
            Some(500),
            Some(200),
            Some(429),
            Some(429),
            Some(200),
            Some(503),
            None
        ]
    );
    assert_eq!(log[6].method, "POST");
    assert_eq!(log[6].path, "/contacts/");
    assert_eq!(log[6].body.as_ref().unwrap()["email"], "f@example.com");
    assert_eq!(log[0].query.as_deref(), Some(&*format!("locationId={loc}")));
    sandbox.clear_request_log();
    assert!(sandbox.request_log().is_empty());
}

#[tokio::test]
async fn ghl_duplicate_search_honours_the_priority() {
    let sandbox = start_ghl().await;
    let loc = sandbox.location_id().to_string();
    let by_email = create_contact(&sandbox, Some("one@example.com"), None).await;
    let by_phone = create_contact(&sandbox, None, Some("+15550001111")).await;
    let both = format!(
        "/contacts/search/duplicate?locationId={loc}&email=ONE%40example.com&number=%2B15550001111"
    );

    let found = ghl(&sandbox, "GET", &both, None).await;
    assert_eq!(found.status, 200);
    assert_eq!(found.body["contact"]["id"], by_email.as_str());

    sandbox.set_duplicate_priority(vec![DuplicateField::Phone, DuplicateField::Email]);
    let found = ghl(&sandbox, "GET", &both, None).await;
    assert_eq!(found.body["contact"]["id"], by_phone.as_str());

    let only_phone = ghl(
        &sandbox,
        "GET",
        &format!("/contacts/search/duplicate?locationId={loc}&number=%2B15550001111"),
        None,
    )
    .await;
    assert_eq!(only_phone.body["contact"]["id"], by_phone.as_str());

    let none = ghl(
        &sandbox,
        "GET",
        &format!("/contacts/search/duplicate?locationId={loc}&email=zero%40example.com"),
        None,
    )
    .await;
    assert_eq!(none.body, json!({"contact": null}));

    let no_loc = ghl(
        &sandbox,
        "GET",
        "/contacts/search/duplicate?email=one%40example.com",
        None,
    )
    .await;
    assert_eq!(no_loc.status, 422);
}

#[tokio::test]
async fn ghl_contact_upsert_follows_the_priority_and_drops_conflicts() {
    let sandbox = start_ghl().await;
    let loc = sandbox.location_id().to_string();
    let first = ghl(
        &sandbox,
        "POST",
        "/contacts/upsert",
        Some(json!({"locationId": loc, "email": "u@example.com", "firstName": "U", "tags": ["A"]})),
    )
    .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["new"], true);
    let email_id = first.body["contact"]["id"].as_str().unwrap().to_string();
    let phone_id = create_contact(&sandbox, None, Some("+15552223333")).await;

    // Email first: the email contact is updated, the phone (another's) dropped.
    let second = ghl(
        &sandbox,
        "POST",
        "/contacts/upsert",
        Some(json!({"locationId": loc, "email": "u@example.com", "phone": "+15552223333", "lastName": "V", "gender": "male"})),
    )
    .await;
    assert_eq!(second.body["new"], false);
    assert_eq!(second.body["contact"]["id"], email_id.as_str());
    let contact = sandbox.contact(&email_id).unwrap();
    assert_eq!(contact.last_name.as_deref(), Some("V"));
    assert_eq!(contact.phone, None);
    assert_eq!(contact.tags, vec!["a"]);
    assert!(contact.fields.get("gender").is_none());
    assert_eq!(sandbox.contacts().len(), 2);

    let wrong_loc = ghl(
        &sandbox,
        "POST",
        "/contacts/upsert",
        Some(json!({"locationId": "elsewhere", "email": "u@example.com"})),
    )
    .await;
    assert_eq!(wrong_loc.status, 403);

    // With duplicates allowed, createNewIfDuplicateAllowed creates.
    sandbox.set_allow_duplicates(true);
    let forced = ghl(
        &sandbox,
        "POST",
        "/contacts/upsert",
        Some(json!({"locationId": loc, "phone": "+15552223333", "createNewIfDuplicateAllowed": true})),
    )
    .await;
    assert_eq!(forced.body["new"], true);
    assert_ne!(forced.body["contact"]["id"], phone_id.as_str());
    assert_eq!(sandbox.contacts().len(), 3);
}

#[tokio::test]
async fn ghl_notes_are_added_to_the_contact() {
    let sandbox = start_ghl().await;
    let id = create_contact(&sandbox, Some("n@example.com"), None).await;
    let note = ghl(
        &sandbox,
        "POST",
        &format!("/contacts/{id}/notes"),
        Some(json!({"body": "+120 pts, order #123", "title": "Purchase"})),
    )
    .await;
    assert_eq!(note.status, 201);
    assert_eq!(note.body["note"]["body"], "+120 pts, order #123");
    assert_eq!(note.body["note"]["contactId"], id.as_str());
    let notes = sandbox.notes_of(&id);
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].title.as_deref(), Some("Purchase"));

    let empty = ghl(
        &sandbox,
        "POST",
        &format!("/contacts/{id}/notes"),
        Some(json!({"title": "no body"})),
    )
    .await;
    assert_eq!(empty.status, 422);
    let unknown = ghl(
        &sandbox,
        "POST",
        "/contacts/missing/notes",
        Some(json!({"body": "x"})),
    )
    .await;
    assert_eq!(unknown.status, 400);
}

#[tokio::test]
async fn ghl_opportunity_upsert_creates_then_updates() {
    let sandbox = start_ghl().await;
    let loc = sandbox.location_id().to_string();
    let contact = create_contact(&sandbox, Some("o@example.com"), None).await;
    let listed = ghl(
        &sandbox,
        "GET",
        &format!("/opportunities/pipelines?locationId={loc}"),
        None,
    )
    .await;
    let pipeline = &listed.body["pipelines"][0];
    assert_eq!(pipeline["name"], "Loyalty Payments");
    let stage_names: Vec<&str> = pipeline["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stage_names, ["Paid", "Refunded", "Failed"]);
    let pipeline_id = pipeline["id"].as_str().unwrap().to_string();
    let paid = pipeline["stages"][0]["id"].as_str().unwrap().to_string();
    let refunded = pipeline["stages"][1]["id"].as_str().unwrap().to_string();

    let created = ghl(
        &sandbox,
        "POST",
        "/opportunities/upsert",
        Some(json!({
            "locationId": loc, "contactId": contact, "pipelineId": pipeline_id,
            "pipelineStageId": paid, "name": "Order 1", "status": "open", "monetaryValue": 42.5
        })),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.body["new"], true);
    let opp_id = created.body["opportunity"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created.body["opportunity"]["monetaryValue"], 42.5);

    let updated = ghl(
        &sandbox,
        "POST",
        "/opportunities/upsert",
        Some(json!({
            "locationId": loc, "contactId": contact, "pipelineId": pipeline_id,
            "pipelineStageId": refunded, "name": "Order 1", "status": "lost"
        })),
    )
    .await;
    assert_eq!(updated.body["new"], false);
    assert_eq!(updated.body["opportunity"]["id"], opp_id.as_str());
    let opps = sandbox.opportunities();
    assert_eq!(opps.len(), 1);
    assert_eq!(opps[0].pipeline_stage_id, refunded);
    assert_eq!(opps[0].status, "lost");
    assert_eq!(opps[0].monetary_value, Some(42.5));

    let bad_stage = ghl(
        &sandbox,
        "POST",
        "/opportunities/upsert",
        Some(json!({"locationId": loc, "contactId": contact, "pipelineId": pipeline_id, "pipelineStageId": "nope"})),
    )
    .await;
    assert_eq!(bad_stage.status, 400);
    let bad_status = ghl(
        &sandbox,
        "POST",
        "/opportunities/upsert",
        Some(json!({"locationId": loc, "contactId": contact, "pipelineId": pipeline_id, "status": "done"})),
    )
    .await;
    assert_eq!(bad_status.status, 422);

    // POST /opportunities/ always creates.
    let direct = ghl(
        &sandbox,
        "POST",
        "/opportunities/",
        Some(json!({"locationId": loc, "contactId": contact, "pipelineId": pipeline_id, "name": "Order 2", "status": "won"})),
    )
    .await;
    assert_eq!(direct.status, 201, "{}", direct.body);
    assert_eq!(direct.body["opportunity"]["pipelineStageId"], paid.as_str());
    assert_eq!(sandbox.opportunities().len(), 2);
    let missing = ghl(
        &sandbox,
        "POST",
        "/opportunities/",
        Some(json!({"locationId": loc, "contactId": contact, "pipelineId": pipeline_id})),
    )
    .await;
    assert_eq!(missing.status, 422);
}

#[tokio::test]
async fn ghl_unknown_routes_are_404_and_shutdown_stops_the_server() {
    let sandbox = start_ghl().await;
    let base = sandbox.base_url();
    let answer = ghl(&sandbox, "GET", "/nothing/here", None).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["message"], "Cannot GET /nothing/here");
    sandbox.shutdown().await;
    assert!(
        client()
            .get(format!("{base}/contacts/x"))
            .send()
            .await
            .is_err()
    );
}

// ------------------------------------------------------------ Sticky Cards

async fn sticky(
    sandbox: &StickyCardsSandbox,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let request = client()
        .request(
            method.parse().unwrap(),
            format!("{}{path}", sandbox.base_url()),
        )
        .header("Accept", "application/json");
    let request = if path.starts_with("/api/") {
        request.header("X-API-Key", sandbox.api_key())
    } else {
        request.header("Authorization", format!("Bearer {}", sandbox.api_key()))
    };
    send(request, body).await
}

async fn start_sticky() -> StickyCardsSandbox {
    StickyCardsSandbox::start(StickyCardsConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn stickycards_seed_api_customers_cards_segments_pushes() {
    let sandbox = start_sticky().await;
    let created = sticky(
        &sandbox,
        "POST",
        "/v1/customers",
        Some(json!({"phone_number": "+15551234567", "email": "s@example.com"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();

    let found = sticky(
        &sandbox,
        "GET",
        "/v1/customers?phone_number=%2B15551234567",
        None,
    )
    .await;
    assert_eq!(found.body["data"][0]["id"], id.as_str());
    let found = sticky(&sandbox, "GET", "/v1/customers?email=S%40example.com", None).await;
    assert_eq!(found.body["data"][0]["id"], id.as_str());
    let none = sticky(&sandbox, "GET", "/v1/customers?email=x%40example.com", None).await;
    assert_eq!(none.body, json!({"data": []}));

    let dup = sticky(
        &sandbox,
        "POST",
        "/v1/customers",
        Some(json!({"phone_number": "15551234567"})),
    )
    .await;
    assert_eq!(dup.status, 409);
    assert_eq!(dup.body["id"], id.as_str());

    let updated = sticky(
        &sandbox,
        "POST",
        "/v1/customers",
        Some(json!({"id": id, "first_name": "Sam", "last_name": "Stone"})),
    )
    .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["first_name"], "Sam");
    assert_eq!(sandbox.customers().len(), 1);
    let unknown = sticky(
        &sandbox,
        "POST",
        "/v1/customers",
        Some(json!({"id": id, "nickname": "S"})),
    )
    .await;
    assert_eq!(unknown.status, 422);
    assert!(unknown.body["message"].is_string());

    let segments = sticky(
        &sandbox,
        "PUT",
        &format!("/customers/{id}/segments"),
        Some(json!({"segments": ["vip", "local"]})),
    )
    .await;
    assert_eq!(segments.status, 200);
    assert_eq!(
        sandbox.customer(&id).unwrap().segments,
        vec!["vip", "local"]
    );

    let card = sticky(
        &sandbox,
        "POST",
        "/v1/cards",
        Some(json!({"customer_id": id, "template_id": "tpl_1"})),
    )
    .await;
    assert_eq!(card.status, 201);
    let card_id = card.body["id"].as_str().unwrap().to_string();

    let set = sticky(
        &sandbox,
        "PUT",
        &format!("/cards/{card_id}/balance"),
        Some(json!({"balance": 100})),
    )
    .await;
    assert_eq!(set.body["balance"], 100);
    // Seed 000 names `balance` alone: a field it does not name is refused,
    // as a strict server would, and nothing changes.
    let unnamed = sticky(
        &sandbox,
        "PUT",
        &format!("/cards/{card_id}/balance"),
        Some(json!({"balance": 30, "mode": "add"})),
    )
    .await;
    assert_eq!(unnamed.status, 422, "{}", unnamed.body);
    assert_eq!(sandbox.card(&card_id).unwrap().balance, 100);
    let add = sticky(
        &sandbox,
        "PUT",
        &format!("/cards/{card_id}/balance"),
        Some(json!({"balance": 70})),
    )
    .await;
    assert_eq!(add.body["balance"], 70);
    let default_set = sticky(
        &sandbox,
        "PUT",
        &format!("/cards/{card_id}/balance"),
        Some(json!({"balance": "5"})),
    )
    .await;
    assert_eq!(default_set.body["balance"], 5);
    let below = sticky(
        &sandbox,
        "PUT",
        &format!("/cards/{card_id}/balance"),
        Some(json!({"balance": -1})),
    )
    .await;
    assert_eq!(below.status, 422);
    assert_eq!(sandbox.card(&card_id).unwrap().balance, 5);
    let deltas: Vec<i64> = sandbox.balance_changes().iter().map(|c| c.delta).collect();
    assert_eq!(deltas, [100, -30, -65]);

    let status = sticky(
        &sandbox,
        "PUT",
        &format!("/cards/{card_id}/status"),
        Some(json!({"status": "Inactive"})),
    )
    .await;
    assert_eq!(status.body["status"], "Inactive");
    let bad_status = sticky(
        &sandbox,
        "PUT",
        &format!("/cards/{card_id}/status"),
        Some(json!({"status": "Paused"})),
    )
    .await;
    assert_eq!(bad_status.status, 422);
    let no_card = sticky(
        &sandbox,
        "PUT",
        "/cards/000000-000-000/status",
        Some(json!({"status": "Active"})),
    )
    .await;
    assert_eq!(no_card.status, 404);
    assert!(no_card.body["message"].is_string());

    let push = sticky(
        &sandbox,
        "POST",
        "/v1/pushes/customer",
        Some(json!({"customer_id": id, "message": "You have 5 points", "title": "Points"})),
    )
    .await;
    assert_eq!(push.status, 201);
    assert_eq!(sandbox.pushes()[0].message, "You have 5 points");

    let prefs = sticky(
        &sandbox,
        "PUT",
        &format!("/v1/customers/{id}/preferences"),
        Some(json!({"opt_in": false, "channel": "sms"})),
    )
    .await;
    assert_eq!(prefs.status, 200);
    assert_eq!(sandbox.customer(&id).unwrap().preferences["sms"], false);

    let wrong_key = send(
        client()
            .get(format!("{}/v1/customers", sandbox.base_url()))
            .header("Authorization", "Bearer nope"),
        None,
    )
    .await;
    assert_eq!(wrong_key.status, 401);
    assert!(wrong_key.body["message"].is_string());
}

#[tokio::test]
async fn stickycards_boomerangme_points_and_envelope() {
    let sandbox = start_sticky().await;
    let created = sticky(
        &sandbox,
        "POST",
        "/api/v2/customers",
        Some(json!({"firstName": "+15550009999", "phone": "+15550009999"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["code"], 201);
    assert!(created.body["responseId"].is_string());
    assert!(created.body["createdAt"].is_string());
    let id = created.body["data"]["id"].as_str().unwrap().to_string();

    let listed = sticky(
        &sandbox,
        "GET",
        "/api/v2/customers?phone=%2B15550009999",
        None,
    )
    .await;
    assert_eq!(listed.body["data"][0]["id"], id.as_str());
    assert_eq!(listed.body["meta"]["totalItems"], 1);

    let patched = sticky(
        &sandbox,
        "PATCH",
        &format!("/api/v2/customers/{id}"),
        Some(json!({"firstName": "Bea", "surname": "Moon", "email": "b@example.com", "phone": "+15550009999"})),
    )
    .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.body["data"]["surname"], "Moon");
    assert_eq!(
        sandbox.customer(&id).unwrap().email.as_deref(),
        Some("b@example.com")
    );

    let card = sticky(
        &sandbox,
        "POST",
        "/api/v2/cards",
        Some(json!({"customerId": id, "templateId": "tpl_9"})),
    )
    .await;
    assert_eq!(card.status, 201);
    let card_id = card.body["data"]["id"].as_str().unwrap().to_string();

    let add = sticky(
        &sandbox,
        "POST",
        &format!("/api/v2/cards/{card_id}/add-point"),
        Some(json!({"points": 50, "comment": "synced by mapper"})),
    )
    .await;
    assert_eq!(add.status, 200, "{}", add.body);
    assert_eq!(add.body["data"]["balance"]["balance"], 50);
    let sub = sticky(
        &sandbox,
        "POST",
        &format!("/api/v2/cards/{card_id}/subtract-point"),
        Some(json!({"points": "20"})),
    )
    .await;
    assert_eq!(sub.body["data"]["balance"]["balance"], 30);
    let too_much = sticky(
        &sandbox,
        "POST",
        &format!("/api/v2/cards/{card_id}/subtract-point"),
        Some(json!({"points": 31})),
    )
    .await;
    assert_eq!(too_much.status, 422);
    assert_eq!(too_much.body["code"], 422);
    assert!(too_much.body["message"].is_string());
    assert_eq!(sandbox.card(&card_id).unwrap().balance, 30);
    assert_eq!(
        sandbox.balance_changes()[0].comment.as_deref(),
        Some("synced by mapper")
    );

    let push = sticky(
        &sandbox,
        "POST",
        "/api/v2/pushes",
        Some(json!({"message": "Hi", "cardId": card_id})),
    )
    .await;
    assert_eq!(push.status, 201);
    assert_eq!(push.body["data"]["cardId"], card_id.as_str());
    assert_eq!(sandbox.pushes().len(), 1);

    // The seed key header does not open v2, and seed paths are not v2's.
    let bearer = send(
        client()
            .get(format!("{}/api/v2/customers", sandbox.base_url()))
            .header("Authorization", format!("Bearer {}", sandbox.api_key())),
        None,
    )
    .await;
    assert_eq!(bearer.status, 401);
    let missing = sticky(&sandbox, "GET", "/api/v2/cards/999999-999-999", None).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn stickycards_rate_limit_and_faults() {
    let sandbox = StickyCardsSandbox::start(StickyCardsConfig {
        rate_limit: RateLimit {
            max: 2,
            interval: Duration::from_secs(5),
            daily: None,
        },
        auto_create_cards: true,
        ..StickyCardsConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(
        sticky(&sandbox, "GET", "/v1/customers", None).await.status,
        200
    );
    assert_eq!(
        sticky(&sandbox, "GET", "/v1/customers", None).await.status,
        200
    );
    let over = sticky(&sandbox, "GET", "/v1/customers", None).await;
    assert_eq!(over.status, 429);
    let retry: u64 = over.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry));
    assert!(over.body["message"].is_string());
    sandbox.reset_rate_limit();

    sandbox.inject_on("/api/v2/cards", Fault::Status(502), 1);
    assert_eq!(
        sticky(&sandbox, "GET", "/v1/customers", None).await.status,
        200
    );
    let failed = sticky(
        &sandbox,
        "POST",
        "/api/v2/cards/123456-789-012/add-point",
        Some(json!({"points": 5})),
    )
    .await;
    assert_eq!(failed.status, 502);
    assert!(sandbox.card("123456-789-012").is_none());
    // auto_create_cards: an unknown card is created on first use.
    let added = sticky(
        &sandbox,
        "POST",
        "/api/v2/cards/123456-789-012/add-point",
        Some(json!({"points": 5})),
    )
    .await;
    assert_eq!(added.status, 200);
    assert_eq!(sandbox.card("123456-789-012").unwrap().balance, 5);
    let posts = sandbox
        .request_log()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 2);
}

#[tokio::test]
async fn ghl_accepts_every_field_of_the_profiles_upsert_contact() {
    let sandbox = start_ghl().await;
    let loc = sandbox.location_id().to_string();
    let field = ghl(
        &sandbox,
        "POST",
        &format!("/locations/{loc}/customFields"),
        Some(json!({"name": "Tier", "dataType": "TEXT", "model": "contact"})),
    )
    .await;
    let field_id = field.body["customField"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = create_contact(&sandbox, Some("full@example.com"), Some("+15557654321")).await;
    // mappings/targets/ghl.yaml, operation upsert_contact (companyName aside:
    // UpdateContactDto does not list it).
    let put = ghl(
        &sandbox,
        "PUT",
        &format!("/contacts/{id}"),
        Some(json!({
            "firstName": "Full", "lastName": "Field", "name": "Full Field",
            "email": "full@example.com", "phone": "+15557654321",
            "dateOfBirth": "1990-09-25", "address1": "1 Main St", "city": "Austin",
            "state": "TX", "postalCode": "73301", "country": "US",
            "website": "https://example.com", "timezone": "America/Chicago",
            "source": "mapper", "dnd": false,
            "customFields": [{"id": field_id, "field_value": "gold"}]
        })),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.body);
    let contact = &put.body["contact"];
    assert_eq!(contact["city"], "Austin");
    assert_eq!(contact["dnd"], false);
    assert_eq!(contact["dateOfBirth"], "1990-09-25");
    assert_eq!(
        contact["customFields"],
        json!([{"id": field_id, "value": "gold"}])
    );
}

#[tokio::test]
async fn stickycards_a_bad_field_on_create_adds_no_customer() {
    let sandbox = start_sticky().await;
    let bad = sticky(
        &sandbox,
        "POST",
        "/v1/customers",
        Some(json!({"email": "bad@example.com", "first_name": 5})),
    )
    .await;
    assert_eq!(bad.status, 422);
    assert!(sandbox.customers().is_empty());
}

// ------------------------------------------------------------ webhooks

/// One request the test receiver got.
struct Received {
    path_and_query: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn kind(&self) -> String {
        let v = self.json();
        v.get("type")
            .or_else(|| v.get("event_type"))
            .or_else(|| v.get("event"))
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }
}

/// A webhook endpoint on 127.0.0.1 that records what it gets and answers
/// the statuses queued with `answer_next` (then 200).
struct Receiver {
    base: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    answers: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u16>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        use std::sync::{Arc, Mutex};
        let got = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let (g, a) = (Arc::clone(&got), Arc::clone(&answers));
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let (g, a) = (Arc::clone(&g), Arc::clone(&a));
                async move {
                    g.lock().unwrap().push(Received {
                        path_and_query: uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        headers,
                        body: body.to_vec(),
                    });
                    let status = a.lock().unwrap().pop_front().unwrap_or(200);
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            base,
            got,
            answers,
            _task: task,
        }
    }

    fn answer_next(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }

    fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

fn keys(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn example(path: &str) -> Value {
    let file = format!("{}/examples/payloads/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

fn kinds(received: &[Received]) -> Vec<String> {
    received.iter().map(Received::kind).collect()
}

async fn idle<F: std::future::Future<Output = ()>>(wait: F) {
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("webhooks never went idle");
}

fn signing_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[42u8; 32])
}

async fn start_ghl_with_webhooks(receiver: &Receiver) -> GhlSandbox {
    GhlSandbox::start(GhlConfig {
        webhooks: Some(GhlWebhooks::new(
            format!("{}/webhooks/ghl", receiver.base),
            signing_key(),
        )),
        ..GhlConfig::default()
    })
    .await
    .unwrap()
}

/// Checks what every GHL webhook must be: JSON, signed over the exact
/// bytes with the test key, fresh, of this location.
fn assert_ghl_delivery(r: &Received, location: &str) {
    use base64::Engine as _;
    use ed25519_dalek::Verifier as _;
    assert_eq!(r.path_and_query, "/webhooks/ghl");
    assert_eq!(r.headers["content-type"], "application/json");
    let sig = base64::engine::general_purpose::STANDARD
        .decode(r.headers["x-ghl-signature"].to_str().unwrap())
        .unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    signing_key()
        .verifying_key()
        .verify(&r.body, &sig)
        .expect("x-ghl-signature verifies over the raw body");
    let body = r.json();
    assert_eq!(body["locationId"], location);
    let at = chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(at);
    assert!(
        age.num_seconds().abs() < 300,
        "timestamp {at} is not recent"
    );
    assert!(body["webhookId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(body["appId"].is_string() && body["versionId"].is_string());
}

#[tokio::test]
async fn ghl_webhooks_follow_api_changes_signed_and_shaped_like_the_examples() {
    let receiver = Receiver::start().await;
    let sandbox = start_ghl_with_webhooks(&receiver).await;
    let loc = sandbox.location_id().to_string();
    let field = ghl(
        &sandbox,
        "POST",
        &format!("/locations/{loc}/customFields"),
        Some(json!({"name": "Loyalty Points", "dataType": "NUMERICAL", "model": "contact"})),
    )
    .await;
    let field_id = field.body["customField"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Create: ContactCreate with the whole contact.
    let created = ghl(
        &sandbox,
        "POST",
        "/contacts/",
        Some(json!({
            "locationId": loc, "firstName": "Ana", "lastName": "Lima",
            "email": "ana@example.com", "phone": "(415) 555-2671", "city": "San Francisco",
            "tags": ["New Lead"], "customFields": [{"id": field_id, "field_value": 120}]
        })),
    )
    .await;
    assert_eq!(created.status, 201);
    let id = created.body["contact"]["id"].as_str().unwrap().to_string();
    let put = |body: Value| {
        let (sandbox, id) = (&sandbox, id.clone());
        async move { ghl(sandbox, "PUT", &format!("/contacts/{id}"), Some(body)).await }
    };
    // The same values again (tags in another case, phone in another format): nothing.
    put(
        json!({"firstName": "Ana", "phone": "+14155552671", "tags": ["new lead"],
               "dnd": false, "customFields": [{"id": field_id, "field_value": 120}]}),
    )
    .await;
    // A field: ContactUpdate. Tags: ContactUpdate and ContactTagUpdate.
    put(json!({"city": "Oakland"})).await;
    put(json!({"tags": ["new lead", "VIP"]})).await;
    // Tag endpoints: ContactTagUpdate when the tags change, else nothing.
    let tags = format!("/contacts/{id}/tags");
    ghl(&sandbox, "POST", &tags, Some(json!({"tags": ["vip"]}))).await;
    ghl(&sandbox, "POST", &tags, Some(json!({"tags": ["Gold"]}))).await;
    ghl(
        &sandbox,
        "DELETE",
        &tags,
        Some(json!({"tags": ["new lead"]})),
    )
    .await;
    ghl(&sandbox, "DELETE", &tags, Some(json!({"tags": ["absent"]}))).await;
    // dnd: ContactUpdate and ContactDndUpdate.
    put(json!({"dnd": true})).await;
    // Upsert: updates (a custom field) then creates.
    let upsert = |body: Value| {
        let sandbox = &sandbox;
        async move { ghl(sandbox, "POST", "/contacts/upsert", Some(body)).await }
    };
    upsert(json!({"locationId": loc, "email": "ana@example.com",
                  "customFields": [{"id": field_id, "field_value": 125}]}))
    .await;
    upsert(json!({"locationId": loc, "email": "ana@example.com", "city": "Oakland"})).await;
    let new = upsert(json!({"locationId": loc, "email": "bea@example.com"})).await;
    assert_eq!(new.body["new"], true);
    let note = ghl(
        &sandbox,
        "POST",
        &format!("/contacts/{id}/notes"),
        Some(json!({"body": "Feedback 5/5"})),
    )
    .await;
    assert_eq!(note.status, 201);
    ghl(&sandbox, "DELETE", &format!("/contacts/{id}"), None).await;

    idle(sandbox.webhooks_idle()).await;
    let got = receiver.take();
    assert_eq!(
        kinds(&got),
        [
            "ContactCreate",
            "ContactUpdate",
            "ContactUpdate",
            "ContactTagUpdate",
            "ContactTagUpdate",
            "ContactTagUpdate",
            "ContactUpdate",
            "ContactDndUpdate",
            "ContactUpdate",
            "ContactCreate",
            "NoteCreate",
            "ContactDelete",
        ]
    );
    for r in &got {
        assert_ghl_delivery(r, &loc);
    }
    let ids: std::collections::HashSet<String> = got
        .iter()
        .map(|r| r.json()["webhookId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), got.len(), "webhookIds are unique");

    // Shapes: the keys of the example payloads the source definitions expect.
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    for (body, file) in [
        (&bodies[0], "ContactCreate.json"),
        (&bodies[1], "ContactUpdate.json"),
        (&bodies[3], "ContactTagUpdate.json"),
        (&bodies[7], "ContactDndUpdate.json"),
        (&bodies[10], "NoteCreate.json"),
        (&bodies[11], "ContactDelete.json"),
    ] {
        assert_eq!(keys(body), keys(&example(&format!("ghl/{file}"))), "{file}");
    }
    let create = &bodies[0];
    assert_eq!(create["id"], id.as_str());
    assert_eq!(create["name"], "Ana Lima");
    assert_eq!(create["phone"], "+14155552671");
    assert_eq!(create["city"], "San Francisco");
    assert_eq!(create["dnd"], false);
    assert_eq!(create["tags"], json!(["new lead"]));
    assert_eq!(
        create["customFields"],
        json!([{"id": field_id, "value": 120}])
    );
    assert_eq!(bodies[1]["city"], "Oakland");
    assert_eq!(bodies[2]["tags"], json!(["new lead", "vip"]));
    assert_eq!(bodies[4]["tags"], json!(["new lead", "vip", "gold"]));
    assert_eq!(bodies[5]["tags"], json!(["vip", "gold"]));
    assert_eq!(bodies[7]["dnd"], true);
    assert_eq!(
        bodies[8]["customFields"],
        json!([{"id": field_id, "value": 125}])
    );
    assert_eq!(bodies[9]["email"], "bea@example.com");
    assert_eq!(bodies[10]["contactId"], id.as_str());
    assert_eq!(bodies[10]["body"], "Feedback 5/5");
    assert_eq!(bodies[11]["tags"], json!(["vip", "gold"]));

    // The log has the same webhooks with the receiver's answers.
    let sent = sandbox.webhooks_sent();
    assert_eq!(
        sent.iter().map(|w| w.kind.clone()).collect::<Vec<_>>(),
        kinds(&got)
    );
    assert!(
        sent.iter()
            .all(|w| w.status == Some(200) && w.attempts == 1)
    );
    assert_eq!(sent[0].body, bodies[0]);
    sandbox.clear_webhooks_sent();
    assert!(sandbox.webhooks_sent().is_empty());
}

#[tokio::test]
async fn ghl_hand_edits_emit_and_webhooks_idle_waits_for_the_queue() {
    let receiver = Receiver::start().await;
    let mut hooks = GhlWebhooks::new(format!("{}/webhooks/ghl", receiver.base), signing_key());
    hooks.delivery.delay = Duration::from_millis(300);
    let sandbox = GhlSandbox::start(GhlConfig {
        webhooks: Some(hooks),
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    assert!(
        sandbox
            .webhook_public_key_pem()
            .unwrap()
            .contains("BEGIN PUBLIC KEY")
    );
    let id = create_contact(&sandbox, Some("hand@example.com"), None).await;
    // Queued before the API answered, sent later.
    assert_eq!(sandbox.webhooks_pending(), 1);
    assert_eq!(receiver.count(), 0);
    idle(sandbox.webhooks_idle()).await;
    assert_eq!(sandbox.webhooks_pending(), 0);
    assert_eq!(kinds(&receiver.take()), ["ContactCreate"]);

    // By hand, as in the UI: the tag is lowercased, the webhooks follow.
    let edited = sandbox
        .edit_contact(&id, |c| {
            c.tags.push("VIP".into());
            c.first_name = Some("Hana".into());
            c.id = "cannot-change".into();
        })
        .unwrap();
    assert_eq!(edited.id, id);
    assert_eq!(edited.tags, ["vip"]);
    // Nothing changed: nothing sent, dateUpdated kept.
    let same = sandbox
        .edit_contact(&id, |c| c.tags = vec!["VIP".into()])
        .unwrap();
    assert_eq!(same.date_updated, edited.date_updated);
    assert!(sandbox.edit_contact("nobody", |_| {}).is_none());
    // A redelivery of the create, changing nothing.
    assert!(sandbox.emit_contact_event("ContactCreate", &id));
    assert!(!sandbox.emit_contact_event("ContactCreate", "nobody"));
    idle(sandbox.webhooks_idle()).await;
    let got = receiver.take();
    assert_eq!(
        kinds(&got),
        ["ContactUpdate", "ContactTagUpdate", "ContactCreate"]
    );
    for r in &got {
        assert_ghl_delivery(r, sandbox.location_id());
    }
    assert_eq!(got[0].json()["firstName"], "Hana");
    assert_eq!(got[1].json()["tags"], json!(["vip"]));

    // Without webhooks: nothing queued, idle at once.
    let quiet = start_ghl().await;
    create_contact(&quiet, Some("quiet@example.com"), None).await;
    assert_eq!(quiet.webhooks_pending(), 0);
    idle(quiet.webhooks_idle()).await;
    assert!(quiet.webhooks_sent().is_empty());
    assert!(quiet.webhook_public_key_pem().is_none());
}

#[tokio::test]
async fn ghl_webhooks_are_retried_on_429_only() {
    let receiver = Receiver::start().await;
    let sandbox = start_ghl_with_webhooks(&receiver).await;
    receiver.answer_next(&[429, 429, 200, 500]);
    create_contact(&sandbox, Some("a@example.com"), None).await;
    create_contact(&sandbox, Some("b@example.com"), None).await;
    idle(sandbox.webhooks_idle()).await;
    let sent = sandbox.webhooks_sent();
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].status, sent[0].attempts), (Some(200), 3));
    assert!(sent[0].delivered());
    assert_eq!((sent[1].status, sent[1].attempts), (Some(500), 1));
    assert!(!sent[1].delivered());
    // The retries are the same delivery: same body, same webhookId.
    let got = receiver.take();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].body, got[2].body);

    // Nobody listening: given up, logged without a status.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let lost = GhlSandbox::start(GhlConfig {
        webhooks: Some(GhlWebhooks::new(
            format!("http://{closed}/webhooks/ghl"),
            signing_key(),
        )),
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    create_contact(&lost, Some("c@example.com"), None).await;
    idle(lost.webhooks_idle()).await;
    let sent = lost.webhooks_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status, None);
    assert!(sent[0].error.is_some());
}

#[tokio::test]
async fn ghl_opportunity_webhooks() {
    let receiver = Receiver::start().await;
    let sandbox = start_ghl_with_webhooks(&receiver).await;
    let loc = sandbox.location_id().to_string();
    let contact = create_contact(&sandbox, Some("opp@example.com"), None).await;
    let pipeline = sandbox.pipelines()[0].clone();
    let body = |status: &str| {
        json!({"locationId": loc, "pipelineId": pipeline.id, "contactId": contact,
               "name": "Payment pay_1", "status": status, "monetaryValue": 42.5})
    };
    let created = ghl(
        &sandbox,
        "POST",
        "/opportunities/upsert",
        Some(body("open")),
    )
    .await;
    assert_eq!(created.body["new"], true);
    ghl(&sandbox, "POST", "/opportunities/upsert", Some(body("won"))).await;
    ghl(&sandbox, "POST", "/opportunities/upsert", Some(body("won"))).await;
    idle(sandbox.webhooks_idle()).await;
    let got = receiver.take();
    assert_eq!(
        kinds(&got),
        [
            "ContactCreate",
            "OpportunityCreate",
            "OpportunityUpdate",
            "OpportunityUpdate",
            "OpportunityStatusUpdate",
        ]
    );
    for r in &got {
        assert_ghl_delivery(r, &loc);
    }
    assert_eq!(
        keys(&got[1].json()),
        keys(&example("ghl/OpportunityCreate.json"))
    );
    let status = got[4].json();
    assert_eq!(
        keys(&status),
        keys(&example("ghl/OpportunityStatusUpdate.json"))
    );
    assert_eq!(status["status"], "won");
    assert_eq!(status["contactId"], contact.as_str());
    assert_eq!(status["monetaryValue"], 42.5);
}

#[tokio::test]
async fn webhooks_can_be_turned_on_repointed_and_off_after_start() {
    // The engine needs the simulators' URLs before it listens, so tests
    // start the simulators first and point their webhooks at it later.
    let (first, second) = (Receiver::start().await, Receiver::start().await);
    let ghl_sandbox = start_ghl().await;
    create_contact(&ghl_sandbox, Some("before@example.com"), None).await;
    let to = |r: &Receiver| GhlWebhooks::new(format!("{}/webhooks/ghl", r.base), signing_key());
    ghl_sandbox.set_webhooks(Some(to(&first))).unwrap();
    create_contact(&ghl_sandbox, Some("first@example.com"), None).await;
    idle(ghl_sandbox.webhooks_idle()).await;
    ghl_sandbox.set_webhooks(Some(to(&second))).unwrap();
    create_contact(&ghl_sandbox, Some("second@example.com"), None).await;
    idle(ghl_sandbox.webhooks_idle()).await;
    ghl_sandbox.set_webhooks(None).unwrap();
    create_contact(&ghl_sandbox, Some("after@example.com"), None).await;
    idle(ghl_sandbox.webhooks_idle()).await;
    let (a, b) = (first.take(), second.take());
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0].json()["email"], "first@example.com");
    assert_eq!(b[0].json()["email"], "second@example.com");
    // One log across URLs, webhookIds never reused.
    let sent = ghl_sandbox.webhooks_sent();
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0].body["webhookId"], sent[1].body["webhookId"]);
    assert!(
        ghl_sandbox
            .set_webhooks(Some(GhlWebhooks::new("not a url", signing_key())))
            .is_err()
    );

    let sc = start_sticky().await;
    sc.set_webhooks(Some(StickyCardsWebhooks::new(format!(
        "{}/webhooks/stickycards?token=t",
        first.base
    ))))
    .unwrap();
    sticky(
        &sc,
        "POST",
        "/v1/customers",
        Some(json!({"email": "sc@example.com"})),
    )
    .await;
    idle(sc.webhooks_idle()).await;
    assert_eq!(kinds(&first.take()), ["CustomerCreatedEvent"]);
    assert_eq!(sc.webhooks_sent().len(), 1);
}

#[tokio::test]
async fn jittered_webhooks_overtake_each_other_and_some_are_sent_twice() {
    // The soak of the two-way sync needs webhooks as unruly as the
    // platforms' can be: out of order, and some of them twice.
    let receiver = Receiver::start().await;
    let mut hooks =
        StickyCardsWebhooks::new(format!("{}/webhooks/stickycards?token=t", receiver.base));
    hooks.delivery.jitter = Duration::from_millis(200);
    hooks.delivery.duplicate_every = Some(4);
    hooks.delivery.seed = 7;
    let sc = StickyCardsSandbox::start(StickyCardsConfig {
        webhooks: Some(hooks),
        ..StickyCardsConfig::default()
    })
    .await
    .unwrap();
    let customer = sc.add_customer(Some("Jo"), Some("jo@example.com"), None);
    let card = sc.add_card(Some(&customer.id), 0);
    for balance in 1..=20 {
        sc.set_card_balance(&card.id, balance).unwrap();
    }
    idle(sc.webhooks_idle()).await;
    assert_eq!(sc.webhooks_pending(), 0);
    let got = receiver.take();
    // Every 4th of the 20 came twice, with the same body.
    assert_eq!(got.len(), 25);
    let balances: Vec<i64> = got
        .iter()
        .map(|r| r.json()["card"]["balance"].as_i64().unwrap())
        .collect();
    let mut distinct = balances.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct, (1..=20).collect::<Vec<_>>());
    for twice in [4, 8, 12, 16, 20] {
        assert_eq!(balances.iter().filter(|b| **b == twice).count(), 2);
    }
    assert!(
        !balances.is_sorted(),
        "with 200 ms of jitter, later changes overtake earlier ones: {balances:?}"
    );
    let sent = sc.webhooks_sent();
    assert_eq!(sent.len(), 25);
    assert!(sent.iter().all(|w| w.delivered() && w.attempts == 1));
}

async fn start_sticky_with_webhooks(
    receiver: &Receiver,
    format: StickyCardsWebhookFormat,
) -> StickyCardsSandbox {
    let mut hooks =
        StickyCardsWebhooks::new(format!("{}/webhooks/stickycards?token=t0k", receiver.base));
    hooks.format = format;
    StickyCardsSandbox::start(StickyCardsConfig {
        webhooks: Some(hooks),
        ..StickyCardsConfig::default()
    })
    .await
    .unwrap()
}

fn set<const N: usize>(extra: [&str; N]) -> std::collections::BTreeSet<String> {
    extra.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn stickycards_webhooks_follow_api_changes_in_the_seed_shape() {
    let receiver = Receiver::start().await;
    let sandbox = start_sticky_with_webhooks(&receiver, StickyCardsWebhookFormat::Seed).await;
    let customer = sticky(
        &sandbox,
        "POST",
        "/v1/customers",
        Some(json!({"first_name": "Ana", "last_name": "Lima",
                    "email": "Ana.Lima@Example.com", "phone_number": "+1 (415) 555-2671"})),
    )
    .await;
    assert_eq!(customer.status, 201);
    let customer_id = customer.body["id"].as_str().unwrap().to_string();
    // An update through the API: no event exists for it.
    sticky(
        &sandbox,
        "POST",
        "/v1/customers",
        Some(json!({"id": customer_id, "first_name": "Ana Maria"})),
    )
    .await;
    let card = sticky(
        &sandbox,
        "POST",
        "/v1/cards",
        Some(json!({"customer_id": customer_id})),
    )
    .await;
    assert_eq!(card.status, 201);
    let card_id = card.body["id"].as_str().unwrap().to_string();
    let balance = format!("/cards/{card_id}/balance");
    sticky(&sandbox, "PUT", &balance, Some(json!({"balance": 10}))).await;
    sticky(&sandbox, "PUT", &balance, Some(json!({"balance": 10}))).await; // unchanged
    sticky(&sandbox, "PUT", &balance, Some(json!({"balance": 15}))).await;
    let segments = format!("/customers/{customer_id}/segments");
    sticky(
        &sandbox,
        "PUT",
        &segments,
        Some(json!({"segments": ["Regulars", "VIP"]})),
    )
    .await;
    sticky(
        &sandbox,
        "PUT",
        &segments,
        Some(json!({"segments": ["VIP"]})),
    )
    .await; // unlinked only
    sticky(
        &sandbox,
        "PUT",
        &format!("/cards/{card_id}/status"),
        Some(json!({"status": "Inactive"})),
    )
    .await;
    // Boomerangme v2 calls change the same data and send the same events.
    let v2 = sticky(
        &sandbox,
        "POST",
        "/api/v2/customers",
        Some(json!({"firstName": "Bea", "email": "bea@example.com"})),
    )
    .await;
    assert_eq!(v2.status, 201);
    sticky(
        &sandbox,
        "POST",
        &format!("/api/v2/cards/{card_id}/subtract-point"),
        Some(json!({"points": 3})),
    )
    .await;
    idle(sandbox.webhooks_idle()).await;
    let got = receiver.take();
    assert_eq!(
        kinds(&got),
        [
            "CustomerCreatedEvent",
            "CardIssuedEvent",
            "CardBalanceUpdatedEvent",
            "CardBalanceUpdatedEvent",
            "CustomerSegmentLinkedEvent",
            "CustomerSegmentLinkedEvent",
            "CustomerCreatedEvent",
            "CardBalanceUpdatedEvent",
        ]
    );
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    let mut stamps = std::collections::HashSet::new();
    for (r, body) in got.iter().zip(&bodies) {
        assert_eq!(r.path_and_query, "/webhooks/stickycards?token=t0k");
        assert_eq!(r.headers["content-type"], "application/json");
        // RFC 3339 with milliseconds, never twice the same.
        let stamp = body["timestamp"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(stamp).unwrap();
        assert_eq!(stamp.len(), "2025-03-10T09:15:03.123Z".len(), "{stamp}");
        assert!(stamps.insert(stamp.to_string()), "{stamp} repeated");
    }
    let stickycards = |file: &str| keys(&example(&format!("stickycards/{file}")));
    let without = |mut keys: std::collections::BTreeSet<String>, gone: &[&str]| {
        for k in gone {
            keys.remove(*k);
        }
        keys
    };
    // A new customer has no card yet.
    assert_eq!(
        keys(&bodies[0]),
        without(stickycards("CustomerCreatedEvent.json"), &["card_id"])
    );
    assert_eq!(bodies[0]["customer_id"], customer_id.as_str());
    assert_eq!(bodies[0]["phone_number"], "+1 (415) 555-2671");
    assert_eq!(bodies[0]["segments"], json!([]));
    assert_eq!(keys(&bodies[1]), stickycards("CardIssuedEvent.json"));
    assert_eq!(
        bodies[1]["card"],
        json!({"id": card_id, "status": "not_installed", "balance": 0, "installed_date": null})
    );
    assert_eq!(bodies[1]["first_name"], "Ana Maria");
    // last_purchase_date: the simulator has no purchases.
    assert_eq!(
        keys(&bodies[2]),
        without(
            stickycards("CardBalanceUpdatedEvent.json"),
            &["last_purchase_date"]
        )
    );
    assert_eq!(
        (
            &bodies[2]["card"]["balance"],
            &bodies[2]["previous_balance"]
        ),
        (&json!(10), &json!(0))
    );
    assert_eq!(
        (
            &bodies[3]["card"]["balance"],
            &bodies[3]["previous_balance"]
        ),
        (&json!(15), &json!(10))
    );
    assert_eq!(
        keys(&bodies[4]),
        stickycards("CustomerSegmentLinkedEvent.json")
    );
    assert_eq!(bodies[4]["segment"], json!({"id": 1, "name": "Regulars"}));
    assert_eq!(bodies[5]["segment"], json!({"id": 2, "name": "VIP"}));
    assert_eq!(bodies[5]["segments"], json!(["Regulars", "VIP"]));
    assert_eq!(bodies[5]["card_id"], card_id.as_str());
    assert_eq!(
        keys(&bodies[6]),
        set([
            "event_type",
            "timestamp",
            "customer_id",
            "email",
            "first_name",
            "last_name",
            "referral_count",
            "segments"
        ])
    );
    assert_eq!(
        (
            &bodies[7]["card"]["balance"],
            &bodies[7]["previous_balance"]
        ),
        (&json!(12), &json!(15))
    );
    let sent = sandbox.webhooks_sent();
    assert_eq!(sent.len(), 8);
    assert!(sent.iter().all(|w| w.status == Some(200)));
}

#[tokio::test]
async fn stickycards_hand_changes_emit_their_events() {
    let receiver = Receiver::start().await;
    let sandbox = start_sticky_with_webhooks(&receiver, StickyCardsWebhookFormat::Seed).await;
    // Test setup sends nothing until asked.
    let customer = sandbox.add_customer(Some("Ana"), Some("ana@example.com"), Some("+14155552671"));
    let card = sandbox.add_card(Some(&customer.id), 0);
    assert_eq!(sandbox.webhooks_pending(), 0);
    assert!(sandbox.emit_event("CustomerCreatedEvent", &customer.id, None));
    assert!(!sandbox.emit_event("CustomerCreatedEvent", "nobody", None));
    assert!(!sandbox.emit_event("CardScannedEvent", &customer.id, Some("000000-000-000")));

    let installed = sandbox.install_card(&card.id).unwrap();
    assert_eq!(installed.wallet_status, "installed");
    assert!(installed.installed_date.is_some());
    sandbox.set_card_balance(&card.id, 40).unwrap();
    sandbox.set_card_balance(&card.id, 40).unwrap(); // unchanged: nothing
    assert!(sandbox.set_card_balance("000000-000-000", 1).is_none());
    // Only segments send something; a name change alone sends nothing.
    sandbox
        .edit_customer(&customer.id, |c| c.first_name = Some("Anna".into()))
        .unwrap();
    let edited = sandbox
        .edit_customer(&customer.id, |c| c.segments.push("VIP".into()))
        .unwrap();
    assert_eq!(edited.first_name.as_deref(), Some("Anna"));
    assert_eq!(edited.segments, ["VIP"]);
    sandbox.remove_card(&card.id).unwrap();
    sandbox.expire_card(&card.id).unwrap();
    // A card without a customer: no one to tell.
    let orphan = sandbox.add_card(None, 0);
    sandbox.set_card_balance(&orphan.id, 5).unwrap();
    idle(sandbox.webhooks_idle()).await;

    let got = receiver.take();
    assert_eq!(
        kinds(&got),
        [
            "CustomerCreatedEvent",
            "CardInstalledEvent",
            "CardBalanceUpdatedEvent",
            "CustomerSegmentLinkedEvent",
            "CardRemovedEvent",
            "CardExpiredEvent",
        ]
    );
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    let stickycards = |file: &str| keys(&example(&format!("stickycards/{file}")));
    assert_eq!(keys(&bodies[0]), stickycards("CustomerCreatedEvent.json"));
    assert_eq!(bodies[0]["card_id"], card.id.as_str());
    assert_eq!(keys(&bodies[1]), stickycards("CardInstalledEvent.json"));
    assert_eq!(bodies[1]["card"]["status"], "installed");
    assert_eq!(bodies[2]["card"]["balance"], 40);
    assert_eq!(bodies[2]["previous_balance"], 0);
    assert_eq!(bodies[3]["first_name"], "Anna");
    assert_eq!(bodies[3]["segment"]["name"], "VIP");
    assert_eq!(keys(&bodies[4]), stickycards("CardRemovedEvent.json"));
    assert_eq!(bodies[4]["card"]["status"], "removed");
    assert_eq!(keys(&bodies[5]), stickycards("CardExpiredEvent.json"));
    assert_eq!(bodies[5]["card"]["status"], "expired");
    assert_eq!(sandbox.balance_changes().len(), 2);
}

#[tokio::test]
async fn stickycards_webhooks_in_the_boomerangme_shape() {
    let receiver = Receiver::start().await;
    let sandbox =
        start_sticky_with_webhooks(&receiver, StickyCardsWebhookFormat::Boomerangme).await;
    let customer = sticky(
        &sandbox,
        "POST",
        "/api/v2/customers",
        Some(
            json!({"firstName": "Ana", "surname": "Lima", "phone": "14155552671",
                    "dateOfBirth": "1990-05-17"}),
        ),
    )
    .await;
    let customer_id = customer.body["data"]["id"].as_str().unwrap().to_string();
    let card = sticky(
        &sandbox,
        "POST",
        "/api/v2/cards",
        Some(json!({"customerId": customer_id, "templateId": 3101})),
    )
    .await;
    let card_id = card.body["data"]["id"].as_str().unwrap().to_string();
    // Two changes of one card within a second still get distinct times.
    for _ in 0..2 {
        sticky(
            &sandbox,
            "POST",
            &format!("/api/v2/cards/{card_id}/add-point"),
            Some(json!({"points": 5})),
        )
        .await;
    }
    sticky(
        &sandbox,
        "PUT",
        &format!("/customers/{customer_id}/segments"),
        Some(json!({"segments": ["VIP"]})),
    )
    .await;
    sandbox.remove_card(&card_id).unwrap();
    idle(sandbox.webhooks_idle()).await;
    let got = receiver.take();
    assert_eq!(
        kinds(&got),
        [
            "CustomerCreatedEvent",
            "CardIssuedEvent",
            "CardBalanceUpdatedEvent",
            "CardBalanceUpdatedEvent",
            "CustomerSegmentLinkedEvent",
            "CardRemovedEvent",
        ]
    );
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    let boomerangme = |file: &str| example(&format!("stickycards-boomerangme/{file}"));
    let issued = boomerangme("CardIssuedEvent.json");
    for body in &bodies {
        assert_eq!(keys(body), keys(&issued));
        assert!(body["timestamp"].is_i64());
        assert_eq!(body["data"]["cardholder_id"], customer_id.as_str());
    }
    // A new customer has no card yet: no card fields.
    let card_keys = set([
        "serial_number",
        "template_id",
        "user_template_id",
        "card_type",
        "status",
        "device_type",
        "bonus_balance",
        "balance",
        "countVisits",
        "number_stamps_total",
        "number_rewards_unused",
        "short_link",
        "share_link",
        "direct_install_link_universal",
        "direct_install_link_apple",
        "direct_install_link_google",
        "direct_install_link_pwa",
    ]);
    let all = keys(&issued["data"]);
    assert_eq!(
        keys(&bodies[0]["data"]),
        all.difference(&card_keys).cloned().collect()
    );
    assert_eq!(keys(&bodies[1]["data"]), all);
    assert_eq!(bodies[1]["data"]["serial_number"], card_id.as_str());
    assert_eq!(bodies[1]["data"]["status"], "not_installed");
    assert_eq!(bodies[1]["data"]["cardholder_birth_date"], "1990-05-17");
    assert_eq!(bodies[3]["data"]["bonus_balance"], 10);
    assert_ne!(bodies[2]["timestamp"], bodies[3]["timestamp"]);
    assert_eq!(
        keys(&bodies[4]["data"]),
        keys(&boomerangme("CustomerSegmentLinkedEvent.json")["data"])
    );
    assert_eq!(bodies[4]["data"]["segment_name"], "VIP");
    assert_eq!(bodies[5]["data"]["status"], "deleted");
}
