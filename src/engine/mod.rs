//! The pure interpreter: a decoded payload in, a plan out. No I/O here.

pub mod decode;
pub mod filters;
pub mod native;
pub mod plan;
pub mod program;
pub mod scope;
pub mod template;
