//! Simulated Sticky Cards APIs: the seed API (`mappings/targets/stickycards.yaml`)
//! and Boomerangme v2 (`stickycards-boomerangme.yaml`), in one server over
//! one state (customers, cards, pushes).
//!
//! Seed API, `Authorization: Bearer <api_key>`, errors `{message}` (422 adds
//! `errors: {field: [..]}`):
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /v1/customers` | 201 customer; with `id`: update, 200 |
//! | `GET /v1/customers?phone_number=\|email=` | `{data: [customer]}` |
//! | `GET /v1/customers/{id}` | customer |
//! | `PUT /customers/{id}/segments` `{segments}` | customer (also under `/v1`) |
//! | `PUT /cards/{id}/balance` `{balance}` (absolute; seed 000 names no other field) | card (also under `/v1`) |
//! | `PUT /cards/{id}/status` `{status: Active\|Inactive}` | card (also under `/v1`) |
//! | `POST /v1/pushes/customer` `{customer_id, message, title?}` | 201 push |
//! | `POST /v1/cards` `{customer_id, template_id?}` | 201 card |
//! | `PUT /v1/customers/{id}/preferences` `{opt_in, channel?}` | `{customer_id, preferences}` |
//!
//! Boomerangme v2, `X-API-Key: <api_key>`, envelope `{code, createdAt,
//! responseId, data}` (lists add `meta`), errors `{code, createdAt,
//! responseId, message}`:
//!
//! | Request | Answer |
//! |---|---|
//! | `POST` / `GET /api/v2/customers` (`phone`, `email`, `page`, `itemsPerPage`) | 201 customer / list |
//! | `GET` / `PATCH` / `DELETE /api/v2/customers/{id}` | customer |
//! | `POST` / `GET /api/v2/cards` (`customerId`, `templateId`) | 201 card / list |
//! | `GET` / `DELETE /api/v2/cards/{id}` | card |
//! | `POST /api/v2/cards/{id}/add-point\|subtract-point` `{points, comment?, purchaseSum?}` | card |
//! | `POST` / `GET /api/v2/pushes` `{message, templateId?, cardId?, scheduledAt?}` | 201 push / list |
//!
//! Rules of our own (neither API documents them):
//! - Unknown body properties → 422 `The X field is prohibited.`; numbers may
//!   be sent as JSON integers or integer strings.
//! - A customer needs a phone or an email; a phone or email another
//!   customer has → 409 `{message, id}` (the existing id).
//! - Phones are stored as sent and compared on their digits only, emails
//!   case-insensitively.
//! - A balance never goes below 0 (422).
//! - PATCH accepts `phone` (the public SDK's update omits it; the profile
//!   sends it).
//! - Unknown card ids → 404, unless `auto_create_cards` (sandbox mode): then
//!   the card is created with balance 0 and no customer.
//! - Rate limit (default 100 per second): 429 `{message: "Too Many
//!   Attempts."}` with `Retry-After`, `X-RateLimit-Limit` and
//!   `X-RateLimit-Remaining`.
//!
//! Webhooks (when [`StickyCardsConfig::webhooks`] or
//! [`StickyCardsSandbox::set_webhooks`] gives a URL): only the events
//! of seed 000's catalogue (`schemas/events/stickycards/`), for changes made
//! through either API or by hand. There is no customer-updated, card-status
//! or deletion event in that catalogue, so those changes send nothing.
//!
//! | Change | Event |
//! |---|---|
//! | `POST /v1/customers` that creates, `POST /api/v2/customers` | `CustomerCreatedEvent` |
//! | `POST /v1/cards`, `POST /api/v2/cards` | `CardIssuedEvent` |
//! | `PUT …/cards/{id}/balance` that changes it, `add-point` / `subtract-point`, [`StickyCardsSandbox::set_card_balance`] | `CardBalanceUpdatedEvent` (with `previous_balance`) |
//! | `PUT …/customers/{id}/segments`, [`StickyCardsSandbox::edit_customer`] | `CustomerSegmentLinkedEvent` per segment added |
//! | [`StickyCardsSandbox::install_card`] / [`remove_card`](StickyCardsSandbox::remove_card) / [`expire_card`](StickyCardsSandbox::expire_card) | `CardInstalledEvent` / `CardRemovedEvent` / `CardExpiredEvent` |
//!
//! Events are about a customer: a card without one (`auto_create_cards`)
//! sends nothing. The body is the seed's flat snake_case shape (the keys of
//! `examples/payloads/stickycards/`), `timestamp` in RFC 3339 with
//! milliseconds, never twice the same (receivers dedup on customer, card and
//! time), or with [`StickyCardsWebhookFormat::Boomerangme`] the
//! `{timestamp, event, is_sandbox, data}` shape of
//! `examples/payloads/stickycards-boomerangme/` (unix seconds). `card.status`
//! is the card's wallet state (`not_installed`, `installed`, `removed`,
//! `expired`), not the API's `Active` / `Inactive`. No header is added: the
//! token goes in the URL (`?token=`). Delivery: one attempt (see
//! [`WebhookDelivery::stickycards`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::common::{
    self, Controls, EventClock, Fault, Ids, Incoming, Limiter, LoggedRequest, Outbox, RateLimit,
    Reply, Running, SentWebhook, Simulator, WebhookDelivery, WebhookLog, lock,
};

/// Settings of a [`StickyCardsSandbox`].
#[derive(Clone, Debug)]
pub struct StickyCardsConfig {
    /// Address to bind; `None` = `127.0.0.1:0`.
    pub addr: Option<SocketAddr>,
    /// The key: `Bearer` on the seed API, `X-API-Key` on v2.
    pub api_key: String,
    /// Default 100 requests per second, no daily budget.
    pub rate_limit: RateLimit,
    /// Create unknown cards on first use instead of answering 404.
    pub auto_create_cards: bool,
    /// Where and how to send webhooks; `None` sends none (see also
    /// [`StickyCardsSandbox::set_webhooks`]).
    pub webhooks: Option<StickyCardsWebhooks>,
}

/// The body shape of Sticky Cards webhooks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StickyCardsWebhookFormat {
    /// Seed 000's flat snake_case events (source profile `seed`).
    #[default]
    Seed,
    /// `{timestamp, event, is_sandbox, data: {cardholder_…}}`, as Boomerangme
    /// delivers (source profile `boomerangme`).
    Boomerangme,
}

/// Webhooks of a [`StickyCardsSandbox`].
#[derive(Clone, Debug, PartialEq)]
pub struct StickyCardsWebhooks {
    /// E.g. `http://127.0.0.1:PORT/webhooks/stickycards?token=…`.
    pub url: String,
    /// Body shape.
    pub format: StickyCardsWebhookFormat,
    /// Delay, timeout and retries.
    pub delivery: WebhookDelivery,
}

impl StickyCardsWebhooks {
    /// Seed-shaped webhooks to `url`, one attempt each.
    pub fn new(url: impl Into<String>) -> StickyCardsWebhooks {
        StickyCardsWebhooks {
            url: url.into(),
            format: StickyCardsWebhookFormat::Seed,
            delivery: WebhookDelivery::stickycards(),
        }
    }
}

impl Default for StickyCardsConfig {
    fn default() -> StickyCardsConfig {
        StickyCardsConfig {
            addr: None,
            api_key: "sandbox-key".to_string(),
            rate_limit: RateLimit {
                max: 100,
                interval: Duration::from_secs(1),
                daily: None,
            },
            auto_create_cards: false,
            webhooks: None,
        }
    }
}

