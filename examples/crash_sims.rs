//! The GHL and Sticky Cards simulators as a process of their own, for
//! `scripts/crash-test.sh` and `scripts/reload-under-load.sh`: `serve` is
//! killed and restarted many times, and the simulators must outlive it to
//! count what it applied.
//!
//! Prints one JSON line (the base URLs and credentials), then reads
//! commands on stdin, one a line, answering each with one JSON line:
//! - `report`: what GHL now holds, counted by marker (`cm-<digits>` in a
//!   note's body): `notes`, `marked` (distinct markers), `unmarked`
//!   (notes without one), `duplicates`
//!   (markers on more than one note, with their count), `markers` (every
//!   marker seen), `contacts`, `requests` (to GHL, by status);
//!   `by_contact` (each contact's phone, email and the markers of its
//!   notes, oldest first: order and duplicates per person),
//!   `same_phone`/`same_email` (phones and emails held by more than one
//!   contact, with their count), `throttled` (the first 20 requests
//!   answered 429: method, path, milliseconds since the start), `refused`
//!   (the first 20 other 4xx/5xx answers: status, method, path, body),
//!   `last_request_ms` and `now_ms` (the last request to GHL and the
//!   report, in milliseconds since the start);
//! - `quit` (or the end of stdin): stops.
//!
//! By default GHL runs without a rate limit: these runs measure what a
//! crash or a reload does, not GHL's 10 requests per second. Flags (for
//! `scripts/replica-test.sh`):
//! - `--ghl-limit`: GHL's real limit, 100 requests per 10 s per location
//!   (`RateLimit::ghl()`), answered 429 beyond it;
//! - `--allow-duplicates`: the location allows duplicate contacts, so two
//!   creates of one person make two contacts (counted by `same_phone`)
//!   instead of the second being refused with the first's id.

use mapper::sandbox::{GhlConfig, GhlSandbox, RateLimit, StickyCardsConfig, StickyCardsSandbox};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;

/// The marker in a note's body: `cm-` and the digits after it.
fn marker(body: &str) -> Option<u64> {
    let at = body.find("cm-")?;
    let digits: String = body[at + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Values held by more than one contact, with their count.
fn shared(values: impl Iterator<Item = Option<String>>) -> BTreeMap<String, usize> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for v in values.flatten() {
        *count.entry(v).or_default() += 1;
    }
    count.retain(|_, n| *n > 1);
    count
}

fn report(ghl: &GhlSandbox, started: std::time::Instant) -> serde_json::Value {
    let mut by_marker: BTreeMap<u64, usize> = BTreeMap::new();
    let mut notes = 0;
    let mut unmarked = 0;
    let mut by_contact = Vec::new();
    let contacts = ghl.contacts();
    for contact in &contacts {
        let mut markers = Vec::new();
        for note in ghl.notes_of(&contact.id) {
            notes += 1;
            match marker(&note.body) {
                Some(m) => {
                    *by_marker.entry(m).or_default() += 1;
                    markers.push(m);
                }
                None => unmarked += 1,
            }
        }
        by_contact.push(json!({
            "id": contact.id,
            "phone": contact.phone,
            "email": contact.email,
            "markers": markers,
        }));
    }
    let mut requests: BTreeMap<String, usize> = BTreeMap::new();
    let mut throttled = Vec::new();
    let mut refused = Vec::new();
    let mut last_ms = 0;
    for r in ghl.request_log() {
        last_ms = last_ms.max(r.received.saturating_duration_since(started).as_millis() as u64);
        let status = r.status.map_or("none".to_string(), |s| s.to_string());
        *requests.entry(status).or_default() += 1;
        if r.status.is_some_and(|s| s >= 400 && s != 429) && refused.len() < 20 {
            refused.push(json!({
                "status": r.status,
                "method": r.method,
                "path": r.path,
                "body": r.body,
            }));
        }
        if r.status == Some(429) && throttled.len() < 20 {
            throttled.push(json!({
                "method": r.method,
                "path": r.path,
                "at_ms": r.received.saturating_duration_since(started).as_millis() as u64,
            }));
        }
    }
    let duplicates: BTreeMap<String, usize> = by_marker
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(m, n)| (m.to_string(), *n))
        .collect();
    json!({
        "notes": notes,
        "marked": by_marker.len(),
        "unmarked": unmarked,
        "duplicates": duplicates,
        "markers": by_marker.keys().collect::<Vec<_>>(),
        "contacts": contacts.len(),
        "requests": requests,
        "by_contact": by_contact,
        "same_phone": shared(contacts.iter().map(|c| c.phone.clone())),
        "same_email": shared(contacts.iter().map(|c| c.email.clone())),
        "throttled": throttled,
        "refused": refused,
        "last_request_ms": last_ms,
        "now_ms": started.elapsed().as_millis() as u64,
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let flags: Vec<String> = std::env::args().skip(1).collect();
    for flag in &flags {
        if flag != "--ghl-limit" && flag != "--allow-duplicates" {
            eprintln!("crash_sims: unknown flag `{flag}` (--ghl-limit, --allow-duplicates)");
            std::process::exit(2);
        }
    }
    let has = |name: &str| flags.iter().any(|f| f == name);
    let started = std::time::Instant::now();
    let ghl = GhlSandbox::start(GhlConfig {
        rate_limit: if has("--ghl-limit") {
            RateLimit::ghl()
        } else {
            RateLimit::unlimited()
        },
        allow_duplicates: has("--allow-duplicates"),
        ..GhlConfig::default()
    })
    .await?;
    let sc = StickyCardsSandbox::start(StickyCardsConfig::default()).await?;
    println!(
        "{}",
        json!({
            "GHL_API_BASE_URL": ghl.base_url(),
            "GHL_API_TOKEN": ghl.token(),
            "GHL_LOCATION_ID": ghl.location_id(),
            "STICKYCARDS_API_BASE_URL": sc.base_url(),
            "STICKYCARDS_API_KEY": sc.api_key(),
        })
    );
    // The simulators' state is read under their own locks: stdin is read on
    // a blocking thread while their servers keep running on the runtime.
    let ghl = Arc::new(ghl);
    let reader = Arc::clone(&ghl);
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "report" => println!("{}", report(&reader, started)),
                "quit" => break,
                other => println!(
                    "{}",
                    json!({ "error": format!("unknown command `{other}`") })
                ),
            }
        }
    })
    .await?;
    drop(sc);
    drop(ghl);
    Ok(())
}
