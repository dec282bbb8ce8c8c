//! `mapper resync`: rebuilds a target from the mirror of a source, or
//! imports a customer export and syncs it.
//!
//! Each customer becomes one `CustomerSnapshot` event of the built-in
//! `resync` source (its values, and what mapper knows the linked record on
//! the target holds), stored in the inbox a batch per transaction and
//! delivered by the worker and executor `serve` uses: the mappings decide
//! what to write, the target profile's rate limit paces it, failures are
//! retried and every attempt is in the sync log. A snapshot's
//! de-duplication key is its run and customer, so running a run again stores
//! nothing twice: what was delivered stays delivered, and the command waits
//! for the rest.

mod import;

pub use import::ImportFormat;

use crate::app::{App, AppConfig};
use crate::engine::plan::PlanInput;
use crate::program::Program;
use crate::store::resync::{RESYNC_SOURCE, ResyncRun, SnapshotOutcome, snapshot_key};
use crate::store::{DEFAULT_CONNECTION, EventState, Inserted, NewEvent, Store, StoreError, now_ms};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The event every snapshot is.
const SNAPSHOT_EVENT: &str = "CustomerSnapshot";
/// Snapshots stored per transaction.
const BATCH: usize = 500;
/// Failures listed at the end; the rest are counted.
const SHOWN_FAILURES: usize = 20;

/// Options of `mapper resync`.
pub struct ResyncOptions<'a> {
    /// The target to write to.
    pub target: &'a str,
    /// Rebuild from the mirror of this source…
    pub from_mirror: Option<&'a str>,
    /// …or import this export, whose fields are mirror names of `source`.
    pub import: Option<&'a Path>,
    /// How the export is written (default: from its extension).
    pub format: Option<ImportFormat>,
    /// The source whose mirror names the export uses.
    pub source: Option<&'a str>,
    /// Run name: continued when it exists.
    pub run: Option<&'a str>,
    /// Send every value, whatever the target is known to hold.
    pub force: bool,
    /// Forget the customers' links to the target first (its records are
    /// gone): they are matched again by their keys. Implies `force`.
    pub relink: bool,
    /// Only the first N customers (rows of an export).
    pub limit: Option<usize>,
    /// The mapping folder.
    pub mappings: &'a Path,
    /// The database URL.
    pub database: &'a str,
    /// Snapshots delivered at once.
    pub workers: usize,
}

/// One customer to snapshot.
struct Customer {
    /// The export line it comes from.
    line: Option<usize>,
    id: String,
    fields: Map<String, Value>,
}

/// Where a run stands, by the summary's categories.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    created: usize,
    updated: usize,
    unchanged: usize,
    failed: usize,
    /// Not in a final state yet.
    pending: usize,
    /// Of the pending, those waiting for a retry.
    retrying: usize,
}

impl Tally {
    fn of(outcomes: &[SnapshotOutcome]) -> Tally {
        let mut t = Tally::default();
        for o in outcomes {
            match o.state.as_str() {
                "delivered" | "echo" | "stale" if o.created => t.created += 1,
                "delivered" | "echo" | "stale" if o.called => t.updated += 1,
                "delivered" | "echo" | "stale" => t.unchanged += 1,
                // Nothing handles it (the mappings changed since it was stored): not synced.
                "dead" | "unmapped" => t.failed += 1,
                "retrying" => {
                    t.pending += 1;
                    t.retrying += 1;
                }
                _ => t.pending += 1,
            }
        }
        t
    }

    fn done(&self) -> usize {
        self.created + self.updated + self.unchanged + self.failed
    }

    fn summary(&self, bad_lines: usize) -> String {
        let mut s = format!(
            "created {}, updated {}, unchanged {}, failed {}",
            self.created,
            self.updated,
            self.unchanged,
            self.failed + bad_lines
        );
        if self.pending > 0 {
            s.push_str(&format!(", pending {}", self.pending));
        }
        s
    }
}

/// Runs `mapper resync`; exit 0 when every customer synced, 1 when some
/// failed (or the run cannot start), 2 for usage, 130 when interrupted.
pub fn run(opts: ResyncOptions) -> ExitCode {
    let bar = ProgressBar::new(0);
    bar.set_style(
        // `wide_msg` takes what the terminal has left, so the bar stays one line.
        ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:24}] {pos}/{len} {elapsed} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    init_logging(&bar);
    super::block_on(resync(opts, bar))
}

