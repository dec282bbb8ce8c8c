//! Simulated GoHighLevel API v2 (one sub-account / location), the subset the
//! `ghl` target profile calls and a little more.
//!
//! Endpoints (paths as on `services.leadconnectorhq.com`; a trailing `/` is
//! optional, as on GHL's Express router):
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /contacts/` | 201 `{contact}`; 400 duplicate with `meta.contactId` |
//! | `GET` / `PUT` / `DELETE /contacts/{id}` | `{contact}` / `{succeded, contact}` / `{succeded}` |
//! | `POST /contacts/upsert` | 200 `{new, contact, traceId}` |
//! | `GET /contacts/search/duplicate?locationId&email&number` | `{contact}` or `{contact: null}` |
//! | `POST` / `DELETE /contacts/{id}/tags` | 201 / 200 `{tags}` (all tags left) |
//! | `POST` / `GET /contacts/{id}/notes` | 201 `{note}` / `{notes}` |
//! | `GET` / `POST /locations/{loc}/customFields` | `{customFields}` / 201 `{customField}` |
//! | `GET /locations/{loc}/customFields/{id}` | `{customField}` |
//! | `GET /opportunities/pipelines?locationId` | `{pipelines}` |
//! | `POST /opportunities/` | 201 `{opportunity}` |
//! | `POST /opportunities/upsert` | 200 `{opportunity, new}` |
//! | `GET /opportunities/{id}` | `{opportunity}` |
//! | `POST /oauth/token`, `POST /oauth/locationToken` | the marketplace app's OAuth (see [`super::oauth`]) |
//!
//! Rules where the reference (`ghl-api.md`) is silent or uncertain:
//! - Order of checks: fault injection, then token (401), then `Version`
//!   (401 `version header was not found.` / `version header is invalid`, as
//!   GHL answers per public reports), then rate limit (429), then the route.
//!   The rate-limit headers are on every answer past the token check.
//! - Rate limits are per location, as GHL counts them (100 per 10 s per app
//!   per location): each location has its own window and daily budget
//!   ([`GhlConfig::rate_limit`] each). A request counts against the location
//!   it names (`locationId` in the query or the body, or
//!   `/locations/{loc}/…`), else against its token's location (a location
//!   access token's; the static token's is the configured location). The
//!   simulator holds one location's data, so a request naming another
//!   location still takes a turn of that location's window before its 403.
//! - The rate-limit 429 is `{"statusCode":429,"message":"Too Many Requests"}`
//!   without `Retry-After` (GHL documents none); a refused request is not
//!   counted.
//! - Bodies are checked against the spec's DTOs (see `validate.rs`);
//!   bad JSON → 400 `Unexpected token in JSON: …`.
//! - A `locationId` other than the configured one → 403 `The token does not
//!   have access to this location.`
//! - Unknown contact / opportunity / pipeline / custom-field id → 400 with a
//!   `… not found` message (GHL answers not-found as 400); unknown route →
//!   404 `Cannot GET /x`.
//! - Phones are stored in E.164 as a US location would: `+` and digits kept;
//!   10 digits without `+` get `+1`, other numbers without `+` get `+`.
//!   Emails are stored as sent and compared case-insensitively.
//! - Duplicates: when the location does not allow duplicates, the fields of
//!   `duplicate_priority` (default email, then phone) identify a contact:
//!   create and PUT refuse a value another contact has (400 with
//!   `meta.matchingField` = the first matching field in priority order).
//! - Upsert updates the contact matching the first field of the priority
//!   order; a field of the body that belongs to another contact is dropped
//!   silently (GHL issue #37); `gender` is dropped on update (#313). With
//!   duplicates allowed, upsert still matches unless
//!   `createNewIfDuplicateAllowed: true`.
//! - Duplicate search: email first, then phone, when duplicates are allowed
//!   (the doc's words), else the configured priority; the oldest match wins.
//! - Custom fields in contact bodies: `{id, field_value}` (`key` accepted
//!   beside `id`, as the spec's item schemas require `id`); only the listed
//!   fields are written; `field_value` `null` or `""` clears the field;
//!   read back as `[{id, value}]`. Opportunities accept `id` or `key`
//!   (`key` = fieldKey with or without its `opportunity.` prefix).
//! - Tags endpoints answer with all the contact's tags after the change.
//! - Location custom fields: fieldKey = `<model>.` + the name in snake_case
//!   (lowercase; runs of other characters → `_`); a name already used in
//!   the model → 400.
//! - Opportunity upsert matches, in order: `id` when given; else the most
//!   recently created opportunity of `contactId` in `pipelineId` (name is not
//!   part of the match: GHL pipelines allow one open opportunity per contact
//!   by default). Creating needs `contactId`; `name` defaults to the
//!   contact's name, `status` to `open`, the stage to the pipeline's first.
//!   The upsert DTO accepts the union of the 2025 and 2026 specs (with
//!   `contactId`), none of the 2026 spec's `followers*` being required.
//! - `POST /opportunities/` always creates (no duplicate-opportunity rule).
//!
//! Webhooks (when [`GhlConfig::webhooks`] or [`GhlSandbox::set_webhooks`]
//! gives a URL), as a marketplace app
//! receives them (reference §7.1), signed with Ed25519 in `x-ghl-signature`
//! over the exact body, sent one by one a little after the change:
//!
//! | Change | Webhooks |
//! |---|---|
//! | `POST /contacts/`, upsert that creates | `ContactCreate` |
//! | `PUT /contacts/{id}`, upsert that updates, [`GhlSandbox::edit_contact`] | `ContactUpdate` if anything changed; then `ContactTagUpdate` if the tags changed, `ContactDndUpdate` if `dnd` / `dndSettings` changed |
//! | `POST` / `DELETE /contacts/{id}/tags` | `ContactTagUpdate` if the tags changed |
//! | `DELETE /contacts/{id}` | `ContactDelete` (the contact as it was) |
//! | `POST /contacts/{id}/notes` | `NoteCreate` |
//! | `POST /opportunities/`, upsert that creates | `OpportunityCreate`, then `OpportunityUpdate` (GHL sends both, #27) |
//! | opportunity upsert that updates | `OpportunityUpdate` if anything changed; then `OpportunityStageUpdate`, `OpportunityStatusUpdate`, `OpportunityMonetaryValueUpdate`, `OpportunityAssignedToUpdate` for what changed |
//!
//! Contact payloads carry the whole contact (the keys of
//! `examples/payloads/ghl/Contact*.json`, `assignedTo` when set), custom
//! fields as `[{id, value}]`, then `timestamp` (when queued), `webhookId`,
//! `appId`, `versionId`. "Changed" compares what the API shows (`dnd`
//! absent = `false`, `""` = absent, tags and custom fields as sets), so a
//! write of the same values sends nothing and keeps `dateUpdated`.
//! Delivery: only a 429 is retried (see [`WebhookDelivery::ghl`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;

use super::common::{
    self, Controls, Fault, Ids, Incoming, Limiter, LoggedRequest, Outbox, RateLimit, Reply,
    Running, SentWebhook, Simulator, WebhookDelivery, WebhookLog, lock,
};
use super::oauth::{Bearer, OAuth, OAuthConfig};
use super::validate::{Dto, Kind, validate};

/// A field that identifies a contact in the location's dedup settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DuplicateField {
    /// The primary email (compared case-insensitively).
    Email,
    /// The phone (compared in E.164).
    Phone,
}

impl DuplicateField {
    fn as_str(self) -> &'static str {
        match self {
            DuplicateField::Email => "email",
            DuplicateField::Phone => "phone",
        }
    }
}

/// A pipeline to seed: its name and its stages' names, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// Pipeline name, e.g. `Loyalty Payments`.
    pub name: String,
    /// Stage names, e.g. `Paid`, `Refunded`, `Failed`.
    pub stages: Vec<String>,
}

/// Settings of a [`GhlSandbox`].
#[derive(Clone, Debug)]
pub struct GhlConfig {
    /// Address to bind; `None` = `127.0.0.1:0` (a free port).
    pub addr: Option<SocketAddr>,
    /// The bearer token requests must carry.
    pub token: String,
    /// The one location (sub-account) the token gives access to.
    pub location_id: String,
    /// `Version` header values accepted (GHL's contacts, locations and
    /// opportunities specs enumerate only `2021-07-28`).
    pub versions: Vec<String>,
    /// Burst and daily limits of each location, counted apart per location
    /// (default: GHL's 100 per 10 s, 200,000 a day).
    pub rate_limit: RateLimit,
    /// The location's "Allow Duplicate Contact" setting.
    pub allow_duplicates: bool,
    /// Contact deduplication preferences: the identifying fields in priority
    /// order (GHL's default: email, then phone).
    pub duplicate_priority: Vec<DuplicateField>,
    /// Pipelines the location has (GHL has no API to create them).
    pub pipelines: Vec<PipelineConfig>,
    /// Where and how to send webhooks; `None` sends none (see also
    /// [`GhlSandbox::set_webhooks`]).
    pub webhooks: Option<GhlWebhooks>,
    /// The marketplace app's OAuth (`/oauth/token`, `/oauth/locationToken`;
    /// see [`super::oauth`]); its access tokens work beside `token`.
    pub oauth: OAuthConfig,
}

