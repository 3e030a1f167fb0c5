//! Every refusal the server answers, with its HTTP status and one-line message.

use std::fmt;

use hyper::StatusCode;

/// A request the server refuses. Each maps to one status and a short message
/// that goes out as `{"error":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The channel name is empty, too long or has a character outside `[A-Za-z0-9_.:@-]`.
    BadChannel,
    /// `since` / `Last-Event-ID` is not `oldest` nor a message id.
    BadSince,
    /// `timeout` is not a non-negative number of seconds.
    BadTimeout,
    /// `format` is not `json` nor `raw`.
    BadFormat,
    /// The query string or form body could not be decoded.
    BadQuery(String),
    /// A publish carried no message.
    MissingMessage,
    /// The publish token is missing or wrong.
    Unauthorized,
    /// No such path.
    NotFound,
    /// The path exists but not for this method; carries the allowed methods.
    MethodNotAllowed(&'static str),
    /// The message is larger than the limit (in bytes).
    TooLarge(usize),
    /// The request body did not arrive in time.
    BodyTimeout,
    /// The body could not be read (the client broke off).
    BodyRead,
    /// A limit on subscribers, channels or connections was reached.
    Busy(&'static str),
    /// The server is shutting down.
    ShuttingDown,
    /// The channel was deleted while the subscriber waited.
    Gone,
    /// Cluster mode: Redis cannot be reached just now.
    StoreUnavailable,
}

impl Error {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadChannel
            | Error::BadSince
            | Error::BadTimeout
            | Error::BadFormat
            | Error::BadQuery(_)
            | Error::MissingMessage
            | Error::BodyRead => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::Busy(_) | Error::ShuttingDown | Error::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Gone => StatusCode::GONE,
        }
    }

    /// A short name for the refusal, used as the `reason` label in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadChannel => "bad_channel",
            Error::BadSince => "bad_since",
            Error::BadTimeout => "bad_timeout",
            Error::BadFormat => "bad_format",
            Error::BadQuery(_) => "bad_query",
            Error::MissingMessage => "missing_message",
            Error::Unauthorized => "unauthorized",
            Error::NotFound => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::TooLarge(_) => "too_large",
            Error::BodyTimeout => "body_timeout",
            Error::BodyRead => "body_read",
            Error::Busy(_) => "busy",
            Error::ShuttingDown => "shutting_down",
            Error::Gone => "gone",
            Error::StoreUnavailable => "store_unavailable",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadChannel => {
                f.write_str("bad channel name: use 1-128 characters of A-Z a-z 0-9 _ . : @ -")
            }
            Error::BadSince => f.write_str("bad since: use a message id or 'oldest'"),
            Error::BadTimeout => f.write_str("bad timeout: use a non-negative number of seconds"),
            Error::BadFormat => f.write_str("bad format: use 'json' or 'raw'"),
            Error::BadQuery(why) => write!(f, "bad query: {why}"),
            Error::MissingMessage => f.write_str("missing message"),
            Error::Unauthorized => f.write_str("publishing needs 'Authorization: Bearer TOKEN'"),
            Error::NotFound => f.write_str("not found"),
            Error::MethodNotAllowed(allow) => write!(f, "method not allowed: use {allow}"),
            Error::TooLarge(limit) => write!(f, "message too large: the limit is {limit} bytes"),
            Error::BodyTimeout => f.write_str("request body too slow"),
            Error::BodyRead => f.write_str("request body could not be read"),
            Error::Busy(what) => write!(f, "too many {what}: try again later"),
            Error::ShuttingDown => f.write_str("server is shutting down"),
            Error::Gone => f.write_str("channel deleted"),
            Error::StoreUnavailable => {
                f.write_str("message store (redis) unavailable: try again later")
            }
        }
    }
}

impl std::error::Error for Error {}
