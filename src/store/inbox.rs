//! The inbox's claim: hands out the oldest pending event of each customer.
//!
//! Which event is a customer's oldest pending one is kept in `inbox_heads`
//! by triggers (migration 0008): the claim reads one row per customer with
//! pending events instead of walking every waiting event, so its cost does
//! not grow with a customer's backlog or its delivered history.

use super::{CLAIM_LEASE_MS, ClaimedEvent, Dialect, Store, StoreError, now_ms};
use sqlx::Row;
use std::collections::BTreeSet;

/// The states in which an event still waits for (or is in) delivery.
const PENDING: &str = "('received', 'retrying', 'processing')";

/// Stale customers whose head is recomputed per claim; the rest wait for the
/// next claim, so one claim stays short after a burst of finished events.
const REPAIR_BATCH: i64 = 256;

/// Heads looked at beyond the claim's limit: rows another replica is
/// claiming at the same moment are skipped (`SKIP LOCKED`), and the claim
/// still fills from the next heads.
const CANDIDATE_SLACK: i64 = 32;

impl Store {
    /// Claims up to `limit` events that are due, marking them `processing`.
    ///
    /// An event is due only when no earlier event of the same customer is
    /// still waiting or in flight, so one customer's events apply in arrival
    /// order while different customers' go in parallel (also across
    /// replicas). PostgreSQL skips rows another worker holds; SQLite has one
    /// writer, so the single `UPDATE … RETURNING` is already atomic.
    pub async fn claim_due(&self, limit: i64) -> Result<Vec<ClaimedEvent>, StoreError> {
        self.repair_heads().await?;
        let sql = self.claim_sql();
        let now = now_ms();
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(limit)
            .bind(now + CLAIM_LEASE_MS)
            .bind(limit.saturating_add(CANDIDATE_SLACK))
            .fetch_all(&self.pool)
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
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// The claim statement: `$1` now, `$2` the limit, `$3` the lease's end,
    /// `$4` how many heads to look at.
    fn claim_sql(&self) -> String {
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        // Candidates: due heads of customers, in id order, and due events
        // without a customer (each is its own head). The scalar subquery
        // keeps the planners on the heads index in order, stopping at the
        // limit, whatever their statistics say (a stale estimate made
        // PostgreSQL hash-join every pending event). A claim is a lease:
        // `next_attempt_at` becomes its end, and an event still `processing`
        // after it (its process died) is due again.
        format!(
            "UPDATE events SET state = 'processing', attempts = attempts + 1, next_attempt_at = $3 WHERE id IN \
             (SELECT e.id FROM events e WHERE e.id IN \
               (SELECT id FROM (SELECT h.head_id AS id FROM inbox_heads h WHERE h.head_id IS NOT NULL \
                  AND (SELECT x.next_attempt_at FROM events x WHERE x.id = h.head_id AND x.state IN {PENDING}) <= $1 \
                  ORDER BY h.head_id LIMIT $4) heads \
                UNION ALL \
                SELECT id FROM (SELECT x.id FROM events x WHERE x.customer_key IS NULL AND x.state IN {PENDING} \
                  AND x.next_attempt_at <= $1 ORDER BY x.id LIMIT $4) keyless) \
             AND e.state IN {PENDING} AND e.next_attempt_at <= $1 \
             ORDER BY e.id LIMIT $2{lock}) \
             RETURNING id, connection, source, event_type, body, attempts, customer_key, occurred_at"
        )
    }

    /// How the database runs one claim of `limit` events, for the record
    /// (BENCHMARKS.md): on PostgreSQL `EXPLAIN ANALYZE` of the claim, rolled
    /// back; on SQLite `EXPLAIN QUERY PLAN`. Stale heads are repaired first,
    /// as a claim does.
    pub async fn explain_claim(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        self.repair_heads().await?;
        let now = now_ms();
        let sql = self.claim_sql();
        let mut tx = self.pool.begin().await?;
        let (prefix, column) = match self.dialect {
            Dialect::Postgres => ("EXPLAIN (ANALYZE, BUFFERS) ", 0),
            Dialect::Sqlite => ("EXPLAIN QUERY PLAN ", 3),
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{prefix}{sql}")))
            .bind(now)
            .bind(limit)
            .bind(now + CLAIM_LEASE_MS)
            .bind(limit.saturating_add(CANDIDATE_SLACK))
            .fetch_all(&mut *tx)
            .await?;
        let lines = rows
            .iter()
            .map(|r| r.try_get::<String, _>(column))
            .collect::<Result<_, sqlx::Error>>()?;
        tx.rollback().await?;
        Ok(lines)
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
    async fn repair_heads(&self) -> Result<(), StoreError> {
        // The common case (nothing left the queue) costs one indexed read and
        // no transaction.
        if sqlx::query("SELECT id FROM inbox_head_stale LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .is_none()
        {
            return Ok(());
        }
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let mut tx = self.pool.begin().await?;
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
        for (connection, customer_key) in &customers {
            if self.dialect == Dialect::Postgres {
                let held = sqlx::query(
                    "SELECT 1 FROM inbox_heads WHERE connection = $1 AND customer_key = $2 \
                     FOR UPDATE SKIP LOCKED",
                )
                .bind(connection)
                .bind(customer_key)
                .fetch_optional(&mut *tx)
                .await?;
                if held.is_none() {
                    // Busy elsewhere (or gone): note it again for the next claim.
                    sqlx::query(
                        "INSERT INTO inbox_head_stale (connection, customer_key) \
                         SELECT connection, customer_key FROM inbox_heads \
                         WHERE connection = $1 AND customer_key = $2",
                    )
                    .bind(connection)
                    .bind(customer_key)
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE inbox_heads SET head_id = (SELECT MIN(e.id) FROM events e \
                 WHERE e.connection = $1 AND e.customer_key = $2 AND e.state IN {PENDING}) \
                 WHERE connection = $1 AND customer_key = $2"
            )))
            .bind(connection)
            .bind(customer_key)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
