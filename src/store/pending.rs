//! Writes held back to be coalesced (a target's `coalesce:` window).
//!
//! One open row per customer record and operation takes every write until
//! it is due; the flusher then claims it, sends one call, and deletes it. A
//! claimed row is leased like a claimed event, so a replica that dies while
//! sending leaves it to another.

use super::{Dialect, Store, StoreError, now_ms};
use serde_json::Value;
use sqlx::Row;

/// A write to hold back.
#[derive(Debug, Clone)]
pub struct HeldWrite {
    pub connection: String,
    pub target: String,
    /// The customer's id on the target.
    pub record_id: String,
    pub op: String,
    pub params: Value,
    pub mapping: String,
    pub event_row: i64,
    pub occurred_at: Option<i64>,
}

/// Where a held write went.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub id: i64,
    /// Writes merged into the row so far, this one included.
    pub writes: i64,
    pub due_at: i64,
}

/// A row of `pending_writes`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingWrite {
    pub id: i64,
    pub connection: String,
    pub target: String,
    pub record_id: String,
    pub op: String,
    pub params: Value,
    /// Mappings whose writes were merged, in order, without repeats.
    pub mappings: Vec<String>,
    /// Events whose writes were merged, in order.
    pub event_rows: Vec<i64>,
    pub writes: i64,
    /// The latest occurrence time among the merged events.
    pub occurred_at: Option<i64>,
    pub first_at: i64,
    pub due_at: i64,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// The store whose flusher claimed the row last ([`Store::claim_owner`]):
    /// its outcome is recorded only while the claim is still that one.
    #[serde(skip)]
    pub claimed_by: Option<String>,
}

/// How long a claimed row is its flusher's unless renewed: as short as an
/// event's claim, renewed as often ([`super::LEASE_RENEWAL_MS`]).
pub const FLUSH_LEASE_MS: i64 = super::CLAIM_LEASE_MS;

const COLUMNS: &str = "id, connection, target, record_id, op, params, mappings, event_rows, writes, \
     occurred_at, first_at, due_at, state, attempts, last_error, claimed_by";

fn read_row(r: &sqlx::any::AnyRow) -> Result<PendingWrite, sqlx::Error> {
    let json = |text: String| serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
    let mappings: Vec<String> = serde_json::from_value(json(r.try_get(6)?)).unwrap_or_default();
    let event_rows: Vec<i64> = serde_json::from_value(json(r.try_get(7)?)).unwrap_or_default();
    Ok(PendingWrite {
        id: r.try_get(0)?,
        connection: r.try_get(1)?,
        target: r.try_get(2)?,
        record_id: r.try_get(3)?,
        op: r.try_get(4)?,
        params: json(r.try_get(5)?),
        mappings,
        event_rows,
        writes: r.try_get(8)?,
        occurred_at: r.try_get(9)?,
        first_at: r.try_get(10)?,
        due_at: r.try_get(11)?,
        state: r.try_get(12)?,
        attempts: r.try_get(13)?,
        last_error: r.try_get(14)?,
        claimed_by: r.try_get(15)?,
    })
}

