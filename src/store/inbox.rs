//! The inbox: webhooks stored in group-committed batches, and the claim
//! that hands out the oldest pending event of each customer.
//!
//! Which event is a customer's oldest pending one is kept in `inbox_heads`
//! by triggers (migration 0008): the claim reads one row per customer with
//! pending events instead of walking every waiting event, so its cost does
//! not grow with a customer's backlog or its delivered history.

use super::wal::flush_log;
use super::{CLAIM_LEASE_MS, ClaimedEvent, Dialect, Inserted, NewEvent, Store, StoreError, now_ms};
use sqlx::{AnyConnection, Connection, Row};
use std::collections::{BTreeSet, HashMap};
use tokio::sync::{mpsc, oneshot};

/// The states in which an event still waits for (or is in) delivery.
const PENDING: &str = "('received', 'retrying', 'processing')";

/// Notes of finished events read per claim: a bulk change of many events
/// (an operator's `UPDATE`) is worked off over a few claims.
const REPAIR_BATCH: i64 = 4096;

/// Customers per repair statement (two parameters each).
const KEYS_PER_STATEMENT: usize = 200;

/// How much of a claim each connection may take ([`Store::claim_due_fairly`]).
#[derive(Debug, Clone, Copy)]
pub struct ClaimShares<'a> {
    /// What the worker holds now (claimed, not yet past its slot), by connection.
    pub holding: &'a HashMap<String, usize>,
    /// At most this many held per connection.
    pub each: usize,
    /// A connection that holds events is topped up only when a whole round
    /// fits (its slots): a busy worker claims once per round, not once per
    /// delivery.
    pub round: usize,
}

impl<'a> ClaimShares<'a> {
    /// No cap: equal parts of each claim.
    pub fn equal(holding: &'a HashMap<String, usize>) -> ClaimShares<'a> {
        ClaimShares {
            holding,
            each: usize::MAX,
            round: 1,
        }
    }

    /// How many more events `connection` may hold.
    pub fn room_of(&self, connection: &str) -> usize {
        let held = self.holding.get(connection).copied().unwrap_or(0);
        let room = self.each.saturating_sub(held);
        if held > 0 && room < self.round {
            0
        } else {
            room
        }
    }
}

impl Store {
    /// Stores events in one transaction; a repeated de-duplication key gives
    /// the id stored the first time.
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<Vec<Inserted>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let _turn = self.write_gate(super::Writer::Inbox).await;
        let mut conn = self.pool.acquire().await?;
        self.durable(&mut conn, true).await?;
        let inserted = self.insert_events_on(&mut conn, events).await;
        // Back to the pool's setting; a connection left at FULL is only slower.
        let _ = self.durable(&mut conn, false).await;
        inserted
    }

