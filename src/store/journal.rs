//! One write transaction: what delivery records about an event (its sync
//! log, links, target records, mirrors, outcome) lands together or not at
//! all. The rules deciding the values live in `targets::sync`; this module
//! only reads and writes rows.

use super::{EventState, MirrorRecord, Store, StoreError, SyncLogEntry, now_ms};
use sqlx::{Any, Row, Transaction};
use std::sync::atomic::Ordering;

/// An open write transaction.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    postgres: bool,
    store: Store,
    /// Released after the commit (or the rollback, on drop).
    _turn: super::WriteTurn,
}

impl Store {
    /// Begins a write transaction. On SQLite it takes the writer lock at
    /// once (`BEGIN IMMEDIATE`): a transaction that reads then writes would
    /// otherwise fail with "busy" when another writer committed meanwhile.
    pub async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let turn = self.write_gate().await;
        let tx = if self.is_postgres() {
            self.pool.begin().await?
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        };
        Ok(WriteTx {
            tx,
            postgres: self.is_postgres(),
            store: self.clone(),
            _turn: turn,
        })
    }

    /// Write transactions committed by this process (what the delivery
    /// bench divides by the events delivered).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl WriteTx {
    /// Commits everything written through this transaction.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        self.store.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One source customer's mirror, locked for this transaction on
    /// PostgreSQL (SQLite's writer lock already covers it).
    pub async fn mirror(
        &mut self,
        connection: &str,
        source: &str,
        customer_id: &str,
    ) -> Result<Option<MirrorRecord>, StoreError> {
        let sql = if self.postgres {
            "SELECT fields, field_times, last_activity, updated_at, written_at, changed_times FROM mirror \
             WHERE connection = $1 AND source = $2 AND customer_id = $3 FOR UPDATE"
        } else {
            "SELECT fields, field_times, last_activity, updated_at, written_at, changed_times FROM mirror \
             WHERE connection = $1 AND source = $2 AND customer_id = $3"
        };
        let row = sqlx::query(sql)
            .bind(connection)
            .bind(source)
            .bind(customer_id)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| super::mirror_of_row(&r)).transpose()
    }

    /// Writes a mirror row as `record` holds it; `event_row`, when given,
    /// is the event that last brought values.
    pub async fn put_mirror(
        &mut self,
        connection: &str,
        source: &str,
        customer_id: &str,
        record: &MirrorRecord,
        event_row: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mirror (connection, source, customer_id, fields, field_times, last_activity, last_event_row, updated_at, written_at, changed_times) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (connection, source, customer_id) DO UPDATE SET fields = $4, field_times = $5, \
             last_activity = $6, last_event_row = COALESCE($7, mirror.last_event_row), updated_at = $8, \
             written_at = $9, changed_times = $10",
        )
        .bind(connection)
        .bind(source)
        .bind(customer_id)
        .bind(serde_json::Value::Object(record.fields.clone()).to_string())
        .bind(serde_json::Value::Object(record.field_times.clone()).to_string())
        .bind(record.last_activity)
        .bind(event_row)
        .bind(record.updated_at)
        .bind(record.written_at)
        .bind(serde_json::Value::Object(record.changed_times.clone()).to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Stores (or moves) a link between a source customer and a target
    /// record; with `keep`, an existing link stays as it is.
    pub async fn put_link(
        &mut self,
        connection: &str,
        (source, source_id): (&str, &str),
        (target, target_id): (&str, &str),
        keep: bool,
    ) -> Result<(), StoreError> {
        let sql = if keep {
            "INSERT INTO customers (connection, source, source_id, target, target_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (connection, source, source_id, target) DO NOTHING"
        } else {
            "INSERT INTO customers (connection, source, source_id, target, target_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (connection, source, source_id, target) DO UPDATE SET target_id = $5, updated_at = $6"
        };
        sqlx::query(sql)
            .bind(connection)
            .bind(source)
            .bind(source_id)
            .bind(target)
            .bind(target_id)
            .bind(now_ms())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Merges `fields` into what is known of a record on a target.
    pub async fn remember(
        &mut self,
        connection: &str,
        target: &str,
        target_id: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        let row = sqlx::query(
            "SELECT fields FROM target_records WHERE connection = $1 AND target = $2 AND target_id = $3",
        )
        .bind(connection)
        .bind(target)
        .bind(target_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        let mut known = match row {
            Some(r) => match serde_json::from_str(&r.try_get::<String, _>(0)?) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            },
            None => serde_json::Map::new(),
        };
        for (k, v) in fields {
            known.insert(k.clone(), v.clone());
        }
        sqlx::query(
            "INSERT INTO target_records (connection, target, target_id, fields, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (connection, target, target_id) DO UPDATE SET fields = $4, updated_at = $5",
        )
        .bind(connection)
        .bind(target)
        .bind(target_id)
        .bind(serde_json::Value::Object(known).to_string())
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Writes one attempt to the sync log.
    pub async fn log(&mut self, entry: &SyncLogEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sync_log (connection, event_row, mapping, action, target, customer, request, status, error, attempt, at, took_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&entry.connection)
        .bind(entry.event_row)
        .bind(&entry.mapping)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.customer.as_deref())
        .bind(&entry.request)
        .bind(entry.status)
        .bind(entry.error.as_deref())
        .bind(entry.attempt)
        .bind(now_ms())
        .bind(entry.took_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records how processing an event ended.
    pub async fn finish(
        &mut self,
        id: i64,
        state: EventState,
        next_attempt_at: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE events SET state = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(next_attempt_at)
        .bind(error)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Puts an event back to wait without counting the attempt (a target's
    /// daily budget is spent: nothing was tried).
    pub async fn defer(
        &mut self,
        id: i64,
        next_attempt_at: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE events SET state = 'retrying', attempts = attempts - 1, next_attempt_at = $1, last_error = $2 WHERE id = $3",
        )
        .bind(next_attempt_at)
        .bind(reason)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Writes a worker batch summary (seed 000's `SyncRunSummary`).
    pub async fn record_run(&mut self, run: &super::RunSummary) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO run_summaries (connection, started_at, finished_at, processed, delivered, failed, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&run.connection)
        .bind(run.started_at)
        .bind(now_ms())
        .bind(run.processed)
        .bind(run.delivered)
        .bind(run.failed)
        .bind(if run.failed == 0 { "succeeded" } else { "partial" })
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
