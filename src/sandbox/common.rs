//! What both simulators share: the HTTP loop (body reading, request log,
//! fault injection), the rate limiter, query parsing, ids, timestamps and
//! the webhook outbox.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};

/// Largest request body a simulator reads (larger → 413).
const MAX_BODY: usize = 1 << 20;

/// One request as a simulator saw it, in arrival order.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path as sent, e.g. `/contacts/abc/tags`.
    pub path: String,
    /// The raw query string (without `?`), if any.
    pub query: Option<String>,
    /// The body parsed as JSON; `Value::String` holding the raw text when it
    /// is not JSON; `None` when empty.
    pub body: Option<Value>,
    /// The status answered; `None` while the request is still being served
    /// (e.g. held by a [`Fault::Hang`]).
    pub status: Option<u16>,
    /// When the request arrived.
    pub received: std::time::Instant,
    /// When it was answered.
    pub answered: Option<std::time::Instant>,
}

/// A failure the simulator serves instead of the real answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer this status (e.g. 500, 502, 503) with the simulator's error shape.
    Status(u16),
    /// Answer 429, with `Retry-After: <seconds>` when given.
    TooManyRequests {
        /// Seconds for the `Retry-After` header; `None` sends no header.
        retry_after: Option<u64>,
    },
    /// Hold the request this long before serving it normally (a client with a
    /// shorter timeout sees a timeout; if it gave up, the request is dropped
    /// unserved with its connection).
    Hang(Duration),
    /// Serve the request (its effect happens), then hold the answer this
    /// long: a client that times out never learns that it succeeded.
    AnswerLate(Duration),
    /// Answer this status (502, 503…) with `Retry-After: <seconds>`, as a
    /// gateway in maintenance or an overloaded API does.
    StatusRetryAfter {
        /// The status answered.
        status: u16,
        /// Seconds for the `Retry-After` header.
        retry_after: u64,
    },
    /// Serve the request (its effect happens), send the status line, the
    /// headers with the full `Content-Length` and half the body, then close
    /// the connection: the client reads a truncated answer it cannot trust.
    ResetMidBody,
    /// Serve the request (its effect happens), send the status line and
    /// headers at once, then the body in pieces with this pause between
    /// them (a congested link or a slow proxy).
    SlowBody(Duration),
    /// Serve the request (its effect happens), then answer 200 with a body
    /// that is not JSON (an HTML page a proxy put in its place).
    InvalidJson,
    /// Refuse the request as the API refuses a revoked token: 401 with the
    /// API's error body (GHL: `Invalid token: access token is invalid`).
    Revoked,
    /// Refuse the request as the API's validation does: 422 with these
    /// messages (GHL: `message` is an array of strings).
    Unprocessable(Vec<String>),
}

struct FaultRule {
    fault: Fault,
    remaining: usize,
    path_prefix: Option<String>,
}

/// Rate limit of a simulator: a sliding window of `max` requests per
/// `interval`, and an optional budget per day (counted from the start of the
/// simulator, reset every 24 h).
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Requests allowed per `interval`.
    pub max: u32,
    /// Length of the window.
    pub interval: Duration,
    /// Requests allowed per day; `None` for no daily budget.
    pub daily: Option<u64>,
}

impl RateLimit {
    /// GHL's documented limits: 100 per 10 s, 200,000 per day.
    pub fn ghl() -> RateLimit {
        RateLimit {
            max: 100,
            interval: Duration::from_secs(10),
            daily: Some(200_000),
        }
    }

    /// A limit that no test reaches (u32::MAX per second, no daily budget).
    pub fn unlimited() -> RateLimit {
        RateLimit {
            max: u32::MAX,
            interval: Duration::from_secs(1),
            daily: None,
        }
    }
}

/// The outcome of counting one request against a [`RateLimit`].
pub(crate) struct Quota {
    pub allowed: bool,
    pub max: u32,
    pub remaining: u32,
    pub interval_ms: u128,
    pub daily: Option<u64>,
    pub daily_remaining: Option<u64>,
    /// Whole seconds until a request would be allowed again (at least 1).
    pub retry_after: u64,
}

pub(crate) struct Limiter {
    config: RateLimit,
    window: VecDeque<Instant>,
    day_start: Instant,
    day_count: u64,
}

