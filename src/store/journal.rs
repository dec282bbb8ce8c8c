//! One write transaction: what delivery records about an event (its sync
//! log, links, target records, mirrors, outcome) lands together or not at
//! all. The rules deciding the values live in `targets::sync`; this module
//! only reads and writes rows.

use super::{EventState, MirrorRecord, Store, StoreError, SyncLogEntry, now_ms};
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// A row's key, borrowed: (connection, source or target, customer or record id).
pub type RowKeyRef<'a> = (&'a str, &'a str, &'a str);

/// An open write transaction.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    postgres: bool,
    store: Store,
    /// Released after the commit (or the rollback, on drop).
    _turn: super::WriteTurn,
}

impl WriteTx {
    /// The transaction's connection, for statements of other modules.
    pub(super) fn connection(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

impl Store {
    /// Begins a write transaction. On SQLite it takes the writer lock at
    /// once (`BEGIN IMMEDIATE`): a transaction that reads then writes would
    /// otherwise fail with "busy" when another writer committed meanwhile.
    pub async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let turn = self.write_gate(super::Writer::Journal).await;
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
        self.put_mirrors(&[((connection, source, customer_id), record, event_row)])
            .await
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
        self.log_all(&[entry]).await
    }

    /// Records how processing an event ended.
    pub async fn finish(
        &mut self,
        id: i64,
        state: EventState,
        next_attempt_at: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.finish_all(&[(id, state, next_attempt_at, error)])
            .await
    }

    /// Which of the events `ids` are still `processing` under this store's
    /// claim, locked until the commit on PostgreSQL (SQLite's writer lock
    /// covers them): an event missing from the answer was taken over by
    /// another process after its lease lapsed (or was re-queued by hand),
    /// and its journal is not this process's to write.
    pub async fn still_claimed(
        &mut self,
        ids: &[i64],
    ) -> Result<std::collections::HashSet<i64>, StoreError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let sql = format!(
            "SELECT id FROM events WHERE state = 'processing' AND claimed_by = $2 \
             AND id IN ({}) ORDER BY id{}",
            super::ids_in(self.postgres, "$1"),
            if self.postgres { " FOR UPDATE" } else { "" }
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(super::id_list(ids))
            .bind(self.store.claim_owner())
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(super::returned_ids(&rows)?.into_iter().collect())
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

    /// The mirrors of several source customers, `(connection, source,
    /// customer_id)` each, read in one statement (locked on PostgreSQL, in
    /// key order). Keys without a row are absent from the answer.
    pub async fn mirrors(
        &mut self,
        keys: &[RowKeyRef<'_>],
    ) -> Result<HashMap<(String, String, String), MirrorRecord>, StoreError> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT fields, field_times, last_activity, updated_at, written_at, changed_times, \
                 connection, source, customer_id FROM mirror WHERE {} \
                 ORDER BY connection, source, customer_id{}",
                key_terms(
                    chunk.len(),
                    ["connection", "source", "customer_id"],
                    self.postgres
                ),
                if self.postgres { " FOR UPDATE" } else { "" }
            );
            let query = chunk.iter().fold(
                sqlx::query(sqlx::AssertSqlSafe(sql)),
                |q, (connection, source, customer)| {
                    q.bind(*connection).bind(*source).bind(*customer)
                },
            );
            for row in query.fetch_all(&mut *self.tx).await? {
                let key = (row.try_get(6)?, row.try_get(7)?, row.try_get(8)?);
                found.insert(key, super::mirror_of_row(&row)?);
            }
        }
        Ok(found)
    }

