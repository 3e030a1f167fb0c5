//! Events to the application (`--events-url`): channels occupied and
//! vacated, members joined and left, and (`--events-publishes`) messages
//! published, sent as batched JSON `POST`s signed with `--events-secret`.
//!
//! At least once: a batch stays queued until the receiver answers `2xx`,
//! and is sent again, with the same event ids, after a backoff with jitter.
//! The queue is bounded in bytes (counted against `--max-memory`); an event
//! that does not fit is dropped and counted.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::Notify;
use tracing::warn;

use crate::client::Target;
use crate::hub::Meter;
use crate::stats::EventStats;

/// The header a batch's signature comes in: `t=SECONDS,v1=HEX`, the hex an
/// HMAC-SHA256 with the secret of `SECONDS.BODY`.
pub const SIGNATURE: &str = "comethub-signature";
/// Most events in one batch.
const BATCH: usize = 100;
/// How long a wake-up waits for more events to send with it.
const GATHER: Duration = Duration::from_millis(50);
/// Longest an attempt may take.
const ATTEMPT: Duration = Duration::from_secs(10);
/// The first retry's delay, doubled for each failure up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(250);
/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A channel got its first subscriber.
    ChannelOccupied,
    /// A channel's last subscriber left, the grace period ago.
    ChannelVacated,
    /// A member arrived on a channel.
    MemberJoined,
    /// A member left a channel.
    MemberLeft,
    /// A message was published (`--events-publishes`).
    MessagePublished,
}

#[derive(Serialize)]
struct Event<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: Kind,
    time: u64,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
}

