//! Long-polls: where a poll starts on each of its channels, and the one
//! [`Waiter`] that a publish wakes when none of them had anything yet.
//!
//! A subscription is a list of channels; one channel is a list of one. Its
//! waiter is, privately, one of two shapes: on one channel an entry in that
//! channel's `waiters` (a number and a sender, the compact form that most
//! parked subscribers take); on several a joint record entered in each
//! channel's `joiners`, so that the first channel to publish wakes it and only
//! that one. Either way the caller holds one [`Waiter`], is told the place of
//! the channel that woke it, and dropping the waiter takes it off at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::channel::{Channel, channel_in};
use super::message::{Message, Payload, Since};
use super::{Hub, Mode, Refused, State, Tally};

/// Wakes a waiter: the wake, with the place in its request of the channel
/// it came from.
pub(super) type WakeTx<P> = oneshot::Sender<(usize, Wake<P>)>;

/// A channel's one-channel waiters, by the hub's own waiter number.
pub(super) type Waiters<P> = HashMap<u64, WakeTx<P>, BuildHasherDefault<WaiterHasher>>;

/// The joint waiters on a channel, by number (with [`JOINT`]); a set beside
/// [`Waiters`], so that a one-channel waiter's entry stays a number and a
/// sender.
pub(super) type Joiners = HashSet<u64, BuildHasherDefault<WaiterHasher>>;

/// A joint waiter, as the hub keeps it.
#[derive(Debug)]
pub(super) struct Joined<P> {
    /// Taken by the first of its channels to publish.
    tx: Option<WakeTx<P>>,
    /// Each channel it waits on, with its place in the request and its key
    /// there (the counted one's without [`UNCOUNTED`]).
    channels: Vec<(usize, Arc<str>, u64)>,
}

/// The joint waiters, by number.
pub(super) type Joints<P> = HashMap<u64, Joined<P>, BuildHasherDefault<WaiterHasher>>;

/// Hashes waiter numbers: the hub hands them out in sequence and no client
/// chooses them, so a multiply spreads them well enough (channel names, which
/// clients do choose, keep the default keyed hash).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct WaiterHasher(u64);

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

/// What wakes a waiting subscriber.
#[derive(Debug)]
pub(super) enum Wake<P> {
    Message(Arc<Message<P>>),
    Deleted,
    Shutdown,
    Reset,
}

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome<P> {
    /// A message was published.
    Message(Arc<Message<P>>),
    /// The timeout passed.
    Timeout,
    /// The channel was deleted.
    Deleted,
    /// The hub is closing.
    Shutdown,
    /// Cache mode: the copy was dropped ([`Hub::reset`]); read from the source.
    Reset,
}

/// Where a long-poll on one of its channels starts.
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

/// Marks a waiter's key as not counted in `waiting`.
const UNCOUNTED: u64 = 1 << 63;
/// Marks a joint waiter's number.
const JOINT: u64 = 1 << 62;

/// A subscriber waiting for the next message on its channels. Dropping it
/// takes it off every channel at once.
#[derive(Debug)]
pub struct Waiter<P: Payload> {
    rx: oneshot::Receiver<(usize, Wake<P>)>,
    hub: Arc<Hub<P>>,
    key: u64,
    /// On one channel: its name (the waiter is an entry of its `waiters`);
    /// on several, none (the joint record lists them).
    channel: Option<Arc<str>>,
    /// Still entered on a channel.
    entered: bool,
}

impl<P: Payload> Waiter<P> {
    /// Waits for a message, the timeout, deletion, a reset or shutdown.
    pub fn wait(self, timeout: Duration) -> Wait<P, tokio::time::Sleep> {
        self.wait_on(Fresh, timeout)
    }

    /// [`Waiter::wait`], timed by `clock`.
    pub fn wait_on<C: Clock>(self, clock: C, timeout: Duration) -> Wait<P, C::Timer> {
        Wait {
            waiter: self,
            timer: clock.timer(timeout),
        }
    }

