//! The router: which request goes to which handler, and the headers every answer
//! carries (CORS, `Cache-Control: no-store`).
//!
//! | path            | methods            | handler                  |
//! |-----------------|--------------------|--------------------------|
//! | `/subscribe`    | GET                | [`Service::subscribe`]   |
//! | `/publish`      | GET, POST, DELETE  | [`Service::publish`], [`Service::delete`] |
//! | `/events`       | GET                | [`crate::sse`]           |
//! | `/stats`        | GET                | JSON counters            |
//! | `/metrics`      | GET                | Prometheus counters      |
//! | `/channels/C`   | GET                | one channel's state      |
//! | `/`             | GET                | the chat page            |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::Error;
use crate::hub::{Hub, Message, Outcome, Poll, Polled};
use crate::protocol::{
    self, Format, Ids, JsonBatch, JsonMessage, PublishAnswer, PublishForm, Query, Since,
};

/// The body of every answer: a full buffer, or a stream for `/events`.
pub type Body = BoxBody<Bytes, Infallible>;

/// `X-Message-Id`: the id to echo as the next `since`.
pub const X_MESSAGE_ID: HeaderName = HeaderName::from_static("x-message-id");
/// `X-Gap: 1`: messages after `since` are no longer retained.
pub const X_GAP: HeaderName = HeaderName::from_static("x-gap");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// What a long-poll got, before it is turned into an answer.
#[derive(Debug)]
pub struct LongPoll {
    /// The channel polled.
    pub channel: String,
    /// How the answer is encoded.
    pub format: Format,
    /// The messages, or where to poll from next.
    pub polled: Polled,
}

impl LongPoll {
    /// The answer (without the headers [`Service::finish`] adds).
    pub fn render(&self) -> Response<Body> {
        match &self.polled {
            Polled::Messages { messages, gap } => {
                answer(&self.channel, self.format, messages, *gap)
            }
            Polled::Empty { last_id, gap } => no_content(last_id.clone(), *gap),
        }
    }
}

/// Handles every request; one is shared by all connections.
#[derive(Debug)]
pub struct Service {
    hub: Arc<Hub>,
    cluster: Option<Arc<Cluster>>,
    timeout: Duration,
    ping: Duration,
    body_timeout: Duration,
    max_message: usize,
    cors_origin: HeaderValue,
    publish_token: Option<String>,
}

impl Service {
    /// A service over `hub` (and, in cluster mode, Redis) with the limits in `config`.
    pub fn new(hub: Arc<Hub>, cluster: Option<Arc<Cluster>>, config: &Config) -> Service {
        Service {
            hub,
            cluster,
            timeout: config.timeout(),
            ping: Duration::from_secs(config.ping),
            body_timeout: config.header_timeout(),
            max_message: config.max_message,
            cors_origin: HeaderValue::from_str(&config.cors_origin)
                .unwrap_or(HeaderValue::from_static("*")),
            publish_token: config.publish_token.clone(),
        }
    }