/// A customer (card holder).
#[derive(Clone, Debug, PartialEq)]
pub struct Customer {
    /// UUID-shaped id.
    pub id: String,
    /// First name.
    pub first_name: Option<String>,
    /// Last name (`surname` on v2).
    pub last_name: Option<String>,
    /// Email as sent.
    pub email: Option<String>,
    /// Phone as sent.
    pub phone: Option<String>,
    /// v2 `gender` (0, 1, 2).
    pub gender: Option<i64>,
    /// Date of birth as sent.
    pub date_of_birth: Option<String>,
    /// v2 `externalUserId`.
    pub external_user_id: Option<String>,
    /// Segment names (replaced by `PUT /customers/{id}/segments`).
    pub segments: Vec<String>,
    /// Channel → opt-in (`all` when no channel was given).
    pub preferences: Map<String, Value>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// A card.
#[derive(Clone, Debug, PartialEq)]
pub struct Card {
    /// Serial number, `NNNNNN-NNN-NNN`.
    pub id: String,
    /// Its holder.
    pub customer_id: Option<String>,
    /// Template it was issued from.
    pub template_id: Option<String>,
    /// Points.
    pub balance: i64,
    /// `Active` or `Inactive`.
    pub status: String,
    /// Where the card is in the customer's wallet, as webhooks tell it:
    /// `not_installed`, `installed`, `removed` or `expired`.
    pub wallet_status: String,
    /// When it was first installed.
    pub installed_date: Option<String>,
    /// Last thing that happened to the card (install, removal, balance).
    pub last_activity: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// A push notification sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Push {
    /// Its id.
    pub id: String,
    /// Seed API: the customer.
    pub customer_id: Option<String>,
    /// v2: the card.
    pub card_id: Option<String>,
    /// v2: the template.
    pub template_id: Option<String>,
    /// Text.
    pub message: String,
    /// Seed API: title.
    pub title: Option<String>,
    /// v2: when it is scheduled.
    pub scheduled_at: Option<String>,
    /// Creation time.
    pub created_at: String,
}

/// One change of a card's balance, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceChange {
    /// The card.
    pub card_id: String,
    /// Points added (negative: removed).
    pub delta: i64,
    /// Balance after the change.
    pub balance: i64,
    /// v2 `comment`.
    pub comment: Option<String>,
}

#[derive(Default)]
struct State {
    customers: Vec<Customer>,
    cards: Vec<Card>,
    pushes: Vec<Push>,
    changes: Vec<BalanceChange>,
    /// Segment names in order of first link; a segment's id is its
    /// position + 1.
    segments: Vec<String>,
    clock: EventClock,
    /// Boomerangme stamps whole seconds: the last second given to each
    /// (event, customer, card), so that two such events never share one.
    seconds: HashMap<(String, String, String), i64>,
}

struct Sticky {
    api_key: String,
    auto_create_cards: bool,
    controls: Controls,
    limiter: Mutex<Limiter>,
    state: Mutex<State>,
    ids: Ids,
    hooks: Mutex<Option<Arc<Hooks>>>,
    sent: WebhookLog,
}

/// Where webhooks go while they are on.
struct Hooks {
    outbox: Outbox,
    format: StickyCardsWebhookFormat,
}

impl Hooks {
    fn start(w: StickyCardsWebhooks, sent: WebhookLog) -> std::io::Result<Hooks> {
        // Nothing is signed: the token is in the URL.
        let sign: common::SignFn = Box::new(|_: &[u8]| Vec::new());
        Ok(Hooks {
            outbox: Outbox::start(&w.url, w.delivery, sign, sent)?,
            format: w.format,
        })
    }
}

/// What an event adds to the common fields.
enum Detail {
    None,
    Balance { previous: i64 },
    Segment { name: String },
}

/// A running Sticky Cards simulator. Stops on drop or
/// [`StickyCardsSandbox::shutdown`].
pub struct StickyCardsSandbox {
    inner: Arc<Sticky>,
    running: Running,
}

impl StickyCardsSandbox {
    /// Binds (127.0.0.1:0 unless `config.addr`) and serves in a tokio task.
    pub async fn start(config: StickyCardsConfig) -> std::io::Result<StickyCardsSandbox> {
        let sent = WebhookLog::default();
        let hooks = match config.webhooks {
            None => None,
            Some(w) => Some(Arc::new(Hooks::start(w, Arc::clone(&sent))?)),
        };
        let inner = Arc::new(Sticky {
            api_key: config.api_key,
            auto_create_cards: config.auto_create_cards,
            controls: Controls::default(),
            limiter: Mutex::new(Limiter::new(config.rate_limit)),
            state: Mutex::new(State::default()),
            ids: Ids::new("stickycards"),
            hooks: Mutex::new(hooks),
            sent,
        });
        let running = common::serve(config.addr, Arc::clone(&inner)).await?;
        Ok(StickyCardsSandbox { inner, running })
    }

    /// `http://127.0.0.1:<port>`, the value for `STICKYCARDS_API_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The API key.
    pub fn api_key(&self) -> &str {
        &self.inner.api_key
    }

    /// Stops the server (in-flight requests get up to 2 s).
    pub async fn shutdown(mut self) {
        self.running.shutdown().await;
    }

    /// All customers, oldest first.
    pub fn customers(&self) -> Vec<Customer> {
        lock(&self.inner.state).customers.clone()
    }