/// Webhooks of a [`GhlSandbox`]: the app's webhook URL and the key that
/// signs them (tests make their own and give the engine the public key).
#[derive(Clone, Debug)]
pub struct GhlWebhooks {
    /// E.g. `http://127.0.0.1:PORT/webhooks/ghl`.
    pub url: String,
    /// Signs each body into `x-ghl-signature`.
    pub signing_key: ed25519_dalek::SigningKey,
    /// `appId` of every payload.
    pub app_id: String,
    /// `versionId` of every payload.
    pub version_id: String,
    /// Delay, timeout and retries.
    pub delivery: WebhookDelivery,
}

impl GhlWebhooks {
    /// Webhooks to `url` signed with `signing_key`, GHL's delivery rules.
    pub fn new(url: impl Into<String>, signing_key: ed25519_dalek::SigningKey) -> GhlWebhooks {
        GhlWebhooks {
            url: url.into(),
            signing_key,
            app_id: "sandboxapp0000000000000a".to_string(),
            version_id: "sandboxapp0000000000000b".to_string(),
            delivery: WebhookDelivery::ghl(),
        }
    }
}

impl Default for GhlConfig {
    fn default() -> GhlConfig {
        GhlConfig {
            addr: None,
            token: "sandbox-token".to_string(),
            location_id: "loc_demo".to_string(),
            versions: vec!["2021-07-28".to_string()],
            rate_limit: RateLimit::ghl(),
            allow_duplicates: false,
            duplicate_priority: vec![DuplicateField::Email, DuplicateField::Phone],
            pipelines: vec![PipelineConfig {
                name: "Loyalty Payments".to_string(),
                stages: vec![
                    "Paid".to_string(),
                    "Refunded".to_string(),
                    "Failed".to_string(),
                ],
            }],
            webhooks: None,
            oauth: OAuthConfig::default(),
        }
    }
}

/// A custom field value of a contact, as GHL reads it back: `{id, value}`.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomFieldValue {
    /// The custom field's id.
    pub id: String,
    /// The value as written.
    pub value: Value,
}

/// A contact of the simulated location.
#[derive(Clone, Debug, PartialEq)]
pub struct Contact {
    /// 20-character id.
    pub id: String,
    /// Its location.
    pub location_id: String,
    /// `firstName`.
    pub first_name: Option<String>,
    /// `lastName`.
    pub last_name: Option<String>,
    /// Primary email, as sent.
    pub email: Option<String>,
    /// Phone in E.164.
    pub phone: Option<String>,
    /// Lowercase, deduplicated, in the order first added.
    pub tags: Vec<String>,
    /// Custom field values.
    pub custom_fields: Vec<CustomFieldValue>,
    /// Every other field written (`address1`, `city`, `dnd`, `source`, …), by
    /// its API name.
    pub fields: Map<String, Value>,
    /// `dateAdded`.
    pub date_added: String,
    /// `dateUpdated`.
    pub date_updated: String,
}

impl Contact {
    /// The value of a custom field, by field id.
    pub fn custom_field(&self, id: &str) -> Option<&Value> {
        self.custom_fields
            .iter()
            .find(|f| f.id == id)
            .map(|f| &f.value)
    }

    fn display_name(&self) -> String {
        let joined = [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if !joined.is_empty() {
            return joined;
        }
        self.fields
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| self.email.clone())
            .or_else(|| self.phone.clone())
            .unwrap_or_default()
    }

    /// `dnd` as GHL shows it: `false` until set.
    fn dnd(&self) -> bool {
        self.fields
            .get("dnd")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The contact as a `Contact*` webhook carries it, without the delivery
    /// fields (`timestamp`, `webhookId`, …).
    fn webhook_json(&self, kind: &str) -> Map<String, Value> {
        // Webhooks carry these as strings or null, whatever was written.
        let text = |key: &str| match self.fields.get(key) {
            Some(Value::String(s)) if !s.is_empty() => json!(s),
            Some(Value::Number(n)) => json!(n.to_string()),
            _ => Value::Null,
        };
        let joined = [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let name = if joined.is_empty() {
            text("name")
        } else {
            json!(joined)
        };
        let mut out = Map::new();
        out.insert("type".into(), json!(kind));
        out.insert("locationId".into(), json!(self.location_id));
        out.insert("id".into(), json!(self.id));
        out.insert("firstName".into(), json!(self.first_name));
        out.insert("lastName".into(), json!(self.last_name));
        out.insert("name".into(), name);
        out.insert("email".into(), json!(self.email));
        out.insert("phone".into(), json!(self.phone));
        for key in [
            "address1",
            "city",
            "state",
            "postalCode",
            "country",
            "companyName",
            "website",
            "source",
        ] {
            out.insert(key.into(), text(key));
        }
        out.insert("dateAdded".into(), json!(self.date_added));
        out.insert("dateOfBirth".into(), text("dateOfBirth"));
        out.insert("dnd".into(), json!(self.dnd()));
        out.insert("attachments".into(), json!([]));
        out.insert("tags".into(), json!(self.tags));
        // Documented but absent from the examples: sent only when set.
        if let assigned @ Value::String(_) = text("assignedTo") {
            out.insert("assignedTo".into(), assigned);
        }
        out.insert(
            "customFields".into(),
            Value::Array(
                self.custom_fields
                    .iter()
                    .map(|f| json!({"id": f.id, "value": f.value}))
                    .collect(),
            ),
        );
        if kind == "ContactDndUpdate" {
            out.insert(
                "dndSettings".into(),
                self.fields
                    .get("dndSettings")
                    .cloned()
                    .unwrap_or_else(|| json!({})),
            );
        }
        out
    }

    /// What the API shows of the contact, in a form where rewriting the same
    /// values compares equal (order of tags and custom fields, `dnd` unset
    /// vs `false`, `""` vs absent, `dateUpdated` do not count).
    fn observable(&self) -> Value {
        let mut c = self.clone();
        c.fields
            .retain(|_, v| !(v.is_null() || v.as_str() == Some("")));
        c.fields.insert("dnd".into(), json!(self.dnd()));
        c.tags.sort();
        c.custom_fields.sort_by(|a, b| a.id.cmp(&b.id));
        c.date_updated.clear();
        c.to_json()
    }

    /// The contact as GHL answers it.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id));
        out.insert("locationId".into(), json!(self.location_id));
        let name = self.display_name().to_lowercase();
        if !name.is_empty() {
            out.insert("contactName".into(), json!(name));
        }
        if let Some(v) = &self.first_name {
            out.insert("firstName".into(), json!(v));
        }
        if let Some(v) = &self.last_name {
            out.insert("lastName".into(), json!(v));
        }
        if let Some(v) = &self.email {
            out.insert("email".into(), json!(v));
        }
        if let Some(v) = &self.phone {
            out.insert("phone".into(), json!(v));
        }
        for (k, v) in &self.fields {
            out.insert(k.clone(), v.clone());
        }
        out.insert("tags".into(), json!(self.tags));
        out.insert(
            "customFields".into(),
            Value::Array(
                self.custom_fields
                    .iter()
                    .map(|f| json!({"id": f.id, "value": f.value}))
                    .collect(),
            ),
        );
        out.insert("dateAdded".into(), json!(self.date_added));
        out.insert("dateUpdated".into(), json!(self.date_updated));
        Value::Object(out)
    }
}

/// A custom field of the location.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomField {
    /// Its id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `contact.<snake_case name>` (or `opportunity.…`).
    pub field_key: String,
    /// `TEXT`, `NUMERICAL`, …
    pub data_type: String,
    /// `contact` or `opportunity`.
    pub model: String,
    /// Placeholder text.
    pub placeholder: Option<String>,
    /// Position.
    pub position: i64,
}

impl CustomField {
    fn to_json(&self, location_id: &str) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "fieldKey": self.field_key,
            "placeholder": self.placeholder.clone().unwrap_or_default(),
            "dataType": self.data_type,
            "position": self.position,
            "picklistOptions": [],
            "isAllowedCustomOption": false,
            "isMultiFileAllowed": false,
            "maxFileLimit": 0,
            "locationId": location_id,
            "model": self.model,
        })
    }

    fn matches_key(&self, key: &str) -> bool {
        self.field_key == key
            || self
                .field_key
                .strip_prefix(&format!("{}.", self.model))
                .is_some_and(|k| k == key)
    }
}

