//! The memory bound: what the histories, the channels, the keys and what
//! the server keeps outside the hub weigh, and the eviction of the oldest
//! messages across channels that keeps them within `max_bytes`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::channel::channel_cost;
use super::message::{Held, Payload};
use super::{Hub, State};

impl<P: Payload> State<P> {
    /// Evicts the oldest messages across channels until `incoming` more bytes
    /// fit within `max` (with the `metered` bytes held beside the messages);
    /// returns how many it evicted, or `None` if no more can go and they still
    /// do not fit.
    pub(super) fn make_room(&mut self, max: usize, metered: usize, incoming: usize) -> Option<u64> {
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
    pub(super) fn used(&self, metered: usize) -> usize {
        self.held.bytes + metered + self.channels.len() * channel_cost::<P>() + self.keys.bytes
    }

    /// Notes a message kept in `channel`'s history, in publish order.
    pub(super) fn keep_order(&mut self, channel: &Arc<str>, seq: u64) {
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
    /// Evicts the oldest messages until what the payloads grew by since the
    /// last publish (encodings made on first use) fits within `max_bytes`.
    pub fn fit(&self) {
        if self.limits.max_bytes > 0 {
            self.fit_in(&mut self.state(), 0);
        }
    }

    /// Within `max_bytes` (if set), evicts the oldest messages until
    /// `incoming` more bytes fit, and counts what it evicted; returns whether
    /// they fit.
    pub(super) fn fit_in(&self, state: &mut State<P>, incoming: usize) -> bool {
        if self.limits.max_bytes == 0 {
            return true;
        }
        let evicted = state.make_room(self.limits.max_bytes, self.metered(), incoming);
        self.evictions
            .fetch_add(evicted.unwrap_or_default(), Relaxed);
        evicted.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    #[tokio::test(start_paused = true)]
    async fn the_memory_bound_evicts_the_oldest_messages_across_channels_first() {
        let hub = bounded(10, 2);
        let (a1, _) = hub.publish(&["a"], |_| "aaa").unwrap();
        hub.publish(&["b"], |_| "bbb").unwrap();
        hub.publish(&["a"], |_| "ccc").unwrap();
        assert_eq!(hub.snapshot().history_bytes, 9);
        // 12 bytes would not fit: a's first message, the oldest of all, goes.
        hub.publish(&["b"], |_| "ddd").unwrap();
        let s = hub.snapshot();
        assert_eq!((s.history_bytes, s.messages, s.evicted), (9, 3, 1));
        assert_eq!(
            ready(poll(&hub, &[("a", Since::Id(a1.seq - 1))], 10).unwrap()),
            (vec!["ccc"], true),
            "a reader from before the evicted message learns of the gap"
        );
        assert_eq!(
            ready(poll(&hub, &[("a", Since::Id(a1.seq))], 10).unwrap()),
            (vec!["ccc"], false)
        );
        assert_eq!(
            ready(poll(&hub, &[("b", Since::Oldest)], 10).unwrap()).0,
            vec!["bbb", "ddd"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_evicted_whole_is_freed_and_its_readers_told_of_the_gap() {
        let hub = bounded(6, 2);
        let (a1, _) = hub.publish(&["a"], |_| "aaa").unwrap();
        hub.publish(&["b"], |_| "bbb").unwrap();
        hub.publish(&["b"], |_| "ccc").unwrap();
        assert!(!hub.has_channel("a"));
        let w = waiting(poll(&hub, &[("a", Since::Id(a1.seq - 1))], 10).unwrap());
        assert!(w.gap);
    }

    #[tokio::test(start_paused = true)]
    async fn what_eviction_cannot_make_room_for_is_refused() {
        let hub = bounded(6, 1);
        hub.publish(&["a"], |_| "aaa").unwrap();
        let huge: &'static str = "x".repeat(hub.max_bytes() + 1).leak();
        assert_eq!(
            hub.publish(&["a"], |_| huge).err(),
            Some(Refused::Memory),
            "larger than the bound"
        );
        assert_eq!(hub.snapshot().messages, 1, "and nothing evicted for it");
        // Bytes held outside the history (encodings still in use) that
        // eviction cannot free.
        hub.meter().add(hub.max_bytes());
        assert_eq!(hub.publish(&["b"], |_| "bb").err(), Some(Refused::Memory));
        assert_eq!(hub.snapshot().messages, 1, "nothing evicted in vain");
        hub.meter().sub(hub.max_bytes());
        hub.publish(&["b"], |_| "bb").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn growth_after_a_publish_is_evicted_by_the_next_sweep() {
        let hub = bounded(10, 1);
        hub.publish(&["a"], |_| "aaa").unwrap();
        hub.publish(&["a"], |_| "bbb").unwrap();
        // An encoding made on first use.
        hub.meter().add(6);
        assert_eq!(hub.snapshot().history_bytes, 12);
        hub.sweep();
        let s = hub.snapshot();
        assert_eq!((s.history_bytes, s.messages, s.evicted), (9, 1, 1));
    }
}