    /// A customer by id.
    pub fn customer(&self, id: &str) -> Option<Customer> {
        lock(&self.inner.state)
            .customers
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    /// The oldest customer with this email (case-insensitive).
    pub fn customer_by_email(&self, email: &str) -> Option<Customer> {
        lock(&self.inner.state)
            .customers
            .iter()
            .find(|c| same_email(c.email.as_deref(), email))
            .cloned()
    }

    /// The oldest customer with this phone (digits compared).
    pub fn customer_by_phone(&self, phone: &str) -> Option<Customer> {
        lock(&self.inner.state)
            .customers
            .iter()
            .find(|c| same_phone(c.phone.as_deref(), phone))
            .cloned()
    }

    /// All cards.
    pub fn cards(&self) -> Vec<Card> {
        lock(&self.inner.state).cards.clone()
    }

    /// A card by serial number.
    pub fn card(&self, id: &str) -> Option<Card> {
        lock(&self.inner.state)
            .cards
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    /// Pushes sent, oldest first.
    pub fn pushes(&self) -> Vec<Push> {
        lock(&self.inner.state).pushes.clone()
    }

    /// Balance changes, oldest first.
    pub fn balance_changes(&self) -> Vec<BalanceChange> {
        lock(&self.inner.state).changes.clone()
    }

    /// Adds a customer directly (test setup, sandbox seeding).
    pub fn add_customer(
        &self,
        first_name: Option<&str>,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Customer {
        let mut customer = self.inner.new_customer();
        customer.first_name = first_name.map(str::to_string);
        customer.email = email.map(str::to_string);
        customer.phone = phone.map(str::to_string);
        lock(&self.inner.state).customers.push(customer.clone());
        customer
    }

    /// Issues a card directly (test setup, sandbox seeding).
    pub fn add_card(&self, customer_id: Option<&str>, balance: i64) -> Card {
        let mut card = self.inner.new_card(customer_id.map(str::to_string), None);
        card.balance = balance;
        lock(&self.inner.state).cards.push(card.clone());
        card
    }

    /// The next `times` requests fail with `fault`.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.inner.controls.inject(fault, times, None);
    }

    /// The next `times` requests whose path starts with `path_prefix` fail.
    pub fn inject_on(&self, path_prefix: &str, fault: Fault, times: usize) {
        self.inner.controls.inject(fault, times, Some(path_prefix));
    }

    /// Drops the faults not yet served.
    pub fn clear_faults(&self) {
        self.inner.controls.clear_faults();
    }

    /// Every request received, in order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.inner.controls.request_log()
    }

    /// Empties the request log.
    pub fn clear_request_log(&self) {
        self.inner.controls.clear_request_log();
    }

    /// Forgets the requests counted by the rate limiter.
    pub fn reset_rate_limit(&self) {
        lock(&self.inner.limiter).reset();
    }

    /// Changes a customer as someone in the Sticky Cards dashboard would.
    /// Only segments added send something (`CustomerSegmentLinkedEvent`
    /// each): the catalogue has no customer-updated event. The id and
    /// creation time cannot be changed. `None` when there is no such
    /// customer.
    pub fn edit_customer(&self, id: &str, edit: impl FnOnce(&mut Customer)) -> Option<Customer> {
        let mut state = lock(&self.inner.state);
        let index = state.customers.iter().position(|c| c.id == id)?;
        let before = state.customers[index].clone();
        let mut edited = before.clone();
        edit(&mut edited);
        edited.id.clone_from(&before.id);
        edited.created_at.clone_from(&before.created_at);
        let segments = std::mem::replace(&mut edited.segments, before.segments.clone());
        if edited != before || segments != before.segments {
            edited.updated_at = common::now_iso();
        }
        state.customers[index] = edited;
        let added = state.set_segments(index, segments);
        self.inner.emit_segments(&mut state, id, added);
        Some(state.customers[index].clone())
    }

    /// Sets a card's balance by hand (never below 0), as a cashier would:
    /// records the change and sends `CardBalanceUpdatedEvent` if it moved.
    /// `None` when there is no such card.
    pub fn set_card_balance(&self, card_id: &str, balance: i64) -> Option<Card> {
        let mut state = lock(&self.inner.state);
        let index = state.cards.iter().position(|c| c.id == card_id)?;
        let delta = balance.max(0) - state.cards[index].balance;
        if delta != 0 {
            state.change_balance(index, delta, None).ok()?;
            self.inner.emit_balance(&mut state, index, delta);
        }
        Some(state.cards[index].clone())
    }

    /// The customer installs the card in their wallet: `CardInstalledEvent`.
    pub fn install_card(&self, card_id: &str) -> Option<Card> {
        self.wallet(card_id, "installed", "CardInstalledEvent")
    }

    /// The customer deletes the card from their wallet: `CardRemovedEvent`.
    pub fn remove_card(&self, card_id: &str) -> Option<Card> {
        self.wallet(card_id, "removed", "CardRemovedEvent")
    }

    /// The card reaches its expiration: `CardExpiredEvent`.
    pub fn expire_card(&self, card_id: &str) -> Option<Card> {
        self.wallet(card_id, "expired", "CardExpiredEvent")
    }

    fn wallet(&self, card_id: &str, status: &str, event: &str) -> Option<Card> {
        let mut state = lock(&self.inner.state);
        let index = state.cards.iter().position(|c| c.id == card_id)?;
        let now = common::now_iso();
        let card = &mut state.cards[index];
        card.wallet_status = status.to_string();
        if status == "installed" && card.installed_date.is_none() {
            card.installed_date = Some(now.clone());
        }
        // An expiry is not something the customer did.
        if status != "expired" {
            card.last_activity = Some(now.clone());
        }
        card.updated_at = now;
        let card = card.clone();
        self.inner.emit(
            &mut state,
            event,
            card.customer_id.as_deref(),
            Some(card_id),
            Detail::None,
        );
        Some(card)
    }

    /// Sends `event_type` about a customer (and a card, else the customer's
    /// first) as they are, changing nothing: a `CustomerCreatedEvent` for a
    /// customer added with [`StickyCardsSandbox::add_customer`], a redelivery,
    /// or an event no API call causes (`CardScannedEvent`, …). `false` when
    /// the customer or the card does not exist.
    pub fn emit_event(&self, event_type: &str, customer_id: &str, card_id: Option<&str>) -> bool {
        let mut state = lock(&self.inner.state);
        let known = state.customers.iter().any(|c| c.id == customer_id)
            && card_id.is_none_or(|id| state.cards.iter().any(|c| c.id == id));
        if known {
            self.inner.emit(
                &mut state,
                event_type,
                Some(customer_id),
                card_id,
                Detail::None,
            );
        }
        known
    }

    /// Turns webhooks on, re-points them or (`None`) turns them off, e.g.
    /// once the engine that receives them is listening (it needs this
    /// simulator's URL first). Webhooks still queued for the previous URL
    /// are dropped: wait for [`StickyCardsSandbox::webhooks_idle`] first to
    /// keep them. Needs a tokio runtime; an error for a bad URL.
    pub fn set_webhooks(&self, webhooks: Option<StickyCardsWebhooks>) -> std::io::Result<()> {
        let hooks = match webhooks {
            None => None,
            Some(w) => Some(Arc::new(Hooks::start(w, Arc::clone(&self.inner.sent))?)),
        };
        *lock(&self.inner.hooks) = hooks;
        Ok(())
    }

    /// Webhooks whose delivery is over (answered, or given up), oldest
    /// first; empty while webhooks were never on.
    pub fn webhooks_sent(&self) -> Vec<SentWebhook> {
        lock(&self.inner.sent).clone()
    }

    /// Empties the log of [`StickyCardsSandbox::webhooks_sent`].
    pub fn clear_webhooks_sent(&self) {
        lock(&self.inner.sent).clear();
    }

    /// Webhooks queued or being delivered.
    pub fn webhooks_pending(&self) -> usize {
        self.inner.hooks().map_or(0, |h| h.outbox.pending())
    }

    /// Returns once every webhook queued so far has been delivered or
    /// dropped (at once without webhooks). A change made by an API call is
    /// queued before its answer, so after the answer this covers it.
    pub async fn webhooks_idle(&self) {
        if let Some(h) = self.inner.hooks() {
            h.outbox.idle().await;
        }
    }
}

// ---------------------------------------------------------------- helpers

fn same_email(stored: Option<&str>, wanted: &str) -> bool {
    let wanted = wanted.trim();
    !wanted.is_empty() && stored.is_some_and(|s| s.trim().eq_ignore_ascii_case(wanted))
}

fn digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

fn same_phone(stored: Option<&str>, wanted: &str) -> bool {
    let wanted = digits(wanted);
    !wanted.is_empty() && stored.is_some_and(|s| digits(s) == wanted)
}

/// Which API a request speaks.
#[derive(Clone, Copy, PartialEq)]
enum Flavour {
    Seed,
    V2,
}

/// A request failure: status and message (and the 409's existing id).
struct FailureBody {
    status: u16,
    message: String,
    errors: Option<Value>,
    id: Option<String>,
}

type Failure = Box<FailureBody>;

fn fail(status: u16, message: impl Into<String>) -> Failure {
    Box::new(FailureBody {
        status,
        message: message.into(),
        errors: None,
        id: None,
    })
}

fn invalid(field: &str, message: impl Into<String>) -> Failure {
    let message = message.into();
    Box::new(FailureBody {
        status: 422,
        errors: Some(json!({ field: [message.clone()] })),
        message,
        id: None,
    })
}

type Outcome = Result<(u16, Value), Failure>;

/// The body as an object whose keys are all in `allowed`.
fn body_of(request: &Incoming, allowed: &[&str]) -> Result<Map<String, Value>, Failure> {
    let body = match &request.body {
        None => Map::new(),
        Some(Err(e)) => return Err(fail(400, format!("Malformed JSON: {e}"))),
        Some(Ok(Value::Object(map))) => map.clone(),
        Some(Ok(_)) => return Err(fail(400, "The body must be a JSON object.")),
    };
    if let Some(key) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(key, format!("The {key} field is prohibited.")));
    }
    Ok(body)
}

