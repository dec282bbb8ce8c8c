//! The GHL simulator's OAuth (`mapper::sandbox::oauth`) over real HTTP on
//! 127.0.0.1: the authorization-code grant, rotation of single-use refresh
//! tokens, agency → location tokens, and 401 once an access token expires.

use std::time::Duration;

use mapper::sandbox::{GhlConfig, GhlSandbox, OAuthConfig};
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Status and JSON body.
async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `POST /oauth/token` as an app's backend sends it: a form, no `Version`.
async fn token(ghl: &GhlSandbox, fields: &[(&str, &str)]) -> (u16, Value) {
    let response = client()
        .post(format!("{}/oauth/token", ghl.base_url()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Accept", "application/json")
        .body(form(fields))
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn exchange_code(ghl: &GhlSandbox, code: &str) -> (u16, Value) {
    let config = ghl.oauth().config();
    token(
        ghl,
        &[
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("grant_type", "authorization_code"),
            ("code", code),
            ("user_type", "Location"),
            ("redirect_uri", "http://127.0.0.1/oauth/ghl/callback"),
        ],
    )
    .await
}

async fn refresh(ghl: &GhlSandbox, refresh_token: &str) -> (u16, Value) {
    let config = ghl.oauth().config();
    token(
        ghl,
        &[
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("user_type", "Location"),
        ],
    )
    .await
}

/// An API call (the pipelines of the location) with `bearer`.
async fn api(ghl: &GhlSandbox, bearer: &str) -> (u16, Value) {
    let response = client()
        .get(format!(
            "{}/opportunities/pipelines?locationId={}",
            ghl.base_url(),
            ghl.location_id()
        ))
        .header("Authorization", format!("Bearer {bearer}"))
        .header("Version", "2021-07-28")
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    answer(response).await
}

fn str_of<'a>(body: &'a Value, key: &str) -> &'a str {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {body}"))
}

/// The keys of the token answer, exactly those the reference documents.
const TOKEN_KEYS: [&str; 12] = [
    "access_token",
    "approvedLocations",
    "companyId",
    "expires_in",
    "isBulkInstallation",
    "locationId",
    "planId",
    "refresh_token",
    "scope",
    "token_type",
    "userId",
    "userType",
];

fn keys(body: &Value) -> Vec<String> {
    let mut k: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn an_authorization_code_gives_a_location_token_once() {
    let ghl = GhlSandbox::start(GhlConfig::default()).await.unwrap();
    let code = ghl.oauth().issue_location_code(ghl.location_id());
    let (status, body) = exchange_code(&ghl, &code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), TOKEN_KEYS);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["userType"], "Location");
    assert_eq!(body["locationId"], ghl.location_id());
    assert_eq!(body["companyId"], ghl.oauth().config().company_id);
    assert_eq!(body["expires_in"], 86_399);
    assert_eq!(body["isBulkInstallation"], false);
    assert_eq!(body["approvedLocations"][0], ghl.location_id());

    let (status, pipelines) = api(&ghl, str_of(&body, "access_token")).await;
    assert_eq!(status, 200, "{pipelines}");
    // The static token keeps working beside OAuth.
    assert_eq!(api(&ghl, ghl.token()).await.0, 200);

    // A code is single-use.
    let (status, again) = exchange_code(&ghl, &code).await;
    assert_eq!(status, 400, "{again}");
    assert_eq!(again["error"], "invalid_grant");
    assert_eq!(again["statusCode"], 400);
}

#[tokio::test]
async fn a_refresh_token_rotates_and_a_used_one_is_invalid_grant() {
    let ghl = GhlSandbox::start(GhlConfig::default()).await.unwrap();
    let code = ghl.oauth().issue_location_code(ghl.location_id());
    let (_, first) = exchange_code(&ghl, &code).await;
    let r1 = str_of(&first, "refresh_token").to_string();

    let (status, second) = refresh(&ghl, &r1).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(keys(&second), TOKEN_KEYS);
    let r2 = str_of(&second, "refresh_token").to_string();
    assert_ne!(r1, r2, "the refresh token rotates");
    assert_ne!(first["access_token"], second["access_token"]);
    assert_eq!(api(&ghl, str_of(&second, "access_token")).await.0, 200);

    // The refresh token just used is spent.
    let (status, refused) = refresh(&ghl, &r1).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], "invalid_grant");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("refresh token"),
        "{refused}"
    );
    // So is one never issued.
    assert_eq!(refresh(&ghl, "made-up").await.0, 400);
    // The new one works, once.
    assert_eq!(refresh(&ghl, &r2).await.0, 200);
    assert_eq!(refresh(&ghl, &r2).await.0, 400);
}