/// A note on a contact.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// Its id.
    pub id: String,
    /// The contact it belongs to.
    pub contact_id: String,
    /// Text.
    pub body: String,
    /// Optional title.
    pub title: Option<String>,
    /// Optional user id.
    pub user_id: Option<String>,
    /// Optional colour.
    pub color: Option<String>,
    /// Pinned.
    pub pinned: bool,
    /// `dateAdded`.
    pub date_added: String,
}

impl Note {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "body": self.body,
            "userId": self.user_id,
            "dateAdded": self.date_added,
            "contactId": self.contact_id,
            "title": self.title,
            "color": self.color,
            "pinned": self.pinned,
        })
    }
}

/// A pipeline stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// Its id (UUID-shaped, as on GHL).
    pub id: String,
    /// Its name.
    pub name: String,
}

/// A pipeline with its stages.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Stages in order.
    pub stages: Vec<Stage>,
}

/// An opportunity.
#[derive(Clone, Debug, PartialEq)]
pub struct Opportunity {
    /// Its id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `monetaryValue`.
    pub monetary_value: Option<f64>,
    /// Pipeline id.
    pub pipeline_id: String,
    /// Stage id.
    pub pipeline_stage_id: String,
    /// `open`, `won`, `lost`, `abandoned`.
    pub status: String,
    /// Contact id.
    pub contact_id: String,
    /// Location id.
    pub location_id: String,
    /// Assigned user.
    pub assigned_to: Option<String>,
    /// Custom field values (`{id, value}`).
    pub custom_fields: Vec<CustomFieldValue>,
    /// `createdAt`.
    pub created_at: String,
    /// `updatedAt`.
    pub updated_at: String,
    /// `lastStatusChangeAt`.
    pub last_status_change_at: String,
    /// `lastStageChangeAt`.
    pub last_stage_change_at: String,
}

impl Opportunity {
    /// The opportunity as an `Opportunity*` webhook carries it (reference
    /// §7.1's field list), without the delivery fields.
    fn webhook_json(&self, kind: &str) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("type".into(), json!(kind));
        out.insert("locationId".into(), json!(self.location_id));
        out.insert("id".into(), json!(self.id));
        out.insert("assignedTo".into(), json!(self.assigned_to));
        out.insert("contactId".into(), json!(self.contact_id));
        out.insert("monetaryValue".into(), json!(self.monetary_value));
        out.insert("name".into(), json!(self.name));
        out.insert("pipelineId".into(), json!(self.pipeline_id));
        out.insert("pipelineStageId".into(), json!(self.pipeline_stage_id));
        out.insert("source".into(), Value::Null);
        out.insert("status".into(), json!(self.status));
        out.insert("dateAdded".into(), json!(self.created_at));
        out
    }

    fn to_json(&self, contact: Option<&Contact>) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "monetaryValue": self.monetary_value,
            "pipelineId": self.pipeline_id,
            "pipelineStageId": self.pipeline_stage_id,
            "assignedTo": self.assigned_to,
            "status": self.status,
            "source": null,
            "lastStatusChangeAt": self.last_status_change_at,
            "lastStageChangeAt": self.last_stage_change_at,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "contactId": self.contact_id,
            "locationId": self.location_id,
            "contact": contact.map(|c| json!({
                "id": c.id,
                "name": c.display_name(),
                "email": c.email,
                "phone": c.phone,
                "tags": c.tags,
            })),
            "customFields": self.custom_fields.iter()
                .map(|f| json!({"id": f.id, "value": f.value}))
                .collect::<Vec<_>>(),
            "followers": [],
        })
    }
}

/// Everything the location holds, plus its mutable settings.
struct Location {
    allow_duplicates: bool,
    priority: Vec<DuplicateField>,
    contacts: Vec<Contact>,
    custom_fields: Vec<CustomField>,
    notes: Vec<Note>,
    pipelines: Vec<Pipeline>,
    opportunities: Vec<Opportunity>,
}

struct Ghl {
    token: String,
    location_id: String,
    versions: Vec<String>,
    controls: Controls,
    rate_limit: RateLimit,
    /// One window per location, made on its first request.
    limiters: Mutex<HashMap<String, Limiter>>,
    state: Mutex<Location>,
    ids: Ids,
    hooks: Mutex<Option<Arc<Hooks>>>,
    /// `webhookId`s: apart from the API's ids, so that turning webhooks on
    /// does not change the ids contacts get.
    hook_ids: Ids,
    sent: WebhookLog,
    oauth: OAuth,
}

/// Where webhooks go while they are on.
struct Hooks {
    outbox: Outbox,
    app_id: String,
    version_id: String,
    public_key: ed25519_dalek::VerifyingKey,
}

impl Hooks {
    fn start(w: GhlWebhooks, sent: WebhookLog) -> std::io::Result<Hooks> {
        let key = w.signing_key.clone();
        let sign: common::SignFn = Box::new(move |body: &[u8]| {
            vec![("x-ghl-signature", B64.encode(key.sign(body).to_bytes()))]
        });
        Ok(Hooks {
            outbox: Outbox::start(&w.url, w.delivery, sign, sent)?,
            app_id: w.app_id,
            version_id: w.version_id,
            public_key: w.signing_key.verifying_key(),
        })
    }
}

/// A running GHL simulator. Stops on drop or [`GhlSandbox::shutdown`].
pub struct GhlSandbox {
    inner: Arc<Ghl>,
    running: Running,
}

impl GhlSandbox {
    /// Binds (127.0.0.1:0 unless `config.addr`) and serves in a tokio task.
    pub async fn start(config: GhlConfig) -> std::io::Result<GhlSandbox> {
        let sent = WebhookLog::default();
        let hooks = match config.webhooks {
            None => None,
            Some(w) => Some(Arc::new(Hooks::start(w, Arc::clone(&sent))?)),
        };
        let hook_ids = Ids::new(&format!("{}:webhooks", config.location_id));
        let ids = Ids::new(&config.location_id);
        let pipelines = config
            .pipelines
            .iter()
            .map(|p| Pipeline {
                id: ids.alnum("pipeline", 20),
                name: p.name.clone(),
                stages: p
                    .stages
                    .iter()
                    .map(|s| Stage {
                        id: ids.uuid("stage"),
                        name: s.clone(),
                    })
                    .collect(),
            })
            .collect();
        let inner = Arc::new(Ghl {
            token: config.token,
            location_id: config.location_id,
            versions: config.versions,
            controls: Controls::default(),
            rate_limit: config.rate_limit,
            limiters: Mutex::new(HashMap::new()),
            state: Mutex::new(Location {
                allow_duplicates: config.allow_duplicates,
                priority: config.duplicate_priority,
                contacts: Vec::new(),
                custom_fields: Vec::new(),
                notes: Vec::new(),
                pipelines,
                opportunities: Vec::new(),
            }),
            ids,
            hooks: Mutex::new(hooks),
            hook_ids,
            sent,
            oauth: OAuth::new(config.oauth),
        });
        let running = common::serve(config.addr, Arc::clone(&inner)).await?;
        Ok(GhlSandbox { inner, running })
    }

    /// `http://127.0.0.1:<port>`, the value for `GHL_API_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The token requests must carry.
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// The location id.
    pub fn location_id(&self) -> &str {
        &self.inner.location_id
    }

    /// The OAuth server: mint authorization codes, shorten or end access
    /// tokens' lives.
    pub fn oauth(&self) -> &OAuth {
        &self.inner.oauth
    }

    /// Stops the server (in-flight requests get up to 2 s).
    pub async fn shutdown(mut self) {
        self.running.shutdown().await;
    }

    /// All contacts, oldest first.
    pub fn contacts(&self) -> Vec<Contact> {
        lock(&self.inner.state).contacts.clone()
    }

    /// A contact by id.
    pub fn contact(&self, id: &str) -> Option<Contact> {
        lock(&self.inner.state)
            .contacts
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    /// The oldest contact with this email (case-insensitive).
    pub fn contact_by_email(&self, email: &str) -> Option<Contact> {
        let state = lock(&self.inner.state);
        find_by(&state.contacts, DuplicateField::Email, email, None).cloned()
    }

    /// The oldest contact with this phone (compared in E.164).
    pub fn contact_by_phone(&self, phone: &str) -> Option<Contact> {
        let state = lock(&self.inner.state);
        find_by(&state.contacts, DuplicateField::Phone, phone, None).cloned()
    }

    /// Notes of a contact, oldest first.
    pub fn notes_of(&self, contact_id: &str) -> Vec<Note> {
        lock(&self.inner.state)
            .notes
            .iter()
            .filter(|n| n.contact_id == contact_id)
            .cloned()
            .collect()
    }

    /// All opportunities, oldest first.
    pub fn opportunities(&self) -> Vec<Opportunity> {
        lock(&self.inner.state).opportunities.clone()
    }

    /// The location's custom fields (all models).
    pub fn custom_fields(&self) -> Vec<CustomField> {
        lock(&self.inner.state).custom_fields.clone()
    }

    /// The pipelines with their stage ids.
    pub fn pipelines(&self) -> Vec<Pipeline> {
        lock(&self.inner.state).pipelines.clone()
    }

    /// Changes the "Allow Duplicate Contact" setting.
    pub fn set_allow_duplicates(&self, allow: bool) {
        lock(&self.inner.state).allow_duplicates = allow;
    }

    /// Changes the deduplication priority.
    pub fn set_duplicate_priority(&self, priority: Vec<DuplicateField>) {
        lock(&self.inner.state).priority = priority;
    }

    /// The next `times` requests fail with `fault`.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.inner.controls.inject(fault, times, None);
    }

