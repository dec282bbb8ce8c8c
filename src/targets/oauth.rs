//! GHL OAuth (marketplace app) tokens for the API calls of a connection.
//!
//! A connection installed through GHL OAuth (`GET /oauth/ghl/callback`)
//! stores an access token and a refresh token instead of a Private
//! Integration Token (`GHL_API_TOKEN`). The target profile keeps the shape of
//! the header (`Authorization: "Bearer {{ env.GHL_API_TOKEN }}"` in
//! `mappings/targets/ghl.yaml`); for such a connection `GHL_API_TOKEN` holds
//! [`ACCESS_TOKEN_PLACEHOLDER`], and [`super::http::Http`] puts the current
//! access token in its place at send time, obtained through
//! [`Store::access_token`] (the refresh protocol across replicas). A call
//! answered 401 refreshes once and is sent once more.
//!
//! The token endpoint itself is not a target operation: its body is a form
//! (the target language sends JSON) and it is called from inside a request,
//! not by a mapping. Its shape is therefore written here, and only with the
//! fields the reference (`ghl-api.md` §1) names:
//!
//! | call | form | answer read |
//! |---|---|---|
//! | `POST {GHL_API_BASE_URL}/oauth/token` | `client_id`, `client_secret`, `grant_type` (`authorization_code` / `refresh_token`), `code` + `redirect_uri` / `refresh_token` | `access_token`, `expires_in`, `refresh_token`, `userType`, `locationId`, `companyId`, `approvedLocations` |
//! | `POST {GHL_API_BASE_URL}/oauth/locationToken` (agency bearer, `Version`) | `companyId`, `locationId` | the same |
//!
//! A refresh GHL refuses with `invalid_grant` disables that connection (the
//! store does it, with the reason); any other failure is retried later.

use super::http::error_chain;
use crate::secrets::SecretKey;
use crate::store::connections::{OAuthTokens, RefreshOutcome, TokenError, TokenPolicy};
use crate::store::{Store, now_ms};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The variable of the target profile whose value is the bearer token: a
/// PIT when the connection sets it, else the OAuth access token.
pub const ACCESS_TOKEN_VARIABLE: &str = "GHL_API_TOKEN";
/// The variable holding the API root; the token endpoints live under it.
pub const BASE_URL_VARIABLE: &str = "GHL_API_BASE_URL";
/// The marketplace app's client id (the process's environment).
pub const CLIENT_ID_VARIABLE: &str = "GHL_OAUTH_CLIENT_ID";
/// The marketplace app's client secret (the process's environment).
pub const CLIENT_SECRET_VARIABLE: &str = "GHL_OAUTH_CLIENT_SECRET";
/// The redirect URI registered with the app: this server's callback URL.
pub const REDIRECT_URI_VARIABLE: &str = "GHL_OAUTH_REDIRECT_URI";

/// What `GHL_API_TOKEN` holds for a connection that uses OAuth tokens: the
/// headers rendered from the profile keep it, and it is replaced by the
/// current access token when a request leaves. It is never sent itself.
pub const ACCESS_TOKEN_PLACEHOLDER: &str = "${oauth:access_token}";

/// `Version` of `/oauth/locationToken`, as on the API's other calls
/// (reference §1: `/oauth/token` takes none).
const API_VERSION: &str = "2021-07-28";

/// How long one call to a token endpoint may take; shorter than the
/// refresh lease ([`TokenPolicy::lease_ms`], 30 s), so a replica never
/// holds a refresh token past its lease.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(20);

/// The marketplace app's credentials.
#[derive(Clone)]
pub struct OAuthClient {
    /// `GHL_OAUTH_CLIENT_ID`.
    pub client_id: String,
    /// `GHL_OAUTH_CLIENT_SECRET`.
    pub client_secret: String,
}

impl std::fmt::Debug for OAuthClient {
    // The secret never reaches a log through a debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .finish()
    }
}

impl OAuthClient {
    /// The app's credentials from `env`; the error names every unset variable.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<OAuthClient, MissingVariables> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        match (get(CLIENT_ID_VARIABLE), get(CLIENT_SECRET_VARIABLE)) {
            (Some(client_id), Some(client_secret)) => Ok(OAuthClient {
                client_id,
                client_secret,
            }),
            (id, secret) => Err(MissingVariables(
                [
                    id.is_none().then_some(CLIENT_ID_VARIABLE),
                    secret.is_none().then_some(CLIENT_SECRET_VARIABLE),
                ]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect(),
            )),
        }
    }
}