#[tokio::test]
async fn the_token_endpoint_refuses_unknown_fields_and_wrong_clients() {
    let ghl = GhlSandbox::start(GhlConfig::default()).await.unwrap();
    let config = ghl.oauth().config();
    let code = ghl.oauth().issue_location_code(ghl.location_id());
    let (status, body) = token(
        &ghl,
        &[
            ("client_id", &config.client_id),
            ("client_secret", &config.client_secret),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("scope", "contacts.write"),
        ],
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["message"][0], "property scope should not exist");

    let (status, body) = token(
        &ghl,
        &[
            ("client_id", &config.client_id),
            ("client_secret", "wrong"),
            ("grant_type", "authorization_code"),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    // The refused requests did not spend the code.
    assert_eq!(exchange_code(&ghl, &code).await.0, 200);
}

#[tokio::test]
async fn an_agency_token_gets_location_tokens_for_approved_locations() {
    let ghl = GhlSandbox::start(GhlConfig::default()).await.unwrap();
    let loc = ghl.location_id().to_string();
    let code = ghl.oauth().issue_agency_code(&[&loc, "loc_other"]);
    let (status, agency) = exchange_code(&ghl, &code).await;
    assert_eq!(status, 200, "{agency}");
    assert_eq!(keys(&agency), TOKEN_KEYS);
    assert_eq!(agency["userType"], "Company");
    assert_eq!(agency["locationId"], Value::Null);
    assert_eq!(agency["isBulkInstallation"], true);
    assert_eq!(agency["approvedLocations"].as_array().unwrap().len(), 2);
    let agency_token = str_of(&agency, "access_token").to_string();
    let company = str_of(&agency, "companyId").to_string();

    // Agency tokens cannot call the location's API (reference §1).
    let (status, body) = api(&ghl, &agency_token).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["message"],
        "The token is not authorized for this scope."
    );

    let location_token = |bearer: String, version: Option<&'static str>, location: String| {
        let ghl_base = ghl.base_url();
        let company = company.clone();
        async move {
            let mut request = client()
                .post(format!("{ghl_base}/oauth/locationToken"))
                .header("Authorization", format!("Bearer {bearer}"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("Accept", "application/json")
                .body(form(&[("companyId", &company), ("locationId", &location)]));
            if let Some(v) = version {
                request = request.header("Version", v);
            }
            answer(request.send().await.unwrap()).await
        }
    };
    let (status, body) = location_token(agency_token.clone(), None, loc.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "version header was not found.");

    let (status, located) =
        location_token(agency_token.clone(), Some("2021-07-28"), loc.clone()).await;
    assert_eq!(status, 200, "{located}");
    assert_eq!(keys(&located), TOKEN_KEYS);
    assert_eq!(located["userType"], "Location");
    assert_eq!(located["locationId"], loc.as_str());
    assert_eq!(api(&ghl, str_of(&located, "access_token")).await.0, 200);

    let (status, body) = location_token(
        agency_token.clone(),
        Some("2021-07-28"),
        "loc_unapproved".into(),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // A token of the other approved location does not open this one.
    let (status, elsewhere) =
        location_token(agency_token.clone(), Some("2021-07-28"), "loc_other".into()).await;
    assert_eq!(status, 200, "{elsewhere}");
    let (status, body) = api(&ghl, str_of(&elsewhere, "access_token")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["message"],
        "The token does not have access to this location."
    );

    // A location token is not an agency bearer.
    let (status, _) = location_token(
        str_of(&located, "access_token").to_string(),
        Some("2021-07-28"),
        loc.clone(),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_expired_access_token_answers_401_and_a_refresh_brings_a_working_one() {
    let ghl = GhlSandbox::start(GhlConfig {
        oauth: OAuthConfig {
            access_token_lifetime: Duration::from_millis(700),
            ..OAuthConfig::default()
        },
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    let code = ghl.oauth().issue_location_code(ghl.location_id());
    let (_, tokens) = exchange_code(&ghl, &code).await;
    assert_eq!(tokens["expires_in"], 1, "{tokens}");
    let access = str_of(&tokens, "access_token").to_string();
    assert_eq!(api(&ghl, &access).await.0, 200);

    tokio::time::sleep(Duration::from_millis(900)).await;
    let (status, body) = api(&ghl, &access).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "Invalid token: access token is invalid");
    assert_eq!(body["statusCode"], 401);
    // The static token is not affected.
    assert_eq!(api(&ghl, ghl.token()).await.0, 200);

    // A longer life from now on; the refresh token outlives the access token.
    ghl.oauth()
        .set_access_token_lifetime(Duration::from_secs(3600));
    let (status, renewed) = refresh(&ghl, str_of(&tokens, "refresh_token")).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["expires_in"], 3600);
    let fresh = str_of(&renewed, "access_token").to_string();
    assert_eq!(api(&ghl, &fresh).await.0, 200);

    // Ending every access token at once, as a test of a 401 mid-run does.
    ghl.oauth().expire_access_tokens();
    assert_eq!(api(&ghl, &fresh).await.0, 401);
    assert_eq!(api(&ghl, "never-issued").await.0, 401);
}
