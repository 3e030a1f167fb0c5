//! Expiry: a queue of due times, so that a sweep touches only the channels
//! whose oldest message is due to expire (or, in a cache, whose copy is due
//! to be dropped for want of readers).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use tokio::time::Instant;

use super::channel::Channel;
use super::message::{Held, Payload};
use super::{Hub, Limits, Mode};

/// The sweep queue: channels by the time they are next due.
pub(super) type Due = BinaryHeap<Reverse<(Instant, Arc<str>)>>;

impl<P: Payload> Channel<P> {
    /// sooner.
    pub(super) fn schedule(&mut self, due: &mut Due, at: Option<Instant>) {
        let Some(at) = at else { return };
        if self.scheduled.is_some_and(|s| s <= at) {
            return;
        }
        self.scheduled = Some(at);
        due.push(Reverse((at, self.name.clone())));
    }

    /// Trims the channel and schedules its next look; returns what it freed.
    pub(super) fn refresh(
        &mut self,
        due: &mut Due,
        limits: &Limits,
        mode: Mode,
        now: Instant,
    ) -> Held {
        let freed = self.trim(limits, now);
        let at = self.next_due(limits, mode);
        self.schedule(due, at);
        freed
    }

    /// When the sweep must next look at this channel, if ever.
    pub(super) fn next_due(&self, limits: &Limits, mode: Mode) -> Option<Instant> {
        let expiry = self.history.front().map(|m| m.at + limits.history_age);
        let idle = match (mode, self.covered) {
            (Mode::Cache { idle }, Some(_)) => Some(self.visited + idle),
            _ => None,
        };
        match (expiry, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<P: Payload> Hub<P> {
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
            let mut freed = ch.trim(&self.limits, now);
            if let Mode::Cache { idle } = self.mode
                && !ch.listened()
                && now.saturating_duration_since(ch.visited) >= idle
            {
                freed += ch.held();
                ch.history.clear();
                ch.covered = None;
            }
            let at = ch.next_due(&self.limits, self.mode);
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
        state.keys.expire(self.limits.idempotency_window, now);
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
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
        let w = waiting(poll(&hub, &[("c", Since::Id(seq))], 1).unwrap());
        assert!(!w.gap);
        drop(w);
        let w = waiting(poll(&hub, &[("c", Since::Id(seq - 1))], 1).unwrap());
        assert!(w.gap);
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
}
