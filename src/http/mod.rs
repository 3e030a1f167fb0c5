//! HTTP: from bytes on a connection to the routes' request model, and from their
//! answer model back to bytes.
//!
//! Every connection starts on [`lean`], a small HTTP/1.1 parser and writer that
//! holds almost nothing while a long-poll waits; what it does not take (event
//! streams, unusual framing) it hands, with the bytes already read, to hyper through [`adapter`].

pub mod adapter;
pub mod lean;
