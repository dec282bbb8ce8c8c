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
