//! SQLite's write-ahead log: how a commit reaches the disk outside the
//! write turn, and how the log is copied into the database and started
//! over beside an inbox that never pauses. Nothing here runs on PostgreSQL.

use super::{Dialect, Store, StoreError, Writer};
use sqlx::{AnyConnection, Row};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The SQLite database file of a store, open as long as the store is:
/// closing any descriptor of the file drops every POSIX lock this process
/// holds on it, SQLite's included, and another process (the `sqlite3`
/// shell) would then take the database for unused and delete its log
/// under the open store.
#[derive(Debug)]
pub(super) struct DatabaseFile {
    file: std::fs::File,
    path: PathBuf,
}

impl DatabaseFile {
    /// The write-ahead log beside it.
    fn log(&self) -> PathBuf {
        let mut log = self.path.clone().into_os_string();
        log.push("-wal");
        log.into()
    }
}

/// Log frames (pages) past which [`Store::checkpoints`] starts the log over:
/// 8,192 pages, 32 MB with SQLite's default page size.
const RESTART_LOG_FRAMES: i64 = 8192;

/// One descriptor of each SQLite database file for every store of this
/// process that has it open, closed when the last of them is dropped: two
/// stores on one file (a test, a command inside `serve`) must not close it
/// under each other, since closing any descriptor of a file drops every
/// POSIX lock the process holds on it (see [`DatabaseFile`]).
pub(super) fn shared_database_file(path: PathBuf) -> Option<Arc<DatabaseFile>> {
    type Open = std::collections::HashMap<PathBuf, std::sync::Weak<DatabaseFile>>;
    static OPEN: std::sync::OnceLock<std::sync::Mutex<Open>> = std::sync::OnceLock::new();
    let path = path.canonicalize().unwrap_or(path);
    let mut open = OPEN.get_or_init(Default::default).lock().ok()?;
    if let Some(file) = open.get(&path).and_then(std::sync::Weak::upgrade) {
        return Some(file);
    }
    let file = Arc::new(DatabaseFile {
        file: std::fs::File::open(&path).ok()?,
        path: path.clone(),
    });
    open.retain(|_, file| file.strong_count() > 0);
    open.insert(path, Arc::downgrade(&file));
    Some(file)
}

/// Rounds of sync-then-copy before a restart of the log ([`Store::checkpoints`]).
const PRESYNC_ROUNDS: usize = 4;

/// A round of sync-then-copy this short left little for the restart to sync.
const SHORT_SYNC: Duration = Duration::from_millis(5);

/// Runs blocking file I/O off the async workers.
async fn blocking_io(
    work: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
}

