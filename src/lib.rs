//! `mapper`: keeps loyalty platforms and GoHighLevel in sync, driven by YAML.
//!
//! - [`config`]: the mapping files, their loading and `mapper check`'s diagnostics.
//! - [`engine`]: the pure interpreter, payload in, plan out.
//! - [`jsonpath`]: our one door to JSONPath.
//! - [`app`]: the engine wired and started, for every entry point.

pub mod app;
pub mod cli;
pub mod config;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod jsonpath;
pub mod metrics;
pub mod sandbox;
pub mod schema;
pub mod server;
pub mod store;
pub mod targets;
pub mod worker;
