//! Sending one request to a target: its headers, its rate limit, and what
//! the answer means (success, a failure worth retrying, one that is not, a
//! wait the target asked for).

use super::limiter::{self, Limiter};
use crate::engine::plan::RequestPlan;
use crate::program::Target;
use serde_json::Value;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The answer of one call.
#[derive(Debug)]
pub enum Answer {
    /// A 2xx, with its body (`null` when it was not JSON).
    Ok(Value),
    Failed(Failure),
}

/// A request sent, with its times.
pub struct Sent {
    pub answer: Answer,
    /// When it left, after the rate limiter (ms since the epoch).
    pub departed_at: i64,
    /// From its departure to its answer (the sync log's `took_ms`); `None`
    /// when it never left (a spent daily budget).
    pub took_ms: Option<i64>,
}

/// A call that did not succeed, classified.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The HTTP status; `None` when no answer came (timeout, refused connection).
    pub status: Option<u16>,
    /// What went wrong, for people: `METHOD path → status: message :: body`.
    pub error: String,
    /// Worth trying again: no answer, a 5xx, a 429, a spent budget.
    pub transient: bool,
    /// How long the target asked us to wait (`Retry-After`, a budget's reset).
    pub retry_after: Option<Duration>,
    /// The answer's body as JSON (`null` when none), e.g. to read the id of
    /// the duplicate a refused create names.
    pub body: Value,
    /// The request may have reached the target, but no answer was read (a
    /// timeout, a connection reset): the target may have applied it.
    pub unanswered: bool,
}

/// What one delivery did, beyond its outcome.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) calls: Cell<u64>,
    /// Set when a target's daily budget stopped the delivery.
    pub(crate) paused: Cell<Option<Duration>>,
}

tokio::task_local! {
    /// The tally of the delivery the current task runs.
    pub(crate) static TALLY: Tally;
}

/// Sends requests: one client, the targets' fixed headers, the limiter.
pub struct Http {
    client: reqwest::Client,
    /// Per target, the rendered headers (fixed for the executor's life).
    headers: HashMap<String, Vec<(String, String)>>,
    /// Shared with the executors that replace this one on reload: the
    /// target's limits do not start over because the YAML changed.
    pub(crate) limiter: Arc<Limiter>,
    /// Where each call's duration and status class are counted.
    pub(crate) metrics: crate::metrics::Metrics,
    /// The connection whose calls these are (the metrics' `connection` label).
    pub(crate) connection: String,
    /// A connection installed through GHL OAuth: its access token replaces
    /// [`super::oauth::ACCESS_TOKEN_PLACEHOLDER`] in the headers (see
    /// [`super::oauth`]).
    pub(crate) oauth: Option<Arc<super::oauth::Bearer>>,
}

impl Http {
    /// A sender with each target's rendered headers.
    pub fn new(headers: HashMap<String, Vec<(String, String)>>) -> Http {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(16)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Http {
            client,
            headers,
            limiter: Arc::new(Limiter::default()),
            metrics: crate::metrics::Metrics::default(),
            connection: crate::store::DEFAULT_CONNECTION.to_string(),
            oauth: None,
        }
    }

    /// Sends one request with the target's headers, within its rate limit,
    /// and classifies the answer.
    pub async fn send(&self, target: &Target, request: &RequestPlan) -> Answer {
        self.send_timed(target, request).await.answer
    }

    /// [`Http::send`], with when the request left (ms since the epoch): after
    /// the rate limiter let it go, which under load is seconds after it was
    /// asked for. A write's effect on the record dates from then, not from
    /// when the delivery decided to make it: a webhook the platform sent in
    /// between still describes the record as it was.
    pub async fn send_timed(&self, target: &Target, request: &RequestPlan) -> Sent {
        self.send_timed_after(target, request, async { Ok(()) })
            .await
    }

    /// [`Http::send_timed`], with `before` run once the rate limiter let the
    /// call go, just before it leaves (a call that must not be sent twice
    /// is marked then: a wait for the limiter between the mark and the call
    /// would be a window in which a crash loses it). When `before` fails,
    /// or the lease of the delivery making the call has run out
    /// ([`super::fence`]), nothing is sent.
    pub async fn send_timed_after(
        &self,
        target: &Target,
        request: &RequestPlan,
        before: impl std::future::Future<Output = Result<(), String>>,
    ) -> Sent {
        let not_now = |answer| Sent {
            answer,
            departed_at: crate::store::now_ms(),
            took_ms: None,
        };
        if let Err(refused) = self
            .limiter
            .acquire(&target.name, target.rate_limit.as_ref())
            .await
        {
            return not_now(not_sent(target, request, refused));
        }
        let before = async {
            match super::fence::refusal(crate::store::now_ms()) {
                Some(lapsed) => Err(lapsed),
                None => before.await,
            }
        };
        if let Err(e) = before.await {
            return not_now(Answer::Failed(Failure {
                status: None,
                error: format!("{} {}: not sent: {e}", request.method, request.path),
                transient: true,
                unanswered: false,
                retry_after: None,
                body: Value::Null,
            }));
        }
        let departed_at = crate::store::now_ms();
        let started = std::time::Instant::now();
        let answer = self.call(target, request).await;
        Sent {
            answer,
            departed_at,
            took_ms: Some(started.elapsed().as_millis() as i64),
        }
    }

