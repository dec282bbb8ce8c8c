//! `mapper`: keeps loyalty platforms and GoHighLevel in sync, driven by YAML.
//!
//! - [`config`]: the mapping files, their loading and `mapper check`'s diagnostics.
//! - [`program`]: the compiled mapping set, what `config` produces and
//!   `engine` runs; neither of those two imports the other.
//! - [`engine`]: the pure interpreter, payload in, plan out.
//! - [`template`]: the template language (minijinja, our filters, the
//!   native fast path) and [`jsonpath`], our one door to JSONPath.
//! - [`app`]: the engine wired and started, for every entry point.

pub mod app;
pub mod cli;
pub mod config;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod jsonpath;
pub mod metrics;
pub mod program;
pub mod sandbox;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod store;
pub mod targets;
pub mod template;
pub mod worker;
