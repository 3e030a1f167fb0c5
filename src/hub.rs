//! The hub: the seed's ClientManager, done right.
//!
//! Per channel it keeps a bounded history and the waiting long-poll subscribers'
//! oneshot senders. A publish appends to the history and drains the waiters, so
//! every subscriber that was waiting gets the message, and one that polls a moment
//! later with `since` finds it in the history: nothing published between two polls
//! is lost. A waiter removes itself when its request goes away (the client hung up,
//! timed out, or the server shut down), so no dead subscriber is ever kept.
//!
//! One std `Mutex` guards all channels; it is never held across an `.await`, and a
//! publish hands the waiters their message after releasing it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::error::Error;
use crate::protocol::{Ids, Since};
use crate::stats::{Counters, Snapshot};

/// Slots of the table that remembers, for channels that were freed, the last
/// message id they had; see [`Hub::poll`] on gaps.
const WATERMARK_SLOTS: usize = 4096;
/// Cluster mode: how long a channel's copy is kept after its last subscriber.
const MIRROR_IDLE: Duration = Duration::from_secs(10);
/// Messages an event stream may fall behind before it is dropped.
pub const STREAM_BACKLOG: usize = 256;

/// A published message. Shared by every subscriber it is handed to.
#[derive(Debug)]
pub struct Message {
    /// Position in the hub's sequence; strictly increasing within a channel.
    pub seq: u64,
    /// The id clients see: `EPOCH-SEQ`, or the Redis stream id in cluster mode.
    pub id: HeaderValue,
    /// The data, byte for byte as published.
    pub data: Bytes,
    /// The publisher's Content-Type.
    pub content_type: HeaderValue,
    /// When it was published.
    pub at: Instant,
    /// The answer (head, body) to a waiter it wakes, raw and JSON, serialized
    /// once for all of them by [`crate::lean`].
    pub answers: [std::sync::OnceLock<(Bytes, Bytes)>; 2],
}

/// Limits the hub enforces.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Messages a channel keeps.
    pub history: usize,
    /// Age after which a message leaves the history.
    pub history_age: Duration,
    /// Most channels at once (0: no limit).
    pub max_channels: usize,
    /// Most waiting subscribers at once (0: no limit).
    pub max_subscribers: usize,
}

impl From<&crate::Config> for HubConfig {
    fn from(c: &crate::Config) -> Self {
        HubConfig {
            history: c.history,
            history_age: c.history_age(),
            max_channels: c.max_channels,
            max_subscribers: c.max_subscribers,
        }
    }
}

/// What wakes a waiting subscriber.
#[derive(Debug)]
enum Wake {
    Message(Arc<Message>),
    Deleted,
    Shutdown,
    Reset,
}

/// The channels and everything the server counts.
#[derive(Debug)]
pub struct Hub {
    ids: Ids,
    config: HubConfig,
    state: Mutex<State>,
    /// Event counters shared with the HTTP layer.
    pub counters: Counters,
    started: Instant,
}

#[derive(Debug)]
struct State {
    channels: HashMap<Arc<str>, Channel>,
    seq: u64,
    next_waiter: u64,
    waiting: usize,
    history_bytes: usize,
    watermarks: Vec<u64>,
    closed: bool,
}

#[derive(Debug)]
struct Channel {
    name: Arc<str>,
    history: VecDeque<Arc<Message>>,
    /// Sequence of the last message, or the channel's floor if it has none.
    last_seq: u64,
    /// Highest sequence that has left the history (or that an earlier life of
    /// this channel may have had): a `since` below it has missed something.
    evicted: u64,
    waiters: HashMap<u64, oneshot::Sender<Wake>>,
    live: Option<broadcast::Sender<Arc<Message>>>,
    /// Cluster mode: the history holds every message after this id (the
    /// channel's last id when this instance began to follow it), so polls from
    /// there on are answered here without asking Redis.
    mirror: Option<u64>,
    /// When a subscriber last came (cluster mode keeps a history only for
    /// channels with recent subscribers).
    visited: Instant,
}

