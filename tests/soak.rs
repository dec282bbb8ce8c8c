//! Soak of the two-way sync: a population of people on both platforms, then
//! a long deterministic stream of changes made as people make them, in GHL
//! and in Sticky Cards, while both simulators send their webhooks back to
//! `mapper serve` late, out of order and some of them twice. At the end the
//! system must come to rest with both sides equal on everything the shipped
//! mappings sync, no event dead, a bounded number of events (no loop) and a
//! bounded number of API calls, which the test prints as one line for
//! BENCHMARKS.md.
//!
//! The sequence is drawn from a seeded xorshift, so a failing run can be
//! drawn again (`SOAK_SEED=0x…` overrides the seed; the network's timing
//! stays its own). `SERVE_LOG=1` shows the engine's log, and
//! `SOAK_KEEP_DB=/path/soak.db` keeps a copy of its database for
//! `mapper log` / `mapper status`.

use mapper::sandbox::ghl::{CustomFieldValue, GhlSandbox, GhlWebhooks};
use mapper::sandbox::{StickyCardsSandbox, StickyCardsWebhooks, WebhookDelivery};
use mapper::store::Store;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod common;
use common::{Serve, post_ghl, rest_within as rest, serve_holding};

/// People added in GHL (the engine creates them in Sticky Cards).
const GHL_PEOPLE: usize = 20;
/// People added in Sticky Cards (the engine creates them in GHL).
const SC_PEOPLE: usize = 20;
/// Mixed changes after the population is in place. With the population,
/// the echoes and the copies, about 2,500 webhooks; the shipped rate limits
/// (GHL 100 per 10 s, Sticky Cards 8 per s) make that about 100 s.
const CHANGES: usize = 800;
const SEED: u64 = 0x50A4_2026_0001;
/// Between two people added (and two first balances). Forty people with
/// their events in one second drove serve's SQLite, in a debug build on 2
/// cores, into "database is locked" now and then, which leaves an event
/// `processing` for its whole 10-minute lease (finding 5 of
/// tests/soak_findings.rs, reproduced there on its own); people are not
/// added that fast by hand anyway.
const POPULATION_PACE: Duration = Duration::from_millis(50);

/// Tags people apply in GHL; "referrer" is one of `vars.not_segments` and
/// must never become a segment.
const TAGS: &[&str] = &[
    "vip",
    "gold",
    "silver",
    "newsletter",
    "brunch",
    "weekend",
    "family",
    "student",
    "local",
    "referrer",
];
/// Segments staff add in Sticky Cards (they become GHL tags).
const SEGMENTS: &[&str] = &["regulars", "birthday club", "app users", "lapsed"];
const FIRST: &[&str] = &[
    "Ana", "Bea", "Cai", "Dov", "Eli", "Fay", "Gus", "Hana", "Ivo",
];
const LAST: &[&str] = &[
    "Alva", "Brook", "Costa", "Dunn", "Ekko", "Frey", "Gale", "Holt",
];