    /// The hub behind this service.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Routes one request and adds the headers every answer carries.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        Ok(self.finish(self.route(req).await))
    }

    /// Turns a handler's result into the answer, with the headers every answer carries.
    pub fn finish(&self, result: Result<Response<Body>, Error>) -> Response<Body> {
        let mut response = match result {
            Ok(response) => response,
            Err(err) => self.refuse(err),
        };
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.cors_origin.clone(),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("X-Message-Id, X-Gap"),
        );
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, Error> {
        let path = req.uri().path();
        let allow = match path {
            "/subscribe" | "/events" | "/stats" | "/metrics" | "/" => "GET, OPTIONS",
            "/publish" => "GET, POST, DELETE, OPTIONS",
            p if p.starts_with("/channels/") => "GET, OPTIONS",
            _ => return Err(Error::NotFound),
        };
        let method = req.method().clone();
        match (method, path) {
            (Method::OPTIONS, _) => Ok(preflight(allow)),
            (Method::GET, "/subscribe") => self.subscribe(req).await,
            (Method::GET, "/events") => self.events(&req).await,
            // Boxed: a waiting subscriber's task is sized by the largest branch,
            // and publishing (with its body read) is the largest.
            (Method::GET | Method::POST, "/publish") => Box::pin(self.publish(req)).await,
            (Method::DELETE, "/publish") => self.delete(&req).await,
            (Method::GET, "/stats") => Ok(json(StatusCode::OK, &self.snapshot())),
            (Method::GET, "/metrics") => Ok(full(
                StatusCode::OK,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                self.snapshot().to_prometheus().into(),
            )),
            (Method::GET, "/") => Ok(crate::chat::page()),
            (Method::GET, p) if p.starts_with("/channels/") => {
                let name = protocol::channel_name(Some(&p["/channels/".len()..]))?;
                let info = match &self.cluster {
                    Some(cluster) => cluster.channel_info(name).await?,
                    None => self.hub.channel_info(name),
                };
                Ok(json(StatusCode::OK, &info))
            }
            _ => Err(Error::MethodNotAllowed(allow)),
        }
    }

    /// Answers a refusal with its status and a one-line JSON body.
    fn refuse(&self, err: Error) -> Response<Body> {
        if matches!(err, Error::Busy(_) | Error::StoreUnavailable) {
            warn!(reason = err.reason(), %err, "limit reached");
        } else {
            debug!(reason = err.reason(), %err, "refused");
        }
        self.hub.counters.refused(err.reason());
        let mut response = error_response(&err);
        match err {
            Error::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Error::Busy(_) | Error::ShuttingDown | Error::StoreUnavailable => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Error::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }

    /// `GET /subscribe`: answers at once from the history, or waits for the next
    /// message, the timeout, deletion or shutdown.
    pub async fn subscribe(&self, req: Request<Incoming>) -> Result<Response<Body>, Error> {
        Ok(self.long_poll(req)?.await?.render())
    }

    /// `GET /subscribe` split in two, shared with [`crate::lean`]: the request
    /// is parsed (and let go) now; the future only waits. It holds only what it
    /// needs, since every parked subscriber keeps one.
    pub fn long_poll<B>(
        &self,
        req: Request<B>,
    ) -> Result<impl Future<Output = Result<LongPoll, Error>> + Send + '_, Error> {
        let query = Query::parse(req.uri().query())?;
        let channel = protocol::channel_name(query.channel.as_deref())?.to_owned();
        let since = since(&query, &req, self.hub.ids())?;
        let timeout = protocol::timeout(query.timeout.as_deref(), self.timeout)?;
        let format = Format::parse(query.format.as_deref())?;
        let limit = if format == Format::Json {
            usize::MAX
        } else {
            1
        };
        Ok(async move {
            let polled = match &self.cluster {
                // Boxed: its Redis calls would otherwise size every waiting task.
                Some(cluster) => Box::pin(cluster.poll(&channel, since, limit, timeout)).await?,
                None => self.poll(&channel, since, limit, timeout).await?,
            };
            Ok(LongPoll {
                channel,
                format,
                polled,
            })
        })
    }

    /// A long-poll on the in-memory hub.
    async fn poll(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
        timeout: Duration,
    ) -> Result<Polled, Error> {
        let waiter = match self.hub.poll(channel, since, limit)? {
            Poll::Ready { messages, gap } => return Ok(Polled::Messages { messages, gap }),
            Poll::Wait(waiter) => waiter,
        };
        let gap = waiter.gap;
        match waiter.wait(timeout).await {
            Outcome::Message(m) => Ok(Polled::Messages {
                messages: vec![m],
                gap,
            }),
            Outcome::Timeout(last_id) | Outcome::Shutdown(last_id) => {
                Ok(Polled::Empty { last_id, gap })
            }
            Outcome::Reset => Ok(Polled::Empty {
                last_id: self.hub.last_id(channel),
                gap,
            }),
            Outcome::Deleted => Err(Error::Gone),
        }
    }

    /// `GET /events`: an event stream from the hub, or in cluster mode from Redis.
    async fn events(&self, req: &Request<Incoming>) -> Result<Response<Body>, Error> {
        let (channel, since) = crate::sse::request(req, &self.hub)?;
        let stream = match &self.cluster {
            Some(cluster) => cluster.stream(&channel, since).await?,
            None => self.hub.stream(&channel, since)?,
        };
        Ok(crate::sse::respond(stream, self.ping))
    }

    /// `/stats` and `/metrics`: the hub's counters and, in cluster mode, the link.
    fn snapshot(&self) -> crate::stats::Snapshot {
        let mut snapshot = self.hub.snapshot();
        snapshot.redis = self.cluster.as_ref().map(|c| c.link_state());
        snapshot
    }

    /// `GET|POST /publish`: publishes one message and says how many got it.
    pub async fn publish<B>(&self, req: Request<B>) -> Result<Response<Body>, Error>
    where
        B: HttpBody<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.authorize(&req)?;
        let query = Query::parse(req.uri().query())?;
        let channel = protocol::channel_name(query.channel.as_deref())?.to_owned();
        let text = HeaderValue::from_static(protocol::TEXT_PLAIN);
        let from_query =
            |message: Option<String>| message.map(Bytes::from).ok_or(Error::MissingMessage);
        let (data, content_type) = if req.method() == Method::GET {
            (from_query(query.message)?, text)
        } else {
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            let is_form = content_type.as_ref().is_some_and(|ct| {
                ct.as_bytes()
                    .to_ascii_lowercase()
                    .starts_with(b"application/x-www-form-urlencoded")
            });
            let limit = if is_form {
                form_limit(self.max_message)
            } else {
                self.max_message
            };
            let body = self.read_body(req, limit).await?;
            if is_form {
                let form: PublishForm = serde_urlencoded::from_bytes(&body)
                    .map_err(|e| Error::BadQuery(e.to_string()))?;
                let message = form
                    .message
                    .or(query.message)
                    .ok_or(Error::MissingMessage)?;
                (Bytes::from(message), text)
            } else if body.is_empty() {
                (from_query(query.message)?, text)
            } else {
                let ct =
                    content_type.unwrap_or(HeaderValue::from_static("application/octet-stream"));
                (body, ct)
            }
        };
        if data.len() > self.max_message {
            return Err(Error::TooLarge(self.max_message));
        }
        let (id_header, subscribers) = match &self.cluster {
            Some(cluster) => cluster.publish(&channel, data, content_type).await?,
            None => {
                let (message, n) = self.hub.publish(&channel, data, content_type)?;
                (message.id.clone(), n)
            }
        };
        let id = id_header.to_str().unwrap_or_default();
        let mut response = json(
            StatusCode::OK,
            &PublishAnswer {
                id,
                channel: &channel,
                subscribers,
            },
        );
        response
            .headers_mut()
            .insert(X_MESSAGE_ID, id_header.clone());
        Ok(response)
    }

    /// `DELETE /publish`: drops a channel; its waiting subscribers get 410.
    pub async fn delete(&self, req: &Request<Incoming>) -> Result<Response<Body>, Error> {
        self.authorize(req)?;
        let query = Query::parse(req.uri().query())?;
        let channel = protocol::channel_name(query.channel.as_deref())?;
        #[derive(Serialize)]
        struct Deleted<'a> {
            channel: &'a str,
            deleted: bool,
        }
        let deleted = match &self.cluster {
            Some(cluster) => cluster.delete(channel).await?,
            None => self.hub.delete(channel),
        };
        Ok(json(StatusCode::OK, &Deleted { channel, deleted }))
    }

    fn authorize<B>(&self, req: &Request<B>) -> Result<(), Error> {
        let Some(token) = &self.publish_token else {
            return Ok(());
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if constant_time_eq(given, token.as_bytes()) {
            Ok(())
        } else {
            Err(Error::Unauthorized)
        }
    }

    async fn read_body<B>(&self, req: Request<B>, limit: usize) -> Result<Bytes, Error>
    where
        B: HttpBody<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Error::TooLarge(self.max_message));
        }
        let body = Limited::new(req.into_body(), limit);
        match tokio::time::timeout(self.body_timeout, body.collect()).await {
            Err(_) => Err(Error::BodyTimeout),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                Err(Error::TooLarge(self.max_message))
            }
            Ok(Err(_)) => Err(Error::BodyRead),
        }
    }
}

