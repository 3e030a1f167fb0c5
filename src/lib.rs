//! comethub: an async long-poll publish/subscribe HTTP server.
//!
//! Browsers and curl wait on `/subscribe`; `/publish` answers all of them at once.
//! The wire protocol is described in `docs/protocol.md`.
//!
//! # Layers
//! Each layer uses only the ones below it; a decision is made in one of them.
//!
//! 1. The binary (`main.rs`) and [`config`]: flags, logging, the runtime.
//! 2. [`server`]: the reactors, the connections' lifecycle, shutdown;
//!    [`listen`], where connections come from (TCP, Unix sockets, systemd);
//!    [`tls`], the certificates.
//! 3. [`http`]: the lean HTTP/1.1 parser and writer ([`http::lean`]) and the hyper
//!    adapter ([`http::adapter`], HTTP/1.1 and HTTP/2), both from bytes to the
//!    routes' request model and from their answer model back to bytes.
//! 4. [`routes`]: the route table, one handler per endpoint, the request model
//!    and the access decisions;
//!    [`answer`], the answer model; [`sse`] and [`chat`], two of the handlers'
//!    bodies.
//! 5. [`protocol`] (parameters, ids and cursors, encodings), [`auth`] (who may
//!    subscribe and publish: tokens and channel patterns), [`store`] (the
//!    memory hub or Redis, behind one interface; the Redis store in its
//!    scripts, its link, its shared presence and its operations),
//!    [`presence`] (who is on a channel: leases, receipts; pure) and
//!    [`events`] (the application's events receiver: batches, signatures,
//!    retries), with [`client`], the server's own HTTP requests.
//! 6. [`hub`]: channels, waiters, history, sequence numbers and time; pure.
//!    In rooms: messages and `Since`, channels, polls and their waiter, event
//!    streams, idempotency keys, the memory bound, the sweep.
//!
//! A subscription is a list of channels, one channel a list of one: the
//! store, the routes and SSE have one path for both, and what a client of
//! one channel sees differently (plain ids) is decided in
//! [`protocol::Channels`].
//!
//! Beside them, used from any layer: [`error`] (every refusal and its status),
//! [`stats`] (counters), [`os`] (the open-files limit, handing memory back) and
//! [`shutdown`] (SIGINT/SIGTERM as a future). Only [`store::redis`] (with
//! [`store::connection`], which finds the server, the Sentinel master or the
//! cluster's nodes) speaks to Redis; below the routes, only [`client`] (for
//! the auth webhook and the events receiver) uses hyper.

pub mod answer;
pub mod auth;
pub mod chat;
pub mod client;
pub mod config;
pub mod error;
pub mod events;
pub mod http;
pub mod hub;
pub mod listen;
pub mod os;
pub mod presence;
pub mod protocol;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod stats;
pub mod store;
pub mod tls;

pub use config::Config;
pub use error::Error;
pub use server::run;
