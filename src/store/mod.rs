//! The local database: the durable inbox of webhooks, the sync log, run
//! summaries and the customer mirror.
//!
//! One code path for SQLite (the embedded default) and PostgreSQL: sqlx
//! runtime queries over `AnyPool`, `$n` placeholders, times as epoch
//! milliseconds and JSON as text. Only the migrations differ by dialect.
//! Every row is keyed by a *connection* (one GHL location with its source
//! accounts); a single deployment uses `default`.

mod budget;
mod console;
mod doubt;
mod inbox;
mod journal;
mod operator;
mod people;
mod wal;
pub use console::{
    Attempt, EventPage, EventQuery, EventRecord, EventRow, PAGE_SIZE, StateCount, utc_day_start_ms,
};
pub use inbox::{ClaimShares, Inbox};
pub mod connections;
pub mod resync;
pub use journal::WriteTx;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use std::time::Duration;

mod pending;
pub use pending::{FLUSH_LEASE_MS, Held, HeldWrite, PendingWrite};
pub use people::{PEOPLE_SESSIONS, PeopleLock};

/// The connection used when none is configured.
pub const DEFAULT_CONNECTION: &str = "default";

/// Where an event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    /// Stored, waiting for a worker.
    Received,
    /// Stored, but no mapping handles it; replayable once one does.
    Unmapped,
    /// Failed transiently; will be tried again.
    Retrying,
    Delivered,
    /// Brought back only what the engine itself had just written: not synced again.
    Echo,
    /// Carried only values older than those already applied: not synced.
    Stale,
    /// Gave up after the last attempt, or failed permanently.
    Dead,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Received => "received",
            EventState::Unmapped => "unmapped",
            EventState::Retrying => "retrying",
            EventState::Delivered => "delivered",
            EventState::Echo => "echo",
            EventState::Stale => "stale",
            EventState::Dead => "dead",
        }
    }
}

/// A webhook to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub connection: String,
    pub source: String,
    pub event_type: String,
    pub event_id: Option<String>,
    pub dedup_key: String,
    pub occurred_at: Option<i64>,
    /// The platform's customer id: events with the same one are delivered in order.
    pub customer_key: Option<String>,
    /// The request headers that matter, as a JSON object.
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
    pub state: EventState,
    /// Why it is stored as it is, for the operator (`last_error`): the
    /// reason an `unmapped` event waits, e.g. no connection for its location.
    pub note: Option<String>,
}

/// The outcome of storing a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now, with this delivery id.
    New(i64),
    /// The same event (same de-duplication key) was stored before, with this id.
    Duplicate(i64),
}

impl Inserted {
    pub fn id(self) -> i64 {
        match self {
            Inserted::New(id) | Inserted::Duplicate(id) => id,
        }
    }
}

/// Counts of events by source, type and state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Count {
    pub source: String,
    pub event_type: String,
    pub state: String,
    pub count: i64,
}

/// Counts of events by connection, source, type and state: what `mapper
/// status` shows, per tenant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConnectionCount {
    pub connection: String,
    pub source: String,
    pub event_type: String,
    pub state: String,
    pub count: i64,
}

/// The latest error of an event that is dead or retrying.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastError {
    /// The delivery id.
    pub id: i64,
    pub connection: String,
    pub source: String,
    pub event_type: String,
    pub state: String,
    pub error: String,
}

/// An event a worker has claimed.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    pub id: i64,
    pub connection: String,
    pub source: String,
    pub event_type: String,
    pub body: Vec<u8>,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub customer_key: Option<String>,
    /// When the platform says the event happened (epoch ms).
    pub occurred_at: Option<i64>,
    /// When the inbox stored it (epoch ms): delivery lag is measured from here.
    pub received_at: i64,
    /// When the claim's lease ends (epoch ms) unless renewed: after it,
    /// another worker may take the event.
    pub lease_until: i64,
}

