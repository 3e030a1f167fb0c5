//! Channels: each one's history, its listeners, and the last sequence of
//! channels that were freed, so that a reader coming back learns of a gap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::message::{Held, Message, Payload};
use super::poll::{Joiners, Waiters};
use super::{Limits, Refused, State};

/// Freed channels whose last sequence is remembered exactly; older ones fold
/// into one floor (see [`Hub::poll`](super::Hub::poll) on gaps).
pub const FREED_RECORDS: usize = 65_536;

/// Channels by name. hashbrown's map for its `entry_ref`, so that finding or
/// making a channel hashes its name once; with std's keyed hash, as clients
/// choose the names.
pub(super) type Channels<P> = hashbrown::HashMap<Arc<str>, Channel<P>, std::hash::RandomState>;

/// One channel.
#[derive(Debug)]
pub(super) struct Channel<P> {
    pub(super) name: Arc<str>,
    pub(super) history: VecDeque<Arc<Message<P>>>,
    /// Sequence of the last message, or the channel's floor if it has none.
    pub(super) last_seq: u64,
    /// Highest sequence that has left the history (or that an earlier life of
    /// this channel may have had): a `since` below it has missed something.
    pub(super) evicted: u64,
    pub(super) waiters: Waiters<P>,
    /// Waiters counted in the hub's `waiting`: a long-poll on several
    /// channels waits on each but counts once.
    pub(super) counted: usize,
    pub(super) joiners: Joiners,
    pub(super) live: Option<broadcast::Sender<Arc<Message<P>>>>,
    /// Cache mode: the history holds every message after this sequence.
    pub(super) covered: Option<u64>,
    /// When a subscriber last used this channel.
    pub(super) visited: Instant,
    /// When the sweep queue will look at this channel next.
    pub(super) scheduled: Option<Instant>,
}

impl<P: Payload> Channel<P> {
    pub(super) fn new(name: Arc<str>, floor: u64) -> Self {
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

    pub(super) fn listened(&self) -> bool {
        !self.waiters.is_empty()
            || !self.joiners.is_empty()
            || self.live.as_ref().is_some_and(|tx| tx.receiver_count() > 0)
    }

    pub(super) fn is_idle(&self) -> bool {
        self.history.is_empty() && !self.listened()
    }

    /// Adds `message` as the newest; returns what was trimmed to make room.
    pub(super) fn append(&mut self, message: &Arc<Message<P>>, limits: &Limits) -> Held {
        self.last_seq = message.seq;
        self.history.push_back(message.clone());
        self.trim(limits, message.at)
    }

    /// Drops messages past the count or age limit; returns what it freed.
    pub(super) fn trim(&mut self, limits: &Limits, now: Instant) -> Held {
        let mut freed = Held::default();
        while let Some(front) = self.history.front() {
            let too_many = self.history.len() > limits.history;
            let too_old = now.saturating_duration_since(front.at) >= limits.history_age;
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
    pub(super) fn held(&self) -> Held {
        let mut held = Held::default();
        for m in &self.history {
            held += Held::of(m);
        }
        held
    }

    /// Retained messages after `after`, at most `limit`.
    pub(super) fn after(&self, after: u64, limit: usize) -> Vec<Arc<Message<P>>> {
        let start = self.history.partition_point(|m| m.seq <= after);
        self.history.range(start..).take(limit).cloned().collect()
    }
}

/// The last sequence of channels that were freed, so that a client resuming one
/// later learns whether it missed something: exact for the last
/// [`FREED_RECORDS`], then one conservative floor.
#[derive(Debug, Default)]
pub(super) struct Freed {
    last: HashMap<Arc<str>, (u64, u64)>,
    order: VecDeque<(Arc<str>, u64)>,
    generation: u64,
    forgotten: u64,
}

impl Freed {
    pub(super) fn record(&mut self, name: Arc<str>, last: u64) {
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
    pub(super) fn take(&mut self, name: &str) -> u64 {
        self.last
            .remove(name)
            .map_or(self.forgotten, |(last, _)| last.max(self.forgotten))
    }

    pub(super) fn peek(&self, name: &str) -> u64 {
        self.last
            .get(name)
            .map_or(self.forgotten, |(last, _)| (*last).max(self.forgotten))
    }
}

/// What a channel costs with no message: its state, its slot in the channel
/// map (kept at most half full) and in the sweep queue, and its name.
pub(super) fn channel_cost<P>() -> usize {
    2 * std::mem::size_of::<(Arc<str>, Channel<P>)>() + 64 + MAX_NAME_ESTIMATE
}

/// A channel name's allocation, as counted (names are short).
const MAX_NAME_ESTIMATE: usize = 48;

/// The channel `name`, made if it is not held (within `max_channels`).
pub(super) fn channel_in<'a, P: Payload>(
    channels: &'a mut Channels<P>,
    freed: &mut Freed,
    name: &str,
    limits: &Limits,
) -> Result<&'a mut Channel<P>, Refused> {
    let full = limits.max_channels > 0 && channels.len() >= limits.max_channels;
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
    pub(super) fn free_if_idle(&mut self, name: &str) {
        if self.channels.get(name).is_some_and(Channel::is_idle) {
            self.remove(name);
        }
    }

    /// Forgets a channel, remembering its last sequence for clients that resume later.
    pub(super) fn remove(&mut self, name: &str) -> Option<Channel<P>> {
        let ch = self.channels.remove(name)?;
        self.freed.record(ch.name.clone(), ch.last_seq);
        self.tally.waiting -= ch.counted;
        self.held -= ch.held();
        Some(ch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
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
        let w = waiting(poll(&hub, &[("mine", Since::Id(seq))], 1).unwrap());
        assert!(!w.gap, "nothing was published on this channel after its id");
    }
}
