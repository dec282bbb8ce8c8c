//! What one delivery records — its sync log, the links it made, what
//! answers taught about target records, what it wrote (reflected into the
//! mirrors), the event's own values, and how the event ended — gathered while
//! it runs and written in one transaction at the end. A journal that cannot
//! be written is never dropped: the event is not finished, so it is tried
//! again; it is never reported delivered without its log.
//!
//! While the delivery runs, reads of what it already recorded go through the
//! journal (the store's row with the journal's writes applied), so a later
//! action sees an earlier one's link, remembered ids and reflected values.
//!
//! Concurrent deliveries share transactions: a writer task commits every
//! journal waiting when it starts one (group commit), so the cost of a
//! commit is paid once per group, not once per event.

use super::sync;
use crate::store::{
    EventState, MirrorRecord, RunSummary, Store, StoreError, SyncLogEntry, WriteTx, now_ms,
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// One write a delivery makes, in the order it made it.
#[derive(Debug, Clone)]
enum Intent {
    Log(SyncLogEntry),
    Link {
        source: String,
        source_id: String,
        target: String,
        target_id: String,
        /// Leave an existing link as it is (the link back from a target record).
        keep: bool,
    },
    Remember {
        target: String,
        target_id: String,
        fields: Map<String, Value>,
    },
    Reflect {
        source: String,
        customer_id: String,
        values: Map<String, Value>,
        learnt_at: Option<i64>,
        applied_at: i64,
    },
    /// The event's own values into its source's mirror; the fields the
    /// mirror takes (not stale) are remembered for the record it describes.
    Mirror {
        source: String,
        customer_id: String,
        values: Map<String, Value>,
        occurred_at: Option<i64>,
        event_row: i64,
        describes: Option<String>,
    },
    /// A call marked before it left (not idempotent) whose answer is known.
    Settled {
        event_row: i64,
        step: String,
    },
}

/// How an event ended, as the inbox records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// Delivered, suppressed (echo, stale), retrying or dead.
    State {
        state: EventState,
        next_attempt_at: i64,
        error: Option<String>,
    },
    /// Not tried (a spent daily budget): back to waiting, attempt not counted.
    Defer { until: i64, reason: String },
}

/// What deliveries in this process have written to records and not yet
/// committed: the webhook a write causes can arrive before its journal is
/// written, and must still be recognised as its echo. Each entry is one
/// journal's reflection; applying one twice changes nothing.
#[derive(Debug, Default)]
pub struct InFlight {
    next: std::sync::atomic::AtomicU64,
    reflections: Mutex<InFlightMap>,
}

/// (connection, source, customer id) → (journal, reflection), oldest first.
type InFlightMap = HashMap<(String, String, String), Vec<(u64, Reflection)>>;

/// Values a write made a record hold, with their times.
#[derive(Debug, Clone)]
struct Reflection {
    values: Map<String, Value>,
    learnt_at: Option<i64>,
    applied_at: i64,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, InFlightMap> {
        match self.reflections.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Forgets one journal's reflections (it is committed, or given up).
    pub fn forget(&self, journal: u64) {
        let mut all = self.lock();
        all.retain(|_, entries| {
            entries.retain(|(id, _)| *id != journal);
            !entries.is_empty()
        });
    }
}

/// The writes of one delivery.
#[derive(Debug, Clone)]
pub struct Journal {
    /// This journal among the in-flight ones.
    id: u64,
    in_flight: Option<Arc<InFlight>>,
    connection: String,
    intents: Vec<Intent>,
    finish: Option<(i64, Finish)>,
    run: Option<RunSummary>,
    /// Rows this delivery read, read once: its people are locked while it
    /// runs, so nobody else changes them meanwhile.
    reads: Arc<Mutex<Reads>>,
}

#[derive(Debug, Default)]
struct Reads {
    mirrors: HashMap<(String, String), Option<MirrorRecord>>,
    records: HashMap<(String, String), Value>,
    /// Every link of a source customer: (source, id) → [(target, target id)].
    links: HashMap<(String, String), Vec<(String, String)>>,
}

impl Journal {
    /// An empty journal for a delivery on `connection`.
    pub fn new(connection: &str) -> Journal {
        Journal {
            id: 0,
            in_flight: None,
            connection: connection.to_string(),
            intents: Vec::new(),
            finish: None,
            run: None,
            reads: Default::default(),
        }
    }

    /// A journal that only records a worker batch's summary.
    pub fn run_summary(run: RunSummary) -> Journal {
        Journal {
            id: 0,
            in_flight: None,
            connection: run.connection.clone(),
            intents: Vec::new(),
            finish: None,
            run: Some(run),
            reads: Default::default(),
        }
    }