impl Channel {
    fn is_idle(&self) -> bool {
        self.history.is_empty()
            && self.waiters.is_empty()
            && self.live.as_ref().is_none_or(|tx| tx.receiver_count() == 0)
    }

    /// Adds `message` as the channel's newest; returns the bytes trimmed to make
    /// room.
    fn append(&mut self, message: &Arc<Message>, config: &HubConfig) -> usize {
        self.last_seq = message.seq;
        self.history.push_back(message.clone());
        self.trim(config, message.at)
    }

    /// Drops messages past the count or age limit; returns the bytes freed.
    fn trim(&mut self, config: &HubConfig, now: Instant) -> usize {
        let mut freed = 0;
        while let Some(front) = self.history.front() {
            let too_many = self.history.len() > config.history;
            let too_old = now.saturating_duration_since(front.at) >= config.history_age;
            if !(too_many || too_old) {
                break;
            }
            self.evicted = self.evicted.max(front.seq);
            freed += front.data.len();
            self.history.pop_front();
        }
        freed
    }

    /// Retained messages after `after`, at most `limit`.
    fn after(&self, after: u64, limit: usize) -> Vec<Arc<Message>> {
        let start = self.history.partition_point(|m| m.seq <= after);
        self.history.range(start..).take(limit).cloned().collect()
    }
}

/// What a long-poll gets at once: messages, or a place in the queue.
#[derive(Debug)]
pub enum Poll {
    /// Messages after `since` were in the history.
    Ready {
        /// The messages, oldest first.
        messages: Vec<Arc<Message>>,
        /// Some messages after `since` were no longer retained.
        gap: bool,
    },
    /// Nothing yet: wait on this.
    Wait(Waiter),
}

/// What a long-poll got.
#[derive(Debug)]
pub enum Polled {
    /// Messages after `since`, oldest first.
    Messages {
        /// The messages.
        messages: Vec<Arc<Message>>,
        /// Some messages after `since` were no longer retained.
        gap: bool,
    },
    /// Nothing before the timeout (or shutdown, or a link reset).
    Empty {
        /// The id to poll from next.
        last_id: HeaderValue,
        /// Some messages after `since` were no longer retained.
        gap: bool,
    },
}

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome {
    /// A message was published.
    Message(Arc<Message>),
    /// The timeout passed; carries the channel's current last id.
    Timeout(HeaderValue),
    /// The channel was deleted.
    Deleted,
    /// The server is shutting down; carries the channel's current last id.
    Shutdown(HeaderValue),
    /// Cluster mode: the link to Redis was re-established and messages may have
    /// been missed meanwhile; the subscriber should poll again.
    Reset,
}

/// A subscriber waiting for the next message on a channel. Dropping it removes it
/// from the channel at once.
#[derive(Debug)]
pub struct Waiter {
    rx: oneshot::Receiver<Wake>,
    hub: Arc<Hub>,
    channel: Arc<str>,
    key: u64,
    /// Messages after `since` were no longer retained when the wait began.
    pub gap: bool,
}

impl Waiter {
    /// Waits for a message, the timeout, deletion or shutdown.
    pub async fn wait(mut self, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(Wake::Message(m))) => Outcome::Message(m),
            Ok(Ok(Wake::Deleted)) => Outcome::Deleted,
            Ok(Ok(Wake::Reset)) => Outcome::Reset,
            Ok(Ok(Wake::Shutdown)) | Ok(Err(_)) => {
                Outcome::Shutdown(self.hub.last_id(&self.channel))
            }
            Err(_) => Outcome::Timeout(self.hub.last_id(&self.channel)),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut state = self.hub.state();
        let Some(ch) = state.channels.get_mut(&self.channel) else {
            return;
        };
        if ch.waiters.remove(&self.key).is_some() {
            state.waiting -= 1;
        }
        state.free_if_idle(&self.channel);
    }
}

