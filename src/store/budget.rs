//! Rate-limit windows kept in the database, so that every replica counts a
//! connection's calls in one window (see `targets::limiter`).

use super::{Dialect, Store, StoreError, Writer, now_ms};
use crate::targets::limiter::Window;
use sqlx::{Connection, Row};

impl Store {
    /// Reads `connection`'s window for `target`, lets `change` alter it
    /// (given now, in ms since the epoch) and writes it back, all under the
    /// row's lock: two replicas never reserve the same slot. Returns what
    /// `change` returned and the now it was given.
    pub async fn change_rate_window<T>(
        &self,
        connection: &str,
        target: &str,
        change: impl FnOnce(&mut Window, i64) -> T,
    ) -> Result<(T, i64), StoreError> {
        let _turn = self.write_gate(Writer::Other).await;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        if self.dialect == Dialect::Postgres {
            // A window lost with a crash of the database forgets a few
            // sends, which the window's margin and the target's 429 cover;
            // waiting for a flush on every call would cost more than the call.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        // The row's lock (PostgreSQL) or the writer's (SQLite) is taken by
        // reading the window. A plain `SELECT … FOR UPDATE` once the row
        // exists: the upsert that creates it also writes a row version
        // every time, two per call with the update below (the fairness
        // bench on 3 replicas).
        // (SQLite keeps the upsert first: a deferred transaction that has
        // read may not become a writer once another connection committed.)
        let existing = if self.dialect == Dialect::Postgres {
            sqlx::query(
                "SELECT sent, blocked_until, day, used_today, day_spent FROM rate_windows \
                 WHERE connection = $1 AND target = $2 FOR UPDATE",
            )
            .bind(connection)
            .bind(target)
            .fetch_optional(&mut *tx)
            .await?
        } else {
            None
        };
        let row = match existing {
            Some(row) => row,
            None => {
                sqlx::query(
                    "INSERT INTO rate_windows (connection, target) VALUES ($1, $2) \
                     ON CONFLICT (connection, target) DO UPDATE SET connection = excluded.connection \
                     RETURNING sent, blocked_until, day, used_today, day_spent",
                )
                .bind(connection)
                .bind(target)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let sent: String = row.try_get(0)?;
        let mut window = Window {
            sent: sent
                .split(',')
                .filter_map(|t| t.trim().parse::<i64>().ok())
                .collect(),
            blocked_until: row.try_get(1)?,
            day: row.try_get(2)?,
            used_today: u32::try_from(row.try_get::<i64, _>(3)?).unwrap_or(u32::MAX),
            day_spent: row.try_get::<i64, _>(4)? != 0,
        };
        let now = now_ms();
        let out = change(&mut window, now);
        let sent = window
            .sent
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        sqlx::query(
            "UPDATE rate_windows SET sent = $3, blocked_until = $4, day = $5, used_today = $6, day_spent = $7 \
             WHERE connection = $1 AND target = $2",
        )
        .bind(connection)
        .bind(target)
        .bind(sent)
        .bind(window.blocked_until)
        .bind(window.day)
        .bind(i64::from(window.used_today))
        .bind(i64::from(window.day_spent))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((out, now))
    }
}
