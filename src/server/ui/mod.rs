//! The operator console: server-rendered pages under `/ui` on the webhook
//! address, enabled by `MAPPER_UI_TOKEN` (see README, "Operator console").
//!
//! The pages are minijinja templates compiled into the binary (HTML
//! escaping on), with htmx vendored under `assets/` for auto-refresh and
//! partial updates; every page also works as plain links and forms. Reads go
//! through `store::console`; the actions call the same store functions as
//! `mapper replay` ([`crate::store::Store::replay`],
//! [`crate::store::Store::replay_failed_writes`]).
//!
//! Nothing here runs on the webhook path: the console's router is merged
//! beside the receiver's, and its one background task samples the queue
//! depth twice a minute.

mod auth;
mod charts;
pub mod mask;
mod pages;

use super::AppState;
use auth::{Auth, Operator};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use auth::{COOKIE, same_secret};

/// A fresh random console token (64 hex characters), for `mapper demo`.
pub fn random_token() -> Option<String> {
    auth::random_hex()
}

/// The variable that turns the console on and holds its token.
pub const TOKEN_VARIABLE: &str = "MAPPER_UI_TOKEN";

/// How often the queue depth is sampled, and how many samples are kept (an hour).
const DEPTH_EVERY: Duration = Duration::from_secs(30);
const DEPTH_SAMPLES: usize = 120;

/// Why the console cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console's templates do not compile: {0}")]
    Templates(#[from] minijinja::Error),
    #[error("the system gave no randomness for the console's session keys")]
    NoRandomness,
    #[error("{TOKEN_VARIABLE} is empty: set it to a long random value, or unset it")]
    EmptyToken,
}

/// What the console's handlers share.
pub struct Console {
    app: Arc<AppState>,
    auth: Auth,
    pages: minijinja::Environment<'static>,
    /// (epoch ms, events waiting or in delivery), oldest first.
    depth: Mutex<VecDeque<(i64, i64)>>,
}

/// The console's routes, to merge beside [`super::router`]'s.
pub fn router(app: Arc<AppState>, token: &str) -> Result<Router, ConsoleError> {
    if token.is_empty() {
        return Err(ConsoleError::EmptyToken);
    }
    let console = Arc::new(Console {
        app,
        auth: Auth::new(token).ok_or(ConsoleError::NoRandomness)?,
        pages: pages::environment()?,
        depth: Mutex::new(VecDeque::new()),
    });
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(sample_depth(Arc::downgrade(&console)));
    }
    let protected = Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(pages::overview))
        .route("/ui/events", get(pages::events))
        .route("/ui/events/rows", get(pages::event_rows))
        .route("/ui/events/{id}", get(pages::event))
        .route("/ui/events/{id}/replay", post(pages::replay_event))
        .route("/ui/customers/{id}", get(pages::customer))
        .route("/ui/mappings", get(pages::mappings))
        .route("/ui/actions", get(pages::actions))
        .route("/ui/replay", post(pages::replay_filtered))
        .route("/ui/held/requeue", post(pages::requeue_held))
        .route("/ui/csrf", get(csrf))
        .route("/ui/logout", post(pages::logout))
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            authenticate,
        ));
    Ok(Router::new()
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/assets/{file}", get(asset))
        .merge(protected)
        .layer(middleware::map_response(security_headers))
        .with_state(console))
}

/// Samples the queue depth until the console is dropped.
async fn sample_depth(console: Weak<Console>) {
    loop {
        let Some(c) = console.upgrade() else { return };
        if let Ok(depth) = c.app.store.queue_depth().await
            && let Ok(mut samples) = c.depth.lock()
        {
            samples.push_back((crate::store::now_ms(), depth));
            while samples.len() > DEPTH_SAMPLES {
                samples.pop_front();
            }
        }
        drop(c);
        tokio::time::sleep(DEPTH_EVERY).await;
    }
}

/// Recognises the operator (bearer token or session cookie) or refuses.
async fn authenticate(
    State(console): State<Arc<Console>>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let operator = if let Some(value) = headers.get(header::AUTHORIZATION) {
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !console.auth.token_matches(given.trim()) {
            return UiError::Unauthorized.into_response();
        }
        console.auth.bearer()
    } else {
        let session = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| auth::cookie(v, COOKIE))
            .and_then(|id| console.auth.session(id));
        match session {
            Some(op) => op,
            // A person following a link is shown the login form; a script gets the error.
            None if request.method() == Method::GET && wants_html(headers) => {
                return Redirect::to("/ui/login").into_response();
            }
            None => return UiError::Unauthorized.into_response(),
        }
    };
    request.extensions_mut().insert(operator);
    next.run(request).await
}

fn wants_html(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The CSRF token of the caller, for scripts using the bearer token.
async fn csrf(axum::Extension(op): axum::Extension<Operator>) -> Response {
    axum::Json(json!({ "csrf": op.csrf })).into_response()
}

/// Headers of every console answer: no framing, no caching of personal
/// data, scripts and styles from the binary only.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

const HTMX: &str = include_str!("assets/htmx.min.js");
const HTMX_LICENSE: &str = include_str!("assets/htmx.LICENSE");
const CSS: &str = include_str!("assets/console.css");

/// The files served from the binary: the page needs nothing from elsewhere.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "htmx.LICENSE" => (HTMX_LICENSE, "text/plain; charset=utf-8"),
        "console.css" => (CSS, "text/css; charset=utf-8"),
        _ => return UiError::NotFound(format!("no asset `{file}`")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Why a console request was not served: `{"error": code, "message": …}`,
/// as the receiver answers.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("log in at /ui/login, or send Authorization: Bearer <MAPPER_UI_TOKEN>")]
    Unauthorized,
    #[error(
        "the CSRF token is missing or wrong: send the page's form field `csrf` or the header X-CSRF-Token (scripts: GET /ui/csrf)"
    )]
    Csrf,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the database answered: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the page could not be rendered: {0}")]
    Render(#[from] minijinja::Error),
}

impl UiError {
    fn code(&self) -> &'static str {
        match self {
            UiError::Unauthorized => "unauthorized",
            UiError::Csrf => "csrf",
            UiError::NotFound(_) => "not_found",
            UiError::BadRequest(_) => "bad_request",
            UiError::Store(_) => "store_failed",
            UiError::Render(_) => "render_failed",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            UiError::Unauthorized => StatusCode::UNAUTHORIZED,
            UiError::Csrf => StatusCode::FORBIDDEN,
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            UiError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        if matches!(self, UiError::Store(_) | UiError::Render(_)) {
            tracing::error!(error = %self, "the console could not answer");
        }
        let mut response = (
            self.status(),
            axum::Json(json!({"error": self.code(), "message": self.to_string()})),
        )
            .into_response();
        if matches!(self, UiError::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mapper console\""),
            );
        }
        response
    }
}