    /// A journal whose reflections other deliveries of this process see
    /// before it is committed.
    pub fn shared(connection: &str, in_flight: &Arc<InFlight>) -> Journal {
        let mut journal = Journal::new(connection);
        journal.id = in_flight
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        journal.in_flight = Some(in_flight.clone());
        journal
    }

    /// This journal's reflections are written (or given up): others stop
    /// seeing them in flight.
    pub fn settled(&self) {
        if let Some(in_flight) = &self.in_flight {
            in_flight.forget(self.id);
        }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.intents.is_empty() && self.finish.is_none() && self.run.is_none()
    }

    /// The call `step` of event `event_row`, marked before it left, has its
    /// answer (or its doubt reported): the mark goes with this journal.
    pub fn settle_send(&mut self, event_row: i64, step: &str) {
        self.intents.push(Intent::Settled {
            event_row,
            step: step.to_string(),
        });
    }

    /// One attempt (or a decision: echo, stale, conflict, held) for the sync log.
    pub fn log(&mut self, entry: SyncLogEntry) {
        self.intents.push(Intent::Log(entry));
    }

    /// A link between a source customer and a target record.
    pub fn link(
        &mut self,
        (source, source_id): (&str, &str),
        (target, target_id): (&str, &str),
        keep: bool,
    ) {
        self.intents.push(Intent::Link {
            source: source.into(),
            source_id: source_id.into(),
            target: target.into(),
            target_id: target_id.into(),
            keep,
        });
    }

    /// Values an answer taught about a target record (`remember:`, tracked sets).
    pub fn remember(&mut self, target: &str, target_id: &str, fields: Map<String, Value>) {
        if !fields.is_empty() {
            self.intents.push(Intent::Remember {
                target: target.into(),
                target_id: target_id.into(),
                fields,
            });
        }
    }

    /// What a write made a record hold, in the mirror of a source describing it.
    pub fn reflect(
        &mut self,
        source: &str,
        customer_id: &str,
        values: Map<String, Value>,
        (learnt_at, applied_at): (Option<i64>, i64),
    ) {
        if !values.is_empty() {
            if let Some(in_flight) = &self.in_flight {
                in_flight
                    .lock()
                    .entry((
                        self.connection.clone(),
                        source.to_string(),
                        customer_id.to_string(),
                    ))
                    .or_default()
                    .push((
                        self.id,
                        Reflection {
                            values: values.clone(),
                            learnt_at,
                            applied_at,
                        },
                    ));
            }
            self.intents.push(Intent::Reflect {
                source: source.into(),
                customer_id: customer_id.into(),
                values,
                learnt_at,
                applied_at,
            });
        }
    }

    /// The event's own values into its customer's mirror.
    pub fn mirror(
        &mut self,
        (source, customer_id): (&str, &str),
        values: Map<String, Value>,
        occurred_at: Option<i64>,
        event_row: i64,
        describes: Option<&str>,
    ) {
        self.intents.push(Intent::Mirror {
            source: source.into(),
            customer_id: customer_id.into(),
            values,
            occurred_at,
            event_row,
            describes: describes.map(str::to_string),
        });
    }

    /// How the event ended.
    pub fn finish(&mut self, event: i64, finish: Finish) {
        self.finish = Some((event, finish));
    }

    /// Every link of a source customer, read once ([`Store::links_of`]):
    /// [`Journal::link_of`] answers from it afterwards.
    pub async fn links_of(
        &self,
        store: &Store,
        source: &str,
        source_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let key = (source.to_string(), source_id.to_string());
        if let Some(links) = self.reads().links.get(&key) {
            return Ok(links.clone());
        }
        let links = store.links_of(&self.connection, source, source_id).await?;
        self.reads().links.insert(key, links.clone());
        Ok(links)
    }

    /// The target id linked to a source customer: this delivery's own link
    /// first, then the store's.
    pub async fn link_of(
        &self,
        store: &Store,
        source: &str,
        source_id: &str,
        target: &str,
    ) -> Result<Option<String>, StoreError> {
        let mine = self.intents.iter().rev().find_map(|i| match i {
            Intent::Link {
                source: s,
                source_id: id,
                target: t,
                target_id,
                keep: false,
            } if s == source && id == source_id && t == target => Some(target_id.clone()),
            _ => None,
        });
        if let Some(id) = mine {
            return Ok(Some(id));
        }
        let read = self
            .reads()
            .links
            .get(&(source.to_string(), source_id.to_string()))
            .map(|links| {
                links
                    .iter()
                    .find(|(t, _)| t == target)
                    .map(|(_, id)| id.clone())
            });
        match read {
            Some(id) => Ok(id),
            None => {
                store
                    .link(&self.connection, source, source_id, target)
                    .await
            }
        }
    }

