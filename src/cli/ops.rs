//! `mapper status`, `mapper log` and `mapper replay`: operating the inbox.

use super::Format;
use crate::store::connections::Connection;
use crate::store::{ConnectionCount, EventState, ReplayFilter, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

/// The states `status` counts, in the order it prints them.
const STATES: [&str; 7] = [
    "received",
    "retrying",
    "delivered",
    "echo",
    "stale",
    "dead",
    "unmapped",
];

/// The connections an operator may name: the stored ones, `default` (the
/// environment's), and any that stored events carry (a removed connection's
/// events stay, and can still be looked at or replayed). Returns the stored
/// connections too, for `status` to show.
async fn known_connections(store: &Store) -> Result<(Vec<Connection>, BTreeSet<String>), ExitCode> {
    let (stored, in_events) = match (store.connections().await, store.event_connections().await) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(1));
        }
    };
    let mut known: BTreeSet<String> = stored.iter().map(|c| c.name.clone()).collect();
    known.insert(crate::store::DEFAULT_CONNECTION.to_string());
    known.extend(in_events);
    Ok((stored, known))
}

/// Refuses (exit 2) a `--connection` naming no known connection: a typo
/// would otherwise show an empty status or replay nothing, silently.
async fn check_connection(
    store: &Store,
    connection: Option<&str>,
) -> Result<Vec<Connection>, ExitCode> {
    let (stored, known) = known_connections(store).await?;
    if let Some(name) = connection
        && !known.contains(name)
    {
        eprintln!(
            "error: unknown connection `{name}`; known connections: {}",
            known.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        return Err(ExitCode::from(2));
    }
    Ok(stored)
}

/// Totals by state of some count rows.
fn totals<'a>(rows: impl Iterator<Item = &'a ConnectionCount> + Clone) -> Vec<(&'static str, i64)> {
    STATES
        .iter()
        .map(|s| {
            let n = rows
                .clone()
                .filter(|c| c.state == *s)
                .map(|c| c.count)
                .sum::<i64>();
            (*s, n)
        })
        .collect()
}

/// A connection as `status` shows it: never its values (secrets).
fn connection_line(c: &Connection) -> String {
    match (c.enabled, &c.disabled_reason) {
        (true, _) => "enabled".to_string(),
        (false, Some(reason)) => format!("disabled: {reason}"),
        (false, None) => "disabled".to_string(),
    }
}

