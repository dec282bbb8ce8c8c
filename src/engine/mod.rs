//! The pure interpreter: a decoded payload in, a plan out. No I/O here.

pub mod filters;
pub mod decode;
pub mod plan;
pub mod program;
pub mod template;
