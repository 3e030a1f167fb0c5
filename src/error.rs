//! Every refusal the server answers, with its HTTP status, one-line message and
//! the reason it is counted under in `/metrics`.

use std::fmt;

use http::StatusCode;

use crate::hub::Refused;

/// A request the server refuses. Each maps to one status and a short message
/// that goes out as `{"error":"…","reason":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The channel name is empty, too long or has a character outside `[A-Za-z0-9_.:@-]`.
    BadChannel,
    /// `since` / `Last-Event-ID` is not `oldest` nor a message id.
    BadSince,
    /// A request for several channels was given a `since` that is not
    /// `oldest` nor a composite cursor (`CHANNEL~ID,…`).
    BadCursor,
    /// A request names more channels than `--max-channels-per-request`
    /// (the limit).
    TooManyChannels(usize),
    /// A request names the same channel twice.
    DuplicateChannel,
    /// `timeout` is not a non-negative number of seconds.
    BadTimeout,
    /// `format` is not `json` nor `raw`.
    BadFormat,
    /// The query string or form body could not be decoded.
    BadQuery(String),
    /// A publish carried no message.
    MissingMessage,
    /// A publish's Content-Type is longer than any real one (the limit, in bytes).
    BadContentType(usize),
    /// A token the request needs is missing or wrong; carries what it is for
    /// (`publishing`, `this endpoint`).
    Unauthorized(&'static str),
    /// The request needs a valid token (JWT) and has none, or a bad or
    /// expired one.
    InvalidToken,
    /// The token is valid but does not allow this on this channel.
    Forbidden,
    /// A publish or delete on a listener that takes none (`--publish-on`).
    ReadOnlyListener,
    /// The auth webhook did not answer, or not with an answer.
    AuthUnavailable,
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
    /// A limit on subscribers or channels was reached.
    Busy(&'static str),
    /// `--max-connections` was reached; the connection is answered and closed.
    ConnectionLimit,
    /// The server is shutting down.
    ShuttingDown,
    /// The channel was deleted while the subscriber waited.
    Gone,
    /// Cluster mode: Redis cannot be reached just now.
    StoreUnavailable,
    /// An `Idempotency-Key` that is empty, too long (the limit, in bytes) or
    /// has a byte outside visible ASCII, or two different ones in a request.
    BadIdempotencyKey(usize),
    /// An `Idempotency-Key` used within its window for another message on
    /// the channel (another body or type).
    KeyReused,
    /// `--redis-replicas`: the message was stored, but fewer replicas than
    /// asked confirmed it in time, so a failover may lose it.
    NotReplicated,
    /// A publish or delete on a presence channel (`$presence:C`): only the
    /// server writes there.
    SystemChannel,
    /// `/channels/C/presence` on a channel that keeps no presence.
    NoPresence,
    /// A publish on several channels at once on a Redis Cluster, where each
    /// channel lives in its own hash slot.
    SeveralOnCluster,
}

impl Error {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadChannel
            | Error::BadSince
            | Error::BadCursor
            | Error::TooManyChannels(_)
            | Error::DuplicateChannel
            | Error::BadTimeout
            | Error::BadFormat
            | Error::BadQuery(_)
            | Error::MissingMessage
            | Error::BadContentType(_)
            | Error::BadIdempotencyKey(_)
            | Error::SeveralOnCluster
            | Error::BodyRead => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) | Error::InvalidToken => StatusCode::UNAUTHORIZED,
            Error::Forbidden | Error::ReadOnlyListener | Error::SystemChannel => {
                StatusCode::FORBIDDEN
            }
            Error::NotFound | Error::NoPresence => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::Busy(_)
            | Error::ConnectionLimit
            | Error::ShuttingDown
            | Error::StoreUnavailable
            | Error::NotReplicated
            | Error::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::Gone => StatusCode::GONE,
            Error::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The reason it is counted under.
    pub fn reason(&self) -> Reason {
        match self {
            Error::BadChannel => Reason::BadChannel,
            Error::BadSince | Error::BadCursor => Reason::BadSince,
            Error::DuplicateChannel => Reason::BadChannel,
            Error::TooManyChannels(_) => Reason::TooManyChannels,
            Error::BadTimeout => Reason::BadTimeout,
            Error::BadFormat => Reason::BadFormat,
            Error::BadQuery(_) => Reason::BadQuery,
            Error::MissingMessage => Reason::MissingMessage,
            Error::BadContentType(_) => Reason::BadContentType,
            Error::Unauthorized(_) => Reason::Unauthorized,
            Error::InvalidToken => Reason::InvalidToken,
            Error::Forbidden | Error::ReadOnlyListener | Error::SystemChannel => Reason::Forbidden,
            Error::AuthUnavailable => Reason::AuthUnavailable,
            Error::NotFound | Error::NoPresence => Reason::NotFound,
            Error::MethodNotAllowed(_) => Reason::MethodNotAllowed,
            Error::TooLarge(_) => Reason::TooLarge,
            Error::BodyTimeout => Reason::BodyTimeout,
            Error::BodyRead => Reason::BodyRead,
            Error::Busy(_) => Reason::Busy,
            Error::ConnectionLimit => Reason::ConnectionLimit,
            Error::ShuttingDown => Reason::ShuttingDown,
            Error::Gone => Reason::Gone,
            Error::StoreUnavailable => Reason::StoreUnavailable,
            Error::BadIdempotencyKey(_) => Reason::BadIdempotencyKey,
            Error::NotReplicated => Reason::NotReplicated,
            Error::KeyReused => Reason::KeyReused,
            Error::SeveralOnCluster => Reason::TooManyChannels,
        }
    }

    /// Whether it says "try again shortly" (`Retry-After`).
    pub fn retry_later(&self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
    }
}

