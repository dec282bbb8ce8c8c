//! Finding the customer's record on a target: the stored link, then the
//! target's searches by each key, then a create (carrying what the mapping
//! would write next, when the target's create takes it); the links are
//! recorded both ways. Work on one person is serialised, so two events never
//! create them twice: in a process by [`Locks`], across the processes on one
//! PostgreSQL database by [`crate::store::Store::lock_people`].

use super::http::{Answer, Failure, describe, scalar};
use super::journal::Journal;
use super::{EventRef, Executor, Outcome};
use crate::engine::plan::{CustomerPlan, RequestPlan};
use crate::program::Target;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Per identifying value, a lock held while one event works on that person.
#[derive(Default)]
pub struct Locks {
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Held locks; the person is free again when this is dropped.
pub type Held = Vec<OwnedMutexGuard<()>>;

impl Locks {
    /// The keys that identify the customer a mapping works on (its link,
    /// each matching key), for [`Locks::hold`] after the event's records.
    /// Events of different sources (or keyed differently) may be about the
    /// same person: none of them may create the customer while another does,
    /// nor write one's email while the other creates a contact with it.
    pub fn keys_of(target: &str, source: &str, customer: &CustomerPlan) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        if let Some(link) = &customer.link {
            let link_source = customer.link_source.as_deref().unwrap_or(source);
            keys.push(format!("key|{target}|{link_source}|link:{link}"));
        }
        for k in &customer.keys {
            keys.push(format!("key|{target}|{}:{}", k.key, k.value));
        }
        keys
    }

    /// The key of a record on a platform (`kind`: the target a source
    /// describes, or the source itself). An event locks its own record and
    /// the records linked to it before it reads their mirror, and a write
    /// holds the record it writes: the webhook a write causes is then read
    /// only once the write is recorded, however fast it comes back.
    pub fn record_key(kind: &str, id: &str) -> String {
        format!("record|{kind}|{id}")
    }

    /// Locks `keys` in sorted order, skipping those this event holds already.
    /// An event takes its record keys first and its matching keys after,
    /// each set in one call: every event takes locks in the same global
    /// order (record keys, then matching keys, each sorted), so two events
    /// never wait on each other.
    pub async fn hold(&self, mut keys: Vec<String>, held: &mut Held) {
        keys.sort();
        keys.dedup();
        for key in keys {
            let lock = {
                let mut locks = self.locks.lock().await;
                // One entry per identifying value ever seen would grow for
                // the life of the process: drop those nobody holds or awaits.
                if locks.len() > 4096 {
                    locks.retain(|_, lock| Arc::strong_count(lock) > 1);
                }
                locks.entry(key).or_default().clone()
            };
            // A lock this event already holds (two mappings, one person) is not taken twice.
            if held
                .iter()
                .any(|g| Arc::ptr_eq(OwnedMutexGuard::mutex(g), &lock))
            {
                continue;
            }
            held.push(lock.lock_owned().await);
        }
    }
}

/// The customer's record on the target.
pub struct Found {
    pub id: String,
    /// This delivery created it.
    pub created: bool,
    /// The create's answer and when its request left (for `reflects:`).
    pub create_answer: Option<(Value, i64)>,
}

