//! herald-ws: the `/ws/events` WebSocket stream over a herald-core bus (SPEC sections 1 to 5).
//!
//! * [`serve`]: a standalone server on a `TcpListener`, with graceful shutdown.
//! * [`EventsService`]: the same endpoints as a hyper service, to mount in an existing hyper
//!   server; with the `axum` feature, `axum_router` does the same for axum.
//! * [`ServerConfig`]: connection limit, handshake timeout, pings, message size limit, lag
//!   policy ([`OnLag`]), how far behind a live client may fall (`max_behind`), write batch
//!   size.
//! * [`Metrics`]: counters, served at `/metrics` in the Prometheus text format.
//!
//! How a request is answered is in [`http`]; how a connection streams events (started,
//! replay, live, lag, ping and close, shutdown) is in `conn.rs`, one function read top to
//! bottom; the WebSocket framing it uses is in `frame.rs`; the query extensions
//! (`events=`, `seq=`, `from=`) are in [`query`].
//!
//! The crate also holds the `herald` binary's simulated node ([`sim`]) and client ([`tail`]).

mod conn;
mod frame;
pub mod http;
pub mod metrics;
pub mod query;
pub mod server;
pub mod sim;
pub mod tail;

#[cfg(feature = "axum")]
pub use server::axum_router;
pub use server::{
    EventsService, MAX_SEND_BUFFER, MIN_SEND_BUFFER, Metrics, OnLag, ServerConfig, serve,
};
