//! `GET /`: the chat page, built into the binary.
//!
//! One self-contained HTML file (no external assets) that speaks the protocol:
//! long-poll with `format=json` and `since` by default, Server-Sent Events on demand.

use bytes::Bytes;
use http::StatusCode;

use crate::answer::Answer;

/// The page's HTML.
pub const PAGE: &str = include_str!("../static/chat.html");

/// The chat page as an answer.
pub fn page() -> Answer {
    Answer::full(
        StatusCode::OK,
        Bytes::from_static(b"text/html; charset=utf-8"),
        Bytes::from_static(PAGE.as_bytes()),
    )
}