/// An optional string field (`null` = absent).
fn opt_str(body: &Map<String, Value>, key: &str) -> Result<Option<String>, Failure> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Some(_) => Err(invalid(key, format!("The {key} field must be a string."))),
    }
}

fn req_str(body: &Map<String, Value>, key: &str) -> Result<String, Failure> {
    opt_str(body, key)?.ok_or_else(|| invalid(key, format!("The {key} field is required.")))
}

/// An optional integer field: a JSON integer or an integer string.
fn opt_int(body: &Map<String, Value>, key: &str) -> Result<Option<i64>, Failure> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(key, format!("The {key} field must be an integer."))),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| invalid(key, format!("The {key} field must be an integer."))),
        Some(_) => Err(invalid(key, format!("The {key} field must be an integer."))),
    }
}

impl Sticky {
    fn new_customer(&self) -> Customer {
        let now = common::now_iso();
        Customer {
            id: self.ids.uuid("customer"),
            first_name: None,
            last_name: None,
            email: None,
            phone: None,
            gender: None,
            date_of_birth: None,
            external_user_id: None,
            segments: Vec::new(),
            preferences: Map::new(),
            created_at: now.clone(),
            updated_at: now,
        }
    }

    fn new_card(&self, customer_id: Option<String>, template_id: Option<String>) -> Card {
        let n = self.ids.next_number();
        let now = common::now_iso();
        Card {
            id: format!(
                "{:06}-{:03}-{:03}",
                100_000 + n % 900_000,
                (n * 7) % 1000,
                (n * 13) % 1000
            ),
            customer_id,
            template_id,
            balance: 0,
            status: "Active".to_string(),
            wallet_status: "not_installed".to_string(),
            installed_date: None,
            last_activity: None,
            created_at: now.clone(),
            updated_at: now,
        }
    }
}

impl State {
    /// Replaces a customer's segments; returns those newly linked (each
    /// gets an id on first use).
    fn set_segments(&mut self, index: usize, segments: Vec<String>) -> Vec<String> {
        let customer = &mut self.customers[index];
        let mut added: Vec<String> = Vec::new();
        for segment in &segments {
            if !customer.segments.contains(segment) && !added.contains(segment) {
                added.push(segment.clone());
            }
        }
        customer.segments = segments;
        for segment in &added {
            if !self.segments.contains(segment) {
                self.segments.push(segment.clone());
            }
        }
        added
    }

    /// A Boomerangme timestamp: now in unix seconds, or one second after
    /// the last one of the same event, customer and card (their dedup key).
    fn next_second(&mut self, event: &str, customer: &str, card: &str) -> i64 {
        let now = chrono::Utc::now().timestamp();
        let last = self
            .seconds
            .entry((event.to_string(), customer.to_string(), card.to_string()))
            .or_insert(i64::MIN);
        *last = now.max(last.saturating_add(1));
        *last
    }

    fn customer_index(&self, id: &str) -> Result<usize, Failure> {
        self.customers
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| fail(404, "Customer not found."))
    }

    /// A customer other than `except` with this email or phone → 409.
    fn check_unique(
        &self,
        email: Option<&str>,
        phone: Option<&str>,
        except: Option<&str>,
    ) -> Result<(), Failure> {
        for c in self
            .customers
            .iter()
            .filter(|c| Some(c.id.as_str()) != except)
        {
            let field = if email.is_some_and(|e| same_email(c.email.as_deref(), e)) {
                "email"
            } else if phone.is_some_and(|p| same_phone(c.phone.as_deref(), p)) {
                "phone"
            } else {
                continue;
            };
            return Err(Box::new(FailureBody {
                status: 409,
                message: format!("A customer with this {field} already exists."),
                errors: None,
                id: Some(c.id.clone()),
            }));
        }
        Ok(())
    }

    fn card_index(&mut self, sticky: &Sticky, id: &str) -> Result<usize, Failure> {
        if let Some(i) = self.cards.iter().position(|c| c.id == id) {
            return Ok(i);
        }
        if sticky.auto_create_cards {
            let now = common::now_iso();
            self.cards.push(Card {
                id: id.to_string(),
                customer_id: None,
                template_id: None,
                balance: 0,
                status: "Active".to_string(),
                wallet_status: "not_installed".to_string(),
                installed_date: None,
                last_activity: None,
                created_at: now.clone(),
                updated_at: now,
            });
            return Ok(self.cards.len() - 1);
        }
        Err(fail(404, "Card not found."))
    }

    /// Adds `delta` to a card's balance (never below 0).
    fn change_balance(
        &mut self,
        index: usize,
        delta: i64,
        comment: Option<String>,
    ) -> Result<(), Failure> {
        let card = &mut self.cards[index];
        let balance = card.balance.saturating_add(delta);
        if balance < 0 {
            return Err(invalid(
                "points",
                format!("Not enough points: the balance is {}.", card.balance),
            ));
        }
        card.balance = balance;
        card.updated_at = common::now_iso();
        if delta != 0 {
            card.last_activity = Some(card.updated_at.clone());
        }
        self.changes.push(BalanceChange {
            card_id: card.id.clone(),
            delta,
            balance,
            comment,
        });
        Ok(())
    }
}

// ---------------------------------------------------------------- JSON

fn seed_customer(c: &Customer, cards: &[Card]) -> Value {
    json!({
        "id": c.id,
        "first_name": c.first_name,
        "last_name": c.last_name,
        "email": c.email,
        "phone_number": c.phone,
        "date_of_birth": c.date_of_birth,
        "segments": c.segments,
        "preferences": c.preferences,
        "cards": cards.iter()
            .filter(|k| k.customer_id.as_deref() == Some(c.id.as_str()))
            .map(|k| k.id.clone())
            .collect::<Vec<_>>(),
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    })
}

fn seed_card(card: &Card) -> Value {
    json!({
        "id": card.id,
        "customer_id": card.customer_id,
        "template_id": card.template_id,
        "balance": card.balance,
        "status": card.status,
        "created_at": card.created_at,
        "updated_at": card.updated_at,
    })
}

fn seed_push(p: &Push) -> Value {
    json!({
        "id": p.id,
        "customer_id": p.customer_id,
        "message": p.message,
        "title": p.title,
        "status": "sent",
        "created_at": p.created_at,
    })
}

fn v2_customer(c: &Customer) -> Value {
    json!({
        "id": c.id,
        "firstName": c.first_name,
        "surname": c.last_name,
        "phone": c.phone,
        "email": c.email,
        "gender": c.gender,
        "dateOfBirth": c.date_of_birth,
        "externalUserId": c.external_user_id,
        "createdAt": c.created_at,
        "updatedAt": c.updated_at,
        "segments": c.segments.iter().enumerate()
            .map(|(i, s)| json!({"id": i + 1, "name": s, "type": "custom"}))
            .collect::<Vec<_>>(),
    })
}

fn v2_card(card: &Card, customer: Option<&Customer>) -> Value {
    json!({
        "id": card.id,
        "templateId": card.template_id,
        "customerId": card.customer_id,
        "customer": customer.map(v2_customer),
        "status": card.status,
        "balance": {"balance": card.balance, "bonusBalance": card.balance},
        "customFields": [],
        "createdAt": card.created_at,
        "updatedAt": card.updated_at,
    })
}