impl MirrorRecord {
    /// Whether `name` holds a value from an event later than `at`
    /// (the rule is [`crate::targets::sync::set_after`]).
    pub fn set_after(&self, name: &str, at: Option<i64>) -> bool {
        crate::targets::sync::set_after(self, name, at)
    }

    /// When `name` last took a new value (epoch ms), if known.
    pub fn changed_at(&self, name: &str) -> Option<i64> {
        self.changed_times.get(name).and_then(|t| t.as_i64())
    }
}

pub use crate::targets::sync::same_value;

/// A source customer as the local database knows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CustomerView {
    pub connection: String,
    pub source: String,
    pub customer_id: String,
    /// (target, id on the target).
    pub links: Vec<(String, String)>,
    pub mirror: Option<MirrorRecord>,
}

/// How long a claimed event is a worker's before another may take it (its
/// process presumably died). Short, so that a replica killed mid-delivery
/// holds up its events and every later event of the same customers for
/// seconds only; a live worker renews the leases of everything it holds
/// every [`LEASE_RENEWAL_MS`] (a delivery waiting for its rate limit may
/// take longer than one lease).
pub const CLAIM_LEASE_MS: i64 = 10_000;

/// How often a live worker renews its leases: three chances per lease, so
/// one slow write (a busy SQLite writer, a PostgreSQL hiccup) does not let
/// a lease lapse.
pub const LEASE_RENEWAL_MS: i64 = CLAIM_LEASE_MS / 3;

/// The last-known values of one source customer.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MirrorRecord {
    /// Field name → last-known value.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Field name → occurrence time (epoch ms) of the event that set it.
    pub field_times: serde_json::Map<String, serde_json::Value>,
    /// Field name → occurrence time of the event that last changed it (a
    /// snapshot repeating a value confirms it without changing it): what
    /// ownership compares a write's event against.
    pub changed_times: serde_json::Map<String, serde_json::Value>,
    pub last_activity: Option<i64>,
    pub updated_at: i64,
    /// When the engine last wrote these values to the record itself.
    pub written_at: Option<i64>,
}

/// One attempt of one action, as seed 000's `SyncLog` describes it.
#[derive(Debug, Clone, Serialize)]
pub struct SyncLogEntry {
    pub connection: String,
    pub event_row: i64,
    pub mapping: String,
    pub action: String,
    pub target: String,
    pub customer: Option<String>,
    /// `METHOD url` and the body, secrets excluded.
    pub request: String,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub attempt: i64,
    /// How long the call took (departure to answer), when a call was made.
    pub took_ms: Option<i64>,
}

impl SyncLogEntry {
    /// This entry, with how long its call took.
    pub fn took(mut self, took_ms: Option<i64>) -> SyncLogEntry {
        self.took_ms = took_ms;
        self
    }
}

/// Which events `replay` re-queues.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// States to re-queue (default: dead and unmapped).
    pub states: Vec<EventState>,
    pub id: Option<i64>,
    pub source: Option<String>,
    pub event_type: Option<String>,
    /// Only events received at or after this time (epoch ms).
    pub since_ms: Option<i64>,
}

