//! The console's pages and actions.

use super::auth::{self, COOKIE, Operator};
use super::{Console, UiError, charts, mask, wants_html};
use crate::engine::plan::PlanInput;
use crate::program::{Program, customer_of_ordering_key};
use crate::store::{
    Attempt, EventQuery, EventRow, EventState, PAGE_SIZE, ReplayFilter, format_ms, now_ms,
    utc_day_start_ms,
};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::{Environment, Value, context};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type Page = Result<Response, UiError>;

/// The states shown on the overview, in the order of an event's life.
const STATES: &[&str] = &[
    "received",
    "processing",
    "retrying",
    "delivered",
    "echo",
    "stale",
    "dead",
    "unmapped",
];

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("events.html", include_str!("templates/events.html")),
    ("event_rows.html", include_str!("templates/event_rows.html")),
    ("event.html", include_str!("templates/event.html")),
    ("customer.html", include_str!("templates/customer.html")),
    ("mappings.html", include_str!("templates/mappings.html")),
    ("actions.html", include_str!("templates/actions.html")),
    (
        "replay_confirm.html",
        include_str!("templates/replay_confirm.html"),
    ),
];

/// The templates, compiled once; `.html` names turn HTML escaping on.
pub fn environment() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    for (name, text) in TEMPLATES {
        env.add_template(name, text)?;
    }
    env.add_filter("time", |ms: Option<i64>| -> String {
        ms.map(format_ms).unwrap_or_else(|| "-".into())
    });
    Ok(env)
}

/// Any serialisable value, for a template.
fn ser<T: serde::Serialize>(value: T) -> Value {
    Value::from(minijinja::value::Serde(value))
}

fn render(c: &Console, name: &str, ctx: Value) -> Page {
    let html = c.pages.get_template(name)?.render(ctx)?;
    Ok(Html(html).into_response())
}

/// The fields of a form body or a query string.
fn fields(text: &[u8]) -> Result<HashMap<String, String>, UiError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| UiError::BadRequest("the form is not UTF-8".into()))?;
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            urlencoding::decode(&s.replace('+', " "))
                .map(|d| d.into_owned())
                .map_err(|_| UiError::BadRequest(format!("`{s}` is not URL-encoded text")))
        };
        out.insert(decode(k)?, decode(v)?);
    }
    Ok(out)
}

fn query_fields(query: &Option<String>) -> Result<HashMap<String, String>, UiError> {
    fields(query.as_deref().unwrap_or("").as_bytes())
}

fn field<'a>(f: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    f.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// Refuses a state-changing request whose CSRF token is missing or not the caller's.
fn check_csrf(
    op: &Operator,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(), UiError> {
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| form.get("csrf").map(String::as_str));
    match given {
        Some(g) if auth::same_secret(g, &op.csrf) => Ok(()),
        _ => Err(UiError::Csrf),
    }
}

/// An action's answer: back to a page for a browser, JSON for a script.
fn done(headers: &HeaderMap, to: String, body: serde_json::Value) -> Response {
    if wants_html(headers) {
        Redirect::to(&to).into_response()
    } else {
        axum::Json(body).into_response()
    }
}

fn parse_id(text: &str) -> Result<i64, UiError> {
    text.parse()
        .map_err(|_| UiError::BadRequest(format!("`{text}` is not an event id (a number)")))
}

/// A time typed by a person: RFC 3339, a date, `YYYY-MM-DDTHH:MM` (what
/// the browser's date-time input sends), or unix seconds; UTC when no zone.
fn parse_time(text: &str, what: &str) -> Result<i64, UiError> {
    let minutes = text.len() == 16 && text.as_bytes().get(10) == Some(&b'T');
    let text_owned = if minutes {
        text.replacen('T', " ", 1)
    } else {
        text.to_string()
    };
    crate::template::filters::parse_timestamp_str(&text_owned, "UTC")
        .map(|t| t.timestamp_millis())
        .ok_or_else(|| {
            UiError::BadRequest(format!(
                "`{text}` ({what}) is not a time: use 2025-03-01, 2025-03-01T10:00 or 2025-03-01T10:00:00Z"
            ))
        })
}

