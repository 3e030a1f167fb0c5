//! The store: where channels live, behind one interface.
//!
//! [`Store::Memory`] keeps them in this process's [`Hub`]; [`Store::Redis`] keeps
//! them in Redis Streams shared by every instance, with a hub in cache mode as
//! this instance's copy. The routes call the same methods on either and never
//! learn which one they talk to; this module is the only place that tells them
//! apart.

pub mod connection;
pub mod memory;
pub mod redis;

use smol_str::SmolStr;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::error::Error;
use crate::hub::{self, Hub, Limits};
pub use crate::hub::{Clock, Fresh};
use crate::protocol::{Content, Ids, Since};
use crate::stats::RedisLink;

/// A message as the store hands it out.
pub type Message = Arc<hub::Message<Content>>;
/// An open event stream.
pub type Stream = hub::Stream<Content>;

/// One value per channel of a request, held inline for one channel: every
/// parked one-channel subscriber keeps its poll's, and allocates nothing for
/// it.
pub type PerChannel<T> = smallvec::SmallVec<[T; 1]>;

/// What a long-poll got.
#[derive(Debug, Default)]
pub struct Polled {
    /// Per channel, in the order asked: the reader now has, or was told it
    /// missed, every message up to this sequence (beyond what `messages` has).
    pub from: PerChannel<u64>,
    /// Per channel: some messages after its `since` were no longer retained.
    pub gaps: PerChannel<bool>,
    /// Messages, each with its channel's place in the request; in publish
    /// order within each channel, and by sequence across them.
    pub messages: Vec<(usize, Message)>,
}

impl Polled {
    fn new(channels: usize) -> Polled {
        Polled {
            from: smallvec::smallvec![0; channels],
            gaps: smallvec::smallvec![false; channels],
            messages: Vec::new(),
        }
    }

    /// What a poll on the hub read on channel `i`; a cache's miss goes to
    /// `missed`.
    fn start(&mut self, i: usize, start: hub::Start<Content>, missed: &mut Vec<usize>) {
        match start {
            hub::Start::Read {
                from,
                gap,
                messages,
            } => self.read(i, from, gap, messages),
            hub::Start::Miss => missed.push(i),
        }
    }

    /// What channel `i` read: everything up to `from`, and `messages`.
    fn read(&mut self, i: usize, from: u64, gap: bool, messages: Vec<Message>) {
        self.from[i] = from;
        self.gaps[i] |= gap;
        self.messages.extend(messages.into_iter().map(|m| (i, m)));
    }

    /// Orders the messages by sequence: publish order in memory (one
    /// sequence for every channel), time order on Redis (stream ids); one
    /// publish on several channels, by their order in the request.
    fn sorted(mut self) -> Polled {
        if self.from.len() > 1 {
            self.messages.sort_by_key(|(i, m)| (m.seq, *i));
        }
        self
    }
}

/// What a publish did.
#[derive(Debug)]
pub struct Published {
    /// The new message's id.
    pub id: Bytes,
    /// Subscribers (in memory) or instances (on Redis) it was handed to.
    pub subscribers: usize,
    /// Its idempotency key was used within the window: nothing was
    /// published, `id` is the first publish's.
    pub replayed: bool,
}

/// A channel's state, for `/channels/C`.
#[derive(Debug)]
pub struct ChannelState {
    /// This instance's waiting subscribers and streams.
    pub subscribers: usize,
    /// Retained messages.
    pub messages: usize,
    /// The last message's id, if any is known.
    pub last_id: Option<Bytes>,
}

/// The store's gauges, for `/stats`.
#[derive(Debug)]
pub struct Gauges {
    /// The hub's (or the cache's) gauges, with encodings in `history_bytes`.
    pub hub: hub::Snapshot,
    /// On Redis: the link.
    pub redis: Option<RedisLink>,
}

/// The hub's limits a store keeps under `limits`: retained messages stay a
/// little under the memory bound, leaving room for those in flight (bodies
/// being read, a publish being made) and for the allocator's rounding.
fn hub_limits(limits: &Limits) -> Limits {
    Limits {
        max_bytes: limits.max_bytes - limits.max_bytes / 8,
        ..limits.clone()
    }
}