/// A database error, with what we were doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("the inbox writer has stopped")]
    WriterGone,
    #[error("unsupported database URL `{0}`: use sqlite://FILE or postgres://…")]
    Url(String),
    #[error("the database is busy: {0}")]
    Busy(String),
    /// The event's lease lapsed and another process claimed it: its
    /// journal is that process's to write, not this one's.
    #[error(
        "event {0} was taken over by another worker after its lease lapsed; its journal is not written by this one"
    )]
    LeaseLost(i64),
    /// A held write's lease lapsed and another flusher claimed it.
    #[error(
        "held write {0} was taken over by another flusher after its lease lapsed; its outcome is not recorded by this one"
    )]
    WriteLeaseLost(i64),
    /// A group insert of the inbox failed; every webhook of the group gets
    /// the same error (sqlx's is not `Clone`).
    #[error("cannot store the webhook: {0}")]
    Shared(std::sync::Arc<StoreError>),
    /// The inbox's commit was written but the log could not be flushed to
    /// the disk: the webhook is not acknowledged (its sender's retry is
    /// recognised as the same webhook).
    #[error("cannot flush the SQLite write-ahead log {path} to the disk: {source}")]
    Flush {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// Write transactions committed (see [`Store::commits`]).
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// SQLite has one writer at a time. Writers of this process queue here
    /// instead of in SQLite's busy handler, which polls with sleeps that grow
    /// to 100 ms: the inbox, the claim and the journal writing at once cost
    /// tens of milliseconds of sleep each time they met (see
    /// [`Store::write_gate`]).
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Where writers other than the inbox wait for their place in the
    /// gate's queue, one at a time: the gate serves in arrival order, so a
    /// batch of webhooks then waits for at most the turn being held and one
    /// other, never for every claim and journal that queued before it.
    lobby: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Nanoseconds the gate was held, by [`Writer`] (see
    /// [`Store::write_gate_busy`]).
    gate_busy: std::sync::Arc<[std::sync::atomic::AtomicU64; Writer::ALL.len()]>,
    /// PostgreSQL: the sessions that hold people's locks across replicas
    /// (see [`Store::lock_people`]), apart from the pool the rest shares so
    /// that events waiting for a person can never starve the holder of the
    /// connection it needs to finish.
    people: Option<AnyPool>,
    /// The connection the last claim ended with: the next starts after it
    /// (see [`Store::claim_due_fairly`]).
    claim_cursor: std::sync::Arc<std::sync::Mutex<String>>,
    /// This open store's name on the claims it makes (`events.claimed_by`):
    /// its renewals and journals touch only the events still claimed under
    /// it, never those another process took over after a lease lapsed.
    owner: std::sync::Arc<str>,
    /// SQLite: the database file, for syncing what checkpoints copied into
    /// it and for finding its log (see [`Store::checkpoints`]).
    database_file: Option<std::sync::Arc<wal::DatabaseFile>>,
}

/// A name no other open store has: 16 random bytes, or the process id and
/// the time when the system has no randomness to give.
fn claim_owner() -> std::sync::Arc<str> {
    let mut bytes = [0u8; 16];
    let name = match getrandom::fill(&mut bytes) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        Err(_) => format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ),
    };
    name.into()
}

/// Who holds the SQLite write turn, for telling where the one writer's time
/// goes ([`Store::write_gate_busy_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Storing webhooks.
    Inbox,
    /// Claiming due events (and repairing the per-customer heads).
    Claim,
    /// Journals of delivered events.
    Journal,
    /// Held writes: holding, claiming, finishing, retrying.
    Held,
    /// Everything else (replay, recovery, links).
    Other,
    /// Starting the write-ahead log over ([`Store::checkpoints`]).
    Checkpoint,
}

impl Writer {
    /// Every kind, in the order [`Store::write_gate_busy_by`] reports them.
    pub const ALL: [Writer; 6] = [
        Writer::Inbox,
        Writer::Claim,
        Writer::Journal,
        Writer::Held,
        Writer::Other,
        Writer::Checkpoint,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Writer::Inbox => "inbox",
            Writer::Claim => "claim",
            Writer::Journal => "journal",
            Writer::Held => "held",
            Writer::Other => "other",
            Writer::Checkpoint => "checkpoint",
        }
    }
}

