//! What the soak (tests/soak.rs) found, one finding per test, reduced to
//! the fewest changes and made deterministic: GHL's webhooks are held by
//! the test and handed to `mapper serve` in the order a platform without
//! ordering guarantees may deliver them, and slow answers are simulated
//! with the simulators' faults. Each test asserts what is right.

use mapper::sandbox::ghl::{GhlSandbox, GhlWebhooks};
use mapper::sandbox::{Fault, StickyCardsSandbox, StickyCardsWebhooks};
use mapper::store::Store;
use serde_json::{Value, json};
use std::time::Duration;

mod common;
use common::{Held, Serve, post_ghl, rest_within, serve_in, simulators};

/// Both simulators and serve, every webhook sent back to serve.
struct Fixture {
    ghl: GhlSandbox,
    sc: StickyCardsSandbox,
    s: Serve,
    store: Store,
    key: ed25519_dalek::SigningKey,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_in("mappings").await
    }

    /// The fixture over another mapping set (a changed copy of the shipped one).
    async fn start_in(mappings: &str) -> Fixture {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let key = ed25519_dalek::SigningKey::from_bytes(&[34u8; 32]);
        let pem = key
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let (ghl, sc) = simulators().await;
        let s = serve_in(
            &ghl,
            &sc,
            &[("GHL_WEBHOOK_PUBLIC_KEY", pem.as_str())],
            mappings,
        )
        .await;
        let store = Store::open(&s.db).await.unwrap();
        ghl.set_webhooks(Some(GhlWebhooks::new(
            format!("{}/webhooks/ghl", s.base),
            key.clone(),
        )))
        .unwrap();
        sc.set_webhooks(Some(StickyCardsWebhooks::new(format!(
            "{}/webhooks/stickycards?token=sc-token",
            s.base
        ))))
        .unwrap();
        Fixture {
            ghl,
            sc,
            s,
            store,
            key,
        }
    }

    async fn rest(&self) {
        rest_within(&self.store, &self.ghl, &self.sc, Duration::from_secs(30)).await;
    }

    /// Someone adds a contact in GHL; the engine makes the customer and
    /// its card. The contact id and the customer id.
    async fn person_added_in_ghl(&self, email: &str, phone: &str) -> (String, String) {
        let answer = reqwest::Client::new()
            .post(format!("{}/contacts/", self.ghl.base_url()))
            .bearer_auth(self.ghl.token())
            .header("Version", "2021-07-28")
            .json(&json!({
                "locationId": self.ghl.location_id(),
                "firstName": "Ada", "lastName": "Lind", "email": email, "phone": phone,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
        self.rest().await;
        let contact = self.ghl.contact_by_email(email).unwrap().id;
        let customer = self.sc.customer_by_email(email).unwrap().id;
        (contact, customer)
    }

    /// Staff add a customer with a card in Sticky Cards; the engine makes
    /// the contact. The contact id, the customer id and the card id.
    async fn person_added_in_sticky_cards(
        &self,
        email: &str,
        phone: &str,
    ) -> (String, String, String) {
        let customer = self.sc.add_customer(Some("Bo"), Some(email), Some(phone));
        self.sc
            .edit_customer(&customer.id, |c| c.last_name = Some("Lind".into()))
            .unwrap();
        let card = self.sc.add_card(Some(&customer.id), 0);
        assert!(
            self.sc
                .emit_event("CustomerCreatedEvent", &customer.id, None)
        );
        assert!(
            self.sc
                .emit_event("CardIssuedEvent", &customer.id, Some(&card.id))
        );
        self.rest().await;
        let contact = self.ghl.contact_by_email(email).unwrap().id;
        (contact, customer.id, card.id)
    }

    /// From now on GHL's webhooks are held for the test to hand over.
    async fn hold_ghl_webhooks(&self) -> Held {
        self.ghl.webhooks_idle().await;
        let held = Held::start().await;
        self.ghl
            .set_webhooks(Some(GhlWebhooks::new(held.url.clone(), self.key.clone())))
            .unwrap();
        held
    }

    /// From now on Sticky Cards' webhooks are held for the test to hand over.
    async fn hold_sticky_cards_webhooks(&self) -> Held {
        self.sc.webhooks_idle().await;
        let held = Held::start().await;
        self.sc
            .set_webhooks(Some(StickyCardsWebhooks::new(held.url.clone())))
            .unwrap();
        held
    }

    /// Hands a held Sticky Cards webhook to serve; the stored event's row.
    async fn deliver_sticky_cards(&self, body: &Value) -> i64 {
        let answer = reqwest::Client::new()
            .post(format!(
                "{}/webhooks/stickycards?token=sc-token",
                self.s.base
            ))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
        let answer: Value = answer.json().await.unwrap();
        answer["delivery_id"].as_i64().unwrap()
    }

    /// Hands a held GHL webhook to serve; the stored event's row.
    async fn deliver(&self, body: &Value) -> i64 {
        let (status, answer) = post_ghl(&self.s, &self.key, body).await;
        assert_eq!(status, 202, "{answer}");
        answer["delivery_id"].as_i64().unwrap()
    }

    /// Hands held GHL webhooks to serve, in order; the stored events' rows.
    async fn deliver_all(&self, bodies: &[Value]) -> Vec<i64> {
        let mut rows = Vec::new();
        for body in bodies {
            rows.push(self.deliver(body).await);
        }
        rows
    }

    /// The first name on each side: (GHL, Sticky Cards).
    fn first_names(&self, contact: &str, customer: &str) -> (Option<String>, Option<String>) {
        (
            self.ghl.contact(contact).and_then(|c| c.first_name),
            self.sc.customer(customer).and_then(|c| c.first_name),
        )
    }

    /// The state of stored events, for the failure messages.
    async fn states(&self, rows: &[i64]) -> Vec<String> {
        let mut out = Vec::new();
        for row in rows {
            let (state, _) = self.store.event(*row).await.unwrap().unwrap();
            out.push(format!("#{row} {state}"));
        }
        out
    }
}

/// Waits up to `limit` for `cond`; whether it came true.
async fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn kinds(bodies: &[Value]) -> Vec<&str> {
    kinds_of(bodies, "type")
}

fn kinds_of<'a>(bodies: &'a [Value], key: &str) -> Vec<&'a str> {
    bodies.iter().map(|b| b[key].as_str().unwrap()).collect()
}