/// Reads `since`, or the `Last-Event-ID` header when the query has none.
pub fn since<B>(query: &Query, req: &Request<B>, ids: &Ids) -> Result<Since, Error> {
    let header = match req.headers().get(LAST_EVENT_ID) {
        Some(v) => Some(v.to_str().map_err(|_| Error::BadSince)?),
        None => None,
    };
    ids.parse_since(query.since.as_deref().or(header))
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A long-poll answer for `messages` (at least one).
fn answer(channel: &str, format: Format, messages: &[Arc<Message>], gap: bool) -> Response<Body> {
    let (first, last) = match (messages.first(), messages.last()) {
        (Some(first), Some(last)) => (first, last),
        _ => return error_response(&Error::NotFound),
    };
    let mut response = match format {
        Format::Raw => {
            let mut r = full(
                StatusCode::OK,
                first.content_type.clone(),
                first.data.clone(),
            );
            r.headers_mut().insert(X_MESSAGE_ID, first.id.clone());
            r
        }
        Format::Json => {
            let last_id = last.id.to_str().unwrap_or_default();
            let messages = messages
                .iter()
                .map(|m| {
                    let ct = m.content_type.to_str().unwrap_or_default();
                    JsonMessage::new(m.id.to_str().unwrap_or_default(), &m.data, ct)
                })
                .collect();
            let mut r = json(
                StatusCode::OK,
                &JsonBatch {
                    channel,
                    messages,
                    last_id,
                    gap,
                },
            );
            r.headers_mut().insert(X_MESSAGE_ID, last.id.clone());
            r
        }
    };
    if gap {
        response
            .headers_mut()
            .insert(X_GAP, HeaderValue::from_static("1"));
    }
    response
}

fn no_content(last_id: HeaderValue, gap: bool) -> Response<Body> {
    let mut response = full(
        StatusCode::NO_CONTENT,
        HeaderValue::from_static("text/plain"),
        Bytes::new(),
    );
    response.headers_mut().remove(header::CONTENT_TYPE);
    response.headers_mut().insert(X_MESSAGE_ID, last_id);
    if gap {
        response
            .headers_mut()
            .insert(X_GAP, HeaderValue::from_static("1"));
    }
    response
}

fn preflight(allow: &'static str) -> Response<Body> {
    let mut response = full(
        StatusCode::NO_CONTENT,
        HeaderValue::from_static("text/plain"),
        Bytes::new(),
    );
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(allow),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, Last-Event-ID, Cache-Control"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

/// The largest form body a publish of `max_message` bytes may take: a form
/// encodes each byte in up to three.
pub fn form_limit(max_message: usize) -> usize {
    max_message * 3 + 1024
}

/// A response with a complete body.
pub fn full(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// A response with a one-line JSON body.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    full(status, JSON, body.into())
}

/// `{"error":"…"}` with the refusal's status.
pub fn error_response(err: &Error) -> Response<Body> {
    #[derive(Serialize)]
    struct Refusal {
        error: String,
    }
    json(
        err.status(),
        &Refusal {
            error: err.to_string(),
        },
    )
}