    /// The next `times` requests whose path starts with `path_prefix` fail
    /// with `fault`; other requests pass.
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

    /// Forgets the requests counted by the rate limiter (every location's).
    pub fn reset_rate_limit(&self) {
        for limiter in lock(&self.inner.limiters).values_mut() {
            limiter.reset();
        }
    }

    /// Changes a contact as someone in GHL's UI would, and sends the
    /// webhooks of the change (`ContactUpdate`, then `ContactTagUpdate` /
    /// `ContactDndUpdate` as for an API update; nothing when nothing
    /// changed). The id, location and `dateAdded` cannot be changed; tags
    /// are lowercased and the phone stored in E.164, as GHL does. `None`
    /// when there is no such contact.
    pub fn edit_contact(&self, id: &str, edit: impl FnOnce(&mut Contact)) -> Option<Contact> {
        let mut state = lock(&self.inner.state);
        let contact = state.contacts.iter_mut().find(|c| c.id == id)?;
        let before = contact.clone();
        edit(contact);
        contact.id.clone_from(&before.id);
        contact.location_id.clone_from(&before.location_id);
        contact.date_added.clone_from(&before.date_added);
        contact.tags = lowercase_tags(&json!(contact.tags));
        contact.phone = contact.phone.as_deref().and_then(normalize_phone);
        contact.date_updated = common::now_iso();
        self.inner.settle_update(&before, contact);
        Some(contact.clone())
    }

    /// Sends a `Contact*` webhook of type `kind` (e.g. `ContactCreate`) for
    /// the contact as it is, changing nothing (a redelivery, or the create
    /// of a contact a test set up). `false` when there is no such contact.
    pub fn emit_contact_event(&self, kind: &str, id: &str) -> bool {
        let state = lock(&self.inner.state);
        match state.contacts.iter().find(|c| c.id == id) {
            Some(contact) => {
                self.inner.emit(contact.webhook_json(kind));
                true
            }
            None => false,
        }
    }

    /// Turns webhooks on, re-points them or (`None`) turns them off, e.g.
    /// once the engine that receives them is listening (it needs this
    /// simulator's URL first). Webhooks still queued for the previous URL
    /// are dropped: wait for [`GhlSandbox::webhooks_idle`] first to keep
    /// them. Needs a tokio runtime; an error for a bad URL.
    pub fn set_webhooks(&self, webhooks: Option<GhlWebhooks>) -> std::io::Result<()> {
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

    /// Empties the log of [`GhlSandbox::webhooks_sent`].
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

    /// The public key of [`GhlWebhooks::signing_key`] as PEM (the engine's
    /// `GHL_WEBHOOK_PUBLIC_KEY`); `None` without webhooks.
    pub fn webhook_public_key_pem(&self) -> Option<String> {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let hooks = self.inner.hooks()?;
        hooks
            .public_key
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .ok()
    }
}

// ---------------------------------------------------------------- DTOs

const STATUSES: &[&str] = &["open", "won", "lost", "abandoned", "all"];
const DATA_TYPES: &[&str] = &[
    "TEXT",
    "LARGE_TEXT",
    "NUMERICAL",
    "PHONE",
    "MONETORY",
    "CHECKBOX",
    "SINGLE_OPTIONS",
    "MULTIPLE_OPTIONS",
    "DATE",
    "TEXTBOX_LIST",
    "FILE_UPLOAD",
    "RADIO",
    "EMAIL",
];

/// `UpdateContactDto`: no `locationId`, `gender` nor `companyName`.
const UPDATE_CONTACT: Dto = Dto {
    props: &[
        ("firstName", Kind::Str),
        ("lastName", Kind::Str),
        ("name", Kind::Str),
        ("email", Kind::Str),
        ("phone", Kind::Str),
        ("address1", Kind::Str),
        ("city", Kind::Str),
        ("state", Kind::Str),
        ("postalCode", Kind::Str),
        ("website", Kind::Str),
        ("timezone", Kind::Str),
        ("dnd", Kind::Bool),
        ("dndSettings", Kind::Object),
        ("inboundDndSettings", Kind::Object),
        ("tags", Kind::StrArray),
        ("customFields", Kind::CustomFields { require_id: true }),
        ("source", Kind::Str),
        ("dateOfBirth", Kind::Any),
        ("country", Kind::Str),
        ("assignedTo", Kind::Str),
    ],
    required: &[],
};

/// `CreateContactDto`.
const CREATE_CONTACT: Dto = Dto {
    props: &[
        ("firstName", Kind::Str),
        ("lastName", Kind::Str),
        ("name", Kind::Str),
        ("email", Kind::Str),
        ("locationId", Kind::Str),
        ("gender", Kind::Str),
        ("phone", Kind::Str),
        ("address1", Kind::Str),
        ("city", Kind::Str),
        ("state", Kind::Str),
        ("postalCode", Kind::Str),
        ("website", Kind::Str),
        ("timezone", Kind::Str),
        ("dnd", Kind::Bool),
        ("dndSettings", Kind::Object),
        ("inboundDndSettings", Kind::Object),
        ("tags", Kind::StrArray),
        ("customFields", Kind::CustomFields { require_id: true }),
        ("source", Kind::Str),
        ("dateOfBirth", Kind::Any),
        ("country", Kind::Str),
        ("companyName", Kind::Str),
        ("assignedTo", Kind::Str),
    ],
    required: &["locationId"],
};

/// `UpsertContactDto`.
const UPSERT_CONTACT: Dto = Dto {
    props: &[
        ("firstName", Kind::Str),
        ("lastName", Kind::Str),
        ("name", Kind::Str),
        ("email", Kind::Str),
        ("locationId", Kind::Str),
        ("gender", Kind::Str),
        ("phone", Kind::Str),
        ("address1", Kind::Str),
        ("city", Kind::Str),
        ("state", Kind::Str),
        ("postalCode", Kind::Str),
        ("website", Kind::Str),
        ("timezone", Kind::Str),
        ("dnd", Kind::Bool),
        ("dndSettings", Kind::Object),
        ("inboundDndSettings", Kind::Object),
        ("tags", Kind::StrArray),
        ("customFields", Kind::CustomFields { require_id: true }),
        ("source", Kind::Str),
        ("dateOfBirth", Kind::Any),
        ("country", Kind::Str),
        ("companyName", Kind::Str),
        ("assignedTo", Kind::Str),
        ("createNewIfDuplicateAllowed", Kind::Bool),
    ],
    required: &["locationId"],
};

/// `TagsDTO`.
const TAGS: Dto = Dto {
    props: &[("tags", Kind::StrArray)],
    required: &["tags"],
};

/// `NotesDTO`.
const NOTES: Dto = Dto {
    props: &[
        ("userId", Kind::Str),
        ("body", Kind::Str),
        ("title", Kind::Str),
        ("color", Kind::Str),
        ("pinned", Kind::Bool),
    ],
    required: &["body"],
};

/// `CreateCustomFieldsDTO`.
const CREATE_CUSTOM_FIELD: Dto = Dto {
    props: &[
        ("name", Kind::Str),
        ("dataType", Kind::Enum(DATA_TYPES)),
        ("placeholder", Kind::Str),
        ("acceptedFormat", Kind::StrArray),
        ("isMultipleFile", Kind::Bool),
        ("maxNumberOfFiles", Kind::Num),
        ("textBoxListOptions", Kind::Array),
        ("position", Kind::Num),
        ("model", Kind::Enum(&["contact", "opportunity"])),
    ],
    required: &["name", "dataType"],
};

/// `CreateDto` (opportunities).
const CREATE_OPPORTUNITY: Dto = Dto {
    props: &[
        ("pipelineId", Kind::Str),
        ("locationId", Kind::Str),
        ("name", Kind::Str),
        ("pipelineStageId", Kind::Str),
        ("status", Kind::Enum(STATUSES)),
        ("contactId", Kind::Str),
        ("monetaryValue", Kind::Num),
        ("assignedTo", Kind::Str),
        ("customFields", Kind::CustomFields { require_id: false }),
    ],
    required: &["pipelineId", "locationId", "name", "status", "contactId"],
};

/// `UpsertOpportunityDto`, union of the 2025 spec (with `contactId`) and the
/// 2026 one (`id`, `followers*`, `lostReasonId`).
const UPSERT_OPPORTUNITY: Dto = Dto {
    props: &[
        ("id", Kind::Str),
        ("pipelineId", Kind::Str),
        ("locationId", Kind::Str),
        ("contactId", Kind::Str),
        ("followers", Kind::StrArray),
        ("isRemoveAllFollowers", Kind::Bool),
        ("followersActionType", Kind::Enum(&["add", "remove"])),
        ("name", Kind::Str),
        ("status", Kind::Enum(STATUSES)),
        ("pipelineStageId", Kind::Str),
        ("monetaryValue", Kind::Any),
        ("assignedTo", Kind::Str),
        ("lostReasonId", Kind::Str),
    ],
    required: &["pipelineId", "locationId"],
};

// ---------------------------------------------------------------- errors

fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, error_json(status, message))
}

