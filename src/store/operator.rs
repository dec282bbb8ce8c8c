//! What the operator commands read and do (`mapper status`, `log`,
//! `replay`, `inspect`): counts by state, last errors, the sync log, a
//! customer's local views, and re-queuing events. Delivery never calls
//! these; the console's own pages read through `console.rs`.

use super::{
    ConnectionCount, Count, CustomerView, LastError, ReplayFilter, Store, StoreError, SyncLogEntry,
    now_ms,
};
use sqlx::Row;

impl Store {
    /// Counts events by source, type and state.
    pub async fn counts(&self) -> Result<Vec<Count>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, event_type, state, COUNT(*) FROM events \
             GROUP BY source, event_type, state ORDER BY source, event_type, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Count {
                    source: r.try_get(0)?,
                    event_type: r.try_get(1)?,
                    state: r.try_get(2)?,
                    count: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Counts events by connection, source, type and state; only the
    /// connection `connection` when given.
    pub async fn counts_for(
        &self,
        connection: Option<&str>,
    ) -> Result<Vec<ConnectionCount>, StoreError> {
        // '' stands for "every connection": no connection has an empty name
        // (see `connections::valid_name`), and one statement serves both.
        let rows = sqlx::query(
            "SELECT connection, source, event_type, state, COUNT(*) FROM events \
             WHERE ($1 = '' OR connection = $1) \
             GROUP BY connection, source, event_type, state \
             ORDER BY connection, source, event_type, state",
        )
        .bind(connection.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ConnectionCount {
                    connection: r.try_get(0)?,
                    source: r.try_get(1)?,
                    event_type: r.try_get(2)?,
                    state: r.try_get(3)?,
                    count: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The connections that have stored events, by name: an operator may
    /// name one of them even after it was removed (its events stay).
    pub async fn event_connections(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT connection FROM events ORDER BY connection")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The stored body and state of an event.
    pub async fn event(&self, id: i64) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let row = sqlx::query("SELECT state, body FROM events WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    /// The latest errors of events that are dead or retrying, newest first.
    pub async fn last_errors(
        &self,
        limit: i64,
    ) -> Result<Vec<(i64, String, String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, source, event_type, state, last_error FROM events \
             WHERE last_error IS NOT NULL AND state IN ('dead', 'retrying') ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
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
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The latest errors of events that are dead or retrying, newest first,
    /// with their connection; only the connection `connection` when given.
    pub async fn last_errors_for(
        &self,
        connection: Option<&str>,
        limit: i64,
    ) -> Result<Vec<LastError>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, connection, source, event_type, state, last_error FROM events \
             WHERE last_error IS NOT NULL AND state IN ('dead', 'retrying') \
             AND ($1 = '' OR connection = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(connection.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LastError {
                    id: r.try_get(0)?,
                    connection: r.try_get(1)?,
                    source: r.try_get(2)?,
                    event_type: r.try_get(3)?,
                    state: r.try_get(4)?,
                    error: r.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Puts dead or unmapped events back in the queue; returns how many.
    pub async fn replay(&self, filter: &ReplayFilter) -> Result<u64, StoreError> {
        self.replay_for(filter, None).await
    }

    /// [`Store::replay`], only for the events of the connection
    /// `connection` when given. The connection is a parameter rather than a
    /// field of [`ReplayFilter`] so that the filter's other builders (the
    /// console's forms) stay as they are.
    pub async fn replay_for(
        &self,
        filter: &ReplayFilter,
        connection: Option<&str>,
    ) -> Result<u64, StoreError> {
        let states: Vec<&str> = if filter.states.is_empty() {
            vec!["dead", "unmapped"]
        } else {
            filter.states.iter().map(|s| s.as_str()).collect()
        };
        let mut total = 0;
        for state in states {
            let result = sqlx::query(
                "UPDATE events SET state = 'received', attempts = 0, next_attempt_at = $1, last_error = NULL \
                 WHERE state = $2 \
                 AND ($3 = 0 OR id = $4) \
                 AND ($5 = '' OR source = $5) \
                 AND ($6 = '' OR event_type = $6) \
                 AND received_at >= $7 \
                 AND ($8 = '' OR connection = $8)",
            )
            .bind(now_ms())
            .bind(state)
            .bind(i64::from(filter.id.is_some()))
            .bind(filter.id.unwrap_or(0))
            .bind(filter.source.as_deref().unwrap_or(""))
            .bind(filter.event_type.as_deref().unwrap_or(""))
            .bind(filter.since_ms.unwrap_or(0))
            .bind(connection.unwrap_or(""))
            .execute(&self.pool)
            .await?;
            total += result.rows_affected();
        }
        Ok(total)
    }

    /// The sync log of one event (`event_row`) or one customer (target id), oldest first.
    pub async fn sync_log(
        &self,
        event_row: Option<i64>,
        customer: Option<&str>,
    ) -> Result<Vec<SyncLogEntry>, StoreError> {
        self.sync_log_for(event_row, customer, None).await
    }

    /// [`Store::sync_log`], only the attempts made for the connection
    /// `connection` when given (a customer id may exist in two tenants).
    pub async fn sync_log_for(
        &self,
        event_row: Option<i64>,
        customer: Option<&str>,
        connection: Option<&str>,
    ) -> Result<Vec<SyncLogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT connection, event_row, mapping, action, target, customer, request, status, error, attempt, took_ms \
             FROM sync_log WHERE ($1 = 0 OR event_row = $2) AND ($3 = '' OR customer = $3) \
             AND ($4 = '' OR connection = $4) ORDER BY id LIMIT 1000",
        )
        .bind(i64::from(event_row.is_some()))
        .bind(event_row.unwrap_or(0))
        .bind(customer.unwrap_or(""))
        .bind(connection.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SyncLogEntry {
                    connection: r.try_get(0)?,
                    event_row: r.try_get(1)?,
                    mapping: r.try_get(2)?,
                    action: r.try_get(3)?,
                    target: r.try_get(4)?,
                    customer: r.try_get(5)?,
                    request: r.try_get(6)?,
                    status: r.try_get(7)?,
                    error: r.try_get(8)?,
                    attempt: r.try_get(9)?,
                    took_ms: r.try_get(10)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Everything known locally of a customer id, on whichever side it is:
    /// the mirrors kept under it and the links to or from it.
    pub async fn customer_views(&self, id: &str) -> Result<Vec<CustomerView>, StoreError> {
        let mut views: Vec<CustomerView> = Vec::new();
        let rows = sqlx::query(
            "SELECT connection, source, source_id, target, target_id FROM customers \
             WHERE source_id = $1 OR target_id = $1 ORDER BY connection, source, source_id, target",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let (connection, source, source_id): (String, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let link = (
                r.try_get::<String, _>(3)?,
                r.try_get::<Option<String>, _>(4)?,
            );
            let Some(target_id) = link.1 else { continue };
            match views.iter_mut().find(|v| {
                v.connection == connection && v.source == source && v.customer_id == source_id
            }) {
                Some(v) => v.links.push((link.0, target_id)),
                None => views.push(CustomerView {
                    connection,
                    source,
                    customer_id: source_id,
                    links: vec![(link.0, target_id)],
                    mirror: None,
                }),
            }
        }
        let mirrored = sqlx::query("SELECT connection, source FROM mirror WHERE customer_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        for r in &mirrored {
            let (connection, source): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            if !views
                .iter()
                .any(|v| v.connection == connection && v.source == source && v.customer_id == id)
            {
                views.push(CustomerView {
                    connection,
                    source,
                    customer_id: id.to_string(),
                    links: Vec::new(),
                    mirror: None,
                });
            }
        }
        for v in &mut views {
            v.mirror = self
                .mirror(&v.connection, &v.source, &v.customer_id)
                .await?;
        }
        Ok(views)
    }
}