impl Limiter {
    pub fn new(config: RateLimit) -> Limiter {
        Limiter {
            config,
            window: VecDeque::new(),
            day_start: Instant::now(),
            day_count: 0,
        }
    }

    pub fn reset(&mut self) {
        self.window.clear();
        self.day_count = 0;
        self.day_start = Instant::now();
    }

    /// Counts a request if it fits; a refused request is not counted.
    pub fn check(&mut self) -> Quota {
        let now = Instant::now();
        if now.duration_since(self.day_start) >= Duration::from_secs(86_400) {
            self.day_start = now;
            self.day_count = 0;
        }
        while let Some(first) = self.window.front() {
            if now.duration_since(*first) >= self.config.interval {
                self.window.pop_front();
            } else {
                break;
            }
        }
        let in_window = u32::try_from(self.window.len()).unwrap_or(u32::MAX);
        let daily_ok = self.config.daily.is_none_or(|d| self.day_count < d);
        let allowed = in_window < self.config.max && daily_ok;
        if allowed {
            self.window.push_back(now);
            self.day_count += 1;
        }
        let used = u32::try_from(self.window.len()).unwrap_or(u32::MAX);
        let retry_after = if !daily_ok {
            86_400u64.saturating_sub(now.duration_since(self.day_start).as_secs())
        } else {
            self.window
                .front()
                .map(|first| {
                    let wait = self
                        .config
                        .interval
                        .saturating_sub(now.duration_since(*first));
                    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
                })
                .unwrap_or(1)
        };
        Quota {
            allowed,
            max: self.config.max,
            remaining: self.config.max.saturating_sub(used),
            interval_ms: self.config.interval.as_millis(),
            daily: self.config.daily,
            daily_remaining: self.config.daily.map(|d| d.saturating_sub(self.day_count)),
            retry_after: retry_after.max(1),
        }
    }
}

/// The parts of a request a simulator looks at.
pub(crate) struct Incoming {
    pub method: Method,
    /// The path without its trailing `/` (`/contacts/` → `/contacts`).
    pub path: String,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    /// `None`: empty body; `Some(Err(msg))`: not JSON.
    pub body: Option<Result<Value, String>>,
    /// The body as received (form bodies, such as GHL's `/oauth/token`).
    pub raw: axum::body::Bytes,
}

impl Incoming {
    /// The path split on `/`, without empty segments.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// First value of a query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An answer: status, extra headers, JSON body.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// A simulator's request handling, behind the shared HTTP loop.
pub(crate) trait Simulator: Send + Sync + 'static {
    /// The log and faults of this simulator.
    fn controls(&self) -> &Controls;
    /// The error body this API answers for `status` (used by faults).
    fn error_body(&self, status: u16, message: &str) -> Value;
    /// The body of this API's 422 for these validation messages.
    fn unprocessable_body(&self, messages: &[String]) -> Value {
        self.error_body(422, &messages.join("; "))
    }
    /// The message this API answers a revoked or invalid token with.
    fn revoked_message(&self) -> &'static str {
        "Unauthenticated."
    }
    /// Serves one request (auth, rate limit, routing, state).
    fn handle(&self, request: &Incoming) -> Reply;
}

/// Request log and fault rules, shared by handle and server.
#[derive(Default)]
pub(crate) struct Controls {
    log: Mutex<Vec<LoggedRequest>>,
    faults: Mutex<Vec<FaultRule>>,
}