fn error_json(status: u16, message: &str) -> Value {
    let reason = match status {
        401 => Some("Unauthorized"),
        403 => Some("Forbidden"),
        404 => Some("Not Found"),
        _ => None,
    };
    let mut body = json!({"statusCode": status, "message": message});
    if let (Some(reason), Some(map)) = (reason, body.as_object_mut()) {
        map.insert("error".into(), json!(reason));
    }
    body
}

fn unprocessable(messages: Vec<String>) -> Reply {
    Reply::json(
        422,
        json!({"statusCode": 422, "message": messages, "error": "Unprocessable Entity"}),
    )
}

fn not_found_route(request: &Incoming) -> Reply {
    error(404, &format!("Cannot {} {}", request.method, request.path))
}

/// The body as an object checked against `dto`.
fn body_of(request: &Incoming, dto: &Dto) -> Result<Map<String, Value>, Reply> {
    let body = match &request.body {
        None => Map::new(),
        Some(Err(e)) => return Err(error(400, &format!("Unexpected token in JSON: {e}"))),
        Some(Ok(Value::Object(map))) => map.clone(),
        Some(Ok(_)) => return Err(error(400, "Bad Request")),
    };
    let errors = validate(dto, &body);
    if errors.is_empty() {
        Ok(body)
    } else {
        Err(unprocessable(errors))
    }
}

fn str_of<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

// ---------------------------------------------------------------- helpers

/// E.164 as a US location stores it.
fn normalize_phone(phone: &str) -> Option<String> {
    let key = common::phone_key(phone);
    let digits = key.trim_start_matches('+');
    if digits.is_empty() {
        return None;
    }
    Some(if key.starts_with('+') {
        key
    } else if digits.len() == 10 {
        format!("+1{digits}")
    } else {
        format!("+{digits}")
    })
}

fn find_by<'a>(
    contacts: &'a [Contact],
    field: DuplicateField,
    value: &str,
    except: Option<&str>,
) -> Option<&'a Contact> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let phone = normalize_phone(value);
    contacts
        .iter()
        .filter(|c| Some(c.id.as_str()) != except)
        .find(|c| match field {
            DuplicateField::Email => c
                .email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(value)),
            DuplicateField::Phone => phone.is_some() && c.phone == phone,
        })
}

fn lowercase_tags(tags: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let tag = tag.trim().to_lowercase();
        if !tag.is_empty() && !out.contains(&tag) {
            out.push(tag);
        }
    }
    out
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// Custom field writes `(field id, new value or None to clear)`.
type FieldWrites = Vec<(String, Option<Value>)>;

impl Location {
    /// Resolves `customFields` items of `model` to field ids.
    fn resolve_fields(&self, items: Option<&Value>, model: &str) -> Result<FieldWrites, Reply> {
        let mut writes = Vec::new();
        for item in items.and_then(Value::as_array).into_iter().flatten() {
            let Some(item) = item.as_object() else {
                continue;
            };
            let id = item.get("id").and_then(Value::as_str);
            let key = item.get("key").and_then(Value::as_str);
            let field = self.custom_fields.iter().find(|f| {
                f.model == model
                    && match (id, key) {
                        (Some(id), _) => f.id == id,
                        (None, Some(key)) => f.matches_key(key),
                        (None, None) => false,
                    }
            });
            let Some(field) = field else {
                let what = id.or(key).unwrap_or_default();
                return Err(error(
                    400,
                    &format!("Custom field with id {what} not found"),
                ));
            };
            match item.get("field_value") {
                None => {}
                Some(Value::Null) => writes.push((field.id.clone(), None)),
                Some(Value::String(s)) if s.is_empty() => writes.push((field.id.clone(), None)),
                Some(v) => writes.push((field.id.clone(), Some(v.clone()))),
            }
        }
        Ok(writes)
    }

    /// The first field of the priority order on which another contact has
    /// the value of `body` (when duplicates are not allowed).
    fn duplicate_of(
        &self,
        email: Option<&str>,
        phone: Option<&str>,
        except: Option<&str>,
    ) -> Option<(&Contact, DuplicateField)> {
        if self.allow_duplicates {
            return None;
        }
        self.priority.iter().find_map(|field| {
            let value = match field {
                DuplicateField::Email => email,
                DuplicateField::Phone => phone,
            }?;
            find_by(&self.contacts, *field, value, except).map(|c| (c, *field))
        })
    }

    fn contact_index(&self, id: &str) -> Result<usize, Reply> {
        self.contacts
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| error(400, &format!("Contact with id {id} not found")))
    }
}

fn duplicate_reply(contact: &Contact, field: DuplicateField) -> Reply {
    Reply::json(
        400,
        json!({
            "statusCode": 400,
            "message": "This location does not allow duplicated contacts.",
            "meta": {
                "contactId": contact.id,
                "contactName": contact.display_name(),
                "matchingField": field.as_str(),
            }
        }),
    )
}

/// Writes the body's fields into `contact` (`skip`: fields to ignore).
fn apply_contact(
    contact: &mut Contact,
    body: &Map<String, Value>,
    writes: FieldWrites,
    skip: &[&str],
) {
    for (key, value) in body {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let text = value.as_str().map(str::trim).filter(|s| !s.is_empty());
        match key.as_str() {
            "locationId" | "customFields" | "createNewIfDuplicateAllowed" => {}
            "firstName" => contact.first_name = text.map(str::to_string),
            "lastName" => contact.last_name = text.map(str::to_string),
            "email" => contact.email = text.map(str::to_string),
            "phone" => contact.phone = text.and_then(normalize_phone),
            "tags" => {
                if !value.is_null() {
                    contact.tags = lowercase_tags(value);
                }
            }
            _ => {
                if value.is_null() {
                    contact.fields.remove(key);
                } else {
                    contact.fields.insert(key.clone(), value.clone());
                }
            }
        }
    }
    for (id, value) in writes {
        // In place, so that rewriting a value does not reorder the fields.
        match (contact.custom_fields.iter_mut().find(|f| f.id == id), value) {
            (Some(field), Some(value)) => field.value = value,
            (Some(_), None) => contact.custom_fields.retain(|f| f.id != id),
            (None, Some(value)) => contact.custom_fields.push(CustomFieldValue { id, value }),
            (None, None) => {}
        }
    }
    contact.date_updated = common::now_iso();
}

/// What an update changed, as far as webhooks tell.
struct ContactChanges {
    any: bool,
    tags: bool,
    dnd: bool,
}

fn contact_changes(before: &Contact, after: &Contact) -> ContactChanges {
    let sorted = |c: &Contact| {
        let mut tags = c.tags.clone();
        tags.sort();
        tags
    };
    ContactChanges {
        any: before.observable() != after.observable(),
        tags: sorted(before) != sorted(after),
        dnd: before.dnd() != after.dnd()
            || before.fields.get("dndSettings") != after.fields.get("dndSettings"),
    }
}

// ---------------------------------------------------------------- routes

impl Simulator for Ghl {
    fn controls(&self) -> &Controls {
        &self.controls
    }

    fn error_body(&self, status: u16, message: &str) -> Value {
        error_json(status, message)
    }

    /// GHL's validation answer: `message` is an array (reference §6).
    fn unprocessable_body(&self, messages: &[String]) -> Value {
        json!({"statusCode": 422, "message": messages, "error": "Unprocessable Entity"})
    }

    fn revoked_message(&self) -> &'static str {
        "Invalid token: access token is invalid"
    }

    fn handle(&self, request: &Incoming) -> Reply {
        if let Some(reply) = self.oauth.route(request, &self.versions) {
            return reply;
        }
        let bearer = request
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "));
        if bearer != Some(self.token.as_str())
            && let Some(refused) = self.oauth.refuse_api_bearer(bearer, &self.location_id)
        {
            return refused;
        }
        match request.header("version") {
            None => return error(401, "version header was not found."),
            Some(v) if !self.versions.iter().any(|a| a == v) => {
                return error(401, "version header is invalid");
            }
            Some(_) => {}
        }
        let location = self.location_of(request, bearer);
        let quota = lock(&self.limiters)
            .entry(location)
            .or_insert_with(|| Limiter::new(self.rate_limit.clone()))
            .check();
        let reply = if quota.allowed {
            self.route(request)
        } else {
            error(429, "Too Many Requests")
        };
        let mut reply = reply
            .with_header("x-ratelimit-max", quota.max.to_string())
            .with_header("x-ratelimit-remaining", quota.remaining.to_string())
            .with_header(
                "x-ratelimit-interval-milliseconds",
                quota.interval_ms.to_string(),
            );
        if let (Some(daily), Some(left)) = (quota.daily, quota.daily_remaining) {
            reply = reply
                .with_header("x-ratelimit-limit-daily", daily.to_string())
                .with_header("x-ratelimit-daily-remaining", left.to_string());
        }
        reply
    }
}

