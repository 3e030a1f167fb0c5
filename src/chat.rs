//! `GET /`: the chat page, built into the binary.
//!
//! One self-contained HTML file (no external assets) that speaks the protocol:
//! long-poll with `format=json` and `since` by default, Server-Sent Events on demand.

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

use crate::service::{Body, full};

/// The page's HTML.
pub const PAGE: &str = include_str!("../static/chat.html");

/// The chat page as a response.
pub fn page() -> Response<Body> {
    full(
        StatusCode::OK,
        HeaderValue::from_static("text/html; charset=utf-8"),
        Bytes::from_static(PAGE.as_bytes()),
    )
}