fn v2_push(p: &Push) -> Value {
    json!({
        "id": p.id,
        "status": if p.scheduled_at.is_some() { "scheduled" } else { "sent" },
        "type": if p.card_id.is_some() { "card" } else { "template" },
        "sentAmount": u8::from(p.scheduled_at.is_none()),
        "deliveredAmount": u8::from(p.scheduled_at.is_none()),
        "scheduledAt": p.scheduled_at,
        "templateId": p.template_id,
        "cardId": p.card_id,
        "message": p.message,
    })
}

/// A seed-shaped event (the keys of `examples/payloads/stickycards/`).
fn seed_event(
    event: &str,
    timestamp: &str,
    c: &Customer,
    card: Option<&Card>,
    detail: &Detail,
    segment_id: Option<usize>,
) -> Value {
    let mut out = Map::new();
    out.insert("event_type".into(), json!(event));
    out.insert("timestamp".into(), json!(timestamp));
    out.insert("customer_id".into(), json!(c.id));
    if let Some(card) = card {
        out.insert("card_id".into(), json!(card.id));
    }
    // The seed sends "email or phone_number": the one missing is left out.
    if let Some(email) = &c.email {
        out.insert("email".into(), json!(email));
    }
    if let Some(phone) = &c.phone {
        out.insert("phone_number".into(), json!(phone));
    }
    out.insert("first_name".into(), json!(c.first_name));
    out.insert("last_name".into(), json!(c.last_name));
    if event == "CustomerCreatedEvent" {
        out.insert("referral_count".into(), json!(0));
        out.insert("segments".into(), json!(c.segments));
        return Value::Object(out);
    }
    if let Some(card) = card {
        out.insert(
            "card".into(),
            json!({
                "id": card.id,
                "status": card.wallet_status,
                "balance": card.balance,
                "installed_date": card.installed_date,
            }),
        );
    }
    let last_activity = card.and_then(|k| k.last_activity.clone());
    match detail {
        Detail::Balance { previous } => {
            out.insert("previous_balance".into(), json!(previous));
            out.insert(
                "last_activity".into(),
                json!(last_activity.as_deref().unwrap_or(timestamp)),
            );
            out.insert("segments".into(), json!(c.segments));
        }
        Detail::Segment { name } => {
            out.insert("segment".into(), json!({"id": segment_id, "name": name}));
            out.insert("segments".into(), json!(c.segments));
        }
        Detail::None => {
            if let Some(at) = last_activity.filter(|_| event != "CardIssuedEvent") {
                out.insert("last_activity".into(), json!(at));
            }
        }
    }
    Value::Object(out)
}

/// A Boomerangme-shaped event (the keys of
/// `examples/payloads/stickycards-boomerangme/`).
fn boomerangme_event(
    event: &str,
    timestamp: i64,
    c: &Customer,
    card: Option<&Card>,
    detail: &Detail,
    segment_id: Option<usize>,
) -> Value {
    let mut data = Map::new();
    data.insert("cardholder_id".into(), json!(c.id));
    if let Some(card) = card {
        // Its statuses are not_installed, installed and deleted only.
        let status = match card.wallet_status.as_str() {
            "removed" => "deleted",
            "expired" => "installed",
            other => other,
        };
        data.insert("serial_number".into(), json!(card.id));
        data.insert("template_id".into(), json!(card.template_id));
        data.insert("user_template_id".into(), Value::Null);
        data.insert("card_type".into(), Value::Null);
        data.insert("status".into(), json!(status));
        data.insert("device_type".into(), Value::Null);
    }
    data.insert("cardholder_email".into(), json!(c.email));
    data.insert("cardholder_phone".into(), json!(c.phone));
    data.insert("cardholder_first_name".into(), json!(c.first_name));
    data.insert("cardholder_last_name".into(), json!(c.last_name));
    data.insert("cardholder_birth_date".into(), json!(c.date_of_birth));
    if let Some(card) = card {
        data.insert("bonus_balance".into(), json!(card.balance));
        data.insert("balance".into(), json!(card.balance));
        for key in [
            "countVisits",
            "number_stamps_total",
            "number_rewards_unused",
        ] {
            data.insert(key.into(), json!(0));
        }
        for key in [
            "short_link",
            "share_link",
            "direct_install_link_universal",
            "direct_install_link_apple",
            "direct_install_link_google",
            "direct_install_link_pwa",
        ] {
            data.insert(key.into(), Value::Null);
        }
    }
    for key in ["utm_source", "latitude", "longitude"] {
        data.insert(key.into(), Value::Null);
    }
    data.insert("custom_fields".into(), json!([]));
    if let Detail::Segment { name } = detail {
        data.insert("segment_id".into(), json!(segment_id));
        data.insert("segment_name".into(), json!(name));
    }
    let mut out = Map::new();
    out.insert("timestamp".into(), json!(timestamp));
    out.insert("event".into(), json!(event));
    // The simulator stands for the production platform.
    out.insert("is_sandbox".into(), json!(false));
    out.insert("data".into(), Value::Object(data));
    Value::Object(out)
}

// ---------------------------------------------------------------- routes

impl Simulator for Sticky {
    fn controls(&self) -> &Controls {
        &self.controls
    }

    fn error_body(&self, _status: u16, message: &str) -> Value {
        json!({ "message": message })
    }

    /// Sticky Cards' 422: the first message, and every message under `errors`.
    fn unprocessable_body(&self, messages: &[String]) -> Value {
        json!({
            "message": messages.first().cloned().unwrap_or_default(),
            "errors": { "body": messages },
        })
    }

    fn handle(&self, request: &Incoming) -> Reply {
        let flavour = if request.path.starts_with("/api/") {
            Flavour::V2
        } else {
            Flavour::Seed
        };
        let authorized = match flavour {
            Flavour::Seed => {
                request
                    .header("authorization")
                    .and_then(|h| h.strip_prefix("Bearer "))
                    == Some(self.api_key.as_str())
            }
            Flavour::V2 => request.header("x-api-key") == Some(self.api_key.as_str()),
        };
        let outcome = if !authorized {
            Err(fail(401, "Unauthenticated."))
        } else {
            let quota = lock(&self.limiter).check();
            if !quota.allowed {
                let reply = self.render(flavour, Err(fail(429, "Too Many Attempts.")));
                return reply
                    .with_header("retry-after", quota.retry_after.to_string())
                    .with_header("x-ratelimit-limit", quota.max.to_string())
                    .with_header("x-ratelimit-remaining", "0");
            }
            let reply = self.render(flavour, self.route(flavour, request));
            return reply
                .with_header("x-ratelimit-limit", quota.max.to_string())
                .with_header("x-ratelimit-remaining", quota.remaining.to_string());
        };
        self.render(flavour, outcome)
    }
}