/// Finding 1. An email change in GHL, then a tag added to the same contact;
/// GHL's three webhooks (ContactUpdate of the email; ContactUpdate and
/// ContactTagUpdate of the tag) reach serve with the ContactTagUpdate
/// first. The ContactTagUpdate carries the new email too: the engine keeps
/// it in the contact's mirror, although no mapping of ContactTagUpdate
/// syncs an email. The ContactUpdate of the email change then finds the
/// mirror already holding the new email (and newer tags): `stale`, and the
/// tag's ContactUpdate is no change for the email either. Sticky Cards
/// keeps the old email for good. Names and phone go the same way.
#[tokio::test(flavor = "multi_thread")]
async fn an_email_change_overtaken_by_a_later_tag_update_still_reaches_sticky_cards() {
    let f = Fixture::start().await;
    let (contact, customer) = f
        .person_added_in_ghl("ada@example.com", "+14155550301")
        .await;
    let held = f.hold_ghl_webhooks().await;
    f.ghl
        .edit_contact(&contact, |c| c.email = Some("ada.new@example.com".into()))
        .unwrap();
    // Two edits by a person are not in the same millisecond (GHL's
    // timestamps have no finer grain).
    tokio::time::sleep(Duration::from_millis(5)).await;
    f.ghl
        .edit_contact(&contact, |c| c.tags.push("vip".into()))
        .unwrap();
    f.ghl.webhooks_idle().await;
    let sent = held.take();
    assert_eq!(
        kinds(&sent),
        ["ContactUpdate", "ContactUpdate", "ContactTagUpdate"]
    );
    let mut rows = Vec::new();
    for body in [&sent[2], &sent[0], &sent[1]] {
        rows.push(f.deliver(body).await);
    }
    f.rest().await;
    let customer = f.sc.customer(&customer).unwrap();
    assert_eq!(customer.segments, ["vip"], "the tag was synced");
    assert_eq!(
        customer.email.as_deref(),
        Some("ada.new@example.com"),
        "the email change never reached Sticky Cards; events (tag update, email update, tag's contact update): {:?}",
        f.states(&rows).await
    );
}

