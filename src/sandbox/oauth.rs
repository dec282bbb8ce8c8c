//! GHL's OAuth 2.0 for a marketplace app, as the reference documents it
//! (`ghl-api.md` §1), mounted into the GHL simulator ([`super::ghl`]).
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /oauth/token` (form: `client_id`, `client_secret`, `grant_type`, `code` / `refresh_token`, `user_type`, `redirect_uri`) | 200 `{access_token, token_type: "Bearer", expires_in, refresh_token, scope, userType, locationId, companyId, approvedLocations, userId, isBulkInstallation, planId}` |
//! | `POST /oauth/locationToken` (form: `companyId`, `locationId`; an agency bearer; `Version`) | 200, a location token in the same shape |
//!
//! Rules where the reference is silent:
//! - There is no authorization page: a test mints a code with
//!   [`OAuth::issue_location_code`] (a sub-account install) or
//!   [`OAuth::issue_agency_code`] (an agency install with approved
//!   locations), as if the user had gone through `chooselocation`. A code
//!   is single-use.
//! - Refresh tokens are single-use and rotate: each use answers a new pair
//!   and retires the one used (the reference's FAQ: "rotates on each use").
//!   A used or unknown refresh token, or a used or unknown code, answers 400
//!   in GHL's error shape with `error: "invalid_grant"` (RFC 6749's code):
//!   `{"statusCode":400,"message":"…","error":"invalid_grant"}`. Wrong
//!   client credentials answer 401 `error: "invalid_client"`; the
//!   `client_credentials` grant, which the simulator does not model, 400
//!   `error: "unsupported_grant_type"`.
//! - The form is validated like GHL's JSON bodies: an unknown field is 422
//!   `property X should not exist`.
//! - `locationId` is `null` in a Company token's answer; `approvedLocations`
//!   lists the install's locations (one for a sub-account install).
//! - Access tokens live [`OAuthConfig::access_token_lifetime`] (GHL: about a
//!   day, `expires_in: 86399`); tests shorten it. On the API routes an
//!   unknown or expired access token answers 401 `Invalid token: access
//!   token is invalid`, an agency (Company) token 401 `The token is not
//!   authorized for this scope.` (reference §1), a location token of
//!   another location than the simulator's 403 `The token does not have
//!   access to this location.` (its answer to a foreign `locationId`); the
//!   static token of
//!   [`super::GhlConfig::token`] keeps working beside OAuth.
//! - `/oauth/token` needs no `Version` header and is not rate limited;
//!   `/oauth/locationToken` needs the `Version` header as the API does.
//! - [`OAuth::grants`] counts the token requests answered, by grant (and
//!   those refused with `invalid_grant`), so a test can count refreshes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::common::{Incoming, Reply, lock, parse_query};
use super::validate::{Dto, Kind, validate};

/// The OAuth settings of a GHL simulator.
#[derive(Clone, Debug)]
pub struct OAuthConfig {
    /// The app's client id.
    pub client_id: String,
    /// The app's client secret.
    pub client_secret: String,
    /// The agency (company) every install belongs to.
    pub company_id: String,
    /// `userId` of every token (the user who installed).
    pub user_id: String,
    /// `planId` of every token.
    pub plan_id: String,
    /// `scope` of every token (space-separated).
    pub scope: String,
    /// How long an access token is accepted (GHL: 86,399 s).
    pub access_token_lifetime: Duration,
}

impl Default for OAuthConfig {
    fn default() -> OAuthConfig {
        OAuthConfig {
            client_id: "sandbox-client-id".to_string(),
            client_secret: "sandbox-client-secret".to_string(),
            company_id: "company_sandbox".to_string(),
            user_id: "user_sandbox".to_string(),
            plan_id: "plan_sandbox".to_string(),
            scope: "contacts.readonly contacts.write locations/customFields.readonly \
                    locations/customFields.write opportunities.readonly opportunities.write"
                .to_string(),
            access_token_lifetime: Duration::from_secs(86_399),
        }
    }
}