/// An open event stream: the missed history, then every new message.
#[derive(Debug)]
pub struct Stream {
    /// Messages after `since` that were in the history, oldest first.
    pub backlog: Vec<Arc<Message>>,
    /// Some messages after `since` were no longer retained.
    pub gap: bool,
    /// New messages as they are published; closed when the channel is deleted
    /// or the server shuts down, lagged when the reader falls too far behind.
    pub live: broadcast::Receiver<Arc<Message>>,
    /// Live messages up to this sequence were already read (cluster mode reads
    /// the backlog after subscribing, so the two can overlap).
    pub after: u64,
    guard: StreamGuard,
}

impl Stream {
    /// The channel this stream reads.
    pub fn channel(&self) -> &str {
        &self.guard.channel
    }
}

#[derive(Debug)]
struct StreamGuard {
    hub: Arc<Hub>,
    channel: Arc<str>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.hub
            .counters
            .streams
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // Fields drop in order, so the receiver is already gone; a receiver
        // moved out elsewhere leaves the channel to the next sweep.
        self.hub.state().free_if_idle(&self.channel);
    }
}

impl State {
    fn bucket(name: &str) -> usize {
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        (h.finish() as usize) % WATERMARK_SLOTS
    }

    fn channel(&mut self, name: &str, config: &HubConfig) -> Result<&mut Channel, Error> {
        if !self.channels.contains_key(name) {
            if config.max_channels > 0 && self.channels.len() >= config.max_channels {
                return Err(Error::Busy("channels"));
            }
            let floor = self.watermarks[Self::bucket(name)];
            let name: Arc<str> = name.into();
            self.channels.insert(
                name.clone(),
                Channel {
                    name,
                    history: VecDeque::new(),
                    last_seq: floor,
                    evicted: floor,
                    waiters: HashMap::new(),
                    live: None,
                    mirror: None,
                    visited: Instant::now(),
                },
            );
        }
        self.channels.get_mut(name).ok_or(Error::BadChannel)
    }

    fn free_if_idle(&mut self, name: &str) {
        if self.channels.get(name).is_some_and(Channel::is_idle) {
            self.remove(name);
        }
    }

    /// Forgets a channel, remembering its last id for clients that resume later.
    fn remove(&mut self, name: &str) -> Option<Channel> {
        let ch = self.channels.remove(name)?;
        let slot = &mut self.watermarks[Self::bucket(name)];
        *slot = (*slot).max(ch.last_seq);
        self.waiting -= ch.waiters.len();
        self.history_bytes -= ch.history.iter().map(|m| m.data.len()).sum::<usize>();
        Some(ch)
    }
}

impl Hub {
    /// An in-memory hub with a fresh epoch.
    pub fn new(config: HubConfig) -> Arc<Hub> {
        Hub::with_ids(config, Ids::Epoch(crate::protocol::new_epoch()))
    }

    /// A hub whose message ids are made by `ids`.
    pub fn with_ids(config: HubConfig, ids: Ids) -> Arc<Hub> {
        Arc::new(Hub {
            ids,
            config,
            state: Mutex::new(State {
                channels: HashMap::new(),
                seq: 0,
                next_waiter: 0,
                waiting: 0,
                history_bytes: 0,
                watermarks: vec![0; WATERMARK_SLOTS],
                closed: false,
            }),
            counters: Counters::default(),
            started: Instant::now(),
        })
    }

    /// How this hub's message ids are made and read.
    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where a reader starting at `since` begins, and whether it missed messages.
    fn start(state: &State, ch: &Channel, since: Since) -> (u64, bool) {
        match since {
            Since::Next => (ch.last_seq, false),
            Since::Oldest => (0, false),
            Since::Id(seq) if seq <= state.seq => (seq, seq < ch.evicted),
            Since::Id(_) | Since::Foreign => (0, true),
        }
    }