/// Prints counts by state, per connection, source and event, the held
/// writes, the latest errors and the stored connections; only those of
/// `connection` when given.
pub fn status(database: &str, connection: Option<&str>, format: Format) -> ExitCode {
    super::block_on(async {
        let Some(store) = super::open_store(database).await else {
            return ExitCode::from(1);
        };
        let mut stored = match check_connection(&store, connection).await {
            Ok(stored) => stored,
            Err(code) => return code,
        };
        stored.retain(|c| connection.is_none_or(|n| c.name == n));
        let (counts, errors, mut held) = match (
            store.counts_for(connection).await,
            store.last_errors_for(connection, 10).await,
            store.pending_writes().await,
        ) {
            (Ok(c), Ok(e), Ok(h)) => (c, e, h),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        // Held writes are few (one row per record and operation): filtered here.
        held.retain(|w| connection.is_none_or(|n| w.connection == n));
        let now = crate::store::now_ms();
        let all = totals(counts.iter());
        let names: BTreeSet<&str> = counts.iter().map(|c| c.connection.as_str()).collect();
        let by_connection: BTreeMap<&str, Vec<(&'static str, i64)>> = names
            .iter()
            .map(|n| {
                (
                    *n,
                    totals(counts.iter().filter(move |c| c.connection == *n)),
                )
            })
            .collect();
        let state_map = |t: &[(&str, i64)]| {
            t.iter()
                .map(|(s, n)| (s.to_string(), serde_json::Value::from(*n)))
                .collect::<serde_json::Map<_, _>>()
        };
        match format {
            Format::Json => {
                let out = serde_json::json!({
                    "connection": connection,
                    "totals": state_map(&all),
                    "by_connection": by_connection.iter().map(|(n, t)| (n.to_string(), serde_json::Value::Object(state_map(t)))).collect::<serde_json::Map<_, _>>(),
                    "by_event": counts,
                    "connections": stored.iter().map(|c| serde_json::json!({
                        "name": c.name, "enabled": c.enabled, "disabled_reason": c.disabled_reason,
                    })).collect::<Vec<_>>(),
                    "last_errors": errors.iter().map(|e| serde_json::json!({
                        "id": e.id, "connection": e.connection, "source": e.source,
                        "event": e.event_type, "state": e.state, "error": e.error
                    })).collect::<Vec<_>>(),
                    "held_writes": held.iter().map(|w| serde_json::json!({
                        "id": w.id, "connection": w.connection, "target": w.target, "record": w.record_id, "op": w.op,
                        "state": w.state, "writes": w.writes, "params": w.params,
                        "mappings": w.mappings, "events": w.event_rows,
                        "due_at": crate::store::format_ms(w.due_at), "attempts": w.attempts,
                        "last_error": w.last_error,
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            }
            Format::Text => {
                let line = |t: &[(&str, i64)]| {
                    t.iter()
                        .map(|(s, n)| format!("{s}: {n}"))
                        .collect::<Vec<_>>()
                        .join("  ")
                };
                if let Some(name) = connection {
                    println!("connection {name}");
                }
                println!("{}", line(&all));
                // One connection (the usual single-location deployment, or
                // --connection) prints as it always did; several get a line
                // each and a column.
                let several = names.len() > 1;
                if several {
                    println!("\nper connection:");
                    for (name, t) in &by_connection {
                        println!("  {name:<14} {}", line(t));
                    }
                }
                if !stored.is_empty() {
                    println!("\nconnections:");
                    for c in &stored {
                        println!("  {:<14} {}", c.name, connection_line(c));
                    }
                }
                if !counts.is_empty() {
                    let prefix = |c: &str| {
                        if several {
                            format!("{c:<14} ")
                        } else {
                            String::new()
                        }
                    };
                    println!(
                        "\n{}{:<14} {:<40} {:<10} {:>8}",
                        prefix("CONNECTION"),
                        "SOURCE",
                        "EVENT",
                        "STATE",
                        "COUNT"
                    );
                    for c in &counts {
                        println!(
                            "{}{:<14} {:<40} {:<10} {:>8}",
                            prefix(&c.connection),
                            c.source,
                            c.event_type,
                            c.state,
                            c.count
                        );
                    }
                }
                if !held.is_empty() {
                    let waiting = held.iter().filter(|w| w.state != "failed").count();
                    let writes: i64 = held.iter().map(|w| w.writes).sum();
                    // Beside counts of several connections, say whose each write is.
                    let held_several = several
                        || held
                            .iter()
                            .map(|w| w.connection.as_str())
                            .collect::<BTreeSet<_>>()
                            .len()
                            > 1;
                    let prefix = |c: &str| {
                        if held_several {
                            format!("{c:<14} ")
                        } else {
                            String::new()
                        }
                    };
                    println!(
                        "\nheld writes (coalesced): {waiting} call(s) waiting for {writes} write(s), {} failed",
                        held.len() - waiting
                    );
                    println!(
                        "{}{:<12} {:<24} {:<20} {:<9} {:>6} {:<12} PARAMS",
                        prefix("CONNECTION"),
                        "TARGET",
                        "RECORD",
                        "OP",
                        "STATE",
                        "WRITES",
                        "DUE"
                    );
                    for w in held.iter().take(50) {
                        let due = match w.state.as_str() {
                            "failed" => "-".to_string(),
                            _ if w.due_at <= now => "now".to_string(),
                            _ => format!("in {}s", (w.due_at - now + 999) / 1000),
                        };
                        let mut params = w.params.to_string();
                        if params.chars().count() > 60 {
                            params = params.chars().take(60).collect::<String>() + "…";
                        }
                        println!(
                            "{}{:<12} {:<24} {:<20} {:<9} {:>6} {:<12} {params}",
                            prefix(&w.connection),
                            w.target,
                            w.record_id,
                            w.op,
                            w.state,
                            w.writes,
                            due
                        );
                        if let Some(error) = &w.last_error {
                            println!("{:>12} last error: {error}", "");
                        }
                    }
                    if held.len() > 50 {
                        println!("… and {} more (--format json lists all)", held.len() - 50);
                    }
                }
                if !errors.is_empty() {
                    println!("\nlast errors:");
                    for e in &errors {
                        let of = if several {
                            format!(" [{}]", e.connection)
                        } else {
                            String::new()
                        };
                        println!(
                            "  #{}{of} {} {} ({}): {}",
                            e.id, e.source, e.event_type, e.state, e.error
                        );
                    }
                }
            }
        }
        ExitCode::SUCCESS
    })
}

/// Re-queues dead or unmapped events (only those of `connection` when
/// given) and says how many; with `held`, the held writes that failed instead.
pub fn replay(
    database: &str,
    filter: ReplayFilter,
    connection: Option<&str>,
    held: bool,
) -> ExitCode {
    super::block_on(async {
        let Some(store) = super::open_store(database).await else {
            return ExitCode::from(1);
        };
        if let Err(code) = check_connection(&store, connection).await {
            return code;
        }
        if held {
            return match store.replay_failed_writes_of(connection).await {
                Ok((n, 0)) => {
                    println!("re-queued {n} held write(s)");
                    ExitCode::SUCCESS
                }
                Ok((n, left)) => {
                    println!(
                        "re-queued {n} held write(s); {left} left failed: newer writes of the same record and operation are waiting and go out on their own"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            };
        }
        match store.replay_for(&filter, connection).await {
            Ok(n) => {
                println!("re-queued {n} event(s)");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// A command-line value that cannot be used, with what would be right.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(String);

/// Parses `--state` values.
pub fn parse_state(s: &str) -> Result<EventState, ArgError> {
    match s {
        "dead" => Ok(EventState::Dead),
        "unmapped" => Ok(EventState::Unmapped),
        other => Err(ArgError(format!(
            "`{other}`: replay takes dead or unmapped"
        ))),
    }
}

/// Parses `--since`: RFC 3339, a date, or unix seconds.
pub fn parse_since(s: &str) -> Result<i64, ArgError> {
    crate::template::filters::parse_timestamp_str(s, "UTC")
        .map(|t| t.timestamp_millis())
        .ok_or_else(|| {
            ArgError(format!(
                "`{s}` is not a time (use 2025-03-01, 2025-03-01T10:00:00Z or unix seconds)"
            ))
        })
}

/// Prints the sync log of one event or one customer.
/// Only the attempts made for `connection` when given: a source's customer
/// id may exist in two tenants.
pub fn log(
    database: &str,
    event: Option<i64>,
    customer: Option<&str>,
    connection: Option<&str>,
    format: Format,
) -> ExitCode {
    if event.is_none() && customer.is_none() {
        eprintln!("error: give --event ID or --customer ID");
        return ExitCode::from(2);
    }
    super::block_on(async {
        let Some(store) = super::open_store(database).await else {
            return ExitCode::from(1);
        };
        if let Err(code) = check_connection(&store, connection).await {
            return code;
        }
        // A source customer id also shows the attempts made for its linked records.
        let mut views = match customer {
            Some(id) => store.customer_views(id).await.unwrap_or_default(),
            None => Vec::new(),
        };
        views.retain(|v| connection.is_none_or(|n| v.connection == n));
        let mut ids: Vec<&str> = customer.into_iter().collect();
        for v in &views {
            for (_, target_id) in &v.links {
                if !ids.contains(&target_id.as_str()) {
                    ids.push(target_id);
                }
            }
        }
        let mut result = Ok(Vec::new());
        if customer.is_none() {
            result = store.sync_log_for(event, None, connection).await;
        }
        for id in &ids {
            match (
                &mut result,
                store.sync_log_for(event, Some(id), connection).await,
            ) {
                (Ok(all), Ok(more)) => all.extend(more),
                (_, Err(e)) => result = Err(e),
                _ => {}
            }
        }
        if let Ok(all) = &mut result {
            all.sort_by_key(|e| e.event_row);
        }
        // The same id in two connections is two customers: when the output
        // mixes connections, each line says whose it is.
        let mut seen: BTreeSet<&str> = views.iter().map(|v| v.connection.as_str()).collect();
        if let Ok(entries) = &result {
            seen.extend(entries.iter().map(|e| e.connection.as_str()));
        }
        let several = seen.len() > 1;
        let tag = |c: &str, before: &str| {
            if several {
                format!("{before}{c}")
            } else {
                String::new()
            }
        };
        if format == Format::Text {
            for v in &views {
                let links: Vec<String> =
                    v.links.iter().map(|(t, id)| format!("{t} {id}")).collect();
                println!(
                    "customer {} of {}{}: linked to {}",
                    v.customer_id,
                    v.source,
                    tag(&v.connection, " in connection "),
                    if links.is_empty() {
                        "nothing yet".to_string()
                    } else {
                        links.join(", ")
                    }
                );
                if let Some(m) = &v.mirror {
                    let activity = m
                        .last_activity
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into());
                    println!("  last activity {activity}");
                    for (name, value) in &m.fields {
                        println!("  {name}: {value}");
                    }
                }
            }
        }
        match result {
            Ok(entries) => {
                match format {
                    Format::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&entries).unwrap_or_default()
                    ),
                    Format::Text => {
                        if entries.is_empty() {
                            println!("no attempts recorded");
                        }
                        for e in &entries {
                            let status = e
                                .status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into());
                            println!(
                                "#{}{} attempt {} {} {} → {} [{}] {}{}",
                                e.event_row,
                                tag(&e.connection, " connection "),
                                e.attempt,
                                e.mapping,
                                e.action,
                                e.target,
                                status,
                                e.request,
                                e.error
                                    .as_ref()
                                    .map(|x| format!("\n    error: {x}"))
                                    .unwrap_or_default()
                            );
                        }
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}
