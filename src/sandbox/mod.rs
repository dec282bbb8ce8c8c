//! Simulated GHL and Sticky Cards APIs, served over real HTTP on loopback,
//! for the integration tests and the sandbox mode.
//!
//! Each simulator is a handle that owns a server task bound to `127.0.0.1:0`
//! (or a given address) and its state behind a mutex:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mapper::sandbox::{Fault, GhlConfig, GhlSandbox};
//! let ghl = GhlSandbox::start(GhlConfig::default()).await?;
//! let base = ghl.base_url(); // GHL_API_BASE_URL
//! ghl.inject(Fault::Status(500), 1); // the next request fails with 500
//! // … run requests …
//! let calls = ghl.request_log().len();
//! # let _ = (base, calls);
//! ghl.shutdown().await; // or drop it
//! # Ok(()) }
//! ```
//!
//! - [`ghl`]: GoHighLevel API v2 for one location (contacts, tags, notes,
//!   custom fields, pipelines, opportunities), with GHL's auth, `Version`
//!   header, validation (422 `property X should not exist`), duplicate rules
//!   and rate-limit headers.
//! - [`stickycards`]: the Sticky Cards seed API and Boomerangme v2 in one
//!   server (customers, cards, balances, segments, pushes, preferences).
//!
//! Both share the request log ([`LoggedRequest`]), fault injection
//! ([`Fault`]: status, 429 with or without `Retry-After`, hang, answers
//! cut, slowed or garbled in transit, a revoked token, a 422) and a
//! sliding-window [`RateLimit`]. Faults are served before anything else
//! (auth and rate limit included) and consume nothing else; requests are
//! logged on arrival, their status filled in when answered.
//!
//! Given a webhook URL ([`GhlWebhooks`], [`StickyCardsWebhooks`]), each
//! simulator also sends the webhooks its platform sends when data changes,
//! through its API or by hand (`edit_contact`, `edit_customer`,
//! `set_card_balance`, …): queued while the change is made, delivered one
//! at a time in order, [`WebhookDelivery::delay`] later, logged as
//! [`SentWebhook`]s (or, opted into with [`WebhookDelivery::jitter`] and
//! [`WebhookDelivery::duplicate_every`], out of order and some twice, as
//! the real platforms may). `webhooks_idle().await` returns when the queue is
//! empty, so a test can wait for quiescence. As the engine needs the
//! simulators' URLs before it listens, `set_webhooks` turns webhooks on (or
//! re-points them) after start:
//!
//! ```no_run
//! # async fn demo(engine: String) -> std::io::Result<()> {
//! use mapper::sandbox::{GhlConfig, GhlSandbox, GhlWebhooks};
//! let ghl = GhlSandbox::start(GhlConfig::default()).await?;
//! // … start the engine with ghl.base_url(); it listens at `engine` …
//! let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let url = format!("{engine}/webhooks/ghl");
//! ghl.set_webhooks(Some(GhlWebhooks::new(url, key)))?;
//! // … API calls: ContactCreate, ContactUpdate, … go to the engine …
//! ghl.webhooks_idle().await;
//! let sent = ghl.webhooks_sent();
//! # let _ = sent;
//! # Ok(()) }
//! ```

mod common;
pub mod ghl;
pub mod oauth;
pub mod stickycards;
mod validate;

pub use common::{Draws, Fault, LoggedRequest, RateLimit, SentWebhook, WebhookDelivery};
pub use ghl::{GhlConfig, GhlSandbox, GhlWebhooks};
pub use oauth::{Grants, OAuth, OAuthConfig};
pub use stickycards::{
    StickyCardsConfig, StickyCardsSandbox, StickyCardsWebhookFormat, StickyCardsWebhooks,
};