    /// Starts a long-poll on `channel` from `since`: returns at most `limit`
    /// retained messages at once, or a [`Waiter`] for the next one.
    pub fn poll(
        self: &Arc<Self>,
        channel: &str,
        since: Since,
        limit: usize,
    ) -> Result<Poll, Error> {
        let mut state = self.state();
        if state.closed {
            return Err(Error::ShuttingDown);
        }
        let now = Instant::now();
        let ch = state.channel(channel, &self.config)?;
        let freed = ch.trim(&self.config, now);
        let name = ch.name.clone();
        state.history_bytes -= freed;
        let ch = &state.channels[channel];
        let (after, gap) = Self::start(&state, ch, since);
        let messages = ch.after(after, limit);
        if !messages.is_empty() {
            return Ok(Poll::Ready { messages, gap });
        }
        self.enqueue(&mut state, name, gap).map(Poll::Wait)
    }

    /// Puts a waiter on `channel`, within `--max-subscribers`.
    fn enqueue(
        self: &Arc<Self>,
        state: &mut State,
        channel: Arc<str>,
        gap: bool,
    ) -> Result<Waiter, Error> {
        let max = self.config.max_subscribers;
        if max > 0 && state.waiting >= max {
            state.free_if_idle(&channel);
            return Err(Error::Busy("subscribers"));
        }
        let (tx, rx) = oneshot::channel();
        let key = state.next_waiter;
        state.next_waiter += 1;
        state.waiting += 1;
        if let Some(ch) = state.channels.get_mut(&channel) {
            ch.waiters.insert(key, tx);
            ch.visited = Instant::now();
        }
        Ok(Waiter {
            rx,
            hub: self.clone(),
            channel,
            key,
            gap,
        })
    }

    /// Cluster mode: a long-poll answered from this instance's copy of the
    /// channel, when the copy covers `since`. Returns the poll and the position
    /// it reads after, or `None` when only Redis can answer.
    pub fn poll_mirror(
        self: &Arc<Self>,
        channel: &str,
        since: Since,
        limit: usize,
    ) -> Option<Result<(Poll, u64), Error>> {
        let mut state = self.state();
        if state.closed {
            return Some(Err(Error::ShuttingDown));
        }
        let ch = state.channels.get_mut(channel)?;
        let mirror = ch.mirror?;
        let freed = ch.trim(&self.config, Instant::now());
        let after = match since {
            Since::Next => Some(ch.last_seq),
            Since::Id(x) if x >= mirror && x >= ch.evicted && x <= ch.last_seq => Some(x),
            _ => None,
        };
        let name = ch.name.clone();
        let messages = after.map(|after| ch.after(after, limit));
        state.history_bytes -= freed;
        let after = after?;
        if let Some(messages) = messages.filter(|m| !m.is_empty()) {
            return Some(Ok((
                Poll::Ready {
                    messages,
                    gap: false,
                },
                after,
            )));
        }
        Some(
            self.enqueue(&mut state, name, false)
                .map(|waiter| (Poll::Wait(waiter), after)),
        )
    }

    /// Cluster mode: this instance follows `channel` and has every message after
    /// `last` (or will get it as it is announced); polls after it are answered
    /// here from now on.
    pub fn mirror_from(&self, channel: &str, last: u64) {
        let mut state = self.state();
        if let Some(ch) = state.channels.get_mut(channel)
            && ch.mirror.is_none()
        {
            ch.mirror = Some(last);
            ch.last_seq = ch.last_seq.max(last);
        }
    }

    /// Opens an event stream on `channel` from `since`.
    pub fn stream(self: &Arc<Self>, channel: &str, since: Since) -> Result<Stream, Error> {
        let mut state = self.state();
        if state.closed {
            return Err(Error::ShuttingDown);
        }
        let now = Instant::now();
        let ch = state.channel(channel, &self.config)?;
        let freed = ch.trim(&self.config, now);
        let name = ch.name.clone();
        let live = ch
            .live
            .get_or_insert_with(|| broadcast::channel(STREAM_BACKLOG).0)
            .subscribe();
        state.history_bytes -= freed;
        let ch = &state.channels[channel];
        let (after, gap) = Self::start(&state, ch, since);
        let backlog = ch.after(after, usize::MAX);
        Counters::bump(&self.counters.streams);
        Ok(Stream {
            after: backlog.last().map_or(after, |m| m.seq),
            backlog,
            gap,
            live,
            guard: StreamGuard {
                hub: self.clone(),
                channel: name,
            },
        })
    }

