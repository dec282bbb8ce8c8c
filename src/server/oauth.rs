//! Installing `mapper` as a GHL marketplace app.
//!
//! - `GET /oauth/ghl/callback?code=…`: where GHL sends the user back after
//!   `chooselocation`. The code is exchanged at `{GHL_API_BASE_URL}/oauth/token`
//!   with the app's `GHL_OAUTH_CLIENT_ID`, `GHL_OAUTH_CLIENT_SECRET` and
//!   `GHL_OAUTH_REDIRECT_URI`, and the connection of the answer's
//!   `locationId` is created (named after the location) or updated with the
//!   tokens, sealed with `MAPPER_SECRET_KEY`, and enabled. An agency
//!   (Company) install gets one location token per location of the answer's
//!   `approvedLocations` from `/oauth/locationToken`, and one connection
//!   each; the agency token itself is not kept.
//! - [`lifecycle`]: GHL's `INSTALL` and `UNINSTALL` webhooks (reference §7.1,
//!   `type` field) enable and disable the connection of their `locationId`.
//!   This is Rust, not a mapping: a mapping acts on a target for a
//!   connection, and a disabled connection's events are kept undelivered,
//!   so an `INSTALL` could never be delivered to the connection it enables.
//!
//! Refusals are JSON, as the webhooks' are: `{"error": code, "message": …}`,
//! plus `field` or `variable` naming what to fix.

use super::AppState;
use crate::secrets::{SECRET_KEY_VARIABLE, SecretError, SecretKey};
use crate::store::connections::{ConnectionError, LOCATION_VARIABLE, OAuthTokens, valid_name};
use crate::store::{Store, StoreError, now_ms};
use crate::targets::oauth::{
    ACCESS_TOKEN_VARIABLE, EndpointError, OAuthClient, REDIRECT_URI_VARIABLE, TokenEndpoint,
    base_url,
};
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;

/// The callback's path: the redirect URI registered with the app is this
/// server's address followed by it.
pub const CALLBACK_PATH: &str = "/oauth/ghl/callback";

/// The reason an `UNINSTALL` webhook disables a connection with.
pub const UNINSTALLED: &str = "uninstalled from GHL";

/// `type` of GHL's app-install webhook (reference §7.1: AppInstall).
pub const INSTALL: &str = "INSTALL";
/// `type` of GHL's app-uninstall webhook (AppUninstall).
pub const UNINSTALL: &str = "UNINSTALL";

/// Reads a variable of the process's environment.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

struct Installer {
    app: Arc<AppState>,
    env: EnvLookup,
}

/// The route of the OAuth callback, over the app's store and mapping set;
/// `env` gives the app's client credentials and `MAPPER_SECRET_KEY`.
pub fn router(app: Arc<AppState>, env: EnvLookup) -> axum::Router {
    axum::Router::new()
        .route(CALLBACK_PATH, get(callback))
        .with_state(Arc::new(Installer { app, env }))
}

/// Why an install did not happen; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The request has no `code` (not a redirect from GHL, or the user
    /// did not approve).
    #[error(
        "no `code` in the query: this URL is where GHL sends the user back after installing the app ({CALLBACK_PATH}?code=…)"
    )]
    MissingCode,
    /// The app's OAuth settings are not in the environment.
    #[error("GHL OAuth is not configured: {} {} not set", .0.join(" and "), if .0.len() == 1 { "is" } else { "are" })]
    NotConfigured(Vec<String>),
    /// Tokens cannot be stored without the key.
    #[error("{0}")]
    SecretKey(SecretError),
    /// No `GHL_API_BASE_URL`, and no target profile declares its default.
    #[error(
        "GHL_API_BASE_URL is not set and no target profile declares a default for it: the token endpoint is unknown"
    )]
    NoBaseUrl,
    /// GHL refused the code (used, expired, or for another app).
    #[error("GHL refused the authorization code ({status}{}): {message}", .error.as_deref().map(|e| format!(", {e}")).unwrap_or_default())]
    CodeRefused {
        /// GHL's status.
        status: u16,
        /// GHL's OAuth error code.
        error: Option<String>,
        /// GHL's message.
        message: String,
        /// GHL's body, relayed.
        body: Box<Value>,
    },
    /// The token endpoint failed otherwise (no answer, our client refused,
    /// an answer without tokens).
    #[error("the GHL token exchange failed: {0}")]
    Endpoint(EndpointError),
    /// The answer names no location to install.
    #[error("{0}")]
    NoLocation(String),
    /// The connection could not be created or updated.
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    /// The database failed.
    #[error("the database failed: {0}")]
    Store(#[from] StoreError),
}

