//! The hub: the seed's ClientManager, done right, and nothing else.
//!
//! Per channel it keeps a bounded history and the waiting long-poll subscribers'
//! oneshot senders. A publish appends to the history and drains the waiters, so
//! every subscriber that was waiting gets the message, and one that polls a moment
//! later with `since` finds it in the history: nothing published between two polls
//! is lost. A waiter removes itself when its request goes away, so no dead
//! subscriber is ever kept. A long-poll on several channels is one [`Joint`]
//! waiter with one sender, entered in each channel's joiners: the first channel
//! to publish wakes it.
//!
//! It is pure: channels, waiters, history, sequence numbers and time. What a
//! message carries is the caller's type ([`Payload`]); no HTTP, no Redis, no
//! flags. In [`Mode::Source`] it is where messages live; in [`Mode::Cache`] it is
//! one instance's copy of channels that live elsewhere, filled by [`Hub::deliver`].
//!
//! One std `Mutex` guards all channels; it is never held across an `.await`, and a
//! publish hands the waiters their message after releasing it. Expiry is driven by
//! a queue of due times, so a sweep touches only the channels that are due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

/// Messages an event stream may fall behind before it is dropped.
pub const STREAM_BACKLOG: usize = 256;
/// Freed channels whose last sequence is remembered exactly; older ones fold
/// into one floor (see [`Hub::poll`] on gaps).
pub const FREED_RECORDS: usize = 65_536;

/// What a message carries; the hub only needs its size.
pub trait Payload: Send + Sync + 'static {
    /// Bytes this payload holds from the start, with its bookkeeping. What it
    /// comes to hold later (encodings made on first use) it counts on the
    /// hub's [`Meter`].
    fn size(&self) -> usize;
}

/// Bytes that a hub's payloads hold beyond their [`Payload::size`]: added when
/// a payload grows, taken back when it is dropped. Counted against
/// [`Config::max_bytes`] with the history.
#[derive(Debug, Clone, Default)]
pub struct Meter(Arc<AtomicUsize>);

impl Meter {
    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.0.load(Relaxed)
    }

    /// Counts `n` more bytes.
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n, Relaxed);
    }

    /// Counts `n` bytes fewer.
    pub fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Relaxed);
    }
}

/// What the hub holds in its histories.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    messages: usize,
    bytes: usize,
}

impl Held {
    fn of<P: Payload>(message: &Message<P>) -> Held {
        Held {
            messages: 1,
            bytes: message.payload.size(),
        }
    }
}

impl std::ops::AddAssign for Held {
    fn add_assign(&mut self, other: Held) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

impl std::ops::SubAssign for Held {
    fn sub_assign(&mut self, other: Held) {
        self.messages -= other.messages;
        self.bytes -= other.bytes;
    }
}

/// A published message, shared by every subscriber it is handed to.
#[derive(Debug)]
pub struct Message<P> {
    /// Position in the sequence; strictly increasing within a channel.
    pub seq: u64,
    /// When it was published (or, in a cache, received).
    pub at: Instant,
    /// What it carries.
    pub payload: P,
}

impl<P> Message<P> {
    /// A message stamped now.
    pub fn new(seq: u64, payload: P) -> Arc<Message<P>> {
        Arc::new(Message {
            seq,
            at: Instant::now(),
            payload,
        })
    }
}

/// Where a reader wants to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The next message published after the request arrived.
    Next,
    /// The oldest retained message.
    Oldest,
    /// After this sequence.
    Id(u64),
    /// After an id that is not this hub's (another run, another server).
    Foreign,
}

impl Since {
    /// Where a reader starting here begins, and whether it missed messages: the
    /// channel's last sequence is `last`, messages up to `evicted` are gone, and
    /// no id above `newest` was ever given out. The one place this is decided,
    /// for the hub and for the Redis store alike.
    pub fn start(self, last: u64, evicted: u64, newest: u64) -> (u64, bool) {
        match self {
            Since::Next => (last, false),
            Since::Oldest => (0, false),
            Since::Id(seq) if seq <= newest => (seq, seq < evicted),
            Since::Id(_) | Since::Foreign => (0, true),
        }
    }
}

/// A channel's waiting subscribers, by the hub's own waiter number.
type Waiters<P> = HashMap<u64, oneshot::Sender<Wake<P>>, BuildHasherDefault<WaiterHasher>>;

/// The [`Joint`] waiters on a channel, by number (with [`JOINT`]); a set
/// beside [`Waiters`], so that a one-channel waiter's entry stays a number
/// and a sender.
type Joiners = std::collections::HashSet<u64, BuildHasherDefault<WaiterHasher>>;

/// What wakes a [`Joint`] waiter: the wake, with the place in its request
/// of the channel it came from.
type JointSender<P> = oneshot::Sender<(usize, Wake<P>)>;

/// A [`Joint`] waiter, as the hub keeps it.
#[derive(Debug)]
struct Joined<P> {
    /// Taken by the first of its channels to publish.
    tx: Option<JointSender<P>>,
    /// Each channel it waits on, with its place in the request and its key
    /// there (the counted one's without [`UNCOUNTED`]).
    channels: Vec<(usize, Arc<str>, u64)>,
}

/// The [`Joint`] waiters, by number.
type Joints<P> = HashMap<u64, Joined<P>, BuildHasherDefault<WaiterHasher>>;

/// Hashes waiter numbers: the hub hands them out in sequence and no client
/// chooses them, so a multiply spreads them well enough (channel names, which
/// clients do choose, keep the default keyed hash).
#[derive(Debug, Default, Clone, Copy)]
struct WaiterHasher(u64);