/// The events sender.
#[derive(Debug)]
pub struct Events {
    target: Target,
    secret: Option<Vec<u8>>,
    publishes: bool,
    budget: usize,
    meter: Meter,
    epoch: String,
    next: AtomicU64,
    queue: Mutex<VecDeque<Bytes>>,
    bytes: AtomicUsize,
    ready: Notify,
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Events {
    /// Events to `url`, signed with `secret`, queued within `budget` bytes
    /// (counted in `meter`); with `publishes`, every publish is one.
    pub fn new(
        url: &str,
        secret: Option<&str>,
        publishes: bool,
        budget: usize,
        meter: Meter,
    ) -> Result<Events, String> {
        Ok(Events {
            target: Target::new(url, "--events-url", None)?,
            secret: secret.map(|s| s.as_bytes().to_vec()),
            publishes,
            budget,
            meter,
            epoch: crate::protocol::new_epoch(),
            next: AtomicU64::new(1),
            queue: Mutex::default(),
            bytes: AtomicUsize::new(0),
            ready: Notify::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Whether every publish is an event.
    pub fn publishes(&self) -> bool {
        self.publishes
    }

    /// Queues an event; dropped (and counted) when the queue is full.
    pub fn push(
        &self,
        kind: Kind,
        channel: &str,
        member: Option<&str>,
        message_id: Option<&str>,
        time: u64,
    ) {
        let id = format!("{}-{}", self.epoch, self.next.fetch_add(1, Relaxed));
        let event = Event {
            id: &id,
            kind,
            time,
            channel,
            member,
            message_id,
        };
        let Ok(json) = serde_json::to_vec(&event) else {
            return;
        };
        let size = json.len() + 32;
        if self.bytes.load(Relaxed) + size > self.budget {
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        self.bytes.fetch_add(size, Relaxed);
        self.meter.add(size);
        self.queue().push_back(Bytes::from(json));
        self.ready.notify_one();
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Bytes>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters.
    pub fn stats(&self) -> EventStats {
        EventStats {
            sent: self.sent.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            failed: self.failed.load(Relaxed),
            queued: self.queue().len() as u64,
        }
    }

    /// Sends what is queued, batch by batch, for ever.
    pub async fn run(&self) {
        let mut failures = 0u32;
        loop {
            if self.queue().is_empty() {
                self.ready.notified().await;
                tokio::time::sleep(GATHER).await;
            }
            let batch: Vec<Bytes> = self.queue().iter().take(BATCH).cloned().collect();
            if batch.is_empty() {
                continue;
            }
            let body = body(&batch);
            let sent = tokio::time::timeout(ATTEMPT, self.send(body))
                .await
                .unwrap_or(false);
            if sent {
                failures = 0;
                let mut queue = self.queue();
                let taken: usize = queue.drain(..batch.len()).map(|e| e.len() + 32).sum();
                drop(queue);
                self.bytes.fetch_sub(taken, Relaxed);
                self.meter.sub(taken);
                self.sent.fetch_add(batch.len() as u64, Relaxed);
            } else {
                self.failed.fetch_add(1, Relaxed);
                if failures == 0 {
                    warn!(url = %self.target.path(), "the events receiver did not take a batch; retrying");
                }
                tokio::time::sleep(backoff(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }

    async fn send(&self, body: Bytes) -> bool {
        let mut request = self
            .target
            .request(http::Method::POST, self.target.path())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.secret {
            let time = crate::presence::now_ms() / 1000;
            request = request.header(SIGNATURE, signature(secret, time, &body));
        }
        let Ok(request) = request.body(Full::new(body)) else {
            return false;
        };
        matches!(self.target.send(request).await, Ok((status, _)) if status.is_success())
    }
}

/// `{"events":[…]}`.
fn body(batch: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 16);
    out.extend_from_slice(b"{\"events\":[");
    for (i, event) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(event);
    }
    out.extend_from_slice(b"]}");
    out.into()
}

/// The signature header's value for `body` sent at `time` (seconds).
pub fn signature(secret: &[u8], time: u64, body: &[u8]) -> String {
    // An HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(time.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("t={time},v1={hex}")
}

/// The delay before retry `n` (from 0): doubling from [`BACKOFF`] up to
/// [`MAX_BACKOFF`], half of it random, so that instances that failed
/// together do not retry together.
fn backoff(n: u32) -> Duration {
    let full = BACKOFF
        .saturating_mul(1 << n.min(16))
        .min(MAX_BACKOFF)
        .as_millis() as u64;
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(full / 2 + random % (full / 2 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_an_hmac_sha256_of_the_time_and_body() {
        let value = signature(b"Jefe", 0, b"what do ya want for nothing?");
        assert!(value.starts_with("t=0,v1="), "{value}");
        assert_eq!(value.len(), "t=0,v1=".len() + 64);
        assert_ne!(
            value,
            signature(b"Jefe", 1, b"what do ya want for nothing?")
        );
        assert_ne!(
            value,
            signature(b"Jeff", 0, b"what do ya want for nothing?")
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"0.what do ya want for nothing?");
        assert!(
            mac.verify_slice(&hex(&value["t=0,v1=".len()..])).is_ok(),
            "a receiver's check with the hmac crate passes"
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter_in_its_upper_half() {
        for n in 0..40 {
            let full = BACKOFF.saturating_mul(1 << n.min(16)).min(MAX_BACKOFF);
            let d = backoff(n);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?} against {full:?}");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_batch_is_one_json_object() {
        let meter = Meter::default();
        let events = Events::new("http://127.0.0.1:9/e", None, false, 400, meter.clone()).unwrap();
        for _ in 0..10 {
            events.push(Kind::MemberJoined, "room", Some("alice"), None, 1);
        }
        let stats = events.stats();
        assert!(stats.queued >= 1 && stats.queued < 10, "{stats:?}");
        assert_eq!(stats.dropped, 10 - stats.queued);
        assert!(meter.bytes() <= 400);
        let batch: Vec<Bytes> = events.queue().iter().cloned().collect();
        let parsed: serde_json::Value = serde_json::from_slice(&body(&batch)).unwrap();
        let first = &parsed["events"][0];
        assert_eq!(first["type"], "member_joined");
        assert_eq!(first["member"], "alice");
        assert_eq!(first["channel"], "room");
        assert_ne!(parsed["events"][0]["id"], parsed["events"][1]["id"]);
    }
}
