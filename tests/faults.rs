//! The fault matrix of issue #14: each target fault the simulators can
//! serve, and each database fault this machine can cause, against `serve`
//! running in this process over real HTTP on loopback.
//!
//! Every case checks the same four things:
//! - what `serve` answers the senders (202 while it can store; 503, or 429
//!   for GHL, with `Retry-After` when it cannot);
//! - no acknowledged event is lost: every 202 is a stored event that ends
//!   delivered;
//! - delivery resumes once the fault clears;
//! - nothing is applied twice: each webhook is a Sticky Cards feedback with
//!   its own marker, which the mapping turns into one GHL note (a POST that
//!   GHL never de-duplicates), so the simulator's notes are counted per
//!   marker, and its contacts per customer.
//!
//! Faults that need root (a tmpfs filled up: `root_*`) or a PostgreSQL
//! server to restart (`pg_*`) are `#[ignore]`d; `.ci/run` runs them alone
//! (`cargo test --test faults -- --ignored root_ pg_ --test-threads=1`).
//! A disk turned read-only under `serve` (`root_a_read_only_*`) is an ext4
//! image on a loop device made read-only by an error, as the kernel does:
//! `mount -o remount,ro` is refused (EBUSY) while a file on the filesystem
//! is open for writing, bind mounts included.

mod common;

use common::postgres::FreshPostgres;

