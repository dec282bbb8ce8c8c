//! The pure interpreter: a decoded payload in, a plan out. No I/O here.

pub mod decode;
pub mod plan;