impl Ghl {
    /// The location whose rate window a request counts against: the one it
    /// names (query or body `locationId`, `/locations/{loc}/…`), else its
    /// bearer's (a location access token's), else the configured location.
    fn location_of(&self, request: &Incoming, bearer: Option<&str>) -> String {
        let named = request
            .query("locationId")
            .filter(|l| !l.is_empty())
            .or_else(|| match &request.body {
                Some(Ok(body)) => body.get("locationId").and_then(Value::as_str),
                _ => None,
            })
            .filter(|l| !l.is_empty());
        if let Some(location) = named {
            return location.to_string();
        }
        if let ["locations", location, ..] = request.segments().as_slice() {
            return (*location).to_string();
        }
        match bearer
            .filter(|b| *b != self.token)
            .map(|b| self.oauth.bearer(b))
        {
            Some(Bearer::Location(Some(location))) => location,
            _ => self.location_id.clone(),
        }
    }

    fn route(&self, request: &Incoming) -> Reply {
        let segments = request.segments();
        let method = request.method.as_str();
        let result = match (method, segments.as_slice()) {
            ("POST", ["contacts"]) => self.create_contact(request),
            ("POST", ["contacts", "upsert"]) => self.upsert_contact(request),
            ("GET", ["contacts", "search", "duplicate"]) => self.search_duplicate(request),
            ("GET", ["contacts", id]) => self.get_contact(id),
            ("PUT", ["contacts", id]) => self.update_contact(request, id),
            ("DELETE", ["contacts", id]) => self.delete_contact(id),
            ("POST", ["contacts", id, "tags"]) => self.change_tags(request, id, true),
            ("DELETE", ["contacts", id, "tags"]) => self.change_tags(request, id, false),
            ("POST", ["contacts", id, "notes"]) => self.add_note(request, id),
            ("GET", ["contacts", id, "notes"]) => self.list_notes(id),
            ("GET", ["locations", loc, "customFields"]) => self.list_custom_fields(request, loc),
            ("POST", ["locations", loc, "customFields"]) => self.create_custom_field(request, loc),
            ("GET", ["locations", loc, "customFields", id]) => self.get_custom_field(loc, id),
            ("GET", ["opportunities", "pipelines"]) => self.list_pipelines(request),
            ("POST", ["opportunities"]) => self.create_opportunity(request),
            ("POST", ["opportunities", "upsert"]) => self.upsert_opportunity(request),
            ("GET", ["opportunities", id]) => self.get_opportunity(id),
            _ => Err(not_found_route(request)),
        };
        result.unwrap_or_else(|reply| reply)
    }

    /// Queues a webhook (payload from a `webhook_json`), adding the delivery
    /// fields. Called under the state lock, so webhooks leave in the order
    /// of the changes.
    fn emit(&self, mut payload: Map<String, Value>) {
        let Some(hooks) = self.hooks() else { return };
        let kind = payload
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        payload.insert("timestamp".into(), json!(common::now_iso()));
        payload.insert("webhookId".into(), json!(self.hook_ids.uuid("webhook")));
        payload.insert("appId".into(), json!(hooks.app_id));
        payload.insert("versionId".into(), json!(hooks.version_id));
        hooks.outbox.send(&kind, Value::Object(payload));
    }

    fn hooks(&self) -> Option<Arc<Hooks>> {
        lock(&self.hooks).clone()
    }

    /// After an update turned `before` into `after`: keeps `dateUpdated`
    /// when nothing changed, else sends the webhooks of the change.
    fn settle_update(&self, before: &Contact, after: &mut Contact) {
        let changes = contact_changes(before, after);
        if !changes.any {
            after.date_updated.clone_from(&before.date_updated);
            return;
        }
        self.emit(after.webhook_json("ContactUpdate"));
        if changes.tags {
            self.emit(after.webhook_json("ContactTagUpdate"));
        }
        if changes.dnd {
            self.emit(after.webhook_json("ContactDndUpdate"));
        }
    }

    fn check_location(&self, location: Option<&str>) -> Result<(), Reply> {
        match location {
            Some(l) if l == self.location_id => Ok(()),
            Some(_) => Err(error(
                403,
                "The token does not have access to this location.",
            )),
            None => Err(unprocessable(vec![
                "locationId should not be empty".to_string(),
                "locationId must be a string".to_string(),
            ])),
        }
    }

    fn new_contact(&self) -> Contact {
        let now = common::now_iso();
        Contact {
            id: self.ids.alnum("contact", 20),
            location_id: self.location_id.clone(),
            first_name: None,
            last_name: None,
            email: None,
            phone: None,
            tags: Vec::new(),
            custom_fields: Vec::new(),
            fields: Map::new(),
            date_added: now.clone(),
            date_updated: now,
        }
    }

    fn create_contact(&self, request: &Incoming) -> Result<Reply, Reply> {
        let body = body_of(request, &CREATE_CONTACT)?;
        self.check_location(str_of(&body, "locationId"))?;
        let mut state = lock(&self.state);
        if let Some((dup, field)) =
            state.duplicate_of(str_of(&body, "email"), str_of(&body, "phone"), None)
        {
            return Err(duplicate_reply(dup, field));
        }
        let writes = state.resolve_fields(body.get("customFields"), "contact")?;
        let mut contact = self.new_contact();
        apply_contact(&mut contact, &body, writes, &[]);
        contact.date_updated.clone_from(&contact.date_added);
        let answer = json!({"contact": contact.to_json()});
        self.emit(contact.webhook_json("ContactCreate"));
        state.contacts.push(contact);
        Ok(Reply::json(201, answer))
    }

    fn get_contact(&self, id: &str) -> Result<Reply, Reply> {
        let state = lock(&self.state);
        let index = state.contact_index(id)?;
        Ok(Reply::json(
            200,
            json!({"contact": state.contacts[index].to_json()}),
        ))
    }

    fn update_contact(&self, request: &Incoming, id: &str) -> Result<Reply, Reply> {
        let body = body_of(request, &UPDATE_CONTACT)?;
        let mut state = lock(&self.state);
        let index = state.contact_index(id)?;
        if let Some((dup, field)) =
            state.duplicate_of(str_of(&body, "email"), str_of(&body, "phone"), Some(id))
        {
            return Err(duplicate_reply(dup, field));
        }
        let writes = state.resolve_fields(body.get("customFields"), "contact")?;
        let contact = &mut state.contacts[index];
        let before = contact.clone();
        apply_contact(contact, &body, writes, &[]);
        self.settle_update(&before, contact);
        Ok(Reply::json(
            200,
            json!({"succeded": true, "contact": contact.to_json()}),
        ))
    }

    fn delete_contact(&self, id: &str) -> Result<Reply, Reply> {
        let mut state = lock(&self.state);
        let index = state.contact_index(id)?;
        let contact = state.contacts.remove(index);
        state.notes.retain(|n| n.contact_id != id);
        self.emit(contact.webhook_json("ContactDelete"));
        Ok(Reply::json(200, json!({"succeded": true})))
    }

    fn upsert_contact(&self, request: &Incoming) -> Result<Reply, Reply> {
        let body = body_of(request, &UPSERT_CONTACT)?;
        self.check_location(str_of(&body, "locationId"))?;
        let mut state = lock(&self.state);
        let writes = state.resolve_fields(body.get("customFields"), "contact")?;
        let force_new = state.allow_duplicates
            && body
                .get("createNewIfDuplicateAllowed")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let email = str_of(&body, "email");
        let phone = str_of(&body, "phone");
        let matched = if force_new {
            None
        } else {
            state.priority.iter().find_map(|field| {
                let value = match field {
                    DuplicateField::Email => email,
                    DuplicateField::Phone => phone,
                }?;
                find_by(&state.contacts, *field, value, None).map(|c| c.id.clone())
            })
        };
        let answer = match matched {
            Some(id) => {
                // Fields of the body owned by another contact are dropped (#37).
                let mut skip = vec!["gender"];
                if !state.allow_duplicates {
                    if email.is_some_and(|e| {
                        find_by(&state.contacts, DuplicateField::Email, e, Some(&id)).is_some()
                    }) {
                        skip.push("email");
                    }
                    if phone.is_some_and(|p| {
                        find_by(&state.contacts, DuplicateField::Phone, p, Some(&id)).is_some()
                    }) {
                        skip.push("phone");
                    }
                }
                let index = state.contact_index(&id)?;
                let contact = &mut state.contacts[index];
                let before = contact.clone();
                apply_contact(contact, &body, writes, &skip);
                self.settle_update(&before, contact);
                json!({"new": false, "contact": contact.to_json(), "traceId": self.ids.uuid("trace")})
            }
            None => {
                let mut contact = self.new_contact();
                apply_contact(&mut contact, &body, writes, &[]);
                contact.date_updated.clone_from(&contact.date_added);
                let answer = json!({"new": true, "contact": contact.to_json(), "traceId": self.ids.uuid("trace")});
                self.emit(contact.webhook_json("ContactCreate"));
                state.contacts.push(contact);
                answer
            }
        };
        Ok(Reply::json(200, answer))
    }