/// The sequence of changes, reproducible from the seed (the simulators' draws).
struct Rng(mapper::sandbox::Draws);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(mapper::sandbox::Draws::new(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.draw()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

/// One person, linked on both sides, and what the test made of them.
struct Person {
    contact: String,
    customer: String,
    card: String,
    /// Where the person was added. Names are changed on that side only:
    /// with both sides renaming at once, ownership decides (GHL's name
    /// wins over an older Sticky Cards event), which tests/sync_rules.rs
    /// asserts; here it would make the expected end state timing-dependent.
    in_ghl: bool,
    bonus: i64,
    emails: u32,
    renames: u32,
    /// The tags of `TAGS` this person has applied in GHL and the segments
    /// staff have added in Sticky Cards: the next change is drawn from
    /// these, not from the platforms' state (which the engine changes at
    /// its own pace), so that one seed always draws the same sequence.
    tags: BTreeSet<&'static str>,
    segments: BTreeSet<&'static str>,
}

/// What a change is; how many of each were made is on the `details:` line
/// a failing run prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    GhlTagAdded,
    GhlTagRemoved,
    GhlBonusRaised,
    GhlEmailChanged,
    GhlNameChanged,
    ScBalanceSet,
    ScSegmentAdded,
    ScRenamedAndReinstalled,
}

/// Webhooks as unruly as the platforms': late, out of order, some twice.
fn unruly(mut delivery: WebhookDelivery, seed: u64) -> WebhookDelivery {
    delivery.jitter = Duration::from_millis(150);
    delivery.duplicate_every = Some(5);
    delivery.seed = seed;
    // Sticky Cards sends once; a webhook lost to a busy receiver would be
    // a test artefact, not something the engine can be asked to repair.
    delivery.retry_any_failure = true;
    delivery.retries = delivery.retries.max(3);
    delivery
}

/// The sum of a Prometheus counter over its labels.
async fn metric(s: &Serve, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Stored events by state.
async fn states(store: &Store) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    for c in store.counts().await.unwrap() {
        *out.entry(c.state).or_insert(0) += c.count;
    }
    out
}

/// With `SOAK_KEEP_DB=/path/soak.db`, copies serve's database there when
/// the test ends, passed or failed (dropped before the serve that owns it),
/// to look into with `mapper log` / `mapper status`.
struct KeepDb(String);

impl Drop for KeepDb {
    fn drop(&mut self) {
        if let Ok(keep) = std::env::var("SOAK_KEEP_DB") {
            let db = self.0.trim_start_matches("sqlite://");
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::copy(format!("{db}{ext}"), format!("{keep}{ext}"));
            }
        }
    }
}

/// Printed to stderr when dropped by a failing test.
struct OnFailure(String);

impl Drop for OnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0);
        }
    }
}

/// Target API calls so far, leaving out the one-time listing and creation
/// of GHL custom fields and pipelines (cached for the life of the process).
fn calls(ghl: &GhlSandbox, sc: &StickyCardsSandbox) -> usize {
    let one_time = |path: &str| path.ends_with("/customFields") || path.ends_with("/pipelines");
    ghl.request_log()
        .iter()
        .filter(|r| !one_time(&r.path))
        .count()
        + sc.request_log().len()
}

