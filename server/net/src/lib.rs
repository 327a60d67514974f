//! The network edge of a Meridian node, below the HTTP API: how it reaches its peers and how
//! connections reach it. Nothing here knows the API's state (`meridian_http::AppState`).
//!
//! # Layout
//! - `transport`: [`HttpTransport`], the HTTP client replication reaches peers with.
//! - `faults`: [`Faults`], links cut and a pause, for demos and tests; the transport obeys
//!   them and the API's `/internal` endpoints set them.
//! - `tls`: HTTPS with rustls (certificates re-read on SIGHUP), the listeners and the
//!   [`tls::ConnInfo`] each connection carries, and TLS and mutual TLS between regions.
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod faults;
pub mod tls;
pub mod transport;

pub use faults::{FaultState, Faults};
pub use transport::HttpTransport;