/// Variables that must be set and are not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} {} not set: GHL OAuth needs the marketplace app's client id and client secret (and, for installs, its redirect URI)",
    .0.join(" and "),
    if .0.len() == 1 { "is" } else { "are" }
)]
pub struct MissingVariables(pub Vec<String>);

/// The API root of GHL for `env`: its `GHL_API_BASE_URL`, else the default
/// a target profile declares for it (`mappings/targets/ghl.yaml`).
pub fn base_url(
    program: &crate::program::Program,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    env(BASE_URL_VARIABLE)
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            program
                .targets
                .values()
                .find_map(|t| t.env.get(BASE_URL_VARIABLE)?.default.clone())
        })
        .map(|url| url.trim_end_matches('/').to_string())
}

/// A token endpoint's answer, as far as it is read.
#[derive(Clone)]
pub struct TokenAnswer {
    /// The bearer for API calls.
    pub access_token: String,
    /// Seconds until it expires (`expires_in`).
    pub expires_in: Option<u64>,
    /// The single-use token that gets the next pair.
    pub refresh_token: String,
    /// `Location` or `Company` (`userType`).
    pub user_type: Option<String>,
    /// The sub-account the token is for (`locationId`; null for a Company token).
    pub location_id: Option<String>,
    /// The agency (`companyId`).
    pub company_id: Option<String>,
    /// The locations the install was approved for (`approvedLocations`).
    pub approved_locations: Vec<String>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("access_token", &"***")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &"***")
            .field("user_type", &self.user_type)
            .field("location_id", &self.location_id)
            .field("company_id", &self.company_id)
            .field("approved_locations", &self.approved_locations)
            .finish()
    }
}

impl TokenAnswer {
    /// Whether the token speaks for an agency (its locations need
    /// `/oauth/locationToken`).
    pub fn is_company(&self) -> bool {
        self.user_type.as_deref() == Some("Company")
    }

    /// The tokens to store, expiring `expires_in` from `now` (epoch ms).
    /// Without `expires_in` (the reference always shows it) the token is
    /// taken as expiring now: it is used while GHL accepts it, and the next
    /// call refreshes it rather than trusting a lifetime nobody gave.
    pub fn tokens(&self, now: i64) -> OAuthTokens {
        let lifetime_ms = self
            .expires_in
            .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
            .unwrap_or(0);
        OAuthTokens {
            access_token: self.access_token.clone(),
            access_expires_at: now.saturating_add(lifetime_ms),
            refresh_token: self.refresh_token.clone(),
        }
    }