impl InstallError {
    fn status(&self) -> StatusCode {
        match self {
            InstallError::MissingCode | InstallError::CodeRefused { .. } => StatusCode::BAD_REQUEST,
            InstallError::NotConfigured(_)
            | InstallError::SecretKey(_)
            | InstallError::NoBaseUrl
            | InstallError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            InstallError::Endpoint(_) | InstallError::NoLocation(_) => StatusCode::BAD_GATEWAY,
            InstallError::Connection(ConnectionError::Store(_)) => StatusCode::SERVICE_UNAVAILABLE,
            InstallError::Connection(_) => StatusCode::CONFLICT,
        }
    }

    /// The answer's `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            InstallError::MissingCode => "missing_code",
            InstallError::NotConfigured(_) => "oauth_not_configured",
            InstallError::SecretKey(SecretError::NoKey) => "no_secret_key",
            InstallError::SecretKey(_) => "bad_secret_key",
            InstallError::NoBaseUrl => "oauth_not_configured",
            InstallError::CodeRefused { .. } => "code_refused",
            InstallError::Endpoint(_) => "token_exchange_failed",
            InstallError::NoLocation(_) => "no_location",
            InstallError::Connection(ConnectionError::Store(_)) | InstallError::Store(_) => {
                "store_failed"
            }
            InstallError::Connection(_) => "connection_conflict",
        }
    }

    fn body(&self) -> Value {
        let mut body = json!({"error": self.code(), "message": self.to_string()});
        match self {
            InstallError::MissingCode => body["field"] = "code".into(),
            InstallError::NotConfigured(vars) => {
                body["variable"] = vars.first().cloned().unwrap_or_default().into();
                body["variables"] = vars.clone().into();
            }
            InstallError::SecretKey(_) => body["variable"] = SECRET_KEY_VARIABLE.into(),
            InstallError::NoBaseUrl => body["variable"] = "GHL_API_BASE_URL".into(),
            InstallError::CodeRefused { body: ghl, .. } => body["ghl"] = Value::clone(ghl),
            InstallError::Endpoint(EndpointError::Refused { body: ghl, .. }) => {
                body["ghl"] = Value::clone(ghl)
            }
            _ => {}
        }
        body
    }
}

impl IntoResponse for InstallError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

/// One location installed.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    /// The connection that holds its tokens.
    pub connection: String,
    /// Its GHL location id.
    pub location_id: String,
    /// The connection was created by this install.
    pub created: bool,
    /// The connection was disabled (uninstalled, a refused refresh, an
    /// operator) and is enabled again.
    pub reenabled: bool,
    /// The connection has a PIT (`GHL_API_TOKEN`), which keeps being used.
    pub keeps_pit: bool,
}

async fn callback(
    State(installer): State<Arc<Installer>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    match install(&installer, query.as_deref().unwrap_or("")).await {
        Ok((installed, failed)) => {
            for i in &installed {
                tracing::info!(connection = %i.connection, location = %i.location_id, created = i.created, "installed through GHL OAuth");
            }
            for (location, e) in &failed {
                tracing::warn!(location = %location, error = %e, "a location of the GHL install failed");
            }
            if html {
                Html(page(&installed, &failed)).into_response()
            } else {
                Json(json!({
                    "installed": installed.iter().map(|i| json!({
                        "connection": i.connection,
                        "location_id": i.location_id,
                        "created": i.created,
                        "reenabled": i.reenabled,
                        "keeps_pit": i.keeps_pit,
                    })).collect::<Vec<_>>(),
                    "failed": failed.iter().map(|(location, e)| {
                        let mut body = e.body();
                        body["location_id"] = location.clone().into();
                        body
                    }).collect::<Vec<_>>(),
                    "message": summary(&installed),
                }))
                .into_response()
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "a GHL OAuth install was refused");
            e.into_response()
        }
    }
}