impl Sticky {
    /// Queues `event` about a customer (and a card: the given one, else the
    /// customer's first, as the seed's customer events name one). Nothing
    /// without webhooks or without a customer. Called under the state lock,
    /// so events leave in the order of the changes.
    fn emit(
        &self,
        state: &mut State,
        event: &str,
        customer_id: Option<&str>,
        card_id: Option<&str>,
        detail: Detail,
    ) {
        let Some(hooks) = self.hooks() else {
            return;
        };
        let Some(customer) = customer_id
            .and_then(|id| state.customers.iter().find(|c| c.id == id))
            .cloned()
        else {
            return;
        };
        let card = match card_id {
            Some(id) => state.cards.iter().find(|c| c.id == id),
            None => state
                .cards
                .iter()
                .find(|c| c.customer_id.as_deref() == Some(customer.id.as_str())),
        }
        .cloned();
        let segment_id = match &detail {
            Detail::Segment { name } => {
                state.segments.iter().position(|s| s == name).map(|i| i + 1)
            }
            _ => None,
        };
        let body = match hooks.format {
            StickyCardsWebhookFormat::Seed => {
                let at = state
                    .clock
                    .next()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                seed_event(event, &at, &customer, card.as_ref(), &detail, segment_id)
            }
            StickyCardsWebhookFormat::Boomerangme => {
                let serial = card.as_ref().map(|k| k.id.as_str()).unwrap_or_default();
                let at = state.next_second(event, &customer.id, serial);
                boomerangme_event(event, at, &customer, card.as_ref(), &detail, segment_id)
            }
        };
        hooks.outbox.send(event, body);
    }

    fn hooks(&self) -> Option<Arc<Hooks>> {
        lock(&self.hooks).clone()
    }

    /// Queues `CardBalanceUpdatedEvent` for a card whose balance moved by
    /// `delta` (nothing when it did not move).
    fn emit_balance(&self, state: &mut State, index: usize, delta: i64) {
        if delta == 0 {
            return;
        }
        let card = &state.cards[index];
        let (customer, id, previous) = (
            card.customer_id.clone(),
            card.id.clone(),
            card.balance - delta,
        );
        self.emit(
            state,
            "CardBalanceUpdatedEvent",
            customer.as_deref(),
            Some(&id),
            Detail::Balance { previous },
        );
    }

    /// Queues one `CustomerSegmentLinkedEvent` per segment in `added`.
    fn emit_segments(&self, state: &mut State, customer_id: &str, added: Vec<String>) {
        for name in added {
            self.emit(
                state,
                "CustomerSegmentLinkedEvent",
                Some(customer_id),
                None,
                Detail::Segment { name },
            );
        }
    }

    fn render(&self, flavour: Flavour, outcome: Outcome) -> Reply {
        match (flavour, outcome) {
            (Flavour::Seed, Ok((status, body))) => Reply::json(status, body),
            (Flavour::V2, Ok((status, data))) => {
                let mut envelope = json!({
                    "code": status,
                    "createdAt": common::now_iso(),
                    "responseId": self.ids.uuid("response"),
                });
                // Lists come as `{data, meta}`; single objects as the data.
                match data {
                    Value::Object(mut map) if map.contains_key("meta") => {
                        if let Some(obj) = envelope.as_object_mut() {
                            obj.insert("data".into(), map.remove("data").unwrap_or(Value::Null));
                            obj.insert("meta".into(), map.remove("meta").unwrap_or(Value::Null));
                        }
                    }
                    other => {
                        if let Some(obj) = envelope.as_object_mut() {
                            obj.insert("data".into(), other);
                        }
                    }
                }
                Reply::json(status, envelope)
            }
            (flavour, Err(failure)) => {
                let failure = *failure;
                let mut body = Map::new();
                if flavour == Flavour::V2 {
                    body.insert("code".into(), json!(failure.status));
                    body.insert("createdAt".into(), json!(common::now_iso()));
                    body.insert("responseId".into(), json!(self.ids.uuid("response")));
                }
                body.insert("message".into(), json!(failure.message));
                if let Some(errors) = failure.errors {
                    body.insert("errors".into(), errors);
                }
                if let Some(id) = failure.id {
                    body.insert("id".into(), json!(id));
                }
                Reply::json(failure.status, Value::Object(body))
            }
        }
    }

    fn route(&self, flavour: Flavour, request: &Incoming) -> Outcome {
        let segments = request.segments();
        let method = request.method.as_str();
        match (flavour, method, segments.as_slice()) {
            (Flavour::Seed, "POST", ["v1", "customers"]) => self.seed_upsert_customer(request),
            (Flavour::Seed, "GET", ["v1", "customers"]) => self.seed_find_customers(request),
            (Flavour::Seed, "GET", ["v1", "customers", id]) => self.seed_get_customer(id),
            (Flavour::Seed, "PUT", ["customers", id, "segments"])
            | (Flavour::Seed, "PUT", ["v1", "customers", id, "segments"]) => {
                self.seed_segments(request, id)
            }
            (Flavour::Seed, "PUT", ["cards", id, "balance"])
            | (Flavour::Seed, "PUT", ["v1", "cards", id, "balance"]) => {
                self.seed_balance(request, id)
            }
            (Flavour::Seed, "PUT", ["cards", id, "status"])
            | (Flavour::Seed, "PUT", ["v1", "cards", id, "status"]) => {
                self.seed_status(request, id)
            }
            (Flavour::Seed, "POST", ["v1", "pushes", "customer"]) => self.seed_push(request),
            (Flavour::Seed, "POST", ["v1", "cards"]) => self.seed_issue_card(request),
            (Flavour::Seed, "PUT", ["v1", "customers", id, "preferences"]) => {
                self.seed_preferences(request, id)
            }
            (Flavour::V2, "POST", ["api", "v2", "customers"]) => self.v2_create_customer(request),
            (Flavour::V2, "GET", ["api", "v2", "customers"]) => self.v2_list_customers(request),
            (Flavour::V2, "GET", ["api", "v2", "customers", id]) => self.v2_get_customer(id),
            (Flavour::V2, "PATCH", ["api", "v2", "customers", id]) => {
                self.v2_update_customer(request, id)
            }
            (Flavour::V2, "DELETE", ["api", "v2", "customers", id]) => self.v2_delete_customer(id),
            (Flavour::V2, "POST", ["api", "v2", "cards"]) => self.v2_create_card(request),
            (Flavour::V2, "GET", ["api", "v2", "cards"]) => self.v2_list_cards(request),
            (Flavour::V2, "GET", ["api", "v2", "cards", id]) => self.v2_get_card(id),
            (Flavour::V2, "DELETE", ["api", "v2", "cards", id]) => self.v2_delete_card(id),
            (Flavour::V2, "POST", ["api", "v2", "cards", id, "add-point"]) => {
                self.v2_points(request, id, 1)
            }
            (Flavour::V2, "POST", ["api", "v2", "cards", id, "subtract-point"]) => {
                self.v2_points(request, id, -1)
            }
            (Flavour::V2, "POST", ["api", "v2", "pushes"]) => self.v2_push(request),
            (Flavour::V2, "GET", ["api", "v2", "pushes"]) => self.v2_list_pushes(),
            _ => Err(not_found(request)),
        }
    }

    // ------------------------------------------------------------ seed

    fn seed_upsert_customer(&self, request: &Incoming) -> Outcome {
        let body = body_of(
            request,
            &[
                "id",
                "first_name",
                "last_name",
                "email",
                "phone_number",
                "date_of_birth",
            ],
        )?;
        let email = opt_str(&body, "email")?;
        let phone = opt_str(&body, "phone_number")?;
        // Read before a new customer is added, so a bad field adds none.
        let first = opt_str(&body, "first_name")?;
        let last = opt_str(&body, "last_name")?;
        let birth = opt_str(&body, "date_of_birth")?;
        let mut state = lock(&self.state);
        let (status, index) = match opt_str(&body, "id")? {
            Some(id) => {
                let index = state.customer_index(&id)?;
                state.check_unique(email.as_deref(), phone.as_deref(), Some(&id))?;
                (200, index)
            }
            None => {
                if email.is_none() && phone.is_none() {
                    return Err(invalid(
                        "phone_number",
                        "The phone number field is required when email is not present.",
                    ));
                }
                state.check_unique(email.as_deref(), phone.as_deref(), None)?;
                state.customers.push(self.new_customer());
                (201, state.customers.len() - 1)
            }
        };
        let customer = &mut state.customers[index];
        if first.is_some() {
            customer.first_name = first;
        }
        if last.is_some() {
            customer.last_name = last;
        }
        if email.is_some() {
            customer.email = email;
        }
        if phone.is_some() {
            customer.phone = phone;
        }
        if birth.is_some() {
            customer.date_of_birth = birth;
        }
        customer.updated_at = common::now_iso();
        let customer = state.customers[index].clone();
        if status == 201 {
            self.emit(
                &mut state,
                "CustomerCreatedEvent",
                Some(&customer.id),
                None,
                Detail::None,
            );
        }
        Ok((status, seed_customer(&customer, &state.cards)))
    }