    fn search_duplicate(&self, request: &Incoming) -> Result<Reply, Reply> {
        self.check_location(request.query("locationId").filter(|l| !l.is_empty()))?;
        let email = request.query("email").filter(|v| !v.trim().is_empty());
        let number = request.query("number").filter(|v| !v.trim().is_empty());
        let state = lock(&self.state);
        let order = if state.allow_duplicates {
            vec![DuplicateField::Email, DuplicateField::Phone]
        } else {
            state.priority.clone()
        };
        let found = order.iter().find_map(|field| {
            let value = match field {
                DuplicateField::Email => email,
                DuplicateField::Phone => number,
            }?;
            find_by(&state.contacts, *field, value, None)
        });
        Ok(Reply::json(
            200,
            json!({"contact": found.map(Contact::to_json)}),
        ))
    }

    fn change_tags(&self, request: &Incoming, id: &str, add: bool) -> Result<Reply, Reply> {
        let body = body_of(request, &TAGS)?;
        let tags = lowercase_tags(body.get("tags").unwrap_or(&Value::Null));
        let mut state = lock(&self.state);
        let index = state.contact_index(id)?;
        let contact = &mut state.contacts[index];
        let before = contact.tags.len();
        if add {
            for tag in tags {
                if !contact.tags.contains(&tag) {
                    contact.tags.push(tag);
                }
            }
        } else {
            contact.tags.retain(|t| !tags.contains(t));
        }
        // Tags are only added or removed here, so a change shows in the count.
        if contact.tags.len() != before {
            contact.date_updated = common::now_iso();
            self.emit(contact.webhook_json("ContactTagUpdate"));
        }
        Ok(Reply::json(
            if add { 201 } else { 200 },
            json!({"tags": contact.tags}),
        ))
    }

    fn add_note(&self, request: &Incoming, id: &str) -> Result<Reply, Reply> {
        let body = body_of(request, &NOTES)?;
        let mut state = lock(&self.state);
        state.contact_index(id)?;
        let text = |k: &str| str_of(&body, k).map(str::to_string);
        let note = Note {
            id: self.ids.alnum("note", 20),
            contact_id: id.to_string(),
            body: text("body").unwrap_or_default(),
            title: text("title"),
            user_id: text("userId"),
            color: text("color"),
            pinned: body.get("pinned").and_then(Value::as_bool).unwrap_or(false),
            date_added: common::now_iso(),
        };
        let answer = json!({"note": note.to_json()});
        let mut payload = Map::new();
        payload.insert("type".into(), json!("NoteCreate"));
        payload.insert("locationId".into(), json!(self.location_id));
        payload.insert("id".into(), json!(note.id));
        payload.insert("body".into(), json!(note.body));
        payload.insert("contactId".into(), json!(note.contact_id));
        payload.insert("dateAdded".into(), json!(note.date_added));
        self.emit(payload);
        state.notes.push(note);
        Ok(Reply::json(201, answer))
    }

    fn list_notes(&self, id: &str) -> Result<Reply, Reply> {
        let state = lock(&self.state);
        state.contact_index(id)?;
        let notes: Vec<Value> = state
            .notes
            .iter()
            .filter(|n| n.contact_id == id)
            .map(Note::to_json)
            .collect();
        Ok(Reply::json(200, json!({"notes": notes})))
    }

    fn list_custom_fields(&self, request: &Incoming, loc: &str) -> Result<Reply, Reply> {
        self.check_location(Some(loc))?;
        let model = request.query("model").unwrap_or("all");
        let state = lock(&self.state);
        let fields: Vec<Value> = state
            .custom_fields
            .iter()
            .filter(|f| model == "all" || f.model == model)
            .map(|f| f.to_json(&self.location_id))
            .collect();
        Ok(Reply::json(200, json!({"customFields": fields})))
    }

    fn get_custom_field(&self, loc: &str, id: &str) -> Result<Reply, Reply> {
        self.check_location(Some(loc))?;
        let state = lock(&self.state);
        let field = state
            .custom_fields
            .iter()
            .find(|f| f.id == id)
            .ok_or_else(|| error(400, &format!("Custom field with id {id} not found")))?;
        Ok(Reply::json(
            200,
            json!({"customField": field.to_json(&self.location_id)}),
        ))
    }

