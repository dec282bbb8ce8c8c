//! Reload under load, the short version of scripts/reload-under-load.sh:
//! the mapping folder of a running `serve` is rewritten 40 times, valid and
//! broken sets in turn, while webhooks keep coming. Every request is
//! answered 202, every broken set is refused while the previous one keeps
//! serving, every valid set is applied, and every acknowledged webhook is
//! delivered and applied exactly once.

mod common;

use common::{copy_dir, serve_env};
use mapper::app::{App, AppConfig, DatabaseUrl, Env};
use mapper::config::compile::compile_dir;
use mapper::sandbox::{GhlConfig, GhlSandbox, RateLimit, StickyCardsConfig, StickyCardsSandbox};
use mapper::store::Store;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RELOADS: usize = 40;
const DESCRIPTION: &str = "    description: The customer left feedback → a note with the rating and comment, and last_activity.\n";

/// Webhook `i`: a feedback whose comment is its marker.
fn feedback(i: usize) -> String {
    let c = i % 25;
    serde_json::json!({
        "event_type": "FeedbackCreatedEvent",
        "timestamp": format!("2025-03-10T{:02}:{:02}:{:02}Z", (i / 3600) % 24, (i / 60) % 60, i % 60),
        "customer_id": format!("cus_r{c}"),
        "card_id": format!("card_r{c}"),
        "phone_number": format!("+1 415 555 {:04}", 4000 + c),
        "email": format!("reload{c}@example.com"),
        "feedback": { "rating": 3, "comment": format!("reload-marker-{i}") },
    })
    .to_string()
}

/// The set number `k` writes: valid for even `k`, broken three ways in turn.
fn set_text(original: &str, k: usize) -> (bool, String) {
    if k.is_multiple_of(2) {
        let valid = DESCRIPTION.replace("last_activity.", &format!("last_activity (set {k})."));
        return (true, original.replacen(DESCRIPTION, &valid, 1));
    }
    let broken = match (k / 2) % 3 {
        0 => format!("{original}\n  - name: broken-{k}\n    source: [unclosed\n"),
        1 => original.replacen(
            "      comment: \"@comment\"\n",
            &format!("      comment: $.feedback.coment_{k}\n"),
            1,
        ),
        _ => original.replacen(
            "      - op: add_note\n",
            &format!("      - op: add_note_{k}\n"),
            1,
        ),
    };
    assert_ne!(broken, original, "set {k}: the breakage no longer applies");
    (false, broken)
}

/// `mapper_config_reloads_total{result}` from /metrics.
async fn reloads(client: &reqwest::Client, base: &str, result: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("mapper_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn forty_reloads_under_load_fail_no_request_and_drop_no_event() {
    let ghl = GhlSandbox::start(GhlConfig {
        rate_limit: RateLimit::unlimited(),
        ..GhlConfig::default()
    })
    .await
    .unwrap();
    let sc = StickyCardsSandbox::start(StickyCardsConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for sub in ["mappings", "schemas"] {
        copy_dir(Path::new(sub), &dir.path().join(sub));
    }
    let mappings = dir.path().join("mappings");
    let ghl_profile = mappings.join("targets/ghl.yaml");
    let text = std::fs::read_to_string(&ghl_profile).unwrap();
    let fast = text.replace(
        "rate_limit: { requests: 100, per_seconds: 10, daily: 200000, per: location }",
        "rate_limit: { requests: 100000, per_seconds: 1, per: location }",
    );
    assert_ne!(fast, text, "GHL's rate limit line moved: update this test");
    std::fs::write(&ghl_profile, fast).unwrap();
    let file = mappings.join("stickycards-ghl/engagement.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    assert!(
        original.contains(DESCRIPTION),
        "the feedback mapping's description moved"
    );

    let db = DatabaseUrl::sqlite(&dir.path().join("mapper.db"))
        .as_str()
        .to_string();
    let program = compile_dir(&mappings)
        .program
        .expect("the copy checks clean");
    let mut config = AppConfig::serve(
        program,
        db.parse::<DatabaseUrl>().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        Some(mappings.clone()),
        Env::from_map(serve_env(&ghl, &sc)),
    );
    config.coalesce_window = Some(Duration::ZERO);
    let app = App::start(config).await.unwrap();
    let base = app.url().unwrap();

    // The load: two senders, about 50 webhooks a second, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(Mutex::new(0usize));
    let answers = Arc::new(Mutex::new(BTreeMap::<u16, Vec<usize>>::new()));
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (stop, next, answers, base) = (
            Arc::clone(&stop),
            Arc::clone(&next),
            Arc::clone(&answers),
            base.clone(),
        );
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let status = client
                    .post(format!("{base}/webhooks/stickycards?token=sc-token"))
                    .header("content-type", "application/json")
                    .body(feedback(i))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                answers.lock().unwrap().entry(status).or_default().push(i);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }

    let client = reqwest::Client::new();
    let mut wrong = Vec::new();
    for k in 0..RELOADS {
        let (ok_before, failed_before) = (
            reloads(&client, &base, "ok").await,
            reloads(&client, &base, "failed").await,
        );
        let (valid, text) = set_text(&original, k);
        if k % 4 >= 2 {
            // As editors save: a new file renamed over the old one.
            let tmp = file.with_extension("yaml.save");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        } else {
            std::fs::write(&file, &text).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut ok, mut failed) = (0, 0);
        while Instant::now() < deadline {
            ok = reloads(&client, &base, "ok").await - ok_before;
            failed = reloads(&client, &base, "failed").await - failed_before;
            if ok + failed > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let right = if valid {
            ok == 1 && failed == 0
        } else {
            ok == 0 && failed == 1
        };
        if !right {
            wrong.push((k, valid, ok, failed));
        }
    }
    // Back to the shipped set for the webhooks still to come.
    std::fs::write(&file, &original).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    assert!(
        wrong.is_empty(),
        "reloads with the wrong outcome (k, valid, ok, failed): {wrong:?}"
    );

    let answers = answers.lock().unwrap().clone();
    let acked = answers.get(&202).cloned().unwrap_or_default();
    let others: BTreeMap<&u16, usize> = answers
        .iter()
        .filter(|(s, _)| **s != 202)
        .map(|(s, v)| (s, v.len()))
        .collect();
    assert!(others.is_empty(), "requests not accepted: {others:?}");
    assert!(acked.len() > 100, "the load ran: {} webhooks", acked.len());

    let store = Store::open(&db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut by_state = BTreeMap::new();
    while Instant::now() < deadline {
        by_state.clear();
        for c in store.counts().await.unwrap() {
            *by_state.entry(c.state).or_insert(0i64) += c.count;
        }
        if by_state.keys().all(|s| s == "delivered") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        by_state.get("delivered").copied().unwrap_or(0) as usize,
        acked.len(),
        "every acknowledged webhook delivered: {by_state:?}"
    );
    let mut notes = BTreeMap::<String, usize>::new();
    for contact in ghl.contacts() {
        for note in ghl.notes_of(&contact.id) {
            if let Some(m) = note.body.rsplit(": ").next() {
                *notes.entry(m.to_string()).or_default() += 1;
            }
        }
    }
    let lost: Vec<&usize> = acked
        .iter()
        .filter(|i| !notes.contains_key(&format!("reload-marker-{i}")))
        .collect();
    assert!(lost.is_empty(), "acknowledged, never applied: {lost:?}");
    let twice: Vec<_> = notes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "applied twice: {twice:?}");
    eprintln!(
        "{RELOADS} reloads, {} webhooks acknowledged, delivered and applied once",
        acked.len()
    );
    app.shutdown().await;
}