/// Locks a mutex, recovering the data if a panic poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controls {
    pub fn inject(&self, fault: Fault, times: usize, path_prefix: Option<&str>) {
        lock(&self.faults).push(FaultRule {
            fault,
            remaining: times,
            path_prefix: path_prefix.map(str::to_string),
        });
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub fn request_log(&self) -> Vec<LoggedRequest> {
        lock(&self.log).clone()
    }

    pub fn clear_request_log(&self) {
        lock(&self.log).clear();
    }

    /// The next fault for a request. A rule's prefix may name the method
    /// too (`"POST /contacts/"`), to hit a create but not a search, and a
    /// `*` segment stands for any one segment (`"POST /contacts/*/notes"`:
    /// a note on any contact, whose id the test cannot know beforehand).
    fn take_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let applies = |prefix: &str| match prefix.split_once(' ') {
            Some((m, p)) => m.eq_ignore_ascii_case(method) && path_matches(p, path),
            None => path_matches(prefix, path),
        };
        let mut faults = lock(&self.faults);
        let index = faults
            .iter()
            .position(|r| r.remaining > 0 && r.path_prefix.as_deref().is_none_or(applies))?;
        let rule = &mut faults[index];
        rule.remaining -= 1;
        let fault = rule.fault.clone();
        if rule.remaining == 0 {
            faults.remove(index);
        }
        Some(fault)
    }

    fn push(&self, entry: LoggedRequest) -> usize {
        let mut log = lock(&self.log);
        log.push(entry);
        log.len() - 1
    }

    fn set_status(&self, index: usize, status: u16) {
        if let Some(entry) = lock(&self.log).get_mut(index) {
            entry.status = Some(status);
            entry.answered = Some(std::time::Instant::now());
        }
    }
}

/// Whether `path` starts with `prefix`, a `*` segment of the prefix
/// matching any one segment of the path.
fn path_matches(prefix: &str, path: &str) -> bool {
    if !prefix.contains('*') {
        return path.starts_with(prefix);
    }
    let mut wanted = prefix.split('/');
    let mut got = path.split('/');
    loop {
        match (wanted.next(), got.next()) {
            (None, _) => return true,
            (Some(w), Some(g)) if w == "*" && !g.is_empty() => {}
            // The prefix's last segment may end part-way through the path's.
            (Some(w), Some(g)) if wanted.clone().next().is_none() => return g.starts_with(w),
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// A running server: stops on [`Running::shutdown`] or on drop.
pub(crate) struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // In-flight requests get a moment to finish; a hung one is cut.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `addr` (127.0.0.1:0 when `None`) and serves `sim` in a tokio task.
pub(crate) async fn serve<S: Simulator>(
    addr: Option<SocketAddr>,
    sim: Arc<S>,
) -> std::io::Result<Running> {
    let addr = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |request: Request<Body>| {
        let sim = Arc::clone(&sim);
        async move { pipeline(sim, request).await }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "sandbox server stopped");
        }
    });
    Ok(Running {
        addr,
        stop: Some(stop),
        task: Some(task),
    })
}

async fn pipeline<S: Simulator>(sim: Arc<S>, request: Request<Body>) -> Response<Body> {
    {
        let (parts, body) = request.into_parts();
        let raw_path = parts.uri.path().to_string();
        let raw_query = parts.uri.query().map(str::to_string);
        let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(_) => {
                sim.controls().push(LoggedRequest {
                    method: parts.method.to_string(),
                    path: raw_path,
                    query: raw_query,
                    body: None,
                    status: Some(413),
                    received: std::time::Instant::now(),
                    answered: Some(std::time::Instant::now()),
                });
                return to_response(Reply::json(
                    413,
                    sim.error_body(413, "request entity too large"),
                ));
            }
        };
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string()))
        };
        let logged_body = body.as_ref().map(|b| match b {
            Ok(v) => v.clone(),
            Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        });
        let index = sim.controls().push(LoggedRequest {
            method: parts.method.to_string(),
            path: raw_path.clone(),
            query: raw_query.clone(),
            body: logged_body,
            status: None,
            received: std::time::Instant::now(),
            answered: None,
        });
        let mut path = raw_path.trim_end_matches('/').to_string();
        if path.is_empty() {
            path.push('/');
        }
        let incoming = Incoming {
            method: parts.method,
            path,
            query: parse_query(raw_query.as_deref().unwrap_or("")),
            headers: parts.headers,
            body,
            raw: bytes,
        };
        let fault = sim
            .controls()
            .take_fault(incoming.method.as_str(), &raw_path);
        // Faults that damage the answer in transit: the request is served
        // (its effect happens and is logged), then the body is cut, slowed
        // or replaced on its way out.
        match fault {
            Some(Fault::ResetMidBody) => {
                let reply = sim.handle(&incoming);
                sim.controls().set_status(index, reply.status);
                return truncated(reply);
            }
            Some(Fault::SlowBody(pause)) => {
                let reply = sim.handle(&incoming);
                sim.controls().set_status(index, reply.status);
                return trickled(reply, pause);
            }
            Some(Fault::InvalidJson) => {
                let _ = sim.handle(&incoming);
                sim.controls().set_status(index, 200);
                let mut response = Response::new(Body::from(
                    "<html><body><h1>200 OK</h1>upstream answered</body></html>",
                ));
                response.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                return response;
            }
            _ => {}
        }
        let reply = match fault {
            Some(Fault::StatusRetryAfter {
                status,
                retry_after,
            }) => Reply::json(
                status,
                sim.error_body(status, "simulated failure (fault injection)"),
            )
            .with_header("retry-after", retry_after.to_string()),
            Some(Fault::Revoked) => Reply::json(401, sim.error_body(401, sim.revoked_message())),
            Some(Fault::Unprocessable(messages)) => {
                Reply::json(422, sim.unprocessable_body(&messages))
            }
            Some(Fault::Status(status)) => Reply::json(
                status,
                sim.error_body(status, "simulated failure (fault injection)"),
            ),
            Some(Fault::TooManyRequests { retry_after }) => {
                let reply = Reply::json(429, sim.error_body(429, "Too Many Requests"));
                match retry_after {
                    Some(secs) => reply.with_header("retry-after", secs.to_string()),
                    None => reply,
                }
            }
            Some(Fault::Hang(duration)) => {
                tokio::time::sleep(duration).await;
                sim.handle(&incoming)
            }
            Some(Fault::AnswerLate(duration)) => {
                let reply = sim.handle(&incoming);
                tokio::time::sleep(duration).await;
                reply
            }
            Some(Fault::ResetMidBody | Fault::SlowBody(_) | Fault::InvalidJson) | None => {
                sim.handle(&incoming)
            }
        };
        sim.controls().set_status(index, reply.status);
        to_response(reply)
    }
}