    /// What is known of a target record: the store's with this delivery's
    /// remembered values on top.
    pub async fn record_fields(
        &self,
        store: &Store,
        target: &str,
        target_id: &str,
    ) -> Result<Value, StoreError> {
        let key = (target.to_string(), target_id.to_string());
        let cached = self.reads().records.get(&key).cloned();
        let mut known = match cached {
            Some(known) => known,
            None => {
                let known = store
                    .record_fields(&self.connection, target, target_id)
                    .await?;
                self.reads().records.insert(key, known.clone());
                known
            }
        };
        if let Value::Object(map) = &mut known {
            for intent in &self.intents {
                if let Intent::Remember {
                    target: t,
                    target_id: id,
                    fields,
                } = intent
                    && t == target
                    && id == target_id
                {
                    map.extend(fields.clone());
                }
            }
        }
        Ok(known)
    }

    /// A customer's mirror: the store's with this delivery's reflections on top.
    pub async fn mirror_of(
        &self,
        store: &Store,
        source: &str,
        customer_id: &str,
    ) -> Result<Option<MirrorRecord>, StoreError> {
        let key = (source.to_string(), customer_id.to_string());
        let cached = self.reads().mirrors.get(&key).cloned();
        let stored = match cached {
            Some(stored) => stored,
            None => {
                let stored = store.mirror(&self.connection, source, customer_id).await?;
                self.reads().mirrors.insert(key, stored.clone());
                stored
            }
        };
        // Other deliveries' writes not committed yet, then this one's own,
        // in the order they were made (applying one twice changes nothing).
        let others: Vec<Reflection> = match &self.in_flight {
            Some(in_flight) => in_flight
                .lock()
                .get(&(
                    self.connection.clone(),
                    source.to_string(),
                    customer_id.to_string(),
                ))
                .map(|entries| {
                    entries
                        .iter()
                        .filter(|(id, _)| *id != self.id)
                        .map(|(_, r)| r.clone())
                        .collect()
                })
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mine: Vec<Reflection> = self
            .intents
            .iter()
            .filter_map(|i| match i {
                Intent::Reflect {
                    source: s,
                    customer_id: c,
                    values,
                    learnt_at,
                    applied_at,
                } if s == source && c == customer_id => Some(Reflection {
                    values: values.clone(),
                    learnt_at: *learnt_at,
                    applied_at: *applied_at,
                }),
                _ => None,
            })
            .collect();
        if others.is_empty() && mine.is_empty() {
            return Ok(stored);
        }
        let mut record = stored.unwrap_or_default();
        let now = now_ms();
        for r in others.iter().chain(&mine) {
            sync::apply_reflection(&mut record, &r.values, r.learnt_at, r.applied_at, now);
        }
        Ok(Some(record))
    }

    fn reads(&self) -> std::sync::MutexGuard<'_, Reads> {
        match self.reads.lock() {
            Ok(reads) => reads,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// A row key: (connection, source or target, customer or record id).
type RowKey = (String, String, String);

fn borrowed(keys: &[RowKey]) -> Vec<(&str, &str, &str)> {
    keys.iter()
        .map(|(c, o, i)| (c.as_str(), o.as_str(), i.as_str()))
        .collect()
}

/// Writes journals inside `tx`, in order, with a few statements for the
/// whole group instead of several per journal: the rows the journals
/// update (mirrors, target records) are read in one statement each, the
/// journals' writes are applied to them in memory in the order they were
/// made, and each table is written once. Links, deferrals and run
/// summaries, rare, keep a statement each.
///
/// A journal whose event is no longer claimed by this process (its lease
/// lapsed while the process stalled, and another took the event over) is
/// left out: the event is the other process's now, and its outcome, log and
/// mirror are for that process to write. Answers, by journal, whether it
/// was left out.
async fn apply_all(journals: &[&Journal], tx: &mut WriteTx) -> Result<Vec<bool>, StoreError> {
    let claimed: Vec<i64> = journals
        .iter()
        .filter_map(|j| j.finish.as_ref().map(|(id, _)| *id))
        .collect();
    let still = tx.still_claimed(&claimed).await?;
    let left_out: Vec<bool> = journals
        .iter()
        .map(|j| j.finish.as_ref().is_some_and(|(id, _)| !still.contains(id)))
        .collect();
    let kept: Vec<&Journal> = journals
        .iter()
        .zip(&left_out)
        .filter(|(_, out)| !**out)
        .map(|(j, _)| *j)
        .collect();
    apply_kept(&kept, tx).await?;
    Ok(left_out)
}

/// Writes journals whose events are still this process's (see [`apply_all`]).
async fn apply_kept(journals: &[&Journal], tx: &mut WriteTx) -> Result<(), StoreError> {
    let now = now_ms();
    let key = |connection: &str, of: &str, id: &str| -> RowKey {
        (connection.to_string(), of.to_string(), id.to_string())
    };
    let mut mirror_keys: Vec<RowKey> = Vec::new();
    let mut record_keys: Vec<RowKey> = Vec::new();
    for journal in journals {
        let connection = journal.connection.as_str();
        for intent in &journal.intents {
            match intent {
                Intent::Reflect {
                    source,
                    customer_id,
                    ..
                } => mirror_keys.push(key(connection, source, customer_id)),
                Intent::Mirror {
                    source,
                    customer_id,
                    describes,
                    ..
                } => {
                    mirror_keys.push(key(connection, source, customer_id));
                    if let Some(described) = describes {
                        record_keys.push(key(connection, described, customer_id));
                    }
                }
                Intent::Remember {
                    target, target_id, ..
                } => record_keys.push(key(connection, target, target_id)),
                Intent::Log(_) | Intent::Link { .. } | Intent::Settled { .. } => {}
            }
        }
    }
    for keys in [&mut mirror_keys, &mut record_keys] {
        keys.sort();
        keys.dedup();
    }
    let mut mirrors = if mirror_keys.is_empty() {
        HashMap::new()
    } else {
        tx.mirrors(&borrowed(&mirror_keys)).await?
    };
    let mut records = if record_keys.is_empty() {
        HashMap::new()
    } else {
        tx.target_records(&borrowed(&record_keys)).await?
    };
    // Rows this group changed, with the event that last brought a mirror values.
    let mut mirrors_changed: HashMap<RowKey, Option<i64>> = HashMap::new();
    let mut records_changed: Vec<RowKey> = Vec::new();
    let mut logs: Vec<&SyncLogEntry> = Vec::new();
    let mut ends: Vec<(i64, EventState, i64, Option<&str>)> = Vec::new();
    for journal in journals {
        let connection = journal.connection.as_str();
        for intent in &journal.intents {
            match intent {
                Intent::Log(entry) => logs.push(entry),
                Intent::Link {
                    source,
                    source_id,
                    target,
                    target_id,
                    keep,
                } => {
                    tx.put_link(connection, (source, source_id), (target, target_id), *keep)
                        .await?
                }
                Intent::Settled { event_row, step } => tx.settle_send(*event_row, step).await?,
                Intent::Remember {
                    target,
                    target_id,
                    fields,
                } => {
                    let row = key(connection, target, target_id);
                    let known = records.entry(row.clone()).or_default();
                    known.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                    records_changed.push(row);
                }
                Intent::Reflect {
                    source,
                    customer_id,
                    values,
                    learnt_at,
                    applied_at,
                } => {
                    let row = key(connection, source, customer_id);
                    let record = mirrors.entry(row.clone()).or_default();
                    sync::apply_reflection(record, values, *learnt_at, *applied_at, now);
                    mirrors_changed.entry(row).or_insert(None);
                }
                Intent::Mirror {
                    source,
                    customer_id,
                    values,
                    occurred_at,
                    event_row,
                    describes,
                } => {
                    let row = key(connection, source, customer_id);
                    let record = mirrors.entry(row.clone()).or_default();
                    let stale = sync::apply_event(record, values, *occurred_at, now);
                    mirrors_changed.insert(row, Some(*event_row));
                    if !stale.is_empty() {
                        tracing::info!(event = event_row, customer = %customer_id, fields = ?stale, "older than the mirror's values; kept the newer ones");
                    }
                    // What the target says its record holds beats what the engine remembers writing.
                    if let Some(described) = describes {
                        let taken = values
                            .iter()
                            .filter(|(name, _)| !stale.contains(name))
                            .map(|(k, v)| (k.clone(), v.clone()));
                        let row = key(connection, described, customer_id);
                        let known = records.entry(row.clone()).or_default();
                        let mut took = false;
                        for (k, v) in taken {
                            known.insert(k, v);
                            took = true;
                        }
                        if took {
                            records_changed.push(row);
                        }
                    }
                }
            }
        }
        match &journal.finish {
            Some((
                id,
                Finish::State {
                    state,
                    next_attempt_at,
                    error,
                },
            )) => ends.push((*id, *state, *next_attempt_at, error.as_deref())),
            Some((id, Finish::Defer { until, reason })) => tx.defer(*id, *until, reason).await?,
            None => {}
        }
        if let Some(run) = &journal.run {
            tx.record_run(run).await?;
        }
    }
    if !logs.is_empty() {
        tx.log_all(&logs).await?;
    }
    let mut changed: Vec<(&RowKey, Option<i64>)> =
        mirrors_changed.iter().map(|(k, row)| (k, *row)).collect();
    changed.sort();
    let mirror_rows: Vec<_> = changed
        .iter()
        .filter_map(|(k, event_row)| {
            let record = mirrors.get(*k)?;
            Some((
                (k.0.as_str(), k.1.as_str(), k.2.as_str()),
                record,
                *event_row,
            ))
        })
        .collect();
    if !mirror_rows.is_empty() {
        tx.put_mirrors(&mirror_rows).await?;
    }
    records_changed.sort();
    records_changed.dedup();
    let record_rows: Vec<_> = records_changed
        .iter()
        .filter_map(|k| {
            let fields = records.get(k)?;
            Some(((k.0.as_str(), k.1.as_str(), k.2.as_str()), fields))
        })
        .collect();
    if !record_rows.is_empty() {
        tx.put_target_records(&record_rows).await?;
    }
    if !ends.is_empty() {
        tx.finish_all(&ends).await?;
    }
    Ok(())
}

type Pending = (Journal, Option<oneshot::Sender<Result<(), StoreError>>>);

/// Commits journals, several to a transaction when several are waiting.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Pending>,
}

/// How long a run summary waits for a delivery's journal to join.
const SUMMARY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Journals in one transaction at most: a bigger group holds SQLite's
/// writer lock longer than a webhook's insert should wait for it.
const MAX_GROUP: usize = 64;

impl Writer {
    /// Starts the writer task over `store`.
    pub fn start(store: Store) -> Writer {
        let (tx, mut rx) = mpsc::channel::<Pending>(1024);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                // Nobody waits for a run summary: it joins the next
                // delivery's transaction rather than pay for one of its own,
                // unless none comes for a while.
                if group.iter().all(|(_, done)| done.is_none())
                    && let Ok(Some(next)) = tokio::time::timeout(SUMMARY_WAIT, rx.recv()).await
                {
                    group.push(next);
                }
                commit_group(&store, group).await;
            }
        });
        Writer { tx }
    }