    /// Publishes a message: appends it to the history and hands it to every
    /// waiting subscriber and open stream. Returns it and how many got it.
    pub fn publish(
        &self,
        channel: &str,
        data: Bytes,
        content_type: HeaderValue,
    ) -> Result<(Arc<Message>, usize), Error> {
        let mut state = self.state();
        if state.closed {
            return Err(Error::ShuttingDown);
        }
        let seq = state.seq + 1;
        let now = Instant::now();
        let id = self.ids.header(seq);
        let len = data.len();
        let message = Arc::new(Message {
            seq,
            id,
            data,
            content_type,
            at: now,
            answers: Default::default(),
        });
        let freed = state
            .channel(channel, &self.config)?
            .append(&message, &self.config);
        state.seq = seq;
        state.history_bytes = state.history_bytes + len - freed;
        let delivered = self.fan_out(state, channel, &message);
        Counters::bump(&self.counters.published);
        Ok((message, delivered))
    }

    /// Cluster mode: hands a message that came from Redis to this instance's
    /// waiting subscribers and streams on `channel`, and keeps it in the
    /// channel's copy of the history. Returns how many got it.
    pub fn deliver(&self, channel: &str, message: &Arc<Message>) -> usize {
        let mut state = self.state();
        let Some(ch) = state.channels.get_mut(channel) else {
            return 0;
        };
        if message.seq > ch.last_seq {
            let freed = ch.append(message, &self.config);
            state.history_bytes = state.history_bytes + message.data.len() - freed;
        }
        self.fan_out(state, channel, message)
    }

    /// Wakes `channel`'s waiters and streams with `message`, after releasing the lock.
    fn fan_out(
        &self,
        mut state: MutexGuard<'_, State>,
        channel: &str,
        message: &Arc<Message>,
    ) -> usize {
        let Some(ch) = state.channels.get_mut(channel) else {
            return 0;
        };
        let waiters = std::mem::take(&mut ch.waiters);
        let streams = ch
            .live
            .as_ref()
            .and_then(|tx| tx.send(message.clone()).ok())
            .unwrap_or(0);
        state.waiting -= waiters.len();
        state.free_if_idle(channel);
        drop(state);

        let mut delivered = streams;
        for tx in waiters.into_values() {
            if tx.send(Wake::Message(message.clone())).is_ok() {
                delivered += 1;
            }
        }
        self.counters
            .delivered
            .fetch_add(delivered as u64, std::sync::atomic::Ordering::Relaxed);
        delivered
    }

    /// Registers a waiter on `channel` for the next message, whatever the history
    /// holds (cluster mode reads the history from Redis).
    pub fn wait(self: &Arc<Self>, channel: &str) -> Result<Waiter, Error> {
        let mut state = self.state();
        if state.closed {
            return Err(Error::ShuttingDown);
        }
        let name = state.channel(channel, &self.config)?.name.clone();
        self.enqueue(&mut state, name, false)
    }

    /// Whether `channel` has waiting subscribers or streams here.
    pub fn has_channel(&self, channel: &str) -> bool {
        self.state().channels.contains_key(channel)
    }

    /// Drops a channel and its history; its waiters get [`Outcome::Deleted`] and its
    /// streams end. Returns whether the channel existed.
    pub fn delete(&self, channel: &str) -> bool {
        let mut state = self.state();
        let Some(mut ch) = state.remove(channel) else {
            return false;
        };
        ch.evicted = ch.last_seq;
        drop(state);
        for tx in ch.waiters.into_values() {
            let _ = tx.send(Wake::Deleted);
        }
        true
    }