    /// What already woke this waiter, if anything, without waiting: a
    /// message, deletion, a reset or shutdown, with its channel's place.
    pub fn woken(&mut self) -> Option<(usize, Outcome<P>)> {
        let waker = std::task::Waker::noop();
        match self.poll_woken(&mut Context::from_waker(waker)) {
            TaskPoll::Ready(woken) => Some(woken),
            TaskPoll::Pending => None,
        }
    }

    /// Whether something woke this waiter: a message, deletion, a reset or
    /// shutdown, with the place of the channel it came from.
    fn poll_woken(&mut self, cx: &mut Context<'_>) -> TaskPoll<(usize, Outcome<P>)> {
        let woken = std::task::ready!(Pin::new(&mut self.rx).poll(cx)).ok();
        // Whatever woke a one-channel waiter took it off its channel; a
        // joint one leaves its other channels when dropped.
        if self.channel.is_some() {
            self.entered = false;
        }
        TaskPoll::Ready(match woken {
            Some((place, Wake::Message(m))) => (place, Outcome::Message(m)),
            Some((place, Wake::Deleted)) => (place, Outcome::Deleted),
            Some((place, Wake::Reset)) => (place, Outcome::Reset),
            Some((place, Wake::Shutdown)) => (place, Outcome::Shutdown),
            None => (0, Outcome::Shutdown),
        })
    }
}

pin_project_lite::pin_project! {
    /// A [`Waiter`] waiting, with its timeout. Written out by hand rather than
    /// as an `async fn`: every parked subscriber holds one, and this is as small
    /// as it gets.
    #[derive(Debug)]
    pub struct Wait<P: Payload, T> {
        waiter: Waiter<P>,
        #[pin]
        timer: T,
    }
}

impl<P: Payload, T: Future<Output = ()>> Future for Wait<P, T> {
    /// How the wait ended, and the place of the channel that ended it.
    type Output = (usize, Outcome<P>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> TaskPoll<Self::Output> {
        let this = self.project();
        if let TaskPoll::Ready(woken) = this.waiter.poll_woken(cx) {
            return TaskPoll::Ready(woken);
        }
        this.timer.poll(cx).map(|()| (0, Outcome::Timeout))
    }
}

/// What times a wait.
pub trait Clock: Send {
    /// The timer, set to the timeout.
    type Timer: Future<Output = ()> + Send;
    /// A timer that ends `timeout` from now.
    fn timer(self, timeout: Duration) -> Self::Timer;
}

/// A timer of the wait's own.
#[derive(Debug, Clone, Copy)]
pub struct Fresh;

impl Clock for Fresh {
    type Timer = tokio::time::Sleep;

    fn timer(self, timeout: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(timeout)
    }
}

/// A timer its owner keeps between waits (a connection's, set for the wait
/// before the request). Only a timeout earlier than the timer moves it now;
/// a later one is reached in [`Kept`]. So a wait answered before the timer
/// fires leaves it where its owner set it, and the owner's next move is to a
/// later time: one atomic step, where moving a timer earlier enters it in
/// the runtime's wheel again.
impl<'t> Clock for Pin<&'t mut tokio::time::Sleep> {
    type Timer = Kept<'t>;

    fn timer(mut self, timeout: Duration) -> Kept<'t> {
        let until = Instant::now() + timeout;
        if until < self.deadline() {
            self.as_mut().reset(until);
        }
        Kept { sleep: self, until }
    }
}

/// A kept timer lent to a wait that ends at `until`: when it fires before
/// then, it is moved on to `until` and waited on again.
#[derive(Debug)]
pub struct Kept<'t> {
    sleep: Pin<&'t mut tokio::time::Sleep>,
    until: Instant,
}

impl Future for Kept<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> TaskPoll<()> {
        let until = self.until;
        while self.sleep.as_mut().poll(cx).is_ready() {
            if self.sleep.deadline() >= until {
                return TaskPoll::Ready(());
            }
            self.sleep.as_mut().reset(until);
        }
        TaskPoll::Pending
    }
}

impl<P: Payload> Drop for Waiter<P> {
    fn drop(&mut self) {
        if self.entered {
            self.hub
                .state()
                .unregister(self.key, self.channel.as_deref());
        }
    }
}