    /// Writes a journal and waits until it is committed.
    pub async fn commit(&self, journal: Journal) -> Result<(), StoreError> {
        if journal.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        self.tx
            .send((journal, Some(done)))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Writes a journal nobody waits for (a batch's run summary): it joins
    /// the next group instead of paying a transaction of its own.
    pub fn commit_later(&self, journal: Journal) {
        if let Err(e) = self.tx.try_send((journal, None)) {
            tracing::warn!(error = %e, "the journal writer is saturated; a run summary is not recorded");
        }
    }
}

/// Commits a group in one transaction; when that fails, each journal alone,
/// so one bad journal does not fail the others.
async fn commit_group(store: &Store, group: Vec<Pending>) {
    if group.len() > 1 {
        let together = async {
            let mut tx = store.begin_write().await?;
            let journals: Vec<&Journal> = group.iter().map(|(journal, _)| journal).collect();
            let left_out = apply_all(&journals, &mut tx).await?;
            tx.commit().await.map(|()| left_out)
        };
        match together.await {
            Ok(left_out) => {
                for ((journal, done), out) in group.into_iter().zip(left_out) {
                    answer(done, written_or_lost(&journal, out));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, journals = group.len(), "a group of journals failed; writing them one by one")
            }
        }
    }
    for (journal, done) in group {
        let alone = async {
            let mut tx = store.begin_write().await?;
            let left_out = apply_all(&[&journal], &mut tx).await?;
            tx.commit().await?;
            written_or_lost(&journal, left_out.first().copied().unwrap_or(false))
        };
        answer(done, alone.await);
    }
}

/// A journal's result: written, or left out because its event's lease was lost.
fn written_or_lost(journal: &Journal, left_out: bool) -> Result<(), StoreError> {
    match (&journal.finish, left_out) {
        (Some((id, _)), true) => Err(StoreError::LeaseLost(*id)),
        _ => Ok(()),
    }
}

/// Tells the waiting delivery, if any, how its journal went.
fn answer(done: Option<oneshot::Sender<Result<(), StoreError>>>, result: Result<(), StoreError>) {
    match done {
        Some(done) => {
            let _ = done.send(result);
        }
        None => {
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot record a run summary");
            }
        }
    }
}