    /// Whether each commit of `conn` waits for the disk (SQLite's
    /// `synchronous`; PostgreSQL commits are always durable): on for
    /// storing webhooks, off for the pool (see [`Store::open`]).
    pub(super) async fn durable(
        &self,
        conn: &mut AnyConnection,
        on: bool,
    ) -> Result<(), StoreError> {
        if self.dialect == Dialect::Sqlite {
            let pragma = if on {
                "PRAGMA synchronous=FULL"
            } else {
                "PRAGMA synchronous=NORMAL"
            };
            sqlx::query(pragma).execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Lets the inbox's own SQLite connection read the file's pages through
    /// a memory map: an insert walks the indexes (the de-duplication key's
    /// above all, whose leaf is a random one for each webhook), and with a
    /// backlog of 100,000 events most of those pages were copied back from
    /// the file by `pread` each time (another connection's commit empties
    /// this one's page cache; a larger cache only made emptying it cost
    /// more).
    pub(super) async fn keep_index_pages(&self, conn: &mut AnyConnection) {
        if self.dialect == Dialect::Sqlite
            && let Err(e) = sqlx::query("PRAGMA mmap_size=1073741824")
                .execute(&mut *conn)
                .await
        {
            tracing::debug!(error = %e, "the inbox reads SQLite's pages without a memory map");
        }
    }

    /// As [`Store::insert_events`], on a connection the caller holds.
    async fn insert_events_on(
        &self,
        conn: &mut AnyConnection,
        events: &[NewEvent],
    ) -> Result<Vec<Inserted>, StoreError> {
        let now = now_ms();
        // One multi-row statement per batch, on its own (autocommit): a single
        // statement is atomic by itself, and SQLite then needs no statement
        // journal (inside an explicit transaction it copies every page the
        // insert touches into one: 13% of the ingest's CPU). The rows it
        // inserts come back with their keys; the others were stored before
        // (or earlier in this batch) and are looked up once it is committed.
        let mut sql = String::from(
            "INSERT INTO events (connection, source, event_type, event_id, dedup_key, received_at, \
             occurred_at, headers, body, state, attempts, next_attempt_at, customer_key, last_error) VALUES ",
        );
        // Each row: 10 parameters, the attempts (0), 3 more.
        let postgres = self.dialect == Dialect::Postgres;
        for n in 0..events.len() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for column in 0..13 {
                if column > 0 {
                    sql.push_str(", ");
                }
                if column == 10 {
                    sql.push_str("0, ");
                }
                sql.push_str(&super::journal::placeholder(postgres, n * 13 + column + 1));
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (connection, source, dedup_key) DO NOTHING RETURNING id, connection, source, dedup_key");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in events {
            query = query
                .bind(e.connection.as_str())
                .bind(e.source.as_str())
                .bind(e.event_type.as_str())
                .bind(e.event_id.as_deref())
                .bind(e.dedup_key.as_str())
                .bind(now)
                .bind(e.occurred_at)
                .bind(e.headers.to_string())
                .bind(e.body.as_slice())
                .bind(e.state.as_str())
                .bind(now)
                .bind(e.customer_key.as_deref())
                .bind(e.note.as_deref());
        }
        let rows = query.fetch_all(&mut *conn).await?;
        let mut fresh: HashMap<(String, String, String), i64> = HashMap::new();
        for r in &rows {
            fresh.insert((r.try_get(1)?, r.try_get(2)?, r.try_get(3)?), r.try_get(0)?);
        }
        let mut out = Vec::with_capacity(events.len());
        let mut seen: HashMap<(String, String, String), i64> = HashMap::new();
        for e in events {
            let key = (e.connection.clone(), e.source.clone(), e.dedup_key.clone());
            if let Some(id) = seen.get(&key) {
                out.push(Inserted::Duplicate(*id));
                continue;
            }
            let result = match fresh.get(&key) {
                Some(id) => Inserted::New(*id),
                None => {
                    let row = sqlx::query(
                        "SELECT id FROM events WHERE connection = $1 AND source = $2 AND dedup_key = $3",
                    )
                    .bind(&e.connection)
                    .bind(&e.source)
                    .bind(&e.dedup_key)
                    .fetch_one(&mut *conn)
                    .await?;
                    Inserted::Duplicate(row.try_get::<i64, _>(0)?)
                }
            };
            seen.insert(key, result.id());
            out.push(result);
        }
        Ok(out)
    }

    /// Claims up to `limit` events that are due, marking them `processing`.
    ///
    /// An event is due only when no earlier event of the same customer is
    /// still waiting or in flight, so one customer's events apply in arrival
    /// order while different customers' go in parallel (also across
    /// replicas). PostgreSQL skips rows another worker holds; SQLite has one
    /// writer, so the single `UPDATE … RETURNING` is already atomic.
    pub async fn claim_due(&self, limit: i64) -> Result<Vec<ClaimedEvent>, StoreError> {
        let nothing_held = HashMap::new();
        self.claim_due_fairly(limit, &ClaimShares::equal(&nothing_held))
            .await
    }

    /// [`Store::claim_due`], sharing the claim among the connections that
    /// have events due, round-robin: each gets an equal part of the claim,
    /// and what the connections with nothing due leave goes, in equal parts,
    /// to those with more; each claim starts with the connection after the
    /// one the last claim ended with. `shares` caps what one connection may
    /// hold: a connection with a backlog of 50,000 events held to its rate
    /// limit holds its cap, not the worker, and a quiet connection's event
    /// is claimed by the next claim. Round-robin rather than weighted fair
    /// queuing: every connection's calls cost the same to the worker, and
    /// its own rate limit already weighs what it may send.
    pub async fn claim_due_fairly(
        &self,
        limit: i64,
        shares: &ClaimShares<'_>,
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        let _turn = self.write_gate(super::Writer::Claim).await;
        let mut conn = self.pool.acquire().await?;
        let now = now_ms();
        // With nothing to recompute, a claim that finds nothing due writes
        // nothing at all.
        if !self.heads_are_stale(&mut conn).await? {
            return self.claim_candidates(&mut conn, now, limit, shares).await;
        }
        if self.dialect == Dialect::Postgres {
            // The repair commits before the candidates are looked for: it
            // holds the row locks of the heads it recomputes, and a webhook
            // stored for one of those customers (the insert's trigger lowers
            // the head) would wait for them through all the claim's
            // statements, up to one per connection (fairness bench, all
            // backlogs on 3 replicas: the inbox inserts waited on a lock in
            // 17% of the samples of the busy sessions). Not waiting for the
            // disk: a repair lost in a crash is lost with the notes it
            // deleted, which are then repaired again.
            let mut tx = conn.begin().await?;
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            self.repair_heads(&mut tx).await?;
            tx.commit().await?;
            return self.claim_candidates(&mut conn, now, limit, shares).await;
        }
        // SQLite: heads to recompute and the claim share one transaction
        // (one durable commit); its one writer has no row locks to hold.
        let mut tx = conn.begin().await?;
        self.repair_heads(&mut tx).await?;
        let claimed = self.claim_candidates(&mut tx, now, limit, shares).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// The due heads, shared among connections as [`Store::claim_due_fairly`]
    /// says, then the events without a customer; up to `limit` in all. Not
    /// more: the claim takes the oldest of its candidates, and extra ones
    /// would be a backlog's, older than a quiet connection's.
    async fn fair_candidates(
        &self,
        conn: &mut AnyConnection,
        now: i64,
        limit: usize,
        shares: &ClaimShares<'_>,
    ) -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::with_capacity(limit);
        let busy: Vec<String> = sqlx::query(BUSY_CONNECTIONS_SQL)
            .bind(BUSY_CONNECTIONS_READ)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, sqlx::Error>>()?;
        if !busy.is_empty() {
            let after = self
                .claim_cursor
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default();
            let first = busy.partition_point(|c| *c <= after);
            let mut open: Vec<&String> = busy[first..]
                .iter()
                .chain(&busy[..first])
                .filter(|c| shares.room_of(c) > 0)
                .take(CONNECTIONS_PER_CLAIM)
                .collect();
            let share = (limit / open.len().max(1)).max(1);
            // What this claim took of each connection, and its last head:
            // a later round goes on after it.
            let mut taken: HashMap<&String, (usize, i64)> = HashMap::new();
            let mut statements = 0;
            let mut last = None;
            let mut round_share = share;
            // Round one gives each connection its part; what is left of the
            // claim then goes, in equal parts, to those that may have more.
            loop {
                let mut more = Vec::new();
                for connection in open {
                    if ids.len() >= limit || statements >= CONNECTIONS_PER_CLAIM {
                        break;
                    }
                    let (got, after_id) = taken.get(connection).copied().unwrap_or((0, 0));
                    let room = shares.room_of(connection).saturating_sub(got);
                    let want = round_share.min(room).min(limit - ids.len());
                    if want == 0 {
                        continue;
                    }
                    let rows = sqlx::query(sqlx::AssertSqlSafe(heads_of_sql()))
                        .bind(connection.as_str())
                        .bind(now)
                        .bind(want as i64)
                        .bind(after_id)
                        .fetch_all(&mut *conn)
                        .await?;
                    statements += 1;
                    let mut mine = (got, after_id);
                    for r in &rows {
                        let id = r.try_get::<i64, _>(0)?;
                        ids.push(id);
                        mine = (mine.0 + 1, id);
                    }
                    taken.insert(connection, mine);
                    if rows.len() == want && room > want {
                        more.push(connection);
                    }
                    last = Some(connection);
                }
                let left = limit.saturating_sub(ids.len());
                if more.is_empty() || left == 0 {
                    break;
                }
                round_share = (left / more.len()).max(1);
                open = more;
            }
            if let (Some(last), Ok(mut cursor)) = (last, self.claim_cursor.lock()) {
                cursor.clone_from(last);
            }
        }
        // Events without a customer belong to no connection's share.
        if ids.len() < limit {
            let rows = sqlx::query(sqlx::AssertSqlSafe(keyless_sql()))
                .bind(now)
                .bind((limit - ids.len()) as i64)
                .fetch_all(&mut *conn)
                .await?;
            for r in &rows {
                ids.push(r.try_get::<i64, _>(0)?);
            }
        }
        Ok(ids)
    }

    /// Finds the due heads, then takes up to `limit` of them.
    async fn claim_candidates(
        &self,
        conn: &mut AnyConnection,
        now: i64,
        limit: i64,
        shares: &ClaimShares<'_>,
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        let ids = self
            .fair_candidates(conn, now, limit.max(0) as usize, shares)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let lease_until = now + CLAIM_LEASE_MS;
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.take_sql(ids.len())))
            .bind(now)
            .bind(limit)
            .bind(lease_until)
            .bind(self.claim_owner());
        let rows = ids
            .iter()
            .fold(rows, |q, id| q.bind(*id))
            .fetch_all(&mut *conn)
            .await?;
        let mut out: Vec<ClaimedEvent> = rows
            .iter()
            .map(|r| {
                Ok(ClaimedEvent {
                    id: r.try_get(0)?,
                    connection: r.try_get(1)?,
                    source: r.try_get(2)?,
                    event_type: r.try_get(3)?,
                    body: r.try_get(4)?,
                    attempts: r.try_get(5)?,
                    customer_key: r.try_get(6)?,
                    occurred_at: r.try_get(7)?,
                    received_at: r.try_get(8)?,
                    lease_until,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// Takes up to `$2` of the `count` candidate ids (`$5…`) that are still
    /// pending and due when locked: `$1` now, `$3` the lease's end, `$4` the
    /// claiming store's name ([`Store::claim_owner`]). A claim is a lease:
    /// `next_attempt_at` becomes its end, and an event still `processing`
    /// after it (its process died or stalled) is due again. The ids are
    /// literal parameters so that the planner probes the primary key for
    /// them instead of merging them with every pending event.
    fn take_sql(&self, count: usize) -> String {
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let list = (0..count)
            .map(|n| format!("${}", n + 5))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE events SET state = 'processing', attempts = attempts + 1, next_attempt_at = $3, \
             claimed_by = $4 WHERE id IN \
             (SELECT e.id FROM events e WHERE e.id IN ({list}) \
             AND e.state IN {PENDING} AND e.next_attempt_at <= $1 \
             ORDER BY e.id LIMIT $2{lock}) \
             RETURNING id, connection, source, event_type, body, attempts, customer_key, occurred_at, received_at"
        )
    }

    /// How the database finds the due heads of a claim, for the record
    /// (BENCHMARKS.md): on PostgreSQL `EXPLAIN ANALYZE`, on SQLite `EXPLAIN
    /// QUERY PLAN`, of the candidates' query and of taking `limit` of them
    /// (rolled back). Stale heads are repaired first, as a claim does.
    pub async fn explain_claim(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let now = now_ms();
        let mut tx = conn.begin().await?;
        self.repair_heads(&mut tx).await?;
        let (prefix, column) = match self.dialect {
            Dialect::Postgres => ("EXPLAIN (ANALYZE, BUFFERS) ", 0),
            Dialect::Sqlite => ("EXPLAIN QUERY PLAN ", 3),
        };
        let text = |rows: Vec<sqlx::any::AnyRow>| {
            rows.iter()
                .map(|r| r.try_get::<String, _>(column))
                .collect::<Result<Vec<String>, sqlx::Error>>()
        };
        let wanted = limit.max(0) as usize;
        let mut lines = vec!["-- the connections with events waiting:".to_string()];
        lines.extend(text(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{prefix}{BUSY_CONNECTIONS_SQL}"
            )))
            .bind(BUSY_CONNECTIONS_READ)
            .fetch_all(&mut *tx)
            .await?,
        )?);
        let busy: Option<String> = sqlx::query(BUSY_CONNECTIONS_SQL)
            .bind(1i64)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if let Some(connection) = busy {
            lines.push(format!("-- the due heads of one of them (`{connection}`):"));
            lines.extend(text(
                sqlx::query(sqlx::AssertSqlSafe(format!("{prefix}{}", heads_of_sql())))
                    .bind(connection)
                    .bind(now)
                    .bind(wanted as i64)
                    .bind(0i64)
                    .fetch_all(&mut *tx)
                    .await?,
            )?);
        }
        let ids = self
            .fair_candidates(&mut tx, now, wanted, &ClaimShares::equal(&HashMap::new()))
            .await?;
        if !ids.is_empty() {
            lines.push("-- taking them:".to_string());
            let query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "{prefix}{}",
                self.take_sql(ids.len())
            )))
            .bind(now)
            .bind(limit)
            .bind(now + CLAIM_LEASE_MS)
            .bind(self.claim_owner());
            lines.extend(text(
                ids.iter()
                    .fold(query, |q, id| q.bind(*id))
                    .fetch_all(&mut *tx)
                    .await?,
            )?);
        }
        tx.rollback().await?;
        Ok(lines)
    }

    /// Whether any customer's head must be recomputed; one indexed read.
    async fn heads_are_stale(&self, conn: &mut AnyConnection) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT id FROM inbox_head_stale LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?
            .is_some())
    }

    /// Recomputes the head of each customer whose events left the queue
    /// since the last claim (the triggers only note them, see migration
    /// 0008).
    ///
    /// On PostgreSQL a head row another transaction holds — an insert
    /// lowering it, another replica repairing it — is skipped and noted
    /// again for the next claim. Each head is recomputed by a statement that
    /// starts after its row is locked, so it sees every event committed by
    /// then, and an event stored after that waits for the lock and then
    /// lowers the head itself: no pending event is left without a head.
    async fn repair_heads(&self, tx: &mut AnyConnection) -> Result<(), StoreError> {
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        // A write first: on SQLite a deferred transaction that has read may
        // not upgrade to a writer once another connection has committed.
        let noted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM inbox_head_stale WHERE id IN \
             (SELECT id FROM inbox_head_stale ORDER BY id LIMIT $1{lock}) \
             RETURNING connection, customer_key"
        )))
        .bind(REPAIR_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        // Sorted, so that two replicas lock heads in the same order.
        let mut customers = BTreeSet::new();
        for r in &noted {
            customers.insert((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?));
        }
        let customers: Vec<(String, String)> = customers.into_iter().collect();
        for chunk in customers.chunks(KEYS_PER_STATEMENT) {
            let mut chosen: Vec<&(String, String)> = chunk.iter().collect();
            if self.dialect == Dialect::Postgres {
                let held = bind_keys(
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT connection, customer_key FROM inbox_heads WHERE {} \
                         ORDER BY connection, customer_key FOR UPDATE SKIP LOCKED",
                        keys_condition(chunk.len(), 1)
                    ))),
                    chunk,
                )
                .fetch_all(&mut *tx)
                .await?;
                let mut locked = BTreeSet::new();
                for r in &held {
                    locked.insert((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?));
                }
                // Busy elsewhere: noted again for the next claim.
                let busy: Vec<(String, String)> = chunk
                    .iter()
                    .filter(|k| !locked.contains(*k))
                    .cloned()
                    .collect();
                if !busy.is_empty() {
                    bind_keys(
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "INSERT INTO inbox_head_stale (connection, customer_key) \
                             SELECT connection, customer_key FROM inbox_heads WHERE {}",
                            keys_condition(busy.len(), 1)
                        ))),
                        &busy,
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                chosen.retain(|k| locked.contains(*k));
            }
            if chosen.is_empty() {
                continue;
            }
            let chosen: Vec<(String, String)> = chosen.into_iter().cloned().collect();
            // A statement of its own: on PostgreSQL its snapshot is taken
            // after the locks above, so it sees every event committed by then.
            bind_keys(
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE inbox_heads SET head_id = (SELECT MIN(e.id) FROM events e \
                     WHERE e.connection = inbox_heads.connection \
                     AND e.customer_key = inbox_heads.customer_key AND e.state IN {PENDING}) \
                     WHERE {}",
                    keys_condition(chosen.len(), 1)
                ))),
                &chosen,
            )
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

