//! The request model both HTTP paths fill, what a request comes to (a
//! [`Route`]), and the one list of the paths served.

use super::*;

/// A request as both HTTP paths hand it over: the parts any route reads,
/// borrowed from the bytes the path read (routing copies what it keeps).
#[derive(Debug, Default)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The path.
    pub path: &'a str,
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// The first `Last-Event-ID`.
    pub last_event_id: Option<&'a [u8]>,
    /// The first `Content-Type`.
    pub content_type: Option<&'a [u8]>,
    /// The first `Authorization`.
    pub authorization: Option<&'a [u8]>,
    /// The first `Cookie`.
    pub cookie: Option<&'a [u8]>,
    /// The first `Idempotency-Key`.
    pub idempotency_key: Option<&'a [u8]>,
    /// The declared body length, if any.
    pub content_length: Option<u64>,
    /// Came on a listener that does not take publishes (`--publish-on`
    /// names others).
    pub read_only: bool,
}

impl<'a> Request<'a> {
    /// A request for `target` (path and query).
    pub fn new(method: Method, target: &'a str) -> Request<'a> {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        Request {
            method,
            path,
            query,
            ..Request::default()
        }
    }

    /// Keeps a header if a route reads it (the first of each).
    pub fn header(&mut self, name: &str, value: &'a [u8]) {
        let is = |n: &HeaderName| name.eq_ignore_ascii_case(n.as_str());
        let slot = if is(&LAST_EVENT_ID) {
            &mut self.last_event_id
        } else if is(&header::CONTENT_TYPE) {
            &mut self.content_type
        } else if is(&header::AUTHORIZATION) {
            &mut self.authorization
        } else if is(&header::COOKIE) {
            &mut self.cookie
        } else if is(&IDEMPOTENCY_KEY) {
            &mut self.idempotency_key
        } else {
            return;
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }
}

/// What a request asks for, its parameters checked.
#[derive(Debug)]
pub enum Route {
    /// `OPTIONS`: a CORS preflight; carries the allowed methods.
    Preflight(&'static str),
    /// `GET /subscribe`, and who the subscriber is or the credentials to ask
    /// the auth webhook with, if either is known.
    Subscribe(Subscribe, Option<Box<Admit>>),
    /// `GET /events`, when the token it was opened with expires (seconds
    /// since the epoch), if one was needed, and who the subscriber is or the
    /// credentials to ask the auth webhook with.
    Events(Events, Option<u64>, Option<Box<Admit>>),
    /// `GET /channels/C/presence` (C as a list of one, as admitting a
    /// reader takes it), and what admitting the reader still needs.
    Presence(Channels, Option<Box<Admit>>),
    /// `GET|POST /publish`.
    Publish(Box<Publish>),
    /// `DELETE /publish`.
    Delete(String),
    /// `GET /stats`.
    Stats,
    /// `GET /metrics`.
    Metrics,
    /// `GET /channels/C`.
    Channel(String),
    /// `GET /health`: readiness.
    Health,
    /// `GET /live`: liveness.
    Live,
    /// `GET /` and the page's files, and the client library.
    Page(&'static Asset),
}

/// What a path is: the one list of the paths served, each with the methods
/// it allows.
#[derive(Debug, Clone, Copy)]
pub(super) enum Endpoint<'a> {
    Subscribe,
    Events,
    Publish,
    Stats,
    Metrics,
    Health,
    Live,
    /// `/channels/C`: the name as it came.
    Channel(&'a str),
    /// `/channels/C/presence`.
    Presence(&'a str),
    Page(&'static Asset),
}

impl<'a> Endpoint<'a> {
    pub(super) fn at(path: &'a str) -> Option<Endpoint<'a>> {
        Some(match path {
            "/subscribe" => Endpoint::Subscribe,
            "/events" => Endpoint::Events,
            "/publish" => Endpoint::Publish,
            "/stats" => Endpoint::Stats,
            "/metrics" => Endpoint::Metrics,
            "/health" => Endpoint::Health,
            "/live" => Endpoint::Live,
            _ => match path.strip_prefix("/channels/") {
                Some(name) => match name.strip_suffix("/presence") {
                    Some(name) => Endpoint::Presence(name),
                    None => Endpoint::Channel(name),
                },
                None => Endpoint::Page(Asset::at(path)?),
            },
        })
    }

    /// The methods allowed, as `Allow` spells them, and whether `method` is
    /// one of them (`OPTIONS` always is). A long-poll or a stream answered
    /// without its body would be a wait for nothing; the other reads answer
    /// HEAD as GET, without the body.
    pub(super) fn allow(self, method: &Method) -> (&'static str, bool) {
        let read = *method == Method::GET || *method == Method::OPTIONS;
        match self {
            Endpoint::Subscribe | Endpoint::Events => ("GET, OPTIONS", read),
            Endpoint::Publish => (
                "GET, POST, DELETE, OPTIONS",
                read || *method == Method::POST || *method == Method::DELETE,
            ),
            _ => ("GET, HEAD, OPTIONS", read || *method == Method::HEAD),
        }
    }
}

/// A publish, before its body is read.
#[derive(Debug)]
pub struct Publish {
    /// The channels, one or several.
    pub(super) channels: Vec<String>,
    pub(super) key: Option<String>,
    pub(super) message: Option<String>,
    pub(super) content_type: Option<Bytes>,
    /// Whether a body is to be read (POST).
    pub has_body: bool,
    /// Most body bytes to read; a larger body is [`Publish::too_large`].
    pub body_limit: usize,
    pub(super) max_message: usize,
}

impl Publish {
    /// The refusal of a body over [`Publish::body_limit`].
    pub fn too_large(&self) -> Error {
        Error::TooLarge(self.max_message)
    }
}

/// A publisher's Content-Type, kept with its message; the common ones without
/// an allocation.
pub(super) fn content_type(value: &[u8]) -> Bytes {
    const COMMON: [&str; 5] = [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/json",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
    ];
    match COMMON.iter().find(|c| c.as_bytes() == value) {
        Some(common) => Bytes::from_static(common.as_bytes()),
        None => Bytes::copy_from_slice(value),
    }
}