    fn seed_find_customers(&self, request: &Incoming) -> Outcome {
        let state = lock(&self.state);
        let phone = request.query("phone_number");
        let email = request.query("email");
        let data: Vec<Value> = state
            .customers
            .iter()
            .filter(|c| phone.is_none_or(|p| same_phone(c.phone.as_deref(), p)))
            .filter(|c| email.is_none_or(|e| same_email(c.email.as_deref(), e)))
            .map(|c| seed_customer(c, &state.cards))
            .collect();
        Ok((200, json!({ "data": data })))
    }

    fn seed_get_customer(&self, id: &str) -> Outcome {
        let state = lock(&self.state);
        let index = state.customer_index(id)?;
        Ok((200, seed_customer(&state.customers[index], &state.cards)))
    }

    fn seed_segments(&self, request: &Incoming, id: &str) -> Outcome {
        let body = body_of(request, &["segments"])?;
        let segments = match body.get("segments") {
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect::<Vec<_>>(),
            Some(_) => {
                return Err(invalid(
                    "segments",
                    "The segments must be a list of strings.",
                ));
            }
            None => return Err(invalid("segments", "The segments field is required.")),
        };
        let mut state = lock(&self.state);
        let index = state.customer_index(id)?;
        let added = state.set_segments(index, segments);
        state.customers[index].updated_at = common::now_iso();
        let customer = state.customers[index].clone();
        self.emit_segments(&mut state, &customer.id, added);
        Ok((200, seed_customer(&customer, &state.cards)))
    }

    /// Seed 000 names one body field, `balance (integer)`: the card's new
    /// balance. Anything else is refused, as a strict server would.
    fn seed_balance(&self, request: &Incoming, id: &str) -> Outcome {
        let body = body_of(request, &["balance"])?;
        let amount = opt_int(&body, "balance")?
            .ok_or_else(|| invalid("balance", "The balance field is required."))?;
        if amount < 0 {
            return Err(invalid("balance", "The balance may not be negative."));
        }
        let mut state = lock(&self.state);
        let index = state.card_index(self, id)?;
        let delta = amount - state.cards[index].balance;
        state.change_balance(index, delta, None)?;
        self.emit_balance(&mut state, index, delta);
        Ok((200, seed_card(&state.cards[index])))
    }

    fn seed_status(&self, request: &Incoming, id: &str) -> Outcome {
        let body = body_of(request, &["status"])?;
        let status = req_str(&body, "status")?;
        if status != "Active" && status != "Inactive" {
            return Err(invalid(
                "status",
                "The selected status is invalid (Active, Inactive).",
            ));
        }
        let mut state = lock(&self.state);
        let index = state.card_index(self, id)?;
        let card = &mut state.cards[index];
        card.status = status;
        card.updated_at = common::now_iso();
        Ok((200, seed_card(card)))
    }

    fn seed_push(&self, request: &Incoming) -> Outcome {
        let body = body_of(request, &["customer_id", "message", "title"])?;
        let customer_id = req_str(&body, "customer_id")?;
        let message = req_str(&body, "message")?;
        let title = opt_str(&body, "title")?;
        let mut state = lock(&self.state);
        state.customer_index(&customer_id)?;
        let push = Push {
            id: self.ids.uuid("push"),
            customer_id: Some(customer_id),
            card_id: None,
            template_id: None,
            message,
            title,
            scheduled_at: None,
            created_at: common::now_iso(),
        };
        let answer = seed_push(&push);
        state.pushes.push(push);
        Ok((201, answer))
    }

    fn seed_issue_card(&self, request: &Incoming) -> Outcome {
        let body = body_of(request, &["customer_id", "template_id"])?;
        let customer_id = req_str(&body, "customer_id")?;
        let template_id = opt_str(&body, "template_id")?;
        let mut state = lock(&self.state);
        state.customer_index(&customer_id)?;
        let card = self.new_card(Some(customer_id.clone()), template_id);
        let answer = seed_card(&card);
        let card_id = card.id.clone();
        state.cards.push(card);
        self.emit(
            &mut state,
            "CardIssuedEvent",
            Some(&customer_id),
            Some(&card_id),
            Detail::None,
        );
        Ok((201, answer))
    }

    fn seed_preferences(&self, request: &Incoming, id: &str) -> Outcome {
        let body = body_of(request, &["opt_in", "channel"])?;
        let opt_in = match body.get("opt_in") {
            Some(Value::Bool(b)) => *b,
            Some(Value::Null) | None => {
                return Err(invalid("opt_in", "The opt in field is required."));
            }
            Some(_) => return Err(invalid("opt_in", "The opt in field must be true or false.")),
        };
        let channel = opt_str(&body, "channel")?.unwrap_or_else(|| "all".to_string());
        let mut state = lock(&self.state);
        let index = state.customer_index(id)?;
        let customer = &mut state.customers[index];
        customer.preferences.insert(channel, json!(opt_in));
        customer.updated_at = common::now_iso();
        Ok((
            200,
            json!({"customer_id": customer.id, "preferences": customer.preferences}),
        ))
    }

    // ------------------------------------------------------------ v2

