//! What the hub holds: messages and their payloads, what they weigh, and
//! where a reader starts (`Since`): the one place that is decided.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::time::Instant;

/// What a message carries; the hub only needs its size.
pub trait Payload: Send + Sync + 'static {
    /// Bytes this payload holds from the start, with its bookkeeping. What it
    /// comes to hold later (encodings made on first use) it counts on the
    /// hub's [`Meter`].
    fn size(&self) -> usize;
}

/// Bytes that a hub's payloads hold beyond their [`Payload::size`]: added when
/// a payload grows, taken back when it is dropped. Counted against
/// [`Config::max_bytes`](super::Limits::max_bytes) with the history.
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
pub(super) struct Held {
    pub(super) messages: usize,
    pub(super) bytes: usize,
}

impl Held {
    pub(super) fn of<P: Payload>(message: &Message<P>) -> Held {
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

/// What an idempotent publish carried (a digest of its body and type), so
/// that a key reused for another message is told apart from a retry.
pub type Fingerprint = [u8; 16];