/// The answer with its full `Content-Length`, whose body breaks after half
/// of it: hyper sends the half, then closes the connection, so the client
/// sees it cut in the middle of the body.
fn truncated(reply: Reply) -> Response<Body> {
    let full = serde_json::to_vec(&reply.body).unwrap_or_default();
    let mut response = to_response(reply);
    let half = full[..full.len() / 2].to_vec();
    *response.body_mut() = Body::new(Cut {
        half: Some(half),
        pause: None,
    });
    response.headers_mut().insert(
        axum::http::header::CONTENT_LENGTH,
        HeaderValue::from(full.len()),
    );
    response
}

/// A body that yields its first half, then fails after a pause (so that
/// hyper has flushed the status, the headers and the half: without it the
/// connection would close before anything left, a lost answer instead).
struct Cut {
    half: Option<Vec<u8>>,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Cut {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Some(half) = self.half.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(
                axum::body::Bytes::from(half),
            ))));
        }
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(200))));
        if pause.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated reset in the middle of the body (fault injection)",
        ))))
    }
}

/// The answer whose body leaves in 8-byte pieces, `pause` apart.
fn trickled(reply: Reply, pause: Duration) -> Response<Body> {
    let full = serde_json::to_vec(&reply.body).unwrap_or_default();
    let mut response = to_response(reply);
    *response.body_mut() = Body::new(Trickle {
        rest: full,
        pause,
        sleep: None,
    });
    response
}

/// A body that yields a few bytes at a time with a pause before each piece.
struct Trickle {
    rest: Vec<u8>,
    pause: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Trickle {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let pause = self.pause;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        let n = self.rest.len().min(8);
        let piece: Vec<u8> = self.rest.drain(..n).collect();
        Poll::Ready(Some(Ok(http_body::Frame::data(axum::body::Bytes::from(
            piece,
        )))))
    }
}