impl Hasher for WaiterHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Why the hub refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_channels` reached.
    Channels,
    /// `max_subscribers` reached.
    Subscribers,
    /// `max_bytes` reached, and evicting old messages cannot make room.
    Memory,
    /// The hub is closed (shutting down).
    Closed,
}

/// What the hub is to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Messages are published here; the history is the truth.
    Source,
    /// A copy of channels kept elsewhere: messages arrive by [`Hub::deliver`],
    /// a channel's copy answers only from where it was known complete
    /// ([`Hub::cover_from`]), and is dropped after `idle` without a subscriber.
    Cache {
        /// How long a copy is kept after the last poll that used it.
        idle: Duration,
    },
}

/// Limits and mode.
#[derive(Debug, Clone)]
pub struct Config {
    /// Messages a channel keeps.
    pub history: usize,
    /// Age after which a message leaves the history.
    pub history_age: Duration,
    /// Most channels at once (0: no limit).
    pub max_channels: usize,
    /// Most waiting subscribers and open streams at once (0: no limit).
    pub max_subscribers: usize,
    /// Most bytes all histories may hold, with their payloads' later growth
    /// (0: no limit). Past it the oldest messages across channels go first.
    pub max_bytes: usize,
    /// How long a publish's idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Source or cache.
    pub mode: Mode,
}

/// What wakes a waiting subscriber.
#[derive(Debug)]
enum Wake<P> {
    Message(Arc<Message<P>>),
    Deleted,
    Shutdown,
    Reset,
}

impl<P> Wake<P> {
    /// What a wait comes to when woken by `woken` (`None`: its sender went
    /// without a word, as when the hub is gone): shutdown carries the
    /// channel's last sequence, from `last`.
    fn outcome(woken: Option<Wake<P>>, last: impl FnOnce() -> u64) -> Outcome<P> {
        match woken {
            Some(Wake::Message(m)) => Outcome::Message(m),
            Some(Wake::Deleted) => Outcome::Deleted,
            Some(Wake::Reset) => Outcome::Reset,
            Some(Wake::Shutdown) | None => Outcome::Shutdown(last()),
        }
    }
}

/// Channels, waiters and histories.
#[derive(Debug)]
pub struct Hub<P> {
    config: Config,
    state: Mutex<State<P>>,
    delivered: AtomicU64,
    evictions: AtomicU64,
    meter: Meter,
    outside: Meter,
}

#[derive(Debug)]
struct State<P> {
    channels: Channels<P>,
    seq: u64,
    tally: Tally,
    joints: Joints<P>,
    held: Held,
    /// With `max_bytes`: every retained message by channel, oldest first, so
    /// the oldest across channels is evicted first. Entries of messages that
    /// left otherwise are skipped, and dropped when they pile up.
    order: VecDeque<(Arc<str>, u64)>,
    freed: Freed,
    due: Due,
    keys: Keys,
    closed: bool,
}

/// Channels by name. hashbrown's map for its `entry_ref`, so that finding or
/// making a channel hashes its name once; with std's keyed hash, as clients
/// choose the names.
type Channels<P> = hashbrown::HashMap<Arc<str>, Channel<P>, std::hash::RandomState>;

/// Who is listening, for `max_subscribers`, and the next waiter's number.
#[derive(Debug, Default)]
struct Tally {
    /// Long-poll subscribers waiting (one on several channels counts once).
    waiting: usize,
    /// Open event streams.
    streams: usize,
    next_waiter: u64,
}

impl Tally {
    /// Whether `max` (0: no limit) subscribers are listening already.
    fn full(&self, max: usize) -> bool {
        max > 0 && self.waiting + self.streams >= max
    }
}

/// Most idempotency keys remembered at once.
pub const MAX_KEYS: usize = 65_536;

/// The idempotency keys of recent publishes, each with the sequence it
/// published, so that a retry within the window publishes nothing. Oldest
/// first in `order`: a key is never renewed, so insertion order is expiry
/// order. Past [`MAX_KEYS`] the oldest are forgotten early.
#[derive(Debug, Default)]
struct Keys {
    /// By `KEY \n CHANNEL` (a key has no newline).
    seen: HashMap<Arc<str>, (u64, Instant, Fingerprint)>,
    order: VecDeque<(Arc<str>, Instant)>,
    bytes: usize,
}

impl Keys {
    /// Bytes a remembered key takes: its text, and two map and queue
    /// slots, the `Arc`'s counts and the allocator's rounding.
    fn cost(name: &str) -> usize {
        name.len() + 112
    }

    fn name(channel: &str, key: &str) -> String {
        format!("{key}\n{channel}")
    }

    /// The sequence published under `name` within `window` of `now`, and
    /// what it published.
    fn get(&self, name: &str, window: Duration, now: Instant) -> Option<(u64, Fingerprint)> {
        let (seq, at, print) = self.seen.get(name)?;
        (now.saturating_duration_since(*at) < window).then_some((*seq, *print))
    }

    fn insert(&mut self, name: String, seq: u64, print: Fingerprint, now: Instant) {
        // An expired entry replaced here keeps its place in `order` (and
        // its bytes) until popped; popping it leaves the new one be.
        let name: Arc<str> = name.into();
        self.bytes += Keys::cost(&name);
        self.seen.insert(name.clone(), (seq, now, print));
        self.order.push_back((name, now));
        while self.order.len() > MAX_KEYS {
            self.pop();
        }
    }

    /// Forgets keys older than `window`.
    fn expire(&mut self, window: Duration, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= window)
        {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((name, at)) = self.order.pop_front() {
            self.bytes -= Keys::cost(&name);
            if self.seen.get(&name).is_some_and(|(_, a, _)| *a == at) {
                self.seen.remove(&name);
            }
        }
    }
}

/// The sweep queue: channels by the time they are next due.
type Due = BinaryHeap<Reverse<(Instant, Arc<str>)>>;

/// The last sequence of channels that were freed, so that a client resuming one
/// later learns whether it missed something: exact for the last
/// [`FREED_RECORDS`], then one conservative floor.
#[derive(Debug, Default)]
struct Freed {
    last: HashMap<Arc<str>, (u64, u64)>,
    order: VecDeque<(Arc<str>, u64)>,
    generation: u64,
    forgotten: u64,
}

impl Freed {
    fn record(&mut self, name: Arc<str>, last: u64) {
        if last <= self.forgotten {
            return;
        }
        self.generation += 1;
        self.last.insert(name.clone(), (last, self.generation));
        self.order.push_back((name, self.generation));
        while self.last.len() > FREED_RECORDS {
            let Some((name, generation)) = self.order.pop_front() else {
                break;
            };
            if self.last.get(&name).is_some_and(|(_, g)| *g == generation)
                && let Some((last, _)) = self.last.remove(&name)
            {
                self.forgotten = self.forgotten.max(last);
            }
        }
        if self.order.len() > 2 * FREED_RECORDS {
            let last = &self.last;
            self.order
                .retain(|(n, g)| last.get(n).is_some_and(|(_, h)| h == g));
        }
    }

    /// The floor of a channel made anew, and forgets its record.
    fn take(&mut self, name: &str) -> u64 {
        self.last
            .remove(name)
            .map_or(self.forgotten, |(last, _)| last.max(self.forgotten))
    }

    fn peek(&self, name: &str) -> u64 {
        self.last
            .get(name)
            .map_or(self.forgotten, |(last, _)| (*last).max(self.forgotten))
    }
}

#[derive(Debug)]
struct Channel<P> {
    name: Arc<str>,
    history: VecDeque<Arc<Message<P>>>,
    /// Sequence of the last message, or the channel's floor if it has none.
    last_seq: u64,
    /// Highest sequence that has left the history (or that an earlier life of
    /// this channel may have had): a `since` below it has missed something.
    evicted: u64,
    waiters: Waiters<P>,
    /// Waiters counted in the hub's `waiting`: a long-poll on several
    /// channels waits on each but counts once.
    counted: usize,
    joiners: Joiners,
    live: Option<broadcast::Sender<Arc<Message<P>>>>,
    /// Cache mode: the history holds every message after this sequence.
    covered: Option<u64>,
    /// When a subscriber last used this channel.
    visited: Instant,
    /// When the sweep queue will look at this channel next.
    scheduled: Option<Instant>,
}

impl<P: Payload> Channel<P> {
    fn new(name: Arc<str>, floor: u64) -> Self {
        Channel {
            name,
            history: VecDeque::new(),
            last_seq: floor,
            evicted: floor,
            waiters: Waiters::default(),
            counted: 0,
            joiners: Joiners::default(),
            live: None,
            covered: None,
            visited: Instant::now(),
            scheduled: None,
        }
    }

    fn listened(&self) -> bool {
        !self.waiters.is_empty()
            || !self.joiners.is_empty()
            || self.live.as_ref().is_some_and(|tx| tx.receiver_count() > 0)
    }

    fn is_idle(&self) -> bool {
        self.history.is_empty() && !self.listened()
    }

    /// Adds `message` as the newest; returns what was trimmed to make room.
    fn append(&mut self, message: &Arc<Message<P>>, config: &Config) -> Held {
        self.last_seq = message.seq;
        self.history.push_back(message.clone());
        self.trim(config, message.at)
    }

    /// Drops messages past the count or age limit; returns what it freed.
    fn trim(&mut self, config: &Config, now: Instant) -> Held {
        let mut freed = Held::default();
        while let Some(front) = self.history.front() {
            let too_many = self.history.len() > config.history;
            let too_old = now.saturating_duration_since(front.at) >= config.history_age;
            if !(too_many || too_old) {
                break;
            }
            self.evicted = self.evicted.max(front.seq);
            freed += Held::of(front);
            self.history.pop_front();
        }
        freed
    }

    /// What the history holds.
    fn held(&self) -> Held {
        let mut held = Held::default();
        for m in &self.history {
            held += Held::of(m);
        }
        held
    }

    /// Retained messages after `after`, at most `limit`.
    fn after(&self, after: u64, limit: usize) -> Vec<Arc<Message<P>>> {
        let start = self.history.partition_point(|m| m.seq <= after);
        self.history.range(start..).take(limit).cloned().collect()
    }

    /// Puts the channel in the sweep queue for `at`, unless it is already due
    /// sooner.
    fn schedule(&mut self, due: &mut Due, at: Option<Instant>) {
        let Some(at) = at else { return };
        if self.scheduled.is_some_and(|s| s <= at) {
            return;
        }
        self.scheduled = Some(at);
        due.push(Reverse((at, self.name.clone())));
    }

    /// Trims the channel and schedules its next look; returns what it freed.
    fn refresh(&mut self, due: &mut Due, config: &Config, now: Instant) -> Held {
        let freed = self.trim(config, now);
        let at = self.next_due(config);
        self.schedule(due, at);
        freed
    }

    /// When the sweep must next look at this channel, if ever.
    fn next_due(&self, config: &Config) -> Option<Instant> {
        let expiry = self.history.front().map(|m| m.at + config.history_age);
        let idle = match (config.mode, self.covered) {
            (Mode::Cache { idle }, Some(_)) => Some(self.visited + idle),
            _ => None,
        };
        match (expiry, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What [`Hub::publish_once`] did.
#[derive(Debug)]
pub enum Published<P> {
    /// Published this message, handed to this many.
    New(Arc<Message<P>>, usize),
    /// The key was used within the window for the same message: nothing
    /// published; the sequence published then.
    Replayed(u64),
    /// The key was used within the window for another message: nothing
    /// published.
    Conflict,
}

/// What an idempotent publish carried (a digest of its body and type), so
/// that a key reused for another message is told apart from a retry.
pub type Fingerprint = [u8; 16];

/// What a long-poll gets at once.
#[derive(Debug)]
pub enum Poll<P: Payload> {
    /// Messages after `since` were in the history.
    Ready {
        /// The messages, oldest first.
        messages: Vec<Arc<Message<P>>>,
        /// Some messages after `since` were no longer retained.
        gap: bool,
    },
    /// Nothing yet: wait on this.
    Wait(Waiter<P>),
    /// Cache mode: the copy does not cover `since`; ask the source.
    Miss,
}

/// Where a long-poll on one channel of several starts.
#[derive(Debug)]
pub enum Start<P: Payload> {
    /// Read from the history.
    Read {
        /// The reader has (or was told it missed) everything up to here.
        from: u64,
        /// Some messages after `since` were no longer retained.
        gap: bool,
        /// Retained messages after `since`, oldest first.
        messages: Vec<Arc<Message<P>>>,
    },
    /// Cache mode: the copy does not cover `since`; ask the source.
    Miss,
}

/// What a long-poll on several channels gets at once ([`Hub::poll_many`]).
#[derive(Debug)]
pub struct Many<P: Payload> {
    /// Each channel's start, in the order asked.
    pub starts: Vec<Start<P>>,
    /// When no channel read anything: one waiter on every channel that is
    /// not a miss.
    pub joint: Option<Joint<P>>,
}

/// What a long-poll's start registers when it reads nothing.
enum Register<'j, P: Payload> {
    /// Nothing (another channel of the request had messages).
    No,
    /// A [`Waiter`] on this channel alone; counted if true.
    Alone(bool),
    /// This channel, at this place in the request, joins the [`Joint`]
    /// (made if none); counted if true.
    Among(&'j mut Option<Joint<P>>, usize, bool),
}

/// Marks a waiter's key as not counted in `waiting`.
const UNCOUNTED: u64 = 1 << 63;
/// Marks a [`Joint`] waiter's number.
const JOINT: u64 = 1 << 62;

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome<P> {
    /// A message was published.
    Message(Arc<Message<P>>),
    /// The timeout passed; carries the channel's last sequence.
    Timeout(u64),
    /// The channel was deleted.
    Deleted,
    /// The hub is closing; carries the channel's last sequence.
    Shutdown(u64),
    /// Cache mode: the copy was dropped ([`Hub::reset`]); read from the source.
    Reset,
}

/// A subscriber waiting for the next message on a channel. Dropping it removes it
/// from the channel at once.
#[derive(Debug)]
pub struct Waiter<P: Payload> {
    rx: oneshot::Receiver<Wake<P>>,
    hub: Arc<Hub<P>>,
    channel: Arc<str>,
    key: u64,
    /// Where the wait reads after.
    pub after: u64,
    /// Messages after `since` were no longer retained when the wait began.
    pub gap: bool,
}

impl<P: Payload> Waiter<P> {
    /// Waits for a message, the timeout, deletion, a reset or shutdown.
    pub fn wait(self, timeout: Duration) -> Wait<P> {
        Wait {
            waiter: self,
            sleep: tokio::time::sleep(timeout),
        }
    }
}

pin_project_lite::pin_project! {
    /// A [`Waiter`] waiting, with its timeout. Written out by hand rather than
    /// as an `async fn`: every parked subscriber holds one, and this is as small
    /// as it gets.
    #[derive(Debug)]
    pub struct Wait<P: Payload> {
        waiter: Waiter<P>,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl<P: Payload> Future for Wait<P> {
    type Output = Outcome<P>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> TaskPoll<Outcome<P>> {
        let this = self.project();
        if let TaskPoll::Ready(outcome) = this.waiter.poll_woken(cx) {
            return TaskPoll::Ready(outcome);
        }
        let waiter = &*this.waiter;
        this.sleep
            .poll(cx)
            .map(|()| Outcome::Timeout(waiter.hub.last_seq(&waiter.channel)))
    }
}

impl<P: Payload> Waiter<P> {
    /// Whether something woke this waiter: a message, deletion, a reset or
    /// shutdown (never a timeout, which is its caller's).
    fn poll_woken(&mut self, cx: &mut Context<'_>) -> TaskPoll<Outcome<P>> {
        let woken = std::task::ready!(Pin::new(&mut self.rx).poll(cx)).ok();
        TaskPoll::Ready(Wake::outcome(woken, || self.hub.last_seq(&self.channel)))
    }
}

impl<P: Payload> Drop for Waiter<P> {
    fn drop(&mut self) {
        self.hub.state().take_off(&self.channel, self.key);
    }
}

/// A subscriber waiting for the next message on any of several channels:
/// one wake, from whichever has a message first, so a poll on several
/// channels costs one registration per channel and one sender. Dropping it
/// (or being woken) takes it off every channel at once.
#[derive(Debug)]
pub struct Joint<P: Payload> {
    rx: oneshot::Receiver<(usize, Wake<P>)>,
    hub: Arc<Hub<P>>,
    key: u64,
    /// Still on its channels.
    joined: bool,
}

impl<P: Payload> Joint<P> {
    /// Waits for a message on any channel, or deletion, a reset or
    /// shutdown (with the place of the channel that had it), or `timeout`
    /// (`None`); then leaves every channel.
    pub async fn wait(mut self, timeout: Duration) -> Option<(usize, Outcome<P>)> {
        let woken = tokio::time::timeout(timeout, &mut self.rx).await.ok();
        let outcome = woken.map(|woken| {
            let (place, wake) = woken.map_or((0, None), |(place, wake)| (place, Some(wake)));
            (place, Wake::outcome(wake, || self.last_seq(place)))
        });
        self.hub.state().leave(self.key);
        self.joined = false;
        outcome
    }

    /// The last sequence of the channel at `place`.
    fn last_seq(&self, place: usize) -> u64 {
        let channel = self.hub.state().joints.get(&self.key).and_then(|j| {
            let (_, name, _) = j.channels.iter().find(|(p, ..)| *p == place)?;
            Some(name.clone())
        });
        channel.map_or(0, |name| self.hub.last_seq(&name))
    }
}

impl<P: Payload> Drop for Joint<P> {
    fn drop(&mut self) {
        if self.joined {
            self.hub.state().leave(self.key);
        }
    }
}

impl<P: Payload> State<P> {
    /// Takes the waiter `key` off `channel`, and frees the channel if that
    /// leaves it idle.
    fn take_off(&mut self, channel: &str, key: u64) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        let removed = match key & JOINT {
            0 => ch.waiters.remove(&key).is_some(),
            _ => ch.joiners.remove(&key),
        };
        if !removed {
            return;
        }
        if key & UNCOUNTED == 0 {
            ch.counted -= 1;
            self.tally.waiting -= 1;
        }
        if ch.is_idle() {
            self.remove(channel);
        }
    }

    /// Takes the joint waiter `key` off every channel it waits on.
    fn leave(&mut self, key: u64) {
        if let Some(joined) = self.joints.remove(&key) {
            for (_, channel, key) in joined.channels {
                self.take_off(&channel, key);
            }
        }
    }

    /// The senders of the joint waiters `joiners` of `channel` that no
    /// other channel woke yet, each with the place of `channel` in its
    /// request.
    fn joint_senders(&mut self, joiners: &Joiners, channel: &str) -> Vec<(JointSender<P>, usize)> {
        let joints = &mut self.joints;
        joiners
            .iter()
            .filter_map(|key| {
                let joined = joints.get_mut(&(key & !UNCOUNTED))?;
                let (place, ..) = joined.channels.iter().find(|(_, c, _)| **c == *channel)?;
                Some((joined.tx.take()?, *place))
            })
            .collect()
    }
}

/// An open event stream: the missed history, then every new message.
#[derive(Debug)]
pub struct Stream<P: Payload> {
    /// Messages after `since` that were in the history, oldest first.
    pub backlog: Vec<Arc<Message<P>>>,
    /// Some messages after `since` were no longer retained.
    pub gap: bool,
    /// New messages as they come; closed when the channel is deleted or the hub
    /// closes or resets, lagged when the reader falls too far behind.
    pub live: broadcast::Receiver<Arc<Message<P>>>,
    /// Live messages up to this sequence were already read (a backlog read
    /// from elsewhere after subscribing can overlap them).
    pub after: u64,
    _guard: StreamGuard<P>,
}

/// Counts an open stream until dropped.
#[derive(Debug)]
pub struct StreamGuard<P: Payload> {
    hub: Arc<Hub<P>>,
    /// The channel a [`Stream`] reads (its receiver, dropped first, kept it).
    channel: Option<Arc<str>>,
}

impl<P: Payload> Drop for StreamGuard<P> {
    fn drop(&mut self) {
        let mut state = self.hub.state();
        state.tally.streams -= 1;
        // Fields drop in order, so the receiver is already gone.
        if let Some(channel) = &self.channel {
            state.free_if_idle(channel);
        }
    }
}

/// A channel's state, for `/channels/C`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Waiting subscribers plus open streams.
    pub subscribers: usize,
    /// Retained messages.
    pub messages: usize,
    /// The last sequence (0: none known).
    pub last_seq: u64,
}

/// The hub's gauges and counters.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Long-poll subscribers waiting.
    pub waiting: usize,
    /// Open event streams.
    pub streams: usize,
    /// Channels held.
    pub channels: usize,
    /// Bytes held by the histories' messages, with their encodings.
    pub history_bytes: usize,
    /// Messages held in histories.
    pub messages: usize,
    /// Bytes counted against `max_bytes`: `history_bytes`, the channels and
    /// `outside_bytes`.
    pub memory_bytes: usize,
    /// Bytes held outside the hub, counted against `max_bytes`.
    pub outside_bytes: usize,
    /// Messages evicted to stay within `max_bytes`.
    pub evicted: u64,
    /// Deliveries (one per subscriber per message).
    pub delivered: u64,
}

/// What a channel costs with no message: its state, its slot in the channel
/// map (kept at most half full) and in the sweep queue, and its name.
fn channel_cost<P>() -> usize {
    2 * std::mem::size_of::<(Arc<str>, Channel<P>)>() + 64 + MAX_NAME_ESTIMATE
}

/// A channel name's allocation, as counted (names are short).
const MAX_NAME_ESTIMATE: usize = 48;

/// The channel `name`, made if it is not held (within `max_channels`).
fn channel_in<'a, P: Payload>(
    channels: &'a mut Channels<P>,
    freed: &mut Freed,
    name: &str,
    config: &Config,
) -> Result<&'a mut Channel<P>, Refused> {
    let full = config.max_channels > 0 && channels.len() >= config.max_channels;
    match channels.entry_ref(name) {
        hashbrown::hash_map::EntryRef::Occupied(held) => Ok(held.into_mut()),
        hashbrown::hash_map::EntryRef::Vacant(_) if full => Err(Refused::Channels),
        hashbrown::hash_map::EntryRef::Vacant(slot) => {
            let name: Arc<str> = name.into();
            let floor = freed.take(&name);
            Ok(slot.insert_with_key(name.clone(), Channel::new(name, floor)))
        }
    }
}

impl<P: Payload> State<P> {
    /// Removes `name` if it holds no message, waiter or stream.
    fn free_if_idle(&mut self, name: &str) {
        if self.channels.get(name).is_some_and(Channel::is_idle) {
            self.remove(name);
        }
    }

    /// Forgets a channel, remembering its last sequence for clients that resume later.
    fn remove(&mut self, name: &str) -> Option<Channel<P>> {
        let ch = self.channels.remove(name)?;
        self.freed.record(ch.name.clone(), ch.last_seq);
        self.tally.waiting -= ch.counted;
        self.held -= ch.held();
        Some(ch)
    }

    /// Evicts the oldest messages across channels until `incoming` more bytes
    /// fit within `max` (with the `metered` bytes held beside the messages);
    /// returns how many it evicted, or `None` if no more can go and they still
    /// do not fit.
    fn make_room(&mut self, max: usize, metered: usize, incoming: usize) -> Option<u64> {
        if metered + incoming > max {
            // Not even an empty history would make room: evict nothing.
            return None;
        }
        let mut evicted = 0;
        while self.used(metered) + incoming > max {
            let (name, seq) = self.order.pop_front()?;
            let Some(ch) = self.channels.get_mut(&name) else {
                continue;
            };
            if ch.history.front().is_none_or(|m| m.seq != seq) {
                continue;
            }
            if let Some(oldest) = ch.history.pop_front() {
                ch.evicted = ch.evicted.max(oldest.seq);
                self.held -= Held::of(&oldest);
                evicted += 1;
            }
            if ch.is_idle() {
                self.remove(&name);
            }
        }
        Some(evicted)
    }

    /// Bytes counted against `max_bytes`: the messages, the `metered` bytes
    /// (what they grew by, and what is held outside the hub), and the
    /// channels holding them.
    fn used(&self, metered: usize) -> usize {
        self.held.bytes + metered + self.channels.len() * channel_cost::<P>() + self.keys.bytes
    }

    /// Notes a message kept in `channel`'s history, in publish order.
    fn keep_order(&mut self, channel: &Arc<str>, seq: u64) {
        self.order.push_back((channel.clone(), seq));
        if self.order.len() > 2 * self.held.messages + 1024 {
            let channels = &self.channels;
            self.order.retain(|(name, seq)| {
                channels
                    .get(name)
                    .and_then(|ch| ch.history.front())
                    .is_some_and(|front| front.seq <= *seq)
            });
        }
    }
}

impl<P: Payload> Hub<P> {
    /// An empty hub.
    pub fn new(config: Config) -> Arc<Hub<P>> {
        Arc::new(Hub {
            config,
            state: Mutex::new(State {
                channels: Channels::default(),
                seq: 0,
                tally: Tally::default(),
                joints: Joints::default(),
                held: Held::default(),
                order: VecDeque::new(),
                freed: Freed::default(),
                due: BinaryHeap::new(),
                keys: Keys::default(),
                closed: false,
            }),
            delivered: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            meter: Meter::default(),
            outside: Meter::default(),
        })
    }

    /// The bound on bytes held (0: none).
    pub fn max_bytes(&self) -> usize {
        self.config.max_bytes
    }

    /// Where payloads count what they come to hold after they are made.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Where what is held outside the hub against its bound is counted
    /// (what the server remembers for clients, such as verified tokens).
    pub fn outside(&self) -> &Meter {
        &self.outside
    }

    /// The bytes both meters count.
    fn metered(&self) -> usize {
        self.meter.bytes() + self.outside.bytes()
    }

    fn state(&self) -> MutexGuard<'_, State<P>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) -> Result<MutexGuard<'_, State<P>>, Refused> {
        let state = self.state();
        if state.closed {
            return Err(Refused::Closed);
        }
        Ok(state)
    }

    /// Starts a long-poll on `channel` from `since`: at most `limit` retained
    /// messages at once, or a [`Waiter`] for the next one.
    ///
    /// A `since` below what the channel still holds (trimmed, or from before the
    /// channel was freed) or not of this hub is a gap: the answer starts at the
    /// oldest retained message and says so. In cache mode a `since` the copy does
    /// not cover is a [`Poll::Miss`] instead.
    pub fn poll(
        self: &Arc<Self>,
        channel: &str,
        since: Since,
        limit: usize,
    ) -> Result<Poll<P>, Refused> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        match self.start(state, channel, since, limit, Register::Alone(true)) {
            Ok((_, Some(waiter))) => Ok(Poll::Wait(waiter)),
            Ok((Start::Read { messages, gap, .. }, None)) => Ok(Poll::Ready { messages, gap }),
            Ok((Start::Miss, None)) => Ok(Poll::Miss),
            Err(refused) => {
                state.free_if_idle(channel);
                Err(refused)
            }
        }
    }

    /// Starts a long-poll on several channels at once, each from its own
    /// `since`, under one lock: what each holds after its start (at most
    /// `limit` each) or, when none holds anything, one [`Joint`] waiter on
    /// all of them (counted once as a waiting subscriber if `count`). In
    /// cache mode a channel the copy does not cover is a [`Start::Miss`]
    /// and is not waited on.
    pub fn poll_many<S: AsRef<str>>(
        self: &Arc<Self>,
        channels: &[(S, Since)],
        limit: usize,
        count: bool,
    ) -> Result<Many<P>, Refused> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        let mut starts = Vec::with_capacity(channels.len());
        let mut joint = None;
        // Each channel joins the waiter as it is read, until one has
        // messages, so that a poll that waits finds each channel once.
        let mut ready = false;
        let mut refused = None;
        for (i, (channel, since)) in channels.iter().enumerate() {
            // Counted once: on the first channel it waits on.
            let counted = count && joint.is_none();
            let register = match ready {
                false => Register::Among(&mut joint, i, counted),
                true => Register::No,
            };
            match self.start(state, channel.as_ref(), *since, limit, register) {
                Ok((start, _)) => {
                    ready |= matches!(&start, Start::Read { messages, .. } if !messages.is_empty());
                    starts.push(start);
                }
                Err(err) => {
                    refused = Some(err);
                    break;
                }
            }
        }
        if ready || refused.is_some() {
            // Answered at once, or refused: nothing waits, and the channels
            // made only for this poll go again.
            if let Some(mut joint) = joint.take() {
                state.leave(joint.key);
                joint.joined = false;
            }
            for (channel, _) in channels {
                state.free_if_idle(channel.as_ref());
            }
        }
        match refused {
            Some(refused) => Err(refused),
            None => Ok(Many { starts, joint }),
        }
    }

    /// Where a long-poll on `channel` from `since` starts, and what it
    /// reads; when it reads nothing, it registers as `register` says.
    fn start(
        self: &Arc<Self>,
        state: &mut State<P>,
        channel: &str,
        since: Since,
        limit: usize,
        register: Register<'_, P>,
    ) -> Result<(Start<P>, Option<Waiter<P>>), Refused> {
        let now = Instant::now();
        let newest = state.seq;
        let State {
            channels,
            freed,
            due,
            held,
            tally,
            joints,
            ..
        } = state;
        let ch = match self.config.mode {
            Mode::Source => channel_in(channels, freed, channel, &self.config)?,
            Mode::Cache { .. } => match channels.get_mut(channel) {
                Some(ch) if ch.covered.is_some() => ch,
                _ => return Ok((Start::Miss, None)),
            },
        };
        *held -= ch.refresh(due, &self.config, now);
        let (after, gap) = match (self.config.mode, ch.covered) {
            (Mode::Cache { .. }, Some(covered)) => match since {
                Since::Next => (ch.last_seq, false),
                Since::Id(x) if x >= covered && x >= ch.evicted && x <= ch.last_seq => (x, false),
                _ => return Ok((Start::Miss, None)),
            },
            _ => since.start(ch.last_seq, ch.evicted, newest),
        };
        ch.visited = now;
        // What is missing below the history is reported as the gap; a
        // reader resuming from here misses nothing more.
        let from = after.max(ch.evicted);
        let messages = ch.after(after, limit);
        let waiter = match register {
            _ if !messages.is_empty() => None,
            Register::No => None,
            Register::Alone(count) => Some(self.enqueue(ch, tally, from, gap, count)?),
            Register::Among(joint, place, count) => {
                self.join(ch, tally, joints, joint, place, count)?;
                None
            }
        };
        Ok((
            Start::Read {
                from,
                gap,
                messages,
            },
            waiter,
        ))
    }

    /// Registers a waiter on `channel` for the next message, whatever the
    /// history holds (a cache's caller reads the history from the source);
    /// counted as a waiting subscriber if `count`.
    pub fn wait(self: &Arc<Self>, channel: &str, count: bool) -> Result<Waiter<P>, Refused> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        let ch = channel_in(&mut state.channels, &mut state.freed, channel, &self.config)?;
        ch.visited = Instant::now();
        let after = ch.last_seq;
        let waiter = self.enqueue(ch, &mut state.tally, after, false, count);
        if waiter.is_err() {
            state.free_if_idle(channel);
        }
        waiter
    }

    /// Cache mode: `channel`, at `place` in a request, joins `joint` (made
    /// if none), whatever the history holds (the caller reads it from the
    /// source); counted as a waiting subscriber if `count`.
    pub fn wait_among(
        self: &Arc<Self>,
        joint: &mut Option<Joint<P>>,
        place: usize,
        channel: &str,
        count: bool,
    ) -> Result<(), Refused> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        let ch = channel_in(&mut state.channels, &mut state.freed, channel, &self.config)?;
        ch.visited = Instant::now();
        let joined = self.join(ch, &mut state.tally, &mut state.joints, joint, place, count);
        if joined.is_err() {
            state.free_if_idle(channel);
        }
        joined
    }

    /// Puts `ch`, at `place` in a request, in `joint` (made if none),
    /// within `max_subscribers`; counted as a waiting subscriber if `count`.
    fn join(
        self: &Arc<Self>,
        ch: &mut Channel<P>,
        tally: &mut Tally,
        joints: &mut Joints<P>,
        joint: &mut Option<Joint<P>>,
        place: usize,
        count: bool,
    ) -> Result<(), Refused> {
        if count && tally.full(self.config.max_subscribers) {
            return Err(Refused::Subscribers);
        }
        let joint = joint.get_or_insert_with(|| {
            let (tx, rx) = oneshot::channel();
            let key = tally.next_waiter | JOINT;
            tally.next_waiter += 1;
            let channels = Vec::with_capacity(4);
            joints.insert(
                key,
                Joined {
                    tx: Some(tx),
                    channels,
                },
            );
            Joint {
                rx,
                hub: self.clone(),
                key,
                joined: true,
            }
        });
        // Only leaving drops the record, and a joint that left joins no more.
        let Some(joined) = joints.get_mut(&joint.key) else {
            return Ok(());
        };
        let key = joint.key | if count { 0 } else { UNCOUNTED };
        ch.joiners.insert(key);
        if count {
            ch.counted += 1;
            tally.waiting += 1;
        }
        joined.channels.push((place, ch.name.clone(), key));
        Ok(())
    }

    /// Puts a waiter on `ch`, within `max_subscribers`; counted as a
    /// waiting subscriber if `count`.
    fn enqueue(
        self: &Arc<Self>,
        ch: &mut Channel<P>,
        tally: &mut Tally,
        after: u64,
        gap: bool,
        count: bool,
    ) -> Result<Waiter<P>, Refused> {
        if count && tally.full(self.config.max_subscribers) {
            return Err(Refused::Subscribers);
        }
        let (tx, rx) = oneshot::channel();
        let key = tally.next_waiter | if count { 0 } else { UNCOUNTED };
        tally.next_waiter += 1;
        ch.waiters.insert(key, tx);
        if count {
            ch.counted += 1;
            tally.waiting += 1;
        }
        Ok(Waiter {
            rx,
            hub: self.clone(),
            channel: ch.name.clone(),
            key,
            after,
            gap,
        })
    }

    /// Cache mode: this instance has every message of `channel` after `last`
    /// (or will get it by [`Hub::deliver`]); polls after it are answered here.
    pub fn cover_from(&self, channel: &str, last: u64) {
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(ch) = state.channels.get_mut(channel) else {
            return;
        };
        if ch.covered.is_none() {
            ch.covered = Some(last);
            ch.last_seq = ch.last_seq.max(last);
            ch.visited = Instant::now();
            let at = ch.next_due(&self.config);
            ch.schedule(&mut state.due, at);
        }
    }

    /// Opens an event stream on `channel` from `since`.
    pub fn stream(self: &Arc<Self>, channel: &str, since: Since) -> Result<Stream<P>, Refused> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        let max = self.config.max_subscribers;
        if state.tally.full(max) {
            return Err(Refused::Subscribers);
        }
        let now = Instant::now();
        let newest = state.seq;
        let ch = channel_in(&mut state.channels, &mut state.freed, channel, &self.config)?;
        state.held -= ch.refresh(&mut state.due, &self.config, now);
        ch.visited = now;
        let name = ch.name.clone();
        let live = ch
            .live
            .get_or_insert_with(|| broadcast::channel(STREAM_BACKLOG).0)
            .subscribe();
        let (after, gap) = since.start(ch.last_seq, ch.evicted, newest);
        let backlog = ch.after(after, usize::MAX);
        state.tally.streams += 1;
        Ok(Stream {
            after: backlog.last().map_or(after, |m| m.seq),
            backlog,
            gap,
            live,
            _guard: StreamGuard {
                hub: self.clone(),
                channel: Some(name),
            },
        })
    }

    /// Counts a stream that reads by long-polls (an event stream on several
    /// channels) as open, within `max_subscribers`, until the guard is dropped.
    pub fn count_stream(self: &Arc<Self>) -> Result<StreamGuard<P>, Refused> {
        let mut state = self.open()?;
        let max = self.config.max_subscribers;
        if state.tally.full(max) {
            return Err(Refused::Subscribers);
        }
        state.tally.streams += 1;
        Ok(StreamGuard {
            hub: self.clone(),
            channel: None,
        })
    }

    /// Publishes on `channel` the payload `make` builds for the new sequence:
    /// appends it to the history and hands it to every waiter and stream.
    /// Returns it and how many got it.
    pub fn publish(
        &self,
        channel: &str,
        make: impl FnOnce(u64) -> P,
    ) -> Result<(Arc<Message<P>>, usize), Refused> {
        let state = self.open()?;
        self.publish_in(state, channel, None, make)
    }

    /// [`Hub::publish`] under an idempotency key: if the key was used on
    /// this channel within the window, nothing is published, and the first
    /// publish's sequence is returned if it carried the same `print`.
    pub fn publish_once(
        &self,
        channel: &str,
        key: &str,
        print: Fingerprint,
        make: impl FnOnce(u64) -> P,
    ) -> Result<Published<P>, Refused> {
        let state = self.open()?;
        let name = Keys::name(channel, key);
        let window = self.config.idempotency_window;
        match state.keys.get(&name, window, Instant::now()) {
            Some((seq, first)) if first == print => return Ok(Published::Replayed(seq)),
            Some(_) => return Ok(Published::Conflict),
            None => {}
        }
        let (message, delivered) = self.publish_in(state, channel, Some((name, print)), make)?;
        Ok(Published::New(message, delivered))
    }

    fn publish_in(
        &self,
        mut state: MutexGuard<'_, State<P>>,
        channel: &str,
        key: Option<(String, Fingerprint)>,
        make: impl FnOnce(u64) -> P,
    ) -> Result<(Arc<Message<P>>, usize), Refused> {
        let seq = state.seq + 1;
        let message = Message::new(seq, make(seq));
        // Room first: evicting may free the channel itself.
        let incoming = message.payload.size() + key.as_ref().map_or(0, |(k, _)| Keys::cost(k));
        if !self.fit_in(&mut state, incoming) {
            return Err(Refused::Memory);
        }
        let state_ref = &mut *state;
        channel_in(
            &mut state_ref.channels,
            &mut state_ref.freed,
            channel,
            &self.config,
        )?;
        state.seq = seq;
        if let Some((name, print)) = key {
            state.keys.insert(name, seq, print, message.at);
        }
        Ok(self.append(state, channel, message))
    }

    /// Cache mode: hands a message that came from the source to the waiters and
    /// streams on `channel`, and keeps it in the channel's copy. Returns how many
    /// got it.
    pub fn deliver(&self, channel: &str, message: Arc<Message<P>>) -> usize {
        let mut state = self.state();
        if !state.channels.contains_key(channel) {
            return 0;
        }
        // A copy: what cannot be made room for is read from the source.
        self.fit_in(&mut state, message.payload.size());
        self.append(state, channel, message).1
    }

    fn append(
        &self,
        mut state: MutexGuard<'_, State<P>>,
        channel: &str,
        message: Arc<Message<P>>,
    ) -> (Arc<Message<P>>, usize) {
        let fields = &mut *state;
        let Some(ch) = fields.channels.get_mut(channel) else {
            return (message, 0);
        };
        let mut kept = None;
        if message.seq > ch.last_seq {
            let freed = ch.append(&message, &self.config);
            let at = ch.next_due(&self.config);
            ch.schedule(&mut fields.due, at);
            fields.held += Held::of(&message);
            fields.held -= freed;
            kept = (self.config.max_bytes > 0).then(|| ch.name.clone());
        }
        let waiters = std::mem::take(&mut ch.waiters);
        let joiners = std::mem::take(&mut ch.joiners);
        let streams = ch
            .live
            .as_ref()
            .and_then(|tx| tx.send(message.clone()).ok())
            .unwrap_or(0);
        fields.tally.waiting -= std::mem::take(&mut ch.counted);
        let idle = ch.is_idle();
        if let Some(name) = kept {
            state.keep_order(&name, message.seq);
        }
        if idle {
            state.remove(channel);
        }
        // A joint waiter's sender is taken here, under the lock: whichever
        // of its channels has a message first wakes it, and only that one.
        let joints = match joiners.is_empty() {
            true => Vec::new(),
            false => state.joint_senders(&joiners, channel),
        };
        drop(state);

        let mut delivered = streams;
        for tx in waiters.into_values() {
            if tx.send(Wake::Message(message.clone())).is_ok() {
                delivered += 1;
            }
        }
        for (tx, place) in joints {
            if tx.send((place, Wake::Message(message.clone()))).is_ok() {
                delivered += 1;
            }
        }
        self.delivered.fetch_add(delivered as u64, Relaxed);
        (message, delivered)
    }

    /// Whether `channel` is held here.
    pub fn has_channel(&self, channel: &str) -> bool {
        self.state().channels.contains_key(channel)
    }

    /// Drops a channel and its history; its waiters get [`Outcome::Deleted`] and
    /// its streams end. A later reader from before it learns of a gap. Returns
    /// whether the channel was held.
    pub fn delete(&self, channel: &str) -> bool {
        let mut state = self.state();
        let Some(ch) = state.remove(channel) else {
            return false;
        };
        let joints = state.joint_senders(&ch.joiners, channel);
        drop(state);
        for tx in ch.waiters.into_values() {
            let _ = tx.send(Wake::Deleted);
        }
        for (tx, place) in joints {
            let _ = tx.send((place, Wake::Deleted));
        }
        true
    }

    /// The channel's last sequence: what to read after to get only new messages.
    pub fn last_seq(&self, channel: &str) -> u64 {
        let state = self.state();
        match state.channels.get(channel) {
            Some(ch) => ch.last_seq,
            None => state.freed.peek(channel),
        }
    }

    /// Subscribers, retained messages and last sequence of a channel.
    pub fn info(&self, channel: &str) -> Info {
        let state = self.state();
        let now = Instant::now();
        match state.channels.get(channel) {
            Some(ch) => {
                let streams = ch.live.as_ref().map_or(0, |tx| tx.receiver_count());
                let fresh = ch
                    .history
                    .iter()
                    .filter(|m| now.saturating_duration_since(m.at) < self.config.history_age)
                    .count();
                Info {
                    subscribers: ch.waiters.len() + ch.joiners.len() + streams,
                    messages: fresh,
                    last_seq: ch.last_seq,
                }
            }
            None => Info {
                subscribers: 0,
                messages: 0,
                last_seq: state.freed.peek(channel),
            },
        }
    }

    /// Drops expired messages (and, in cache mode, copies nobody has used for a
    /// while) from the channels that are due, and frees those left idle.
    /// Returns how many channels it looked at.
    pub fn sweep(&self) -> usize {
        let mut state = self.state();
        let now = Instant::now();
        let mut looked = 0;
        while let Some(Reverse((at, _))) = state.due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, name))) = state.due.pop() else {
                break;
            };
            let Some(ch) = state.channels.get_mut(&name) else {
                continue;
            };
            if ch.scheduled != Some(at) {
                continue;
            }
            looked += 1;
            ch.scheduled = None;
            let mut freed = ch.trim(&self.config, now);
            if let Mode::Cache { idle } = self.config.mode
                && !ch.listened()
                && now.saturating_duration_since(ch.visited) >= idle
            {
                freed += ch.held();
                ch.history.clear();
                ch.covered = None;
            }
            let at = ch.next_due(&self.config);
            let idle = ch.is_idle();
            let fields = &mut *state;
            if let Some(ch) = fields.channels.get_mut(&name) {
                ch.schedule(&mut fields.due, at);
            }
            fields.held -= freed;
            if idle {
                state.remove(&name);
            }
        }
        state.keys.expire(self.config.idempotency_window, now);
        self.fit_in(&mut state, 0);
        // Entries of channels removed before they were due are skipped when
        // popped; rebuild the queue if they ever outnumber the live ones.
        if state.due.len() > 2 * state.channels.len() + 1024 {
            let due = state
                .channels
                .values()
                .filter_map(|c| Some(Reverse((c.scheduled?, c.name.clone()))))
                .collect();
            state.due = due;
        }
        looked
    }

    /// Cache mode, after the link to the source came back: every waiter is woken
    /// with [`Outcome::Reset`], every stream ends and every copy is dropped, so
    /// each client reads what it missed from the source.
    pub fn reset(&self) {
        self.wake_all(
            || Wake::Reset,
            |state| {
                for ch in state.channels.values_mut() {
                    ch.covered = None;
                    ch.history.clear();
                }
                state.held = Held::default();
                state.order.clear();
            },
        );
    }

    /// Whether the hub is closed (shutting down).
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Closes the hub: every waiter is woken with [`Outcome::Shutdown`], every
    /// stream ends, and new requests are refused.
    pub fn close(&self) {
        self.wake_all(|| Wake::Shutdown, |state| state.closed = true);
    }

    fn wake_all(&self, wake: fn() -> Wake<P>, also: impl FnOnce(&mut State<P>)) {
        let mut state = self.state();
        also(&mut state);
        let mut waiters = Vec::new();
        for ch in state.channels.values_mut() {
            waiters.extend(std::mem::take(&mut ch.waiters).into_values());
            ch.counted = 0;
            ch.joiners = Joiners::default();
            ch.live = None;
        }
        state.tally.waiting = 0;
        // Joint waiters keep their record, to leave their channels by.
        let joints: Vec<_> = state
            .joints
            .values_mut()
            .filter_map(|j| j.tx.take())
            .collect();
        let idle: Vec<Arc<str>> = state
            .channels
            .values()
            .filter(|c| c.is_idle())
            .map(|c| c.name.clone())
            .collect();
        for name in idle {
            state.remove(&name);
        }
        drop(state);
        for tx in waiters {
            let _ = tx.send(wake());
        }
        for tx in joints {
            let _ = tx.send((0, wake()));
        }
    }

    /// Evicts the oldest messages until what the payloads grew by since the
    /// last publish (encodings made on first use) fits within `max_bytes`.
    pub fn fit(&self) {
        if self.config.max_bytes > 0 {
            self.fit_in(&mut self.state(), 0);
        }
    }

    /// Within `max_bytes` (if set), evicts the oldest messages until
    /// `incoming` more bytes fit, and counts what it evicted; returns whether
    /// they fit.
    fn fit_in(&self, state: &mut State<P>, incoming: usize) -> bool {
        if self.config.max_bytes == 0 {
            return true;
        }
        let evicted = state.make_room(self.config.max_bytes, self.metered(), incoming);
        self.evictions
            .fetch_add(evicted.unwrap_or_default(), Relaxed);
        evicted.is_some()
    }

    /// Gauges and counters for `/stats`.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.state();
        Snapshot {
            waiting: state.tally.waiting,
            streams: state.tally.streams,
            channels: state.channels.len(),
            history_bytes: state.held.bytes + self.meter.bytes(),
            memory_bytes: state.used(self.metered()),
            outside_bytes: self.outside.bytes(),
            messages: state.held.messages,
            evicted: self.evictions.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Payload for &'static str {
        fn size(&self) -> usize {
            self.len()
        }
    }

    fn hub(history: usize, age: u64) -> Arc<Hub<&'static str>> {
        Hub::new(Config {
            history,
            history_age: Duration::from_secs(age),
            max_channels: 0,
            max_subscribers: 0,
            max_bytes: 0,
            idempotency_window: Duration::from_secs(60),
            mode: Mode::Source,
        })
    }

    /// A hub bounded to `bytes` of messages held in `channels` channels.
    fn bounded(bytes: usize, channels: usize) -> Arc<Hub<&'static str>> {
        Hub::new(Config {
            history: 100,
            history_age: Duration::from_secs(300),
            max_channels: 0,
            max_subscribers: 0,
            max_bytes: bytes + channels * channel_cost::<&'static str>(),
            idempotency_window: Duration::from_secs(60),
            mode: Mode::Source,
        })
    }

    fn cache(idle: u64) -> Arc<Hub<&'static str>> {
        Hub::new(Config {
            history: 100,
            history_age: Duration::from_secs(300),
            max_channels: 0,
            max_subscribers: 0,
            max_bytes: 0,
            idempotency_window: Duration::from_secs(60),
            mode: Mode::Cache {
                idle: Duration::from_secs(idle),
            },
        })
    }

    fn ready(poll: Poll<&'static str>) -> (Vec<&'static str>, bool) {
        match poll {
            Poll::Ready { messages, gap } => (messages.iter().map(|m| m.payload).collect(), gap),
            other => panic!("not ready: {other:?}"),
        }
    }

    fn publish(hub: &Hub<&'static str>, channel: &str, data: &'static str) -> u64 {
        hub.publish(channel, |_| data).unwrap().0.seq
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_next_message_and_a_late_poll_finds_it_in_the_history() {
        let hub = hub(10, 60);
        let Poll::Wait(waiter) = hub.poll("c", Since::Next, 1).unwrap() else {
            panic!("nothing to read yet");
        };
        assert_eq!(hub.snapshot().waiting, 1);
        let (_, n) = hub.publish("c", |_| "one").unwrap();
        assert_eq!(n, 1);
        let Outcome::Message(m) = waiter.wait(Duration::from_secs(1)).await else {
            panic!("woken by the message");
        };
        assert_eq!(m.payload, "one");
        // Published between two polls: found by the next one.
        publish(&hub, "c", "two");
        assert_eq!(
            ready(hub.poll("c", Since::Id(m.seq), 10).unwrap()),
            (vec!["two"], false)
        );
        assert_eq!(hub.snapshot().waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_nothing_behind() {
        let hub = hub(10, 60);
        let waiters: Vec<_> = (0..3)
            .map(|_| hub.poll("c", Since::Next, 1).unwrap())
            .collect();
        assert_eq!(hub.snapshot().waiting, 3);
        assert_eq!(hub.snapshot().channels, 1);
        drop(waiters);
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 0));
        assert_eq!(hub.publish("c", |_| "x").unwrap().1, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_with_the_channel_last_sequence() {
        let hub = hub(10, 60);
        let seq = publish(&hub, "c", "a");
        let Poll::Wait(w) = hub.poll("c", Since::Id(seq), 1).unwrap() else {
            panic!("waits")
        };
        let start = Instant::now();
        assert!(matches!(w.wait(Duration::from_secs(5)).await, Outcome::Timeout(s) if s == seq));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn trimmed_history_is_a_gap_and_foreign_or_future_ids_start_from_the_oldest() {
        let hub = hub(2, 60);
        let first = publish(&hub, "c", "a");
        publish(&hub, "c", "b");
        publish(&hub, "c", "c");
        // The reader of "a" missed nothing; one from before it missed "a".
        assert_eq!(
            ready(hub.poll("c", Since::Id(first), 10).unwrap()),
            (vec!["b", "c"], false)
        );
        assert_eq!(
            ready(hub.poll("c", Since::Id(first - 1), 10).unwrap()),
            (vec!["b", "c"], true)
        );
        assert_eq!(
            ready(hub.poll("c", Since::Foreign, 10).unwrap()),
            (vec!["b", "c"], true)
        );
        assert_eq!(
            ready(hub.poll("c", Since::Id(999), 10).unwrap()),
            (vec!["b", "c"], true)
        );
        assert_eq!(
            ready(hub.poll("c", Since::Oldest, 1).unwrap()),
            (vec!["b"], false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn messages_expire_by_age_and_the_channel_is_freed_with_its_last_sequence() {
        let hub = hub(10, 5);
        let seq = publish(&hub, "c", "abc");
        assert_eq!(hub.snapshot().history_bytes, 3);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(hub.sweep(), 0, "nothing due yet");
        assert_eq!(hub.snapshot().channels, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(hub.sweep(), 1);
        let s = hub.snapshot();
        assert_eq!((s.channels, s.history_bytes), (0, 0));
        // A reader that had it resumes without a gap; one from before it has one.
        let Poll::Wait(w) = hub.poll("c", Since::Id(seq), 1).unwrap() else {
            panic!("waits")
        };
        assert!(!w.gap);
        drop(w);
        let Poll::Wait(w) = hub.poll("c", Since::Id(seq - 1), 1).unwrap() else {
            panic!("waits")
        };
        assert!(w.gap);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unrelated_freed_channel_never_makes_a_false_gap() {
        let hub = hub(10, 1);
        let seq = publish(&hub, "mine", "x");
        for _ in 0..5000 {
            publish(&hub, "other", "y");
            hub.delete("other");
        }
        for i in 0..300 {
            let name: &'static str = Box::leak(format!("o{i}").into_boxed_str());
            publish(&hub, name, "z");
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        hub.sweep();
        assert_eq!(hub.snapshot().channels, 0);
        let Poll::Wait(w) = hub.poll("mine", Since::Id(seq), 1).unwrap() else {
            panic!("waits")
        };
        assert!(!w.gap, "nothing was published on this channel after its id");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_looks_only_at_channels_that_are_due() {
        let hub = hub(10, 10);
        for i in 0..10_000 {
            let name: &'static str = Box::leak(format!("c{i}").into_boxed_str());
            publish(&hub, name, "m");
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        publish(&hub, "late", "m");
        assert_eq!(hub.sweep(), 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(hub.sweep(), 10_000);
        assert_eq!(hub.snapshot().channels, 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(hub.sweep(), 1);
        assert_eq!(hub.snapshot().channels, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn delete_wakes_waiters_and_a_reader_from_before_sees_a_gap() {
        let hub = hub(10, 60);
        let seq = publish(&hub, "c", "a");
        publish(&hub, "c", "b");
        let Poll::Wait(w) = hub.poll("c", Since::Next, 1).unwrap() else {
            panic!("waits")
        };
        assert!(hub.delete("c"));
        assert!(matches!(
            w.wait(Duration::from_secs(1)).await,
            Outcome::Deleted
        ));
        assert!(!hub.delete("c"));
        let Poll::Wait(w) = hub.poll("c", Since::Id(seq), 1).unwrap() else {
            panic!("waits")
        };
        assert!(w.gap, "b was deleted unread");
    }

    /// Two messages' fingerprints.
    const P1: Fingerprint = [1; 16];
    const P2: Fingerprint = [2; 16];

    #[tokio::test(start_paused = true)]
    async fn a_retried_key_publishes_nothing_within_its_window() {
        // hub(..) remembers keys for 60 s.
        let hub = hub(10, 300);
        let first = hub.publish_once("a", "k1", P1, |_| "m1").unwrap();
        let Published::New(m1, _) = first else {
            panic!("first publish replayed");
        };
        let w = hub.poll("a", Since::Id(m1.seq), 10).unwrap();
        assert!(matches!(
            hub.publish_once("a", "k1", P1, |_| "again"),
            Ok(Published::Replayed(seq)) if seq == m1.seq
        ));
        // The same key for another message is a conflict, not a replay.
        assert!(matches!(
            hub.publish_once("a", "k1", P2, |_| "other"),
            Ok(Published::Conflict)
        ));
        // Nothing was handed out or kept.
        let Poll::Wait(waiter) = w else {
            panic!("a replay woke the waiter");
        };
        assert!(matches!(
            waiter.wait(Duration::from_millis(10)).await,
            Outcome::Timeout(_)
        ));
        assert_eq!(hub.info("a").messages, 1);
        // Another key, or the same key on another channel, publishes.
        assert!(matches!(
            hub.publish_once("a", "k2", P2, |_| "m2"),
            Ok(Published::New(..))
        ));
        assert!(matches!(
            hub.publish_once("b", "k1", P2, |_| "b1"),
            Ok(Published::New(..))
        ));
        // Past the window the key is forgotten, and the sweep frees it.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            hub.publish_once("a", "k1", P1, |_| "x"),
            Ok(Published::Replayed(_))
        ));
        let held = hub.snapshot().memory_bytes;
        tokio::time::advance(Duration::from_secs(1)).await;
        hub.sweep();
        assert!(hub.snapshot().memory_bytes < held);
        assert!(matches!(
            hub.publish_once("a", "k1", P2, |_| "m3"),
            Ok(Published::New(..))
        ));
        assert_eq!(hub.info("a").messages, 3);
    }

    #[test]
    fn keys_past_the_bound_forget_the_oldest() {
        let hub = hub(1, 300);
        for i in 0..=MAX_KEYS {
            hub.publish_once("a", &i.to_string(), P1, |_| "m").unwrap();
        }
        assert!(matches!(
            hub.publish_once("a", "0", P1, |_| "m"),
            Ok(Published::New(..))
        ));
        let newest = MAX_KEYS.to_string();
        assert!(matches!(
            hub.publish_once("a", &newest, P1, |_| "m"),
            Ok(Published::Replayed(_))
        ));
        assert!(hub.state().keys.seen.len() <= MAX_KEYS);
    }

    #[tokio::test(start_paused = true)]
    async fn limits_refuse_and_leave_nothing_behind() {
        let hub: Arc<Hub<&'static str>> = Hub::new(Config {
            history: 10,
            history_age: Duration::from_secs(60),
            max_channels: 1,
            max_subscribers: 1,
            max_bytes: 0,
            idempotency_window: Duration::from_secs(60),
            mode: Mode::Source,
        });
        let _w = hub.poll("a", Since::Next, 1).unwrap();
        assert_eq!(
            hub.poll("a", Since::Next, 1).err(),
            Some(Refused::Subscribers)
        );
        assert_eq!(hub.publish("b", |_| "x").err(), Some(Refused::Channels));
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (1, 1));
        hub.close();
        assert_eq!(hub.publish("a", |_| "x").err(), Some(Refused::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn close_wakes_everyone_with_their_position() {
        let hub = hub(10, 60);
        let seq = publish(&hub, "c", "a");
        let Poll::Wait(w) = hub.poll("c", Since::Next, 1).unwrap() else {
            panic!("waits")
        };
        let mut stream = hub.stream("c", Since::Next).unwrap();
        hub.close();
        assert!(matches!(w.wait(Duration::from_secs(1)).await, Outcome::Shutdown(s) if s == seq));
        assert!(stream.live.recv().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_gets_its_backlog_then_live_messages() {
        let hub = hub(10, 60);
        let first = publish(&hub, "c", "a");
        publish(&hub, "c", "b");
        let mut stream = hub.stream("c", Since::Id(first)).unwrap();
        assert_eq!(stream.backlog.len(), 1);
        assert_eq!(hub.snapshot().streams, 1);
        publish(&hub, "c", "c");
        assert_eq!(stream.live.recv().await.unwrap().payload, "c");
        drop(stream);
        assert_eq!(hub.snapshot().streams, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_answers_only_what_it_covers() {
        let hub = cache(10);
        assert!(matches!(hub.poll("c", Since::Next, 1).unwrap(), Poll::Miss));
        let w = hub.wait("c", true).unwrap();
        hub.cover_from("c", 100);
        assert_eq!(hub.deliver("c", Message::new(101, "a")), 1);
        assert!(
            matches!(w.wait(Duration::from_secs(1)).await, Outcome::Message(m) if m.seq == 101)
        );
        assert_eq!(
            ready(hub.poll("c", Since::Id(100), 10).unwrap()),
            (vec!["a"], false)
        );
        assert!(matches!(
            hub.poll("c", Since::Id(99), 10).unwrap(),
            Poll::Miss
        ));
        assert!(matches!(
            hub.poll("c", Since::Oldest, 10).unwrap(),
            Poll::Miss
        ));
        hub.reset();
        assert!(matches!(
            hub.poll("c", Since::Id(100), 10).unwrap(),
            Poll::Miss
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_copy_in_use_is_kept_and_an_unused_one_dropped() {
        let hub = cache(10);
        drop(hub.wait("c", true).unwrap());
        let w = hub.wait("c", true).unwrap();
        hub.cover_from("c", 1);
        hub.deliver("c", Message::new(2, "a"));
        drop(w);
        // Answered from the copy every 3 s for 30 s, with no waiter ever queued.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(3)).await;
            hub.sweep();
            assert_eq!(
                ready(hub.poll("c", Since::Id(1), 10).unwrap()),
                (vec!["a"], false)
            );
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        hub.sweep();
        assert!(matches!(
            hub.poll("c", Since::Id(1), 10).unwrap(),
            Poll::Miss
        ));
        assert_eq!(hub.snapshot().channels, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_bound_evicts_the_oldest_messages_across_channels_first() {
        let hub = bounded(10, 2);
        let (a1, _) = hub.publish("a", |_| "aaa").unwrap();
        hub.publish("b", |_| "bbb").unwrap();
        hub.publish("a", |_| "ccc").unwrap();
        assert_eq!(hub.snapshot().history_bytes, 9);
        // 12 bytes would not fit: a's first message, the oldest of all, goes.
        hub.publish("b", |_| "ddd").unwrap();
        let s = hub.snapshot();
        assert_eq!((s.history_bytes, s.messages, s.evicted), (9, 3, 1));
        assert_eq!(
            ready(hub.poll("a", Since::Id(a1.seq - 1), 10).unwrap()),
            (vec!["ccc"], true),
            "a reader from before the evicted message learns of the gap"
        );
        assert_eq!(
            ready(hub.poll("a", Since::Id(a1.seq), 10).unwrap()),
            (vec!["ccc"], false)
        );
        assert_eq!(
            ready(hub.poll("b", Since::Oldest, 10).unwrap()).0,
            vec!["bbb", "ddd"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_evicted_whole_is_freed_and_its_readers_told_of_the_gap() {
        let hub = bounded(6, 2);
        let (a1, _) = hub.publish("a", |_| "aaa").unwrap();
        hub.publish("b", |_| "bbb").unwrap();
        hub.publish("b", |_| "ccc").unwrap();
        assert!(!hub.has_channel("a"));
        let Poll::Wait(w) = hub.poll("a", Since::Id(a1.seq - 1), 10).unwrap() else {
            panic!("a is empty now")
        };
        assert!(w.gap);
    }

    #[tokio::test(start_paused = true)]
    async fn what_eviction_cannot_make_room_for_is_refused() {
        let hub = bounded(6, 1);
        hub.publish("a", |_| "aaa").unwrap();
        let huge: &'static str = "x".repeat(hub.max_bytes() + 1).leak();
        assert_eq!(
            hub.publish("a", |_| huge).err(),
            Some(Refused::Memory),
            "larger than the bound"
        );
        assert_eq!(hub.snapshot().messages, 1, "and nothing evicted for it");
        // Bytes held outside the history (encodings still in use) that
        // eviction cannot free.
        hub.meter().add(hub.max_bytes());
        assert_eq!(hub.publish("b", |_| "bb").err(), Some(Refused::Memory));
        assert_eq!(hub.snapshot().messages, 1, "nothing evicted in vain");
        hub.meter().sub(hub.max_bytes());
        hub.publish("b", |_| "bb").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn growth_after_a_publish_is_evicted_by_the_next_sweep() {
        let hub = bounded(10, 1);
        hub.publish("a", |_| "aaa").unwrap();
        hub.publish("a", |_| "bbb").unwrap();
        // An encoding made on first use.
        hub.meter().add(6);
        assert_eq!(hub.snapshot().history_bytes, 12);
        hub.sweep();
        let s = hub.snapshot();
        assert_eq!((s.history_bytes, s.messages, s.evicted), (9, 1, 1));
    }

    fn seqs(many: &Many<&'static str>) -> Vec<(u64, bool, Vec<&'static str>)> {
        many.starts
            .iter()
            .map(|start| match start {
                Start::Read {
                    from,
                    gap,
                    messages,
                } => (*from, *gap, messages.iter().map(|m| m.payload).collect()),
                Start::Miss => panic!("no misses in a source hub"),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_on_several_channels_reads_each_from_its_own_start() {
        let hub = hub(10, 60);
        let a1 = publish(&hub, "a", "a1");
        publish(&hub, "b", "b1");
        let a2 = publish(&hub, "a", "a2");
        let channels = [
            ("a", Since::Id(a1)),
            ("b", Since::Next),
            ("c", Since::Oldest),
        ];
        let many = hub.poll_many(&channels, 10, true).unwrap();
        // a after a1; b from now (its last message); c empty, from the start.
        assert_eq!(
            seqs(&many),
            vec![
                (a1, false, vec!["a2"]),
                (2, false, vec![]),
                (0, false, vec![])
            ]
        );
        assert!(many.joint.is_none(), "a channel had messages: nobody waits");
        let s = hub.snapshot();
        assert_eq!(
            (s.waiting, s.channels),
            (0, 2),
            "c, made to be read, went again"
        );
        // A channel with messages after ones that had nothing: those gave
        // their waiters up, and what was made for them goes.
        let channels = [("x", Since::Next), ("y", Since::Next), ("a", Since::Id(a1))];
        let many = hub.poll_many(&channels, 10, true).unwrap();
        assert_eq!(seqs(&many)[2], (a1, false, vec!["a2"]));
        assert!(many.joint.is_none());
        drop(many);
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 2));
        // An id this hub never gave is a gap, read from the oldest.
        let many = hub.poll_many(&[("a", Since::Foreign)], 10, true).unwrap();
        assert_eq!(seqs(&many), vec![(0, true, vec!["a1", "a2"])]);
        assert!(a2 > a1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_on_several_channels_waits_on_each_and_counts_once() {
        let hub = hub(10, 60);
        let channels = [("a", Since::Next), ("b", Since::Next), ("c", Since::Next)];
        let joint = hub.poll_many(&channels, 10, true).unwrap().joint.unwrap();
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (1, 3));
        assert_eq!(hub.info("b").subscribers, 1);
        // A publish on the last channel wakes it, with that channel's place.
        let (_, delivered) = hub.publish("c", |_| "c1").unwrap();
        assert_eq!(delivered, 1);
        let Some((2, Outcome::Message(m))) = joint.wait(Duration::from_secs(1)).await else {
            panic!("woken by c1 on the third channel");
        };
        assert_eq!(m.payload, "c1");
        // Woken, it left every channel: those that hold nothing are freed.
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 1));
        assert_eq!(hub.info("a").subscribers, 0);

        // Two publishes before it runs: the first channel wakes it, once.
        let joint = hub.poll_many(&channels, 10, true).unwrap().joint.unwrap();
        assert_eq!(hub.publish("b", |_| "b1").unwrap().1, 1);
        assert_eq!(hub.publish("a", |_| "a1").unwrap().1, 0);
        let Some((1, Outcome::Message(m))) = joint.wait(Duration::from_secs(1)).await else {
            panic!("woken by b1");
        };
        assert_eq!(m.payload, "b1");

        // Nothing comes: the timeout, and nothing is left behind.
        let joint = hub.poll_many(&[("x", Since::Next), ("y", Since::Next)], 10, true);
        let woken = joint
            .unwrap()
            .joint
            .unwrap()
            .wait(Duration::from_secs(5))
            .await;
        assert!(woken.is_none());
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 3));

        // Dropped (the client left): gone from every channel.
        let joint = hub.poll_many(&channels, 10, true).unwrap().joint;
        assert_eq!(hub.snapshot().waiting, 1);
        drop(joint);
        assert_eq!(hub.snapshot().waiting, 0);
        assert_eq!(hub.publish("c", |_| "c2").unwrap().1, 0);

        // Uncounted waits (an event stream's) do not count at all.
        let joint = hub.poll_many(&channels, 10, false).unwrap().joint;
        assert!(joint.is_some());
        assert_eq!(hub.snapshot().waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_on_several_channels_learns_of_deletion_and_shutdown() {
        let hub = hub(10, 60);
        let channels = [("a", Since::Next), ("b", Since::Next)];
        let joint = hub.poll_many(&channels, 10, true).unwrap().joint.unwrap();
        assert!(hub.delete("b"));
        let woken = joint.wait(Duration::from_secs(1)).await;
        assert!(matches!(woken, Some((1, Outcome::Deleted))));
        assert_eq!(hub.snapshot().waiting, 0);

        let a1 = publish(&hub, "a", "a1");
        let joint = hub
            .poll_many(&[("b", Since::Next), ("a", Since::Id(a1))], 10, true)
            .unwrap()
            .joint
            .unwrap();
        hub.close();
        let woken = joint.wait(Duration::from_secs(1)).await;
        assert!(matches!(woken, Some((0, Outcome::Shutdown(0)))));
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_on_several_channels_over_the_subscriber_limit_leaves_nothing() {
        let hub: Arc<Hub<&'static str>> = Hub::new(Config {
            max_subscribers: 1,
            ..hub(10, 60).config.clone()
        });
        let _held = hub.poll_many(&[("x", Since::Next)], 10, true).unwrap();
        let refused = hub.poll_many(&[("a", Since::Next), ("b", Since::Next)], 10, true);
        assert_eq!(refused.err(), Some(Refused::Subscribers));
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (1, 1));
        // A stream read by polls counts against the same limit.
        assert_eq!(hub.count_stream().err(), Some(Refused::Subscribers));
        drop(_held);
        let guard = hub.count_stream().unwrap();
        assert_eq!(hub.snapshot().streams, 1);
        drop(guard);
        assert_eq!(hub.snapshot().streams, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_refused_on_a_later_channel_gives_up_the_earlier_waiters() {
        let hub: Arc<Hub<&'static str>> = Hub::new(Config {
            max_channels: 2,
            ..hub(10, 60).config.clone()
        });
        let _held = hub.poll_many(&[("x", Since::Next)], 10, true).unwrap();
        // a is made and waited on, then b is one channel too many.
        let refused = hub.poll_many(&[("a", Since::Next), ("b", Since::Next)], 10, true);
        assert_eq!(refused.err(), Some(Refused::Channels));
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (1, 1));
        let (_, delivered) = hub.publish("x", |_| "x1").unwrap();
        assert_eq!(delivered, 1, "only the held waiter was left");
    }
}
