//! Calls that must not be applied twice and whose answer may be unknown
//! (migration 0013): marked before they leave, settled with the journal.

use super::{Store, StoreError, WriteTx, Writer, now_ms};
use sqlx::Row;

impl Store {
    /// Records, durably, that the call `step` of event `event_row` is about
    /// to leave. Committed before the call: a crash after it leaves the mark.
    pub async fn mark_sending(&self, event_row: i64, step: &str) -> Result<(), StoreError> {
        let _turn = self.write_gate(Writer::Other).await;
        sqlx::query(
            "INSERT INTO sends_in_doubt (event_row, step, sent_at) VALUES ($1, $2, $3) \
             ON CONFLICT (event_row, step) DO NOTHING",
        )
        .bind(event_row)
        .bind(step)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When an earlier attempt sent the call `step` of event `event_row`
    /// without its answer being recorded, if one did.
    pub async fn sent_in_doubt(
        &self,
        event_row: i64,
        step: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row =
            sqlx::query("SELECT sent_at FROM sends_in_doubt WHERE event_row = $1 AND step = $2")
                .bind(event_row)
                .bind(step)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }
}

impl WriteTx {
    /// The call's answer is known (or its doubt was reported): its mark goes.
    pub async fn settle_send(&mut self, event_row: i64, step: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sends_in_doubt WHERE event_row = $1 AND step = $2")
            .bind(event_row)
            .bind(step)
            .execute(self.connection())
            .await?;
        Ok(())
    }
}