/// The turn of one writer of a SQLite store (nothing on PostgreSQL); the
/// time it is held is added to the store's tally when it ends.
pub(crate) struct WriteTurn(#[allow(dead_code)] Option<HeldTurn>);

struct HeldTurn {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    since: std::time::Instant,
    busy: std::sync::Arc<[std::sync::atomic::AtomicU64; Writer::ALL.len()]>,
    writer: Writer,
}

impl Drop for HeldTurn {
    fn drop(&mut self) {
        let held = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy[self.writer as usize].fetch_add(held, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Epoch milliseconds as RFC 3339 (UTC, seconds), for people.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

impl Store {
    /// Opens (creating and migrating) the database at `url`:
    /// `sqlite://mapper.db`, `sqlite::memory:` is refused (each pooled
    /// connection would see its own database), `postgres://…`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let (dialect, url) = normalize_url(url)?;
        // SQLite: readers run beside the one writer (WAL), and each of the
        // up to 8 deliveries in flight reads its customer's rows while
        // claims and journals write; 4 connections made them queue for one
        // (deliver bench: 305 → 435 events/s with 16).
        let mut options = AnyPoolOptions::new().max_connections(if dialect == Dialect::Sqlite {
            16
        } else {
            POOL_SESSIONS
        });
        if dialect == Dialect::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the writer. NORMAL: a
                    // commit reaches the disk with the next fsync of the
                    // log, not by its own. The inbox, whose commit is what a
                    // 202 promises, writes at FULL (`DURABLE`): its fsync
                    // carries every earlier commit with it, since the log
                    // is one file replayed as a prefix. A power cut can then
                    // undo only the latest claims and journals, which puts
                    // their events back to be delivered again, as a crash
                    // between a call and its journal always could; a
                    // process crash (kill -9) loses nothing either way.
                    sqlx::query("PRAGMA journal_mode=WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous=NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout=5000")
                        .execute(&mut *conn)
                        .await?;
                    // Checkpoints run in the background (`Store::checkpoints`);
                    // SQLite's own, in the commit of whichever writer crosses
                    // the threshold, syncs the database file while it holds
                    // the write turn (claims and journals held it up to 80 ms
                    // under ingest at 20,000 pages, a log the background
                    // task lets grow to about 50,000 between restarts). This
                    // is only the safety net when no background task runs.
                    sqlx::query("PRAGMA wal_autocheckpoint=131072")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|source| StoreError::Open {
                url: redact(&url),
                source,
            })?;
        migrator(dialect).run(&pool).await?;
        let people = match dialect {
            Dialect::Postgres => Some(
                AnyPoolOptions::new()
                    .max_connections(PEOPLE_SESSIONS)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(60))
                    .connect_lazy(&url)
                    .map_err(|source| StoreError::Open {
                        url: redact(&url),
                        source,
                    })?,
            ),
            Dialect::Sqlite => None,
        };
        let mut store = Store {
            pool,
            people,
            claim_cursor: Default::default(),
            dialect,
            commits: Default::default(),
            write_gate: Default::default(),
            lobby: Default::default(),
            gate_busy: Default::default(),
            owner: claim_owner(),
            database_file: None,
        };
        if dialect == Dialect::Sqlite {
            store.database_file = store
                .database_path()
                .await
                .and_then(wal::shared_database_file);
        }
        Ok(store)
    }

    /// This open store's name on the claims it makes (see `events.claimed_by`).
    pub fn claim_owner(&self) -> &str {
        &self.owner
    }

    /// Waits for this process's turn to write (SQLite; PostgreSQL has row
    /// locks and needs none). Held for the whole write transaction; taken
    /// before a pooled connection, so a writer waiting never holds one. A
    /// holder never asks for the turn again. Other processes (the CLI, a
    /// second `serve`) still meet SQLite's own busy handler.
    pub(crate) async fn write_gate(&self, writer: Writer) -> WriteTurn {
        WriteTurn(match self.dialect {
            Dialect::Sqlite => Some(HeldTurn {
                _guard: if writer == Writer::Inbox {
                    self.write_gate.clone().lock_owned().await
                } else {
                    let _place = self.lobby.lock().await;
                    self.write_gate.clone().lock_owned().await
                },
                since: std::time::Instant::now(),
                busy: self.gate_busy.clone(),
                writer,
            }),
            Dialect::Postgres => None,
        })
    }

    /// How long this process's SQLite writers have held their turn, in all
    /// (zero on PostgreSQL). Over a stretch of time, near 100% of it means
    /// the one writer is what the process waits for (the deliver bench
    /// prints it).
    pub fn write_gate_busy(&self) -> Duration {
        self.write_gate_busy_by()
            .iter()
            .map(|(_, held)| *held)
            .sum()
    }

    /// [`Store::write_gate_busy`] by who held the turn.
    pub fn write_gate_busy_by(&self) -> [(Writer, Duration); Writer::ALL.len()] {
        Writer::ALL.map(|w| {
            let nanos = self.gate_busy[w as usize].load(std::sync::atomic::Ordering::Relaxed);
            (w, Duration::from_nanos(nanos))
        })
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Events left `processing` by a process that stopped are due again. On
    /// SQLite (one process) that is every such event, at once; on PostgreSQL
    /// other replicas may be working on theirs, so only expired leases count,
    /// and `claim_due` takes those anyway.
    pub async fn recover_processing(&self) -> Result<u64, StoreError> {
        // A claim set `next_attempt_at` to the end of its lease: due now, not then.
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "UPDATE events SET state = 'received', next_attempt_at = $1 WHERE state = 'processing'"
            }
            Dialect::Postgres => {
                "UPDATE events SET state = 'received' WHERE state = 'processing' AND next_attempt_at <= $1"
            }
        };
        let query = sqlx::query(sql).bind(now_ms());
        let r = query.execute(&self.pool).await?;
        Ok(r.rows_affected())
    }

    /// Extends the leases of the claimed events `ids` that are still
    /// `processing` under this store's claim to `until`. An id in neither
    /// list of the answer is finished, or was taken over by another process
    /// after its lease lapsed: this one must not call a target for it any
    /// more. The ids travel as one JSON array, so the statement is the same
    /// whatever their number.
    ///
    /// On PostgreSQL a row locked by a transaction (this process's journal
    /// finishing the event, most often) is skipped rather than waited for:
    /// waiting made the renewal and a journal group, each locking several
    /// events in its own order, deadlock (the fairness bench on 3 replicas).
    /// A skipped row still claimed by this store is answered `busy`: not
    /// extended, not lost; the next renewal tries it again.
    pub async fn renew_leases(&self, ids: &[i64], until: i64) -> Result<Renewal, StoreError> {
        if ids.is_empty() {
            return Ok(Renewal::default());
        }
        let postgres = self.dialect == Dialect::Postgres;
        let sql = if postgres {
            format!(
                "UPDATE events SET next_attempt_at = $1 WHERE id IN (SELECT id FROM events \
                 WHERE state = 'processing' AND claimed_by = $3 AND id IN ({}) \
                 FOR UPDATE SKIP LOCKED) RETURNING id",
                ids_in(true, "$2")
            )
        } else {
            format!(
                "UPDATE events SET next_attempt_at = $1 WHERE state = 'processing' \
                 AND claimed_by = $3 AND id IN ({}) RETURNING id",
                ids_in(false, "$2")
            )
        };
        let _turn = self.write_gate(Writer::Claim).await;
        let extended = returned_ids(
            &sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(until)
                .bind(id_list(ids))
                .bind(self.claim_owner())
                .fetch_all(&self.pool)
                .await?,
        )?;
        let mut renewal = Renewal {
            extended,
            busy: Vec::new(),
        };
        if postgres && renewal.extended.len() < ids.len() {
            let rest: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| !renewal.extended.contains(id))
                .collect();
            renewal.busy = returned_ids(
                &sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM events WHERE state = 'processing' AND claimed_by = $2 \
                     AND id IN ({})",
                    ids_in(true, "$1")
                )))
                .bind(id_list(&rest))
                .bind(self.claim_owner())
                .fetch_all(&self.pool)
                .await?,
            )?;
        }
        Ok(renewal)
    }

    /// Records the outcome of processing an event.
    pub async fn finish(
        &self,
        id: i64,
        state: EventState,
        next_attempt_at: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        tx.finish(id, state, next_attempt_at, error).await?;
        tx.commit().await
    }

    /// Puts an event back to wait until `next_attempt_at` without counting
    /// the attempt (a target's daily budget is spent: nothing was tried).
    pub async fn defer(
        &self,
        id: i64,
        next_attempt_at: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        tx.defer(id, next_attempt_at, reason).await?;
        tx.commit().await
    }

    /// Writes one attempt to the sync log.
    pub async fn log_attempt(&self, entry: &SyncLogEntry) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        tx.log(entry).await?;
        tx.commit().await
    }

    /// The target id linked to a source customer, if any.
    pub async fn link(
        &self,
        connection: &str,
        source: &str,
        source_id: &str,
        target: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT target_id FROM customers WHERE connection = $1 AND source = $2 AND source_id = $3 AND target = $4",
        )
        .bind(connection)
        .bind(source)
        .bind(source_id)
        .bind(target)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    /// Stores (or moves) a link between a source customer and a target record.
    pub async fn put_link(
        &self,
        connection: &str,
        source: &str,
        source_id: &str,
        target: &str,
        target_id: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        tx.put_link(connection, (source, source_id), (target, target_id), false)
            .await?;
        tx.commit().await
    }

    /// Writes a worker batch summary (seed 000's `SyncRunSummary`).
    pub async fn record_run(
        &self,
        connection: &str,
        started_at: i64,
        processed: i64,
        delivered: i64,
        failed: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        tx.record_run(&RunSummary {
            connection: connection.to_string(),
            started_at,
            processed,
            delivered,
            failed,
        })
        .await?;
        tx.commit().await
    }

    /// What is known of a record on a target (a JSON object; empty when nothing).
    pub async fn record_fields(
        &self,
        connection: &str,
        target: &str,
        target_id: &str,
    ) -> Result<serde_json::Value, StoreError> {
        let row = sqlx::query("SELECT fields FROM target_records WHERE connection = $1 AND target = $2 AND target_id = $3")
            .bind(connection)
            .bind(target)
            .bind(target_id)
            .fetch_optional(&self.pool)
            .await?;
        let text: Option<String> = match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        };
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| serde_json::Value::Object(Default::default())))
    }

    /// Merges `fields` into what is known of a record on a target.
    pub async fn remember(
        &self,
        connection: &str,
        target: &str,
        target_id: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        tx.remember(connection, target, target_id, fields).await?;
        tx.commit().await
    }

    /// The mirror of one source customer, if the engine has seen them.
    pub async fn mirror(
        &self,
        connection: &str,
        source: &str,
        customer_id: &str,
    ) -> Result<Option<MirrorRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT fields, field_times, last_activity, updated_at, written_at, changed_times FROM mirror \
             WHERE connection = $1 AND source = $2 AND customer_id = $3",
        )
        .bind(connection)
        .bind(source)
        .bind(customer_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| mirror_of_row(&r)).transpose()
    }

    /// Merges an event's values into a customer's mirror (the rule is
    /// [`crate::targets::sync::apply_event`]) and returns the fields a later
    /// event had already set, which keep their values.
    pub async fn update_mirror(
        &self,
        connection: &str,
        source: &str,
        customer_id: &str,
        values: &serde_json::Map<String, serde_json::Value>,
        occurred_at: Option<i64>,
        event_row: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut record = tx
            .mirror(connection, source, customer_id)
            .await?
            .unwrap_or_default();
        let stale = crate::targets::sync::apply_event(&mut record, values, occurred_at, now_ms());
        tx.put_mirror(connection, source, customer_id, &record, Some(event_row))
            .await?;
        tx.commit().await?;
        Ok(stale)
    }

    /// Records what the engine just wrote to a record that `source`'s
    /// webhooks describe, as if the source had said it (the rule is
    /// [`crate::targets::sync::apply_reflection`]).
    pub async fn reflect(
        &self,
        connection: &str,
        source: &str,
        customer_id: &str,
        values: &serde_json::Map<String, serde_json::Value>,
        learnt_at: Option<i64>,
        applied_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let mut record = tx
            .mirror(connection, source, customer_id)
            .await?
            .unwrap_or_default();
        crate::targets::sync::apply_reflection(
            &mut record,
            values,
            learnt_at,
            applied_at,
            now_ms(),
        );
        tx.put_mirror(connection, source, customer_id, &record, None)
            .await?;
        tx.commit().await
    }

    /// The target records a source customer is linked to: (target, target id).
    pub async fn links_of(
        &self,
        connection: &str,
        source: &str,
        customer_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT target, target_id FROM customers WHERE connection = $1 AND source = $2 AND source_id = $3 \
             AND target_id IS NOT NULL ORDER BY target",
        )
        .bind(connection)
        .bind(source)
        .bind(customer_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Every mirrored customer of a source: (customer id, mirror).
    pub async fn mirrors_of(
        &self,
        connection: &str,
        source: &str,
    ) -> Result<Vec<(String, MirrorRecord)>, StoreError> {
        let rows = sqlx::query(
            "SELECT customer_id, fields, field_times, last_activity, updated_at, written_at, changed_times FROM mirror \
             WHERE connection = $1 AND source = $2 ORDER BY customer_id",
        )
        .bind(connection)
        .bind(source)
        .fetch_all(&self.pool)
        .await?;
        let object = |text: String| match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    MirrorRecord {
                        fields: object(r.try_get(1)?),
                        field_times: object(r.try_get(2)?),
                        last_activity: r.try_get(3)?,
                        updated_at: r.try_get(4)?,
                        written_at: r.try_get(5)?,
                        changed_times: object(r.try_get(6)?),
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Whether this is the PostgreSQL backend.
    pub fn is_postgres(&self) -> bool {
        self.dialect == Dialect::Postgres
    }
}

/// The migrations, embedded in the binary so it runs from any folder.
fn migrator(dialect: Dialect) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    macro_rules! both {
        ($file:literal) => {
            match dialect {
                Dialect::Sqlite => include_str!(concat!("../../migrations/sqlite/", $file)),
                Dialect::Postgres => include_str!(concat!("../../migrations/postgres/", $file)),
            }
        };
    }
    let steps: [(i64, &str, &'static str); 14] = [
        (1, "inbox", both!("0001_inbox.sql")),
        (2, "records", both!("0002_records.sql")),
        (3, "order_mirror", both!("0003_order_mirror.sql")),
        (4, "echo", both!("0004_echo.sql")),
        (5, "claim_indexes", both!("0005_claim_indexes.sql")),
        (6, "resync", both!("0006_resync.sql")),
        (
            7,
            "ownership_coalesce",
            both!("0007_ownership_coalesce.sql"),
        ),
        (8, "claim_heads", both!("0008_claim_heads.sql")),
        (9, "attempt_latency", both!("0009_attempt_latency.sql")),
        (10, "connections", both!("0010_connections.sql")),
        (11, "rate_windows", both!("0011_rate_windows.sql")),
        (12, "fair_claims", both!("0012_fair_claims.sql")),
        (13, "sends_in_doubt", both!("0013_sends_in_doubt.sql")),
        (14, "claim_owner", both!("0014_claim_owner.sql")),
    ];
    Migrator::with_migrations(
        steps
            .into_iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    version,
                    name.to_string().into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

fn normalize_url(url: &str) -> Result<(Dialect, String), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Dialect::Postgres, url.to_string()));
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(StoreError::Url(url.to_string()));
    };
    if rest.contains(":memory:") || rest.contains("mode=memory") {
        return Err(StoreError::Url(url.to_string()));
    }
    // Create the file when it does not exist yet.
    let with_mode = if rest.contains("mode=") {
        url.to_string()
    } else if rest.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    };
    Ok((Dialect::Sqlite, with_mode))
}