impl Store {
    /// The write-ahead log the inbox flushes itself after each commit, when
    /// the database `conn` is on is a SQLite file in WAL mode.
    ///
    /// SQLite at `synchronous=FULL` flushes the log inside each commit, holding
    /// the one write turn for the whole flush (a few milliseconds on a VM disk)
    /// while every other writer and the next batch of webhooks wait. At
    /// `NORMAL` the commit only writes the log; flushing the same file before
    /// acknowledging makes it exactly as durable: the log is replayed as a
    /// prefix, so the flush carries this commit and every earlier one, and a
    /// checkpoint that copies the commit into the database and restarts the
    /// log syncs the database first (`NORMAL` syncs at checkpoints).
    pub(super) async fn write_ahead_log(&self, conn: &mut AnyConnection) -> Option<PathBuf> {
        if self.dialect != Dialect::Sqlite {
            return None;
        }
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .ok()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return None;
        }
        let log = self.database_file.as_ref()?.log();
        log.exists().then_some(log)
    }

    /// Copies the SQLite write-ahead log into the database every `every`
    /// until `stop`, without blocking writers (`PASSIVE`), so that no
    /// webhook's commit pays for it. A no-op loop on PostgreSQL.
    pub async fn checkpoints(self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.dialect != Dialect::Sqlite {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            let log = match self.passive_checkpoint().await {
                Ok(log) => log,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot checkpoint the SQLite log; SQLite will at its own threshold");
                    continue;
                }
            };
            if log < RESTART_LOG_FRAMES {
                continue;
            }
            // A passive checkpoint writes pages into the database file but
            // syncs it only when it copied the whole log, which it never
            // does beside a busy inbox. Syncing them here, outside the write
            // turn, leaves the restart only what was written since; each
            // round's sync is shorter than the last (about 50, 10, then
            // 2 ms under load), so a few rounds leave the restart little to
            // sync while it holds the turn.
            if let Some(file) = &self.database_file {
                for _ in 0..PRESYNC_ROUNDS {
                    let began = std::time::Instant::now();
                    let file = file.clone();
                    if let Err(e) = blocking_io(move || file.file.sync_data()).await {
                        tracing::warn!(error = %e, "cannot sync the SQLite database file before starting its log over");
                        break;
                    }
                    if let Err(e) = self.passive_checkpoint().await {
                        tracing::warn!(error = %e, "cannot checkpoint the SQLite log");
                        break;
                    }
                    if began.elapsed() < SHORT_SYNC {
                        break;
                    }
                }
            }
            match self.restart_log().await {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    "the SQLite log is still read from; it starts over at the next round"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the SQLite log over; it keeps growing until it can")
                }
            }
        }
    }

    /// A checkpoint that copies what it can without waiting for anyone;
    /// returns how many frames the log holds.
    async fn passive_checkpoint(&self) -> Result<i64, StoreError> {
        let (_, log, _) = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await?;
        Ok(log)
    }

    /// Copies what is left of the log into the database and starts the log
    /// over, holding the write turn while it does (SQLite's `RESTART`
    /// checkpoint). Without it the log would never start over while webhooks
    /// keep arriving: a log starts over only at the first write after a
    /// checkpoint that left nothing behind, and a checkpoint beside a busy
    /// writer always leaves that writer's latest commits. The passive
    /// checkpoint before it has copied nearly everything, so the turn is
    /// held for the few commits since and one sync of the database file.
    /// Readers still on the old log make it give up at once (a short busy
    /// timeout): the next round tries again.
    async fn restart_log(&self) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("PRAGMA busy_timeout=20")
            .execute(&mut *conn)
            .await?;
        let _turn = self.write_gate(Writer::Checkpoint).await;
        let restarted = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&mut *conn)
            .await;
        sqlx::query("PRAGMA busy_timeout=5000")
            .execute(&mut *conn)
            .await?;
        Ok(restarted?.0 == 0)
    }

    /// The SQLite database's file.
    pub(super) async fn database_path(&self) -> Option<PathBuf> {
        let rows = sqlx::query("PRAGMA database_list")
            .fetch_all(&self.pool)
            .await
            .ok()?;
        rows.iter().find_map(|r| {
            let name: String = r.try_get(1).ok()?;
            let file: String = r.try_get(2).ok()?;
            (name == "main" && !file.is_empty()).then(|| file.into())
        })
    }
}

/// Flushes the write-ahead log to the disk (`fdatasync`). Opened each
/// time: SQLite may delete and re-create the file, and a descriptor kept
/// open would then flush a file nobody writes. Closing it is harmless
/// because SQLite takes no lock on the log (its locks are on the database
/// file and the `-shm` file, which must never be opened and closed here:
/// see [`Store::checkpoints`]).
pub(super) async fn flush_log(log: Arc<PathBuf>) -> Result<(), StoreError> {
    let path = log.clone();
    let flushed = blocking_io(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&*log)?
            .sync_data()
    })
    .await;
    flushed.map_err(|source| StoreError::Flush {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::test_event;
    use super::*;

    /// Beside an inbox that never pauses, a passive checkpoint copies the
    /// log but the log never starts over; the restart does start it over,
    /// and the inbox goes on storing through it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_while_webhooks_keep_arriving() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
        let inbox = crate::store::Inbox::start(store.clone(), 64);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut senders = Vec::new();
        for sender in 0..8 {
            let (inbox, stop) = (inbox.clone(), stop.clone());
            senders.push(tokio::spawn(async move {
                let mut stored = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let event = test_event(
                        &format!("{sender}-{stored}"),
                        Some(format!("c{}", stored % 50)),
                        vec![b'x'; 600],
                    );
                    inbox.store(event).await.unwrap();
                    stored += 1;
                }
                stored
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Taken while the inbox stores: it waits for its turn, then stores on.
        for _ in 0..3 {
            assert!(store.restart_log().await.unwrap(), "the restart gave up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut stored = 0;
        for sender in senders {
            stored += sender.await.unwrap();
        }
        assert!(stored > 0, "the senders stored nothing");
        // Quiet now: the log keeps its frames through checkpoints until the
        // first write after one that copied everything starts it over.
        let copied = store.passive_checkpoint().await.unwrap();
        assert!(copied > 0, "the senders' last writes left no log");
        assert!(store.restart_log().await.unwrap(), "the restart gave up");
        assert_eq!(store.passive_checkpoint().await.unwrap(), copied);
        let mut one = test_event("last", None, b"{}".to_vec());
        inbox.store(one.clone()).await.unwrap();
        let after = store.passive_checkpoint().await.unwrap();
        assert!(
            after < 16 && after < copied,
            "the log did not start over: {copied} frames before, {after} after one webhook"
        );
        one.dedup_key = "after".into();
        inbox.store(one).await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            count as u64,
            stored + 2,
            "every acknowledged webhook is stored"
        );
    }
}