/// Finding 2. While a GHL event of a contact is being delivered (here its
/// Sticky Cards call is answered after 3 s; under load, the rate limiter's
/// wait does the same), a Sticky Cards event of the same person writes the
/// contact's name to GHL, and the engine notes in the contact's mirror what
/// it wrote. When the GHL event ends, it writes back the mirror it had read
/// before its call, which erases that note. GHL's webhook about the
/// engine's write is then taken for a change someone made in GHL and is
/// synced back to Sticky Cards, where the name has changed again since:
/// the newer name is overwritten with the older one. (Since finding 6 the
/// Sticky Cards event waits for the GHL event of the same person to be
/// journaled before it writes: the two deliveries no longer overlap, and
/// the test checks that they do not, then the end state as before.)
#[tokio::test(flavor = "multi_thread")]
async fn a_write_to_ghl_during_a_ghl_delivery_is_still_recognised_as_its_echo() {
    let f = Fixture::start().await;
    let (contact, customer, card) = f
        .person_added_in_sticky_cards("bo@example.com", "+14155550302")
        .await;
    let held = f.hold_ghl_webhooks().await;
    // 1. Someone changes the email in GHL; the engine's upsert to Sticky
    //    Cards is answered 3 s late.
    f.sc.inject_on(
        "POST /v1/customers",
        Fault::AnswerLate(Duration::from_secs(3)),
        1,
    );
    f.ghl
        .edit_contact(&contact, |c| c.email = Some("bo.new@example.com".into()))
        .unwrap();
    let before = f.sc.request_log().len();
    f.ghl.webhooks_idle().await;
    let email_change = held.take();
    assert_eq!(kinds(&email_change), ["ContactUpdate"]);
    let first = f.deliver(&email_change[0]).await;
    let answered = |sc: &StickyCardsSandbox| {
        sc.request_log()
            .iter()
            .any(|r| r.method == "POST" && r.path == "/v1/customers" && r.status.is_some())
    };
    for _ in 0..50 {
        if f.sc.request_log().len() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 2. Meanwhile she renames herself in the app and reinstalls the card:
    //    the engine writes the name to GHL.
    f.sc.edit_customer(&customer, |c| c.first_name = Some("Bodil".into()))
        .unwrap();
    f.sc.install_card(&card).unwrap();
    let written = |ghl: &GhlSandbox| {
        ghl.request_log().iter().any(|r| {
            r.method == "PUT"
                && r.status == Some(200)
                && r.body.as_ref().is_some_and(|b| b["firstName"] == "Bodil")
        })
    };
    for _ in 0..400 {
        if written(&f.ghl) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(written(&f.ghl), "the engine wrote the name to GHL");
    assert!(
        answered(&f.sc),
        "the name was written to GHL while the GHL event of the same person was still being delivered"
    );
    f.rest().await;
    // 3. Staff rename her once more in Sticky Cards (Sticky Cards sends
    //    nothing for a changed customer).
    f.sc.edit_customer(&customer, |c| c.first_name = Some("Bodi".into()))
        .unwrap();
    // 4. GHL's webhooks about the engine's write arrive.
    let echoes = held.take();
    assert_eq!(kinds(&echoes)[0], "ContactUpdate");
    assert_eq!(echoes[0]["firstName"], "Bodil");
    let mut rows = vec![first];
    for body in &echoes {
        rows.push(f.deliver(body).await);
    }
    f.rest().await;
    assert_eq!(
        f.sc.customer(&customer).unwrap().first_name.as_deref(),
        Some("Bodi"),
        "the echo of the engine's own write was synced back over a newer name; events (email change, echoes): {:?}",
        f.states(&rows).await
    );
}

/// Finding 3. Someone tags a contact "vip" in GHL; before that webhook is
/// delivered, staff add segment "regulars" in Sticky Cards and the engine
/// tags the contact "regulars" in GHL (its answer arrives 300 ms after GHL
/// made the change: the network). The engine notes the contact's tags as
/// (what it knew) + "regulars", stamped with its own clock at the answer,
/// which is later than both GHL webhooks: the person's (tags "vip") and
/// GHL's about the engine's write (tags "vip", "regulars"). Both are
/// recorded `stale`, so "vip" never becomes a segment (until some later
/// tag is applied).
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_applied_in_ghl_while_the_engine_tags_the_contact_becomes_a_segment() {
    let f = Fixture::start().await;
    let (contact, customer) = f
        .person_added_in_ghl("cy@example.com", "+14155550303")
        .await;
    let held = f.hold_ghl_webhooks().await;
    // 1. Someone tags the contact "vip" in GHL; its webhooks are on their way.
    f.ghl
        .edit_contact(&contact, |c| c.tags.push("vip".into()))
        .unwrap();
    // 2. Staff add a segment in Sticky Cards: the engine adds the tag in GHL.
    f.ghl.inject_on(
        &format!("POST /contacts/{contact}/tags"),
        Fault::AnswerLate(Duration::from_millis(300)),
        1,
    );
    f.sc.edit_customer(&customer, |c| c.segments.push("regulars".into()))
        .unwrap();
    f.rest().await;
    assert_eq!(
        f.ghl.contact(&contact).unwrap().tags,
        ["vip", "regulars"],
        "the engine tagged the contact"
    );
    // 3. GHL's webhooks arrive in the order GHL sent them.
    let sent = held.take();
    assert_eq!(
        kinds(&sent),
        ["ContactUpdate", "ContactTagUpdate", "ContactTagUpdate"]
    );
    let mut rows = Vec::new();
    for body in &sent {
        rows.push(f.deliver(body).await);
    }
    f.rest().await;
    let mut segments = f.sc.customer(&customer).unwrap().segments;
    segments.sort();
    assert_eq!(
        segments,
        ["regulars", "vip"],
        "the tag applied in GHL never became a segment; events (person's update and tag update, the engine's tag update): {:?}",
        f.states(&rows).await
    );
}

/// Finding 4. Staff set a card's balance to 100, then to 241; Sticky Cards'
/// two CardBalanceUpdatedEvents reach serve in the other order. The engine
/// sees that the late one is older (its mirror keeps 241) but the mapping
/// writes its balance anyway: GHL's loyalty_points ends at 100 while the
/// card holds 241. A late CardInstalledEvent, which also carries the
/// balance (and the names), does the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_sticky_cards_event_does_not_overwrite_a_newer_balance_in_ghl() {
    let f = Fixture::start().await;
    let (contact, _customer, card) = f
        .person_added_in_sticky_cards("di@example.com", "+14155550304")
        .await;
    let held = f.hold_sticky_cards_webhooks().await;
    f.sc.set_card_balance(&card, 100).unwrap();
    f.sc.set_card_balance(&card, 241).unwrap();
    f.sc.webhooks_idle().await;
    let sent = held.take();
    assert_eq!(
        kinds_of(&sent, "event_type"),
        ["CardBalanceUpdatedEvent", "CardBalanceUpdatedEvent"]
    );
    let mut rows = Vec::new();
    for body in [&sent[1], &sent[0]] {
        rows.push(f.deliver_sticky_cards(body).await);
    }
    f.rest().await;
    let field = f
        .ghl
        .custom_fields()
        .into_iter()
        .find(|c| c.field_key == "contact.loyalty_points")
        .unwrap()
        .id;
    assert_eq!(f.sc.card(&card).unwrap().balance, 241);
    assert_eq!(
        f.ghl.contact(&contact).unwrap().custom_field(&field),
        Some(&json!(241)),
        "GHL shows the balance of the late, older event; events (241, then the late 100): {:?}",
        f.states(&rows).await
    );
}

/// Finding 5. SQLite is busy for longer than the engine's `busy_timeout`
/// (5 s) just as a delivery ends: here the test holds the write lock for
/// 25 s; in the soak, a database slowed down under load did it (statements
/// of several seconds, then "database is locked"). The worker cannot
/// record the outcome ("cannot record the outcome … database is locked")
/// and leaves the event `processing` until its 10-minute lease ends, and
/// every later event of that customer waits behind it: a tag added in GHL
/// a moment later reaches Sticky Cards only after those 10 minutes.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_that_ends_while_sqlite_is_busy_is_recorded_once_it_is_free() {
    use sqlx::Connection as _;
    let f = Fixture::start().await;
    let (contact, customer) = f
        .person_added_in_ghl("ed@example.com", "+14155550305")
        .await;
    // The engine's upsert to Sticky Cards is answered 1.5 s late, so the
    // test can take the lock while the delivery is under way.
    f.sc.inject_on(
        "POST /v1/customers",
        Fault::AnswerLate(Duration::from_millis(1500)),
        1,
    );
    let before = f.sc.request_log().len();
    f.ghl
        .edit_contact(&contact, |c| c.email = Some("ed.new@example.com".into()))
        .unwrap();
    let upserting = |sc: &StickyCardsSandbox| {
        sc.request_log()
            .iter()
            .skip(before)
            .any(|r| r.method == "POST" && r.path == "/v1/customers" && r.status.is_none())
    };
    for _ in 0..100 {
        if upserting(&f.sc) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(upserting(&f.sc), "the delivery is under way");
    let mut lock = sqlx::SqliteConnection::connect(&f.s.db).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    // Longer than the 5 s busy_timeout of each write the delivery makes
    // after its call (sync log, mirror, outcome).
    tokio::time::sleep(Duration::from_secs(25)).await;
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    drop(lock);
    // A moment later the person tags the contact.
    f.ghl
        .edit_contact(&contact, |c| c.tags.push("vip".into()))
        .unwrap();
    f.ghl.webhooks_idle().await;
    // Both are delivered within seconds of the lock's end.
    let mut pending = Vec::new();
    for _ in 0..50 {
        pending = f
            .store
            .counts()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| ["processing", "received", "retrying"].contains(&c.state.as_str()))
            .collect();
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let customer = f.sc.customer(&customer).unwrap();
    assert_eq!(customer.email.as_deref(), Some("ed.new@example.com"));
    assert!(
        pending.is_empty() && customer.segments == ["vip"],
        "10 s after SQLite was free again: {pending:?}, segments {:?}",
        customer.segments
    );
}

/// Finding 6 (the soak's names that ended different). Staff rename a
/// customer in Sticky Cards and reinstall the card; the engine writes the
/// name to GHL, whose answer is slow. GHL sends its webhook about that
/// write at once, and it reaches the engine while the write is still
/// unanswered. Staff meanwhile rename her again. The webhook is the
/// engine's own echo; before, it was read against a mirror that did not
/// hold the write yet, looked like a rename made in GHL (which owns names),
/// and put the first name back over the newer one in Sticky Cards for good.
#[tokio::test(flavor = "multi_thread")]
async fn an_echo_that_arrives_before_the_write_is_answered_is_not_synced_back() {
    let f = Fixture::start().await;
    let (contact, customer, card) = f
        .person_added_in_sticky_cards("ivo@example.com", "+14155550306")
        .await;
    let held = f.hold_ghl_webhooks().await;
    // 1. Renamed in Sticky Cards, the card reinstalled: the engine's write
    //    to GHL is applied at once and answered 2 s later.
    f.ghl.inject_on(
        "PUT /contacts/",
        Fault::AnswerLate(Duration::from_secs(2)),
        1,
    );
    f.sc.edit_customer(&customer, |c| c.first_name = Some("Ivo".into()))
        .unwrap();
    f.sc.install_card(&card).unwrap();
    let echoes = std::sync::Mutex::new(Vec::new());
    eventually(Duration::from_secs(2), || {
        let mut echoes = echoes.lock().unwrap();
        echoes.extend(held.take());
        echoes.iter().any(|b| b["firstName"] == "Ivo")
    })
    .await;
    let echoes = echoes.into_inner().unwrap();
    let unanswered = |ghl: &GhlSandbox| {
        !ghl.request_log().iter().any(|r| {
            r.method == "PUT"
                && r.status.is_some()
                && r.body.as_ref().is_some_and(|b| b["firstName"] == "Ivo")
        })
    };
    assert!(
        echoes.iter().any(|b| b["firstName"] == "Ivo"),
        "GHL sent its webhook about the write: {echoes:?}"
    );
    // 2. Staff rename her again (Sticky Cards sends nothing yet).
    f.sc.edit_customer(&customer, |c| c.first_name = Some("Bea".into()))
        .unwrap();
    // 3. GHL's webhook about the engine's write arrives, the write still
    //    unanswered.
    assert!(
        unanswered(&f.ghl),
        "the repro needs the write to GHL unanswered here"
    );
    let mut rows = f.deliver_all(&echoes).await;
    f.rest().await;
    assert_eq!(
        f.sc.customer(&customer).unwrap().first_name.as_deref(),
        Some("Bea"),
        "the echo of the engine's own write was synced back over a newer name; echo events: {:?}",
        f.states(&rows).await
    );
    // 4. The card reinstalled: the newer name reaches GHL, and both sides
    //    end equal.
    f.sc.install_card(&card).unwrap();
    f.rest().await;
    rows.extend(f.deliver_all(&held.take()).await);
    f.rest().await;
    assert_eq!(
        f.first_names(&contact, &customer),
        (Some("Bea".into()), Some("Bea".into())),
        "events: {:?}",
        f.states(&rows).await
    );
}

/// Finding 7 (the same names, from the soak's sync log). The engine writes
/// a rename from Sticky Cards to GHL, but GHL's rate limit makes the write
/// wait. Meanwhile someone tags the contact in GHL: that webhook carries
/// the old names, as GHL still held them. The engine dated its write from
/// when it decided to make it, before the tag, so the tag's webhook looked
/// like a newer rename made in GHL, and the old names went to Sticky Cards.
/// A write dates from when it left, after the rate limiter.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_sent_while_a_write_waits_for_the_rate_limit_does_not_undo_it() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(
        std::path::Path::new("mappings"),
        &dir.path().join("mappings"),
    );
    common::copy_dir(std::path::Path::new("schemas"), &dir.path().join("schemas"));
    let ghl_profile = dir.path().join("mappings/targets/ghl.yaml");
    let profile = std::fs::read_to_string(&ghl_profile).unwrap();
    let shipped = "rate_limit: { requests: 100, per_seconds: 10, daily: 200000, per: location }";
    assert!(
        profile.contains(shipped),
        "the GHL profile's rate limit moved"
    );
    std::fs::write(
        &ghl_profile,
        profile.replace(
            shipped,
            "rate_limit: { requests: 1, per_seconds: 2, daily: 200000, per: location }",
        ),
    )
    .unwrap();
    let f = Fixture::start_in(dir.path().join("mappings").to_str().unwrap()).await;
    let (contact, customer, card) = f
        .person_added_in_sticky_cards("ivy@example.com", "+14155550307")
        .await;
    // The card installed once: the custom fields an install writes exist in
    // GHL from now on (their creation would otherwise take the rate limit).
    f.sc.install_card(&card).unwrap();
    f.rest().await;
    let held = f.hold_ghl_webhooks().await;
    // 1. Points at the till (a write to GHL that spends the rate limit),
    //    then a rename and a reinstall: the engine's write of the name waits.
    f.sc.set_card_balance(&card, 20).unwrap();
    f.sc.edit_customer(&customer, |c| c.first_name = Some("Ivy".into()))
        .unwrap();
    f.sc.install_card(&card).unwrap();
    // The reinstall's delivery starts when the points' write is answered.
    let points_written = |ghl: &GhlSandbox| {
        ghl.request_log().iter().any(|r| {
            r.method == "PUT"
                && r.status == Some(200)
                && r.body
                    .as_ref()
                    .is_some_and(|b| b.to_string().contains("\"field_value\":20"))
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || points_written(&f.ghl)).await,
        "the points reached GHL"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 2. Someone tags the contact in GHL, the name not written yet.
    f.ghl
        .edit_contact(&contact, |c| c.tags.push("vip".into()))
        .unwrap();
    assert_eq!(
        f.ghl.contact(&contact).unwrap().first_name.as_deref(),
        Some("Bo"),
        "the repro needs the name's write still waiting for the rate limit here"
    );
    // 3. The write goes out. Then GHL's webhooks arrive: the tag's (with
    //    the old name) and those about the engine's writes (after step 4).
    eventually(Duration::from_secs(6), || {
        f.first_names(&contact, &customer).0.as_deref() == Some("Ivy")
    })
    .await;
    f.rest().await;
    // 4. Staff rename her once more (Sticky Cards sends nothing for that).
    f.sc.edit_customer(&customer, |c| c.first_name = Some("Bea".into()))
        .unwrap();
    let rows = f.deliver_all(&held.take()).await;
    f.rest().await;
    assert_eq!(
        f.first_names(&contact, &customer),
        (Some("Ivy".into()), Some("Bea".into())),
        "GHL's webhooks (from before the write, and about it) wrote names back to Sticky Cards; events: {:?}",
        f.states(&rows).await
    );
    assert_eq!(
        f.sc.customer(&customer).unwrap().segments,
        ["vip"],
        "the tag still becomes a segment"
    );
}