/// Finds or creates the record; `Ok(None)` when nothing matched and nothing
/// may be created (skipped by design). `carried`: bodies of the mapping's
/// actions the create takes along when it happens.
pub async fn find_or_create(
    ex: &Executor,
    ev: &EventRef<'_>,
    target: &Target,
    mapping: &str,
    plan: &CustomerPlan,
    carried: &[Value],
    journal: &mut Journal,
) -> Result<Option<Found>, Outcome> {
    let source = ev.source;
    let link_source = plan.link_source.as_deref().unwrap_or(source);
    let link = plan.link.as_ref().map(|l| match l {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    if let Some(link) = &link {
        match journal
            .link_of(&ex.store, link_source, link, &target.name)
            .await
        {
            Ok(Some(id)) => {
                return Ok(Some(Found {
                    id,
                    created: false,
                    create_answer: None,
                }));
            }
            Ok(None) => {}
            Err(e) => return Err(Outcome::store(e)),
        }
    }
    let log = |action: &str,
               customer: Option<&str>,
               request: String,
               status: Option<u16>,
               error: Option<String>| {
        ev.entry(
            mapping,
            &target.name,
            action,
            customer,
            request,
            status,
            error,
        )
    };
    // Other processes on the same database may be delivering an event about
    // this person right now: the search and the create are one step for
    // all of them (this process's own events are already kept apart by
    // `Locks`). Released once the record is known: another process's search
    // then finds it.
    let _everywhere = ex
        .store
        .lock_people(&Locks::keys_of(&target.name, source, plan))
        .await
        .map_err(Outcome::store)?;
    let mut found = None;
    if let Some(cap) = &target.customer {
        for (request, key) in plan.find.iter().zip(&plan.keys) {
            let Some((_, id_path)) = cap.find.get(&key.key) else {
                continue;
            };
            let sent = ex.http.send_timed(target, request).await;
            match sent.answer {
                Answer::Ok(answer) => {
                    if let Some(id) = id_path.select(&answer).and_then(|v| scalar(&v)) {
                        found = Some(id);
                        break;
                    }
                }
                Answer::Failed(failure) => {
                    journal.log(
                        log(
                            "find_customer",
                            None,
                            describe(request),
                            failure.status,
                            Some(failure.error.clone()),
                        )
                        .took(sent.took_ms),
                    );
                    return Err(Outcome::from_failure(failure));
                }
            }
        }
    }
    let mut created = None;
    if found.is_none()
        && let (Some(create), Some(cap)) = (
            &plan.create,
            target.customer.as_ref().and_then(|t| t.create.as_ref()),
        )
    {
        let mut request: RequestPlan = create.clone();
        for body in carried {
            match &mut request.body {
                Some(b) => super::sync::carry_into(b, body),
                None => request.body = Some(body.clone()),
            }
        }
        let sent = ex.http.send_timed(target, &request).await;
        let (sent_at, took) = (sent.departed_at, sent.took_ms);
        match sent.answer {
            Answer::Ok(answer) => {
                found = cap.id.select(&answer).and_then(|v| scalar(&v));
                if let Some(id) = &found {
                    // The log says who was created, not only who failed to be:
                    // `mapper log` and resync's summary read it.
                    journal.log(
                        log(
                            "create_customer",
                            Some(id),
                            describe(&request),
                            Some(200),
                            None,
                        )
                        .took(took),
                    );
                    created = Some((answer, sent_at));
                } else {
                    // Created or not, nobody can tell which record: try again
                    // (the next attempt searches first, and finds it if it was).
                    let error = format!(
                        "{} answered 2xx without the new record's id at `{}`",
                        describe(&request),
                        cap.id.as_str()
                    );
                    journal.log(
                        log(
                            "create_customer",
                            None,
                            describe(&request),
                            Some(200),
                            Some(error.clone()),
                        )
                        .took(took),
                    );
                    return Err(Outcome::Transient {
                        error,
                        retry_after: None,
                    });
                }
            }
            // "This location does not allow duplicated contacts": the answer names it.
            Answer::Failed(Failure {
                status: Some(400),
                error,
                body,
                ..
            }) if cap.duplicate_id.is_some() => {
                found = cap
                    .duplicate_id
                    .as_ref()
                    .and_then(|p| p.select(&body))
                    .and_then(|v| scalar(&v));
                if found.is_none() {
                    journal.log(
                        log(
                            "create_customer",
                            None,
                            describe(&request),
                            Some(400),
                            Some(error.clone()),
                        )
                        .took(took),
                    );
                    return Err(Outcome::Permanent(error));
                }
            }
            Answer::Failed(failure) => {
                journal.log(
                    log(
                        "create_customer",
                        None,
                        describe(&request),
                        failure.status,
                        Some(failure.error.clone()),
                    )
                    .took(took),
                );
                return Err(Outcome::from_failure(failure));
            }
        }
    }
    let Some(id) = found else { return Ok(None) };
    if let Some(link) = &link {
        journal.link((link_source, link), (&target.name, &id), false);
        // The link holds the other way too when both sides' webhooks
        // describe records: a GHL contact synced to a Sticky Cards customer
        // is that customer's contact.
        if let Some(back_target) = ex
            .program
            .sources
            .get(link_source)
            .and_then(|s| s.describes.as_deref())
        {
            for back in ex.program.sources.values().filter(|s| {
                s.describes.as_deref() == Some(target.name.as_str()) && !s.mirror.is_empty()
            }) {
                journal.link((&back.name, &id), (back_target, link), true);
            }
        }
    }
    Ok(Some(Found {
        id,
        created: created.is_some(),
        create_answer: created,
    }))
}
