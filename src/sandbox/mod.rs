//! Simulated GHL and Sticky Cards APIs, served over real HTTP on loopback,
//! for the integration tests and the sandbox mode.