/// Where a poll's waiter goes when a channel reads nothing.
struct Register<'w, P: Payload> {
    slot: &'w mut Option<Waiter<P>>,
    /// The channel's place in the request.
    place: usize,
    /// The request's only channel: the compact waiter.
    alone: bool,
}

impl<P: Payload> Hub<P> {
    /// Starts a long-poll on `channels`, each from its own `since`, under
    /// one lock: what each holds after its start (at most `limit` each) or,
    /// when none holds anything, one [`Waiter`] on all of them, counted once
    /// as a waiting subscriber. Each channel's start goes to `read`, with
    /// its place, as it is made (nothing is collected for the caller: every
    /// poll comes here).
    ///
    /// A `since` below what a channel still holds (trimmed, or from before the
    /// channel was freed) or not of this hub is a gap: the read starts at the
    /// oldest retained message and says so. In cache mode a channel the copy
    /// does not cover is a [`Start::Miss`] and is not waited on.
    pub fn poll<S: AsRef<str>>(
        self: &Arc<Self>,
        channels: &[(S, Since)],
        limit: usize,
        mut read: impl FnMut(usize, Start<P>),
    ) -> Result<Option<Waiter<P>>, Refused> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        let alone = channels.len() == 1;
        let mut waiter = None;
        // Each channel registers as it is read, until one has messages, so
        // that a poll that waits finds each channel once.
        let mut ready = false;
        let mut refused = None;
        for (place, (channel, since)) in channels.iter().enumerate() {
            let register = (!ready).then_some(Register {
                slot: &mut waiter,
                place,
                alone,
            });
            match self.start(state, channel.as_ref(), *since, limit, register) {
                Ok(start) => {
                    ready |= matches!(&start, Start::Read { messages, .. } if !messages.is_empty());
                    read(place, start);
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
            if let Some(mut waiter) = waiter.take() {
                state.unregister(waiter.key, waiter.channel.as_deref());
                waiter.entered = false;
            }
            for (channel, _) in channels {
                state.free_if_idle(channel.as_ref());
            }
        }
        match refused {
            Some(refused) => Err(refused),
            None => Ok(waiter),
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
        register: Option<Register<'_, P>>,
    ) -> Result<Start<P>, Refused> {
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
        let ch = match self.mode {
            Mode::Source => channel_in(channels, freed, channel, &self.limits)?,
            Mode::Cache { .. } => match channels.get_mut(channel) {
                Some(ch) if ch.covered.is_some() => ch,
                _ => return Ok(Start::Miss),
            },
        };
        *held -= ch.refresh(due, &self.limits, self.mode, now);
        let (after, gap) = match (self.mode, ch.covered) {
            (Mode::Cache { .. }, Some(covered)) => match since {
                Since::Next => (ch.last_seq, false),
                Since::Id(x) if x >= covered && x >= ch.evicted && x <= ch.last_seq => (x, false),
                _ => return Ok(Start::Miss),
            },
            _ => since.start(ch.last_seq, ch.evicted, newest),
        };
        ch.visited = now;
        // What is missing below the history is reported as the gap; a
        // reader resuming from here misses nothing more.
        let from = after.max(ch.evicted);
        let messages = ch.after(after, limit);
        if let Some(register) = register.filter(|_| messages.is_empty()) {
            match register.alone {
                true => *register.slot = Some(self.enqueue(ch, tally)?),
                false => {
                    let count = register.slot.is_none();
                    self.join(ch, tally, joints, register.slot, register.place, count)?;
                }
            }
        }
        Ok(Start::Read {
            from,
            gap,
            messages,
        })
    }

    /// Cache mode: `channel`, at `place` in a request, joins the request's
    /// waiter in `slot` (made if none, and then counted as a waiting
    /// subscriber), whatever the history holds: the caller reads it from the
    /// source.
    pub fn wait_among(
        self: &Arc<Self>,
        slot: &mut Option<Waiter<P>>,
        place: usize,
        channel: &str,
    ) -> Result<(), Refused> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        let ch = channel_in(&mut state.channels, &mut state.freed, channel, &self.limits)?;
        ch.visited = Instant::now();
        let count = slot.is_none();
        let joined = self.join(ch, &mut state.tally, &mut state.joints, slot, place, count);
        if joined.is_err() {
            state.free_if_idle(channel);
        }
        joined
    }

    /// Puts `ch`, at `place` in a request, in the joint waiter in `slot`
    /// (made if none), within `max_subscribers`; counted as a waiting
    /// subscriber if `count`.
    fn join(
        self: &Arc<Self>,
        ch: &mut Channel<P>,
        tally: &mut Tally,
        joints: &mut Joints<P>,
        slot: &mut Option<Waiter<P>>,
        place: usize,
        count: bool,
    ) -> Result<(), Refused> {
        if count && tally.full(self.limits.max_subscribers) {
            return Err(Refused::Subscribers);
        }
        let waiter = slot.get_or_insert_with(|| {
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
            Waiter {
                rx,
                hub: self.clone(),
                key,
                channel: None,
                entered: true,
            }
        });
        // Only leaving drops the record, and a waiter that left joins no more.
        let Some(joined) = joints.get_mut(&waiter.key) else {
            return Ok(());
        };
        let key = waiter.key | if count { 0 } else { UNCOUNTED };
        ch.joiners.insert(key);
        if count {
            ch.counted += 1;
            tally.waiting += 1;
        }
        joined.channels.push((place, ch.name.clone(), key));
        Ok(())
    }

    /// Puts a counted one-channel waiter on `ch`, within `max_subscribers`.
    fn enqueue(
        self: &Arc<Self>,
        ch: &mut Channel<P>,
        tally: &mut Tally,
    ) -> Result<Waiter<P>, Refused> {
        if tally.full(self.limits.max_subscribers) {
            return Err(Refused::Subscribers);
        }
        let (tx, rx) = oneshot::channel();
        let key = tally.next_waiter;
        tally.next_waiter += 1;
        ch.waiters.insert(key, tx);
        ch.counted += 1;
        tally.waiting += 1;
        Ok(Waiter {
            rx,
            hub: self.clone(),
            channel: Some(ch.name.clone()),
            key,
            entered: true,
        })
    }
}

/// The senders a publish (or a deletion) on one channel wakes: its
/// one-channel waiters, and the joint waiters no other channel woke yet,
/// each with the channel's place in its request.
#[derive(Debug)]
pub(super) struct Wakes<P> {
    waiters: Waiters<P>,
    joints: Vec<(WakeTx<P>, usize)>,
}

impl<P> Wakes<P> {
    /// No one to wake.
    pub(super) fn none() -> Wakes<P> {
        Wakes {
            waiters: Waiters::default(),
            joints: Vec::new(),
        }
    }