/// One worker batch, as seed 000's `SyncRunSummary` counts it.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub connection: String,
    pub started_at: i64,
    pub processed: i64,
    pub delivered: i64,
    pub failed: i64,
}

/// A mirror row (fields, field_times, last_activity, updated_at,
/// written_at, changed_times) as a record.
/// The ids a statement answered, first column of each row.
pub(crate) fn returned_ids(rows: &[sqlx::any::AnyRow]) -> Result<Vec<i64>, StoreError> {
    Ok(rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// The rows of the ids in the JSON array parameter `param` ([`id_list`]),
/// as a subquery: `id IN (…)`.
pub(crate) fn ids_in(postgres: bool, param: &str) -> String {
    if postgres {
        format!("SELECT jsonb_array_elements_text({param}::jsonb)::bigint")
    } else {
        format!("SELECT value FROM json_each({param})")
    }
}

/// The main pool's sessions on PostgreSQL (beside the inbox writer's own
/// and [`PEOPLE_SESSIONS`]).
pub const POOL_SESSIONS: u32 = 10;

/// What a renewal of leases did ([`Store::renew_leases`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewal {
    /// The leases extended.
    pub extended: Vec<i64>,
    /// Still claimed by this store, but locked by a transaction at that
    /// moment (PostgreSQL): not extended this time.
    pub busy: Vec<i64>,
}

/// Ids as one JSON array, `[1,2,3]`: a single parameter that
/// `json_each` (SQLite) and `jsonb_array_elements_text` (PostgreSQL) unfold,
/// so a statement over them is one prepared statement whatever their number.
pub(crate) fn id_list(ids: &[i64]) -> String {
    let mut list = String::with_capacity(ids.len() * 8 + 2);
    list.push('[');
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            list.push(',');
        }
        list.push_str(&id.to_string());
    }
    list.push(']');
    list
}

