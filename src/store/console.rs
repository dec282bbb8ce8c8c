//! Read queries of the operator console (`/ui`), and the count that a
//! filtered replay shows before it is confirmed.
//!
//! Same rules as the rest of the store: runtime queries, `$n` placeholders,
//! one statement for SQLite and PostgreSQL. Filters that the operator may or
//! may not give are assembled as SQL text with numbered placeholders, never
//! with the values spliced in.

use super::{EventState, ReplayFilter, Store, StoreError, now_ms};
use serde::Serialize;
use sqlx::Row;

/// Events per page of the console's list.
pub const PAGE_SIZE: i64 = 50;

/// Events in one state, per connection and source.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StateCount {
    pub connection: String,
    pub source: String,
    pub state: String,
    pub count: i64,
}

/// What the events list shows; every field is optional and they add up (AND).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub state: Option<String>,
    pub source: Option<String>,
    pub event_type: Option<String>,
    /// Exact ordering keys (`<scope>:<id>`) of the customer asked for.
    pub customer_keys: Option<Vec<String>>,
    /// Received at or after (epoch ms).
    pub from_ms: Option<i64>,
    /// Received before (epoch ms).
    pub to_ms: Option<i64>,
    /// Only events older than this id (the next page, newest first).
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// One row of the events list.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub connection: String,
    pub source: String,
    pub event_type: String,
    pub state: String,
    pub attempts: i64,
    pub received_at: i64,
    pub customer_key: Option<String>,
    pub last_error: Option<String>,
}

/// A page of the events list: newest first, and how many match in all.
#[derive(Debug, Clone, Serialize)]
pub struct EventPage {
    pub rows: Vec<EventRow>,
    pub total: i64,
    /// The id to ask `before` for the next page, when there is one.
    pub next_before: Option<i64>,
}

/// Everything stored for one event.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub row: EventRow,
    pub event_id: Option<String>,
    pub dedup_key: String,
    pub occurred_at: Option<i64>,
    pub next_attempt_at: i64,
    /// The request headers kept at receipt (a JSON object as text).
    pub headers: String,
    pub body: Vec<u8>,
}

/// One attempt of one action, with when it was made.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub event_row: i64,
    pub mapping: String,
    pub action: String,
    pub target: String,
    pub customer: Option<String>,
    pub request: String,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub attempt: i64,
    pub at: i64,
    /// How long the call took, in ms (`None`: no call, or logged before 0009).
    pub took_ms: Option<i64>,
}

const EVENT_COLUMNS: &str =
    "id, connection, source, event_type, state, attempts, received_at, customer_key, last_error";

fn event_row(r: &sqlx::any::AnyRow) -> Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        id: r.try_get(0)?,
        connection: r.try_get(1)?,
        source: r.try_get(2)?,
        event_type: r.try_get(3)?,
        state: r.try_get(4)?,
        attempts: r.try_get(5)?,
        received_at: r.try_get(6)?,
        customer_key: r.try_get(7)?,
        last_error: r.try_get(8)?,
    })
}

fn attempt_row(r: &sqlx::any::AnyRow) -> Result<Attempt, sqlx::Error> {
    Ok(Attempt {
        event_row: r.try_get(0)?,
        mapping: r.try_get(1)?,
        action: r.try_get(2)?,
        target: r.try_get(3)?,
        customer: r.try_get(4)?,
        request: r.try_get(5)?,
        status: r.try_get(6)?,
        error: r.try_get(7)?,
        attempt: r.try_get(8)?,
        at: r.try_get(9)?,
        took_ms: r.try_get(10)?,
    })
}

/// A bound value of an assembled statement.
enum Bind {
    Text(String),
    Int(i64),
}

/// A `WHERE` clause built from optional filters, with its values.
#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    binds: Vec<Bind>,
}