    fn from_json(body: &Value) -> Result<TokenAnswer, EndpointError> {
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
        let (Some(access_token), Some(refresh_token)) =
            (text("access_token"), text("refresh_token"))
        else {
            return Err(EndpointError::BadAnswer(
                "the answer has no access_token or refresh_token".to_string(),
            ));
        };
        Ok(TokenAnswer {
            access_token,
            refresh_token,
            expires_in: body.get("expires_in").and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            }),
            user_type: text("userType"),
            location_id: text("locationId"),
            company_id: text("companyId"),
            approved_locations: body
                .get("approvedLocations")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Why a token endpoint gave no tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EndpointError {
    /// GHL answered with an error status (its body kept, to relay it).
    #[error("{url} answered {status}{}: {message}", .error.as_deref().map(|e| format!(" {e}")).unwrap_or_default())]
    Refused {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth error code of the body (`error`, e.g. `invalid_grant`).
        error: Option<String>,
        /// The body's `message` (a list joined), else the body's text.
        message: String,
        /// The body as JSON (`null` when it was not); boxed, as a rare
        /// case should not make every `Result` of this type large.
        body: Box<Value>,
    },
    /// No answer (a timeout, a refused connection).
    #[error("{0}")]
    Unreachable(String),
    /// A 2xx whose body is not a token answer.
    #[error("{0}")]
    BadAnswer(String),
}

impl EndpointError {
    /// GHL refused the code or the refresh token itself: trying again with
    /// it cannot succeed.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, EndpointError::Refused { status: 400, error: Some(e), .. } if e == "invalid_grant")
    }
}

/// A client of GHL's token endpoints under one API root.
#[derive(Clone)]
pub struct TokenEndpoint {
    base_url: String,
    http: reqwest::Client,
}

impl TokenEndpoint {
    /// The endpoints under `base_url` (`GHL_API_BASE_URL`).
    pub fn new(base_url: &str) -> TokenEndpoint {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(TOKEN_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        TokenEndpoint {
            base_url: base_url.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// Exchanges an authorization code (the install's redirect) for tokens.
    pub async fn exchange_code(
        &self,
        client: &OAuthClient,
        code: &str,
        redirect_uri: &str,
    ) -> Result<TokenAnswer, EndpointError> {
        self.post(
            "/oauth/token",
            &[
                ("client_id", client.client_id.as_str()),
                ("client_secret", client.client_secret.as_str()),
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
            ],
            None,
        )
        .await
    }

    /// Spends a refresh token for a new pair (GHL retires the one used).
    pub async fn refresh(
        &self,
        client: &OAuthClient,
        refresh_token: &str,
    ) -> Result<TokenAnswer, EndpointError> {
        self.post(
            "/oauth/token",
            &[
                ("client_id", client.client_id.as_str()),
                ("client_secret", client.client_secret.as_str()),
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
            None,
        )
        .await
    }

    /// A location's token from an agency (Company) token.
    pub async fn location_token(
        &self,
        agency_token: &str,
        company_id: &str,
        location_id: &str,
    ) -> Result<TokenAnswer, EndpointError> {
        self.post(
            "/oauth/locationToken",
            &[("companyId", company_id), ("locationId", location_id)],
            Some(agency_token),
        )
        .await
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        bearer: Option<&str>,
    ) -> Result<TokenAnswer, EndpointError> {
        let url = format!("{}{path}", self.base_url);
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = self
            .http
            .post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(body);
        if let Some(bearer) = bearer {
            request = request
                .header("Authorization", format!("Bearer {bearer}"))
                .header("Version", API_VERSION);
        }
        let response = request.send().await.map_err(|e| {
            EndpointError::Unreachable(if e.is_timeout() {
                format!("{url}: no answer within {} s", TOKEN_TIMEOUT.as_secs())
            } else {
                format!("{url}: {}", error_chain(&e))
            })
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let message = match json.get("message") {
                Some(Value::String(m)) => m.clone(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; "),
                _ => text.chars().take(300).collect(),
            };
            return Err(EndpointError::Refused {
                url,
                status,
                error: json
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                message,
                body: Box::new(json),
            });
        }
        TokenAnswer::from_json(&json)
            .map_err(|e| EndpointError::BadAnswer(format!("{url} answered {status}, but {e}")))
    }
}

/// The access token of one connection, kept fresh: what [`super::http::Http`]
/// asks for each request of a connection installed through OAuth.
pub struct Bearer {
    connection: String,
    store: Store,
    key: SecretKey,
    /// The app's credentials, or the variables that are unset (a refresh
    /// then fails, retried, while the stored access token still works).
    client: Result<OAuthClient, MissingVariables>,
    endpoint: TokenEndpoint,
    policy: TokenPolicy,
}

impl Bearer {
    /// The bearer of `connection`, refreshing at `endpoint` with `client`.
    pub fn new(
        connection: &str,
        store: Store,
        key: SecretKey,
        client: Result<OAuthClient, MissingVariables>,
        endpoint: TokenEndpoint,
        policy: TokenPolicy,
    ) -> Bearer {
        Bearer {
            connection: connection.to_string(),
            store,
            key,
            client,
            endpoint,
            policy,
        }
    }

    /// The connection's access token: the stored one while fresh, else a
    /// new one (one refresh across every replica). `rejected`: the token a
    /// call was just refused with (401), which is refreshed even if its
    /// stored expiry says it is fresh.
    pub async fn token(&self, rejected: Option<&str>) -> Result<String, TokenError> {
        self.store
            .access_token(
                &self.connection,
                &self.key,
                self.policy,
                rejected,
                |refresh_token| self.refresh(refresh_token),
            )
            .await
    }

    async fn refresh(&self, refresh_token: String) -> RefreshOutcome {
        let client = match &self.client {
            Ok(client) => client,
            Err(missing) => return RefreshOutcome::Failed(missing.to_string()),
        };
        match self.endpoint.refresh(client, &refresh_token).await {
            Ok(answer) => {
                tracing::info!(connection = %self.connection, "refreshed the GHL OAuth access token");
                RefreshOutcome::Refreshed(answer.tokens(now_ms()))
            }
            Err(e) if e.is_invalid_grant() => {
                tracing::warn!(connection = %self.connection, error = %e, "GHL refused the refresh token; the connection is disabled");
                RefreshOutcome::Refused(e.to_string())
            }
            Err(e) => RefreshOutcome::Failed(e.to_string()),
        }
    }
}

impl super::Executor {
    /// This executor, sending `bearer`'s access token where its rendered
    /// headers hold [`ACCESS_TOKEN_PLACEHOLDER`] (a connection installed
    /// through OAuth).
    pub fn with_oauth(mut self, bearer: Arc<Bearer>) -> super::Executor {
        self.http.oauth = Some(bearer);
        self
    }
}

/// Whether a failure to get a token means the connection cannot deliver at
/// all now (disabled, refused, gone): its events then wait, keeping their
/// attempts, as those of a disabled connection do. Any other failure is
/// retried as a call without an answer is.
pub(super) fn connection_stopped(e: &TokenError) -> bool {
    matches!(
        e,
        TokenError::Refused { .. }
            | TokenError::Disabled { .. }
            | TokenError::NotFound(_)
            | TokenError::NoTokens(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_token_answer_is_read_as_documented() {
        let answer = TokenAnswer::from_json(&json!({
            "access_token": "a", "token_type": "Bearer", "expires_in": 86399,
            "refresh_token": "r", "scope": "contacts.write", "userType": "Company",
            "locationId": null, "companyId": "c1", "approvedLocations": ["l1", "l2"],
            "userId": "u", "isBulkInstallation": true, "planId": "p"
        }))
        .unwrap();
        assert!(answer.is_company());
        assert_eq!(answer.location_id, None);
        assert_eq!(answer.company_id.as_deref(), Some("c1"));
        assert_eq!(answer.approved_locations, vec!["l1", "l2"]);
        let tokens = answer.tokens(1_000);
        assert_eq!(tokens.access_expires_at, 1_000 + 86_399_000);
        assert!(!format!("{answer:?}").contains("\"a\""));
    }

    #[test]
    fn an_answer_without_tokens_is_refused_and_no_lifetime_means_expired() {
        assert!(TokenAnswer::from_json(&json!({"access_token": "a"})).is_err());
        let answer =
            TokenAnswer::from_json(&json!({"access_token": "a", "refresh_token": "r"})).unwrap();
        assert_eq!(answer.tokens(5).access_expires_at, 5);
    }

    #[test]
    fn only_invalid_grant_on_a_400_is_a_refused_grant() {
        let refused = |status, error: Option<&str>| EndpointError::Refused {
            url: "u".into(),
            status,
            error: error.map(str::to_string),
            message: String::new(),
            body: Box::new(Value::Null),
        };
        assert!(refused(400, Some("invalid_grant")).is_invalid_grant());
        assert!(!refused(401, Some("invalid_client")).is_invalid_grant());
        assert!(!refused(500, Some("invalid_grant")).is_invalid_grant());
        assert!(!refused(400, None).is_invalid_grant());
    }

    #[test]
    fn the_missing_client_variables_are_named() {
        let none = |_: &str| None;
        let e = OAuthClient::from_env(&none).unwrap_err();
        assert_eq!(e.0, vec![CLIENT_ID_VARIABLE, CLIENT_SECRET_VARIABLE]);
        let id_only = |n: &str| (n == CLIENT_ID_VARIABLE).then(|| "id".to_string());
        let e = OAuthClient::from_env(&id_only).unwrap_err();
        assert_eq!(e.0, vec![CLIENT_SECRET_VARIABLE]);
        assert!(e.to_string().contains(CLIENT_SECRET_VARIABLE));
    }
}