/// `(connection = $n AND customer_key = $n+1) OR …` for `count` keys from
/// `$first`: both planners answer it with primary-key look-ups (a row-value
/// `IN` list made SQLite scan every head).
fn keys_condition(count: usize, first: usize) -> String {
    (0..count)
        .map(|i| {
            let n = first + 2 * i;
            format!("(connection = ${n} AND customer_key = ${})", n + 1)
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn bind_keys<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    keys: &'q [(String, String)],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for (connection, customer_key) in keys {
        query = query.bind(connection.as_str()).bind(customer_key.as_str());
    }
    query
}

/// The due heads in id order, `$2` at most (`$1` now): of customers, from
/// `inbox_heads`, and events without a customer (each is its own head). The
/// scalar subquery keeps both planners on the heads index in order,
/// stopping at the limit, whatever their statistics say (a stale estimate
/// made PostgreSQL hash-join every pending event).
/// The connections with a customer waiting, in name order, up to `$1`: a
/// skip scan of the index `inbox_heads_fair` (migration 0012), one probe per
/// connection, however long each one's backlog.
const BUSY_CONNECTIONS_SQL: &str = "WITH RECURSIVE busy(connection) AS ( \
       SELECT MIN(connection) FROM inbox_heads WHERE head_id IS NOT NULL \
       UNION ALL \
       SELECT (SELECT MIN(h.connection) FROM inbox_heads h \
               WHERE h.head_id IS NOT NULL AND h.connection > busy.connection) \
       FROM busy WHERE busy.connection IS NOT NULL) \
     SELECT connection FROM busy WHERE connection IS NOT NULL LIMIT $1";

/// Connections a claim reads the names of: a deployment with more busy
/// connections than this serves the rest as the round-robin reaches them
/// (the cursor starts after the last one served).
const BUSY_CONNECTIONS_READ: i64 = 4096;

/// Connections one claim reads heads from: bounds a claim's statements
/// when many connections have events that are not due yet.
const CONNECTIONS_PER_CLAIM: usize = 64;

/// The due heads of connection `$1` at `$2`, oldest first, up to `$3`,
/// after head `$4`.
fn heads_of_sql() -> String {
    format!(
        "SELECT h.head_id FROM inbox_heads h WHERE h.connection = $1 AND h.head_id IS NOT NULL AND h.head_id > $4 \
           AND (SELECT x.next_attempt_at FROM events x WHERE x.id = h.head_id AND x.state IN {PENDING}) <= $2 \
         ORDER BY h.head_id LIMIT $3"
    )
}

/// Due events without a customer (each its own head) at `$1`, up to `$2`.
fn keyless_sql() -> String {
    format!(
        "SELECT x.id FROM events x WHERE x.customer_key IS NULL AND x.state IN {PENDING} \
           AND x.next_attempt_at <= $1 ORDER BY x.id LIMIT $2"
    )
}

/// Batches whose log flush may be under way at once: enough to keep the
/// disk's queue busy (`scripts/fsync-probe.py`: on the VM of BENCHMARKS.md,
/// 4 concurrent `fdatasync`s completed 2 to 30 times as many flushes per
/// second as one after another), few enough that a slow disk holds back the inbox instead of
/// piling up threads.
const FLUSHES_IN_FLIGHT: usize = 16;

/// The inbox's own connection, and the log file whose flush makes its
/// commits durable.
struct InboxConnection {
    conn: AnyConnection,
    /// SQLite in WAL mode: the write-ahead log, flushed after each commit
    /// outside the write turn. `None`: every commit waits for the disk
    /// itself (PostgreSQL, or SQLite not in WAL mode).
    log: Option<std::sync::Arc<std::path::PathBuf>>,
}

impl Store {
    /// Prepares the inbox's connection: its commits are made durable
    /// either by the database itself or, on SQLite in WAL mode, by
    /// [`flush_log`] after the write turn has passed on.
    async fn inbox_connection(&self, mut conn: AnyConnection) -> Option<InboxConnection> {
        let log = self.write_ahead_log(&mut conn).await;
        match log {
            None => self.durable(&mut conn, true).await.ok()?,
            // The log's checkpoints run beside the inbox, not inside its
            // commits ([`Store::checkpoints`]): SQLite's own, run by the
            // commit that crosses its threshold, syncs the database file
            // while every webhook waits (up to 100 ms at 300,000 events).
            Some(_) => {
                sqlx::query("PRAGMA wal_autocheckpoint=0")
                    .execute(&mut conn)
                    .await
                    .ok()?;
            }
        }
        self.keep_index_pages(&mut conn).await;
        Some(InboxConnection {
            conn,
            log: log.map(std::sync::Arc::new),
        })
    }
}

/// Groups concurrent inserts into one transaction, so durability costs one
/// commit per batch instead of one per webhook.
#[derive(Debug, Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Waiting>,
}

