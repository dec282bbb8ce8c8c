//! What `mapper resync` reads and writes: its runs, the snapshots of a run
//! (the `resync` events whose de-duplication key is `<run>/<customer id>`),
//! and the bulk reads a run's snapshots are built from.

use super::{Store, StoreError, now_ms};
use serde_json::{Map, Value};
use sqlx::Row;
use std::collections::{HashMap, HashSet};

/// The built-in source of resync snapshots.
pub const RESYNC_SOURCE: &str = "resync";

/// One run of `mapper resync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncRun {
    /// Unique per connection; the prefix of its snapshots' keys.
    pub name: String,
    /// The target the run writes to.
    pub target: String,
    /// The source whose customers (and mirror names) the run reads.
    pub source: String,
    /// `mirror`, or `import:<file>`.
    pub origin: String,
    /// When it was started (epoch ms).
    pub started_at: i64,
    /// When every snapshot of the run reached a final state; `None` while it
    /// is under way or was interrupted.
    pub finished_at: Option<i64>,
}

/// Where one snapshot of a run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOutcome {
    /// Its delivery id.
    pub id: i64,
    /// The customer's id on the run's source.
    pub customer_id: String,
    /// The event state (`received`, `retrying`, `processing`, `delivered`, `dead`, …).
    pub state: String,
    /// Its sync log has a customer created on the target.
    pub created: bool,
    /// Its sync log has a call the target answered with success.
    pub called: bool,
    /// Why its last attempt failed, if it did.
    pub last_error: Option<String>,
}

/// The de-duplication key of a customer's snapshot in a run.
pub fn snapshot_key(run: &str, customer_id: &str) -> String {
    format!("{run}/{customer_id}")
}

/// `(prefix, its length in characters)`: the keys of a run's snapshots start with it.
fn run_prefix(run: &str) -> (String, i32) {
    let prefix = format!("{run}/");
    // PostgreSQL's substr takes an integer, not a bigint.
    let len = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
    (prefix, len)
}

