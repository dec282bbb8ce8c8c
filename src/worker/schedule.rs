//! `schedules:` — rules run on a clock over the customer mirror.
//!
//! Each tick of a rule looks at every mirrored customer of its source and
//! stores events of the built-in `schedule` source in the inbox, where the
//! workers deliver them like webhooks (mappings, retries, sync log, order per
//! customer). The de-duplication key names the rule, the customer and the
//! tick, so several replicas evaluating the same tick store each event once.

use crate::config::compile::SCHEDULE_SOURCE;
use crate::program::{Program, Schedule};
use crate::store::{EventState, NewEvent, Store, StoreError, now_ms};
use crate::targets::Executor;
use crate::template::scope::Scope;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const DAY_MS: i64 = 86_400_000;

/// Runs every rule of the current mapping set once per tick until `shutdown`.
pub async fn run(
    store: Store,
    executor: Arc<arc_swap::ArcSwap<Executor>>,
    connection: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut done: HashMap<String, i64> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let program = executor.load().program().clone();
        for rule in &program.schedules {
            let every = rule.every.as_millis().max(1) as i64;
            let tick = now_ms() / every;
            if done.get(&rule.name) == Some(&tick) {
                continue;
            }
            match run_tick(&store, &program, rule, &connection, tick).await {
                Ok((raised, reset)) => {
                    done.insert(rule.name.clone(), tick);
                    if raised + reset > 0 {
                        tracing::info!(schedule = %rule.name, raised, reset, "schedule tick");
                    }
                }
                Err(e) => {
                    tracing::error!(schedule = %rule.name, error = %e, "schedule tick failed; tried again shortly")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Evaluates one tick of a rule; says how many events it raised and reset.
pub async fn run_tick(
    store: &Store,
    program: &Program,
    rule: &Schedule,
    connection: &str,
    tick: i64,
) -> Result<(usize, usize), StoreError> {
    let now = now_ms();
    let state_source = format!("{SCHEDULE_SOURCE}/{}", rule.name);
    // Per customer: whether the condition held at the last tick, and the
    // inactive_days the last raised event carried.
    let held: HashMap<String, (bool, Option<i64>)> = store
        .mirrors_of(connection, &state_source)
        .await?
        .into_iter()
        .map(|(id, m)| {
            let holds = m.fields.get("holds") == Some(&Value::Bool(true));
            (id, (holds, m.fields.get("days").and_then(Value::as_i64)))
        })
        .collect();
    let read_source = program.sources.get(&rule.source);
    let mut events = Vec::new();
    let mut changed_state = Vec::new();
    for (customer_id, mirror) in store.mirrors_of(connection, &rule.source).await? {
        let Some(last) = mirror.last_activity else {
            continue;
        };
        let inactive_days = (now - last).max(0) / DAY_MS;
        let last_activity = chrono::DateTime::from_timestamp_millis(last)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let fields = Value::Object(mirror.fields.clone());
        let holds = {
            let mut scope = Scope::new();
            let id = Value::String(customer_id.clone());
            let days = Value::from(inactive_days);
            let at = Value::String(last_activity.clone());
            scope.set("fields", &fields);
            scope.set("customer_id", &id);
            scope.set("inactive_days", &days);
            scope.set("last_activity", &at);
            scope.set("vars", &program.vars);
            match program.templates.truthy_scope(&rule.when, &scope) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(schedule = %rule.name, customer = %customer_id, error = ?e, "the condition failed for this customer");
                    continue;
                }
            }
        };
        let (held_before, days_before) = held.get(&customer_id).copied().unwrap_or((false, None));
        // Raised when the condition starts holding and again when the day
        // count moves (one call a day, not one a tick, per inactive customer).
        let event = match (holds, held_before) {
            (true, false) => Some(&rule.event),
            (true, true) if days_before != Some(inactive_days) => Some(&rule.event),
            (false, true) => rule.reset_event.as_ref(),
            _ => None,
        };
        if event.is_some() || holds != held_before {
            changed_state.push((customer_id.clone(), holds, inactive_days));
        }
        let Some(event) = event else { continue };
        let body = json!({
            "event": event,
            "schedule": rule.name,
            "tick": tick,
            "at": chrono::DateTime::from_timestamp_millis(now)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            "source": rule.source,
            "customer_id": customer_id,
            "last_activity": last_activity,
            "inactive_days": inactive_days,
            "fields": fields,
        });
        events.push(NewEvent {
            connection: connection.to_string(),
            source: SCHEDULE_SOURCE.to_string(),
            event_type: event.clone(),
            event_id: None,
            dedup_key: format!("{}:{event}:{customer_id}:{tick}", rule.name),
            occurred_at: Some(now),
            customer_key: Some(match read_source {
                Some(src) => src.ordering_key(&customer_id),
                None => format!("{}:{customer_id}", rule.source),
            }),
            headers: json!({}),
            body: body.to_string().into_bytes(),
            state: if program
                .by_event
                .contains_key(&(SCHEDULE_SOURCE.to_string(), event.clone()))
            {
                EventState::Received
            } else {
                EventState::Unmapped
            },
            note: None,
        });
    }
    let raised = events.iter().filter(|e| e.event_type == rule.event).count();
    let reset = events.len() - raised;
    for chunk in events.chunks(500) {
        store.insert_events(chunk).await?;
    }
    for (customer_id, holds, days) in changed_state {
        let state = serde_json::Map::from_iter([
            ("holds".to_string(), Value::Bool(holds)),
            ("days".to_string(), Value::from(days)),
        ]);
        store
            .update_mirror(
                connection,
                &state_source,
                &customer_id,
                &state,
                Some(now),
                0,
            )
            .await?;
    }
    Ok((raised, reset))
}
