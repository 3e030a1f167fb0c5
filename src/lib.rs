//! comethub: an async long-poll publish/subscribe HTTP server.
//!
//! Browsers and curl wait on `/subscribe`; `/publish` answers all of them at once.
//! The wire protocol is described in `docs/protocol.md`.
//!
//! # Layout
//! - [`config`]: command-line flags and their defaults.
//! - [`server`]: binds the listener, accepts connections, serves HTTP/1 and shuts down.
//! - [`lean`]: answers plain long-polls and publishes without hyper; hands the rest to it.
//! - [`service`]: the router: which request goes to which handler.
//! - [`sse`]: `/events`, the Server-Sent Events stream.
//! - [`chat`]: `/`, the chat page.
//! - [`protocol`]: request parameters, message ids and JSON answers.
//! - [`hub`]: the channels, their history and their waiting subscribers.
//! - [`cluster`]: `--redis`: the history on Redis Streams, shared by several instances.
//! - [`stats`]: counters behind `/stats` and `/metrics`.
//! - [`error`]: every refusal the server can answer, with its status.
//! - [`os`]: the open-files limit, and handing freed memory back.
//! - [`shutdown`]: SIGINT/SIGTERM as a future.

pub mod chat;
pub mod cluster;
pub mod config;
pub mod error;
pub mod hub;
pub mod lean;
pub mod os;
pub mod protocol;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod sse;
pub mod stats;

pub use config::Config;
pub use error::Error;
pub use hub::Hub;
pub use server::run;
