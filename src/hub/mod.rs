//! The hub: the seed's ClientManager, done right, and nothing else.
//!
//! Per channel it keeps a bounded history and the waiting subscribers. A publish
//! appends to the history and wakes the waiters, so every subscriber that was
//! waiting gets the message, and one that polls a moment later with `since`
//! finds it in the history: nothing published between two polls is lost. A
//! waiter removes itself when its request goes away, so no dead subscriber is
//! ever kept. A subscription is a list of channels, one channel a list of one.
//!
//! It is pure: channels, waiters, history, sequence numbers and time. What a
//! message carries is the caller's type ([`Payload`]); no HTTP, no Redis, no
//! flags. In [`Mode::Source`] it is where messages live; in [`Mode::Cache`] it is
//! one instance's copy of channels that live elsewhere, filled by [`Hub::deliver`].
//!
//! One std `Mutex` guards all channels; it is never held across an `.await`, and a
//! publish hands the waiters their message after releasing it.
//!
//! | room          | what it holds                                              |
//! |---------------|------------------------------------------------------------|
//! | `message`     | messages, payloads and their weight, where a reader starts |
//! | `channel`     | a channel's history and listeners; freed channels' floors  |
//! | `poll`        | long-polls: their starts and the waiter a publish wakes    |
//! | `stream`      | event streams                                              |
//! | `keys`        | idempotency keys                                           |
//! | `bound`       | the memory bound and eviction                              |
//! | `sweep`       | expiry, driven by a queue of due times                     |
//! | this file     | the hub itself: publishing, deleting, closing, gauges      |

mod bound;
mod channel;
mod keys;
mod message;
mod poll;
mod stream;
mod sweep;

use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use channel::{Channels, Freed, channel_in};
use keys::Keys;
use message::Held;
use poll::{Joints, Wake};
use sweep::Due;

pub use channel::FREED_RECORDS;
pub use keys::{MAX_KEYS, Published};
pub use message::{Fingerprint, Message, Meter, Payload, Since};
pub use poll::{Clock, Fresh, Kept, Outcome, Start, Wait, Waiter};
pub use stream::{Following, STREAM_BACKLOG, Stream};

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

/// What a hub holds at most, and for how long: the one source of these
/// limits, which the store takes from the configuration as they are.
#[derive(Debug, Clone)]
pub struct Limits {
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
}

/// A message's copies, one per channel it is published on: inline for one.
type Copies<P> = smallvec::SmallVec<[Arc<Message<P>>; 1]>;