fn custom_field(contact: &mapper::sandbox::ghl::Contact, id: &str) -> Option<f64> {
    contact.custom_field(id).and_then(|v| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_thousand_mixed_changes_come_to_rest_with_both_sides_equal() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let started = Instant::now();
    // A failing run's `details:` line prints the seed in hex, as SOAK_SEED
    // takes it.
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(SEED);
    let mut rng = Rng::new(seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&[33u8; 32]);
    let pem = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    let (ghl, sc) = common::simulators().await;
    let http = reqwest::Client::new();
    // Calls the test itself makes to the simulators' APIs (not the engine's).
    let mut own_calls = 0usize;
    // The location already has the custom field people use to give points.
    http.post(format!(
        "{}/locations/{}/customFields",
        ghl.base_url(),
        ghl.location_id()
    ))
    .bearer_auth(ghl.token())
    .header("Version", "2021-07-28")
    .json(&json!({"name": "Bonus Points", "dataType": "NUMERICAL", "model": "contact"}))
    .send()
    .await
    .unwrap();
    let bonus_field = ghl
        .custom_fields()
        .into_iter()
        .find(|f| f.field_key == "contact.bonus_points")
        .unwrap()
        .id;
    // Sticky Cards writes are held to coalesce for 5 minutes in production;
    // by default the soak sends each at once (the count of calls per change
    // without merging). `SOAK_COALESCE_WINDOW=2s` measures it with merging.
    let window = std::env::var("SOAK_COALESCE_WINDOW")
        .ok()
        .map(|w| {
            mapper::config::compile::parse_duration(&w)
                .unwrap_or_else(|| panic!("SOAK_COALESCE_WINDOW={w} is not a duration"))
        })
        .unwrap_or_default();
    let s = serve_holding(
        &ghl,
        &sc,
        &[("GHL_WEBHOOK_PUBLIC_KEY", pem.as_str())],
        "mappings",
        window,
    )
    .await;
    let store = Store::open(&s.db).await.unwrap();
    let _keep = KeepDb(s.db.clone());
    let mut ghl_hooks = GhlWebhooks::new(format!("{}/webhooks/ghl", s.base), key.clone());
    ghl_hooks.delivery = unruly(ghl_hooks.delivery, seed ^ 1);
    ghl.set_webhooks(Some(ghl_hooks)).unwrap();
    let mut sc_hooks =
        StickyCardsWebhooks::new(format!("{}/webhooks/stickycards?token=sc-token", s.base));
    sc_hooks.delivery = unruly(sc_hooks.delivery, seed ^ 2);
    sc.set_webhooks(Some(sc_hooks)).unwrap();
    let mut changes = 0usize;

    // ---- the population
    // People added in GHL: each becomes a Sticky Cards customer with a card.
    for i in 0..GHL_PEOPLE {
        let answer = http
            .post(format!("{}/contacts/", ghl.base_url()))
            .bearer_auth(ghl.token())
            .header("Version", "2021-07-28")
            .json(&json!({
                "locationId": ghl.location_id(),
                "firstName": FIRST[i % FIRST.len()], "lastName": format!("Ghl{i}"),
                "email": format!("g{i}@soak.example"), "phone": format!("+1415555{:04}", 1000 + i),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
        own_calls += 1;
        changes += 1;
        tokio::time::sleep(POPULATION_PACE).await;
    }
    // People added in Sticky Cards by staff, with a card: each becomes a
    // GHL contact.
    let mut sc_added = Vec::new();
    for i in 0..SC_PEOPLE {
        let customer = sc.add_customer(
            Some(FIRST[(i + 3) % FIRST.len()]),
            Some(&format!("s{i}@soak.example")),
            Some(&format!("+1415555{:04}", 2000 + i)),
        );
        sc.edit_customer(&customer.id, |c| c.last_name = Some(format!("Sc{i}")))
            .unwrap();
        let card = sc.add_card(Some(&customer.id), 0);
        assert!(sc.emit_event("CustomerCreatedEvent", &customer.id, None));
        assert!(sc.emit_event("CardIssuedEvent", &customer.id, Some(&card.id)));
        sc_added.push((customer.id, card.id));
        changes += 1;
        tokio::time::sleep(POPULATION_PACE).await;
    }
    rest(&store, &ghl, &sc, Duration::from_secs(240)).await;
    assert_eq!(states(&store).await.get("dead"), None, "population");
    assert_eq!(
        ghl.contacts().len(),
        GHL_PEOPLE + SC_PEOPLE,
        "no contact twice"
    );
    assert_eq!(
        sc.customers().len(),
        GHL_PEOPLE + SC_PEOPLE,
        "no customer twice"
    );
    assert_eq!(sc.cards().len(), GHL_PEOPLE + SC_PEOPLE, "one card each");
    let mut people: Vec<Person> = Vec::new();
    for i in 0..GHL_PEOPLE {
        let contact = ghl.contact_by_email(&format!("g{i}@soak.example")).unwrap();
        let customer = sc.customer_by_email(&format!("g{i}@soak.example")).unwrap();
        let card = sc
            .cards()
            .into_iter()
            .find(|k| k.customer_id.as_deref() == Some(customer.id.as_str()))
            .unwrap();
        people.push(Person {
            contact: contact.id,
            customer: customer.id,
            card: card.id,
            in_ghl: true,
            bonus: 0,
            emails: 0,
            renames: 0,
            tags: BTreeSet::new(),
            segments: BTreeSet::new(),
        });
    }
    for (i, (customer, card)) in sc_added.into_iter().enumerate() {
        let contact = ghl.contact_by_email(&format!("s{i}@soak.example")).unwrap();
        people.push(Person {
            contact: contact.id,
            customer,
            card,
            in_ghl: false,
            bonus: 0,
            emails: 0,
            renames: 0,
            tags: BTreeSet::new(),
            segments: BTreeSet::new(),
        });
    }
    // Every card gets its first points at the till, and the Sticky Cards
    // people install theirs (the install tells GHL the card and its holder).
    for (i, p) in people.iter().enumerate() {
        sc.set_card_balance(&p.card, 50 + i as i64).unwrap();
        changes += 1;
        if !p.in_ghl {
            sc.install_card(&p.card).unwrap();
            changes += 1;
        }
        tokio::time::sleep(POPULATION_PACE).await;
    }
    let population = rest(&store, &ghl, &sc, Duration::from_secs(240)).await;
    let population_took = started.elapsed();

    // ---- the soak: changes as people make them, in bursts
    // Only changes the shipped mappings sync. Left out on purpose: GHL's
    // loyalty_points (Sticky Cards owns the balance; not synced back), a
    // phone change (the matching key), a segment removed in Sticky Cards
    // and a customer edited there without an install (Sticky Cards sends
    // no webhook for either), a name changed on both sides at once (see
    // `Person::in_ghl`).
    let mut made = std::collections::BTreeMap::<Kind, usize>::new();
    let mut reposted = 0usize;
    let mut person = 0usize;
    for n in 0..CHANGES {
        // Often the same person again at once: their webhooks then overlap
        // in the jitter window and overtake each other.
        if !rng.percent(30) {
            person = rng.below(people.len());
        }
        let p = &mut people[person];
        // Only changes that change something: each is a webhook.
        let new_tags: Vec<&'static str> = TAGS
            .iter()
            .copied()
            .filter(|t| !p.tags.contains(t))
            .collect();
        let own_tags: Vec<&'static str> = p.tags.iter().copied().collect();
        let new_segments: Vec<&'static str> = SEGMENTS
            .iter()
            .copied()
            .filter(|s| !p.segments.contains(s))
            .collect();
        let mut kinds = vec![
            (Kind::GhlBonusRaised, 14),
            (Kind::GhlEmailChanged, 6),
            (Kind::ScBalanceSet, 18),
        ];
        if !new_tags.is_empty() {
            kinds.push((Kind::GhlTagAdded, 22));
        }
        if !own_tags.is_empty() {
            kinds.push((Kind::GhlTagRemoved, 12));
        }
        if !new_segments.is_empty() {
            kinds.push((Kind::ScSegmentAdded, 6));
        }
        kinds.push(if p.in_ghl {
            (Kind::GhlNameChanged, 8)
        } else {
            (Kind::ScRenamedAndReinstalled, 8)
        });
        let total: usize = kinds.iter().map(|(_, w)| w).sum();
        let mut draw = rng.below(total);
        let kind = kinds
            .iter()
            .find(|(_, w)| {
                if draw < *w {
                    true
                } else {
                    draw -= w;
                    false
                }
            })
            .map(|(k, _)| *k)
            .unwrap();
        match kind {
            Kind::GhlTagAdded => {
                let tag = new_tags[rng.below(new_tags.len())];
                p.tags.insert(tag);
                ghl.edit_contact(&p.contact, |c| c.tags.push(tag.to_string()))
                    .unwrap();
            }
            Kind::GhlTagRemoved => {
                let gone = own_tags[rng.below(own_tags.len())];
                p.tags.remove(gone);
                ghl.edit_contact(&p.contact, |c| c.tags.retain(|t| t != gone))
                    .unwrap();
            }
            Kind::GhlBonusRaised => {
                p.bonus += 1 + rng.below(40) as i64;
                let (field, value) = (bonus_field.clone(), json!(p.bonus));
                ghl.edit_contact(&p.contact, |c| {
                    match c.custom_fields.iter_mut().find(|f| f.id == field) {
                        Some(f) => f.value = value,
                        None => c.custom_fields.push(CustomFieldValue { id: field, value }),
                    }
                })
                .unwrap();
            }
            Kind::GhlEmailChanged => {
                p.emails += 1;
                let email = format!("p{person}.e{}@soak.example", p.emails);
                ghl.edit_contact(&p.contact, |c| c.email = Some(email))
                    .unwrap();
            }
            Kind::GhlNameChanged => {
                p.renames += 1;
                let first = rng.percent(50);
                let name = if first {
                    format!("{}{}", FIRST[rng.below(FIRST.len())], p.renames)
                } else {
                    format!("{}{}", LAST[rng.below(LAST.len())], p.renames)
                };
                ghl.edit_contact(&p.contact, |c| {
                    if first {
                        c.first_name = Some(name);
                    } else {
                        c.last_name = Some(name);
                    }
                })
                .unwrap();
            }
            Kind::ScBalanceSet => {
                let now = sc.card(&p.card).unwrap().balance;
                let drawn = rng.below(1000) as i64;
                let balance = if drawn == now { drawn + 1 } else { drawn };
                sc.set_card_balance(&p.card, balance).unwrap();
            }
            Kind::ScSegmentAdded => {
                let segment = new_segments[rng.below(new_segments.len())];
                p.segments.insert(segment);
                sc.edit_customer(&p.customer, |c| c.segments.push(segment.to_string()))
                    .unwrap();
            }
            Kind::ScRenamedAndReinstalled => {
                // Sticky Cards sends nothing for a changed customer; the
                // name reaches GHL with the next install of the card.
                p.renames += 1;
                let (first, last) = (
                    format!("{}{}", FIRST[rng.below(FIRST.len())], p.renames),
                    format!("{}{}", LAST[rng.below(LAST.len())], p.renames),
                );
                sc.edit_customer(&p.customer, |c| {
                    c.first_name = Some(first);
                    c.last_name = Some(last);
                })
                .unwrap();
                sc.install_card(&p.card).unwrap();
            }
        }
        *made.entry(kind).or_default() += 1;
        changes += 1;
        // Now and then, a GHL webhook already delivered comes again (a
        // platform that lost the ack): serve answers 200 `duplicate`.
        if n % 40 == 39 {
            let sent = ghl.webhooks_sent();
            // Drawn whatever the log's length (which timing decides), so
            // the sequence of changes does not depend on it.
            let pick = rng.next();
            if !sent.is_empty() {
                let again = &sent[(pick % sent.len() as u64) as usize];
                let (status, answer) = post_ghl(&s, &key, &again.body).await;
                assert_eq!(status, 200, "{answer}");
                assert_eq!(answer["status"], "duplicate", "{answer}");
                reposted += 1;
            }
        }
        // People do not all click at once: a pause now and then.
        let pause = if rng.percent(10) { 150 } else { 15 };
        tokio::time::sleep(Duration::from_millis(pause + rng.below(20) as u64)).await;
    }
    // Delivery is paced by the targets' rate limits (Sticky Cards: 8 calls
    // a second) and a debug build on 2 cores: the bounds leave room for a
    // CI runner that is busy with other work too.
    let soaked = rest(&store, &ghl, &sc, Duration::from_secs(480)).await;
    let soak_took = started.elapsed();

    // ---- an older snapshot, late: recorded stale, nothing synced
    // For people whose email changed, GHL sends once more a contact webhook
    // from before the change (a new delivery, so not a duplicate).
    let sent = ghl.webhooks_sent();
    let mut late = Vec::new();
    for p in people.iter().filter(|p| p.emails > 0).take(5) {
        let now = ghl.contact(&p.contact).unwrap();
        let Some(old) = sent.iter().find(|w| {
            w.kind == "ContactUpdate"
                && w.body["id"] == p.contact.as_str()
                && w.body["email"].as_str() != now.email.as_deref()
        }) else {
            continue;
        };
        let mut body = old.body.clone();
        body["webhookId"] = json!(format!("soak-late-{}", late.len()));
        let (status, answer) = post_ghl(&s, &key, &body).await;
        assert_eq!(status, 202, "{answer}");
        late.push((answer["delivery_id"].as_i64().unwrap(), p.customer.clone()));
    }
    assert!(!late.is_empty(), "some email changed: {made:?}");

    // Before the campaign tag below: contacts with a tag that is not a
    // segment. Printed, not asserted (SOAK_VERBOSE=1 lists them): set_segments
    // replaces the customer's list, so a segment added in Sticky Cards while
    // a GHL tag change of the same person is on its way can be replaced
    // away, while the engine has already tagged the contact with it; the
    // next tag change in GHL sets the list right again.
    let not_segments = not_segments();
    let behind = people
        .iter()
        .filter(|p| {
            let (tags, linked) = tags_and_segments(
                &ghl.contact(&p.contact).unwrap(),
                &sc.customer(&p.customer).unwrap(),
                &not_segments,
            );
            let behind = !tags.is_subset(&linked);
            if behind && std::env::var("SOAK_VERBOSE").is_ok() {
                eprintln!(
                    "behind: {} / {}: tags {tags:?}, segments {linked:?}",
                    p.contact, p.customer
                );
            }
            behind
        })
        .count();

    // ---- a campaign tag for everyone: the last tag change of each person
    // is then an addition (see the segments check below).
    for p in &people {
        ghl.edit_contact(&p.contact, |c| c.tags.push("spring promo".into()))
            .unwrap();
        changes += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let events = rest(&store, &ghl, &sc, Duration::from_secs(240)).await;
    let took = started.elapsed();

    // ---- at rest: what was measured
    let counts = states(&store).await;
    let webhooks = metric(&s, "mapper_webhooks_received_total").await as usize;
    let duplicates = metric(&s, "mapper_webhooks_duplicate_total").await as usize;
    let api_calls = calls(&ghl, &sc) - own_calls;
    let (echo, stale) = (
        counts.get("echo").copied().unwrap_or(0),
        counts.get("stale").copied().unwrap_or(0),
    );
    eprintln!(
        "soak: window={window:?} changes={changes} webhooks={webhooks} events_stored={events} echo={echo} stale={stale} duplicate={duplicates} api_calls={api_calls} api_calls_per_event={:.2} api_calls_per_change={:.2} tags_not_segments_before_sweep={behind}",
        api_calls as f64 / events as f64,
        api_calls as f64 / changes as f64,
    );
    // The one line above is what BENCHMARKS.md takes; this one is printed
    // only if a check below fails.
    let _details = OnFailure(format!(
        "details: seed={seed:#x} made={made:?} states={counts:?} events after population {population}, after the soak {soaked}; before the campaign tag {behind} contact(s) had a tag that no segment matched; took {:.1?} (population {:.1?}, soak {:.1?})",
        took, population_took, soak_took
    ));

    let points_field = ghl
        .custom_fields()
        .into_iter()
        .find(|f| f.field_key == "contact.loyalty_points")
        .unwrap()
        .id;

    // ---- at rest: what must hold
    assert_eq!(counts.get("dead"), None, "no event dead: {counts:?}");
    for (row, customer) in &late {
        let (state, _) = store.event(*row).await.unwrap().unwrap();
        assert_eq!(
            state, "stale",
            "the older snapshot of {customer} was not synced"
        );
    }
    // The simulators never gave up on a webhook: every one was stored.
    for w in ghl.webhooks_sent().iter().chain(sc.webhooks_sent().iter()) {
        assert!(w.delivered(), "{w:?}");
    }
    assert_eq!(
        ghl.contacts().len(),
        people.len(),
        "no contact created twice"
    );
    assert_eq!(
        sc.customers().len(),
        people.len(),
        "no customer created twice"
    );
    assert_eq!(sc.cards().len(), people.len(), "no second card");
    // Enough traffic to call it a soak, and every kind of answer seen.
    assert!(webhooks >= 2000, "only {webhooks} webhooks received");
    assert!(echo > 0, "the engine's own writes came back as echoes");
    assert!(stale > 0, "older snapshots were recorded stale");
    // Every copy was stored once: the simulators' copies (answered 200
    // `duplicate`; first deliveries are answered 202) and the test's own.
    let copies = ghl
        .webhooks_sent()
        .iter()
        .chain(sc.webhooks_sent().iter())
        .filter(|w| w.status == Some(200))
        .count();
    assert!(
        copies > 0 && reposted > 0,
        "{copies} copies, {reposted} re-posted"
    );
    assert_eq!(duplicates, copies + reposted, "duplicates answered");
    // No loop: a change causes a bounded number of webhooks (its own, the
    // echo of the engine's write on the other side and that write's echo,
    // the copies), so the events stored stay within a small multiple of
    // the changes; a loop grows them until the rest times out. First runs:
    // 2.41 to 2.43 events per change; the bound leaves ~30%.
    assert!(
        events <= (3.2 * changes as f64) as i64,
        "{events} events for {changes} changes"
    );
    // The floor is 1 call per change: the write on the other side (a tag
    // removal costs none; a person added costs the searches, the create,
    // the card and the ids written back). First runs: 1.22 to 1.23 per
    // change; the bound leaves ~30%.
    let per_change = api_calls as f64 / changes as f64;
    assert!(
        per_change <= 1.6,
        "{api_calls} API calls for {changes} changes ({per_change:.2} per change)"
    );
    // How long it took is in the `details:` line, not asserted: speed is
    // for benchmarks, and every wait above is bounded on its own.

    // Both sides equal on what the mappings sync.
    let mut points = Vec::new();
    let mut segments = Vec::new();
    let mut contact_info = Vec::new();
    for p in &people {
        let contact = ghl.contact(&p.contact).unwrap();
        let customer = sc.customer(&p.customer).unwrap();
        let card = sc.card(&p.card).unwrap();
        let who = format!("{} / {}", p.contact, p.customer);
        // GHL shows the card's balance (Sticky Cards owns it).
        let shown = custom_field(&contact, &points_field);
        if shown != Some(card.balance as f64) {
            points.push(format!(
                "{who}: loyalty_points {shown:?}, balance {}",
                card.balance
            ));
        }
        // What the mappings guarantee: a tag applied in GHL makes the
        // segments the contact's tags without `vars.not_segments`; a
        // removal alone sends nothing and reaches Sticky Cards with the
        // next tag applied, which "spring promo" is, for everyone, last.
        // (That last tag also repairs finding 3 of tests/soak_findings.rs,
        // a tag applied in GHL while the engine tags the contact, which
        // never becomes a segment by itself; the `details:` line of a
        // failing run counts the contacts with a tag no segment matched
        // before it.)
        let (tags, linked) = tags_and_segments(&contact, &customer, &not_segments);
        if tags != linked {
            segments.push(format!("{who}: tags {tags:?}, segments {linked:?}"));
        }
        for (what, on_ghl, on_sc) in [
            ("email", &contact.email, &customer.email),
            ("phone", &contact.phone, &customer.phone),
            ("first name", &contact.first_name, &customer.first_name),
            ("last name", &contact.last_name, &customer.last_name),
        ] {
            if on_ghl != on_sc {
                contact_info.push(format!(
                    "{who} {what}: GHL {on_ghl:?}, Sticky Cards {on_sc:?}"
                ));
            }
        }
    }
    // Finding 4 of tests/soak_findings.rs broke this once: a Sticky Cards
    // event arriving after a newer one of the same card wrote its older
    // balance to GHL.
    assert!(
        points.is_empty(),
        "loyalty_points ≠ balance:\n{}",
        points.join("\n")
    );
    assert!(
        segments.is_empty(),
        "segments ≠ tags:\n{}",
        segments.join("\n")
    );
    // Findings 1 and 2 of tests/soak_findings.rs broke this once (each is
    // reproduced there):
    // - finding 1: a ContactTagUpdate that overtakes the ContactUpdate of
    //   an email or name change puts the new value into the mirror without
    //   syncing it (no mapping of that event syncs contact info); the
    //   ContactUpdate is then `stale` and Sticky Cards keeps the old value;
    // - finding 2: a GHL event being delivered writes back the mirror it
    //   read before its calls, erasing what a Sticky Cards event wrote to
    //   the same contact meanwhile; the echo of that write then looks like
    //   a change made in GHL and is synced back, over a later change made
    //   in Sticky Cards.
    assert!(
        contact_info.is_empty(),
        "contact info differs ({} field(s)):\n{}",
        contact_info.len(),
        contact_info.join("\n")
    );
}

/// `vars.not_segments` of mappings/mapper.yaml: GHL tags that are never
/// segments.
fn not_segments() -> BTreeSet<String> {
    let text = std::fs::read_to_string("mappings/mapper.yaml").unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("not_segments:"))
        .unwrap();
    let list = line.split_once('[').unwrap().1.split_once(']').unwrap().0;
    list.split(',').map(|t| t.trim().to_string()).collect()
}

/// A contact's tags that should be segments, and the customer's segments.
fn tags_and_segments(
    contact: &mapper::sandbox::ghl::Contact,
    customer: &mapper::sandbox::stickycards::Customer,
    not_segments: &BTreeSet<String>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let tags = contact
        .tags
        .iter()
        .filter(|t| !not_segments.contains(*t))
        .cloned()
        .collect();
    (tags, customer.segments.iter().cloned().collect())
}