pin_project_lite::pin_project! {
    /// A long-poll under way on either store.
    pub struct StorePoll<'a, T> {
        #[pin]
        state: PollState<'a, T>,
    }
}

pin_project_lite::pin_project! {
    #[project = PollStateProjection]
    enum PollState<'a, T> {
        // Answered (or refused) at once; taken when polled.
        Done { result: Option<Result<Polled, Error>> },
        Memory { #[pin] wait: memory::MemoryWait<T> },
        Redis { poll: BoxedPoll<'a> },
    }
}

/// The Redis store's long-poll.
pub type BoxedPoll<'a> = Pin<Box<dyn Future<Output = Result<Polled, Error>> + Send + 'a>>;

impl<T> std::fmt::Debug for StorePoll<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.state {
            PollState::Done { .. } => "StorePoll::Done",
            PollState::Memory { .. } => "StorePoll::Memory",
            PollState::Redis { .. } => "StorePoll::Redis",
        })
    }
}

impl<'a, T> StorePoll<'a, T> {
    fn done(result: Result<Polled, Error>) -> StorePoll<'a, T> {
        StorePoll {
            state: PollState::Done {
                result: Some(result),
            },
        }
    }
}

impl<T: Future<Output = ()>> Future for StorePoll<'_, T> {
    type Output = Result<Polled, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> TaskPoll<Self::Output> {
        match self.project().state.project() {
            PollStateProjection::Done { result } => match result.take() {
                Some(result) => TaskPoll::Ready(result),
                None => TaskPoll::Pending,
            },
            PollStateProjection::Memory { wait } => wait.poll(cx),
            PollStateProjection::Redis { poll } => poll.as_mut().poll(cx),
        }
    }
}

/// How often expired history is swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Where channels live (a clone is a handle on the same channels).
#[derive(Debug, Clone)]
pub enum Store {
    /// In this process.
    Memory(memory::Memory),
    /// In Redis, shared by several instances.
    Redis(Arc<redis::Redis>),
}

impl Store {
    /// An in-memory store.
    pub fn memory(limits: &Limits) -> Store {
        Store::Memory(memory::Memory::new(limits))
    }

    /// A store on the Redis at `url` (checked now; connected by
    /// [`Store::run`]) whose publishes wait for `replicas` to have them.
    pub fn redis(limits: &Limits, url: &str, replicas: u32) -> Result<Store, String> {
        redis::Redis::new(limits, url, replicas).map(|r| Store::Redis(Arc::new(r)))
    }

    /// How message ids are made and read.
    pub fn ids(&self) -> &Ids {
        match self {
            Store::Memory(m) => m.ids(),
            Store::Redis(_) => &Ids::Stream,
        }
    }

