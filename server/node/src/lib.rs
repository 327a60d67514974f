//! The `meridian` binary: the command line and config, a running node (store, replication and
//! the HTTP API over a plain or TLS listener), `meridian demo`, `meridian cert`,
//! `meridian key`, `meridian repair`, `meridian drain`, `meridian backup`, `meridian restore` and
//! `meridian region`.
//!
//! # Layout
//! - `config`: command line, environment and config file; the one [`Settings`] struct.
//! - `node`: a running node: open, bind, serve until told to stop.
//! - `demo`: `meridian demo`: three regions and the web page's server.
//! - `cert`: `meridian cert`, a development CA and node certificates.
//! - `keys`: `meridian key create`.
//! - `repair`: `meridian repair`, a damaged write-ahead log checked and, when nothing is lost,
//!   rewritten.
//! - `drain`: `meridian drain`, a running node told to drain and stop.
//! - `backup`: `meridian backup` of a running node, and `meridian restore` under a new id.
//! - `region`: `meridian region add|remove|list`, the membership changed through a running node.
//! - `placement`: `meridian placement set|clear|list`, where a collection lives.
//! - `otlp`: exporting request spans to an OTLP collector (`--otlp-endpoint`).
//!
//! The HTTP API is `meridian-http`; TLS, the peer transport and the fault controls are
//! `meridian-net`; the schema compiler is `meridian-schema`.
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod admin;
pub mod backup;
pub mod cert;
pub mod config;
pub mod demo;
pub mod drain;
pub mod keys;
mod node;
pub mod otlp;
pub mod placement;
pub mod region;
pub mod repair;

pub use config::{ServeArgs, Settings};
pub use node::{run, Node};

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a node that says it is serving must already catch the
/// signal (the default action would kill it without a flush).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! { _ = wait(int) => {}, _ = wait(term) => {} }
        tracing::info!("shutting down: finishing in-flight requests");
    }
}
