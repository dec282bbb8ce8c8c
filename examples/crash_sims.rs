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
//! - `quit` (or the end of stdin): stops.
//!
//! GHL runs without a rate limit: these runs measure what a crash or a
//! reload does, not GHL's 10 requests per second.

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

fn report(ghl: &GhlSandbox) -> serde_json::Value {
    let mut by_marker: BTreeMap<u64, usize> = BTreeMap::new();
    let mut notes = 0;
    let mut unmarked = 0;
    let contacts = ghl.contacts();
    for contact in &contacts {
        for note in ghl.notes_of(&contact.id) {
            notes += 1;
            match marker(&note.body) {
                Some(m) => *by_marker.entry(m).or_default() += 1,
                None => unmarked += 1,
            }
        }
    }
    let mut requests: BTreeMap<String, usize> = BTreeMap::new();
    for r in ghl.request_log() {
        let status = r.status.map_or("none".to_string(), |s| s.to_string());
        *requests.entry(status).or_default() += 1;
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
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let ghl = GhlSandbox::start(GhlConfig {
        rate_limit: RateLimit::unlimited(),
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
                "report" => println!("{}", report(&reader)),
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
