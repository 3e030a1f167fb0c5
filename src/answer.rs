//! The answer model: what every handler returns, whichever HTTP path serves it.
//!
//! An answer is a status, a few headers and a body of shared [`Bytes`]: whole, in
//! parts (a JSON batch around the messages' shared items), or a stream of
//! frames (`/events`). The lean HTTP/1.1 writer and the hyper adapter each turn
//! it into bytes on the wire; neither builds answers of its own.

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderName};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::Error;

/// `X-Message-Id`: the id to echo as the next `since`.
pub const X_MESSAGE_ID: HeaderName = HeaderName::from_static("x-message-id");
/// `X-Channel`: the channel of the message in a raw answer to a request for
/// several channels.
pub const X_CHANNEL: HeaderName = HeaderName::from_static("x-channel");
/// `X-Gap: 1` (or, for several channels, those that missed messages):
/// messages after `since` are no longer retained.
pub const X_GAP: HeaderName = HeaderName::from_static("x-gap");
/// `X-Content-Type-Options: nosniff`, on every answer that carries published
/// data: a browser takes its declared type as it is.
pub const NOSNIFF: (HeaderName, &str) = (header::X_CONTENT_TYPE_OPTIONS, "nosniff");
/// The policy of a raw answer: a document that runs nothing and loads nothing.
pub const SANDBOX: (HeaderName, &str) = (
    header::CONTENT_SECURITY_POLICY,
    "sandbox; default-src 'none'",
);
/// Content-Type of JSON answers.
pub const JSON: &str = "application/json";

/// A body.
#[derive(Debug)]
pub enum Body {
    /// No body.
    Empty,
    /// One buffer.
    Full(Bytes),
    /// Buffers sent one after another (written vectored on the lean path).
    Parts(Vec<Bytes>),
    /// Frames as they come, until the stream ends (`/events`).
    Stream(Events),
}

/// An event stream's frames.
#[derive(Debug)]
pub enum Events {
    /// Made by a task, queued until the sender is dropped.
    Queue(mpsc::Receiver<Bytes>),
    /// Made as they are asked for, by whoever writes them (one channel).
    Live(Box<crate::sse::Live>),
}

impl Events {
    /// The next frame, or `None` when the stream is over.
    pub async fn next(&mut self) -> Option<Bytes> {
        match self {
            Events::Queue(rx) => rx.recv().await,
            Events::Live(live) => live.next().await,
        }
    }

    /// Resolves once the writer of a live stream has fallen too far behind
    /// (a queue's own task sees to that itself).
    pub async fn lagging(&self) {
        match self {
            Events::Queue(_) => std::future::pending().await,
            Events::Live(live) => live.lagging().await,
        }
    }

    /// The frames as a queue that a task of their own fills: for a writer
    /// that polls rather than awaits (hyper's body).
    pub fn into_queue(self) -> mpsc::Receiver<Bytes> {
        match self {
            Events::Queue(rx) => rx,
            Events::Live(live) => crate::sse::pump(*live),
        }
    }
}

impl Body {
    /// Its length, unless it is a stream.
    pub fn len(&self) -> Option<usize> {
        match self {
            Body::Empty => Some(0),
            Body::Full(b) => Some(b.len()),
            Body::Parts(parts) => Some(parts.iter().map(Bytes::len).sum()),
            Body::Stream(_) => None,
        }
    }

    /// Whether it is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }
}

/// A handler's answer.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// Headers, in order; values are checked where they come from.
    pub headers: Vec<(HeaderName, Bytes)>,
    /// The body.
    pub body: Body,
}

/// Whether two answers' header lists are the same: by address where the
/// values share memory (a fan-out's copies of one id), else by bytes. The
/// writers keep the last head they made and reuse it when this holds.
pub fn same_headers(a: &[(HeaderName, Bytes)], b: &[(HeaderName, Bytes)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((n, v), (name, value))| {
            n == name && ((v.as_ptr() == value.as_ptr() && v.len() == value.len()) || v == value)
        })
}

impl Answer {
    /// An answer with a status and nothing else.
    pub fn status(status: StatusCode) -> Answer {
        Answer {
            status,
            headers: Vec::with_capacity(8),
            body: Body::Empty,
        }
    }

    /// A whole body with its Content-Type.
    pub fn full(status: StatusCode, content_type: Bytes, body: impl Into<Body>) -> Answer {
        Answer::status(status)
            .with(header::CONTENT_TYPE, content_type)
            .body(body)
    }

    /// A one-line JSON body.
    pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
        let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Answer::full(
            status,
            Bytes::from_static(JSON.as_bytes()),
            Bytes::from(body),
        )
    }

    /// A refusal: its status, `{"error":"…"}`, and the headers it calls for.
    pub fn refusal(err: &Error) -> Answer {
        #[derive(Serialize)]
        struct Refusal {
            error: String,
            reason: &'static str,
        }
        let answer = Answer::json(
            err.status(),
            &Refusal {
                error: err.to_string(),
                reason: err.reason().name(),
            },
        );
        match err {
            Error::MethodNotAllowed(allow) => {
                answer.with(header::ALLOW, Bytes::from_static(allow.as_bytes()))
            }
            Error::Unauthorized(_) => {
                answer.with(header::WWW_AUTHENTICATE, Bytes::from_static(b"Bearer"))
            }
            Error::InvalidToken => answer.with(
                header::WWW_AUTHENTICATE,
                Bytes::from_static(b"Bearer error=\"invalid_token\""),
            ),
            err if err.retry_later() => answer.with(header::RETRY_AFTER, Bytes::from_static(b"1")),
            _ => answer,
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: HeaderName, value: Bytes) -> Answer {
        self.headers.push((name, value));
        self
    }

    /// Adds a header whose value is fixed.
    pub fn with_static(self, (name, value): (HeaderName, &'static str)) -> Answer {
        self.with(name, Bytes::from_static(value.as_bytes()))
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Body>) -> Answer {
        self.body = body.into();
        self
    }

    /// Whether it has a header.
    pub fn has(&self, name: &HeaderName) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }

    /// Its body; the rest is dropped.
    pub fn into_body(self) -> Body {
        self.body
    }

    /// Its body's buffers, in order; none for an empty body or a stream.
    pub fn body_parts(&self) -> &[Bytes] {
        match &self.body {
            Body::Full(b) => std::slice::from_ref(b),
            Body::Parts(parts) => parts,
            Body::Empty | Body::Stream(_) => &[],
        }
    }

    /// Whether the status allows a body (and so a Content-Length).
    pub fn has_body(&self) -> bool {
        !(self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
            || self.status.is_informational())
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body::Full(b)
    }
}

impl From<Vec<Bytes>> for Body {
    fn from(parts: Vec<Bytes>) -> Body {
        Body::Parts(parts)
    }
}