/// Channels, waiters and histories.
#[derive(Debug)]
pub struct Hub<P> {
    limits: Limits,
    mode: Mode,
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

impl<P: Payload> Hub<P> {
    /// An empty hub.
    pub fn new(limits: Limits, mode: Mode) -> Arc<Hub<P>> {
        Arc::new(Hub {
            limits,
            mode,
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
        self.limits.max_bytes
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
            let at = ch.next_due(&self.limits, self.mode);
            ch.schedule(&mut state.due, at);
        }
    }

    /// Publishes one message on every one of `channels` at once (all or
    /// none; one channel is a list of one), under one sequence: appends the
    /// payload `make` builds for it to each channel's history (each keeps
    /// its own copy) and hands it to every waiter and stream; a waiter on
    /// several of them is woken once. Returns the first channel's copy and
    /// how many got it.
    pub fn publish(
        &self,
        channels: &[&str],
        make: impl Fn(u64) -> P,
    ) -> Result<(Arc<Message<P>>, usize), Refused> {
        let state = self.open()?;
        self.publish_in(state, channels, None, make)
    }

    fn publish_in(
        &self,
        mut state: MutexGuard<'_, State<P>>,
        channels: &[&str],
        key: Option<(String, Fingerprint)>,
        make: impl Fn(u64) -> P,
    ) -> Result<(Arc<Message<P>>, usize), Refused> {
        let seq = state.seq + 1;
        let copies: Copies<P> = channels
            .iter()
            .map(|_| Message::new(seq, make(seq)))
            .collect();
        let Some(first) = copies.first().cloned() else {
            return Err(Refused::Channels);
        };
        // Room first: evicting may free the channels themselves.
        let key_cost = key.as_ref().map_or(0, |(k, _)| Keys::cost(k));
        let incoming = copies.iter().map(|m| m.payload.size()).sum::<usize>() + key_cost;
        if !self.fit_in(&mut state, incoming) {
            return Err(Refused::Memory);
        }
        let state_ref = &mut *state;
        for (i, channel) in channels.iter().enumerate() {
            if let Err(refused) = channel_in(
                &mut state_ref.channels,
                &mut state_ref.freed,
                channel,
                &self.limits,
            ) {
                // All or none: the channels made for it go again.
                for made in &channels[..i] {
                    state_ref.free_if_idle(made);
                }
                return Err(refused);
            }
        }
        state.seq = seq;
        if let Some((key, print)) = key {
            // Kept on the first channel, where a retry looks it up.
            let name = Keys::name(channels[0], &key);
            state.keys.insert(name, seq, print, first.at);
        }
        let delivered = self.hand_out(state, channels.iter().copied().zip(copies));
        Ok((first, delivered))
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
        self.hand_out(state, [(channel, message)])
    }

    /// Appends each message to its channel's history and hands it to the
    /// channel's streams, then, the lock released, wakes the waiters; how
    /// many got them.
    fn hand_out<'c>(
        &self,
        mut state: MutexGuard<'_, State<P>>,
        each: impl IntoIterator<Item = (&'c str, Arc<Message<P>>)>,
    ) -> usize {
        let mut delivered = 0;
        let mut wakes: smallvec::SmallVec<[_; 1]> = smallvec::SmallVec::new();
        for (channel, message) in each {
            let (streams, wake) = self.append_in(&mut state, channel, &message);
            delivered += streams;
            wakes.push((wake, message));
        }
        drop(state);
        for (wake, message) in wakes {
            delivered += wake.send(|| Wake::Message(message.clone()));
        }
        self.delivered.fetch_add(delivered as u64, Relaxed);
        delivered
    }

    /// Appends `message` to `channel`'s history and hands it to its
    /// streams; the waiters to wake once the lock is released.
    fn append_in(
        &self,
        state: &mut State<P>,
        channel: &str,
        message: &Arc<Message<P>>,
    ) -> (usize, poll::Wakes<P>) {
        let Some(ch) = state.channels.get_mut(channel) else {
            return (0, poll::Wakes::none());
        };
        let mut kept = None;
        if message.seq > ch.last_seq {
            let freed = ch.append(message, &self.limits);
            let at = ch.next_due(&self.limits, self.mode);
            ch.schedule(&mut state.due, at);
            state.held += Held::of(message);
            state.held -= freed;
            kept = (self.limits.max_bytes > 0).then(|| ch.name.clone());
        }
        let streams = ch
            .live
            .as_ref()
            .and_then(|tx| tx.send(message.clone()).ok())
            .unwrap_or(0);
        let wakes = state.take_waiters(channel);
        if let Some(name) = kept {
            state.keep_order(&name, message.seq);
        }
        state.free_if_idle(channel);
        (streams, wakes)
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
        if !state.channels.contains_key(channel) {
            return false;
        }
        let wakes = state.take_waiters(channel);
        state.remove(channel);
        drop(state);
        wakes.send(|| Wake::Deleted);
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
                    .filter(|m| now.saturating_duration_since(m.at) < self.limits.history_age)
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
        let wakes = state.take_all_waiters();
        for ch in state.channels.values_mut() {
            ch.live = None;
        }
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
        wakes.send(wake);
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
mod testing {
    //! What the rooms' tests share: hubs of `&'static str` payloads, and
    //! the shapes a one-channel poll comes to.
    pub(super) use super::poll::{Outcome, Start, Waiter};
    pub(super) use super::*;
    pub(super) use std::sync::Arc;
    pub(super) use std::time::Duration;

    impl Payload for &'static str {
        fn size(&self) -> usize {
            self.len()
        }
    }

    /// Limits that hold everything: 100 messages a channel for 300 s.
    pub(super) fn roomy() -> Limits {
        Limits {
            history: 100,
            history_age: Duration::from_secs(300),
            max_channels: 0,
            max_subscribers: 0,
            max_bytes: 0,
            idempotency_window: Duration::from_secs(60),
        }
    }

    pub(super) fn hub(history: usize, age: u64) -> Arc<Hub<&'static str>> {
        let limits = Limits {
            history,
            history_age: Duration::from_secs(age),
            ..roomy()
        };
        Hub::new(limits, Mode::Source)
    }

    /// A hub bounded to `bytes` of messages held in `channels` channels.
    pub(super) fn bounded(bytes: usize, channels: usize) -> Arc<Hub<&'static str>> {
        let limits = Limits {
            max_bytes: bytes + channels * channel::channel_cost::<&'static str>(),
            ..roomy()
        };
        Hub::new(limits, Mode::Source)
    }

    pub(super) fn cache(idle: u64) -> Arc<Hub<&'static str>> {
        let idle = Duration::from_secs(idle);
        Hub::new(roomy(), Mode::Cache { idle })
    }

    /// What a poll got at once: each channel's start, and the waiter.
    #[derive(Debug)]
    pub(super) struct Polled<P: Payload> {
        pub(super) starts: Vec<Start<P>>,
        pub(super) waiter: Option<Waiter<P>>,
    }