    const V2_CUSTOMER_FIELDS: &'static [&'static str] = &[
        "firstName",
        "surname",
        "phone",
        "email",
        "gender",
        "dateOfBirth",
        "externalUserId",
    ];

    /// Writes the v2 customer fields of `body` into the customer at `index`.
    fn v2_apply(state: &mut State, index: usize, body: &Map<String, Value>) -> Result<(), Failure> {
        let gender = opt_int(body, "gender")?;
        if gender.is_some_and(|g| !(0..=2).contains(&g)) {
            return Err(invalid(
                "gender",
                "The selected gender is invalid (0, 1, 2).",
            ));
        }
        let fields = [
            ("firstName", opt_str(body, "firstName")?),
            ("surname", opt_str(body, "surname")?),
            ("phone", opt_str(body, "phone")?),
            ("email", opt_str(body, "email")?),
            ("dateOfBirth", opt_str(body, "dateOfBirth")?),
            ("externalUserId", opt_str(body, "externalUserId")?),
        ];
        let customer = &mut state.customers[index];
        for (name, value) in fields {
            let Some(value) = value else { continue };
            let slot = match name {
                "firstName" => &mut customer.first_name,
                "surname" => &mut customer.last_name,
                "phone" => &mut customer.phone,
                "email" => &mut customer.email,
                "dateOfBirth" => &mut customer.date_of_birth,
                _ => &mut customer.external_user_id,
            };
            *slot = Some(value);
        }
        if gender.is_some() {
            customer.gender = gender;
        }
        customer.updated_at = common::now_iso();
        Ok(())
    }

    fn v2_create_customer(&self, request: &Incoming) -> Outcome {
        let body = body_of(request, Self::V2_CUSTOMER_FIELDS)?;
        req_str(&body, "firstName")?;
        let email = opt_str(&body, "email")?;
        let phone = opt_str(&body, "phone")?;
        if email.is_none() && phone.is_none() {
            return Err(invalid(
                "phone",
                "The phone field is required when email is not present.",
            ));
        }
        let mut state = lock(&self.state);
        state.check_unique(email.as_deref(), phone.as_deref(), None)?;
        state.customers.push(self.new_customer());
        let index = state.customers.len() - 1;
        if let Err(e) = Self::v2_apply(&mut state, index, &body) {
            state.customers.pop();
            return Err(e);
        }
        let id = state.customers[index].id.clone();
        self.emit(
            &mut state,
            "CustomerCreatedEvent",
            Some(&id),
            None,
            Detail::None,
        );
        Ok((201, v2_customer(&state.customers[index])))
    }

    fn v2_update_customer(&self, request: &Incoming, id: &str) -> Outcome {
        let body = body_of(request, Self::V2_CUSTOMER_FIELDS)?;
        let email = opt_str(&body, "email")?;
        let phone = opt_str(&body, "phone")?;
        let mut state = lock(&self.state);
        let index = state.customer_index(id)?;
        state.check_unique(email.as_deref(), phone.as_deref(), Some(id))?;
        Self::v2_apply(&mut state, index, &body)?;
        Ok((200, v2_customer(&state.customers[index])))
    }

    fn v2_list_customers(&self, request: &Incoming) -> Outcome {
        let state = lock(&self.state);
        let phone = request.query("phone").filter(|p| !p.is_empty());
        let email = request.query("email").filter(|e| !e.is_empty());
        let items: Vec<Value> = state
            .customers
            .iter()
            .filter(|c| phone.is_none_or(|p| same_phone(c.phone.as_deref(), p)))
            .filter(|c| email.is_none_or(|e| same_email(c.email.as_deref(), e)))
            .map(v2_customer)
            .collect();
        Ok((200, page(request, items)))
    }

    fn v2_get_customer(&self, id: &str) -> Outcome {
        let state = lock(&self.state);
        let index = state.customer_index(id)?;
        Ok((200, v2_customer(&state.customers[index])))
    }

    fn v2_delete_customer(&self, id: &str) -> Outcome {
        let mut state = lock(&self.state);
        let index = state.customer_index(id)?;
        let customer = state.customers.remove(index);
        state.cards.retain(|c| c.customer_id.as_deref() != Some(id));
        Ok((200, v2_customer(&customer)))
    }

    fn v2_create_card(&self, request: &Incoming) -> Outcome {
        let body = body_of(request, &["customerId", "templateId", "customFields"])?;
        let customer_id = req_str(&body, "customerId")?;
        let template_id = match body.get("templateId") {
            Some(Value::Number(n)) => n.to_string(),
            _ => req_str(&body, "templateId")?,
        };
        let mut state = lock(&self.state);
        let index = state.customer_index(&customer_id)?;
        let card = self.new_card(Some(customer_id.clone()), Some(template_id));
        let answer = v2_card(&card, state.customers.get(index));
        let card_id = card.id.clone();
        state.cards.push(card);
        self.emit(
            &mut state,
            "CardIssuedEvent",
            Some(&customer_id),
            Some(&card_id),
            Detail::None,
        );
        Ok((201, answer))
    }

    fn v2_list_cards(&self, request: &Incoming) -> Outcome {
        let state = lock(&self.state);
        let customer = request.query("customerId").filter(|v| !v.is_empty());
        let template = request.query("templateId").filter(|v| !v.is_empty());
        let items: Vec<Value> = state
            .cards
            .iter()
            .filter(|c| customer.is_none_or(|id| c.customer_id.as_deref() == Some(id)))
            .filter(|c| template.is_none_or(|id| c.template_id.as_deref() == Some(id)))
            .map(|c| v2_card(c, holder(&state, c)))
            .collect();
        Ok((200, page(request, items)))
    }

    fn v2_get_card(&self, id: &str) -> Outcome {
        let mut state = lock(&self.state);
        let index = state.card_index(self, id)?;
        let card = &state.cards[index];
        Ok((200, v2_card(card, holder(&state, card))))
    }

    fn v2_delete_card(&self, id: &str) -> Outcome {
        let mut state = lock(&self.state);
        let index = state
            .cards
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| fail(404, "Card not found."))?;
        let card = state.cards.remove(index);
        Ok((200, v2_card(&card, holder(&state, &card))))
    }

    fn v2_points(&self, request: &Incoming, id: &str, sign: i64) -> Outcome {
        let body = body_of(request, &["points", "comment", "purchaseSum"])?;
        let points = opt_int(&body, "points")?
            .ok_or_else(|| invalid("points", "The points field is required."))?;
        if points < 1 {
            return Err(invalid("points", "The points must be at least 1."));
        }
        let comment = opt_str(&body, "comment")?;
        match body.get("purchaseSum") {
            None | Some(Value::Null | Value::Number(_)) => {}
            Some(_) => return Err(invalid("purchaseSum", "The purchase sum must be a number.")),
        }
        let mut state = lock(&self.state);
        let index = state.card_index(self, id)?;
        state.change_balance(index, sign * points, comment)?;
        self.emit_balance(&mut state, index, sign * points);
        let card = &state.cards[index];
        Ok((200, v2_card(card, holder(&state, card))))
    }

    fn v2_push(&self, request: &Incoming) -> Outcome {
        let body = body_of(request, &["message", "templateId", "cardId", "scheduledAt"])?;
        let message = req_str(&body, "message")?;
        let template_id = match body.get("templateId") {
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => opt_str(&body, "templateId")?,
        };
        let card_id = opt_str(&body, "cardId")?;
        let scheduled_at = opt_str(&body, "scheduledAt")?;
        if card_id.is_none() && template_id.is_none() {
            return Err(invalid(
                "templateId",
                "The template id field is required when card id is not present.",
            ));
        }
        let mut state = lock(&self.state);
        if let Some(card) = &card_id {
            state.card_index(self, card)?;
        }
        let push = Push {
            id: self.ids.uuid("push"),
            customer_id: None,
            card_id,
            template_id,
            message,
            title: None,
            scheduled_at,
            created_at: common::now_iso(),
        };
        let answer = v2_push(&push);
        state.pushes.push(push);
        Ok((201, answer))
    }

    fn v2_list_pushes(&self) -> Outcome {
        let state = lock(&self.state);
        let items: Vec<Value> = state.pushes.iter().map(v2_push).collect();
        let total = items.len();
        Ok((
            200,
            json!({"data": items, "meta": {"currentPage": 1, "itemsPerPage": total.max(1), "totalItems": total}}),
        ))
    }
}

fn holder<'a>(state: &'a State, card: &Card) -> Option<&'a Customer> {
    card.customer_id
        .as_deref()
        .and_then(|id| state.customers.iter().find(|c| c.id == id))
}

/// `{data, meta}` for one page of `items` (`page` from 1, `itemsPerPage`
/// default 30).
fn page(request: &Incoming, items: Vec<Value>) -> Value {
    let per_page = request
        .query("itemsPerPage")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(30);
    let current = request
        .query("page")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let total = items.len();
    let data: Vec<Value> = items
        .into_iter()
        .skip((current - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    json!({
        "data": data,
        "meta": {"currentPage": current, "itemsPerPage": per_page, "totalItems": total},
    })
}

fn not_found(request: &Incoming) -> Failure {
    fail(
        404,
        format!(
            "The route {} could not be found.",
            request.path.trim_start_matches('/')
        ),
    )
}