// ---------------------------------------------------------------- login

pub async fn login_form(State(c): State<Arc<Console>>) -> Page {
    render(&c, "login.html", context! { error => false })
}

pub async fn login(State(c): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Page {
    let form = fields(&body)?;
    let given = form.get("token").map(String::as_str).unwrap_or("");
    if !c.auth.token_matches(given) {
        tracing::warn!("console: a login with a wrong token was refused");
        // Slows guessing without holding anything: other requests go on.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut page = render(&c, "login.html", context! { error => true })?;
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(page);
    }
    let Some((id, _csrf)) = c.auth.login() else {
        return Err(UiError::BadRequest(
            "no session could be opened (no randomness); try again".into(),
        ));
    };
    // Behind a TLS-terminating proxy the cookie must not travel in clear.
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{}",
        auth::SESSION_LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

pub async fn logout(
    State(c): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    check_csrf(&op, &headers, &fields(&body)?)?;
    if let Some(id) = &op.session {
        c.auth.logout(id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("mapper_ui=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0"),
    );
    Ok(response)
}

// ---------------------------------------------------------------- overview

#[derive(serde::Serialize)]
struct CountRow {
    name: String,
    counts: Vec<i64>,
    total: i64,
}

fn count_rows(pairs: impl Iterator<Item = (String, String, i64)>) -> Vec<CountRow> {
    let mut by: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (name, state, n) in pairs {
        let row = by.entry(name).or_insert_with(|| vec![0; STATES.len()]);
        if let Some(i) = STATES.iter().position(|s| *s == state) {
            row[i] += n;
        }
    }
    by.into_iter()
        .map(|(name, counts)| CountRow {
            total: counts.iter().sum(),
            name,
            counts,
        })
        .collect()
}

pub async fn overview(State(c): State<Arc<Console>>, Extension(op): Extension<Operator>) -> Page {
    let store = &c.app.store;
    let counts = store.state_counts().await?;
    let held = store.held_state_counts().await?;
    let totals: Vec<i64> = STATES
        .iter()
        .map(|s| {
            counts
                .iter()
                .filter(|r| r.state == *s)
                .map(|r| r.count)
                .sum()
        })
        .collect();
    let by_source = count_rows(
        counts
            .iter()
            .map(|r| (r.source.clone(), r.state.clone(), r.count)),
    );
    let by_connection = count_rows(
        counts
            .iter()
            .map(|r| (r.connection.clone(), r.state.clone(), r.count)),
    );
    let held_of = |state: &str| {
        held.iter()
            .filter(|(s, _)| s == state)
            .map(|(_, n)| *n)
            .sum::<i64>()
    };

    let now = now_ms();
    let first_minute = (now - 3_600_000) / 60_000 * 60_000 + 60_000;
    let calls = store.calls_per_minute(first_minute).await?;
    let program = c.app.loaded.load_full().program.clone();
    let per_minute = |target: &str| -> Vec<i64> {
        (0..60)
            .map(|m| {
                let at = first_minute + m * 60_000;
                calls
                    .iter()
                    .filter(|(t, minute, _)| t == target && *minute == at)
                    .map(|(_, _, n)| *n)
                    .sum()
            })
            .collect()
    };
    let mut call_charts = Vec::new();
    for name in program.targets.keys() {
        let minutes = per_minute(name);
        call_charts.push(context! {
            target => name,
            last_minute => minutes.last().copied().unwrap_or(0),
            hour => minutes.iter().sum::<i64>(),
            chart => Value::from_safe_string(charts::bars(&minutes, &format!("calls per minute to {name}"))),
        });
    }
    let mut budgets = Vec::new();
    let day_start = utc_day_start_ms();
    for (name, target) in &program.targets {
        let Some(daily) = target.rate_limit.as_ref().and_then(|r| r.daily) else {
            continue;
        };
        let daily = i64::from(daily);
        let used = store.calls_since(name, day_start).await?;
        let minutes = per_minute(name);
        // Remaining at the end of each minute of the hour, walking back from now.
        let mut remaining = Vec::new();
        let mut later = 0;
        for (m, n) in minutes.iter().enumerate().rev() {
            let at = first_minute + m as i64 * 60_000;
            if at + 60_000 > day_start {
                remaining.push((at + 60_000, daily - (used - later)));
            }
            later += n;
        }
        remaining.reverse();
        budgets.push(context! {
            target => name,
            daily => daily,
            used => used,
            remaining => daily - used,
            gauge => Value::from_safe_string(charts::gauge(daily - used, daily, &format!("{name} budget remaining"))),
            chart => Value::from_safe_string(charts::line(&remaining, first_minute, now, &format!("{name} budget remaining over the hour"))),
        });
    }
    let depth_now = store.queue_depth().await?;
    let mut samples: Vec<(i64, i64)> = c
        .depth
        .lock()
        .map(|d| {
            d.iter()
                .copied()
                .filter(|(t, _)| *t >= now - 3_600_000)
                .collect()
        })
        .unwrap_or_default();
    samples.push((now, depth_now));
    render(
        &c,
        "overview.html",
        context! {
            page => "overview",
            csrf => op.csrf,
            states => ser(STATES),
            totals => totals,
            by_source => ser(&by_source),
            by_connection => ser(&by_connection),
            held => context! { waiting => held_of("waiting"), flushing => held_of("flushing"), failed => held_of("failed") },
            calls => call_charts,
            budgets => budgets,
            depth => depth_now,
            depth_chart => Value::from_safe_string(charts::line(&samples, now - 3_600_000, now, "queue depth over the last hour")),
            depth_samples => samples.len(),
        },
    )
}

// ---------------------------------------------------------------- events

/// The ordering keys a customer's events may carry, for every id they are known by.
fn customer_keys(program: &Program, ids: &[String]) -> Vec<String> {
    let mut keys = Vec::new();
    for id in ids {
        for source in program.sources.values() {
            let key = source.ordering_key(id);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

fn row_view(r: &EventRow) -> Value {
    let mut error = r
        .last_error
        .as_deref()
        .map(|e| mask::text_of(e, false))
        .unwrap_or_default();
    if error.chars().count() > 140 {
        error = error.chars().take(140).collect::<String>() + "…";
    }
    context! {
        id => r.id,
        connection => r.connection.clone(),
        received => format_ms(r.received_at),
        source => r.source.clone(),
        event_type => r.event_type.clone(),
        state => r.state.clone(),
        attempts => r.attempts,
        customer => r.customer_key.as_deref().map(customer_of_ordering_key),
        error => error,
    }
}

struct Listing {
    filters: HashMap<String, String>,
    page: crate::store::EventPage,
    /// The filters as a query string, without the page.
    query: String,
}

async fn list(c: &Console, query: &Option<String>) -> Result<Listing, UiError> {
    let filters = query_fields(query)?;
    let program = c.app.loaded.load_full().program.clone();
    let state = field(&filters, "state").map(str::to_string);
    if let Some(s) = &state
        && !STATES.contains(&s.as_str())
    {
        return Err(UiError::BadRequest(format!(
            "`{s}` is not a state; states: {}",
            STATES.join(", ")
        )));
    }
    let customer_keys = match field(&filters, "customer") {
        Some(text) => {
            let ids = c.app.store.customer_ids_matching(text).await?;
            Some(customer_keys(&program, &ids))
        }
        None => None,
    };
    let q = EventQuery {
        state,
        source: field(&filters, "source").map(str::to_string),
        event_type: field(&filters, "type").map(str::to_string),
        customer_keys,
        from_ms: field(&filters, "from")
            .map(|t| parse_time(t, "from"))
            .transpose()?,
        to_ms: field(&filters, "to")
            .map(|t| parse_time(t, "to"))
            .transpose()?,
        before_id: field(&filters, "before").map(parse_id).transpose()?,
        limit: PAGE_SIZE,
    };
    let page = c.app.store.list_events(&q).await?;
    let query = ["state", "source", "type", "customer", "from", "to"]
        .iter()
        .filter_map(|k| field(&filters, k).map(|v| format!("{k}={}", urlencoding::encode(v))))
        .collect::<Vec<_>>()
        .join("&");
    Ok(Listing {
        filters,
        page,
        query,
    })
}

fn listing_context(c: &Console, op: &Operator, l: &Listing) -> Value {
    let program = c.app.loaded.load_full().program.clone();
    let mut types: Vec<String> = program.by_event.keys().map(|(_, t)| t.clone()).collect();
    types.sort();
    types.dedup();
    let first_page = field(&l.filters, "before").is_none();
    context! {
        page => "events",
        csrf => op.csrf.clone(),
        states => ser(STATES),
        sources => program.sources.keys().cloned().collect::<Vec<_>>(),
        types => types,
        f => ser(&l.filters),
        rows => l.page.rows.iter().map(row_view).collect::<Vec<_>>(),
        total => l.page.total,
        next => l.page.next_before.map(|b| if l.query.is_empty() { format!("before={b}") } else { format!("{}&before={b}", l.query) }),
        query => l.query.clone(),
        refresh => first_page,
    }
}

pub async fn events(
    State(c): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    RawQuery(query): RawQuery,
) -> Page {
    let l = list(&c, &query).await?;
    render(&c, "events.html", listing_context(&c, &op, &l))
}

/// The list's rows alone, which the page fetches every few seconds.
pub async fn event_rows(
    State(c): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    RawQuery(query): RawQuery,
) -> Page {
    let l = list(&c, &query).await?;
    render(&c, "event_rows.html", listing_context(&c, &op, &l))
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn request_view(label: &str, r: &serde_json::Value) -> Value {
    let text = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    context! {
        label => label,
        method => text("method"),
        url => text("url"),
        query => r.get("query").map(pretty),
        body => r.get("body").map(pretty),
    }
}

/// The plan as the page lists it: mappings that fired with their matched
/// keys and requests, and the ones that did not, with why.
fn plan_view(plan: &serde_json::Value) -> Value {
    let empty = Vec::new();
    let list = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_array()).cloned();
    let mappings: Vec<Value> = list(plan, "mappings")
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let customer = m.get("customer");
            let keys: Vec<Value> = customer
                .and_then(|c| c.get("match"))
                .and_then(|k| k.as_array())
                .unwrap_or(&empty)
                .iter()
                .map(|k| {
                    context! {
                        key => k.get("key").and_then(|x| x.as_str()).unwrap_or(""),
                        value => match k.get("value") { Some(serde_json::Value::String(s)) => s.clone(), Some(v) => v.to_string(), None => String::new() },
                    }
                })
                .collect();
            let mut requests = Vec::new();
            if let Some(c) = customer {
                for f in c.get("find").and_then(|f| f.as_array()).unwrap_or(&empty) {
                    requests.push(request_view("find the customer", f));
                }
                if let Some(create) = c.get("create") {
                    requests.push(request_view("create when not found", create));
                }
            }
            for a in m.get("actions").and_then(|a| a.as_array()).unwrap_or(&empty) {
                let op = a.get("op").and_then(|o| o.as_str()).unwrap_or("");
                if let Some(r) = a.get("request") {
                    requests.push(request_view(op, r));
                }
            }
            context! {
                name => m.get("name").and_then(|x| x.as_str()).unwrap_or(""),
                target => m.get("target").and_then(|x| x.as_str()).unwrap_or(""),
                link => customer.and_then(|c| c.get("link")).map(|l| match l { serde_json::Value::String(s) => s.clone(), v => v.to_string() }),
                keys => keys,
                requests => requests,
            }
        })
        .collect();
    let pairs = |k: &str, second: &str| -> Vec<(String, String)> {
        list(plan, k)
            .unwrap_or_default()
            .iter()
            .map(|s| {
                (
                    s.get("mapping")
                        .and_then(|x| x.as_str())
                        .unwrap_or("")
                        .to_string(),
                    s.get(second)
                        .and_then(|x| x.as_str())
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    };
    context! {
        unmapped => plan.get("unmapped").and_then(|u| u.as_bool()).unwrap_or(false),
        mappings => mappings,
        skipped => pairs("skipped", "reason"),
        errors => pairs("errors", "error"),
    }
}

fn attempt_view(a: &Attempt, reveal: bool) -> Value {
    context! {
        event => a.event_row,
        mapping => a.mapping.clone(),
        action => a.action.clone(),
        target => a.target.clone(),
        customer => a.customer.clone(),
        request => mask::text_of(&a.request, reveal),
        status => a.status,
        error => a.error.as_deref().map(|e| mask::text_of(e, reveal)),
        attempt => a.attempt,
        at => format_ms(a.at),
        took => a.took_ms.map(|ms| format!("{ms} ms")),
        ok => a.status.is_some_and(|s| (200..300).contains(&s)) && a.error.is_none(),
    }
}

pub async fn event(
    State(c): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Page {
    let id = parse_id(&id)?;
    let q = query_fields(&query)?;
    let reveal = field(&q, "reveal") == Some("1");
    let store = &c.app.store;
    let Some(record) = store.event_record(id).await? else {
        return Err(UiError::NotFound(format!("no event #{id}")));
    };
    if reveal {
        tracing::info!(
            event = id,
            "console: personal data of an event shown unmasked"
        );
    }
    let program = c.app.loaded.load_full().program.clone();
    let source = program.sources.get(&record.row.source);
    let decoded = source
        .and_then(|s| crate::engine::decode::decode(&record.body, &s.body).ok())
        .or_else(|| serde_json::from_slice(&record.body).ok());
    let payload = match &decoded {
        Some(v) => pretty(&mask::value(v, reveal)),
        None => mask::text_of(&String::from_utf8_lossy(&record.body), reveal),
    };
    let plan = match (&decoded, source) {
        (Some(v), Some(_)) => {
            let input = PlanInput {
                mask_secrets: true,
                ..Default::default()
            };
            match program.plan(&record.row.source, v, &input) {
                Ok(plan) => {
                    let value = serde_json::to_value(&plan).unwrap_or(json!({}));
                    Some(plan_view(&mask::value(&value, reveal)))
                }
                Err(e) => Some(context! { failed => e.to_string() }),
            }
        }
        _ => None,
    };
    let attempts: Vec<Value> = store
        .attempts_of_event(id)
        .await?
        .iter()
        .map(|a| attempt_view(a, reveal))
        .collect();
    let customer = record
        .row
        .customer_key
        .as_deref()
        .map(customer_of_ordering_key)
        .map(str::to_string);
    let mut links = Vec::new();
    let mut others = Vec::new();
    if let Some(cid) = &customer {
        for v in store.customer_views(cid).await? {
            for (target, target_id) in &v.links {
                links.push(context! {
                    source => v.source.clone(), source_id => v.customer_id.clone(),
                    target => target, target_id => target_id,
                });
            }
        }
        let page = store
            .list_events(&EventQuery {
                customer_keys: Some(customer_keys(&program, std::slice::from_ref(cid))),
                limit: 20,
                ..Default::default()
            })
            .await?;
        others = page
            .rows
            .iter()
            .filter(|r| r.id != id)
            .map(row_view)
            .collect();
    }
    let state = record.row.state.clone();
    render(
        &c,
        "event.html",
        context! {
            page => "events",
            csrf => op.csrf,
            reveal => reveal,
            e => row_view(&record.row),
            last_error => record.row.last_error.as_deref().map(|e| mask::text_of(e, reveal)),
            event_id => record.event_id,
            occurred => record.occurred_at.map(format_ms),
            next_attempt => format_ms(record.next_attempt_at),
            payload => payload,
            headers => pretty(&mask::headers(&record.headers)),
            plan => plan,
            attempts => attempts,
            customer => customer,
            links => links,
            others => others,
            replayable => state == "dead" || state == "unmapped",
            replayed => field(&q, "replayed").and_then(|n| n.parse::<u64>().ok()),
        },
    )
}

pub async fn replay_event(
    State(c): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    check_csrf(&op, &headers, &fields(&body)?)?;
    let id = parse_id(&id)?;
    let n = c
        .app
        .store
        .replay(&ReplayFilter {
            id: Some(id),
            ..Default::default()
        })
        .await?;
    tracing::info!(event = id, replayed = n, "console: replay of one event");
    Ok(done(
        &headers,
        format!("/ui/events/{id}?replayed={n}"),
        json!({"replayed": n}),
    ))
}

// ---------------------------------------------------------------- customer

pub async fn customer(
    State(c): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Page {
    let q = query_fields(&query)?;
    let reveal = field(&q, "reveal") == Some("1");
    if reveal {
        tracing::info!(customer = %id, "console: personal data of a customer shown unmasked");
    }
    let store = &c.app.store;
    let program = c.app.loaded.load_full().program.clone();
    let views = store.customer_views(&id).await?;
    let mut ids = vec![id.clone()];
    for v in &views {
        for other in std::iter::once(&v.customer_id).chain(v.links.iter().map(|(_, t)| t)) {
            if !ids.contains(other) {
                ids.push(other.clone());
            }
        }
    }
    let events = store
        .list_events(&EventQuery {
            customer_keys: Some(customer_keys(&program, &ids)),
            limit: 200,
            ..Default::default()
        })
        .await?;
    let writes = store.attempts_for_records(&ids).await?;
    if views.is_empty() && events.rows.is_empty() && writes.is_empty() {
        return Err(UiError::NotFound(format!(
            "no customer `{id}` is known on either side"
        )));
    }
    let mirrors: Vec<Value> = views
        .iter()
        .map(|v| {
            let fields: Vec<Value> = v
                .mirror
                .as_ref()
                .map(|m| {
                    m.fields
                        .iter()
                        .map(|(name, value)| {
                            let shown = mask::value(&json!({ name.clone(): value }), reveal);
                            let shown = match shown.get(name) {
                                Some(serde_json::Value::String(s)) => s.clone(),
                                Some(other) => other.to_string(),
                                None => String::new(),
                            };
                            context! {
                                name => name,
                                value => shown,
                                changed => m.changed_at(name).map(format_ms),
                                set => m.field_times.get(name).and_then(|t| t.as_i64()).map(format_ms),
                                owner => program.owners.get(name),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            context! {
                connection => v.connection.clone(),
                source => v.source.clone(),
                customer_id => v.customer_id.clone(),
                links => ser(&v.links),
                fields => fields,
                last_activity => v.mirror.as_ref().and_then(|m| m.last_activity).map(format_ms),
                written => v.mirror.as_ref().and_then(|m| m.written_at).map(format_ms),
                updated => v.mirror.as_ref().map(|m| format_ms(m.updated_at)),
            }
        })
        .collect();
    // One timeline, newest first: webhooks in, and the writes made for them.
    let mut timeline: Vec<(i64, Value)> = events
        .rows
        .iter()
        .map(|r| (r.received_at, context! { kind => "in", row => row_view(r) }))
        .collect();
    for w in &writes {
        timeline.push((
            w.at,
            context! { kind => "out", w => attempt_view(w, reveal) },
        ));
    }
    timeline.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    render(
        &c,
        "customer.html",
        context! {
            page => "events",
            csrf => op.csrf,
            reveal => reveal,
            id => id,
            ids => ids,
            mirrors => mirrors,
            timeline => timeline.into_iter().map(|(at, v)| context! { at => format_ms(at), ..v }).collect::<Vec<_>>(),
        },
    )
}

// ---------------------------------------------------------------- mappings

pub async fn mappings(State(c): State<Arc<Console>>, Extension(op): Extension<Operator>) -> Page {
    let program = c.app.loaded.load_full().program.clone();
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let name = |p: &std::path::Path| {
        p.strip_prefix(&program.root)
            .unwrap_or(p)
            .display()
            .to_string()
    };
    for s in program.sources.values() {
        files
            .entry(name(&s.file))
            .or_default()
            .push(format!("source {}", s.name));
    }
    for t in program.targets.values() {
        files
            .entry(name(&t.file))
            .or_default()
            .push(format!("target {}", t.name));
    }
    for m in &program.mappings {
        files
            .entry(name(&m.file))
            .or_default()
            .push(format!("mapping {}", m.name));
    }
    let reload = c.app.reload.lock().map(|r| r.clone()).unwrap_or_default();
    render(
        &c,
        "mappings.html",
        context! {
            page => "mappings",
            csrf => op.csrf,
            root => program.root.display().to_string(),
            files => files,
            mappings => program.mappings.len(),
            reload_ok => reload.ok,
            reload_failed => reload.failed,
            reload_error => reload.last_error,
        },
    )
}

// ---------------------------------------------------------------- actions

pub async fn actions(
    State(c): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    RawQuery(query): RawQuery,
) -> Page {
    let q = query_fields(&query)?;
    let failed: Vec<Value> = c
        .app
        .store
        .pending_writes()
        .await?
        .into_iter()
        .filter(|w| w.state == "failed")
        .map(|w| {
            context! {
                id => w.id, target => w.target, record => w.record_id, op => w.op,
                writes => w.writes, attempts => w.attempts,
                params => mask::text_of(&w.params.to_string(), false),
                error => w.last_error.as_deref().map(|e| mask::text_of(e, false)),
            }
        })
        .collect();
    let program = c.app.loaded.load_full().program.clone();
    let number = |k: &str| field(&q, k).and_then(|n| n.parse::<u64>().ok());
    render(
        &c,
        "actions.html",
        context! {
            page => "actions",
            csrf => op.csrf,
            sources => program.sources.keys().cloned().collect::<Vec<_>>(),
            failed => failed,
            replayed => number("replayed"),
            requeued => number("requeued"),
            left => number("left"),
        },
    )
}

/// The filter of a replay form, checked as `mapper replay` checks its flags.
fn replay_filter(form: &HashMap<String, String>) -> Result<ReplayFilter, UiError> {
    let states = match field(form, "state").unwrap_or("both") {
        "dead" => vec![EventState::Dead],
        "unmapped" => vec![EventState::Unmapped],
        "both" => vec![EventState::Dead, EventState::Unmapped],
        other => {
            return Err(UiError::BadRequest(format!(
                "`{other}`: replay takes dead, unmapped or both"
            )));
        }
    };
    Ok(ReplayFilter {
        states,
        id: None,
        source: field(form, "source").map(str::to_string),
        event_type: field(form, "type").map(str::to_string),
        since_ms: field(form, "since")
            .map(|t| parse_time(t, "since"))
            .transpose()?,
    })
}

pub async fn replay_filtered(
    State(c): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    let form = fields(&body)?;
    check_csrf(&op, &headers, &form)?;
    let filter = replay_filter(&form)?;
    let count = c.app.store.replay_count(&filter).await?;
    let expected = field(&form, "expected").and_then(|n| n.parse::<i64>().ok());
    // Replays only what the operator saw counted; a count that moved since is shown again.
    if field(&form, "confirm") != Some("yes") || expected != Some(count) {
        let keep = |k: &str| field(&form, k).unwrap_or("").to_string();
        return render(
            &c,
            "replay_confirm.html",
            context! {
                page => "actions",
                csrf => op.csrf,
                count => count,
                changed => field(&form, "confirm") == Some("yes"),
                state => field(&form, "state").unwrap_or("both"),
                source => keep("source"),
                event_type => keep("type"),
                since => keep("since"),
            },
        );
    }
    let n = c.app.store.replay(&filter).await?;
    tracing::info!(replayed = n, "console: replay of a filtered set");
    Ok(done(
        &headers,
        format!("/ui/actions?replayed={n}"),
        json!({"replayed": n}),
    ))
}

pub async fn requeue_held(
    State(c): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    headers: HeaderMap,
    body: Bytes,
) -> Page {
    check_csrf(&op, &headers, &fields(&body)?)?;
    let (n, left) = c.app.store.replay_failed_writes().await?;
    tracing::info!(requeued = n, left, "console: failed held writes re-queued");
    Ok(done(
        &headers,
        format!("/ui/actions?requeued={n}&left={left}"),
        json!({"requeued": n, "left_failed": left}),
    ))
}