    /// [`Hub::poll`], its starts collected.
    pub(super) fn poll<S: AsRef<str>>(
        hub: &Arc<Hub<&'static str>>,
        channels: &[(S, Since)],
        limit: usize,
    ) -> Result<Polled<&'static str>, Refused> {
        let mut starts = Vec::new();
        let waiter = hub.poll(channels, limit, |_, start| starts.push(start))?;
        Ok(Polled { starts, waiter })
    }

    /// What a one-channel poll read at once, and whether it had a gap.
    pub(super) fn ready(polled: Polled<&'static str>) -> (Vec<&'static str>, bool) {
        assert!(polled.waiter.is_none(), "read at once");
        match &polled.starts[..] {
            [Start::Read { messages, gap, .. }] => {
                (messages.iter().map(|m| m.payload).collect(), *gap)
            }
            other => panic!("not read: {other:?}"),
        }
    }

    /// A one-channel poll that waits: its waiter, where it stands and
    /// whether it missed messages.
    #[derive(Debug)]
    pub(super) struct Waiting {
        pub(super) waiter: Waiter<&'static str>,
        pub(super) from: u64,
        pub(super) gap: bool,
    }

    impl Waiting {
        pub(super) async fn wait(self, timeout: Duration) -> Outcome<&'static str> {
            self.waiter.wait(timeout).await.1
        }
    }

    pub(super) fn waiting(polled: Polled<&'static str>) -> Waiting {
        match (polled.waiter, &polled.starts[..]) {
            (
                Some(waiter),
                [
                    Start::Read {
                        from,
                        gap,
                        messages,
                    },
                ],
            ) if messages.is_empty() => Waiting {
                waiter,
                from: *from,
                gap: *gap,
            },
            (_, starts) => panic!("does not wait: {starts:?}"),
        }
    }

    /// Cache mode: a waiter on `channel` whatever the copy holds.
    pub(super) fn joined(hub: &Arc<Hub<&'static str>>, channel: &str) -> Waiting {
        let mut slot = None;
        hub.wait_among(&mut slot, 0, channel).expect("joined");
        Waiting {
            waiter: slot.expect("made"),
            from: 0,
            gap: false,
        }
    }

    pub(super) fn publish(hub: &Hub<&'static str>, channel: &str, data: &'static str) -> u64 {
        hub.publish(&[channel], |_| data).unwrap().0.seq
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    #[tokio::test(start_paused = true)]
    async fn delete_wakes_waiters_and_a_reader_from_before_sees_a_gap() {
        let hub = hub(10, 60);
        let seq = publish(&hub, "c", "a");
        publish(&hub, "c", "b");
        let w = waiting(poll(&hub, &[("c", Since::Next)], 1).unwrap());
        assert!(hub.delete("c"));
        assert!(matches!(
            w.wait(Duration::from_secs(1)).await,
            Outcome::Deleted
        ));
        assert!(!hub.delete("c"));
        let w = waiting(poll(&hub, &[("c", Since::Id(seq))], 1).unwrap());
        assert!(w.gap, "b was deleted unread");
    }

    #[tokio::test(start_paused = true)]
    async fn close_wakes_everyone_where_they_stand() {
        let hub = hub(10, 60);
        let seq = publish(&hub, "c", "a");
        let w = waiting(poll(&hub, &[("c", Since::Next)], 1).unwrap());
        assert_eq!(w.from, seq);
        let mut stream = hub.stream(&[("c", Since::Next)]).unwrap();
        hub.close();
        assert!(matches!(
            w.wait(Duration::from_secs(1)).await,
            Outcome::Shutdown
        ));
        assert!(stream.channels[0].live.recv().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_answers_only_what_it_covers() {
        let hub = cache(10);
        assert!(
            matches!(poll(&hub, &[("c", Since::Next)], 1).unwrap(), Polled { waiter: None, ref starts } if matches!(starts[..], [Start::Miss]))
        );
        let w = joined(&hub, "c");
        hub.cover_from("c", 100);
        assert_eq!(hub.deliver("c", Message::new(101, "a")), 1);
        assert!(
            matches!(w.wait(Duration::from_secs(1)).await, Outcome::Message(m) if m.seq == 101)
        );
        assert_eq!(
            ready(poll(&hub, &[("c", Since::Id(100))], 10).unwrap()),
            (vec!["a"], false)
        );
        assert!(matches!(
            poll(&hub, &[("c", Since::Id(99))], 10).unwrap(),
            Polled { waiter: None, ref starts } if matches!(starts[..], [Start::Miss])
        ));
        assert!(matches!(
            poll(&hub, &[("c", Since::Oldest)], 10).unwrap(),
            Polled { waiter: None, ref starts } if matches!(starts[..], [Start::Miss])
        ));
        hub.reset();
        assert!(matches!(
            poll(&hub, &[("c", Since::Id(100))], 10).unwrap(),
            Polled { waiter: None, ref starts } if matches!(starts[..], [Start::Miss])
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cache_copy_in_use_is_kept_and_an_unused_one_dropped() {
        let hub = cache(10);
        drop(joined(&hub, "c"));
        let w = joined(&hub, "c");
        hub.cover_from("c", 1);
        hub.deliver("c", Message::new(2, "a"));
        drop(w);
        // Answered from the copy every 3 s for 30 s, with no waiter ever queued.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(3)).await;
            hub.sweep();
            assert_eq!(
                ready(poll(&hub, &[("c", Since::Id(1))], 10).unwrap()),
                (vec!["a"], false)
            );
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        hub.sweep();
        assert!(matches!(
            poll(&hub, &[("c", Since::Id(1))], 10).unwrap(),
            Polled { waiter: None, ref starts } if matches!(starts[..], [Start::Miss])
        ));
        assert_eq!(hub.snapshot().channels, 0);
    }
}
