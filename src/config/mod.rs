//! Mapping sets: their files, loading, validation and diagnostics.

pub mod diagnostic;
pub mod model;
pub mod node;