    /// One call, the rate limiter passed. A target whose headers carry an
    /// OAuth access token gets the current one; a 401 with it refreshes it
    /// once and sends the request once more (GHL answers 401 to a token
    /// that expired or was revoked before its stated expiry).
    async fn call(&self, target: &Target, request: &RequestPlan) -> Answer {
        let bearer = self.oauth.as_ref().filter(|_| {
            self.headers
                .get(&target.name)
                .into_iter()
                .flatten()
                .any(|(_, v)| v.contains(super::oauth::ACCESS_TOKEN_PLACEHOLDER))
        });
        let Some(bearer) = bearer else {
            return self.call_with(target, request, None).await;
        };
        let token = match bearer.token(None).await {
            Ok(token) => token,
            Err(e) => return token_failure(target, request, &e),
        };
        let answer = self.call_with(target, request, Some(&token)).await;
        if !matches!(&answer, Answer::Failed(f) if f.status == Some(401)) {
            return answer;
        }
        let fresh = match bearer.token(Some(&token)).await {
            Ok(fresh) => fresh,
            Err(e) => return token_failure(target, request, &e),
        };
        // The second request counts against the target's limit as any other.
        if let Err(refused) = self
            .limiter
            .acquire(&target.name, target.rate_limit.as_ref())
            .await
        {
            return not_sent(target, request, refused);
        }
        self.call_with(target, request, Some(&fresh)).await
    }

    /// One call with `token` in place of the OAuth placeholder, if any.
    async fn call_with(
        &self,
        target: &Target,
        request: &RequestPlan,
        token: Option<&str>,
    ) -> Answer {
        let method =
            reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let url = url_with_query(request);
        let _ = TALLY.try_with(|t| t.calls.set(t.calls.get() + 1));
        let started = std::time::Instant::now();
        let mut builder = self.client.request(method, &url).timeout(target.timeout);
        for (name, value) in self.headers.get(&target.name).into_iter().flatten() {
            match token {
                Some(token) if value.contains(super::oauth::ACCESS_TOKEN_PLACEHOLDER) => {
                    builder = builder.header(
                        name,
                        value.replace(super::oauth::ACCESS_TOKEN_PLACEHOLDER, token),
                    );
                }
                _ => builder = builder.header(name, value),
            }
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let response = match builder.send().await {
            Ok(r) => {
                self.metrics.target_call(
                    &self.connection,
                    &target.name,
                    Some(r.status().as_u16()),
                    started.elapsed(),
                );
                r
            }
            Err(e) => {
                self.metrics
                    .target_call(&self.connection, &target.name, None, started.elapsed());
                let why = if e.is_timeout() {
                    format!(
                        "no answer within {} s (timed out)",
                        target.timeout.as_secs()
                    )
                } else if e.is_connect() {
                    format!("cannot connect: {}", error_chain(&e))
                } else {
                    error_chain(&e)
                };
                return Answer::Failed(Failure {
                    status: None,
                    error: format!("{} {}: {why}", request.method, request.url),
                    transient: true,
                    retry_after: None,
                    body: Value::Null,
                    // A refused connection carried nothing.
                    unanswered: !e.is_connect(),
                });
            }
        };
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // GHL says how much of its window is left; at zero, wait for the window.
        if header("x-ratelimit-remaining") == Some(0) {
            let window = header("x-ratelimit-interval-milliseconds").unwrap_or(10_000);
            self.limiter
                .exhausted(&target.name, Duration::from_millis(window))
                .await;
        }
        let day_spent = header("x-ratelimit-daily-remaining") == Some(0);
        if day_spent {
            self.limiter.day_spent(&target.name).await;
        }
        let retry_after = header(reqwest::header::RETRY_AFTER.as_str()).map(Duration::from_secs);
        // A 2xx status says the request was applied, whatever follows it: a
        // body cut off, outlasting the timeout or not JSON (a proxy's page)
        // is a success with nothing to read. Sending it again could apply it
        // twice (a note); a step that needs the answer (a create's id) fails
        // on its own and is retried, searching first.
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(target = %target.name, method = %request.method, path = %request.path, status = status.as_u16(), error = %e, "the answer's body could not be read");
                String::new()
            }
        };
        let json: Value = match serde_json::from_str(&text) {
            Ok(json) => json,
            Err(e) => {
                if !text.trim().is_empty() {
                    tracing::warn!(target = %target.name, method = %request.method, path = %request.path, status = status.as_u16(), error = %e, "the answer is not JSON");
                }
                Value::Null
            }
        };
        if status.is_success() {
            return Answer::Ok(json);
        }
        if day_spent && status.as_u16() == 429 {
            return pause(target, limiter::until_next_utc_day());
        }
        let message = target
            .error_message
            .as_ref()
            .and_then(|p| p.select(&json))
            .map(|m| match m {
                Value::Array(items) => items
                    .iter()
                    .filter_map(scalar)
                    .collect::<Vec<_>>()
                    .join("; "),
                other => scalar(&other).unwrap_or_else(|| other.to_string()),
            })
            .unwrap_or_else(|| text.chars().take(300).collect());
        Answer::Failed(Failure {
            status: Some(status.as_u16()),
            error: format!(
                "{} {} → {}: {message} :: {text}",
                request.method,
                request.path,
                status.as_u16()
            ),
            transient: status.as_u16() == 429 || status.is_server_error(),
            retry_after,
            body: json,
            unanswered: false,
        })
    }
}