use common::{copy_dir, serve_env, simulators};
use mapper::app::{App, AppConfig, DatabaseUrl, Env, Running};
use mapper::config::compile::compile_dir;
use mapper::sandbox::{Fault, GhlSandbox, StickyCardsSandbox};
use mapper::store::{EventState, ReplayFilter, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The states in which an event has nothing left to do.
const FINAL: [&str; 5] = ["delivered", "dead", "unmapped", "echo", "stale"];

/// A folder of mappings (a copy of the shipped ones, GHL's profile edited).
struct Mappings {
    dir: tempfile::TempDir,
}

impl Mappings {
    /// The shipped set with GHL's profile edited by `edit`; unlimited pace
    /// (the simulator's and the profile's) unless the edit says otherwise, so
    /// the cases measure faults and not GHL's 10 requests per second.
    fn ghl(edit: impl Fn(String) -> String) -> Mappings {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["mappings", "schemas"] {
            copy_dir(Path::new(sub), &dir.path().join(sub));
        }
        let file = dir.path().join("mappings/targets/ghl.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let fast = text.replace(
            "rate_limit: { requests: 100, per_seconds: 10, daily: 200000, per: location }",
            "rate_limit: { requests: 100000, per_seconds: 1, per: location }",
        );
        assert_ne!(fast, text, "GHL's rate limit line moved: update this test");
        std::fs::write(&file, edit(fast)).unwrap();
        Mappings { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mappings")
    }
}

/// A GHL request times out after 1 s instead of 20.
fn one_second_timeout(text: String) -> String {
    let edited = text.replace(
        "error_message: $.message",
        "error_message: $.message\ntimeout_seconds: 1",
    );
    assert_ne!(
        edited, text,
        "GHL's error_message line moved: update this test"
    );
    edited
}

/// `serve` in this process, on `db`, with the simulators (or the variables
/// given in `env`).
async fn start(
    ghl: &GhlSandbox,
    sc: &StickyCardsSandbox,
    mappings: &Path,
    db: &str,
    env: &[(&str, &str)],
) -> Running {
    App::start(serve_config(ghl, sc, mappings, db, env))
        .await
        .expect("the app starts")
}

/// What [`start`] starts `serve` with.
fn serve_config(
    ghl: &GhlSandbox,
    sc: &StickyCardsSandbox,
    mappings: &Path,
    db: &str,
    env: &[(&str, &str)],
) -> AppConfig {
    if std::env::var("SERVE_LOG").is_ok() {
        // The app logs through `tracing`, to stderr as `mapper serve` does.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let mut vars: BTreeMap<String, String> = serve_env(ghl, sc);
    for (k, v) in env {
        vars.insert(k.to_string(), v.to_string());
    }
    let program = compile_dir(mappings)
        .program
        .expect("the mapping folder checks clean");
    let mut config = AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        Some(mappings.to_path_buf()),
        Env::from_map(vars),
    );
    config.coalesce_window = Some(Duration::ZERO);
    config
}

/// A fresh GHL simulator without a rate limit, and Sticky Cards.
async fn fast_simulators() -> (GhlSandbox, StickyCardsSandbox) {
    let ghl = GhlSandbox::start(mapper::sandbox::GhlConfig {
        rate_limit: mapper::sandbox::RateLimit::unlimited(),
        ..mapper::sandbox::GhlConfig::default()
    })
    .await
    .unwrap();
    let (_, sc) = simulators().await;
    (ghl, sc)
}

/// The marker of webhook `i` of a run: unique in the run's notes.
fn marker(i: usize) -> String {
    format!("fault-marker-{i:05}")
}

/// Webhook `i`: a Sticky Cards feedback of customer `i % customers`, with
/// its own time (so its own de-duplication key) and its marker as comment;
/// `pad` bytes of padding make it as large as a test needs.
fn feedback(i: usize, customers: usize, pad: usize) -> String {
    let c = i % customers;
    serde_json::json!({
        "event_type": "FeedbackCreatedEvent",
        "timestamp": format!("2025-03-10T{:02}:{:02}:{:02}Z", (i / 3600) % 24, (i / 60) % 60, i % 60),
        "customer_id": format!("cus_f{c}"),
        "card_id": format!("card_f{c}"),
        "email": format!("fault{c}@example.com"),
        "phone_number": format!("+1 415 555 {:04}", 3000 + c),
        "first_name": format!("F{c}"),
        "last_name": "Fault",
        "feedback": { "rating": 4, "comment": marker(i) },
        "padding": "x".repeat(pad),
    })
    .to_string()
}

/// Posts one Sticky Cards webhook: the status (0: no answer) and the
/// `Retry-After` header.
async fn post(client: &reqwest::Client, base: &str, body: &str) -> (u16, Option<String>) {
    match client
        .post(format!("{base}/webhooks/stickycards?token=sc-token"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await
    {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ),
        Err(_) => (0, None),
    }
}

/// Posts webhooks `range` (8 at a time) and returns the indexes acknowledged
/// (202), asserting that every answer is 202, or a refusal to store with
/// `Retry-After` when `may_refuse`.
async fn post_range(
    base: &str,
    range: std::ops::Range<usize>,
    customers: usize,
    pad: usize,
    may_refuse: bool,
) -> (Vec<usize>, Vec<u16>) {
    let client = reqwest::Client::new();
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(8) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (client, base) = (client.clone(), base.to_string());
            let body = feedback(i, customers, pad);
            tasks.push(tokio::spawn(async move {
                (i, post(&client, &base, &body).await)
            }));
        }
        for t in tasks {
            let (i, (status, retry_after)) = t.await.unwrap();
            match status {
                202 => acked.push(i),
                503 if may_refuse => {
                    assert!(
                        retry_after.is_some(),
                        "a refusal to store says when to retry"
                    );
                    refused.push(status);
                }
                other => panic!("webhook {i}: serve answered {other}"),
            }
        }
    }
    (acked, refused)
}

/// Waits until every stored event is final (or `limit` passes); the counts
/// by state.
async fn settle(store: &Store, limit: Duration) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + limit;
    loop {
        let mut by_state = BTreeMap::new();
        if let Ok(counts) = store.counts().await {
            // The shipped inactivity schedule's tick may store an event of
            // its own meanwhile: only webhooks are counted here.
            for c in counts.into_iter().filter(|c| c.source != "schedule") {
                *by_state.entry(c.state).or_insert(0) += c.count;
            }
            if by_state.keys().all(|s| FINAL.contains(&s.as_str())) || Instant::now() > deadline {
                return by_state;
            }
        }
        if Instant::now() > deadline {
            return by_state;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Notes on every GHL contact, counted by marker.
fn notes_by_marker(ghl: &GhlSandbox) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for contact in ghl.contacts() {
        for note in ghl.notes_of(&contact.id) {
            if let Some(m) = note
                .body
                .rsplit(": ")
                .next()
                .filter(|m| m.starts_with("fault-marker-"))
            {
                *counts.entry(m.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// The figures a case ends with.
#[derive(Debug)]
struct Tally {
    acknowledged: usize,
    stored: i64,
    delivered: i64,
    applied: usize,
    duplicated: usize,
    contacts: usize,
}

/// Settles, then asserts: every acknowledged webhook stored once and
/// delivered; its note on GHL exactly once; one contact per customer.
async fn assert_exactly_once(
    db: &str,
    ghl: &GhlSandbox,
    acked: &[usize],
    customers: usize,
    limit: Duration,
) -> Tally {
    assert_applied(db, ghl, acked, customers, limit, &[]).await
}

/// As [`assert_exactly_once`], except that the notes of webhooks
/// `may_repeat` may be there twice (at-least-once: RELIABILITY.md, *Bugs
/// and limits*, 2); any other note twice fails.
async fn assert_applied(
    db: &str,
    ghl: &GhlSandbox,
    acked: &[usize],
    customers: usize,
    limit: Duration,
    may_repeat: &[usize],
) -> Tally {
    let store = Store::open(db).await.unwrap();
    let states = settle(&store, limit).await;
    let notes = notes_by_marker(ghl);
    let tally = Tally {
        acknowledged: acked.len(),
        stored: states.values().sum(),
        delivered: states.get("delivered").copied().unwrap_or(0),
        applied: notes.len(),
        duplicated: notes.values().filter(|n| **n > 1).count(),
        contacts: ghl.contacts().len(),
    };
    eprintln!("{tally:?} states {states:?}");
    let lost: Vec<String> = acked
        .iter()
        .map(|i| marker(*i))
        .filter(|m| !notes.contains_key(m))
        .collect();
    if !lost.is_empty() {
        for r in ghl.request_log() {
            eprintln!("ghl: {} {} {:?} {:?}", r.method, r.path, r.status, r.body);
        }
        for entry in store.sync_log(None, None).await.unwrap_or_default() {
            eprintln!(
                "event {} {} {} → {:?} {:?}",
                entry.event_row, entry.action, entry.request, entry.status, entry.error
            );
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged but never applied: {lost:?}; states {states:?}, last errors {:?}",
        store.last_errors(5).await.unwrap_or_default()
    );
    let allowed: Vec<String> = may_repeat.iter().map(|i| marker(*i)).collect();
    let twice: Vec<(&String, &usize)> = notes
        .iter()
        .filter(|(m, n)| **n > 2 || (**n > 1 && !allowed.contains(m)))
        .collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    assert!(tally.duplicated <= may_repeat.len());
    assert_eq!(
        tally.stored as usize, tally.acknowledged,
        "every acknowledged webhook is stored, once: {states:?}"
    );
    assert_eq!(
        tally.delivered as usize, tally.acknowledged,
        "every stored event is delivered: {states:?}"
    );
    assert_eq!(
        tally.applied,
        acked.len(),
        "no note beyond the acknowledged webhooks"
    );
    assert_eq!(
        tally.contacts,
        customers.min(acked.len()),
        "one contact per customer"
    );
    tally
}

/// A target fault served a number of `times` on requests matching `on`
/// (every request when `None`), under load from `events` webhooks of
/// `customers` customers: every webhook is acknowledged (a target's fault
/// never reaches the senders) and applied exactly once.
async fn target_fault_case(
    fault: Fault,
    on: Option<&str>,
    times: usize,
    mappings: Mappings,
    events: usize,
    customers: usize,
) -> (GhlSandbox, Tally) {
    let (ghl, sc) = fast_simulators().await;
    match on {
        Some(prefix) => ghl.inject_on(prefix, fault, times),
        None => ghl.inject(fault, times),
    }
    let dir = tempfile::tempdir().unwrap();
    let db = DatabaseUrl::sqlite(&dir.path().join("mapper.db"))
        .as_str()
        .to_string();
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    let base = app.url().unwrap();
    let (acked, _) = post_range(&base, 0..events, customers, 0, false).await;
    assert_eq!(
        acked.len(),
        events,
        "a target's fault never reaches the senders"
    );
    let tally = assert_exactly_once(&db, &ghl, &acked, customers, Duration::from_secs(90)).await;
    app.shutdown().await;
    (ghl, tally)
}

/// Requests the simulator answered with `status`.
fn answered(ghl: &GhlSandbox, status: u16) -> usize {
    ghl.request_log()
        .iter()
        .filter(|r| r.status == Some(status))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn ghl_answering_500_is_retried_and_applied_once() {
    let (ghl, _) =
        target_fault_case(Fault::Status(500), None, 4, Mappings::ghl(|t| t), 12, 4).await;
    assert_eq!(answered(&ghl, 500), 4, "the fault was served");
}

#[tokio::test(flavor = "multi_thread")]
async fn ghl_answering_502_is_retried_and_applied_once() {
    let (ghl, _) =
        target_fault_case(Fault::Status(502), None, 4, Mappings::ghl(|t| t), 12, 4).await;
    assert_eq!(answered(&ghl, 502), 4, "the fault was served");
}

#[tokio::test(flavor = "multi_thread")]
async fn ghl_answering_503_on_notes_is_retried_and_applied_once() {
    // On the note itself: the call whose repetition would show.
    let (ghl, _) = target_fault_case(
        Fault::Status(503),
        Some("POST /contacts/*/notes"),
        4,
        Mappings::ghl(|t| t),
        12,
        4,
    )
    .await;
    assert_eq!(answered(&ghl, 503), 4, "the fault was served");
}

/// A 503 with `Retry-After: 4`: the next try of that call comes no sooner.
#[tokio::test(flavor = "multi_thread")]
async fn ghl_answering_503_with_retry_after_is_not_retried_sooner() {
    let (ghl, _) = target_fault_case(
        Fault::StatusRetryAfter {
            status: 503,
            retry_after: 4,
        },
        Some("POST /contacts/*/notes"),
        1,
        Mappings::ghl(|t| t),
        3,
        1,
    )
    .await;
    let log = ghl.request_log();
    let refused = log
        .iter()
        .position(|r| r.status == Some(503))
        .expect("the 503 was served");
    let next = log[refused + 1..]
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/notes"))
        .expect("the note was tried again");
    let waited = next.received.duration_since(log[refused].received);
    assert!(
        waited >= Duration::from_secs(4),
        "retried {waited:?} after a Retry-After of 4 s"
    );
}

/// A storm of 429s with `Retry-After: 1`, then without the header.
#[tokio::test(flavor = "multi_thread")]
async fn a_429_storm_is_waited_out_and_applied_once() {
    let (ghl, sc) = fast_simulators().await;
    ghl.inject(
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
        6,
    );
    ghl.inject(Fault::TooManyRequests { retry_after: None }, 6);
    let mappings = Mappings::ghl(|t| t);
    let dir = tempfile::tempdir().unwrap();
    let db = DatabaseUrl::sqlite(&dir.path().join("mapper.db"))
        .as_str()
        .to_string();
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    let base = app.url().unwrap();
    let (acked, _) = post_range(&base, 0..16, 4, 0, false).await;
    assert_eq!(acked.len(), 16);
    assert_exactly_once(&db, &ghl, &acked, 4, Duration::from_secs(120)).await;
    assert_eq!(answered(&ghl, 429), 12, "the whole storm was served");
    app.shutdown().await;
}

/// Requests held past the 1 s timeout are dropped unserved; the retry
/// applies them.
#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_request_is_retried_and_applied_once() {
    let (ghl, _) = target_fault_case(
        Fault::Hang(Duration::from_secs(3)),
        None,
        3,
        Mappings::ghl(one_second_timeout),
        9,
        3,
    )
    .await;
    assert!(ghl.request_log().len() > 9);
}

/// GHL makes the note, then its answer is cut in the middle of the body:
/// the status (201) arrived, so the note is not posted again.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_reset_mid_body_does_not_apply_the_note_twice() {
    target_fault_case(
        Fault::ResetMidBody,
        Some("POST /contacts/*/notes"),
        2,
        Mappings::ghl(|t| t),
        6,
        3,
    )
    .await;
}

/// A contact create whose answer is cut mid-body: the contact exists, its
/// id is in the half that never came. It must not be created twice, and the
/// event's note must still be made.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_reset_mid_body_does_not_create_the_contact_twice() {
    let (ghl, _) = target_fault_case(
        Fault::ResetMidBody,
        Some("POST /contacts/"),
        2,
        Mappings::ghl(|t| t),
        6,
        3,
    )
    .await;
    let creates = ghl
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/contacts/")
        .count();
    // The two cut creates made their contacts: the retries' searches found them.
    assert_eq!(creates, 3, "one create per customer");
}

/// A body that trickles in longer than the timeout: the note was made and
/// its status came, so it is not posted again.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_answer_body_does_not_apply_the_note_twice() {
    target_fault_case(
        Fault::SlowBody(Duration::from_millis(400)),
        Some("POST /contacts/*/notes"),
        2,
        Mappings::ghl(one_second_timeout),
        6,
        3,
    )
    .await;
}

/// The same on the create: the status came, the new contact's id did not.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_answer_body_on_a_create_still_applies_the_note() {
    target_fault_case(
        Fault::SlowBody(Duration::from_millis(400)),
        Some("POST /contacts/"),
        1,
        Mappings::ghl(one_second_timeout),
        3,
        1,
    )
    .await;
}

/// GHL makes the note but its answer (status included) comes after the
/// timeout: the engine cannot tell a lost answer from a lost request, and
/// GHL's notes take no idempotency key. `add_note` is `idempotent: false`:
/// the retry finds the call's mark and does not post it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_a_note_does_not_apply_it_twice() {
    target_fault_case(
        Fault::AnswerLate(Duration::from_secs(3)),
        Some("POST /contacts/*/notes"),
        2,
        Mappings::ghl(one_second_timeout),
        6,
        3,
    )
    .await;
}

/// A slow body that ends within the timeout is just a slow answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_answer_body_within_the_timeout_is_a_success() {
    let (ghl, _) = target_fault_case(
        Fault::SlowBody(Duration::from_millis(20)),
        None,
        6,
        Mappings::ghl(|t| t),
        6,
        3,
    )
    .await;
    assert!(ghl.request_log().iter().all(|r| r.status.is_some()));
}

/// A 200 whose body is not JSON (a proxy's page): the note exists.
#[tokio::test(flavor = "multi_thread")]
async fn a_200_with_invalid_json_on_a_note_does_not_apply_it_twice() {
    target_fault_case(
        Fault::InvalidJson,
        Some("POST /contacts/*/notes"),
        2,
        Mappings::ghl(|t| t),
        6,
        3,
    )
    .await;
}

/// A 200 whose body is not JSON on the create: the engine cannot read the
/// new contact's id; the retry's search must find it instead of creating
/// another, and the event's note must still be made.
#[tokio::test(flavor = "multi_thread")]
async fn a_200_with_invalid_json_on_a_create_does_not_create_twice() {
    target_fault_case(
        Fault::InvalidJson,
        Some("POST /contacts/"),
        1,
        Mappings::ghl(|t| t),
        3,
        1,
    )
    .await;
}

/// GHL's 422 (`message` an array) is permanent: the event is dead at once,
/// with GHL's words in its error; replayed once the cause is gone, it is
/// applied once.
#[tokio::test(flavor = "multi_thread")]
async fn a_422_with_ghls_message_array_is_dead_with_its_words_and_replays_once() {
    let (ghl, sc) = fast_simulators().await;
    ghl.inject_on(
        "POST /contacts/*/notes",
        Fault::Unprocessable(vec![
            "property additionalEmails should not exist".into(),
            "body must be a string".into(),
        ]),
        1,
    );
    let mappings = Mappings::ghl(|t| t);
    let dir = tempfile::tempdir().unwrap();
    let db = DatabaseUrl::sqlite(&dir.path().join("mapper.db"))
        .as_str()
        .to_string();
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    let base = app.url().unwrap();
    let (acked, _) = post_range(&base, 0..1, 1, 0, false).await;
    let store = Store::open(&db).await.unwrap();
    let states = settle(&store, Duration::from_secs(30)).await;
    assert_eq!(
        states.get("dead"),
        Some(&1),
        "a 422 is not retried: {states:?}"
    );
    let errors = store.last_errors(1).await.unwrap();
    let error = &errors[0].4;
    assert!(
        error.contains("property additionalEmails should not exist")
            && error.contains("body must be a string"),
        "the dead event says what GHL said: {error}"
    );
    assert_eq!(answered(&ghl, 422), 1, "posted once");
    let replayed = store
        .replay(&ReplayFilter {
            states: vec![EventState::Dead],
            ..ReplayFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    assert_exactly_once(&db, &ghl, &acked, 1, Duration::from_secs(30)).await;
    app.shutdown().await;
}

/// A revoked token (GHL's 401): events die with GHL's reason while webhooks
/// are still acknowledged; once the token works again, a replay applies
/// each once.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_parks_events_as_dead_and_a_replay_applies_each_once() {
    let (ghl, sc) = fast_simulators().await;
    ghl.inject(Fault::Revoked, 10_000);
    let mappings = Mappings::ghl(|t| t);
    let dir = tempfile::tempdir().unwrap();
    let db = DatabaseUrl::sqlite(&dir.path().join("mapper.db"))
        .as_str()
        .to_string();
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    let base = app.url().unwrap();
    let (acked, _) = post_range(&base, 0..8, 4, 0, false).await;
    assert_eq!(
        acked.len(),
        8,
        "webhooks are acknowledged while GHL refuses the token"
    );
    let store = Store::open(&db).await.unwrap();
    let states = settle(&store, Duration::from_secs(30)).await;
    assert_eq!(states.get("dead"), Some(&8), "{states:?}");
    assert!(
        store
            .last_errors(8)
            .await
            .unwrap()
            .iter()
            .all(|e| e.4.contains("Invalid token")),
        "each says GHL refused the token"
    );
    assert!(ghl.contacts().is_empty());
    ghl.clear_faults();
    store
        .replay(&ReplayFilter {
            states: vec![EventState::Dead],
            ..ReplayFilter::default()
        })
        .await
        .unwrap();
    assert_exactly_once(&db, &ghl, &acked, 4, Duration::from_secs(30)).await;
    app.shutdown().await;
}

/// A base URL whose host does not resolve: webhooks are acknowledged and
/// retried; `serve` restarted with the right URL delivers each once.
#[tokio::test(flavor = "multi_thread")]
async fn an_unresolvable_target_host_keeps_events_until_it_is_fixed() {
    let (ghl, sc) = fast_simulators().await;
    let mappings = Mappings::ghl(one_second_timeout);
    let dir = tempfile::tempdir().unwrap();
    let db = DatabaseUrl::sqlite(&dir.path().join("mapper.db"))
        .as_str()
        .to_string();
    let app = start(
        &ghl,
        &sc,
        &mappings.path(),
        &db,
        &[("GHL_API_BASE_URL", "http://nowhere.invalid")],
    )
    .await;
    let base = app.url().unwrap();
    let (acked, _) = post_range(&base, 0..6, 3, 0, false).await;
    assert_eq!(acked.len(), 6);
    // Long enough for a first attempt and its retry to fail.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let store = Store::open(&db).await.unwrap();
    let counts = store.counts().await.unwrap();
    assert!(
        counts
            .iter()
            .all(|c| c.state != "delivered" && c.state != "dead"),
        "nothing is delivered, nothing given up: {counts:?}"
    );
    let errors = store.last_errors(6).await.unwrap();
    assert!(!errors.is_empty(), "the failures are recorded: {counts:?}");
    app.shutdown().await;
    assert!(ghl.request_log().is_empty());
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    assert_exactly_once(&db, &ghl, &acked, 3, Duration::from_secs(60)).await;
    app.shutdown().await;
}

// ---- database faults -------------------------------------------------

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mount a tmpfs (this test needs root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a file until it is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        // The last bytes that fit.
        while file.write_all(&block[..512]).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// An ext4 filesystem in a file, mounted through a loop device with
/// `errors=remount-ro` (as data disks usually are), unmounted on drop.
struct Ext4Disk {
    image: tempfile::TempDir,
    dir: tempfile::TempDir,
}

/// Runs a command; whether it exited with a status up to `max_ok`.
fn run(program: &str, args: &[&std::ffi::OsStr], max_ok: i32) -> bool {
    std::process::Command::new(program)
        .args(args)
        .status()
        .map(|s| s.code().is_some_and(|c| (0..=max_ok).contains(&c)))
        .unwrap_or(false)
}

impl Ext4Disk {
    fn mount(megabytes: u64) -> Ext4Disk {
        let image = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = image.path().join("disk.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(megabytes << 20)
            .unwrap();
        assert!(
            run(
                "mkfs.ext4",
                &["-q".as_ref(), "-F".as_ref(), file.as_ref()],
                0
            ),
            "mkfs.ext4 on {file:?}"
        );
        let disk = Ext4Disk { image, dir };
        disk.attach();
        disk
    }

    fn attach(&self) {
        let file = self.image.path().join("disk.img");
        assert!(
            run(
                "mount",
                &[
                    "-o".as_ref(),
                    "loop,errors=remount-ro".as_ref(),
                    file.as_ref(),
                    self.path().as_ref()
                ],
                0
            ),
            "mount an ext4 image through a loop device (this test needs root)"
        );
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Turns the filesystem read-only the way the kernel does when ext4
    /// meets an I/O or metadata error (`errors=remount-ro`): writes fail
    /// with EROFS from then on. `mount -o remount,ro` cannot do it here:
    /// Linux refuses it (EBUSY) while `serve` has its database open for
    /// writing.
    fn turn_read_only(&self) {
        let source = std::process::Command::new("findmnt")
            .args(["-no", "SOURCE"])
            .arg(self.path())
            .output()
            .unwrap();
        let source = String::from_utf8(source.stdout).unwrap();
        let device = source.trim().rsplit('/').next().unwrap().to_string();
        std::fs::write(
            format!("/sys/fs/ext4/{device}/trigger_fs_error"),
            "tests/faults.rs: the disk turns read-only",
        )
        .unwrap();
        let probe = std::fs::write(self.path().join("probe"), "x");
        assert_eq!(
            probe.map_err(|e| e.raw_os_error()),
            Err(Some(30)),
            "the filesystem is read-only (EROFS)"
        );
    }

    /// What an operator does once ext4 has turned a disk read-only: ext4
    /// keeps such a mount read-only until it is unmounted (`remount,rw`
    /// does not lift it), so unmount, check, mount again.
    fn repair(&self) {
        // The database's last connections close on threads of their own.
        let mut unmounted = false;
        for _ in 0..50 {
            unmounted = run("umount", &[self.path().as_ref()], 0);
            if unmounted {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(unmounted, "umount (the database still open?)");
        let file = self.image.path().join("disk.img");
        // 1: errors corrected (the error the test caused is recorded).
        assert!(
            run("e2fsck", &["-fy".as_ref(), file.as_ref()], 1),
            "e2fsck repairs the image"
        );
        self.attach();
    }
}

impl Drop for Ext4Disk {
    fn drop(&mut self) {
        // Lazy: a panicking test may still hold the database open; the
        // loop device is freed with the last file (mount's autoclear).
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Posts webhooks `range` until each is acknowledged (500 ms between
/// rounds, as a sender retrying); the number of refusals on the way.
async fn post_until_acked(
    base: &str,
    range: std::ops::Range<usize>,
    customers: usize,
    pad: usize,
) -> usize {
    let mut left: Vec<usize> = range.collect();
    let mut refusals = 0;
    let client = reqwest::Client::new();
    for _ in 0..60 {
        let mut still = Vec::new();
        for &i in &left {
            let (status, retry_after) = post(&client, base, &feedback(i, customers, pad)).await;
            match status {
                202 | 200 => {}
                503 => {
                    assert!(retry_after.is_some(), "a 503 says when to retry");
                    refusals += 1;
                    still.push(i);
                }
                other => panic!("webhook {i}: serve answered {other}"),
            }
        }
        if still.is_empty() {
            return refusals;
        }
        left = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let answer = reqwest::Client::new()
        .post(format!("{base}/webhooks/stickycards?token=sc-token"))
        .header("content-type", "application/json")
        .body(feedback(left[0], customers, pad))
        .send()
        .await
        .map(|r| format!("{:?}", r.headers()));
    let answer = match answer {
        Ok(a) => a,
        Err(e) => e.to_string(),
    };
    panic!("webhooks {left:?} were never acknowledged: {answer}");
}

/// SQLite on a full disk: `serve` refuses webhooks with 503 and
/// `Retry-After` (never a 500, never a hang), keeps what it acknowledged,
/// and stores and delivers again once space is freed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (mounts a tmpfs); .ci/run runs it alone"]
async fn root_a_full_disk_refuses_webhooks_with_503_and_loses_nothing() {
    let disk = SmallDisk::mount("16m");
    let (ghl, sc) = fast_simulators().await;
    let mappings = Mappings::ghl(|t| t);
    let db = DatabaseUrl::sqlite(&disk.path().join("mapper.db"))
        .as_str()
        .to_string();
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    let base = app.url().unwrap();
    let (mut acked, _) = post_range(&base, 0..20, 4, 0, false).await;
    assert_exactly_once(&db, &ghl, &acked, 4, Duration::from_secs(60)).await;
    let filler = disk.fill();
    // Large bodies, so that the log must outgrow the room it already has:
    // batches until the disk refuses some (what fits in the log's free
    // frames is stored and acknowledged, as it should be).
    let mut refused = 0;
    let mut next = 20;
    while refused == 0 && next < 400 {
        let (during, no) = post_range(&base, next..next + 10, 4, 8_000, true).await;
        refused += no.len();
        acked.extend(&during);
        // What was refused is sent again once there is room, as senders do.
        next += 10;
    }
    assert!(refused > 0, "a full disk refused nothing");
    std::fs::remove_file(filler).unwrap();
    let again: Vec<usize> = (20..next).filter(|i| !acked.contains(i)).collect();
    for &i in &again {
        post_until_acked(&base, i..i + 1, 4, 8_000).await;
        acked.push(i);
    }
    acked.sort_unstable();
    let tally = assert_exactly_once(&db, &ghl, &acked, 4, Duration::from_secs(90)).await;
    eprintln!("disk full: {refused} refused while full, {tally:?}");
    app.shutdown().await;
}

/// A runtime dropped without waiting for its tasks, which an async test may
/// do (dropping a `Runtime` there panics): a failing test then still
/// unwinds to the disk's unmount instead of aborting.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        self.0.as_ref().unwrap().handle().clone()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// SQLite on a disk that turns read-only under load (ext4's answer to a
/// disk error): `serve` refuses webhooks with 503 and `Retry-After` (never
/// a 500, a panic or a hang), keeps what it acknowledged, and once the
/// disk is repaired and `serve` restarted on it, stores the refused ones
/// when re-posted and delivers everything exactly once.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (mounts a loop device); .ci/run runs it alone"]
async fn root_a_read_only_disk_refuses_webhooks_and_resumes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let disk = Ext4Disk::mount(64);
    let (ghl, sc) = fast_simulators().await;
    let mappings = Mappings::ghl(|t| t);
    let db = DatabaseUrl::sqlite(&disk.path().join("mapper.db"))
        .as_str()
        .to_string();
    // This `serve` runs on a runtime of its own, dropped at the end as the
    // process would exit: its worker keeps retrying the journals it cannot
    // write (it never gives up on them) and so outlives `shutdown`, and the
    // disk cannot be unmounted while its database is open.
    let runtime = OwnRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ));
    let runtime_handle = runtime.handle();
    let config = serve_config(&ghl, &sc, &mappings.path(), &db, &[]);
    let app = runtime_handle
        .spawn(App::start(config))
        .await
        .unwrap()
        .expect("the app starts");
    let base = app.url().unwrap();
    let (mut acked, _) = post_range(&base, 0..20, 4, 0, false).await;
    assert_exactly_once(&db, &ghl, &acked, 4, Duration::from_secs(60)).await;

    // Four senders without pause; the disk turns read-only under them,
    // while the worker is delivering what they had sent.
    let next = Arc::new(AtomicUsize::new(20));
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (next, stop, answers, base) =
            (next.clone(), stop.clone(), answers.clone(), base.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::SeqCst) {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let answer = post(&client, &base, &feedback(i, 4, 0)).await;
                answers.lock().unwrap().push((i, answer));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = answers.lock().unwrap().len();
    disk.turn_read_only();
    let read_only_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The database still reads, but webhooks are refused: not ready, so a
    // load balancer sends them elsewhere (RELIABILITY.md, Bugs and limits, 6).
    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_eq!(ready, 503, "/readyz while the inbox cannot store webhooks");
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    let read_only_for = read_only_at.elapsed();
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let mut refused = Vec::new();
    let mut seen = BTreeMap::<u16, usize>::new();
    for (i, (status, retry_after)) in &answers {
        *seen.entry(*status).or_default() += 1;
        match status {
            202 => acked.push(*i),
            503 => {
                assert!(retry_after.is_some(), "a 503 says when to retry");
                refused.push(*i);
            }
            other => panic!("webhook {i}: serve answered {other} on a read-only disk"),
        }
    }
    assert!(!refused.is_empty(), "a read-only disk refused nothing");
    let acked_read_only = answers.len() - before - refused.len();
    let stopping = Instant::now();
    runtime_handle.spawn(app.shutdown()).await.unwrap();
    let stop_took = stopping.elapsed();
    drop(runtime);
    eprintln!(
        "read-only disk: {} answers ({before} before the switch, the others in {:.1} s \
         after), {seen:?}, {acked_read_only} acknowledged after it, {} refused; \
         /readyz {ready}, shutdown took {:.1} s",
        answers.len(),
        read_only_for.as_secs_f64(),
        refused.len(),
        stop_took.as_secs_f64()
    );

    disk.repair();
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    let base = app.url().unwrap();
    refused.sort_unstable();
    for &i in &refused {
        post_until_acked(&base, i..i + 1, 4, 0).await;
        acked.push(i);
    }
    // Ingest resumes for new webhooks as well.
    let fresh = next.load(Ordering::SeqCst) + 10;
    let (more, _) = post_range(&base, fresh..fresh + 20, 4, 0, false).await;
    assert_eq!(more.len(), 20);
    acked.extend(more);
    acked.sort_unstable();
    // A note whose call was made while its journal could not be written
    // (the worker retries it until shutdown) or was still in the page cache
    // (`synchronous=NORMAL`: ext4 drops what it has not written once it is
    // read-only) is sent again after the restart, as after a kill: only the
    // webhooks acknowledged under load, and at most twice.
    let in_flight: Vec<usize> = answers
        .iter()
        .filter(|(_, (status, _))| *status == 202)
        .map(|(i, _)| *i)
        .collect();
    let tally = assert_applied(&db, &ghl, &acked, 4, Duration::from_secs(90), &in_flight).await;
    eprintln!("read-only disk, after repair: {tally:?}");
    app.shutdown().await;
}

/// What each source is answered when the disk is full: 503 with
/// `Retry-After`, but 429 for GHL's workflow requests (GHL retries only
/// on 429: a 503 would lose them).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (mounts a tmpfs); .ci/run runs it alone"]
async fn root_a_full_disk_answers_ghl_workflows_429_and_the_others_503() {
    let disk = SmallDisk::mount("16m");
    let (ghl, sc) = fast_simulators().await;
    let mappings = Mappings::ghl(|t| t);
    let db = DatabaseUrl::sqlite(&disk.path().join("mapper.db"))
        .as_str()
        .to_string();
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    let base = app.url().unwrap();
    let _filler = disk.fill();
    let client = reqwest::Client::new();
    let workflow: serde_json::Value = serde_json::from_slice(
        &std::fs::read("examples/payloads/ghl-workflow/WorkflowWebhook.json").unwrap(),
    )
    .unwrap();
    let mut seen = BTreeMap::<(&str, u16), usize>::new();
    for i in 0..400 {
        let mut body = workflow.clone();
        body["padding"] = format!("{i:05}{}", "y".repeat(8_000)).into();
        let answer = client
            .post(format!("{base}/webhooks/ghl-workflow?token=wf-token"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let retry_after = answer.headers().contains_key("retry-after");
        *seen.entry(("ghl-workflow", status)).or_default() += 1;
        if status != 202 {
            assert_eq!(
                status, 429,
                "a GHL workflow's request that cannot be stored"
            );
            assert!(retry_after, "with Retry-After");
            let (status, retry_after) = post(&client, &base, &feedback(i, 4, 8_000)).await;
            *seen.entry(("stickycards", status)).or_default() += 1;
            assert_eq!(status, 503, "a Sticky Cards webhook that cannot be stored");
            assert!(retry_after.is_some(), "with Retry-After");
            break;
        }
    }
    assert!(
        seen.contains_key(&("ghl-workflow", 429)),
        "the full disk refused nothing: {seen:?}"
    );
    eprintln!("answers on a full disk: {seen:?}");
    app.shutdown().await;
}

// ---- PostgreSQL restarted under load ---------------------------------

/// A fresh database on the server of `MAPPER_TEST_POSTGRES_URL`: its URL
/// (left for the next run's `DROP … WITH (FORCE)`: the server restarts under it).
async fn pg_database(suffix: &str) -> String {
    FreshPostgres::create(&format!("faults_{suffix}"))
        .await
        .expect("MAPPER_TEST_POSTGRES_URL names the PostgreSQL server to restart")
        .url
}

/// Restarts the machine's PostgreSQL cluster (as `.ci/run` starts it).
fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster under /etc/postgresql");
    let ok = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "pg_ctlcluster restart");
}

/// PostgreSQL restarted while webhooks pour in and deliveries run: while
/// it is down, webhooks are refused with 503 and `Retry-After` (or the
/// connection waits and they are stored); once it is back, everything
/// acknowledged is delivered, once.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "restarts the machine's PostgreSQL: .ci/run runs it alone"]
async fn pg_a_database_restarted_under_load_loses_nothing() {
    let db = pg_database("restart").await;
    let (ghl, sc) = fast_simulators().await;
    let mappings = Mappings::ghl(|t| t);
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    let base = app.url().unwrap();
    let total = 400;
    let customers = 20;
    // Senders: every webhook is posted until acknowledged, as platforms retry.
    let poster = {
        let base = base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut refused = BTreeMap::<u16, usize>::new();
            for i in 0..total {
                let body = feedback(i, customers, 0);
                loop {
                    let (status, retry_after) = post(&client, &base, &body).await;
                    match status {
                        200 | 202 => break,
                        503 => {
                            assert!(retry_after.is_some(), "a 503 says when to retry");
                            *refused.entry(503).or_default() += 1;
                        }
                        other => panic!("webhook {i}: serve answered {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            refused
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    let refused = poster.await.unwrap();
    let acked: Vec<usize> = (0..total).collect();
    let tally = assert_exactly_once(&db, &ghl, &acked, customers, Duration::from_secs(120)).await;
    eprintln!("postgres restarted: refused {refused:?}, {tally:?}");
    app.shutdown().await;
}

/// The events table locked by someone else (a migration, a long
/// `LOCK TABLE`) for 8 s on PostgreSQL: what the senders are answered,
/// and how long they wait; once the lock is gone, everything acknowledged
/// is delivered once.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "locks a PostgreSQL table: .ci/run runs it alone"]
async fn pg_a_locked_events_table_delays_or_refuses_and_loses_nothing() {
    use sqlx::Connection;
    let db = pg_database("lock").await;
    let (ghl, sc) = fast_simulators().await;
    let mappings = Mappings::ghl(|t| t);
    let app = start(&ghl, &sc, &mappings.path(), &db, &[]).await;
    let base = app.url().unwrap();
    let (mut acked, _) = post_range(&base, 0..10, 4, 0, false).await;
    let mut locker = sqlx::AnyConnection::connect(&db).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let locked_at = Instant::now();
    let posting = {
        let base = base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut answers = Vec::new();
            for i in 10..20 {
                let sent = Instant::now();
                let (status, retry_after) = post(&client, &base, &feedback(i, 4, 0)).await;
                answers.push((i, status, retry_after.is_some(), sent.elapsed()));
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_secs(8)).await;
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    let unlocked_after = locked_at.elapsed();
    let answers = posting.await.unwrap();
    eprintln!(
        "lock held {unlocked_after:?}; answers (i, status, retry-after, waited): {answers:?}"
    );
    for (i, status, retry_after, _) in &answers {
        match status {
            202 => acked.push(*i),
            503 => {
                assert!(retry_after, "a 503 says when to retry");
                post_until_acked(&base, *i..*i + 1, 4, 0).await;
                acked.push(*i);
            }
            other => panic!("webhook {i}: serve answered {other} while the table was locked"),
        }
    }
    assert!(
        answers.iter().all(|a| a.3 < Duration::from_secs(31)),
        "no sender waits past its own timeout"
    );
    acked.sort_unstable();
    assert_exactly_once(&db, &ghl, &acked, 4, Duration::from_secs(60)).await;
    app.shutdown().await;
}
