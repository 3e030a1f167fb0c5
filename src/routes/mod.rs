//! The routes: one request model, one route table, one handler per endpoint.
//!
//! Both HTTP paths (the lean HTTP/1.1 one and hyper's) make two calls per
//! request: they fill the same [`Request`] and ask [`Routes::route`] what it
//! is (the access decisions are made there), read a publish's body within the
//! limit and time the route gives, and then [`Routes::serve`] the route, which
//! asks the auth webhook where it decides, runs the one handler and returns
//! the [`Answer`]. Every answer, and every refusal an HTTP path meets itself
//! ([`Routes::refusal`]), counts and logs refusals and carries the headers
//! every answer carries (CORS, `Cache-Control: no-store`).
//!
//! In rooms: `request` (the request model, [`Route`], the list of paths),
//! `access` (who may subscribe, publish and read the operator's
//! endpoints), and here the table, the handlers and the answers.
//!
//! | path            | methods            | handler                  |
//! |-----------------|--------------------|--------------------------|
//! | `/subscribe`    | GET                | `subscribe`: a long-poll |
//! | `/publish`      | GET, POST, DELETE  | `publish`, `delete`      |
//! | `/events`       | GET                | `events`: an event stream |
//! | `/stats`        | GET                | JSON counters            |
//! | `/metrics`      | GET                | Prometheus counters      |
//! | `/channels/C`   | GET                | one channel's state      |
//! | `/`             | GET                | the chat page            |
//! | `/chat.js`, `/chat.css` | GET        | the chat page's files    |
//! | `/comethub.js`  | GET                | the client library       |
//! | `/health`       | GET                | readiness: can this instance serve? |
//! | `/live`         | GET                | liveness: is the process answering? |

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Method, StatusCode};
use serde::Serialize;
use tracing::{debug, warn};

use crate::answer::{Answer, NOSNIFF, SANDBOX, X_CHANNEL, X_GAP, X_MESSAGE_ID};
use crate::auth::{Action, Credentials, Patterns, Verifier, Webhook};
use crate::chat::Asset;
use crate::error::{Error, Reason};
use crate::events::Kind;
use crate::presence::{Change, Lease, Presence};
use crate::protocol::{self, Channels, Events, Format, Ids, PublishAnswer, Query, Subscribe};
use crate::stats::{Counters, Snapshot};
pub use crate::store::{Clock, Fresh};
use crate::store::{Polled, Store};
use smol_str::SmolStr;

mod access;
mod request;

pub use access::{Admit, SubscribeAuth};
use request::{Endpoint, content_type};
pub use request::{Publish, Request, Route};

/// `Last-Event-ID`, the SSE resume header, also read by long-polls.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// `Idempotency-Key`: a publish's retry with the same key publishes nothing
/// and answers the first one's id.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Idempotent-Replayed: true` on the answer to a retried publish.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What the routes need to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest a long-poll waits.
    pub timeout: Duration,
    /// Silence after which an event stream gets a ping.
    pub ping: Duration,
    /// Time a publish body has to arrive.
    pub body_timeout: Duration,
    /// Largest message.
    pub max_message: usize,
    /// Largest JSON batch, in bytes.
    pub max_batch: usize,
    /// Most channels one subscription may name.
    pub max_channels: usize,
    /// The memory bound (`--max-memory`), for `/stats`.
    pub max_memory: usize,
    /// `Access-Control-Allow-Origin`.
    pub cors_origin: Bytes,
    /// The token publishing needs, if any.
    pub publish_token: Option<String>,
    /// Checks JWTs, when `--jwt-key` is set.
    pub verifier: Option<Arc<Verifier>>,
    /// Who must show what to subscribe (but on the public channels).
    pub subscribe_auth: SubscribeAuth,
    /// The application's auth endpoint, for [`SubscribeAuth::Webhook`].
    pub webhook: Option<Arc<Webhook>>,
    /// Channels anyone may subscribe to.
    pub public_channels: Patterns,
    /// The cookie a token may come in.
    pub jwt_cookie: Option<String>,
    /// The token the operator's endpoints (`/stats`, `/metrics`,
    /// `/channels/C`, deleting) need, if any.
    pub admin_token: Option<String>,
    /// Presence, on the channels `--presence` names.
    pub presence: Option<Arc<Presence>>,
    /// Events to the application (`--events-url`).
    pub events: Option<Arc<crate::events::Events>>,
}