/// A daily budget is spent: the delivery stops here and resumes after the reset.
/// The rate limiter refused the call: nothing was sent.
fn not_sent(target: &Target, request: &RequestPlan, refused: limiter::Refused) -> Answer {
    match refused {
        limiter::Refused::DaySpent(until) => pause(target, until),
        limiter::Refused::Unreadable(e) => Answer::Failed(Failure {
            status: None,
            error: format!(
                "{} {}: not sent: the rate-limit window of target `{}` shared with the other replicas cannot be reserved ({e}); retried later",
                request.method, request.path, target.name
            ),
            transient: true,
            unanswered: false,
            retry_after: None,
            body: Value::Null,
        }),
    }
}

fn pause(target: &Target, until: Duration) -> Answer {
    let _ = TALLY.try_with(|t| t.paused.set(Some(until)));
    Answer::Failed(Failure {
        status: None,
        error: format!(
            "the daily request budget of target `{}` is spent; delivery resumes in {} min, at the reset",
            target.name,
            until.as_secs().div_ceil(60)
        ),
        transient: true,
        unanswered: false,
        retry_after: Some(until),
        body: Value::Null,
    })
}

/// No access token could be had for a call. A connection that cannot
/// deliver now (disabled, its refresh refused) makes the event wait as a
/// disabled connection's do, without spending an attempt; any other
/// failure (no answer from the token endpoint, another replica still
/// refreshing) is retried like a call that got no answer.
fn token_failure(
    target: &Target,
    request: &RequestPlan,
    e: &crate::store::connections::TokenError,
) -> Answer {
    if super::oauth::connection_stopped(e) {
        let _ = TALLY.try_with(|t| t.paused.set(Some(super::tenants::TENANT_WAIT)));
    }
    Answer::Failed(Failure {
        status: None,
        error: format!(
            "{} {}: no OAuth access token for target `{}`: {e}",
            request.method, request.path, target.name
        ),
        transient: true,
        retry_after: None,
        body: Value::Null,
        unanswered: false,
    })
}

/// The request's URL with its query, each value escaped.
fn url_with_query(request: &RequestPlan) -> String {
    let mut url = request.url.clone();
    if let Some(Value::Object(query)) = &request.query {
        let pairs: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                let v = scalar(v).unwrap_or_else(|| v.to_string());
                format!("{}={}", urlencoding::encode(k), urlencoding::encode(&v))
            })
            .collect();
        if !pairs.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&pairs.join("&"));
        }
    }
    url
}

/// An error with its causes, which say what actually went wrong.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A JSON scalar as text (`None` for null, lists and objects).
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A request on one line, for the sync log.
pub fn describe(r: &RequestPlan) -> String {
    match &r.body {
        Some(b) => format!("{} {} {}", r.method, r.path, b),
        None => format!("{} {}", r.method, r.path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_values_are_escaped_and_appended() {
        let request = RequestPlan {
            method: "GET".into(),
            url: "http://h/contacts/search/duplicate".into(),
            path: "/contacts/search/duplicate".into(),
            query: Some(json!({"locationId": "L 1", "number": "+15551234567"})),
            body: None,
        };
        assert_eq!(
            url_with_query(&request),
            "http://h/contacts/search/duplicate?locationId=L%201&number=%2B15551234567"
        );
    }
}