impl From<Refused> for Error {
    fn from(refused: Refused) -> Error {
        match refused {
            Refused::Channels => Error::Busy("channels"),
            Refused::Subscribers => Error::Busy("subscribers"),
            Refused::Memory => Error::Busy("memory"),
            Refused::Closed => Error::ShuttingDown,
        }
    }
}

/// What a refusal is counted under, the `reason` label in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// See [`Error::BadChannel`].
    BadChannel,
    /// See [`Error::BadSince`].
    BadSince,
    /// See [`Error::BadTimeout`].
    BadTimeout,
    /// See [`Error::BadFormat`].
    BadFormat,
    /// See [`Error::BadQuery`].
    BadQuery,
    /// See [`Error::MissingMessage`].
    MissingMessage,
    /// See [`Error::BadContentType`].
    BadContentType,
    /// See [`Error::Unauthorized`].
    Unauthorized,
    /// See [`Error::InvalidToken`].
    InvalidToken,
    /// See [`Error::Forbidden`].
    Forbidden,
    /// See [`Error::AuthUnavailable`].
    AuthUnavailable,
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::MethodNotAllowed`].
    MethodNotAllowed,
    /// See [`Error::TooLarge`].
    TooLarge,
    /// See [`Error::BodyTimeout`].
    BodyTimeout,
    /// See [`Error::BodyRead`].
    BodyRead,
    /// See [`Error::Busy`].
    Busy,
    /// See [`Error::ShuttingDown`].
    ShuttingDown,
    /// See [`Error::ConnectionLimit`].
    ConnectionLimit,
    /// See [`Error::Gone`].
    Gone,
    /// See [`Error::StoreUnavailable`].
    StoreUnavailable,
    /// See [`Error::TooManyChannels`].
    TooManyChannels,
    /// See [`Error::BadIdempotencyKey`].
    BadIdempotencyKey,
    /// See [`Error::NotReplicated`].
    NotReplicated,
    /// See [`Error::KeyReused`].
    KeyReused,
}

impl Reason {
    /// Every reason, in the order of their counters.
    pub const ALL: [Reason; 25] = [
        Reason::BadChannel,
        Reason::BadSince,
        Reason::BadTimeout,
        Reason::BadFormat,
        Reason::BadQuery,
        Reason::MissingMessage,
        Reason::BadContentType,
        Reason::Unauthorized,
        Reason::InvalidToken,
        Reason::Forbidden,
        Reason::AuthUnavailable,
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::TooLarge,
        Reason::BodyTimeout,
        Reason::BodyRead,
        Reason::Busy,
        Reason::ShuttingDown,
        Reason::ConnectionLimit,
        Reason::Gone,
        Reason::StoreUnavailable,
        Reason::TooManyChannels,
        Reason::BadIdempotencyKey,
        Reason::NotReplicated,
        Reason::KeyReused,
    ];

    /// Its label.
    pub fn name(self) -> &'static str {
        match self {
            Reason::BadChannel => "bad_channel",
            Reason::BadSince => "bad_since",
            Reason::BadTimeout => "bad_timeout",
            Reason::BadFormat => "bad_format",
            Reason::BadQuery => "bad_query",
            Reason::MissingMessage => "missing_message",
            Reason::BadContentType => "bad_content_type",
            Reason::Unauthorized => "unauthorized",
            Reason::InvalidToken => "invalid_token",
            Reason::Forbidden => "forbidden",
            Reason::AuthUnavailable => "auth_unavailable",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::TooLarge => "too_large",
            Reason::BodyTimeout => "body_timeout",
            Reason::BodyRead => "body_read",
            Reason::Busy => "busy",
            Reason::ShuttingDown => "shutting_down",
            Reason::ConnectionLimit => "connection_limit",
            Reason::Gone => "gone",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::TooManyChannels => "too_many_channels",
            Reason::BadIdempotencyKey => "bad_idempotency_key",
            Reason::NotReplicated => "not_replicated",
            Reason::KeyReused => "idempotency_key_reused",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadChannel => {
                f.write_str("bad channel name: use 1-128 characters of A-Z a-z 0-9 _ . : @ - (or $presence: and such a name)")
            }
            Error::BadSince => f.write_str("bad since: use a message id or 'oldest'"),
            Error::BadCursor => f.write_str(
                "bad since: several channels resume from the cursor their last answer gave \
                 (CHANNEL~ID,...) or 'oldest'",
            ),
            Error::TooManyChannels(limit) => {
                write!(f, "too many channels: a request may name at most {limit}")
            }
            Error::DuplicateChannel => f.write_str("a channel is named twice"),
            Error::BadTimeout => f.write_str("bad timeout: use a non-negative number of seconds"),
            Error::BadFormat => f.write_str("bad format: use 'json' or 'raw'"),
            Error::BadQuery(why) => write!(f, "bad query: {why}"),
            Error::MissingMessage => f.write_str("missing message"),
            Error::BadContentType(limit) => {
                write!(f, "content type too long: at most {limit} bytes")
            }
            Error::Unauthorized(what) => write!(f, "{what} needs 'Authorization: Bearer TOKEN'"),
            Error::InvalidToken => f.write_str(
                "a valid token is needed: 'Authorization: Bearer JWT', the token cookie, or ?token=",
            ),
            Error::Forbidden => f.write_str("the token does not allow this on this channel"),
            Error::ReadOnlyListener => {
                f.write_str("publishing is not taken on this address: use the one --publish-on names")
            }
            Error::AuthUnavailable => {
                f.write_str("the auth service did not answer: try again later")
            }
            Error::NotFound => f.write_str("not found"),
            Error::MethodNotAllowed(allow) => write!(f, "method not allowed: use {allow}"),
            Error::TooLarge(limit) => write!(f, "message too large: the limit is {limit} bytes"),
            Error::BodyTimeout => f.write_str("request body too slow"),
            Error::BodyRead => f.write_str("request body could not be read"),
            Error::Busy("memory") => {
                f.write_str("memory bound reached (--max-memory): try again later")
            }
            Error::Busy(what) => write!(f, "too many {what}: try again later"),
            Error::ConnectionLimit => f.write_str("too many connections: try again later"),
            Error::ShuttingDown => f.write_str("server is shutting down"),
            Error::Gone => f.write_str("channel deleted"),
            Error::StoreUnavailable => {
                f.write_str("message store (redis) unavailable: try again later")
            }
            Error::BadIdempotencyKey(limit) => write!(
                f,
                "bad idempotency key: use 1-{limit} visible ASCII characters, one key per request"
            ),
            Error::KeyReused => f.write_str(
                "this Idempotency-Key was already used for another message on this channel: \
                 a retry must send the same message, a new message needs a new key",
            ),
            Error::NotReplicated => f.write_str(
                "stored, but not confirmed by the replicas --redis-replicas asks for: it may not \
                 survive a failover; retry with the same Idempotency-Key",
            ),
            Error::SystemChannel => {
                f.write_str("$presence: channels are written by the server only")
            }
            Error::SeveralOnCluster => f.write_str(
                "a publish on several channels at once is not available on a Redis Cluster \
                 (each channel is its own hash slot): publish on each",
            ),
            Error::NoPresence => {
                f.write_str("this channel keeps no presence: see --presence")
            }
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_slot_and_label() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.name());
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        assert_eq!(Error::ConnectionLimit.reason(), Reason::ConnectionLimit);
        assert!(Error::ConnectionLimit.retry_later());
        assert_eq!(Error::from(Refused::Closed), Error::ShuttingDown);
    }
}
