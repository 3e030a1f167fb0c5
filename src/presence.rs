//! Presence: who is on a channel, kept right for long-polls.
//!
//! A long-poll client has no connection between two polls, so a member is
//! present while it has a poll or a stream open *or* its last one ended less
//! than the grace period ago (a lease). Re-polls, several tabs and a
//! reconnect within the grace period are one presence: one join, one leave.
//! A poll's cursor acknowledges what the member has received: that is its
//! `seen`, the read receipt.
//!
//! Pure bookkeeping: no HTTP, no store. What changes is queued as
//! [`Event`]s: joins at once, leaves and vacated channels by [`Presence::sweep`]
//! once the grace period is over, receipts coalesced to one per member and
//! sweep. Whoever drains them ([`Presence::take`]) tells the subscribers and
//! the application.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smol_str::SmolStr;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::auth::Patterns;
use crate::hub::Meter;

/// The prefix of a channel's presence channel: `$presence:C` carries C's
/// joins, leaves and receipts.
pub const PREFIX: &str = "$presence:";
/// Longest member id, in bytes.
pub const MAX_MEMBER: usize = 128;
/// What one member and its room entry take, beyond its id (counted against
/// the memory bound).
const MEMBER_BYTES: usize = 96;

/// The channel whose presence channel `channel` is, if it is one.
pub fn of(channel: &str) -> Option<&str> {
    channel.strip_prefix(PREFIX)
}

/// Whether `id` may name a member: 1 to 128 visible ASCII characters.
pub fn valid_member(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_MEMBER && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The channel got its first subscriber.
    Occupied,
    /// The channel's last subscriber left, the grace period ago.
    Vacated,
    /// A member arrived.
    Joined(SmolStr),
    /// A member left (its lease ran out).
    Left(SmolStr),
    /// Members acknowledged messages: each one's newest sequence.
    Seen(Vec<(SmolStr, u64)>),
}

/// A change on a channel, and when it happened (milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The channel.
    pub channel: SmolStr,
    /// What changed.
    pub change: Change,
    /// When.
    pub at_ms: u64,
}

/// A member as `GET /channels/C/presence` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// Its id.
    pub id: SmolStr,
    /// Polls and streams it has open now.
    pub connections: u32,
    /// When it joined (milliseconds since the epoch).
    pub since: u64,
    /// The newest sequence its own poll acknowledged (0: none yet).
    pub seen: u64,
}

/// The maps a poll looks up twice: seeded per map, and much cheaper than
/// SipHash on short keys.
type Map<V> = hashbrown::HashMap<SmolStr, V, foldhash::fast::RandomState>;

/// Who is on a presence channel.
#[derive(Debug, Default)]
struct Room {
    members: Map<Member>,
    /// Open polls and streams with no identity: counted, not listed.
    anonymous: u32,
    /// Open polls and streams, named or not.
    open: u32,
    /// When the room, empty, is vacated.
    vacant_at: Option<Instant>,
}

#[derive(Debug)]
struct Member {
    connections: u32,
    since: u64,
    /// When its lease runs out, once it has nothing open.
    expires: Option<Instant>,
    seen: u64,
    /// `seen` moved since it was last told.
    moved: bool,
}