pin_project_lite::pin_project! {
    /// What [`Routes::serve`] returns: a long-poll's wait in place, or any
    /// other answer boxed.
    #[project = ServingProj]
    enum Serving<'a, W> {
        Wait { #[pin] wait: W, routes: &'a Routes },
        Other { other: Pin<Box<dyn Future<Output = Answer> + Send + 'a>> },
    }
}

impl<W: Future<Output = Result<Answer, Error>>> Future for Serving<'_, W> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> TaskPoll<Answer> {
        match self.project() {
            ServingProj::Wait { wait, routes } => wait.poll(cx).map(|r| routes.finish(r)),
            ServingProj::Other { other } => other.as_mut().poll(cx),
        }
    }
}

/// The routes, shared by every connection.
#[derive(Debug)]
pub struct Routes {
    store: Store,
    counters: Arc<Counters>,
    settings: Settings,
    started: tokio::time::Instant,
    warnings: Throttle,
}

/// Lets one warning a second through per refusal reason, and counts the rest.
#[derive(Debug, Default)]
struct Throttle {
    /// Per reason: the second from which the next line may go out.
    next: [AtomicU64; Reason::ALL.len()],
    /// Per reason: lines held back since the last one.
    held: [AtomicU64; Reason::ALL.len()],
}

impl Throttle {
    /// Whether a line for `reason` may go out at `now` (time since start);
    /// if so, how many were held back before it.
    fn allow(&self, reason: Reason, now: Duration) -> Option<u64> {
        let (next, held) = (&self.next[reason as usize], &self.held[reason as usize]);
        let second = now.as_secs();
        let due = next.load(Relaxed);
        if second >= due
            && next
                .compare_exchange(due, second + 1, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(held.swap(0, Relaxed));
        }
        held.fetch_add(1, Relaxed);
        None
    }
}

impl Routes {
    /// Routes over `store`.
    pub fn new(store: Store, counters: Arc<Counters>, settings: Settings) -> Routes {
        Routes {
            store,
            counters,
            settings,
            started: tokio::time::Instant::now(),
            warnings: Throttle::default(),
        }
    }