/// Logs to stderr above the progress bar (`RUST_LOG`; default: warnings,
/// which include every retry, and errors).
fn init_logging(bar: &ProgressBar) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error"));
    let bar = bar.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(move || AboveBar(bar.clone()))
        .try_init();
}

/// Writes to stderr with the progress bar out of the way.
struct AboveBar(ProgressBar);

impl std::io::Write for AboveBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Prints a line to stderr without tearing the progress bar.
fn say(bar: &ProgressBar, line: impl std::fmt::Display) {
    bar.suspend(|| eprintln!("{line}"));
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn failure(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

/// A run name is part of every snapshot's key (`<run>/<customer>`): no `/`.
fn valid_run_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 100
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

async fn resync(opts: ResyncOptions<'_>, bar: ProgressBar) -> ExitCode {
    if let Some(name) = opts.run
        && !valid_run_name(name)
    {
        return usage(format!(
            "`{name}` cannot name a run: use letters, digits, `.`, `_` and `-` (100 at most), starting with a letter or digit"
        ));
    }
    let Some(program) = super::serve::load_program(opts.mappings, "resync") else {
        return ExitCode::from(1);
    };
    let target = opts.target;
    let (source_name, importing) = match check_command(&opts, &program) {
        Ok(checked) => checked,
        Err(code) => return code,
    };

    // The customers, and the export lines that are none.
    let mut bad_lines = Vec::new();
    let (customers, origin) = match importing {
        Some(path) => {
            let customers = match read_export(path, &opts, &program, source_name, &mut bad_lines) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let file = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            (customers, format!("import:{}", file.display()))
        }
        None => (Vec::new(), "mirror".to_string()),
    };
    let Some(store) = super::open_store(opts.database).await else {
        return ExitCode::from(1);
    };
    let customers = if importing.is_none() {
        match store.mirrors_of(DEFAULT_CONNECTION, source_name).await {
            Ok(mirrors) => mirrors
                .into_iter()
                .take(opts.limit.unwrap_or(usize::MAX))
                .map(|(id, m)| Customer {
                    line: None,
                    id,
                    fields: m.fields,
                })
                .collect(),
            Err(e) => return failure(e),
        }
    } else {
        customers
    };

    let run = match choose_run(&store, opts.run, target, source_name, &origin).await {
        Ok(r) => r,
        Err(code) => return code,
    };

    // Snapshots of the customers the run has not stored yet.
    let stored = match store.resync_customers(DEFAULT_CONNECTION, &run.name).await {
        Ok(s) => s,
        Err(e) => return failure(e),
    };
    let fresh: Vec<&Customer> = customers
        .iter()
        .filter(|c| !stored.contains(&c.id))
        .collect();
    let forced = opts.force || opts.relink;
    let events = match snapshots(&store, &program, &run, &fresh, forced, opts.relink).await {
        Ok(e) => e,
        Err(e) => return failure(e),
    };
    if let Err(message) = check_mappings_fire(&program, target, source_name, &events) {
        return usage(message);
    }
    if let Err(e) = store.begin_resync_run(DEFAULT_CONNECTION, &run).await {
        return failure(e);
    }
    match store_snapshots(&store, &run, &fresh, &events, opts.relink, &bar).await {
        Ok((new, again)) if new + again > 0 || !stored.is_empty() => say(
            &bar,
            format!(
                "resync: {new} snapshot(s) stored{}",
                if stored.is_empty() && again == 0 {
                    String::new()
                } else {
                    format!(", {} already in the run", stored.len() + again)
                }
            ),
        ),
        Ok(_) => say(
            &bar,
            format!(
                "resync: no customer to sync{}",
                if importing.is_none() {
                    format!(" (the mirror of `{source_name}` is empty)")
                } else {
                    String::new()
                }
            ),
        ),
        Err(e) => return failure(e),
    }
    match store
        .requeue_dead_snapshots(DEFAULT_CONNECTION, &run.name)
        .await
    {
        Ok(0) => {}
        Ok(n) => say(
            &bar,
            format!("resync: {n} snapshot(s) that had failed are tried again"),
        ),
        Err(e) => return failure(e),
    }

    let (tally, interrupted) = match deliver(&store, program, &run, opts.workers, &bar).await {
        Ok(t) => t,
        Err(e) => return failure(e),
    };
    let outcomes = store
        .resync_outcomes(DEFAULT_CONNECTION, &run.name)
        .await
        .unwrap_or_default();
    report_failures(&outcomes, &bad_lines);
    eprintln!(
        "resync run {}: {} customer(s) of `{}` → `{}`",
        run.name,
        tally.done() + tally.pending + bad_lines.len(),
        run.source,
        run.target
    );
    println!("{}", tally.summary(bad_lines.len()));
    if interrupted {
        eprintln!(
            "resync: interrupted with {} snapshot(s) not delivered yet; `mapper resync … --run {}` (or the same command) continues it",
            tally.pending, run.name
        );
        return ExitCode::from(130);
    }
    if let Err(e) = store.finish_resync_run(DEFAULT_CONNECTION, &run.name).await {
        tracing::warn!(error = %e, "cannot record that the run is finished; the same command will look at it again");
    }
    if tally.failed + bad_lines.len() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Refuses a command that cannot run: an unknown target or source, no
/// mapping for snapshots on the target, a target variable unset. Gives the
/// source and the export file, if one is imported.
fn check_command<'a>(
    opts: &ResyncOptions<'a>,
    program: &Program,
) -> Result<(&'a str, Option<&'a Path>), ExitCode> {
    let target = opts.target;
    let Some(target_profile) = program.targets.get(target) else {
        return Err(usage(format!(
            "unknown target `{target}`; the mapping folder defines {}",
            names(program.targets.keys())
        )));
    };
    if !program.sources.contains_key(RESYNC_SOURCE) {
        return Err(usage(format!(
            "the mapping folder has no `{RESYNC_SOURCE}` source: add mappings/sources/{RESYNC_SOURCE}.yaml (`verify: {{method: internal}}`) and schemas/events/{RESYNC_SOURCE}/{SNAPSHOT_EVENT}.schema.json"
        )));
    }
    let handled_targets: Vec<String> = program
        .by_event
        .get(&(RESYNC_SOURCE.to_string(), SNAPSHOT_EVENT.to_string()))
        .into_iter()
        .flatten()
        .filter_map(|&i| program.mappings.get(i).map(|m| m.target.clone()))
        .collect();
    if !handled_targets.iter().any(|t| t == target) {
        return Err(usage(format!(
            "no mapping handles `{RESYNC_SOURCE}` / {SNAPSHOT_EVENT} for target `{target}`{}; add one (see mappings/resync-ghl/)",
            if handled_targets.is_empty() {
                String::new()
            } else {
                format!(
                    " (they write to {})",
                    names(handled_targets.iter().collect::<HashSet<_>>())
                )
            }
        )));
    }
    let (source_name, importing) = match (opts.from_mirror, opts.import, opts.source) {
        (Some(s), None, _) => (s, None),
        (None, Some(file), Some(s)) => (s, Some(file)),
        (None, Some(_), None) => {
            return Err(usage(
                "--import needs --source: the source whose mirror names the file uses",
            ));
        }
        _ => {
            return Err(usage(
                "give either --from-mirror SOURCE or --import FILE --source SOURCE",
            ));
        }
    };
    let Some(source) = program.sources.get(source_name) else {
        return Err(usage(format!(
            "unknown source `{source_name}`; the mapping folder defines {}",
            names(
                program
                    .sources
                    .values()
                    .filter(|s| s.verify.method != crate::config::model::VerifyMethod::Internal)
                    .map(|s| &s.name)
            )
        )));
    };
    if source.verify.method == crate::config::model::VerifyMethod::Internal {
        return Err(usage(format!(
            "`{source_name}` holds mapper's own events, not customers"
        )));
    }
    if importing.is_none() && source.mirror.is_empty() {
        return Err(usage(format!(
            "source `{source_name}` keeps no mirror (declare `mirror:` in its source file), so there is nothing to rebuild from"
        )));
    }
    let unset: Vec<&String> = target_profile
        .env
        .iter()
        .filter(|(name, decl)| {
            decl.default.is_none() && std::env::var(name.as_str()).map_or(true, |v| v.is_empty())
        })
        .map(|(name, _)| name)
        .collect();
    if !unset.is_empty() {
        return Err(usage(format!(
            "target `{target}` needs {} (unset)",
            unset
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    Ok((source_name, importing))
}

/// The run to go on with: the one named, else an interrupted one of the
/// same command, else a new one (not stored until its snapshots are).
async fn choose_run(
    store: &Store,
    named: Option<&str>,
    target: &str,
    source_name: &str,
    origin: &str,
) -> Result<ResyncRun, ExitCode> {
    let existing = match named {
        Some(name) => store.resync_run(DEFAULT_CONNECTION, name).await,
        None => {
            store
                .unfinished_resync_run(DEFAULT_CONNECTION, target, source_name, origin)
                .await
        }
    };
    let existing = existing.map_err(failure)?;
    if let Some(run) = &existing
        && (run.target != target
            || run.source != source_name
            || run.origin.starts_with("import:") != origin.starts_with("import:"))
    {
        return Err(usage(format!(
            "run `{}` writes {} customers ({}) to `{}`; name this one otherwise",
            run.name, run.source, run.origin, run.target
        )));
    }
    if let Some(run) = existing {
        eprintln!(
            "resync: continuing run {} (started {})",
            run.name,
            rfc3339(run.started_at)
        );
        return Ok(run);
    }
    let started_at = now_ms();
    let name = match named {
        Some(n) => n.to_string(),
        None => fresh_run_name(store, target, source_name, started_at)
            .await
            .map_err(failure)?,
    };
    eprintln!("resync: run {name}");
    Ok(ResyncRun {
        name,
        target: target.to_string(),
        source: source_name.to_string(),
        origin: origin.to_string(),
        started_at,
        finished_at: None,
    })
}

/// `a`, `b`, … for messages.
fn names<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let mut v: Vec<&str> = items.into_iter().map(String::as_str).collect();
    v.sort_unstable();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// `<target>-from-<source>-<UTC time>`, unused so far.
async fn fresh_run_name(
    store: &Store,
    target: &str,
    source: &str,
    at: i64,
) -> Result<String, StoreError> {
    let stamp = chrono::DateTime::from_timestamp_millis(at)
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| at.to_string());
    let base = format!("{target}-from-{source}-{stamp}");
    let mut name = base.clone();
    let mut n = 1;
    while store.resync_run(DEFAULT_CONNECTION, &name).await?.is_some() {
        n += 1;
        name = format!("{base}-{n}");
    }
    Ok(name)
}

/// The customers of an export file; its broken lines go to `bad_lines`.
fn read_export(
    path: &Path,
    opts: &ResyncOptions<'_>,
    program: &Program,
    source_name: &str,
    bad_lines: &mut Vec<import::BadLine>,
) -> Result<Vec<Customer>, ExitCode> {
    let Some(format) = opts.format.or_else(|| ImportFormat::of_path(path)) else {
        return Err(usage(format!(
            "cannot tell the format of {} from its name: give --format csv or --format jsonl",
            path.display()
        )));
    };
    let bytes =
        std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        usage(format!(
            "{} is not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    let export = import::parse(&text, format, &program.settings.phone_region)
        .map_err(|e| usage(format!("{}: {e}", path.display())))?;
    Ok(exported_customers(
        export,
        program,
        source_name,
        opts.limit,
        bad_lines,
    ))
}

/// The customers of an export, in line order, up to `limit` lines; lines
/// that are not customers go to `bad`.
fn exported_customers(
    export: import::Export,
    program: &Program,
    source: &str,
    limit: Option<usize>,
    bad: &mut Vec<import::BadLine>,
) -> Vec<Customer> {
    let mut lines: Vec<(usize, Result<import::Row, import::BadLine>)> = export
        .rows
        .into_iter()
        .map(|r| (r.line, Ok(r)))
        .chain(export.bad.into_iter().map(|b| (b.line, Err(b))))
        .collect();
    lines.sort_by_key(|(line, _)| *line);
    let mirror: HashSet<&str> = program
        .sources
        .get(source)
        .map(|s| s.mirror.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    let mut unknown: Vec<String> = export
        .columns
        .iter()
        .filter(|c| c.as_str() != "customer_id" && !mirror.contains(c.as_str()))
        .cloned()
        .collect();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (line, entry) in lines.into_iter().take(limit.unwrap_or(usize::MAX)) {
        let row = match entry {
            Ok(row) => row,
            Err(b) => {
                bad.push(b);
                continue;
            }
        };
        if export.columns.is_empty() {
            for name in row.fields.keys() {
                if !mirror.contains(name.as_str()) && !unknown.contains(name) {
                    unknown.push(name.clone());
                }
            }
        }
        if let Some(first) = first_line.get(&row.customer_id) {
            tracing::warn!(
                "line {line}: customer {} is on line {first} too; only that first row is synced",
                row.customer_id
            );
            continue;
        }
        first_line.insert(row.customer_id.clone(), line);
        out.push(Customer {
            line: Some(line),
            id: row.customer_id,
            fields: row.fields,
        });
    }
    if !unknown.is_empty() && !mirror.is_empty() {
        tracing::warn!(
            "{} not a mirror field of `{source}` (mappings read snapshots by mirror name: {}); kept as they are",
            names(&unknown),
            names(
                program
                    .sources
                    .get(source)
                    .into_iter()
                    .flat_map(|s| s.mirror.iter().map(|(n, _)| n))
            )
        );
    }
    out
}

/// The snapshot event of each customer: its values, its links, and (not
/// forced) what is known of the record it is linked to on the target: what
/// the engine remembers of it, overlaid with the mirror of the sources whose
/// webhooks describe that target (their own word on the record, and the
/// engine's writes as the profile reflects them).
async fn snapshots(
    store: &Store,
    program: &Program,
    run: &ResyncRun,
    customers: &[&Customer],
    forced: bool,
    relink: bool,
) -> Result<Vec<NewEvent>, StoreError> {
    let connection = DEFAULT_CONNECTION;
    if customers.is_empty() {
        return Ok(Vec::new());
    }
    let links = store.links_from(connection, &run.source).await?;
    let mut known: HashMap<String, Map<String, Value>> = HashMap::new();
    if !forced {
        known = store.records_of(connection, &run.target).await?;
        for describing in program
            .sources
            .values()
            .filter(|s| s.describes.as_deref() == Some(run.target.as_str()) && !s.mirror.is_empty())
        {
            for (id, mirror) in store.mirrors_of(connection, &describing.name).await? {
                known.entry(id).or_default().extend(mirror.fields);
            }
        }
    }
    let ordering = program.sources.get(&run.source);
    let at = now_ms();
    let origin = if run.origin.starts_with("import:") {
        "import"
    } else {
        "mirror"
    };
    let mut out = Vec::with_capacity(customers.len());
    for c in customers {
        let mut linked: Map<String, Value> = Map::new();
        for (target, id) in links.get(&c.id).into_iter().flatten() {
            if relink && *target == run.target {
                continue;
            }
            linked.insert(target.clone(), Value::String(id.clone()));
        }
        let target_fields = match linked.get(&run.target).and_then(Value::as_str) {
            Some(id) if !forced => known.get(id).cloned().unwrap_or_default(),
            _ => Map::new(),
        };
        let mut body = json!({
            "event": SNAPSHOT_EVENT,
            "run": run.name,
            "origin": origin,
            "target": run.target,
            "source": run.source,
            "customer_id": c.id,
            "at": chrono::DateTime::from_timestamp_millis(at)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "forced": forced,
            "fields": c.fields,
            "target_fields": target_fields,
            "links": linked,
        });
        if let (Some(line), Some(obj)) = (c.line, body.as_object_mut()) {
            obj.insert("line".into(), Value::from(line));
        }
        out.push(NewEvent {
            connection: connection.to_string(),
            source: RESYNC_SOURCE.to_string(),
            event_type: SNAPSHOT_EVENT.to_string(),
            event_id: None,
            dedup_key: snapshot_key(&run.name, &c.id),
            occurred_at: Some(at),
            // In line with the customer's live events of the same source.
            customer_key: Some(match ordering {
                Some(src) => src.ordering_key(&c.id),
                None => format!("{}:{}", run.source, c.id),
            }),
            headers: json!({}),
            body: body.to_string().into_bytes(),
            state: EventState::Received,
            note: None,
        });
    }
    Ok(out)
}

/// Refuses a run whose snapshots no mapping would write to the target, or
/// that a mapping would write to another target. Each snapshot is tried as
/// if nothing were known of the record (some mapping must want to write
/// it), until one fires on the target.
fn check_mappings_fire(
    program: &Program,
    target: &str,
    source: &str,
    events: &[NewEvent],
) -> Result<(), String> {
    let input = PlanInput {
        env: BTreeMap::new(),
        mask_secrets: true,
        known: json!({}),
        previous: None,
    };
    let mut why: Option<String> = None;
    for e in events {
        let Ok(mut payload) = serde_json::from_slice::<Value>(&e.body) else {
            continue;
        };
        if let Some(obj) = payload.as_object_mut() {
            obj.insert("target_fields".into(), json!({}));
        }
        let plan = match program.plan(RESYNC_SOURCE, &payload, &input) {
            Ok(p) => p,
            Err(err) => {
                why.get_or_insert_with(|| err.to_string());
                continue;
            }
        };
        if let Some(other) = plan.mappings.iter().find(|m| m.target != target) {
            return Err(format!(
                "mapping `{}` writes to `{}` for snapshots meant for `{target}`; add `target == '{target}'` to its `when:`",
                other.name, other.target
            ));
        }
        if plan.mappings.iter().any(|m| m.target == target) {
            return Ok(());
        }
        if why.is_none() {
            let reasons: Vec<String> = plan
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.mapping, s.reason))
                .chain(
                    plan.errors
                        .iter()
                        .map(|e| format!("{}: {}", e.mapping, e.error)),
                )
                .collect();
            why = Some(reasons.join("; "));
        }
    }
    match why {
        None => Ok(()),
        Some(why) => Err(format!(
            "no mapping writes a `{source}` customer's snapshot to `{target}` (tried {} snapshot(s); for the first: {why}); the mappings on `{RESYNC_SOURCE}` / {SNAPSHOT_EVENT} say which sources and targets they handle in their `when:`",
            events.len()
        )),
    }
}

/// Stores the snapshots, a transaction per batch; says how many were new
/// and how many the run had already. With `relink`, a customer's link to
/// the target is forgotten before its snapshot is stored, so an interrupted
/// run never delivers a snapshot through a link it meant to drop.
async fn store_snapshots(
    store: &Store,
    run: &ResyncRun,
    customers: &[&Customer],
    events: &[NewEvent],
    relink: bool,
    bar: &ProgressBar,
) -> Result<(usize, usize), StoreError> {
    let (mut new, mut again) = (0, 0);
    if events.is_empty() {
        return Ok((0, 0));
    }
    bar.set_length(events.len() as u64);
    bar.set_position(0);
    bar.set_prefix("storing");
    bar.set_message("");
    for (batch, who) in events.chunks(BATCH).zip(customers.chunks(BATCH)) {
        if relink {
            for c in who {
                store
                    .forget_link(DEFAULT_CONNECTION, &run.source, &c.id, &run.target)
                    .await?;
            }
        }
        for inserted in store.insert_events(batch).await? {
            match inserted {
                Inserted::New(_) => new += 1,
                Inserted::Duplicate(_) => again += 1,
            }
        }
        bar.inc(batch.len() as u64);
    }
    Ok((new, again))
}

/// Delivers the run's snapshots with the worker `serve` uses, until every
/// one is in a final state or the command is interrupted; shows progress.
async fn deliver(
    store: &Store,
    program: Program,
    run: &ResyncRun,
    workers: usize,
    bar: &ProgressBar,
) -> Result<(Tally, bool), StoreError> {
    let outcomes = store.resync_outcomes(DEFAULT_CONNECTION, &run.name).await?;
    let mut tally = Tally::of(&outcomes);
    bar.set_prefix("resync");
    bar.set_length(outcomes.len() as u64);
    bar.set_position(tally.done() as u64);
    if tally.pending == 0 {
        bar.finish_and_clear();
        return Ok((tally, false));
    }
    let mut config = AppConfig::new(program, store.clone());
    config.worker = crate::worker::WorkerConfig {
        concurrency: workers.max(1),
        // A `serve` may be running on this database: what it holds is its own.
        recover_processing: false,
        ..Default::default()
    };
    // One snapshot is one write per customer and operation: holding it back
    // to merge saves nothing, and this process ends when the run does.
    config.coalesce_window = Some(Duration::ZERO);
    let running = match App::start(config).await {
        Ok(running) => running,
        Err(crate::app::StartError::Database(e)) => return Err(e),
        Err(e) => {
            // Delivering only: no listener, watcher or secret can fail.
            tracing::error!(error = %e, "cannot start delivering");
            return Ok((tally, false));
        }
    };
    bar.set_message(progress_message(&tally));
    bar.enable_steady_tick(Duration::from_millis(120));
    let plain = bar.is_hidden();
    let mut said = Instant::now();
    let interrupt = super::serve::shutdown_signal();
    tokio::pin!(interrupt);
    let interrupted = loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = &mut interrupt => break true,
        }
        match store.resync_outcomes(DEFAULT_CONNECTION, &run.name).await {
            Ok(outcomes) => {
                tally = Tally::of(&outcomes);
                bar.set_length(outcomes.len() as u64);
            }
            // The worker goes on; the next look will tell.
            Err(e) => tracing::warn!(error = %e, "cannot read the run's progress"),
        }
        bar.set_position(tally.done() as u64);
        bar.set_message(progress_message(&tally));
        if plain && (said.elapsed() >= Duration::from_secs(5) || tally.pending == 0) {
            say(
                bar,
                format!(
                    "resync {}: {}/{} done, {}",
                    run.name,
                    tally.done(),
                    tally.done() + tally.pending,
                    progress_message(&tally)
                ),
            );
            said = Instant::now();
        }
        if tally.pending == 0 {
            break false;
        }
    };
    bar.disable_steady_tick();
    if interrupted {
        bar.abandon_with_message("interrupted; finishing the deliveries under way");
    } else {
        bar.finish_and_clear();
    }
    // Deliveries under way finish first (30 s at most; then they are
    // retried by the next run or `serve`).
    running.shutdown().await;
    if interrupted {
        // Deliveries under way when it stopped have finished meanwhile.
        if let Ok(outcomes) = store.resync_outcomes(DEFAULT_CONNECTION, &run.name).await {
            tally = Tally::of(&outcomes);
        }
    }
    Ok((tally, interrupted))
}

fn progress_message(t: &Tally) -> String {
    let mut s = format!(
        "{} created · {} updated · {} unchanged · {} failed",
        t.created, t.updated, t.unchanged, t.failed
    );
    if t.retrying > 0 {
        s.push_str(&format!(" · {} retrying", t.retrying));
    }
    s
}

/// Lists what failed: export lines that are not customers, and snapshots that went dead.
fn report_failures(outcomes: &[SnapshotOutcome], bad_lines: &[import::BadLine]) {
    for b in bad_lines.iter().take(SHOWN_FAILURES) {
        eprintln!("failed: line {}: {}", b.line, b.reason);
    }
    if bad_lines.len() > SHOWN_FAILURES {
        eprintln!(
            "failed: … and {} more line(s)",
            bad_lines.len() - SHOWN_FAILURES
        );
    }
    let dead: Vec<&SnapshotOutcome> = outcomes
        .iter()
        .filter(|o| o.state == "dead" || o.state == "unmapped")
        .collect();
    for o in dead.iter().take(SHOWN_FAILURES) {
        eprintln!(
            "failed: customer {} (delivery {}): {}",
            o.customer_id,
            o.id,
            o.last_error
                .as_deref()
                .unwrap_or("no mapping handles it any more")
        );
    }
    if dead.len() > SHOWN_FAILURES {
        eprintln!(
            "failed: … and {} more customer(s) (`mapper status`, `mapper log --event ID`)",
            dead.len() - SHOWN_FAILURES
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(state: &str, created: bool, called: bool) -> SnapshotOutcome {
        SnapshotOutcome {
            id: 1,
            customer_id: "c".into(),
            state: state.into(),
            created,
            called,
            last_error: None,
        }
    }

    #[test]
    fn the_summary_counts_created_updated_unchanged_failed() {
        let t = Tally::of(&[
            outcome("delivered", true, true),
            outcome("delivered", false, true),
            outcome("delivered", false, false),
            outcome("echo", false, false),
            outcome("dead", true, true),
            outcome("retrying", false, false),
            outcome("processing", false, false),
            outcome("received", false, false),
        ]);
        assert_eq!(
            t,
            Tally {
                created: 1,
                updated: 1,
                unchanged: 2,
                failed: 1,
                pending: 3,
                retrying: 1
            }
        );
        assert_eq!(
            t.summary(2),
            "created 1, updated 1, unchanged 2, failed 3, pending 3"
        );
        assert_eq!(
            Tally::default().summary(0),
            "created 0, updated 0, unchanged 0, failed 0"
        );
    }

    #[test]
    fn run_names_cannot_break_the_snapshot_key() {
        assert!(valid_run_name("ghl-from-stickycards-20250310T120000Z"));
        assert!(valid_run_name("march.rebuild_2"));
        assert!(!valid_run_name(""));
        assert!(!valid_run_name("a/b"));
        assert!(!valid_run_name("-x"));
        assert!(!valid_run_name("ünïcode"));
        assert!(!valid_run_name(&"x".repeat(101)));
    }
}