    /// A long-poll on `channels`, each from its own `since`: up to `limit`
    /// messages of each after it, or the next one on any of them, or nothing
    /// by `timeout`. Every parked subscriber holds the future, so it is only
    /// as large as the memory store's wait; Redis's is boxed. `clock` times
    /// the memory store's wait (Redis's times its own).
    pub fn poll<'a, C: Clock + 'a>(
        &'a self,
        channels: &'a [(SmolStr, Since)],
        limit: usize,
        timeout: Duration,
        clock: C,
    ) -> StorePoll<'a, C::Timer> {
        match self {
            Store::Memory(m) => match m.poll(channels, limit, timeout, clock) {
                Ok(memory::Started::Wait(wait)) => StorePoll {
                    state: PollState::Memory { wait },
                },
                Ok(memory::Started::Ready(polled)) => StorePoll::done(Ok(polled)),
                Err(err) => StorePoll::done(Err(err)),
            },
            Store::Redis(r) => StorePoll {
                state: PollState::Redis {
                    poll: Box::pin(r.poll(channels, limit, timeout)),
                },
            },
        }
    }

    /// An event stream on `channels`: the messages after each one's
    /// `since`, then live ones.
    pub async fn stream(&self, channels: &[(SmolStr, Since)]) -> Result<Stream, Error> {
        match self {
            Store::Memory(m) => Ok(m.hub().stream(channels)?),
            Store::Redis(r) => r.stream(channels).await,
        }
    }

    /// Publishes a message on every one of `channels` at once (all or
    /// none, one id); with an idempotency `key` used for the same publish
    /// within the window, publishes nothing and answers the first id.
    pub async fn publish(
        &self,
        channels: &[&str],
        key: Option<&str>,
        data: Bytes,
        content_type: Bytes,
    ) -> Result<Published, Error> {
        match self {
            Store::Memory(m) => m.publish(channels, key, data, content_type),
            Store::Redis(r) => r.publish(channels, key, data, content_type).await,
        }
    }

    /// Deletes a channel; returns whether it existed.
    pub async fn delete(&self, channel: &str) -> Result<bool, Error> {
        match self {
            Store::Memory(m) => Ok(m.delete(channel)),
            Store::Redis(r) => r.delete(channel).await,
        }
    }

    /// A channel's state.
    pub async fn channel(&self, channel: &str) -> Result<ChannelState, Error> {
        match self {
            Store::Memory(m) => Ok(m.channel(channel)),
            Store::Redis(r) => r.channel(channel).await,
        }
    }

    /// What this instance's presence saw (`local`), as every instance's
    /// presence sees it: in memory, as it is; on Redis, shared through it, so
    /// a member on two instances joins once and an instance that died makes
    /// its members leave. `held` (on each tick: every channel this instance
    /// keeps presence on, with its members) refreshes this instance's share
    /// and sweeps what lapsed.
    pub async fn share_presence(
        &self,
        local: Vec<crate::presence::Event>,
        held: Option<&[(SmolStr, Vec<SmolStr>)]>,
        grace: Duration,
    ) -> Vec<crate::presence::Event> {
        match self {
            Store::Memory(_) => local,
            Store::Redis(r) => r.share_presence(local, held, grace).await,
        }
    }

    /// Who is on `channel`: `local` (this instance's members and anonymous
    /// subscribers) in memory; on Redis, the members every instance shares,
    /// and this instance's anonymous ones.
    pub async fn presence(
        &self,
        channel: &str,
        local: (Vec<crate::presence::Shown>, u32),
    ) -> Result<(Vec<crate::presence::Shown>, u32), Error> {
        match self {
            Store::Memory(_) => Ok(local),
            Store::Redis(r) => Ok((r.presence_members(channel).await?, local.1)),
        }
    }

    /// Gauges for `/stats`.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            hub: self.hub().snapshot(),
            redis: match self {
                Store::Memory(_) => None,
                Store::Redis(r) => Some(r.link_state()),
            },
        }
    }

    /// Brings what the messages hold back within the memory bound after
    /// encodings were made for an answer.
    pub fn fit(&self) {
        self.hub().fit();
    }

    /// Where what the server keeps outside the store (auth's caches) is
    /// counted against the memory bound.
    pub fn outside(&self) -> &crate::hub::Meter {
        self.hub().outside()
    }

    fn hub(&self) -> &Arc<Hub<Content>> {
        match self {
            Store::Memory(m) => m.hub(),
            Store::Redis(r) => r.hub(),
        }
    }

    /// Closes the store: every waiting subscriber is answered, every stream
    /// ends, new requests are refused.
    pub fn close(&self) {
        self.hub().close();
    }

    /// Whether the store can serve now; if not, why.
    pub fn serving(&self) -> Result<(), &'static str> {
        if self.hub().is_closed() {
            return Err("shutting down");
        }
        match self {
            Store::Redis(r) if !r.link_state().up => Err("redis unreachable"),
            _ => Ok(()),
        }
    }

    /// Waits until the store can serve, or `limit` has passed; returns whether it can.
    pub async fn ready(&self, limit: Duration) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.wait_up(limit).await,
        }
    }

    /// The store's background work (expiry, and the link to Redis) until `stop`
    /// turns true.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let hub = self.hub().clone();
        let sweep = async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                hub.sweep();
            }
        };
        let link = async {
            match self {
                Store::Memory(_) => std::future::pending().await,
                Store::Redis(r) => r.run_link().await,
            }
        };
        tokio::select! {
            _ = sweep => {}
            _ = link => {}
            _ = stop.wait_for(|&s| s) => {}
        }
    }
}