fn object(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn run_of(r: &sqlx::any::AnyRow) -> Result<ResyncRun, sqlx::Error> {
    Ok(ResyncRun {
        name: r.try_get(0)?,
        target: r.try_get(1)?,
        source: r.try_get(2)?,
        origin: r.try_get(3)?,
        started_at: r.try_get(4)?,
        finished_at: r.try_get(5)?,
    })
}

impl Store {
    /// The run of that name, if one was started.
    pub async fn resync_run(
        &self,
        connection: &str,
        name: &str,
    ) -> Result<Option<ResyncRun>, StoreError> {
        let row = sqlx::query(
            "SELECT name, target, source, origin, started_at, finished_at FROM resync_runs \
             WHERE connection = $1 AND name = $2",
        )
        .bind(connection)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(run_of(&r)?),
            None => None,
        })
    }

    /// The latest run of the same target, source and origin that did not
    /// come to an end (it was interrupted): the one to continue.
    pub async fn unfinished_resync_run(
        &self,
        connection: &str,
        target: &str,
        source: &str,
        origin: &str,
    ) -> Result<Option<ResyncRun>, StoreError> {
        let row = sqlx::query(
            "SELECT name, target, source, origin, started_at, finished_at FROM resync_runs \
             WHERE connection = $1 AND target = $2 AND source = $3 AND origin = $4 AND finished_at IS NULL \
             ORDER BY started_at DESC, name DESC LIMIT 1",
        )
        .bind(connection)
        .bind(target)
        .bind(source)
        .bind(origin)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(run_of(&r)?),
            None => None,
        })
    }

    /// Records a run as under way: a new one, or one continued (then it is
    /// not finished any more, and keeps its target, source and start).
    pub async fn begin_resync_run(
        &self,
        connection: &str,
        run: &ResyncRun,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO resync_runs (connection, name, target, source, origin, started_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL) \
             ON CONFLICT (connection, name) DO UPDATE SET finished_at = NULL",
        )
        .bind(connection)
        .bind(&run.name)
        .bind(&run.target)
        .bind(&run.source)
        .bind(&run.origin)
        .bind(run.started_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a run as come to an end: every snapshot is in a final state.
    pub async fn finish_resync_run(&self, connection: &str, name: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE resync_runs SET finished_at = $1 WHERE connection = $2 AND name = $3")
            .bind(now_ms())
            .bind(connection)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The customers whose snapshot a run has stored already.
    pub async fn resync_customers(
        &self,
        connection: &str,
        run: &str,
    ) -> Result<HashSet<String>, StoreError> {
        let (prefix, len) = run_prefix(run);
        let rows = sqlx::query(
            "SELECT dedup_key FROM events WHERE connection = $1 AND source = $2 \
             AND substr(dedup_key, 1, $3) = $4",
        )
        .bind(connection)
        .bind(RESYNC_SOURCE)
        .bind(len)
        .bind(&prefix)
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashSet::with_capacity(rows.len());
        for r in &rows {
            let key: String = r.try_get(0)?;
            if let Some(id) = key.strip_prefix(&prefix) {
                out.insert(id.to_string());
            }
        }
        Ok(out)
    }

    /// Every snapshot of a run with its state and what its sync log says, in
    /// the order they were stored.
    pub async fn resync_outcomes(
        &self,
        connection: &str,
        run: &str,
    ) -> Result<Vec<SnapshotOutcome>, StoreError> {
        let (prefix, len) = run_prefix(run);
        let rows = sqlx::query(
            "SELECT e.id, e.dedup_key, e.state, e.last_error, \
             CAST(CASE WHEN EXISTS (SELECT 1 FROM sync_log s WHERE s.event_row = e.id \
               AND s.action = 'create_customer' AND s.status >= 200 AND s.status < 300) THEN 1 ELSE 0 END AS BIGINT), \
             CAST(CASE WHEN EXISTS (SELECT 1 FROM sync_log s WHERE s.event_row = e.id \
               AND s.status >= 200 AND s.status < 300) THEN 1 ELSE 0 END AS BIGINT) \
             FROM events e WHERE e.connection = $1 AND e.source = $2 \
             AND substr(e.dedup_key, 1, $3) = $4 ORDER BY e.id",
        )
        .bind(connection)
        .bind(RESYNC_SOURCE)
        .bind(len)
        .bind(&prefix)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let key: String = r.try_get(1)?;
                Ok(SnapshotOutcome {
                    id: r.try_get(0)?,
                    customer_id: key.strip_prefix(&prefix).unwrap_or(&key).to_string(),
                    state: r.try_get(2)?,
                    last_error: r.try_get(3)?,
                    created: r.try_get::<i64, _>(4)? != 0,
                    called: r.try_get::<i64, _>(5)? != 0,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Puts a run's dead snapshots back in the queue with fresh attempts
    /// (continuing a run retries what failed), and on SQLite the ones a
    /// killed run left being delivered (one process per file: nobody else
    /// holds them, and their lease would keep them until it ends); says how many.
    pub async fn requeue_dead_snapshots(
        &self,
        connection: &str,
        run: &str,
    ) -> Result<u64, StoreError> {
        let (prefix, len) = run_prefix(run);
        let r = sqlx::query(
            "UPDATE events SET state = 'received', attempts = 0, next_attempt_at = $1, last_error = NULL \
             WHERE connection = $2 AND source = $3 AND substr(dedup_key, 1, $4) = $5 \
             AND (state = 'dead' OR (state = 'processing' AND $6 = 1))",
        )
        .bind(now_ms())
        .bind(connection)
        .bind(RESYNC_SOURCE)
        .bind(len)
        .bind(&prefix)
        .bind(i64::from(!self.is_postgres()))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Drops the link of a source customer to a target record (the record
    /// is gone, e.g. the target was emptied): the next delivery matches the
    /// customer again by its keys.
    pub async fn forget_link(
        &self,
        connection: &str,
        source: &str,
        source_id: &str,
        target: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM customers WHERE connection = $1 AND source = $2 AND source_id = $3 AND target = $4",
        )
        .bind(connection)
        .bind(source)
        .bind(source_id)
        .bind(target)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every stored link of a source's customers: customer id → (target, target id).
    pub async fn links_from(
        &self,
        connection: &str,
        source: &str,
    ) -> Result<HashMap<String, Vec<(String, String)>>, StoreError> {
        let rows = sqlx::query(
            "SELECT source_id, target, target_id FROM customers WHERE connection = $1 AND source = $2 \
             AND target_id IS NOT NULL ORDER BY source_id, target",
        )
        .bind(connection)
        .bind(source)
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for r in &rows {
            out.entry(r.try_get(0)?)
                .or_default()
                .push((r.try_get(1)?, r.try_get(2)?));
        }
        Ok(out)
    }

    /// What is known of every record on a target: target id → fields.
    pub async fn records_of(
        &self,
        connection: &str,
        target: &str,
    ) -> Result<HashMap<String, Map<String, Value>>, StoreError> {
        let rows = sqlx::query(
            "SELECT target_id, fields FROM target_records WHERE connection = $1 AND target = $2",
        )
        .bind(connection)
        .bind(target)
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in &rows {
            let text: String = r.try_get(1)?;
            out.insert(r.try_get(0)?, object(&text));
        }
        Ok(out)
    }
}