/// One line per installed connection, for people.
fn summary(installed: &[Installed]) -> String {
    installed
        .iter()
        .map(|i| {
            let mut line = format!(
                "connection `{}` {} for GHL location {}",
                i.connection,
                if i.created { "created" } else { "updated" },
                i.location_id
            );
            if i.reenabled {
                line.push_str(" (enabled again)");
            }
            if i.keeps_pit {
                line.push_str(
                    "; it has a Private Integration Token (GHL_API_TOKEN), which is still the one used",
                );
            }
            line
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn page(installed: &[Installed], failed: &[(String, InstallError)]) -> String {
    let mut items = String::new();
    for i in installed {
        items.push_str(&format!(
            "<li>connection <code>{}</code> {} for location <code>{}</code>{}</li>",
            escape(&i.connection),
            if i.created { "created" } else { "updated" },
            escape(&i.location_id),
            if i.keeps_pit {
                " (its Private Integration Token is still the one used)"
            } else {
                ""
            }
        ));
    }
    for (location, e) in failed {
        items.push_str(&format!(
            "<li>location <code>{}</code> failed: {}</li>",
            escape(location),
            escape(&e.to_string())
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mapper: installed</title></head>\
         <body><h1>mapper is installed</h1><ul>{items}</ul>\
         <p>You can close this page.</p></body></html>"
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The value of `name` in a query string (`+` and `%XX` decoded).
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            let v = v.replace('+', " ");
            urlencoding::decode(&v).map(|s| s.into_owned()).unwrap_or(v)
        })
    })
}

/// What the callback does: checks, the exchange, then each location.
/// The locations installed, and those that failed (an agency install
/// installs what it can).
async fn install(
    installer: &Installer,
    query: &str,
) -> Result<(Vec<Installed>, Vec<(String, InstallError)>), InstallError> {
    let code = query_value(query, "code")
        .filter(|c| !c.trim().is_empty())
        .ok_or(InstallError::MissingCode)?;
    let env = &*installer.env;
    let (client, redirect_uri) = {
        let redirect = env(REDIRECT_URI_VARIABLE).filter(|v| !v.trim().is_empty());
        match (OAuthClient::from_env(env), redirect) {
            (Ok(client), Some(redirect)) => (client, redirect),
            (client, redirect) => {
                let mut missing = client.err().map(|m| m.0).unwrap_or_default();
                if redirect.is_none() {
                    missing.push(REDIRECT_URI_VARIABLE.to_string());
                }
                return Err(InstallError::NotConfigured(missing));
            }
        }
    };
    let key = match env(SECRET_KEY_VARIABLE) {
        Some(text) if !text.trim().is_empty() => {
            SecretKey::from_env_value(&text).map_err(InstallError::SecretKey)?
        }
        _ => return Err(InstallError::SecretKey(SecretError::NoKey)),
    };
    let program = installer.app.loaded.load().program.clone();
    let base = base_url(&program, env).ok_or(InstallError::NoBaseUrl)?;
    let endpoint = TokenEndpoint::new(&base);
    let answer = match endpoint.exchange_code(&client, &code, &redirect_uri).await {
        Ok(answer) => answer,
        Err(EndpointError::Refused {
            status: 400,
            error,
            message,
            body,
            ..
        }) => {
            return Err(InstallError::CodeRefused {
                status: 400,
                error,
                message,
                body,
            });
        }
        Err(e) => return Err(InstallError::Endpoint(e)),
    };
    let store = &installer.app.store;
    if !answer.is_company() {
        // A sub-account install: its token is the location's.
        let location = answer
            .location_id
            .clone()
            .or_else(|| match answer.approved_locations.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                InstallError::NoLocation(
                    "GHL's token answer names no locationId: nothing to install".to_string(),
                )
            })?;
        let installed = install_location(store, &key, &location, &answer.tokens(now_ms())).await?;
        return Ok((vec![installed], Vec::new()));
    }
    // An agency install: the reference gives its locations as the answer's
    // `approvedLocations` (it also names `GET /oauth/installedLocations`,
    // whose answer it does not describe, so that is not called).
    let company = answer.company_id.clone().ok_or_else(|| {
        InstallError::NoLocation(
            "GHL's Company token answer names no companyId: location tokens cannot be requested"
                .to_string(),
        )
    })?;
    if answer.approved_locations.is_empty() {
        return Err(InstallError::NoLocation(
            "GHL's Company token answer lists no approvedLocations: no location to install"
                .to_string(),
        ));
    }
    let mut installed = Vec::new();
    let mut failed = Vec::new();
    for location in &answer.approved_locations {
        let outcome = match endpoint
            .location_token(&answer.access_token, &company, location)
            .await
        {
            Ok(token) => install_location(store, &key, location, &token.tokens(now_ms())).await,
            Err(e) => Err(InstallError::Endpoint(e)),
        };
        match outcome {
            Ok(i) => installed.push(i),
            Err(e) => failed.push((location.clone(), e)),
        }
    }
    if installed.is_empty() {
        // Nothing installed: the first location's error is the answer.
        let mut failed = failed.into_iter();
        return Err(failed.next().map(|(_, e)| e).unwrap_or_else(|| {
            InstallError::NoLocation("no location of the install could be installed".to_string())
        }));
    }
    Ok((installed, failed))
}

/// A connection name for a new location: its id where that is a valid
/// name (GHL's ids are letters and digits), else its id made one.
fn name_for(location: &str) -> String {
    if valid_name(location) {
        return location.to_string();
    }
    let cleaned: String = location
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    if cleaned.is_empty() {
        "ghl-location".to_string()
    } else {
        cleaned
    }
}

/// Creates or updates the connection of `location` with `tokens`, and
/// enables it: an install is the user asking for it to run.
pub async fn install_location(
    store: &Store,
    key: &SecretKey,
    location: &str,
    tokens: &OAuthTokens,
) -> Result<Installed, InstallError> {
    let (connection, created) = match store.connection_for_location(location).await? {
        Some(c) => (c, false),
        None => create_for(store, key, location).await?,
    };
    let name = connection.name.clone();
    // Compare-and-set on the version: a replica may be rotating the old
    // pair at this moment; the install's pair is the one to keep.
    let mut stored = false;
    for _ in 0..10 {
        let Some(current) = store.connection(&name).await? else {
            return Err(ConnectionError::NotFound(name).into());
        };
        if store
            .store_tokens(&name, current.token_version, tokens, key)
            .await?
        {
            stored = true;
            break;
        }
    }
    if !stored {
        return Err(InstallError::Store(StoreError::Busy(format!(
            "the tokens of connection `{name}` kept changing while the install stored its own"
        ))));
    }
    let reenabled = !connection.enabled;
    if reenabled {
        store.enable_connection(&name).await?;
    }
    Ok(Installed {
        keeps_pit: connection.sealed_vars.contains_key(ACCESS_TOKEN_VARIABLE),
        connection: name,
        location_id: location.to_string(),
        created,
        reenabled,
    })
}

/// Adds the connection of a location no connection has yet; another
/// install of it at the same moment is found instead of refused.
async fn create_for(
    store: &Store,
    key: &SecretKey,
    location: &str,
) -> Result<(crate::store::connections::Connection, bool), InstallError> {
    let vars = [(LOCATION_VARIABLE.to_string(), location.to_string())]
        .into_iter()
        .collect();
    let base = name_for(location);
    for n in 1..=20 {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        match store.add_connection(&name, &vars, Some(key)).await {
            Ok(c) => return Ok((c, true)),
            // The name is another connection's (without this location).
            Err(ConnectionError::Exists(_)) => {
                if let Some(c) = store.connection_for_location(location).await? {
                    return Ok((c, false));
                }
            }
            Err(ConnectionError::DuplicateLocation { .. }) => {
                if let Some(c) = store.connection_for_location(location).await? {
                    return Ok((c, false));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ConnectionError::Exists(base).into())
}

/// GHL's `INSTALL` / `UNINSTALL` webhooks, applied when they are received:
/// `UNINSTALL` disables the connection of the body's location (`route.by`
/// of the source) with the reason [`UNINSTALLED`]; `INSTALL` enables it when
/// it has tokens or a PIT, and otherwise only records the install (the
/// tokens come with the callback, which enables it). Returns what was done,
/// for the stored event's note, or `None` when the event is not one of
/// these (another source, another type). Only sources verified as GHL's
/// marketplace webhooks (`verify.method: ghl`) that route by location can
/// do this: the signature says GHL sent it, the location says whose it is.
pub async fn lifecycle(
    store: &Store,
    source: &crate::program::Source,
    event_type: &str,
    payload: &Value,
) -> Result<Option<String>, StoreError> {
    if source.verify.method != crate::config::model::VerifyMethod::Ghl
        || (event_type != INSTALL && event_type != UNINSTALL)
    {
        return Ok(None);
    }
    let Some(route) = &source.route else {
        return Ok(None);
    };
    let location = match route.by.select(payload) {
        Some(Value::String(text)) => text,
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Ok(Some(format!(
                "{event_type} without a location: no connection changed"
            )));
        }
    };
    let Some(connection) = store.connection_for_location(&location).await? else {
        return Ok(Some(match event_type {
            UNINSTALL => format!(
                "uninstalled from GHL; no stored connection has {} = {location}: nothing to disable",
                route.variable
            ),
            _ => format!(
                "installed from GHL; no connection has {} = {location} yet: the OAuth callback ({CALLBACK_PATH}) creates it with its tokens",
                route.variable
            ),
        }));
    };
    let name = &connection.name;
    if event_type == UNINSTALL {
        store.disable_connection(name, UNINSTALLED).await?;
        tracing::info!(connection = %name, location = %location, "disabled: uninstalled from GHL");
        return Ok(Some(format!("connection `{name}` disabled: {UNINSTALLED}")));
    }
    let can_deliver = connection.sealed_tokens.is_some()
        || connection.sealed_vars.contains_key(ACCESS_TOKEN_VARIABLE);
    if !can_deliver {
        return Ok(Some(format!(
            "installed from GHL; connection `{name}` has no tokens yet: the OAuth callback ({CALLBACK_PATH}) stores them and enables it"
        )));
    }
    if connection.enabled {
        return Ok(Some(format!(
            "installed from GHL; connection `{name}` was enabled already"
        )));
    }
    // Only what an UNINSTALL disabled is undone by an INSTALL: an operator's
    // `mapper connection disable`, or a refused refresh (whose tokens are
    // dead: the OAuth callback brings new ones), stays as it was.
    if let Some(reason) = connection
        .disabled_reason
        .as_deref()
        .filter(|reason| *reason != UNINSTALLED)
    {
        return Ok(Some(format!(
            "installed from GHL; connection `{name}` stays disabled ({reason}): `mapper connection enable {name}` enables it"
        )));
    }
    store.enable_connection(name).await?;
    tracing::info!(connection = %name, location = %location, "enabled: installed from GHL");
    Ok(Some(format!(
        "connection `{name}` enabled: installed from GHL"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_value("a=1&code=ab%2Fc+d&x", "code").as_deref(),
            Some("ab/c d")
        );
        assert_eq!(query_value("x", "x").as_deref(), Some(""));
        assert_eq!(query_value("", "code"), None);
    }

    #[test]
    fn location_ids_become_connection_names() {
        assert_eq!(name_for("ve9EPM428h8vShlRW1KT"), "ve9EPM428h8vShlRW1KT");
        assert_eq!(name_for("a b/c"), "a-b-c");
        assert_eq!(name_for(""), "ghl-location");
        assert!(valid_name(&name_for(&"é".repeat(100))));
    }

    #[test]
    fn refusals_name_what_to_fix() {
        let e = InstallError::NotConfigured(vec![
            "GHL_OAUTH_CLIENT_SECRET".into(),
            "GHL_OAUTH_REDIRECT_URI".into(),
        ]);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = e.body();
        assert_eq!(body["error"], "oauth_not_configured");
        assert_eq!(body["variable"], "GHL_OAUTH_CLIENT_SECRET");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("GHL_OAUTH_REDIRECT_URI are not set")
        );
        let e = InstallError::SecretKey(SecretError::NoKey);
        assert_eq!(e.body()["variable"], SECRET_KEY_VARIABLE);
        assert_eq!(e.code(), "no_secret_key");
        assert_eq!(escape("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