fn to_response(reply: Reply) -> Response<Body> {
    let body = serde_json::to_vec(&reply.body).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

/// Decodes `a=1&b=%2B1` form-style (`+` is a space, as servers read it).
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        urlencoding::decode(&s).map(|c| c.into_owned()).unwrap_or(s)
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Deterministic ids: `kind` and a counter hashed, `len` characters of
/// `[A-Za-z0-9]` (GHL's ids look like `seD4PfOuKoVMLkEZqohJ`).
pub(crate) struct Ids {
    seed: String,
    next: AtomicU64,
}

impl Ids {
    pub fn new(seed: &str) -> Ids {
        Ids {
            seed: seed.to_string(),
            next: AtomicU64::new(1),
        }
    }

    pub fn next_number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn alnum(&self, kind: &str, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let n = self.next_number();
        let digest = Sha256::digest(format!("{}:{kind}:{n}", self.seed).as_bytes());
        digest
            .iter()
            .cycle()
            .take(len)
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
            .collect()
    }

    /// A UUID-shaped id (version 4 layout), deterministic.
    pub fn uuid(&self, kind: &str) -> String {
        let n = self.next_number();
        let digest = Sha256::digest(format!("{}:{kind}:{n}", self.seed).as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-4{}-8{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        )
    }
}

/// Now, as GHL writes timestamps: `2021-11-26T12:41:02.193Z`.
pub(crate) fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A phone number as a comparable key: `+` (if leading) and digits only.
pub(crate) fn phone_key(phone: &str) -> String {
    let phone = phone.trim();
    let mut key = String::new();
    if phone.starts_with('+') {
        key.push('+');
    }
    key.extend(phone.chars().filter(char::is_ascii_digit));
    key
}

// ---------------------------------------------------------------- webhooks

/// How a simulator delivers its webhooks: by default one at a time, in the
/// order of the changes, each `delay` after its change; `jitter` and
/// `duplicate_every` make it as unruly as the real platforms can be.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookDelivery {
    /// Time between a change and its webhook leaving (the real platforms
    /// send a little after answering the API call).
    pub delay: Duration,
    /// Time allowed for one attempt (connect, send, answer).
    pub timeout: Duration,
    /// Further attempts after a retryable failure.
    pub retries: u32,
    /// Wait before the first retry, doubled for each next one.
    pub backoff: Duration,
    /// Retry any failure (non-2xx answer or none); otherwise only 429.
    pub retry_any_failure: bool,
    /// Up to this much more delay, drawn per webhook. The real platforms
    /// send from many workers and promise no order, so a receiver must
    /// cope with a later change's webhook arriving first: above zero,
    /// webhooks leave independently (`delay` + a draw in `0..jitter`) and
    /// overtake each other. Zero (the default) keeps the strict order.
    pub jitter: Duration,
    /// Every n-th webhook is delivered a second time, same body and
    /// signature, `delay` (+ a jitter draw) after the first answer: a
    /// platform that thinks an acknowledgement was lost sends again, and a
    /// receiver must store the event once. `None` (the default) sends each
    /// webhook once.
    pub duplicate_every: Option<u32>,
    /// Seeds the jitter draws, so that a run that went wrong can be drawn
    /// again the same way (the network's own timing aside).
    pub seed: u64,
}

impl WebhookDelivery {
    /// GHL's rule, shortened: only a 429 is retried (GHL: 6 times, 10 min
    /// apart; here 3 times from 50 ms), anything else is final.
    pub fn ghl() -> WebhookDelivery {
        WebhookDelivery {
            delay: Duration::from_millis(20),
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(50),
            retry_any_failure: false,
            jitter: Duration::ZERO,
            duplicate_every: None,
            seed: 0,
        }
    }

    /// Sticky Cards documents no retry ("implement on your side, webhooks
    /// may fail"): one attempt.
    pub fn stickycards() -> WebhookDelivery {
        WebhookDelivery {
            retries: 0,
            ..WebhookDelivery::ghl()
        }
    }
}

/// A webhook a simulator sent, once its delivery is over.
#[derive(Clone, Debug, PartialEq)]
pub struct SentWebhook {
    /// The event: `ContactUpdate`, `CardBalanceUpdatedEvent`, …
    pub kind: String,
    /// The body as sent (the bytes on the wire are its compact JSON).
    pub body: Value,
    /// The last answer's status; `None` when no answer came (refused
    /// connection, timeout).
    pub status: Option<u16>,
    /// Attempts made (1 + retries).
    pub attempts: u32,
    /// Why the last attempt got no answer.
    pub error: Option<String>,
}

impl SentWebhook {
    /// Answered 2xx.
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Extra headers for a body (the signature), computed over its exact bytes.
pub(crate) type SignFn = Box<dyn Fn(&[u8]) -> Vec<(&'static str, String)> + Send + Sync>;

/// The webhooks a simulator sent; kept by the simulator, so that it
/// outlives a change of [`Outbox`].
pub(crate) type WebhookLog = Arc<Mutex<Vec<SentWebhook>>>;

#[derive(Clone)]
struct Job {
    kind: String,
    body: Value,
    due: tokio::time::Instant,
}

/// The queue of webhooks to one URL and the task that sends them.
pub(crate) struct Outbox {
    queue: mpsc::UnboundedSender<Job>,
    /// Webhooks queued and not yet finished; `idle` waits for 0.
    pending: Arc<watch::Sender<usize>>,
    delay: Duration,
    worker: AbortHandle,
}

impl Outbox {
    /// Starts the delivery task in the current tokio runtime (an error
    /// outside one), logging into `sent`.
    pub fn start(
        url: &str,
        delivery: WebhookDelivery,
        sign: SignFn,
        sent: WebhookLog,
    ) -> std::io::Result<Outbox> {
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let url = reqwest::Url::parse(url).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("webhook url `{url}`: {e}"),
            )
        })?;
        let client = reqwest::Client::builder()
            .build()
            .map_err(std::io::Error::other)?;
        let (queue, jobs) = mpsc::unbounded_channel();
        let pending = Arc::new(watch::Sender::new(0usize));
        let delay = delivery.delay;
        let worker = runtime
            .spawn(deliver_all(
                jobs,
                Courier {
                    client,
                    url,
                    delivery,
                    sign,
                },
                sent,
                Arc::clone(&pending),
            ))
            .abort_handle();
        Ok(Outbox {
            queue,
            pending,
            delay,
            worker,
        })
    }

    /// Queues a webhook. Called while the change is being made, so that a
    /// client that got its API answer already sees it pending.
    pub fn send(&self, kind: &str, body: Value) {
        self.pending.send_modify(|n| *n += 1);
        let job = Job {
            kind: kind.to_string(),
            body,
            due: tokio::time::Instant::now() + self.delay,
        };
        if self.queue.send(job).is_err() {
            self.pending.send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    pub fn pending(&self) -> usize {
        *self.pending.borrow()
    }

    /// Returns once every queued webhook has been answered or given up.
    pub async fn idle(&self) {
        let mut pending = self.pending.subscribe();
        // An error means the task is gone: nothing more will be sent.
        let _ = pending.wait_for(|n| *n == 0).await;
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // A stopped (or re-pointed) simulator sends nothing more from here.
        self.worker.abort();
    }
}

struct Courier {
    client: reqwest::Client,
    url: reqwest::Url,
    delivery: WebhookDelivery,
    sign: SignFn,
}

async fn deliver_all(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    courier: Courier,
    sent: WebhookLog,
    pending: Arc<watch::Sender<usize>>,
) {
    let courier = Arc::new(courier);
    let delay = courier.delivery.delay;
    let jitter = courier.delivery.jitter;
    let every = courier.delivery.duplicate_every.filter(|n| *n > 0);
    let mut draws = Draws::new(courier.delivery.seed);
    let mut received = 0u64;
    // Deliveries that overlap (with jitter); aborted with this task, as the
    // outbox promises that nothing leaves once it is dropped.
    let mut overlapping = tokio::task::JoinSet::new();
    while let Some(job) = jobs.recv().await {
        received += 1;
        let copy = every.is_some_and(|n| received.is_multiple_of(u64::from(n)));
        if copy {
            // Counted before the first delivery ends, so `idle` never sees
            // a moment with nothing pending between the two.
            pending.send_modify(|n| *n += 1);
        }
        if jitter.is_zero() {
            tokio::time::sleep_until(job.due).await;
            let again = copy.then(|| job.clone());
            deliver_logged(&courier, job, &sent, &pending).await;
            if let Some(job) = again {
                tokio::time::sleep(delay).await;
                deliver_logged(&courier, job, &sent, &pending).await;
            }
        } else {
            let (first, second) = (draws.below(jitter), draws.below(jitter));
            let (courier, sent, pending) = (
                Arc::clone(&courier),
                Arc::clone(&sent),
                Arc::clone(&pending),
            );
            overlapping.spawn(async move {
                tokio::time::sleep_until(job.due + first).await;
                let again = copy.then(|| job.clone());
                deliver_logged(&courier, job, &sent, &pending).await;
                if let Some(job) = again {
                    tokio::time::sleep(delay + second).await;
                    deliver_logged(&courier, job, &sent, &pending).await;
                }
            });
            while overlapping.try_join_next().is_some() {}
        }
    }
    while overlapping.join_next().await.is_some() {}
}

/// Delivers one webhook, logs it and counts it off `pending`.
async fn deliver_logged(
    courier: &Courier,
    job: Job,
    sent: &WebhookLog,
    pending: &watch::Sender<usize>,
) {
    let record = courier.deliver(job).await;
    if !record.delivered() {
        tracing::warn!(
            kind = %record.kind,
            status = ?record.status,
            error = ?record.error,
            attempts = record.attempts,
            "sandbox webhook dropped"
        );
    }
    lock(sent).push(record);
    pending.send_modify(|n| *n = n.saturating_sub(1));
}

/// Deterministic draws (xorshift64*) for the delivery jitter and for tests
/// that drive the simulators: no dependency, and the same seed gives the
/// same sequence.
pub struct Draws(u64);

impl Draws {
    /// A sequence that only `seed` decides.
    pub fn new(seed: u64) -> Draws {
        // xorshift never leaves 0; any other state will do.
        Draws((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    /// The next draw.
    pub fn draw(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration in `0..limit` (zero when `limit` is zero).
    fn below(&mut self, limit: Duration) -> Duration {
        let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.draw() % nanos)
    }
}

impl Courier {
    async fn deliver(&self, job: Job) -> SentWebhook {
        // Serialising a Value cannot fail; the signature covers these bytes.
        let bytes = serde_json::to_vec(&job.body).unwrap_or_default();
        let headers = (self.sign)(&bytes);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let mut request = self
                .client
                .post(self.url.clone())
                .timeout(self.delivery.timeout)
                .header("content-type", "application/json")
                .body(bytes.clone());
            for (name, value) in &headers {
                request = request.header(*name, value.as_str());
            }
            let (status, error) = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // The answer's body is read so the connection can be reused.
                    let _ = response.bytes().await;
                    (Some(status), None)
                }
                Err(e) => (None, Some(e.to_string())),
            };
            let retryable = match status {
                Some(s) if (200..300).contains(&s) => false,
                Some(429) => true,
                _ => self.delivery.retry_any_failure,
            };
            if retryable && attempts <= self.delivery.retries {
                let doubling = 2u32.saturating_pow(attempts - 1);
                tokio::time::sleep(self.delivery.backoff.saturating_mul(doubling)).await;
                continue;
            }
            return SentWebhook {
                kind: job.kind,
                body: job.body,
                status,
                attempts,
                error,
            };
        }
    }
}

/// Event times that never repeat: now in milliseconds, or 1 ms after the
/// previous one when two events fall in the same millisecond (receivers
/// dedup on the time).
#[derive(Default)]
pub(crate) struct EventClock {
    last_ms: i64,
}

impl EventClock {
    pub fn next(&mut self) -> chrono::DateTime<chrono::Utc> {
        let now = chrono::Utc::now().timestamp_millis();
        self.last_ms = now.max(self.last_ms + 1);
        chrono::DateTime::from_timestamp_millis(self.last_ms).unwrap_or_else(chrono::Utc::now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_prefixes_match_any_one_segment_at_a_star() {
        assert!(path_matches("/contacts/", "/contacts/abc/notes"));
        assert!(path_matches("/contacts/*/notes", "/contacts/abc/notes"));
        assert!(path_matches("/contacts/*/notes", "/contacts/abc/notes/"));
        assert!(!path_matches("/contacts/*/notes", "/contacts/abc/tags"));
        assert!(!path_matches("/contacts/*/notes", "/contacts//notes"));
        assert!(!path_matches("/contacts/*/notes", "/contacts/"));
        assert!(path_matches("/contacts/*/no", "/contacts/abc/notes"));
    }

    #[test]
    fn event_times_never_repeat() {
        let mut clock = EventClock::default();
        let times: Vec<_> = (0..50).map(|_| clock.next()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }
}
