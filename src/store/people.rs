//! Locks on people shared by every process on one PostgreSQL database: two
//! replicas delivering events about the same person at once (a Sticky Cards
//! webhook on one, a SignalMind webhook on the other) must not both search
//! the target, find nobody, and both create them.
//!
//! In one process the executor's own locks already serialise such events;
//! these are taken inside them, around the search-then-create of a
//! customer, as transaction-scoped advisory locks: they end with the
//! transaction, and with the session if the process dies, so a killed
//! replica never leaves a person locked. Keys are hashed to PostgreSQL's
//! 64-bit lock space; two keys sharing a hash only wait for each other.
//! On SQLite (one process per file) they are not needed and cost nothing.

use super::{Store, StoreError};
use sqlx::Row;
use sqlx::{Any, Transaction};

/// Sessions that may hold people's locks at once in one process. Only a
/// delivery searching for or creating a customer holds one, for the length
/// of that search and create; more deliveries doing so at once wait. Kept
/// small: with the 10 of the main pool, each replica opens at most 18
/// PostgreSQL sessions (PostgreSQL's default limit is 100 in all).
pub const PEOPLE_SESSIONS: u32 = 8;

/// People locked across processes until this is dropped (its transaction
/// then rolls back, which releases them).
#[must_use = "the people are unlocked when this is dropped"]
pub struct PeopleLock {
    _session: Option<Transaction<'static, Any>>,
}

impl PeopleLock {
    /// Whether other processes are kept out (PostgreSQL), not only this one.
    pub fn is_shared(&self) -> bool {
        self._session.is_some()
    }
}

impl Store {
    /// On PostgreSQL: the sessions the server has left for this process
    /// (those it opened so far included) and the most it may open (its
    /// pool, the inbox's own, the people's pool): (free, wanted). A replica
    /// short of sessions makes the deliveries that create a person wait for
    /// one of the people's sessions until they time out (the fairness bench
    /// with 40 sessions for 3 replicas: a 617-event warm-up took 362 s).
    /// `None` on SQLite, or when the server does not say.
    pub async fn session_room(&self) -> Option<(i64, i64)> {
        self.people.as_ref()?;
        let wanted = i64::from(super::POOL_SESSIONS + 1 + PEOPLE_SESSIONS);
        let row = sqlx::query(
            "SELECT CAST(current_setting('max_connections') AS BIGINT) \
             - CAST(current_setting('superuser_reserved_connections') AS BIGINT) \
             - (SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
        )
        .fetch_one(&self.pool)
        .await
        .ok()?;
        let free: i64 = row.try_get(0).ok()?;
        // This process's own sessions opened so far are counted as taken.
        let own = i64::from(self.pool.size());
        Some((free + own, wanted))
    }

    /// Locks `keys` (identifying values of people) for every process on this
    /// database, in sorted order so that two processes never wait on each
    /// other; on SQLite returns at once.
    pub async fn lock_people(&self, keys: &[String]) -> Result<PeopleLock, StoreError> {
        let Some(pool) = &self.people else {
            return Ok(PeopleLock { _session: None });
        };
        if keys.is_empty() {
            return Ok(PeopleLock { _session: None });
        }
        let mut keys: Vec<&String> = keys.iter().collect();
        keys.sort();
        keys.dedup();
        let mut session = pool.begin().await?;
        for key in keys {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key.as_str())
                .execute(&mut *session)
                .await?;
        }
        Ok(PeopleLock {
            _session: Some(session),
        })
    }
}
