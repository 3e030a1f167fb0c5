//! Counters behind `/stats` and `/metrics`.
//!
//! Event counters are atomics bumped where things happen; gauges that the hub
//! owns (channels, waiting subscribers, history bytes) are read from it on demand.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::error::Reason;

/// Server-wide event counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Open client connections.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Messages published.
    pub published: AtomicU64,
    /// Requests refused with a 4xx/5xx, by reason.
    refused: [AtomicU64; Reason::ALL.len()],
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a refused request under its reason.
    pub fn refused(&self, reason: Reason) {
        self.refused[reason as usize].fetch_add(1, Relaxed);
    }

    /// Refusals so far, by reason (only the non-zero ones).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .zip(&self.refused)
            .map(|(r, n)| (r.name(), n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// A snapshot of the server's state, as `/stats` answers it.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Open client connections.
    pub connections: u64,
    /// Long-poll subscribers waiting for a message.
    pub waiting: usize,
    /// Open event streams.
    pub streams: usize,
    /// Channels held (with history or subscribers).
    pub channels: usize,
    /// Messages published since start.
    pub published: u64,
    /// Deliveries since start (one per subscriber per message).
    pub delivered: u64,
    /// Bytes the retained messages take: data, type, id, encodings and
    /// bookkeeping, as counted against `--max-memory`.
    pub history_bytes: usize,
    /// Messages retained in histories.
    pub messages: usize,
    /// Bytes counted against `--max-memory`: `history_bytes`, the channels
    /// and `auth_cache_bytes`.
    pub memory_bytes: usize,
    /// Bytes auth's caches take (verified tokens, the webhook's answers).
    pub auth_cache_bytes: usize,
    /// The memory bound (`--max-memory`).
    pub max_memory: usize,
    /// Messages evicted, oldest first, to stay within the memory bound.
    pub evicted: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Requests refused, by reason.
    pub refused: std::collections::BTreeMap<&'static str, u64>,
    /// Cluster mode only: the state of the link to Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisLink>,
    /// With `--presence`: members listed on every channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_members: Option<usize>,
    /// With `--events-url`: events sent, dropped, failed attempts, queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<EventStats>,
}

/// The events sent to the application (`--events-url`).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct EventStats {
    /// Events the receiver took.
    pub sent: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Attempts that failed (and were retried).
    pub failed: u64,
    /// Events waiting to be sent.
    pub queued: u64,
}

/// The link to Redis, in cluster mode.
#[derive(Debug, Clone, Serialize)]
pub struct RedisLink {
    /// Connected and following channels.
    pub up: bool,
    /// Times the link was re-established after a loss.
    pub reconnects: u64,
    /// Channels this instance follows on Redis (those with local subscribers).
    pub followed: usize,
    /// Redis commands that failed.
    pub errors: u64,
    /// On a Redis Cluster: each master, the slots it serves and whether it
    /// answered the last probe.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<Shard>,
}

/// A Redis Cluster master as this instance last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// Its address.
    pub node: String,
    /// The slots it serves (`0-5460`, or several ranges with commas).
    pub slots: String,
    /// Answered the last probe in time.
    pub up: bool,
}

/// A label value as the text exposition format wants it: backslash, double
/// quote and line feed escaped. The node names come from Redis.
fn label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

impl Snapshot {
    /// The snapshot in Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP comethub_{name} {help}\n# TYPE comethub_{name} {kind}\ncomethub_{name} {value}"
            );
        };
        metric(
            "connections",
            "gauge",
            "Open client connections.",
            self.connections,
        );
        metric(
            "waiting_subscribers",
            "gauge",
            "Long-poll subscribers waiting.",
            self.waiting as u64,
        );
        metric(
            "streams",
            "gauge",
            "Open event streams.",
            self.streams as u64,
        );
        metric("channels", "gauge", "Channels held.", self.channels as u64);
        metric(
            "published_total",
            "counter",
            "Messages published.",
            self.published,
        );
        metric(
            "delivered_total",
            "counter",
            "Messages handed to subscribers.",
            self.delivered,
        );
        metric(
            "history_bytes",
            "gauge",
            "Bytes retained messages take (data, type, encodings, bookkeeping).",
            self.history_bytes as u64,
        );
        metric(
            "messages",
            "gauge",
            "Messages retained in histories.",
            self.messages as u64,
        );
        metric(
            "memory_bytes",
            "gauge",
            "Bytes counted against the memory bound: retained messages, their channels and auth's caches.",
            self.memory_bytes as u64,
        );
        metric(
            "auth_cache_bytes",
            "gauge",
            "Bytes auth's caches take (verified tokens, the webhook's answers).",
            self.auth_cache_bytes as u64,
        );
        metric(
            "max_memory_bytes",
            "gauge",
            "The memory bound on retained messages.",
            self.max_memory as u64,
        );
        metric(
            "evicted_total",
            "counter",
            "Messages evicted, oldest first, to stay within the memory bound.",
            self.evicted,
        );
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since start.",
            self.uptime_seconds,
        );
        if let Some(members) = self.presence_members {
            metric(
                "presence_members",
                "gauge",
                "Members listed in presence, on every channel.",
                members as u64,
            );
        }
        if let Some(events) = &self.events {
            metric(
                "events_sent_total",
                "counter",
                "Events the application's receiver took.",
                events.sent,
            );
            metric(
                "events_dropped_total",
                "counter",
                "Events dropped because their queue was full.",
                events.dropped,
            );
            metric(
                "events_failed_total",
                "counter",
                "Attempts to send events that failed and were retried.",
                events.failed,
            );
            metric(
                "events_queued",
                "gauge",
                "Events waiting to be sent.",
                events.queued,
            );
        }
        if let Some(redis) = &self.redis {
            metric(
                "redis_up",
                "gauge",
                "1 while the link to Redis is up.",
                u64::from(redis.up),
            );
            metric(
                "redis_reconnects_total",
                "counter",
                "Times the link to Redis was re-established.",
                redis.reconnects,
            );
            metric(
                "redis_followed_channels",
                "gauge",
                "Channels followed on Redis.",
                redis.followed as u64,
            );
            metric(
                "redis_errors_total",
                "counter",
                "Redis commands that failed.",
                redis.errors,
            );
            if !redis.shards.is_empty() {
                out.push_str(
                    "# HELP comethub_redis_shard_up 1 while a Redis Cluster master answers.\n\
                     # TYPE comethub_redis_shard_up gauge\n",
                );
                for shard in &redis.shards {
                    let _ = writeln!(
                        out,
                        "comethub_redis_shard_up{{node=\"{}\",slots=\"{}\"}} {}",
                        label(&shard.node),
                        label(&shard.slots),
                        u64::from(shard.up)
                    );
                }
            }
        }
        out.push_str("# HELP comethub_refused_total Requests refused, by reason.\n");
        out.push_str("# TYPE comethub_refused_total counter\n");
        for reason in Reason::ALL.map(Reason::name) {
            let n = self.refused.get(reason).copied().unwrap_or(0);
            let _ = writeln!(out, "comethub_refused_total{{reason=\"{reason}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_exposition_format_says() {
        assert_eq!(label("10.0.0.1:7000"), "10.0.0.1:7000");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