fn mirror_of_row(row: &sqlx::any::AnyRow) -> Result<MirrorRecord, StoreError> {
    let object = |text: String| match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    Ok(MirrorRecord {
        fields: object(row.try_get(0)?),
        field_times: object(row.try_get(1)?),
        last_activity: row.try_get(2)?,
        updated_at: row.try_get(3)?,
        written_at: row.try_get(4)?,
        changed_times: object(row.try_get(5)?),
    })
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A webhook of source `s` for the tests, stored as received.
    pub(super) fn test_event(
        dedup_key: &str,
        customer_key: Option<String>,
        body: Vec<u8>,
    ) -> NewEvent {
        NewEvent {
            connection: DEFAULT_CONNECTION.to_string(),
            source: "s".into(),
            event_type: "e".into(),
            event_id: None,
            dedup_key: dedup_key.into(),
            occurred_at: None,
            customer_key,
            headers: serde_json::json!({}),
            body,
            state: EventState::Received,
            note: None,
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("sqlite://x.db").unwrap().1,
            "sqlite://x.db?mode=rwc"
        );
        assert_eq!(
            normalize_url("sqlite://x.db?mode=ro").unwrap().1,
            "sqlite://x.db?mode=ro"
        );
        assert!(normalize_url("sqlite::memory:").is_err());
        assert!(normalize_url("mysql://x").is_err());
        assert_eq!(
            normalize_url("postgres://u:p@h/db").unwrap().0,
            Dialect::Postgres
        );
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://***@h/db");
    }

    async fn synchronous(store: &Store) -> i64 {
        let mut conn = store.pool.acquire().await.unwrap();
        sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
    }

    /// Webhooks are stored at FULL (a 202 promises the disk has them); the
    /// pool's other writes at NORMAL, and storing leaves it there.
    #[tokio::test]
    async fn only_the_inbox_waits_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        assert_eq!(synchronous(&store).await, NORMAL);
        let mut conn = store.pool.acquire().await.unwrap();
        store.durable(&mut conn, true).await.unwrap();
        let now: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(now, FULL);
        store.durable(&mut conn, false).await.unwrap();
        drop(conn);
        let event = test_event("k", None, b"{}".to_vec());
        store.insert_events(&[event]).await.unwrap();
        // One connection in the pool is enough to see where it was left.
        for _ in 0..4 {
            assert_eq!(synchronous(&store).await, NORMAL);
        }
    }
}