/// A webhook waiting for its batch's commit, with where to say how it went.
type Waiting = (NewEvent, oneshot::Sender<Result<Inserted, StoreError>>);

impl Inbox {
    /// Starts the writer task; at most `max_batch` events per transaction.
    ///
    /// Requests wait for their batch's commit (never acknowledged before
    /// it); while one batch commits, the next gathers the requests that
    /// arrive meanwhile. The writer keeps a connection of its own, outside
    /// the pool the workers share: a webhook never queues behind deliveries
    /// for a connection.
    pub fn start(store: Store, max_batch: usize) -> Inbox {
        let (tx, mut rx) = mpsc::channel::<Waiting>(4096);
        let flushes = std::sync::Arc::new(tokio::sync::Semaphore::new(FLUSHES_IN_FLIGHT));
        tokio::spawn(async move {
            let mut own: Option<InboxConnection> = None;
            let mut events = Vec::with_capacity(max_batch);
            let mut replies = Vec::with_capacity(max_batch);
            while let Some((event, reply)) = rx.recv().await {
                events.push(event);
                replies.push(reply);
                while events.len() < max_batch {
                    match rx.try_recv() {
                        Ok((event, reply)) => {
                            events.push(event);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                if own.is_none() {
                    // Detached: the pool opens another in its place.
                    own = match store.pool.acquire().await {
                        Ok(conn) => store.inbox_connection(conn.detach()).await,
                        Err(_) => None,
                    };
                }
                let outcome = match own.as_mut() {
                    Some(own) => {
                        let _turn = store.write_gate(super::Writer::Inbox).await;
                        store.insert_events_on(&mut own.conn, &events).await
                    }
                    None => store.insert_events(&events).await,
                };
                let log = own.as_ref().and_then(|own| own.log.clone());
                match (outcome, log) {
                    (Ok(results), Some(log)) => {
                        // The flush runs outside the write turn: the next
                        // batch is inserted while this one's reaches the
                        // disk, and several flushes in flight are cheaper
                        // than one after another.
                        let Ok(permit) = flushes.clone().acquire_owned().await else {
                            break;
                        };
                        let replies =
                            std::mem::replace(&mut replies, Vec::with_capacity(max_batch));
                        tokio::spawn(async move {
                            let flushed = flush_log(log).await;
                            drop(permit);
                            match flushed {
                                Ok(()) => {
                                    for (reply, result) in replies.into_iter().zip(results) {
                                        let _ = reply.send(Ok(result));
                                    }
                                }
                                Err(e) => {
                                    let shared = std::sync::Arc::new(e);
                                    for reply in replies {
                                        let _ = reply.send(Err(StoreError::Shared(shared.clone())));
                                    }
                                }
                            }
                        });
                    }
                    (Ok(results), None) => {
                        for (reply, result) in replies.drain(..).zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    (Err(e), _) => {
                        // The connection may be what failed: a fresh one next time.
                        own = None;
                        let shared = std::sync::Arc::new(e);
                        for reply in replies.drain(..) {
                            let _ = reply.send(Err(StoreError::Shared(shared.clone())));
                        }
                    }
                }
                events.clear();
            }
        });
        Inbox { tx }
    }

    /// Stores one event; returns once it is committed.
    pub async fn store(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((event, reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a SQLite file in WAL mode the inbox's commits do not wait for the
    /// disk inside the write turn; the log it flushes afterwards is the
    /// database's own.
    #[tokio::test]
    async fn the_inbox_flushes_the_write_ahead_log_after_its_turn() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inbox.db");
        let store = Store::open(&format!("sqlite://{}", file.display()))
            .await
            .unwrap();
        let conn = store.pool.acquire().await.unwrap().detach();
        let mut own = store.inbox_connection(conn).await.unwrap();
        let log = own.log.clone().unwrap();
        assert_eq!(
            log.canonicalize().unwrap(),
            dir.path().canonicalize().unwrap().join("inbox.db-wal")
        );
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut own.conn)
            .await
            .unwrap();
        assert_eq!(synchronous, 1, "NORMAL: the flush is the inbox's own");
        flush_log(log).await.unwrap();
        let missing = flush_log(std::sync::Arc::new(dir.path().join("gone-wal"))).await;
        assert!(
            matches!(&missing, Err(StoreError::Flush { path, .. }) if path.ends_with("gone-wal")),
            "{missing:?}"
        );
    }
}