    /// The store behind the routes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The server's counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    fn presence(&self) -> Option<&Arc<Presence>> {
        self.settings.presence.as_ref()
    }

    /// The background work behind the routes until `stop` turns true: the
    /// store's, telling presence changes to the subscribers and the
    /// application, and sending the events.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) {
        let presence = async {
            match self.presence() {
                Some(presence) => self.tell(presence).await,
                None => std::future::pending().await,
            }
        };
        let events = async {
            match &self.settings.events {
                Some(events) => events.run().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.store.run(stop) => {}
            _ = presence => {}
            _ = events => {}
        }
    }

    /// Tells presence changes as they come (joins at once; leaves, vacated
    /// channels and receipts each second), as every instance sees them: on
    /// `$presence:C` to the subscribers, and to the application.
    async fn tell(&self, presence: &Presence) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let ticked = tokio::select! {
                _ = tick.tick() => true,
                _ = presence.changed() => false,
            };
            if ticked {
                presence.sweep();
            }
            let held = ticked.then(|| presence.held());
            let events = self
                .store
                .share_presence(presence.take(), held.as_deref(), presence.grace())
                .await;
            for event in events {
                self.told(event).await;
            }
        }
    }

    async fn told(&self, event: crate::presence::Event) {
        #[derive(Serialize)]
        struct Told<'a> {
            event: &'static str,
            member: Option<&'a str>,
            time: u64,
        }
        let channel = &event.channel;
        let (kind, member) = match &event.change {
            Change::Occupied => (Some(Kind::ChannelOccupied), None),
            Change::Vacated => (Some(Kind::ChannelVacated), None),
            Change::Joined(m) => (Some(Kind::MemberJoined), Some(m.as_str())),
            Change::Left(m) => (Some(Kind::MemberLeft), Some(m.as_str())),
            Change::Seen(_) => (None, None),
        };
        if let (Some(events), Some(kind)) = (&self.settings.events, kind) {
            events.push(kind, channel, member, None, event.at_ms);
        }
        let data = match &event.change {
            Change::Joined(_) | Change::Left(_) => {
                let told = Told {
                    event: if matches!(event.change, Change::Joined(_)) {
                        "join"
                    } else {
                        "leave"
                    },
                    member,
                    time: event.at_ms,
                };
                let Ok(data) = serde_json::to_vec(&told) else {
                    return;
                };
                data
            }
            // One event names every member whose receipt moved: written
            // straight out, ids without a String each.
            Change::Seen(seen) => {
                let ids = self.store.ids();
                let mut out = Vec::with_capacity(32 + seen.len() * 40);
                out.extend_from_slice(b"{\"event\":\"seen\",\"seen\":{");
                for (i, (m, seq)) in seen.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let plain = m.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
                    if plain {
                        out.push(b'"');
                        out.extend_from_slice(m.as_bytes());
                        out.push(b'"');
                    } else if serde_json::to_writer(&mut out, m.as_str()).is_err() {
                        return;
                    }
                    out.extend_from_slice(b":\"");
                    ids.write(*seq, &mut out);
                    out.push(b'"');
                }
                out.extend_from_slice(b"},\"time\":");
                protocol::push_decimal(&mut out, event.at_ms);
                out.push(b'}');
                out
            }
            Change::Occupied | Change::Vacated => return,
        };
        let on = format!("{}{channel}", crate::presence::PREFIX);
        if let Err(err) = self
            .store
            .publish(&[on.as_str()], None, data.into(), json_type())
            .await
        {
            debug!(%err, channel = %on, "a presence change was not published");
        }
    }

    /// A poll or stream on `channels` enters presence as `member`.
    fn enter(&self, channels: &Channels, member: Option<SmolStr>) -> Option<Box<Lease>> {
        let acked = |since: &protocol::Since| match since {
            protocol::Since::Id(seq) => Some(*seq),
            _ => None,
        };
        self.presence()?.enter(
            channels
                .list()
                .iter()
                .map(|(c, since)| (c.as_str(), acked(since))),
            member,
        )
    }

    /// Time a publish body has to arrive.
    pub fn body_timeout(&self) -> Duration {
        self.settings.body_timeout
    }

    /// The largest body any route reads: a form publish of the largest
    /// message. A larger one is never read.
    pub fn max_body(&self) -> usize {
        protocol::form_limit(self.settings.max_message)
    }

    /// The route table: what `req` asks for, with its parameters checked and
    /// the access decisions made.
    pub fn route(&self, req: &Request) -> Result<Route, Error> {
        let endpoint = Endpoint::at(req.path).ok_or(Error::NotFound)?;
        let (allow, allowed) = endpoint.allow(&req.method);
        if req.method == Method::OPTIONS {
            return Ok(Route::Preflight(allow));
        }
        if !allowed {
            return Err(Error::MethodNotAllowed(allow));
        }
        let query = || Query::parse(req.query);
        let ids = self.store.ids();
        let last_event_id = req.last_event_id;
        Ok(match endpoint {
            Endpoint::Subscribe => {
                let query = query()?;
                let params = query.subscribe(
                    last_event_id,
                    ids,
                    self.settings.timeout,
                    self.settings.max_channels,
                )?;
                let (_, ask) = self.may_subscribe(req, &query, &params.channels)?;
                Route::Subscribe(params, ask)
            }
            Endpoint::Events => {
                let query = query()?;
                let params = query.events(last_event_id, ids, self.settings.max_channels)?;
                let (expires, ask) = self.may_subscribe(req, &query, &params.channels)?;
                Route::Events(params, expires, ask)
            }
            Endpoint::Publish if req.read_only => return Err(Error::ReadOnlyListener),
            Endpoint::Publish if req.method == Method::DELETE => {
                let query = query()?;
                let channel = query.channel()?;
                writable(&channel)?;
                match &self.settings.admin_token {
                    Some(_) => self.admin(req)?,
                    None => self.may_publish(req, &query, std::slice::from_ref(&channel))?,
                }
                Route::Delete(channel)
            }
            Endpoint::Publish => {
                let query = query()?;
                // A list as a subscription names one (`channel=a,b,c`).
                let list = query.channels(None, ids, self.settings.max_channels)?;
                let channels: Vec<String> = list.names().map(str::to_owned).collect();
                channels.iter().try_for_each(|c| writable(c))?;
                self.may_publish(req, &query, &channels)?;
                let body_limit = if protocol::is_form(req.content_type) {
                    self.max_body()
                } else {
                    self.settings.max_message
                };
                let has_body = req.method == Method::POST;
                if has_body && req.content_length.is_some_and(|n| n > body_limit as u64) {
                    return Err(Error::TooLarge(self.settings.max_message));
                }
                Route::Publish(Box::new(Publish {
                    channels,
                    key: query.idempotency_key(req.idempotency_key)?,
                    message: query.message.map(Cow::into_owned),
                    content_type: req.content_type.map(content_type),
                    has_body,
                    body_limit,
                    max_message: self.settings.max_message,
                }))
            }
            Endpoint::Stats => {
                self.admin(req)?;
                Route::Stats
            }
            Endpoint::Metrics => {
                self.admin(req)?;
                Route::Metrics
            }
            Endpoint::Channel(name) => {
                self.admin(req)?;
                Route::Channel(protocol::channel_name(Some(name))?.to_owned())
            }
            Endpoint::Presence(name) => {
                let channel = protocol::channel_name(Some(name))?;
                if !self.presence().is_some_and(|p| p.applies(channel)) {
                    return Err(Error::NoPresence);
                }
                let one = Channels(vec![(channel.into(), protocol::Since::Next)]);
                // The operator's token, or whatever would let the reader
                // subscribe to the channel.
                let operator = self.settings.admin_token.is_some() && self.admin(req).is_ok();
                let admit = match operator {
                    true => None,
                    false => self.may_subscribe(req, &query()?, &one)?.1,
                };
                Route::Presence(one, admit)
            }
            Endpoint::Health => Route::Health,
            Endpoint::Live => Route::Live,
            Endpoint::Page(asset) => Route::Page(asset),
        })
    }

    /// Answers a route, with the headers every answer carries: the one call
    /// into the routes after [`Routes::route`]. `body` is a publish's body,
    /// read by the HTTP path within the limit and time the route gives.
    ///
    /// A parked long-poll is this future, so it holds the long-poll's wait in
    /// place and nothing else; every other answer is made in a boxed future.
    /// `clock` times a long-poll's wait: a connection that keeps a timer
    /// between its requests lends it.
    pub fn serve<'a, C: Clock + 'a>(
        &'a self,
        route: Route,
        body: Bytes,
        clock: C,
    ) -> impl Future<Output = Answer> + Send + 'a {
        match route {
            Route::Subscribe(params, admit) => Serving::Wait {
                wait: self.subscribe(params, admit, clock),
                routes: self,
            },
            other => Serving::Other {
                other: Box::pin(self.answer(other, body)),
            },
        }
    }

    /// Answers any route but a long-poll.
    async fn answer(&self, route: Route, body: Bytes) -> Answer {
        let result = match route {
            Route::Subscribe(params, admit) => self.subscribe(params, admit, Fresh).await,
            Route::Presence(one, admit) => self.presence_of(one, admit).await,
            Route::Preflight(allow) => Ok(preflight(allow)),
            Route::Events(params, expires, ask) => self.events(params, expires, ask).await,
            Route::Publish(publish) => self.publish(*publish, body).await,
            Route::Delete(channel) => self.delete(channel).await,
            Route::Stats => Ok(Answer::json(StatusCode::OK, &self.snapshot())),
            Route::Metrics => Ok(Answer::full(
                StatusCode::OK,
                Bytes::from_static(b"text/plain; version=0.0.4; charset=utf-8"),
                Bytes::from(self.snapshot().to_prometheus()),
            )),
            Route::Channel(channel) => self.channel(channel).await,
            Route::Page(asset) => Ok(asset.answer()),
            Route::Health => Ok(self.health()),
            Route::Live => Ok(Answer::json(StatusCode::OK, &Status { status: "live" })),
        };
        self.finish(result)
    }

    /// The answer to a refusal the HTTP path meets itself (a route refused, a
    /// body too slow, the connection limit), with the headers every answer
    /// carries.
    pub fn refusal(&self, err: &Error) -> Answer {
        let mut answer = self.refuse(err);
        self.carry(&mut answer);
        answer
    }

    /// A refusal or an answer, with the headers every answer carries.
    fn finish(&self, result: Result<Answer, Error>) -> Answer {
        let mut answer = match result {
            Ok(answer) => answer,
            Err(err) => self.refuse(&err),
        };
        self.carry(&mut answer);
        answer
    }

    /// Adds the headers every answer carries: CORS, and `no-store` unless
    /// the answer says how it may be cached.
    fn carry(&self, answer: &mut Answer) {
        answer.headers.push((
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.settings.cors_origin.clone(),
        ));
        answer.headers.push((
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            Bytes::from_static(b"X-Message-Id, X-Gap, X-Channel"),
        ));
        if !answer.has(&header::CACHE_CONTROL) {
            answer
                .headers
                .push((header::CACHE_CONTROL, Bytes::from_static(b"no-store")));
        }
    }

    /// Counts and logs a refusal and makes its answer.
    fn refuse(&self, err: &Error) -> Answer {
        let reason = err.reason().name();
        if err.retry_later() && !matches!(err, Error::ShuttingDown) {
            // At most one line a second per reason: a flood of refusals must
            // not become a flood of log lines.
            if let Some(suppressed) = self.warnings.allow(err.reason(), self.started.elapsed()) {
                warn!(reason, %err, suppressed, "limit reached");
            }
        } else {
            debug!(reason, %err, "refused");
        }
        self.counters.refused(err.reason());
        Answer::refusal(err)
    }

    /// `GET /subscribe`: once the auth webhook (if it decides) allows it,
    /// answers at once from the history, or waits for the next message, the
    /// timeout, deletion or shutdown. Every parked subscriber keeps this
    /// future, so it holds only its parameters and the store's wait.
    #[allow(clippy::manual_async_fn)] // see the block inside
    fn subscribe<'a, C: Clock + 'a>(
        &'a self,
        params: Subscribe,
        admit: Option<Box<Admit>>,
        clock: C,
    ) -> impl Future<Output = Result<Answer, Error>> + Send + 'a {
        // A block, not an `async fn`: those keep their arguments twice.
        async move {
            // Only a subscriber with something to admit, or on a server that
            // keeps presence, has a member or a lease to make.
            let lease = match (&admit, self.presence()) {
                (None, None) => None,
                _ => {
                    let member = self.admitted(admit, &params.channels).await?;
                    self.enter(&params.channels, member)
                }
            };
            let limit = params.limit();
            let answer = self
                .store
                .poll(params.channels.list(), limit, params.timeout, clock)
                .await
                .map(|polled| {
                    let ids = self.store.ids();
                    long_poll_answer(
                        &params.channels,
                        params.format,
                        polled,
                        ids,
                        self.settings.max_batch,
                    )
                });
            if params.format == Format::Json {
                // A batch may have made encodings: they count against the bound.
                self.store.fit();
            }
            drop(lease);
            answer
        }
    }

    /// `GET /events`: once the auth webhook (if it decides) allows it, an
    /// event stream. A stream opened with a token ends when the token does.
    #[allow(clippy::manual_async_fn)] // see the block inside
    fn events(
        &self,
        params: Events,
        expires: Option<u64>,
        admit: Option<Box<Admit>>,
    ) -> impl Future<Output = Result<Answer, Error>> + Send + '_ {
        // A block, not an `async fn`: those keep their arguments twice.
        async move {
            let member = self.admitted(admit, &params.channels).await?;
            let stream = self.store.stream(params.channels.list()).await?;
            let lease = self.enter(&params.channels, member);
            Ok(crate::sse::answer(
                stream,
                params.channels,
                self.store.ids().clone(),
                self.settings.ping,
                expires.map(crate::auth::instant),
                lease,
            ))
        }
    }

    /// `GET /channels/C/presence`: who is on C, and up to which message each
    /// member's own poll acknowledged.
    async fn presence_of(&self, one: Channels, admit: Option<Box<Admit>>) -> Result<Answer, Error> {
        #[derive(Serialize)]
        struct Member<'a> {
            id: &'a str,
            connections: u32,
            since: u64,
            seen: Option<String>,
        }
        #[derive(Serialize)]
        struct Present<'a> {
            channel: &'a str,
            members: Vec<Member<'a>>,
            anonymous: u32,
        }
        self.admitted(admit, &one).await?;
        let channel = one.name(0);
        let presence = self.presence().ok_or(Error::NoPresence)?;
        let local = presence.members(channel);
        let (members, anonymous) = self.store.presence(channel, local).await?;
        let ids = self.store.ids();
        Ok(Answer::json(
            StatusCode::OK,
            &Present {
                channel,
                members: members
                    .iter()
                    .map(|m| Member {
                        id: &m.id,
                        connections: m.connections,
                        since: m.since,
                        seen: (m.seen > 0).then(|| ids.format(m.seen)),
                    })
                    .collect(),
                anonymous,
            },
        ))
    }

    /// `GET|POST /publish`: publishes one message, on one channel or
    /// several at once, and says how many got it.
    async fn publish(&self, publish: Publish, body: Bytes) -> Result<Answer, Error> {
        let (data, content_type) = protocol::published_message(
            publish.message,
            publish.content_type.filter(|_| publish.has_body),
            if publish.has_body { body } else { Bytes::new() },
            self.settings.max_message,
        )?;
        let channels: Vec<&str> = publish.channels.iter().map(String::as_str).collect();
        let published = self
            .store
            .publish(&channels, publish.key.as_deref(), data, content_type)
            .await?;
        let id = std::str::from_utf8(&published.id).unwrap_or_default();
        if !published.replayed {
            Counters::bump(&self.counters.published);
            if let Some(events) = self.settings.events.as_ref().filter(|e| e.publishes()) {
                let now = crate::presence::now_ms();
                for channel in &channels {
                    events.push(Kind::MessagePublished, channel, None, Some(id), now);
                }
            }
        }
        let answer = Answer::json(
            StatusCode::OK,
            &PublishAnswer {
                id,
                channel: &publish.channels.join(","),
                ids: (channels.len() > 1).then(|| channels.iter().map(|&c| (c, id)).collect()),
                subscribers: published.subscribers,
                replayed: published.replayed,
            },
        );
        let answer = answer.with(X_MESSAGE_ID, published.id);
        Ok(match published.replayed {
            true => answer.with(IDEMPOTENT_REPLAYED, Bytes::from_static(b"true")),
            false => answer,
        })
    }

    /// `DELETE /publish`: drops a channel; its waiting subscribers get 410.
    async fn delete(&self, channel: String) -> Result<Answer, Error> {
        #[derive(Serialize)]
        struct Deleted<'a> {
            channel: &'a str,
            deleted: bool,
        }
        let deleted = self.store.delete(&channel).await?;
        Ok(Answer::json(
            StatusCode::OK,
            &Deleted {
                channel: &channel,
                deleted,
            },
        ))
    }

    /// `GET /health`: `200` when this instance can serve, `503` with
    /// `Retry-After` when its store is down or it is shutting down, so a
    /// load balancer sends its clients elsewhere meanwhile. Not counted as a
    /// refusal: probes would drown the real ones.
    fn health(&self) -> Answer {
        #[derive(Serialize)]
        struct Unready {
            status: &'static str,
            reason: &'static str,
        }
        match self.store.serving() {
            Ok(()) => Answer::json(StatusCode::OK, &Status { status: "ready" }),
            Err(reason) => Answer::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &Unready {
                    status: "unavailable",
                    reason,
                },
            )
            .with(header::RETRY_AFTER, Bytes::from_static(b"1")),
        }
    }

    /// `GET /channels/C`.
    async fn channel(&self, channel: String) -> Result<Answer, Error> {
        let state = self.store.channel(&channel).await?;
        let info = protocol::ChannelInfo {
            last_id: state
                .last_id
                .map(|id| String::from_utf8_lossy(&id).into_owned()),
            channel,
            subscribers: state.subscribers,
            messages: state.messages,
        };
        Ok(Answer::json(StatusCode::OK, &info))
    }

    /// `/stats` and `/metrics`.
    fn snapshot(&self) -> Snapshot {
        let gauges = self.store.gauges();
        let c = &self.counters;
        Snapshot {
            connections: c.connections.load(Relaxed),
            waiting: gauges.hub.waiting,
            streams: gauges.hub.streams,
            channels: gauges.hub.channels,
            published: c.published.load(Relaxed),
            delivered: gauges.hub.delivered,
            history_bytes: gauges.hub.history_bytes,
            messages: gauges.hub.messages,
            memory_bytes: gauges.hub.memory_bytes,
            auth_cache_bytes: gauges.hub.outside_bytes,
            max_memory: self.settings.max_memory,
            evicted: gauges.hub.evicted,
            uptime_seconds: self.started.elapsed().as_secs(),
            refused: c.refusals().into_iter().collect(),
            redis: gauges.redis,
            presence_members: self.presence().map(|p| p.member_count()),
            events: self.settings.events.as_ref().map(|e| e.stats()),
        }
    }
}