impl Member {
    fn ack(&mut self, seq: u64) {
        if seq > self.seen {
            self.seen = seq;
            self.moved = true;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    rooms: Map<Room>,
    events: Vec<Event>,
}

/// Presence on the channels that match the `--presence` patterns.
#[derive(Debug)]
pub struct Presence {
    channels: Patterns,
    grace: Duration,
    budget: usize,
    meter: Meter,
    used: std::sync::atomic::AtomicUsize,
    state: Mutex<State>,
    changed: Notify,
}

impl Presence {
    /// Presence on `channels`, with leases of `grace`; members beyond
    /// `budget` bytes (counted in `meter`) are counted, not listed.
    pub fn new(channels: Patterns, grace: Duration, budget: usize, meter: Meter) -> Arc<Presence> {
        Arc::new(Presence {
            channels,
            grace,
            budget,
            meter,
            used: Default::default(),
            state: Mutex::default(),
            changed: Notify::new(),
        })
    }

    /// Whether `channel` keeps presence.
    pub fn applies(&self, channel: &str) -> bool {
        of(channel).is_none() && self.channels.matches(channel)
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A poll or stream opens on `channels` (each with the sequence its
    /// cursor acknowledges, if any) for `member`, or for no one; the lease
    /// it returns ends it when dropped. `None` when no channel keeps presence.
    pub fn enter<'c>(
        self: &Arc<Self>,
        channels: impl IntoIterator<Item = (&'c str, Option<u64>)>,
        member: Option<SmolStr>,
    ) -> Option<Box<Lease>> {
        let mut held: Held = Held::new();
        let mut state = self.state();
        let mut joined = false;
        for (channel, ack) in channels {
            if !self.applies(channel) {
                continue;
            }
            let State { rooms, events } = &mut *state;
            // The room's own name goes in the lease: a copy of a short
            // name, a count for a long one.
            let (name, room) = match rooms.get_key_value_mut(channel) {
                Some((name, room)) => (name.clone(), room),
                None => {
                    events.push(event(channel, Change::Occupied));
                    let name = SmolStr::from(channel);
                    (name.clone(), rooms.entry(name).or_default())
                }
            };
            room.vacant_at = None;
            room.open += 1;
            let Some(id) = &member else {
                room.anonymous += 1;
                held.push(name);
                continue;
            };
            let m = match room.members.get_mut(id.as_str()) {
                Some(m) => m,
                None if self.reserve(MEMBER_BYTES + id.len()) => {
                    events.push(event(channel, Change::Joined(id.clone())));
                    joined = true;
                    room.members.entry(id.clone()).or_insert(Member {
                        connections: 0,
                        since: now_ms(),
                        expires: None,
                        seen: 0,
                        moved: false,
                    })
                }
                None => {
                    room.anonymous += 1;
                    held.push(name);
                    continue;
                }
            };
            m.connections += 1;
            m.expires = None;
            if let Some(ack) = ack {
                m.ack(ack);
            }
            held.push(name);
        }
        drop(state);
        if joined {
            self.changed.notify_one();
        }
        (!held.is_empty()).then(|| {
            Box::new(Lease {
                presence: self.clone(),
                member,
                channels: held,
            })
        })
    }

    fn reserve(&self, bytes: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let fits = self
            .used
            .fetch_update(Relaxed, Relaxed, |used| {
                (used + bytes <= self.budget).then_some(used + bytes)
            })
            .is_ok();
        if fits {
            self.meter.add(bytes);
        }
        fits
    }

    fn release(&self, bytes: usize) {
        self.used
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
        self.meter.sub(bytes);
    }

    fn exit(&self, channels: &[SmolStr], member: Option<&str>) {
        let now = Instant::now();
        let mut state = self.state();
        for channel in channels {
            let Some(room) = state.rooms.get_mut(channel) else {
                continue;
            };
            match member.and_then(|id| room.members.get_mut(id)) {
                Some(m) => {
                    m.connections = m.connections.saturating_sub(1);
                    if m.connections == 0 {
                        m.expires = Some(now + self.grace);
                    }
                }
                None => room.anonymous = room.anonymous.saturating_sub(1),
            }
            room.open = room.open.saturating_sub(1);
            if room.open == 0 {
                room.vacant_at = Some(now + self.grace);
            }
        }
    }

    /// A member's newest acknowledged sequence on `channel` moves to `seq`.
    pub fn ack(&self, channel: &str, member: &str, seq: u64) {
        if let Some(m) = self
            .state()
            .rooms
            .get_mut(channel)
            .and_then(|room| room.members.get_mut(member))
        {
            m.ack(seq);
        }
    }

    /// Ends the leases that ran out by now and vacates the rooms left empty
    /// the grace period ago; queues the receipts that moved.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut freed = 0;
        let mut state = self.state();
        let State { rooms, events } = &mut *state;
        rooms.retain(|channel, room| {
            let mut seen = Vec::new();
            room.members.retain(|id, m| {
                if m.expires.is_some_and(|t| t <= now) {
                    events.push(event(channel, Change::Left(id.clone())));
                    freed += MEMBER_BYTES + id.len();
                    return false;
                }
                if std::mem::take(&mut m.moved) {
                    seen.push((id.clone(), m.seen));
                }
                true
            });
            if !seen.is_empty() {
                events.push(event(channel, Change::Seen(seen)));
            }
            let vacated = room.members.is_empty()
                && room.open == 0
                && room.vacant_at.is_some_and(|t| t <= now);
            if vacated {
                events.push(event(channel, Change::Vacated));
            }
            !vacated
        });
        drop(state);
        if freed > 0 {
            self.release(freed);
        }
    }

    /// Takes the changes queued so far.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut self.state().events)
    }

    /// Waits until a join is queued.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Who is on `channel`: the members by id, and how many open polls and
    /// streams have no identity.
    pub fn members(&self, channel: &str) -> (Vec<Shown>, u32) {
        let state = self.state();
        let Some(room) = state.rooms.get(channel) else {
            return (Vec::new(), 0);
        };
        let mut shown: Vec<Shown> = room
            .members
            .iter()
            .map(|(id, m)| Shown {
                id: id.clone(),
                connections: m.connections,
                since: m.since,
                seen: m.seen,
            })
            .collect();
        shown.sort_by(|a, b| a.id.cmp(&b.id));
        (shown, room.anonymous)
    }

    /// Every channel this instance keeps presence on, with its members.
    pub fn held(&self) -> Vec<(SmolStr, Vec<SmolStr>)> {
        self.state()
            .rooms
            .iter()
            .map(|(channel, room)| (channel.clone(), room.members.keys().cloned().collect()))
            .collect()
    }

    /// Members listed on every channel, for `/stats`.
    pub fn member_count(&self) -> usize {
        self.state().rooms.values().map(|r| r.members.len()).sum()
    }
}

/// The channels a lease holds: inline for one, so that a poll on one
/// channel makes one allocation for its lease, not two.
type Held = smallvec::SmallVec<[SmolStr; 1]>;

/// An open poll or stream's place in presence; dropping it ends it.
#[derive(Debug)]
pub struct Lease {
    presence: Arc<Presence>,
    member: Option<SmolStr>,
    channels: Held,
}

impl Lease {
    /// The member moves its receipt on `channel` to `seq` (an event stream
    /// that wrote a message).
    pub fn ack(&self, channel: &str, seq: u64) {
        if let Some(member) = &self.member {
            self.presence.ack(channel, member, seq);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.presence.exit(&self.channels, self.member.as_deref());
    }
}

fn event(channel: &str, change: Change) -> Event {
    Event {
        channel: channel.into(),
        change,
        at_ms: now_ms(),
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(grace: u64) -> Arc<Presence> {
        Presence::new(
            Patterns::new(vec!["room*".into()]),
            Duration::from_secs(grace),
            1 << 20,
            Meter::default(),
        )
    }

    fn changes(p: &Presence) -> Vec<Change> {
        p.take().into_iter().map(|e| e.change).collect()
    }

    fn joined(id: &str) -> Change {
        Change::Joined(id.into())
    }

    fn left(id: &str) -> Change {
        Change::Left(id.into())
    }

    async fn pass(secs: u64) {
        tokio::time::advance(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_re_polls_are_one_join_and_no_leave() {
        let p = presence(10);
        for _ in 0..20 {
            let lease = p.enter([("room1", None)], Some("alice".into()));
            pass(1).await;
            drop(lease);
            pass(2).await;
            p.sweep();
        }
        assert_eq!(changes(&p), [Change::Occupied, joined("alice")]);
        let (members, anonymous) = p.members("room1");
        assert_eq!((members.len(), anonymous), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_stops_polling_leaves_once_after_the_grace_period() {
        let p = presence(10);
        drop(p.enter([("room1", None)], Some("alice".into())));
        p.take();
        pass(9).await;
        p.sweep();
        assert!(changes(&p).is_empty(), "still within the grace period");
        pass(1).await;
        p.sweep();
        assert_eq!(changes(&p), [left("alice"), Change::Vacated]);
        pass(30).await;
        p.sweep();
        assert!(changes(&p).is_empty(), "left once");
        assert_eq!(p.members("room1").0, []);
    }

    #[tokio::test(start_paused = true)]
    async fn two_tabs_are_one_member_present_while_either_is_open() {
        let p = presence(5);
        let one = p.enter([("room1", None)], Some("alice".into()));
        let two = p.enter([("room1", None)], Some("alice".into()));
        assert_eq!(p.members("room1").0[0].connections, 2);
        drop(one);
        pass(60).await;
        p.sweep();
        assert_eq!(changes(&p), [Change::Occupied, joined("alice")]);
        drop(two);
        pass(5).await;
        p.sweep();
        assert_eq!(changes(&p), [left("alice"), Change::Vacated]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_within_the_grace_period_is_no_leave() {
        let p = presence(5);
        drop(p.enter([("room1", Some(3))], Some("bob".into())));
        pass(4).await;
        p.sweep();
        let _back = p.enter([("room1", Some(3))], Some("bob".into()));
        pass(30).await;
        p.sweep();
        let told = changes(&p);
        assert!(!told.contains(&left("bob")), "{told:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn seen_moves_only_when_a_poll_acknowledges_and_is_told_once() {
        let p = presence(5);
        let lease = p.enter([("room1", None)], Some("carol".into()));
        p.sweep();
        assert_eq!(p.members("room1").0[0].seen, 0);
        assert!(!changes(&p).iter().any(|c| matches!(c, Change::Seen(_))));
        drop(lease);
        let _lease = p.enter([("room1", Some(7))], Some("carol".into()));
        // An older cursor (another tab) never moves it back.
        let _older = p.enter([("room1", Some(4))], Some("carol".into()));
        p.sweep();
        assert_eq!(p.members("room1").0[0].seen, 7);
        p.sweep();
        let seen: Vec<_> = changes(&p)
            .into_iter()
            .filter(|c| matches!(c, Change::Seen(_)))
            .collect();
        assert_eq!(seen, [Change::Seen(vec![("carol".into(), 7)])]);
    }

    #[tokio::test(start_paused = true)]
    async fn anonymous_subscribers_are_counted_not_listed_and_channels_without_presence_keep_none()
    {
        let p = presence(5);
        let anon = p.enter([("room1", None), ("other", None)], None);
        assert!(p.enter([("other", None)], Some("dave".into())).is_none());
        assert!(
            p.enter([("$presence:room1", None)], Some("dave".into()))
                .is_none()
        );
        assert_eq!(p.members("room1"), (vec![], 1));
        assert_eq!(p.members("other"), (vec![], 0));
        drop(anon);
        pass(5).await;
        p.sweep();
        assert_eq!(changes(&p), [Change::Occupied, Change::Vacated]);
    }

    #[tokio::test(start_paused = true)]
    async fn members_beyond_the_budget_are_counted_not_listed_and_their_bytes_come_back() {
        let meter = Meter::default();
        let p = Presence::new(
            Patterns::new(vec!["*".into()]),
            Duration::from_secs(1),
            2 * MEMBER_BYTES + 10,
            meter.clone(),
        );
        let a = p.enter([("c", None)], Some("a".into()));
        let b = p.enter([("c", None)], Some("b".into()));
        let c = p.enter([("c", None)], Some("c".into()));
        let (members, anonymous) = p.members("c");
        assert_eq!((members.len(), anonymous), (2, 1));
        assert_eq!(meter.bytes(), 2 * (MEMBER_BYTES + 1));
        drop((a, b, c));
        pass(1).await;
        p.sweep();
        assert_eq!(meter.bytes(), 0);
    }
}