/// Whom a token speaks for: a sub-account (`Location`) or an agency (`Company`).
#[derive(Clone, Debug, PartialEq)]
struct Grant {
    company: bool,
    location_id: Option<String>,
    approved_locations: Vec<String>,
    bulk: bool,
}

struct Access {
    grant: Grant,
    expires: Instant,
}

#[derive(Default)]
struct State {
    codes: HashMap<String, Grant>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Grant>,
    minted: u64,
    grants: Grants,
}

/// How many token requests the simulator has answered, by grant, so a test
/// can tell how often a client refreshed (e.g. exactly once under
/// concurrent deliveries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// `grant_type=authorization_code` answered with tokens.
    pub authorization_code: u64,
    /// `grant_type=refresh_token` answered with tokens.
    pub refresh_token: u64,
    /// `/oauth/locationToken` answered with a location token.
    pub location_token: u64,
    /// Codes and refresh tokens refused with `invalid_grant`.
    pub refused: u64,
}

/// What a bearer token is on the API routes.
pub(crate) enum Bearer {
    /// A sub-account access token that has not expired, for this location.
    Location(Option<String>),
    /// An agency access token that has not expired.
    Company,
    /// Unknown, or expired.
    Invalid,
}

/// The OAuth server of a GHL simulator: its codes and tokens. Reached
/// through [`super::GhlSandbox::oauth`].
pub struct OAuth {
    config: Mutex<OAuthConfig>,
    state: Mutex<State>,
}

const INVALID_TOKEN: &str = "Invalid token: access token is invalid";
const NOT_AUTHORIZED: &str = "The token is not authorized for this scope.";

/// GHL's error shape with an OAuth error code in `error`.
fn oauth_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"statusCode": status, "message": message, "error": code}),
    )
}

fn api_error(status: u16, message: &str) -> Reply {
    let reason = match status {
        401 => "Unauthorized",
        403 => "Forbidden",
        _ => "Bad Request",
    };
    Reply::json(
        status,
        json!({"statusCode": status, "message": message, "error": reason}),
    )
}

fn unprocessable(messages: Vec<String>) -> Reply {
    Reply::json(
        422,
        json!({"statusCode": 422, "message": messages, "error": "Unprocessable Entity"}),
    )
}

const TOKEN_DTO: Dto = Dto {
    props: &[
        ("client_id", Kind::Str),
        ("client_secret", Kind::Str),
        (
            "grant_type",
            Kind::Enum(&["authorization_code", "refresh_token", "client_credentials"]),
        ),
        ("code", Kind::Str),
        ("refresh_token", Kind::Str),
        ("user_type", Kind::Enum(&["Company", "Location"])),
        ("redirect_uri", Kind::Str),
    ],
    required: &["client_id", "client_secret", "grant_type"],
};

const LOCATION_TOKEN_DTO: Dto = Dto {
    props: &[("companyId", Kind::Str), ("locationId", Kind::Str)],
    required: &["companyId", "locationId"],
};

/// The form body as an object of strings (the last of a repeated field wins).
fn form_of(request: &Incoming, dto: &Dto) -> Result<Map<String, Value>, Reply> {
    let text = String::from_utf8_lossy(&request.raw);
    let form: Map<String, Value> = parse_query(text.trim())
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let errors = validate(dto, &form);
    if errors.is_empty() {
        Ok(form)
    } else {
        Err(unprocessable(errors))
    }
}

