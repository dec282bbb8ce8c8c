//! `mapper status` and `mapper replay`: operating the inbox.

use super::Format;
use crate::store::{EventState, ReplayFilter};
use std::process::ExitCode;

/// Prints counts by state, per source and event, and the latest errors.
pub fn status(database: &str, format: Format) -> ExitCode {
    super::block_on(async {
        let Some(store) = super::open_store(database).await else {
            return ExitCode::from(1);
        };
        let (counts, errors, held) = match (
            store.counts().await,
            store.last_errors(10).await,
            store.pending_writes().await,
        ) {
            (Ok(c), Ok(e), Ok(h)) => (c, e, h),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        let now = crate::store::now_ms();
        let states = [
            "received",
            "retrying",
            "delivered",
            "echo",
            "stale",
            "dead",
            "unmapped",
        ];
        let total = |state: &str| {
            counts
                .iter()
                .filter(|c| c.state == state)
                .map(|c| c.count)
                .sum::<i64>()
        };
        match format {
            Format::Json => {
                let out = serde_json::json!({
                    "totals": states.iter().map(|s| (s.to_string(), serde_json::Value::from(total(s)))).collect::<serde_json::Map<_, _>>(),
                    "by_event": counts,
                    "last_errors": errors.iter().map(|(id, source, event, state, error)| serde_json::json!({
                        "id": id, "source": source, "event": event, "state": state, "error": error
                    })).collect::<Vec<_>>(),
                    "held_writes": held.iter().map(|w| serde_json::json!({
                        "id": w.id, "target": w.target, "record": w.record_id, "op": w.op,
                        "state": w.state, "writes": w.writes, "params": w.params,
                        "mappings": w.mappings, "events": w.event_rows,
                        "due_at": crate::store::format_ms(w.due_at), "attempts": w.attempts,
                        "last_error": w.last_error,
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            }
            Format::Text => {
                println!(
                    "{}",
                    states
                        .iter()
                        .map(|s| format!("{s}: {}", total(s)))
                        .collect::<Vec<_>>()
                        .join("  ")
                );
                if !counts.is_empty() {
                    println!(
                        "\n{:<14} {:<40} {:<10} {:>8}",
                        "SOURCE", "EVENT", "STATE", "COUNT"
                    );
                    for c in &counts {
                        println!(
                            "{:<14} {:<40} {:<10} {:>8}",
                            c.source, c.event_type, c.state, c.count
                        );
                    }
                }
                if !held.is_empty() {
                    let waiting = held.iter().filter(|w| w.state != "failed").count();
                    let writes: i64 = held.iter().map(|w| w.writes).sum();
                    println!(
                        "\nheld writes (coalesced): {waiting} call(s) waiting for {writes} write(s), {} failed",
                        held.len() - waiting
                    );
                    println!(
                        "{:<12} {:<24} {:<20} {:<9} {:>6} {:<12} PARAMS",
                        "TARGET", "RECORD", "OP", "STATE", "WRITES", "DUE"
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
                            "{:<12} {:<24} {:<20} {:<9} {:>6} {:<12} {params}",
                            w.target, w.record_id, w.op, w.state, w.writes, due
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
                    for (id, source, event, state, error) in &errors {
                        println!("  #{id} {source} {event} ({state}): {error}");
                    }
                }
            }
        }
        ExitCode::SUCCESS
    })
}

/// Re-queues dead or unmapped events and says how many; with `held`,
/// the held writes that failed instead.
pub fn replay(database: &str, filter: ReplayFilter, held: bool) -> ExitCode {
    super::block_on(async {
        let Some(store) = super::open_store(database).await else {
            return ExitCode::from(1);
        };
        if held {
            return match store.replay_failed_writes().await {
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
        match store.replay(&filter).await {
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
pub fn log(database: &str, event: Option<i64>, customer: Option<&str>, format: Format) -> ExitCode {
    if event.is_none() && customer.is_none() {
        eprintln!("error: give --event ID or --customer ID");
        return ExitCode::from(2);
    }
    super::block_on(async {
        let Some(store) = super::open_store(database).await else {
            return ExitCode::from(1);
        };
        // A source customer id also shows the attempts made for its linked records.
        let views = match customer {
            Some(id) => store.customer_views(id).await.unwrap_or_default(),
            None => Vec::new(),
        };
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
            result = store.sync_log(event, None).await;
        }
        for id in &ids {
            match (&mut result, store.sync_log(event, Some(id)).await) {
                (Ok(all), Ok(more)) => all.extend(more),
                (_, Err(e)) => result = Err(e),
                _ => {}
            }
        }
        if let Ok(all) = &mut result {
            all.sort_by_key(|e| e.event_row);
        }
        if format == Format::Text {
            for v in &views {
                let links: Vec<String> =
                    v.links.iter().map(|(t, id)| format!("{t} {id}")).collect();
                println!(
                    "customer {} of {}: linked to {}",
                    v.customer_id,
                    v.source,
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
                                "#{} attempt {} {} {} → {} [{}] {}{}",
                                e.event_row,
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