/// Refuses `channel` if only the server writes there (`$presence:C`).
fn writable(channel: &str) -> Result<(), Error> {
    match crate::presence::of(channel) {
        Some(_) => Err(Error::SystemChannel),
        None => Ok(()),
    }
}

/// The body of `/health` and `/live` when all is well.
#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// A long-poll's answer: the first message raw (with `X-Channel` on
/// several channels), the messages as a JSON batch of at most `max_batch`
/// bytes, or `204`; `X-Message-Id` and `last_id` say where the reader
/// stands (each channel at its last message in the answer, or where it
/// stood), `X-Gap` and `gap` which channels missed messages.
fn long_poll_answer(
    channels: &Channels,
    format: Format,
    polled: Polled,
    ids: &Ids,
    max_batch: usize,
) -> Answer {
    let Polled {
        from,
        gaps,
        mut messages,
    } = polled;
    if messages.iter().any(|(_, m)| m.payload.channels.is_some()) {
        // Each channel read its own copy of a publish on several of them:
        // one stays, the first in sequence order.
        let mut at = from.clone();
        messages.retain(|(i, m)| channels.advance(&mut at, *i, m.seq, &m.payload));
    }
    let held = match format {
        Format::Raw => messages.len().min(1),
        Format::Json => {
            let items = messages
                .iter()
                .map(|(i, m)| m.payload.json(channels.name(*i)));
            protocol::batch_len(items, max_batch, channels.list().len() - 1)
        }
    };
    messages.truncate(held);
    // Messages are in sequence order: each channel ends at its last one.
    let mut at = from;
    for (i, m) in &messages {
        channels.advance(&mut at, *i, m.seq, &m.payload);
    }
    let last = messages.last().map(|(_, m)| &m.payload);
    let position = channels.position(ids, &at, last);
    let answer = match (format, messages.first()) {
        (_, None) => Answer::status(StatusCode::NO_CONTENT),
        (Format::Raw, Some((i, m))) => {
            let answer = raw_message(m).with_static(NOSNIFF);
            match channels.x_channel(*i) {
                Some(name) => answer.with(X_CHANNEL, name),
                None => answer,
            }
        }
        (Format::Json, Some(_)) => {
            let items = messages
                .iter()
                .map(|(i, m)| m.payload.json(channels.name(*i)));
            let parts = protocol::json_batch(
                &channels.joined(),
                items,
                &position,
                &channels.gap_json(&gaps),
            );
            Answer::full(StatusCode::OK, json_type(), parts).with_static(NOSNIFF)
        }
    };
    let answer = answer.with(X_MESSAGE_ID, position);
    match channels.gap_header(&gaps) {
        Some(gap) => answer.with(X_GAP, gap),
        None => answer,
    }
}