fn field<'a>(form: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    form.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl OAuth {
    pub(crate) fn new(config: OAuthConfig) -> OAuth {
        OAuth {
            config: Mutex::new(config),
            state: Mutex::new(State::default()),
        }
    }

    /// An authorization code for a sub-account install of `location_id`, as
    /// the redirect after `chooselocation` would carry it. Single-use.
    pub fn issue_location_code(&self, location_id: &str) -> String {
        self.issue_code(Grant {
            company: false,
            location_id: Some(location_id.to_string()),
            approved_locations: vec![location_id.to_string()],
            bulk: false,
        })
    }

    /// An authorization code for an agency install approved for `locations`
    /// (a bulk installation when there are several). Its token is a Company
    /// token: location tokens come from `/oauth/locationToken`.
    pub fn issue_agency_code(&self, locations: &[&str]) -> String {
        self.issue_code(Grant {
            company: true,
            location_id: None,
            approved_locations: locations.iter().map(|l| l.to_string()).collect(),
            bulk: locations.len() > 1,
        })
    }

    fn issue_code(&self, grant: Grant) -> String {
        let code = self.mint("code");
        lock(&self.state).codes.insert(code.clone(), grant);
        code
    }

    /// Sets how long access tokens issued from now on are accepted.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        lock(&self.config).access_token_lifetime = lifetime;
    }

    /// Expires every access token issued so far (refresh tokens stay valid).
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for access in lock(&self.state).access.values_mut() {
            access.expires = now;
        }
    }

    /// Revokes a refresh token, as an uninstall would.
    pub fn revoke_refresh_token(&self, refresh_token: &str) -> bool {
        lock(&self.state).refresh.remove(refresh_token).is_some()
    }

    /// The settings in force.
    pub fn config(&self) -> OAuthConfig {
        lock(&self.config).clone()
    }

    /// The token requests answered so far, by grant.
    pub fn grants(&self) -> Grants {
        lock(&self.state).grants
    }

    /// Refresh tokens that are still valid (each works once).
    pub fn valid_refresh_tokens(&self) -> usize {
        lock(&self.state).refresh.len()
    }

    /// A token no one can guess: random bytes, with a counter in case the
    /// operating system has no random source for a moment.
    fn mint(&self, kind: &str) -> String {
        let n = {
            let mut state = lock(&self.state);
            state.minted += 1;
            state.minted
        };
        let mut random = [0u8; 16];
        let _ = getrandom::fill(&mut random);
        format!("sandbox-{kind}-{n}-{}", hex::encode(random))
    }

    /// What `token` is on the API routes.
    pub(crate) fn bearer(&self, token: &str) -> Bearer {
        let state = lock(&self.state);
        match state.access.get(token) {
            Some(a) if a.expires > Instant::now() => {
                if a.grant.company {
                    Bearer::Company
                } else {
                    Bearer::Location(a.grant.location_id.clone())
                }
            }
            _ => Bearer::Invalid,
        }
    }

    /// Why an API request with this bearer to the simulator's location is
    /// refused, if it is (the static token is checked by the caller).
    pub(crate) fn refuse_api_bearer(&self, bearer: Option<&str>, location: &str) -> Option<Reply> {
        match bearer.map(|b| self.bearer(b)) {
            Some(Bearer::Location(Some(l))) if l == location => None,
            Some(Bearer::Location(_)) => Some(api_error(
                403,
                "The token does not have access to this location.",
            )),
            Some(Bearer::Company) => Some(api_error(401, NOT_AUTHORIZED)),
            Some(Bearer::Invalid) | None => Some(api_error(401, INVALID_TOKEN)),
        }
    }

    /// Serves the OAuth routes; `None` for any other path.
    pub(crate) fn route(&self, request: &Incoming, versions: &[String]) -> Option<Reply> {
        let segments = request.segments();
        match (request.method.as_str(), segments.as_slice()) {
            ("POST", ["oauth", "token"]) => Some(self.token(request)),
            ("POST", ["oauth", "locationToken"]) => Some(self.location_token(request, versions)),
            _ => None,
        }
    }

    /// A new access and refresh token for `grant`, as GHL answers them.
    fn issue_tokens(&self, grant: Grant) -> Reply {
        let config = self.config();
        let access = self.mint("access");
        let refresh = self.mint("refresh");
        {
            let mut state = lock(&self.state);
            state.access.insert(
                access.clone(),
                Access {
                    grant: grant.clone(),
                    expires: Instant::now() + config.access_token_lifetime,
                },
            );
            state.refresh.insert(refresh.clone(), grant.clone());
        }
        let lifetime = config.access_token_lifetime;
        let expires_in = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
        Reply::json(
            200,
            json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": expires_in,
                "refresh_token": refresh,
                "scope": config.scope,
                "userType": if grant.company { "Company" } else { "Location" },
                "locationId": grant.location_id,
                "companyId": config.company_id,
                "approvedLocations": grant.approved_locations,
                "userId": config.user_id,
                "isBulkInstallation": grant.bulk,
                "planId": config.plan_id,
            }),
        )
    }

    fn token(&self, request: &Incoming) -> Reply {
        let form = match form_of(request, &TOKEN_DTO) {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        let config = self.config();
        if field(&form, "client_id") != Some(config.client_id.as_str())
            || field(&form, "client_secret") != Some(config.client_secret.as_str())
        {
            return oauth_error(401, "invalid_client", "Invalid client credentials");
        }
        match field(&form, "grant_type") {
            Some("authorization_code") => {
                let Some(code) = field(&form, "code") else {
                    return unprocessable(vec!["code should not be empty".to_string()]);
                };
                let grant = {
                    let mut state = lock(&self.state);
                    let grant = state.codes.remove(code);
                    match grant {
                        Some(_) => state.grants.authorization_code += 1,
                        None => state.grants.refused += 1,
                    }
                    grant
                };
                match grant {
                    Some(grant) => self.issue_tokens(grant),
                    None => oauth_error(
                        400,
                        "invalid_grant",
                        "Invalid grant: authorization code is invalid",
                    ),
                }
            }
            Some("refresh_token") => {
                let Some(token) = field(&form, "refresh_token") else {
                    return unprocessable(vec!["refresh_token should not be empty".to_string()]);
                };
                // Removed as it is used: a second use finds nothing.
                let grant = {
                    let mut state = lock(&self.state);
                    let grant = state.refresh.remove(token);
                    match grant {
                        Some(_) => state.grants.refresh_token += 1,
                        None => state.grants.refused += 1,
                    }
                    grant
                };
                match grant {
                    Some(grant) => self.issue_tokens(grant),
                    None => oauth_error(
                        400,
                        "invalid_grant",
                        "Invalid grant: refresh token is invalid",
                    ),
                }
            }
            _ => oauth_error(
                400,
                "unsupported_grant_type",
                "The simulator supports the authorization_code and refresh_token grants",
            ),
        }
    }

    fn location_token(&self, request: &Incoming, versions: &[String]) -> Reply {
        let bearer = request
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "));
        let grant = {
            let state = lock(&self.state);
            bearer
                .and_then(|b| state.access.get(b))
                .filter(|a| a.expires > Instant::now())
                .map(|a| a.grant.clone())
        };
        let Some(grant) = grant else {
            return api_error(401, INVALID_TOKEN);
        };
        if !grant.company {
            return api_error(401, NOT_AUTHORIZED);
        }
        match request.header("version") {
            None => return api_error(401, "version header was not found."),
            Some(v) if !versions.iter().any(|a| a == v) => {
                return api_error(401, "version header is invalid");
            }
            Some(_) => {}
        }
        let form = match form_of(request, &LOCATION_TOKEN_DTO) {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        let config = self.config();
        if field(&form, "companyId") != Some(config.company_id.as_str()) {
            return api_error(403, "The token does not have access to this company.");
        }
        let Some(location) = field(&form, "locationId") else {
            return unprocessable(vec!["locationId should not be empty".to_string()]);
        };
        if !grant.approved_locations.iter().any(|l| l == location) {
            return api_error(403, "The token does not have access to this location.");
        }
        lock(&self.state).grants.location_token += 1;
        self.issue_tokens(Grant {
            company: false,
            location_id: Some(location.to_string()),
            approved_locations: vec![location.to_string()],
            bulk: false,
        })
    }
}
