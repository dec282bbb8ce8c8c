//! Mapping sets: their files, loading, validation and diagnostics.

pub mod compile;
pub mod diagnostic;
pub mod infer;
pub mod load;
pub mod model;
pub mod node;
pub mod payload_schema;
pub mod types;
