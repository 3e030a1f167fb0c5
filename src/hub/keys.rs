//! Idempotency keys: a publish retried under the same key within the
//! window publishes nothing and answers the first one's sequence; the same
//! key with another message is told apart by its fingerprint.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::message::{Fingerprint, Message, Payload};
use super::{Hub, Refused};

/// Most idempotency keys remembered at once.
pub const MAX_KEYS: usize = 65_536;

/// The idempotency keys of recent publishes, each with the sequence it
/// published, so that a retry within the window publishes nothing. Oldest
/// first in `order`: a key is never renewed, so insertion order is expiry
/// order. Past [`MAX_KEYS`] the oldest are forgotten early.
#[derive(Debug, Default)]
pub(super) struct Keys {
    /// By `KEY \n CHANNEL` (a key has no newline).
    seen: HashMap<Arc<str>, (u64, Instant, Fingerprint)>,
    order: VecDeque<(Arc<str>, Instant)>,
    pub(super) bytes: usize,
}

impl Keys {
    /// Bytes a remembered key takes: its text, and two map and queue
    /// slots, the `Arc`'s counts and the allocator's rounding.
    pub(super) fn cost(name: &str) -> usize {
        name.len() + 112
    }

    pub(super) fn name(channel: &str, key: &str) -> String {
        format!("{key}\n{channel}")
    }

    /// The sequence published under `name` within `window` of `now`, and
    /// what it published.
    pub(super) fn get(
        &self,
        name: &str,
        window: Duration,
        now: Instant,
    ) -> Option<(u64, Fingerprint)> {
        let (seq, at, print) = self.seen.get(name)?;
        (now.saturating_duration_since(*at) < window).then_some((*seq, *print))
    }

    pub(super) fn insert(&mut self, name: String, seq: u64, print: Fingerprint, now: Instant) {
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
    pub(super) fn expire(&mut self, window: Duration, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= window)
        {
            self.pop();
        }
    }

    pub(super) fn pop(&mut self) {
        if let Some((name, at)) = self.order.pop_front() {
            self.bytes -= Keys::cost(&name);
            if self.seen.get(&name).is_some_and(|(_, a, _)| *a == at) {
                self.seen.remove(&name);
            }
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

impl<P: Payload> Hub<P> {
    /// [`Hub::publish`] under an idempotency key, which covers the whole
    /// publish: if the key was used on the first of `channels` within the
    /// window, nothing is published, and the first publish's sequence is
    /// returned if it carried the same `print` (which should cover the
    /// channel list, so that the same key for other channels is a conflict).
    pub fn publish_once(
        &self,
        channels: &[&str],
        key: &str,
        print: Fingerprint,
        make: impl Fn(u64) -> P,
    ) -> Result<Published<P>, Refused> {
        let state = self.open()?;
        let first = channels.first().ok_or(Refused::Channels)?;
        let window = self.limits.idempotency_window;
        match state
            .keys
            .get(&Keys::name(first, key), window, Instant::now())
        {
            Some((seq, first)) if first == print => return Ok(Published::Replayed(seq)),
            Some(_) => return Ok(Published::Conflict),
            None => {}
        }
        let key = Some((key.to_owned(), print));
        let (message, delivered) = self.publish_in(state, channels, key, make)?;
        Ok(Published::New(message, delivered))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    /// Two messages' fingerprints.
    const P1: Fingerprint = [1; 16];
    const P2: Fingerprint = [2; 16];

    #[tokio::test(start_paused = true)]
    async fn a_retried_key_publishes_nothing_within_its_window() {
        // hub(..) remembers keys for 60 s.
        let hub = hub(10, 300);
        let first = hub.publish_once(&["a"], "k1", P1, |_| "m1").unwrap();
        let Published::New(m1, _) = first else {
            panic!("first publish replayed");
        };
        let w = poll(&hub, &[("a", Since::Id(m1.seq))], 10).unwrap();
        assert!(matches!(
            hub.publish_once(&["a"], "k1", P1, |_| "again"),
            Ok(Published::Replayed(seq)) if seq == m1.seq
        ));
        // The same key for another message is a conflict, not a replay.
        assert!(matches!(
            hub.publish_once(&["a"], "k1", P2, |_| "other"),
            Ok(Published::Conflict)
        ));
        // Nothing was handed out or kept.
        let waiter = waiting(w);
        assert!(matches!(
            waiter.wait(Duration::from_millis(10)).await,
            Outcome::Timeout
        ));
        assert_eq!(hub.info("a").messages, 1);
        // Another key, or the same key on another channel, publishes.
        assert!(matches!(
            hub.publish_once(&["a"], "k2", P2, |_| "m2"),
            Ok(Published::New(..))
        ));
        assert!(matches!(
            hub.publish_once(&["b"], "k1", P2, |_| "b1"),
            Ok(Published::New(..))
        ));
        // Past the window the key is forgotten, and the sweep frees it.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            hub.publish_once(&["a"], "k1", P1, |_| "x"),
            Ok(Published::Replayed(_))
        ));
        let held = hub.snapshot().memory_bytes;
        tokio::time::advance(Duration::from_secs(1)).await;
        hub.sweep();
        assert!(hub.snapshot().memory_bytes < held);
        assert!(matches!(
            hub.publish_once(&["a"], "k1", P2, |_| "m3"),
            Ok(Published::New(..))
        ));
        assert_eq!(hub.info("a").messages, 3);
    }

    #[test]
    fn keys_past_the_bound_forget_the_oldest() {
        let hub = hub(1, 300);
        for i in 0..=MAX_KEYS {
            hub.publish_once(&["a"], &i.to_string(), P1, |_| "m")
                .unwrap();
        }
        assert!(matches!(
            hub.publish_once(&["a"], "0", P1, |_| "m"),
            Ok(Published::New(..))
        ));
        let newest = MAX_KEYS.to_string();
        assert!(matches!(
            hub.publish_once(&["a"], &newest, P1, |_| "m"),
            Ok(Published::Replayed(_))
        ));
        assert!(hub.state().keys.seen.len() <= MAX_KEYS);
    }
}