impl Store {
    /// Holds a write: merged into the record's open row for the operation
    /// (`merge(earlier, later)`), or the first of a new row due `window_ms`
    /// from now. Safe against a flusher claiming the row meanwhile and
    /// against another replica holding a write for the same record.
    pub async fn hold_write(
        &self,
        write: &HeldWrite,
        window_ms: i64,
        merge: impl Fn(&Value, &Value) -> Value,
    ) -> Result<Held, StoreError> {
        let _turn = self.write_gate(super::Writer::Held).await;
        // Each pass either lands or saw the row change under it; a handful
        // of passes is far more than two writers on one record ever need.
        for _ in 0..8 {
            let open = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM pending_writes WHERE connection = $1 AND target = $2 \
                 AND record_id = $3 AND op = $4 AND state = 'waiting'"
            )))
            .bind(&write.connection)
            .bind(&write.target)
            .bind(&write.record_id)
            .bind(&write.op)
            .fetch_optional(&self.pool)
            .await?;
            let now = now_ms();
            match open {
                Some(row) => {
                    let row = read_row(&row)?;
                    let params = merge(&row.params, &write.params);
                    let mut mappings = row.mappings.clone();
                    if !mappings.contains(&write.mapping) {
                        mappings.push(write.mapping.clone());
                    }
                    let mut event_rows = row.event_rows.clone();
                    if !event_rows.contains(&write.event_row) {
                        event_rows.push(write.event_row);
                    }
                    let occurred_at = match (row.occurred_at, write.occurred_at) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    // Compare-and-set on the row's write count: a concurrent
                    // merge or a claim makes this update miss, and we read again.
                    let updated = sqlx::query(
                        "UPDATE pending_writes SET params = $1, mappings = $2, event_rows = $3, \
                         writes = writes + 1, occurred_at = $4, updated_at = $5 \
                         WHERE id = $6 AND state = 'waiting' AND writes = $7",
                    )
                    .bind(params.to_string())
                    .bind(serde_json::json!(mappings).to_string())
                    .bind(serde_json::json!(event_rows).to_string())
                    .bind(occurred_at)
                    .bind(now)
                    .bind(row.id)
                    .bind(row.writes)
                    .execute(&self.pool)
                    .await?;
                    if updated.rows_affected() == 1 {
                        return Ok(Held {
                            id: row.id,
                            writes: row.writes + 1,
                            due_at: row.due_at,
                        });
                    }
                }
                None => {
                    let inserted = sqlx::query(
                        "INSERT INTO pending_writes (connection, target, record_id, op, params, mappings, \
                         event_rows, writes, occurred_at, first_at, due_at, state, attempts, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, 'waiting', 0, $9) RETURNING id",
                    )
                    .bind(&write.connection)
                    .bind(&write.target)
                    .bind(&write.record_id)
                    .bind(&write.op)
                    .bind(write.params.to_string())
                    .bind(serde_json::json!([write.mapping]).to_string())
                    .bind(serde_json::json!([write.event_row]).to_string())
                    .bind(write.occurred_at)
                    .bind(now)
                    .bind(now + window_ms)
                    .fetch_one(&self.pool)
                    .await;
                    match inserted {
                        Ok(row) => {
                            return Ok(Held {
                                id: row.try_get(0)?,
                                writes: 1,
                                due_at: now + window_ms,
                            });
                        }
                        // Another writer opened the row first: merge into it.
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(StoreError::Busy(
            "a held write kept changing under this one".into(),
        ))
    }

    /// Claims up to `limit` held writes that are due (and rows whose
    /// flusher's lease ran out), oldest first, leased for
    /// [`FLUSH_LEASE_MS`] to this store.
    pub async fn claim_due_writes(&self, limit: i64) -> Result<Vec<PendingWrite>, StoreError> {
        let _turn = self.write_gate(super::Writer::Held).await;
        let now = now_ms();
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE pending_writes SET state = 'flushing', due_at = $1, updated_at = $2, claimed_by = $4 \
             WHERE id IN (SELECT id FROM pending_writes WHERE state IN ('waiting', 'flushing') \
             AND due_at <= $2 ORDER BY due_at, id LIMIT $3{lock}) RETURNING {COLUMNS}"
        )))
        .bind(now + FLUSH_LEASE_MS)
        .bind(now)
        .bind(limit)
        .bind(self.claim_owner())
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(read_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.sort_by_key(|w| (w.first_at, w.id));
        Ok(out)
    }

    /// Extends the leases of the held writes `ids` this store is flushing
    /// to `until`; answers the ids extended (the others were taken over).
    pub async fn renew_write_leases(
        &self,
        ids: &[i64],
        until: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE pending_writes SET due_at = $1 WHERE state = 'flushing' \
             AND claimed_by = $3 AND id IN ({}) RETURNING id",
            super::ids_in(self.dialect == Dialect::Postgres, "$2")
        );
        let _turn = self.write_gate(super::Writer::Held).await;
        super::returned_ids(
            &sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(until)
                .bind(super::id_list(ids))
                .bind(self.claim_owner())
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// A held write went out: forget it, unless another flusher took it
    /// over since `write` was claimed (then it is that one's to finish).
    pub async fn finish_write(&self, write: &PendingWrite) -> Result<(), StoreError> {
        let _turn = self.write_gate(super::Writer::Held).await;
        let done = sqlx::query(
            "DELETE FROM pending_writes WHERE id = $1 AND COALESCE(claimed_by, '') = COALESCE($2, '')",
        )
        .bind(write.id)
        .bind(&write.claimed_by)
        .execute(&self.pool)
        .await?;
        claim_kept(write, done.rows_affected())
    }

    /// A held write failed but may succeed later: it waits again until
    /// `retry_at`, taking the writes held meanwhile (they are later, so they
    /// merge on top of it). `spent` says whether the attempt counts.
    pub async fn retry_write(
        &self,
        write: &PendingWrite,
        retry_at: i64,
        error: &str,
        spent: bool,
        merge: impl Fn(&Value, &Value) -> Value,
    ) -> Result<(), StoreError> {
        let attempts = write.attempts + i64::from(spent);
        let _turn = self.write_gate(super::Writer::Held).await;
        let mut tx = self.pool.begin().await?;
        let newer = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM pending_writes WHERE connection = $1 AND target = $2 \
             AND record_id = $3 AND op = $4 AND state = 'waiting'"
        )))
        .bind(&write.connection)
        .bind(&write.target)
        .bind(&write.record_id)
        .bind(&write.op)
        .fetch_optional(&mut *tx)
        .await?;
        let mut row = write.clone();
        if let Some(newer) = newer {
            let newer = read_row(&newer)?;
            row.params = merge(&write.params, &newer.params);
            for m in newer.mappings {
                if !row.mappings.contains(&m) {
                    row.mappings.push(m);
                }
            }
            row.event_rows.extend(newer.event_rows);
            row.writes += newer.writes;
            row.occurred_at = row.occurred_at.max(newer.occurred_at);
            sqlx::query("DELETE FROM pending_writes WHERE id = $1")
                .bind(newer.id)
                .execute(&mut *tx)
                .await?;
        }
        let updated = sqlx::query(
            "UPDATE pending_writes SET state = 'waiting', due_at = $1, attempts = $2, last_error = $3, \
             params = $4, mappings = $5, event_rows = $6, writes = $7, occurred_at = $8, updated_at = $9 \
             WHERE id = $10 AND COALESCE(claimed_by, '') = COALESCE($11, '')",
        )
        .bind(retry_at)
        .bind(attempts)
        .bind(error)
        .bind(row.params.to_string())
        .bind(serde_json::json!(row.mappings).to_string())
        .bind(serde_json::json!(row.event_rows).to_string())
        .bind(row.writes)
        .bind(row.occurred_at)
        .bind(now_ms())
        .bind(write.id)
        .bind(&write.claimed_by)
        .execute(&mut *tx)
        .await?;
        // Taken over: the merge above is undone with the rest.
        claim_kept(write, updated.rows_affected())?;
        tx.commit().await?;
        Ok(())
    }

    /// A held write cannot go out (a 4xx, or out of attempts): kept as
    /// `failed` with its error for the operator (`mapper status`), unless
    /// another flusher took it over since `write` was claimed.
    pub async fn fail_write(
        &self,
        write: &PendingWrite,
        attempts: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE pending_writes SET state = 'failed', attempts = $1, last_error = $2, updated_at = $3 \
             WHERE id = $4 AND COALESCE(claimed_by, '') = COALESCE($5, '')",
        )
        .bind(attempts)
        .bind(error)
        .bind(now_ms())
        .bind(write.id)
        .bind(&write.claimed_by)
        .execute(&self.pool)
        .await?;
        claim_kept(write, done.rows_affected())
    }

    /// Every held write, waiting, being sent or failed, oldest first.
    pub async fn pending_writes(&self) -> Result<Vec<PendingWrite>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM pending_writes ORDER BY first_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(read_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Held writes by connection, target, operation and state: (connection,
    /// target, op, state, rows, writes merged).
    #[allow(clippy::type_complexity)]
    pub async fn held_counts(
        &self,
    ) -> Result<Vec<(String, String, String, String, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT connection, target, op, state, COUNT(*), CAST(SUM(writes) AS BIGINT) FROM pending_writes \
             GROUP BY connection, target, op, state ORDER BY connection, target, op, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Puts failed held writes back to be sent now, with fresh attempts;
    /// returns (re-queued, left failed because newer writes of the same
    /// record and operation are already waiting — they go out on their own).
    pub async fn replay_failed_writes(&self) -> Result<(u64, u64), StoreError> {
        self.replay_failed_writes_of(None).await
    }

    /// [`Store::replay_failed_writes`], only `connection`'s when given.
    pub async fn replay_failed_writes_of(
        &self,
        connection: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        let now = now_ms();
        // `$2` NULL: every connection's.
        let done = sqlx::query(
            "UPDATE pending_writes SET state = 'waiting', due_at = $1, attempts = 0, updated_at = $1 \
             WHERE state = 'failed' AND ($2 IS NULL OR connection = $2) \
             AND NOT EXISTS (SELECT 1 FROM pending_writes open \
             WHERE open.state = 'waiting' AND open.connection = pending_writes.connection \
             AND open.target = pending_writes.target AND open.record_id = pending_writes.record_id \
             AND open.op = pending_writes.op)",
        )
        .bind(now)
        .bind(connection)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let left: i64 = sqlx::query(
            "SELECT COUNT(*) FROM pending_writes WHERE state = 'failed' AND ($1 IS NULL OR connection = $1)",
        )
        .bind(connection)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok((done, left.max(0) as u64))
    }
}

/// A held write's outcome was recorded (`rows` changed), or the write was
/// taken over by another flusher, whose it is now.
fn claim_kept(write: &PendingWrite, rows: u64) -> Result<(), StoreError> {
    if rows == 0 {
        Err(StoreError::WriteLeaseLost(write.id))
    } else {
        Ok(())
    }
}