    /// Sends each its wake; returns how many were still waiting.
    pub(super) fn send(self, wake: impl Fn() -> Wake<P>) -> usize {
        let mut woken = 0;
        for tx in self.waiters.into_values() {
            woken += usize::from(tx.send((0, wake())).is_ok());
        }
        for (tx, place) in self.joints {
            woken += usize::from(tx.send((place, wake())).is_ok());
        }
        woken
    }
}

impl<P: Payload> State<P> {
    /// Takes every waiter off `ch` (named `channel`), to be woken once the
    /// lock is released. A joint waiter's sender is taken here, under the
    /// lock: whichever of its channels has a message first wakes it, and
    /// only that one.
    pub(super) fn take_waiters(&mut self, channel: &str) -> Wakes<P> {
        let Some(ch) = self.channels.get_mut(channel) else {
            return Wakes::none();
        };
        // Woken long-polls come back at once: the table is made again at
        // the size they had, not grown to it one doubling at a time.
        let again = Waiters::with_capacity_and_hasher(ch.waiters.len(), Default::default());
        let waiters = std::mem::replace(&mut ch.waiters, again);
        let joiners = std::mem::take(&mut ch.joiners);
        self.tally.waiting -= std::mem::take(&mut ch.counted);
        let joints = match joiners.is_empty() {
            true => Vec::new(),
            false => self.joint_senders(&joiners, channel),
        };
        Wakes { waiters, joints }
    }