    /// The id to echo as `since` to read what comes after everything so far.
    pub fn last_id(&self, channel: &str) -> HeaderValue {
        let state = self.state();
        let seq = match state.channels.get(channel) {
            Some(ch) => ch.last_seq,
            None => state.watermarks[State::bucket(channel)],
        };
        drop(state);
        self.ids.header(seq)
    }

    /// Subscribers, retained messages and last id of a channel.
    pub fn channel_info(&self, channel: &str) -> crate::protocol::ChannelInfo {
        let state = self.state();
        let now = Instant::now();
        let (subscribers, messages, last) = match state.channels.get(channel) {
            Some(ch) => {
                let streams = ch.live.as_ref().map_or(0, |tx| tx.receiver_count());
                let fresh = ch
                    .history
                    .iter()
                    .filter(|m| now.saturating_duration_since(m.at) < self.config.history_age)
                    .count();
                (ch.waiters.len() + streams, fresh, ch.last_seq)
            }
            None => (0, 0, state.watermarks[State::bucket(channel)]),
        };
        crate::protocol::ChannelInfo {
            channel: channel.to_owned(),
            subscribers,
            messages,
            last_id: (last > 0).then(|| self.ids.format(last)),
        }
    }

    /// Drops expired messages everywhere and frees the channels left idle.
    pub fn sweep(&self) {
        let mut state = self.state();
        let now = Instant::now();
        let mut freed = 0;
        let mut idle = Vec::new();
        let cluster = self.ids == Ids::Stream;
        for (name, ch) in state.channels.iter_mut() {
            freed += ch.trim(&self.config, now);
            let listened = !ch.waiters.is_empty()
                || ch.live.as_ref().is_some_and(|tx| tx.receiver_count() > 0);
            if cluster && !listened && now.duration_since(ch.visited) >= MIRROR_IDLE {
                // Nobody here polls it any more: stop copying it.
                freed += ch.history.drain(..).map(|m| m.data.len()).sum::<usize>();
                ch.mirror = None;
            }
            if ch.is_idle() {
                idle.push(name.clone());
            }
        }
        state.history_bytes -= freed;
        for name in idle {
            state.remove(&name);
        }
    }

    /// Cluster mode, after the link to Redis came back: every waiting subscriber
    /// is woken with [`Outcome::Reset`] and every stream ends, so that each
    /// client reads what it missed from Redis; new requests are served.
    pub fn reset(&self) {
        self.wake_all(
            || Wake::Reset,
            |state| {
                for ch in state.channels.values_mut() {
                    ch.mirror = None;
                    ch.history.clear();
                }
                state.history_bytes = 0;
            },
        );
    }

    /// Shuts the hub: every waiting subscriber is woken with
    /// [`Outcome::Shutdown`], every stream ends, and new requests are refused.
    pub fn close(&self) {
        self.wake_all(|| Wake::Shutdown, |state| state.closed = true);
    }

    /// Wakes every waiter with `wake` and ends every stream, after `also` has
    /// changed the state under the same lock.
    fn wake_all(&self, wake: fn() -> Wake, also: impl FnOnce(&mut State)) {
        let mut state = self.state();
        also(&mut state);
        let mut waiters = Vec::new();
        for ch in state.channels.values_mut() {
            waiters.extend(std::mem::take(&mut ch.waiters).into_values());
            ch.live = None;
        }
        state.waiting = 0;
        drop(state);
        for tx in waiters {
            let _ = tx.send(wake());
        }
    }

    /// A snapshot for `/stats` and `/metrics`.
    pub fn snapshot(&self) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let state = self.state();
        let (waiting, channels, history_bytes) =
            (state.waiting, state.channels.len(), state.history_bytes);
        drop(state);
        let c = &self.counters;
        Snapshot {
            connections: c.connections.load(Relaxed),
            waiting,
            streams: c.streams.load(Relaxed),
            channels,
            published: c.published.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            history_bytes,
            uptime_seconds: self.started.elapsed().as_secs(),
            refused: c.refusals().into_iter().collect(),
            redis: None,
        }
    }
}