/// A message as a raw answer: its bytes with its Content-Type, shown in
/// place only if a browser would just display it.
fn raw_message(message: &crate::store::Message) -> Answer {
    let content_type = &message.payload.content_type;
    let answer = Answer::full(
        StatusCode::OK,
        content_type.clone(),
        message.payload.data.clone(),
    )
    .with_static(SANDBOX);
    if message.payload.inline {
        answer
    } else {
        answer.with(
            header::CONTENT_DISPOSITION,
            Bytes::from_static(b"attachment"),
        )
    }
}

fn json_type() -> Bytes {
    Bytes::from_static(crate::answer::JSON.as_bytes())
}

fn preflight(allow: &'static str) -> Answer {
    Answer::status(StatusCode::NO_CONTENT)
        .with(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            Bytes::from_static(allow.as_bytes()),
        )
        .with(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            Bytes::from_static(
                b"Authorization, Content-Type, Last-Event-ID, Cache-Control, Idempotency-Key",
            ),
        )
        .with(header::ACCESS_CONTROL_MAX_AGE, Bytes::from_static(b"86400"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_go_out_once_a_second_per_reason_with_the_count_held_back() {
        let throttle = Throttle::default();
        let at = Duration::from_millis;
        assert_eq!(throttle.allow(Reason::Busy, at(10)), Some(0));
        for ms in [20, 500, 999] {
            assert_eq!(throttle.allow(Reason::Busy, at(ms)), None);
        }
        // Another reason has its own allowance.
        assert_eq!(throttle.allow(Reason::ConnectionLimit, at(30)), Some(0));
        assert_eq!(throttle.allow(Reason::Busy, at(1000)), Some(3));
        assert_eq!(throttle.allow(Reason::Busy, at(1001)), None);
        assert_eq!(throttle.allow(Reason::Busy, at(5000)), Some(1));
    }
}