    /// Writes mirror rows as each record holds it, in one statement per
    /// chunk; a row's event, when given, is the one that last brought values.
    pub async fn put_mirrors(
        &mut self,
        rows: &[(RowKeyRef<'_>, &MirrorRecord, Option<i64>)],
    ) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO mirror (connection, source, customer_id, fields, field_times, last_activity, \
                 last_event_row, updated_at, written_at, changed_times) VALUES {} \
                 ON CONFLICT (connection, source, customer_id) DO UPDATE SET fields = excluded.fields, \
                 field_times = excluded.field_times, last_activity = excluded.last_activity, \
                 last_event_row = COALESCE(excluded.last_event_row, mirror.last_event_row), \
                 updated_at = excluded.updated_at, written_at = excluded.written_at, \
                 changed_times = excluded.changed_times",
                value_rows(chunk.len(), 10, self.postgres)
            );
            let query = chunk.iter().fold(
                sqlx::query(sqlx::AssertSqlSafe(sql)),
                |q, ((connection, source, customer), record, event_row)| {
                    q.bind(*connection)
                        .bind(*source)
                        .bind(*customer)
                        .bind(serde_json::Value::Object(record.fields.clone()).to_string())
                        .bind(serde_json::Value::Object(record.field_times.clone()).to_string())
                        .bind(record.last_activity)
                        .bind(*event_row)
                        .bind(record.updated_at)
                        .bind(record.written_at)
                        .bind(serde_json::Value::Object(record.changed_times.clone()).to_string())
                },
            );
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// What is known of several target records, `(connection, target,
    /// target_id)` each, read in one statement; records never seen are absent.
    pub async fn target_records(
        &mut self,
        keys: &[RowKeyRef<'_>],
    ) -> Result<
        HashMap<(String, String, String), serde_json::Map<String, serde_json::Value>>,
        StoreError,
    > {
        let mut found = HashMap::new();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT fields, connection, target, target_id FROM target_records WHERE {} \
                 ORDER BY connection, target, target_id{}",
                key_terms(
                    chunk.len(),
                    ["connection", "target", "target_id"],
                    self.postgres
                ),
                if self.postgres { " FOR UPDATE" } else { "" }
            );
            let query = chunk.iter().fold(
                sqlx::query(sqlx::AssertSqlSafe(sql)),
                |q, (connection, target, id)| q.bind(*connection).bind(*target).bind(*id),
            );
            for row in query.fetch_all(&mut *self.tx).await? {
                let fields = match serde_json::from_str(&row.try_get::<String, _>(0)?) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => serde_json::Map::new(),
                };
                found.insert((row.try_get(1)?, row.try_get(2)?, row.try_get(3)?), fields);
            }
        }
        Ok(found)
    }

    /// Writes what is known of target records (all their fields), in one
    /// statement per chunk.
    pub async fn put_target_records(
        &mut self,
        rows: &[(RowKeyRef<'_>, &serde_json::Map<String, serde_json::Value>)],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO target_records (connection, target, target_id, fields, updated_at) VALUES {} \
                 ON CONFLICT (connection, target, target_id) DO UPDATE SET fields = excluded.fields, \
                 updated_at = excluded.updated_at",
                value_rows(chunk.len(), 5, self.postgres)
            );
            let query = chunk.iter().fold(
                sqlx::query(sqlx::AssertSqlSafe(sql)),
                |q, ((connection, target, id), fields)| {
                    q.bind(*connection)
                        .bind(*target)
                        .bind(*id)
                        .bind(serde_json::Value::Object((*fields).clone()).to_string())
                        .bind(now)
                },
            );
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Writes attempts to the sync log, in one statement per chunk.
    pub async fn log_all(&mut self, entries: &[&SyncLogEntry]) -> Result<(), StoreError> {
        let now = now_ms();
        for chunk in entries.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO sync_log (connection, event_row, mapping, action, target, customer, request, \
                 status, error, attempt, at, took_ms) VALUES {}",
                value_rows(chunk.len(), 12, self.postgres)
            );
            let query = chunk
                .iter()
                .fold(sqlx::query(sqlx::AssertSqlSafe(sql)), |q, entry| {
                    q.bind(&entry.connection)
                        .bind(entry.event_row)
                        .bind(&entry.mapping)
                        .bind(&entry.action)
                        .bind(&entry.target)
                        .bind(entry.customer.as_deref())
                        .bind(&entry.request)
                        .bind(entry.status)
                        .bind(entry.error.as_deref())
                        .bind(entry.attempt)
                        .bind(now)
                        .bind(entry.took_ms)
                });
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Records how processing several events ended, in one statement per
    /// chunk: `(id, state, next_attempt_at, error)` each.
    pub async fn finish_all(
        &mut self,
        ends: &[(i64, EventState, i64, Option<&str>)],
    ) -> Result<(), StoreError> {
        for chunk in ends.chunks(ROWS_PER_STATEMENT) {
            // VALUES columns are column1… on both databases.
            let sql = format!(
                "UPDATE events SET state = v.column2, next_attempt_at = v.column3, last_error = v.column4 \
                 FROM (VALUES {}) AS v WHERE events.id = v.column1",
                value_rows(chunk.len(), 4, self.postgres)
            );
            let query = chunk.iter().fold(
                sqlx::query(sqlx::AssertSqlSafe(sql)),
                |q, (id, state, next_attempt_at, error)| {
                    q.bind(*id)
                        .bind(state.as_str())
                        .bind(*next_attempt_at)
                        .bind(*error)
                },
            );
            query.execute(&mut *self.tx).await?;
        }
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

/// Rows per multi-row statement: far below SQLite's 32,766 and
/// PostgreSQL's 65,535 parameters at 12 a row.
const ROWS_PER_STATEMENT: usize = 256;

/// The placeholder of parameter `n` (from 1) of a generated statement that
/// uses each parameter once, in order. SQLite gets anonymous `?`: for a
/// numbered one (`$n`, `?n`) SQLite finds its name by a linear scan of the
/// statement's names each time one is bound, and sqlx asks for every
/// parameter's name, so a statement of a few hundred parameters spent more
/// binding than running (5% of the ingest's CPU, 3.5% of delivery's).
pub(super) fn placeholder(postgres: bool, n: usize) -> String {
    if postgres {
        format!("${n}")
    } else {
        "?".to_string()
    }
}

/// `($1, $2, …), ($k+1, …)`: `rows` rows of `width` parameters.
fn value_rows(rows: usize, width: usize, postgres: bool) -> String {
    let mut sql = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&placeholder(postgres, row * width + column + 1));
        }
        sql.push(')');
    }
    sql
}

/// `(a = $1 AND b = $2 AND c = $3) OR (…)`: one term per key of three columns.
fn key_terms(keys: usize, [a, b, c]: [&str; 3], postgres: bool) -> String {
    (0..keys)
        .map(|k| {
            let n = k * 3;
            format!(
                "({a} = {} AND {b} = {} AND {c} = {})",
                placeholder(postgres, n + 1),
                placeholder(postgres, n + 2),
                placeholder(postgres, n + 3)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_across_rows() {
        assert_eq!(value_rows(2, 3, true), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(
            key_terms(2, ["a", "b", "c"], true),
            "(a = $1 AND b = $2 AND c = $3) OR (a = $4 AND b = $5 AND c = $6)"
        );
        assert_eq!(value_rows(2, 2, false), "(?, ?), (?, ?)");
        assert_eq!(
            key_terms(1, ["a", "b", "c"], false),
            "(a = ? AND b = ? AND c = ?)"
        );
    }
}