    /// Takes every waiter off every channel, to be woken once the lock is
    /// released (joint waiters keep their record, to leave their channels by).
    pub(super) fn take_all_waiters(&mut self) -> Wakes<P> {
        let mut waiters = Waiters::default();
        for ch in self.channels.values_mut() {
            waiters.extend(std::mem::take(&mut ch.waiters));
            ch.counted = 0;
            ch.joiners = Joiners::default();
        }
        self.tally.waiting = 0;
        let joints = self
            .joints
            .values_mut()
            .filter_map(|j| Some((j.tx.take()?, 0)))
            .collect();
        Wakes { waiters, joints }
    }

    /// Takes a waiter off: the one-channel waiter `key` off `channel`, or
    /// the joint waiter `key` off every channel it waits on.
    fn unregister(&mut self, key: u64, channel: Option<&str>) {
        match channel {
            Some(channel) => self.take_off(channel, key),
            None => {
                if let Some(joined) = self.joints.remove(&key) {
                    for (_, channel, key) in joined.channels {
                        self.take_off(&channel, key);
                    }
                }
            }
        }
    }

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

    /// The senders of the joint waiters `joiners` of `channel` that no
    /// other channel woke yet, each with the place of `channel` in its
    /// request.
    fn joint_senders(&mut self, joiners: &Joiners, channel: &str) -> Vec<(WakeTx<P>, usize)> {
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_next_message_and_a_late_poll_finds_it_in_the_history() {
        let hub = hub(10, 60);
        let waiter = waiting(poll(&hub, &[("c", Since::Next)], 1).unwrap());
        assert_eq!(hub.snapshot().waiting, 1);
        let (_, n) = hub.publish(&["c"], |_| "one").unwrap();
        assert_eq!(n, 1);
        let Outcome::Message(m) = waiter.wait(Duration::from_secs(1)).await else {
            panic!("woken by the message");
        };
        assert_eq!(m.payload, "one");
        // Published between two polls: found by the next one.
        publish(&hub, "c", "two");
        assert_eq!(
            ready(poll(&hub, &[("c", Since::Id(m.seq))], 10).unwrap()),
            (vec!["two"], false)
        );
        assert_eq!(hub.snapshot().waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_nothing_behind() {
        let hub = hub(10, 60);
        let waiters: Vec<_> = (0..3)
            .map(|_| poll(&hub, &[("c", Since::Next)], 1).unwrap())
            .collect();
        assert_eq!(hub.snapshot().waiting, 3);
        assert_eq!(hub.snapshot().channels, 1);
        drop(waiters);
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 0));
        assert_eq!(hub.publish(&["c"], |_| "x").unwrap().1, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_where_the_reader_stands() {
        let hub = hub(10, 60);
        let seq = publish(&hub, "c", "a");
        let w = waiting(poll(&hub, &[("c", Since::Id(seq))], 1).unwrap());
        assert_eq!(w.from, seq);
        let start = Instant::now();
        assert!(matches!(
            w.wait(Duration::from_secs(5)).await,
            Outcome::Timeout
        ));
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
            ready(poll(&hub, &[("c", Since::Id(first))], 10).unwrap()),
            (vec!["b", "c"], false)
        );
        assert_eq!(
            ready(poll(&hub, &[("c", Since::Id(first - 1))], 10).unwrap()),
            (vec!["b", "c"], true)
        );
        assert_eq!(
            ready(poll(&hub, &[("c", Since::Foreign)], 10).unwrap()),
            (vec!["b", "c"], true)
        );
        assert_eq!(
            ready(poll(&hub, &[("c", Since::Id(999))], 10).unwrap()),
            (vec!["b", "c"], true)
        );
        assert_eq!(
            ready(poll(&hub, &[("c", Since::Oldest)], 1).unwrap()),
            (vec!["b"], false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limits_refuse_and_leave_nothing_behind() {
        let limits = Limits {
            max_channels: 1,
            max_subscribers: 1,
            ..roomy()
        };
        let hub: Arc<Hub<&'static str>> = Hub::new(limits, Mode::Source);
        let _w = poll(&hub, &[("a", Since::Next)], 1).unwrap();
        assert_eq!(
            poll(&hub, &[("a", Since::Next)], 1).err(),
            Some(Refused::Subscribers)
        );
        assert_eq!(hub.publish(&["b"], |_| "x").err(), Some(Refused::Channels));
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (1, 1));
        hub.close();
        assert_eq!(hub.publish(&["a"], |_| "x").err(), Some(Refused::Closed));
    }

    fn seqs(many: &Polled<&'static str>) -> Vec<(u64, bool, Vec<&'static str>)> {
        many.starts
            .iter()
            .map(|start| match start {
                Start::Read {
                    from,
                    gap,
                    messages,
                } => (
                    from.to_owned(),
                    gap.to_owned(),
                    messages.iter().map(|m| m.payload).collect(),
                ),
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
        let many = poll(&hub, &channels, 10).unwrap();
        // a after a1; b from now (its last message); c empty, from the start.
        assert_eq!(
            seqs(&many),
            vec![
                (a1, false, vec!["a2"]),
                (2, false, vec![]),
                (0, false, vec![])
            ]
        );
        assert!(
            many.waiter.is_none(),
            "a channel had messages: nobody waits"
        );
        let s = hub.snapshot();
        assert_eq!(
            (s.waiting, s.channels),
            (0, 2),
            "c, made to be read, went again"
        );
        // A channel with messages after ones that had nothing: those gave
        // their waiters up, and what was made for them goes.
        let channels = [("x", Since::Next), ("y", Since::Next), ("a", Since::Id(a1))];
        let many = poll(&hub, &channels, 10).unwrap();
        assert_eq!(seqs(&many)[2], (a1, false, vec!["a2"]));
        assert!(many.waiter.is_none());
        drop(many);
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 2));
        // An id this hub never gave is a gap, read from the oldest.
        let many = poll(&hub, &[("a", Since::Foreign)], 10).unwrap();
        assert_eq!(seqs(&many), vec![(0, true, vec!["a1", "a2"])]);
        assert!(a2 > a1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_on_several_channels_waits_on_each_and_counts_once() {
        let hub = hub(10, 60);
        let channels = [("a", Since::Next), ("b", Since::Next), ("c", Since::Next)];
        let joint = poll(&hub, &channels, 10).unwrap().waiter.unwrap();
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (1, 3));
        assert_eq!(hub.info("b").subscribers, 1);
        // A publish on the last channel wakes it, with that channel's place.
        let (_, delivered) = hub.publish(&["c"], |_| "c1").unwrap();
        assert_eq!(delivered, 1);
        let (2, Outcome::Message(m)) = joint.wait(Duration::from_secs(1)).await else {
            panic!("woken by c1 on the third channel");
        };
        assert_eq!(m.payload, "c1");
        // Woken, it left every channel: those that hold nothing are freed.
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 1));
        assert_eq!(hub.info("a").subscribers, 0);

        // Two publishes before it runs: the first channel wakes it, once.
        let joint = poll(&hub, &channels, 10).unwrap().waiter.unwrap();
        assert_eq!(hub.publish(&["b"], |_| "b1").unwrap().1, 1);
        assert_eq!(hub.publish(&["a"], |_| "a1").unwrap().1, 0);
        let (1, Outcome::Message(m)) = joint.wait(Duration::from_secs(1)).await else {
            panic!("woken by b1");
        };
        assert_eq!(m.payload, "b1");

        // Asked without waiting: nothing yet, then what woke it.
        let mut joint = poll(&hub, &channels, 10).unwrap().waiter.unwrap();
        assert!(joint.woken().is_none());
        assert_eq!(hub.publish(&["c"], |_| "c3").unwrap().1, 1);
        let Some((2, Outcome::Message(m))) = joint.woken() else {
            panic!("c3 woke it on the third channel");
        };
        assert_eq!(m.payload, "c3");
        drop(joint);

        // Nothing comes: the timeout, and nothing is left behind.
        let joint = poll(&hub, &[("x", Since::Next), ("y", Since::Next)], 10);
        let woken = joint
            .unwrap()
            .waiter
            .unwrap()
            .wait(Duration::from_secs(5))
            .await;
        assert!(matches!(woken, (_, Outcome::Timeout)));
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 3));

        // Dropped (the client left): gone from every channel.
        let joint = poll(&hub, &channels, 10).unwrap().waiter;
        assert_eq!(hub.snapshot().waiting, 1);
        drop(joint);
        assert_eq!(hub.snapshot().waiting, 0);
        assert_eq!(hub.publish(&["c"], |_| "c2").unwrap().1, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_kept_between_waits_times_each_from_its_own_start() {
        let hub = hub(10, 60);
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::from_secs(1)));
        // Set earlier than a wait's timeout, then moved later by it.
        let start = Instant::now();
        let w = waiter_on(&hub, "k");
        let (_, woken) = w.wait_on(timer.as_mut(), Duration::from_secs(5)).await;
        assert!(matches!(woken, Outcome::Timeout));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Fired, then used again: a message comes first.
        let w = waiter_on(&hub, "k");
        let mut wait = std::pin::pin!(w.wait_on(timer.as_mut(), Duration::from_secs(3)));
        assert!(futures_poll_once(wait.as_mut()).is_none());
        assert_eq!(hub.publish(&["k"], |_| "k1").unwrap().1, 1);
        let (_, woken) = wait.await;
        assert!(matches!(woken, Outcome::Message(m) if m.payload == "k1"));
        // Moved to an earlier time than it was set to: it ends then.
        let start = Instant::now();
        let w = waiter_on(&hub, "k");
        let (_, woken) = w.wait_on(timer.as_mut(), Duration::from_secs(2)).await;
        assert!(matches!(woken, Outcome::Timeout));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_lent_to_a_longer_wait_stays_set_unless_it_fires() {
        let hub = hub(10, 60);
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::from_secs(2)));
        let set = timer.deadline();
        // A message within the timer's 2 s: the timer stays where it was set,
        // so its owner's next move is to a later time.
        let w = waiter_on(&hub, "k");
        let mut wait = std::pin::pin!(w.wait_on(timer.as_mut(), Duration::from_secs(5)));
        assert!(futures_poll_once(wait.as_mut()).is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(hub.publish(&["k"], |_| "k1").unwrap().1, 1);
        let (_, woken) = wait.await;
        assert!(matches!(woken, Outcome::Message(m) if m.payload == "k1"));
        assert_eq!(timer.deadline(), set);
        // No message: the wait lasts its own 5 s, past the timer's 2.
        let start = Instant::now();
        let w = waiter_on(&hub, "k");
        let (_, woken) = w.wait_on(timer.as_mut(), Duration::from_secs(5)).await;
        assert!(matches!(woken, Outcome::Timeout));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    /// A waiter for the next message on `channel`.
    fn waiter_on(hub: &Arc<Hub<&'static str>>, channel: &str) -> Waiter<&'static str> {
        poll(hub, &[(channel, Since::Next)], 1)
            .unwrap()
            .waiter
            .unwrap()
    }

    /// Polls `fut` once with a waker that does nothing.
    fn futures_poll_once<F: Future>(fut: Pin<&mut F>) -> Option<F::Output> {
        match fut.poll(&mut Context::from_waker(std::task::Waker::noop())) {
            TaskPoll::Ready(out) => Some(out),
            TaskPoll::Pending => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_on_several_channels_learns_of_deletion_and_shutdown() {
        let hub = hub(10, 60);
        let channels = [("a", Since::Next), ("b", Since::Next)];
        let joint = poll(&hub, &channels, 10).unwrap().waiter.unwrap();
        assert!(hub.delete("b"));
        let woken = joint.wait(Duration::from_secs(1)).await;
        assert!(matches!(woken, (1, Outcome::Deleted)));
        assert_eq!(hub.snapshot().waiting, 0);

        let a1 = publish(&hub, "a", "a1");
        let joint = poll(&hub, &[("b", Since::Next), ("a", Since::Id(a1))], 10)
            .unwrap()
            .waiter
            .unwrap();
        hub.close();
        let woken = joint.wait(Duration::from_secs(1)).await;
        assert!(matches!(woken, (_, Outcome::Shutdown)));
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_on_several_channels_over_the_subscriber_limit_leaves_nothing() {
        let hub: Arc<Hub<&'static str>> = Hub::new(
            Limits {
                max_subscribers: 1,
                ..roomy()
            },
            Mode::Source,
        );
        let _held = poll(&hub, &[("x", Since::Next)], 10).unwrap();
        let refused = poll(&hub, &[("a", Since::Next), ("b", Since::Next)], 10);
        assert_eq!(refused.err(), Some(Refused::Subscribers));
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (1, 1));
        // A stream on several channels counts against the same limit, once.
        let both = [("a", Since::Next), ("b", Since::Next)];
        assert_eq!(hub.stream(&both).err(), Some(Refused::Subscribers));
        assert_eq!(hub.snapshot().channels, 1, "nothing made for it stays");
        drop(_held);
        let stream = hub.stream(&both).unwrap();
        let s = hub.snapshot();
        assert_eq!((s.streams, s.channels), (1, 2));
        drop(stream);
        let s = hub.snapshot();
        assert_eq!((s.streams, s.channels), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_refused_on_a_later_channel_gives_up_the_earlier_waiters() {
        let hub: Arc<Hub<&'static str>> = Hub::new(
            Limits {
                max_channels: 2,
                ..roomy()
            },
            Mode::Source,
        );
        let _held = poll(&hub, &[("x", Since::Next)], 10).unwrap();
        // a is made and waited on, then b is one channel too many.
        let refused = poll(&hub, &[("a", Since::Next), ("b", Since::Next)], 10);
        assert_eq!(refused.err(), Some(Refused::Channels));
        let s = hub.snapshot();
        assert_eq!((s.waiting, s.channels), (1, 1));
        let (_, delivered) = hub.publish(&["x"], |_| "x1").unwrap();
        assert_eq!(delivered, 1, "only the held waiter was left");
    }

    #[tokio::test(start_paused = true)]
    async fn one_publish_on_several_channels_wakes_a_waiter_on_two_of_them_once() {
        let hub = hub(10, 60);
        let many = poll(&hub, &[("a", Since::Next), ("b", Since::Next)], 10).unwrap();
        let waiter = many.waiter.expect("waits");
        let stream = hub
            .stream(&[("b", Since::Next), ("c", Since::Next)])
            .unwrap();
        let (first, delivered) = hub.publish(&["a", "b", "c"], |_| "all").unwrap();
        // The waiter once, and the stream once from each of its channels.
        assert_eq!(delivered, 3);
        let (place, outcome) = waiter.wait(Duration::from_secs(1)).await;
        assert_eq!(place, 0, "woken by the first channel it was on");
        assert!(matches!(outcome, Outcome::Message(m) if m.seq == first.seq));
        // One sequence, a copy in each history.
        for channel in ["a", "b", "c"] {
            let read = poll(&hub, &[(channel, Since::Oldest)], 10).unwrap();
            assert_eq!(seqs(&read)[0].2, vec!["all"], "{channel}");
            assert_eq!(hub.info(channel).last_seq, first.seq);
        }
        drop(stream);
    }

    #[tokio::test(start_paused = true)]
    async fn a_publish_on_several_channels_past_a_limit_writes_none_of_them() {
        let hub: Arc<Hub<&'static str>> = Hub::new(
            Limits {
                max_channels: 2,
                ..roomy()
            },
            Mode::Source,
        );
        hub.publish(&["a"], |_| "a1").unwrap();
        let refused = hub.publish(&["a", "b", "c"], |_| "all");
        assert_eq!(refused.err(), Some(Refused::Channels));
        assert_eq!(hub.info("a").messages, 1, "a kept only its own");
        let s = hub.snapshot();
        assert_eq!(
            (s.channels, s.messages),
            (1, 1),
            "b, made for it, went again"
        );
        let (m, _) = hub.publish(&["a", "b"], |_| "two").unwrap();
        assert_eq!(m.seq, 2, "the refused publish took no sequence");
    }
}