    fn create_custom_field(&self, request: &Incoming, loc: &str) -> Result<Reply, Reply> {
        self.check_location(Some(loc))?;
        let body = body_of(request, &CREATE_CUSTOM_FIELD)?;
        let name = str_of(&body, "name").unwrap_or_default().trim().to_string();
        let model = str_of(&body, "model").unwrap_or("contact").to_string();
        let slug = snake_case(&name);
        if slug.is_empty() {
            return Err(unprocessable(vec!["name should not be empty".into()]));
        }
        let field_key = format!("{model}.{slug}");
        let mut state = lock(&self.state);
        if state.custom_fields.iter().any(|f| f.field_key == field_key) {
            return Err(error(
                400,
                &format!("Custom field with the name {name} already exists"),
            ));
        }
        let position = body
            .get("position")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| i64::try_from(state.custom_fields.len()).unwrap_or(0));
        let field = CustomField {
            id: self.ids.alnum("field", 20),
            name,
            field_key,
            data_type: str_of(&body, "dataType").unwrap_or("TEXT").to_string(),
            model,
            placeholder: str_of(&body, "placeholder").map(str::to_string),
            position,
        };
        let answer = json!({"customField": field.to_json(&self.location_id)});
        state.custom_fields.push(field);
        Ok(Reply::json(201, answer))
    }

    fn list_pipelines(&self, request: &Incoming) -> Result<Reply, Reply> {
        self.check_location(request.query("locationId").filter(|l| !l.is_empty()))?;
        let state = lock(&self.state);
        let pipelines: Vec<Value> = state
            .pipelines
            .iter()
            .map(|p| {
                json!({
                    "id": p.id,
                    "name": p.name,
                    "locationId": self.location_id,
                    "stages": p.stages.iter().enumerate()
                        .map(|(i, s)| json!({"id": s.id, "name": s.name, "position": i}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(Reply::json(200, json!({"pipelines": pipelines})))
    }

    fn get_opportunity(&self, id: &str) -> Result<Reply, Reply> {
        let state = lock(&self.state);
        let opp = state
            .opportunities
            .iter()
            .find(|o| o.id == id)
            .ok_or_else(|| error(400, &format!("Opportunity with id {id} not found")))?;
        let contact = state.contacts.iter().find(|c| c.id == opp.contact_id);
        Ok(Reply::json(
            200,
            json!({"opportunity": opp.to_json(contact)}),
        ))
    }

    fn create_opportunity(&self, request: &Incoming) -> Result<Reply, Reply> {
        let body = body_of(request, &CREATE_OPPORTUNITY)?;
        self.check_location(str_of(&body, "locationId"))?;
        let mut state = lock(&self.state);
        let opp = self.new_opportunity(&state, &body)?;
        let contact = state.contacts.iter().find(|c| c.id == opp.contact_id);
        let answer = json!({"opportunity": opp.to_json(contact)});
        self.emit(opp.webhook_json("OpportunityCreate"));
        self.emit(opp.webhook_json("OpportunityUpdate"));
        state.opportunities.push(opp);
        Ok(Reply::json(201, answer))
    }

    fn upsert_opportunity(&self, request: &Incoming) -> Result<Reply, Reply> {
        let body = body_of(request, &UPSERT_OPPORTUNITY)?;
        self.check_location(str_of(&body, "locationId"))?;
        let monetary = match body.get("monetaryValue") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => match s.trim().parse::<f64>() {
                Ok(v) => Some(v),
                Err(_) => {
                    return Err(unprocessable(vec![
                        "monetaryValue must be a number conforming to the specified constraints"
                            .into(),
                    ]));
                }
            },
            Some(_) => {
                return Err(unprocessable(vec![
                    "monetaryValue must be a number conforming to the specified constraints".into(),
                ]));
            }
        };
        let mut state = lock(&self.state);
        let pipeline_id = str_of(&body, "pipelineId").unwrap_or_default();
        let pipeline = state
            .pipelines
            .iter()
            .find(|p| p.id == pipeline_id)
            .ok_or_else(|| error(400, &format!("Pipeline with id {pipeline_id} not found")))?
            .clone();
        let existing = match str_of(&body, "id") {
            Some(id) => Some(
                state
                    .opportunities
                    .iter()
                    .position(|o| o.id == id)
                    .ok_or_else(|| error(400, &format!("Opportunity with id {id} not found")))?,
            ),
            None => str_of(&body, "contactId").and_then(|contact| {
                state
                    .opportunities
                    .iter()
                    .rposition(|o| o.contact_id == contact && o.pipeline_id == pipeline_id)
            }),
        };
        let (opp, new) = match existing {
            Some(index) => {
                let stage = match str_of(&body, "pipelineStageId") {
                    Some(s) => Some(stage_in(&pipeline, s)?),
                    None => None,
                };
                let now = common::now_iso();
                let opp = &mut state.opportunities[index];
                let before = opp.clone();
                if opp.pipeline_id != pipeline.id {
                    opp.pipeline_id.clone_from(&pipeline.id);
                    opp.pipeline_stage_id = stage
                        .clone()
                        .or_else(|| pipeline.stages.first().map(|s| s.id.clone()))
                        .unwrap_or_default();
                    opp.last_stage_change_at.clone_from(&now);
                }
                if let Some(stage) = stage
                    && stage != opp.pipeline_stage_id
                {
                    opp.pipeline_stage_id = stage;
                    opp.last_stage_change_at.clone_from(&now);
                }
                if let Some(name) = str_of(&body, "name") {
                    opp.name = name.to_string();
                }
                if let Some(status) = str_of(&body, "status")
                    && status != opp.status
                {
                    opp.status = status.to_string();
                    opp.last_status_change_at.clone_from(&now);
                }
                if monetary.is_some() {
                    opp.monetary_value = monetary;
                }
                if let Some(user) = str_of(&body, "assignedTo") {
                    opp.assigned_to = Some(user.to_string());
                }
                opp.updated_at = now;
                self.settle_opportunity(&before, opp);
                (opp.clone(), false)
            }
            None => {
                if str_of(&body, "contactId").is_none() {
                    return Err(unprocessable(vec![
                        "contactId should not be empty".into(),
                        "contactId must be a string".into(),
                    ]));
                }
                let mut opp = self.new_opportunity(&state, &body)?;
                opp.monetary_value = monetary;
                self.emit(opp.webhook_json("OpportunityCreate"));
                self.emit(opp.webhook_json("OpportunityUpdate"));
                state.opportunities.push(opp.clone());
                (opp, true)
            }
        };
        let contact = state.contacts.iter().find(|c| c.id == opp.contact_id);
        Ok(Reply::json(
            200,
            json!({"opportunity": opp.to_json(contact), "new": new}),
        ))
    }

    /// After an upsert turned `before` into `after`: keeps `updatedAt` when
    /// nothing changed, else sends `OpportunityUpdate` and one event per
    /// kind of change, as GHL does (#27).
    fn settle_opportunity(&self, before: &Opportunity, after: &mut Opportunity) {
        let stage = before.pipeline_id != after.pipeline_id
            || before.pipeline_stage_id != after.pipeline_stage_id;
        let status = before.status != after.status;
        let value = before.monetary_value != after.monetary_value;
        let assigned = before.assigned_to != after.assigned_to;
        if !(stage || status || value || assigned || before.name != after.name) {
            after.updated_at.clone_from(&before.updated_at);
            return;
        }
        self.emit(after.webhook_json("OpportunityUpdate"));
        for (changed, kind) in [
            (stage, "OpportunityStageUpdate"),
            (status, "OpportunityStatusUpdate"),
            (value, "OpportunityMonetaryValueUpdate"),
            (assigned, "OpportunityAssignedToUpdate"),
        ] {
            if changed {
                self.emit(after.webhook_json(kind));
            }
        }
    }

    /// A new opportunity from a create or upsert body (validated).
    fn new_opportunity(
        &self,
        state: &Location,
        body: &Map<String, Value>,
    ) -> Result<Opportunity, Reply> {
        let pipeline_id = str_of(body, "pipelineId").unwrap_or_default();
        let pipeline = state
            .pipelines
            .iter()
            .find(|p| p.id == pipeline_id)
            .ok_or_else(|| error(400, &format!("Pipeline with id {pipeline_id} not found")))?;
        let stage = match str_of(body, "pipelineStageId") {
            Some(s) => stage_in(pipeline, s)?,
            None => pipeline
                .stages
                .first()
                .map(|s| s.id.clone())
                .unwrap_or_default(),
        };
        let contact_id = str_of(body, "contactId").unwrap_or_default();
        let contact = state
            .contacts
            .iter()
            .find(|c| c.id == contact_id)
            .ok_or_else(|| error(400, &format!("Contact with id {contact_id} not found")))?;
        let writes = state.resolve_fields(body.get("customFields"), "opportunity")?;
        let now = common::now_iso();
        Ok(Opportunity {
            id: self.ids.alnum("opportunity", 20),
            name: str_of(body, "name")
                .map(str::to_string)
                .unwrap_or_else(|| contact.display_name()),
            monetary_value: body.get("monetaryValue").and_then(Value::as_f64),
            pipeline_id: pipeline.id.clone(),
            pipeline_stage_id: stage,
            status: str_of(body, "status").unwrap_or("open").to_string(),
            contact_id: contact.id.clone(),
            location_id: self.location_id.clone(),
            assigned_to: str_of(body, "assignedTo").map(str::to_string),
            custom_fields: writes
                .into_iter()
                .filter_map(|(id, value)| value.map(|value| CustomFieldValue { id, value }))
                .collect(),
            created_at: now.clone(),
            updated_at: now.clone(),
            last_status_change_at: now.clone(),
            last_stage_change_at: now,
        })
    }
}

fn stage_in(pipeline: &Pipeline, stage: &str) -> Result<String, Reply> {
    pipeline
        .stages
        .iter()
        .find(|s| s.id == stage)
        .map(|s| s.id.clone())
        .ok_or_else(|| {
            error(
                400,
                &format!(
                    "Pipeline stage with id {stage} not found in pipeline {}",
                    pipeline.id
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_keys_are_snake_case() {
        assert_eq!(snake_case("Loyalty Points"), "loyalty_points");
        assert_eq!(snake_case("  Last purchase - date! "), "last_purchase_date");
    }

    #[test]
    fn phones_are_stored_in_e164() {
        assert_eq!(
            normalize_phone("+1 888-888-8888").as_deref(),
            Some("+18888888888")
        );
        assert_eq!(
            normalize_phone("(555) 123-4567").as_deref(),
            Some("+15551234567")
        );
        assert_eq!(
            normalize_phone("447700900123").as_deref(),
            Some("+447700900123")
        );
        assert_eq!(normalize_phone("n/a"), None);
    }

    fn contact() -> Contact {
        Contact {
            id: "c1".into(),
            location_id: "loc".into(),
            first_name: Some("Ana".into()),
            last_name: None,
            email: Some("ana@example.com".into()),
            phone: None,
            tags: vec!["a".into(), "b".into()],
            custom_fields: vec![
                CustomFieldValue {
                    id: "f1".into(),
                    value: json!(1),
                },
                CustomFieldValue {
                    id: "f2".into(),
                    value: json!("x"),
                },
            ],
            fields: Map::new(),
            date_added: "2025-01-01T00:00:00.000Z".into(),
            date_updated: "2025-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn rewriting_the_same_values_is_no_change() {
        let before = contact();
        let mut after = before.clone();
        after.tags.reverse();
        after.custom_fields.reverse();
        after.fields.insert("dnd".into(), json!(false));
        after.fields.insert("city".into(), json!(""));
        after.date_updated = "2025-02-01T00:00:00.000Z".into();
        let changes = contact_changes(&before, &after);
        assert!(!changes.any && !changes.tags && !changes.dnd);

        after.tags.push("c".into());
        after.fields.insert("dnd".into(), json!(true));
        let changes = contact_changes(&before, &after);
        assert!(changes.any && changes.tags && changes.dnd);
    }

    #[test]
    fn webhook_payloads_carry_strings_or_null() {
        let mut c = contact();
        c.fields.insert("dateOfBirth".into(), json!(19900917));
        c.fields.insert("city".into(), json!(""));
        let body = c.webhook_json("ContactUpdate");
        assert_eq!(body["dateOfBirth"], "19900917");
        assert_eq!(body["city"], Value::Null);
        assert_eq!(body["name"], "Ana");
        assert_eq!(body["dnd"], false);
        assert!(!body.contains_key("assignedTo") && !body.contains_key("dndSettings"));
        assert_eq!(c.webhook_json("ContactDndUpdate")["dndSettings"], json!({}));
    }
}