impl Where {
    /// The next placeholder, bound to `value`.
    fn param(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn text(&mut self, column_op: &str, value: &str) {
        let p = self.param(Bind::Text(value.to_string()));
        self.clauses.push(format!("{column_op} {p}"));
    }

    fn int(&mut self, column_op: &str, value: i64) {
        let p = self.param(Bind::Int(value));
        self.clauses.push(format!("{column_op} {p}"));
    }

    /// `column IN (…)`; an empty list matches nothing.
    fn one_of(&mut self, column: &str, values: &[String]) {
        if values.is_empty() {
            self.clauses.push("1 = 0".into());
            return;
        }
        let ps: Vec<String> = values
            .iter()
            .map(|v| self.param(Bind::Text(v.clone())))
            .collect();
        self.clauses
            .push(format!("{column} IN ({})", ps.join(", ")));
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    fn bind<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        for b in &self.binds {
            q = match b {
                Bind::Text(t) => q.bind(t.as_str()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

/// The filter of `replay` as a clause: the same rows [`Store::replay`] re-queues.
fn replay_where(filter: &ReplayFilter) -> Where {
    let mut w = Where::default();
    let states: Vec<String> = if filter.states.is_empty() {
        vec![
            EventState::Dead.as_str().into(),
            EventState::Unmapped.as_str().into(),
        ]
    } else {
        filter
            .states
            .iter()
            .map(|s| s.as_str().to_string())
            .collect()
    };
    w.one_of("state", &states);
    if let Some(id) = filter.id {
        w.int("id =", id);
    }
    if let Some(s) = filter.source.as_deref().filter(|s| !s.is_empty()) {
        w.text("source =", s);
    }
    if let Some(t) = filter.event_type.as_deref().filter(|s| !s.is_empty()) {
        w.text("event_type =", t);
    }
    w.int("received_at >=", filter.since_ms.unwrap_or(0));
    w
}

impl Store {
    /// Events per connection, source and state.
    pub async fn state_counts(&self) -> Result<Vec<StateCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT connection, source, state, COUNT(*) FROM events \
             GROUP BY connection, source, state ORDER BY connection, source, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StateCount {
                    connection: r.try_get(0)?,
                    source: r.try_get(1)?,
                    state: r.try_get(2)?,
                    count: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Held writes per state (`waiting`, `flushing`, `failed`).
    pub async fn held_state_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) FROM pending_writes GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Events waiting for delivery or in it.
    pub async fn queue_depth(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM events WHERE state IN ('received', 'retrying', 'processing')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Target calls per minute since `since_ms`: (target, minute as epoch
    /// ms, calls), from the sync log (one row per attempt of an action).
    pub async fn calls_per_minute(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT target, at / 60000, COUNT(*) FROM sync_log WHERE at >= $1 \
             GROUP BY target, at / 60000 ORDER BY target, at / 60000",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let minute: i64 = r.try_get(1)?;
                Ok((r.try_get(0)?, minute * 60_000, r.try_get(2)?))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Calls logged to `target` since `since_ms`.
    pub async fn calls_since(&self, target: &str, since_ms: i64) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM sync_log WHERE target = $1 AND at >= $2")
            .bind(target)
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// A page of events matching `query`, newest first.
    pub async fn list_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        let mut w = Where::default();
        if let Some(s) = query.state.as_deref().filter(|s| !s.is_empty()) {
            w.text("state =", s);
        }
        if let Some(s) = query.source.as_deref().filter(|s| !s.is_empty()) {
            w.text("source =", s);
        }
        if let Some(s) = query.event_type.as_deref().filter(|s| !s.is_empty()) {
            w.text("event_type =", s);
        }
        if let Some(keys) = &query.customer_keys {
            w.one_of("customer_key", keys);
        }
        if let Some(t) = query.from_ms {
            w.int("received_at >=", t);
        }
        if let Some(t) = query.to_ms {
            w.int("received_at <", t);
        }
        let total_sql = format!("SELECT COUNT(*) FROM events{}", w.sql());
        let total: i64 = w
            .bind(sqlx::query(sqlx::AssertSqlSafe(total_sql)))
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        if let Some(before) = query.before_id {
            w.int("id <", before);
        }
        let limit = query.limit.clamp(1, 500);
        let p = w.param(Bind::Int(limit + 1));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events{} ORDER BY id DESC LIMIT {p}",
            w.sql()
        );
        let rows = w
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&self.pool)
            .await?;
        let mut rows = rows
            .iter()
            .map(event_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let next_before = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.id)
        } else {
            None
        };
        Ok(EventPage {
            rows,
            total,
            next_before,
        })
    }

    /// Everything stored for one event.
    pub async fn event_record(&self, id: i64) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS}, event_id, dedup_key, occurred_at, next_attempt_at, headers, body \
             FROM events WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(EventRecord {
            row: event_row(&r)?,
            event_id: r.try_get(9)?,
            dedup_key: r.try_get(10)?,
            occurred_at: r.try_get(11)?,
            next_attempt_at: r.try_get(12)?,
            headers: r.try_get(13)?,
            body: r.try_get(14)?,
        }))
    }

    /// Every attempt logged for one event, oldest first.
    pub async fn attempts_of_event(&self, id: i64) -> Result<Vec<Attempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_row, mapping, action, target, customer, request, status, error, attempt, at, took_ms \
             FROM sync_log WHERE event_row = $1 ORDER BY id LIMIT 1000",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(attempt_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Attempts of actions on any of these target records, newest first.
    pub async fn attempts_for_records(&self, ids: &[String]) -> Result<Vec<Attempt>, StoreError> {
        let mut w = Where::default();
        w.one_of("customer", ids);
        let sql = format!(
            "SELECT event_row, mapping, action, target, customer, request, status, error, attempt, at, took_ms \
             FROM sync_log{} ORDER BY id DESC LIMIT 500",
            w.sql()
        );
        let rows = w
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(attempt_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The customer ids a person is known by, from what an operator typed:
    /// the text itself, the mirrored customers whose last-known fields
    /// contain it (a phone number or an email), and the ids linked to any of
    /// those on the other side. At most 200 ids.
    pub async fn customer_ids_matching(&self, text: &str) -> Result<Vec<String>, StoreError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = vec![text.to_string()];
        // The mirror keeps JSON text; a phone typed with spaces or dashes is
        // looked for by its digits, which is how it is stored (E.164).
        let digits: String = text.chars().filter(|c| c.is_ascii_digit()).collect();
        let needle = if text.contains('@') || digits.len() < 7 {
            text.to_lowercase()
        } else {
            digits
        };
        let escaped = needle
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let rows = sqlx::query(
            "SELECT customer_id FROM mirror WHERE LOWER(fields) LIKE $1 ESCAPE '\\' LIMIT 100",
        )
        .bind(format!("%{escaped}%"))
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let id: String = r.try_get(0)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let known = ids.clone();
        let mut w = Where::default();
        let as_source: Vec<String> = known
            .iter()
            .map(|id| w.param(Bind::Text(id.clone())))
            .collect();
        let as_target: Vec<String> = known
            .iter()
            .map(|id| w.param(Bind::Text(id.clone())))
            .collect();
        let sql = format!(
            "SELECT source_id, target_id FROM customers WHERE source_id IN ({}) OR target_id IN ({}) LIMIT 400",
            as_source.join(", "),
            as_target.join(", ")
        );
        let rows = w
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_all(&self.pool)
            .await?;
        for r in &rows {
            let source_id: String = r.try_get(0)?;
            let target_id: Option<String> = r.try_get(1)?;
            for id in std::iter::once(source_id).chain(target_id) {
                if !ids.contains(&id) && ids.len() < 200 {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// How many events [`Store::replay`] would re-queue with `filter` now.
    pub async fn replay_count(&self, filter: &ReplayFilter) -> Result<i64, StoreError> {
        let w = replay_where(filter);
        let sql = format!("SELECT COUNT(*) FROM events{}", w.sql());
        let row = w
            .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}

/// The start of the current UTC day (epoch ms), when daily budgets reset.
pub fn utc_day_start_ms() -> i64 {
    let now = now_ms();
    now - now.rem_euclid(86_400_000)
}
