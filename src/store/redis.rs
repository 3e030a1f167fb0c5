//! The Redis store (`--redis URL`): several instances share one set of channels.
//!
//! Each channel's history is a Redis Stream, so message ids are stream ids, valid
//! on every instance and after any restart. A publish runs one Lua script that
//! appends to the stream, trims it by count and age (remembering the newest id it
//! dropped, so a resume can tell a gap), and announces the message on the
//! channel's Pub/Sub topic; being one script, announcements go out in stream
//! order. Each instance keeps a single RESP3 connection (on a Redis Cluster,
//! one per node: see [`super::connection`]) on which it follows the
//! topics of the channels it has subscribers for, and hands what arrives to its
//! hub, kept in cache mode: to the waiters, and into its copy of the channel.
//!
//! A long-poll registers its waiter, makes sure the channel is followed, then
//! reads the stream after its `since`: a message published at any moment is
//! either in that read or reaches the waiter. From then on the copy holds every
//! message after the id that read saw, so later polls from there are answered
//! without asking Redis. When the link drops, new requests get `503`; waiters
//! keep waiting. Once it is back, every waiter is answered `204` with its own
//! position, every event stream ends and the copies are dropped, so each client
//! reads what it missed from the stream.

use smol_str::SmolStr;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::connection::{Con, Lua, Target};
use super::{ChannelState, Message, Polled, Published, Stream, hub_limits};
use crate::error::Error;
use crate::hub::{self, Hub, Limits, Outcome, Since, Waiter};
use crate::protocol::{Content, Ids, Meter};
use crate::stats::{RedisLink, Shard};

/// Prefix of every key and topic comethub uses in Redis.
const PREFIX: &str = "comethub:";
/// How long this instance keeps its copy of a channel nobody here uses.
const COPY_IDLE: Duration = Duration::from_secs(10);
/// How long a connection attempt or a command may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a publish waits for `--redis-replicas` to confirm it.
const REPLICA_WAIT: Duration = Duration::from_secs(1);
/// Connections that carry publishes with `--redis-replicas`: `WAIT` holds
/// its connection, so publishes take turns on a few.
const DURABLE_CONNECTIONS: usize = 4;
/// How often a cluster's masters are probed, and how long each may take.
const SHARD_PROBE: Duration = Duration::from_secs(1);
/// Reconnection backoff bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often channels nobody here waits on any more are unfollowed.
const UNFOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// How long a channel's last and dropped ids are remembered after its last
/// publish, so that a late resume still learns of a gap.
const META_TTL: Duration = Duration::from_secs(24 * 3600);

/// Trims a stream to the history age, raising the dropped watermark. Shared by
/// the scripts below.
const TRIM_AGE: &str = r#"
local function trim_age(s, m, age)
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
  if cutoff <= 0 then return end
  -- Cheap check first: a reverse range with nothing below it scans the stream.
  local first = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)[1]
  if not first or tonumber(string.match(first[1], '^%d+')) >= cutoff then return end
  cutoff = string.format('%d', cutoff)
  local old = redis.call('XREVRANGE', s, '(' .. cutoff .. '-0', '-', 'COUNT', 1)
  if old[1] then
    redis.call('HSET', m, 'dropped', old[1][1])
    redis.call('XTRIM', s, 'MINID', cutoff .. '-0')
  end
end
"#;

/// KEYS: stream, meta, and the idempotency key's if one is given. ARGV:
/// topic, history, age ms, meta ttl ms, type, data, key window ms, the
/// command that announces (`PUBLISH`, or `SPUBLISH` on a cluster), and the
/// message's fingerprint (hex). Returns `{id, instances, replayed}`: a key
/// seen within its window publishes nothing; for the same fingerprint it
/// returns the id it published then (`replayed` 1), for another one
/// `replayed` 2. It still writes the key again (unchanged, with its
/// expiry), so that a `WAIT` after it covers the first publish too,
/// wherever that was made. The key holds `ID FINGERPRINT`.
const PUBLISH: &str = r#"
local s, m = KEYS[1], KEYS[2]
if KEYS[3] then
  local first = redis.call('GET', KEYS[3])
  if first then
    redis.call('SET', KEYS[3], first, 'KEEPTTL')
    local id, print = string.match(first, '^(%S+) ?(%S*)$')
    if print ~= '' and print ~= ARGV[9] then return {id, 0, 2} end
    return {id, 0, 1}
  end
end
local history, age = tonumber(ARGV[2]), tonumber(ARGV[3])
local id = redis.call('XADD', s, '*', 't', ARGV[5], 'd', ARGV[6])
local over = redis.call('XLEN', s) - history
if over > 0 then
  local old = redis.call('XRANGE', s, '-', '+', 'COUNT', over + 1)
  redis.call('HSET', m, 'dropped', old[over][1])
  if old[over + 1] then
    redis.call('XTRIM', s, 'MINID', old[over + 1][1])
  else
    redis.call('XTRIM', s, 'MAXLEN', 0)
  end
end
trim_age(s, m, age)
redis.call('HSET', m, 'last', id)
redis.call('PEXPIRE', s, age)
redis.call('PEXPIRE', m, ARGV[4])
if KEYS[3] then redis.call('SET', KEYS[3], id .. ' ' .. ARGV[9], 'PX', ARGV[7]) end
local n = redis.call(ARGV[8], ARGV[1], 'm' .. id .. '\n' .. ARGV[5] .. '\n' .. ARGV[6])
return {id, n, 0}
"#;

/// KEYS: stream, meta. ARGV: after (an id, `-` for the oldest, `+` for none),
/// count, age ms. Returns `{last, dropped, entries, length}`.
const READ: &str = r#"
local s, m = KEYS[1], KEYS[2]
trim_age(s, m, tonumber(ARGV[3]))
local last = redis.call('HGET', m, 'last') or '0-0'
local dropped = redis.call('HGET', m, 'dropped') or '0-0'
if redis.call('EXISTS', s) == 0 then dropped = last end
local entries = {}
if ARGV[1] ~= '+' and tonumber(ARGV[2]) > 0 then
  local from = ARGV[1]
  if from ~= '-' then from = '(' .. from end
  entries = redis.call('XRANGE', s, from, '+', 'COUNT', ARGV[2])
end
return {last, dropped, entries, redis.call('XLEN', s)}
"#;

/// KEYS: stream, meta. ARGV: topic, the command that announces. Returns 1
/// when the channel had messages.
const DELETE: &str = r#"
local existed = redis.call('DEL', KEYS[1])
local last = redis.call('HGET', KEYS[2], 'last')
if last then redis.call('HSET', KEYS[2], 'dropped', last) end
redis.call(ARGV[2], ARGV[1], 'x')
return existed
"#;

/// Channels in Redis, and this instance's link to it.
#[derive(Debug)]
pub struct Redis {
    hub: Arc<Hub<Content>>,
    meter: Meter,
    target: Target,
    link: Mutex<Option<Link>>,
    follow: mpsc::UnboundedSender<Follow>,
    requests: AsyncMutex<mpsc::UnboundedReceiver<Follow>>,
    history: usize,
    age_ms: u64,
    key_window_ms: u64,
    replicas: u32,
    turn: AtomicUsize,
    scripts: Scripts,
    up: watch::Sender<bool>,
    reconnects: AtomicU64,
    followed: AtomicUsize,
    errors: AtomicU64,
    /// On a cluster: the masters as the last probe found them.
    shards: Mutex<Vec<Shard>>,
}

#[derive(Debug, Clone)]
struct Link {
    con: Con,
    /// With `--redis-replicas`: the connections publishes and their `WAIT`
    /// go on.
    durable: Vec<Con>,
    down: Arc<Notify>,
}

#[derive(Debug)]
struct Scripts {
    publish: Lua,
    read: Lua,
    delete: Lua,
}

/// A request to follow a channel's topic; answered once it is followed.
#[derive(Debug)]
struct Follow {
    channel: Arc<str>,
    done: oneshot::Sender<bool>,
}

/// One read of a channel's stream.
#[derive(Debug)]
struct Read {
    /// Where the reader stands if no message comes back: its `since`, or the
    /// channel's last id.
    position: u64,
    /// The reader has every message up to here but those read, or was told
    /// it missed them.
    from: u64,
    /// The channel's last id when it was read.
    last: u64,
    gap: bool,
    messages: Vec<Message>,
    length: usize,
}

fn stream_key(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}:s")
}

fn meta_key(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}:m")
}

/// Where a publish's idempotency key is kept: beside its channel's stream,
/// on the same hash slot.
fn key_key(channel: &str, key: &str) -> String {
    format!("{PREFIX}{{{channel}}}:k:{key}")
}

fn topic(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}")
}

fn channel_of_topic(topic: &[u8]) -> Option<&str> {
    let name = topic.strip_prefix(PREFIX.as_bytes())?;
    let name = name.strip_prefix(b"{")?.strip_suffix(b"}")?;
    std::str::from_utf8(name).ok()
}

fn message(id: &str, content_type: Bytes, data: Bytes, meter: &Meter) -> Option<Message> {
    let seq = Ids::parse_stream(id)?;
    Some(hub::Message::new(
        seq,
        Content::new(
            Bytes::copy_from_slice(id.as_bytes()),
            data,
            content_type,
            meter,
        ),
    ))
}

/// Parses a topic announcement: `m` ID `\n` TYPE `\n` DATA, or `x` (deleted).
fn announcement(payload: &[u8], meter: &Meter) -> Option<Result<Message, ()>> {
    match payload.split_first()? {
        (b'x', _) => Some(Err(())),
        (b'm', rest) => {
            let mut parts = rest.splitn(3, |&b| b == b'\n');
            let id = std::str::from_utf8(parts.next()?).ok()?;
            let content_type = Bytes::copy_from_slice(parts.next()?);
            let data = Bytes::copy_from_slice(parts.next()?);
            message(id, content_type, data, meter).map(Ok)
        }
        _ => None,
    }
}

/// Where a reader from `since` (pinned: not `Next`) stands: after this
/// sequence (0: before the oldest).
fn position(since: Since) -> u64 {
    match since {
        Since::Id(seq) => seq,
        _ => 0,
    }
}

/// Waits for `waiter` (if any) to be woken, or `timeout`.
async fn first_woken(
    waiter: Option<Waiter<Content>>,
    timeout: Duration,
) -> (usize, Outcome<Content>) {
    match waiter {
        Some(waiter) => waiter.wait(timeout).await,
        None => {
            tokio::time::sleep(timeout).await;
            (0, Outcome::Timeout)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bulk(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Checks a `--redis` URL.
pub fn check_url(url: &str) -> Result<(), String> {
    Target::new(url).map(drop)
}

impl Redis {
    /// A store on the Redis at `url`; the link comes up once [`Store::run`](super::Store::run) runs.
    pub fn new(limits: &Limits, url: &str, replicas: u32) -> Result<Redis, String> {
        let target = Target::new(url)?;
        let (follow, requests) = mpsc::unbounded_channel();
        let lib = |body: &str| Lua::new(format!("{TRIM_AGE}{body}"));
        let hub = Hub::new(hub_limits(limits), hub::Mode::Cache { idle: COPY_IDLE });
        Ok(Redis {
            meter: hub.meter().clone(),
            hub,
            target,
            link: Mutex::new(None),
            follow,
            requests: AsyncMutex::new(requests),
            history: limits.history,
            age_ms: limits.history_age.as_millis() as u64,
            key_window_ms: limits.idempotency_window.as_millis().max(1) as u64,
            replicas,
            turn: AtomicUsize::new(0),
            scripts: Scripts {
                publish: lib(PUBLISH),
                read: lib(READ),
                delete: Lua::new(DELETE.to_owned()),
            },
            up: watch::Sender::new(false),
            reconnects: AtomicU64::new(0),
            followed: AtomicUsize::new(0),
            errors: AtomicU64::new(0),
            shards: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn hub(&self) -> &Arc<Hub<Content>> {
        &self.hub
    }

    /// Waits until the link is up, or `limit` has passed; returns whether it is.
    pub async fn wait_up(&self, limit: Duration) -> bool {
        let mut up = self.up.subscribe();
        let _ = tokio::time::timeout(limit, up.wait_for(|&u| u)).await;
        *self.up.borrow()
    }

    /// The link's state for `/stats` and `/metrics`.
    pub fn link_state(&self) -> RedisLink {
        RedisLink {
            up: *self.up.borrow(),
            reconnects: self.reconnects.load(Relaxed),
            followed: self.followed.load(Relaxed),
            errors: self.errors.load(Relaxed),
            shards: self
                .shards
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    fn link(&self) -> Result<Link, Error> {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Error::StoreUnavailable)
    }

    /// Counts a failed command; a connection that no longer answers is dropped
    /// so the link task reconnects.
    ///
    /// A cluster connection mends itself node by node (and says so with a
    /// disconnection push), so a failed command there fails only itself: a
    /// shard that is down makes only its channels answer `503`.
    fn failed(&self, link: &Link, err: &redis::RedisError) -> Error {
        self.errors.fetch_add(1, Relaxed);
        warn!(%err, "redis command failed");
        // A master demoted by a failover refuses writes: find the new one.
        let demoted = err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        let broken = err.is_io_error() || err.is_timeout() || err.is_connection_dropped();
        if (broken || demoted) && !link.con.mends_itself() {
            link.down.notify_one();
        }
        Error::StoreUnavailable
    }

    pub(super) async fn publish(
        &self,
        channel: &str,
        key: Option<&str>,
        data: Bytes,
        content_type: Bytes,
    ) -> Result<Published, Error> {
        let link = self.link()?;
        let stream = stream_key(channel);
        let mut invocation = self.scripts.publish.call();
        invocation.key(&stream).key(meta_key(channel));
        if let Some(key) = key {
            invocation.key(key_key(channel, key));
        }
        invocation
            .arg(topic(channel))
            .arg(self.history)
            .arg(self.age_ms)
            .arg(META_TTL.as_millis() as u64)
            .arg(content_type.as_ref())
            .arg(data.as_ref())
            .arg(self.key_window_ms)
            .arg(link.con.publish_command())
            .arg(key.map_or_else(String::new, |_| {
                hex(&crate::protocol::fingerprint(&data, &content_type))
            }));
        let turn = self.turn.fetch_add(1, Relaxed);
        let mut con = match link.durable.get(turn % link.durable.len().max(1)) {
            Some(durable) => durable.clone(),
            None => link.con.clone(),
        };
        let (id, instances, replayed): (Vec<u8>, usize, u8) = invocation
            .run(&mut con)
            .await
            .map_err(|e| self.failed(&link, &e))?;
        if replayed == 2 {
            return Err(Error::KeyReused);
        }
        if self.replicas > 0 {
            // Waits for every write this connection made so far, this one's too.
            let confirmed = con
                .wait(&stream, self.replicas, REPLICA_WAIT)
                .await
                .map_err(|e| self.failed(&link, &e))?;
            if confirmed < self.replicas {
                self.errors.fetch_add(1, Relaxed);
                warn!(
                    confirmed,
                    asked = self.replicas,
                    "publish not confirmed by the replicas"
                );
                return Err(Error::NotReplicated);
            }
        }
        Ok(Published {
            id: id.into(),
            subscribers: instances,
            replayed: replayed != 0,
        })
    }

    /// Reads the stream of `channel` after `since`, at most `limit` messages.
    async fn read(&self, channel: &str, since: Since, limit: usize) -> Result<Read, Error> {
        let mut link = self.link()?;
        let from = match since {
            Since::Next => "+".to_owned(),
            Since::Oldest | Since::Foreign => "-".to_owned(),
            Since::Id(seq) => Ids::Stream.format(seq),
        };
        type Entry = (String, Vec<Vec<u8>>);
        let (last, dropped, entries, length): (String, String, Vec<Entry>, usize) = self
            .scripts
            .read
            .call()
            .key(stream_key(channel))
            .key(meta_key(channel))
            .arg(from)
            .arg(limit.min(self.history))
            .arg(self.age_ms)
            .run(&mut link.con)
            .await
            .map_err(|e| self.failed(&link, &e))?;
        let last = Ids::parse_stream(&last).unwrap_or(0);
        let dropped = Ids::parse_stream(&dropped).unwrap_or(0);
        let messages = entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let mut content_type = None;
                let mut data = None;
                let mut fields = fields.into_iter();
                while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                    match name.as_slice() {
                        b"t" => content_type = Some(Bytes::from(value)),
                        b"d" => data = Some(Bytes::from(value)),
                        _ => {}
                    }
                }
                message(&id, content_type?, data?, &self.meter)
            })
            .collect();
        let (after, gap) = since.start(last, dropped, u64::MAX);
        Ok(Read {
            position: if after == 0 { last } else { after },
            from: after.max(dropped),
            last,
            gap,
            messages,
            length,
        })
    }

    /// Makes sure this instance follows `channel`'s topic.
    async fn follow(&self, channel: &str) -> Result<(), Error> {
        let (done, followed) = oneshot::channel();
        let request = Follow {
            channel: channel.into(),
            done,
        };
        if self.follow.send(request).is_err() || followed.await != Ok(true) {
            return Err(Error::StoreUnavailable);
        }
        Ok(())
    }

    /// Follows `channel`, then reads its stream after `since`: what a
    /// waiter already registered does, so that a message published at any
    /// point is in the read or reaches the waiter.
    async fn follow_and_read(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
    ) -> Result<Read, Error> {
        self.follow(channel).await?;
        self.read(channel, since, limit).await
    }

    /// A long-poll on `channels`. The channels this instance's copy covers
    /// are read from it under one lock; each other one is read after a
    /// waiter is on it and the instance follows it: waiter, follow, then
    /// the stream, so that a message published at any point is in the read
    /// or reaches the waiter. A message that may not directly follow what
    /// was read starts it all again from where each channel stands. When
    /// Redis goes away while the subscriber is already waiting, it goes on
    /// waiting, and once the link is back it is answered with its own
    /// position (or it times out there).
    pub(super) async fn poll(
        &self,
        channels: &[(SmolStr, Since)],
        limit: usize,
        timeout: Duration,
    ) -> Result<Polled, Error> {
        let deadline = Instant::now() + timeout;
        self.link()?;
        let mut asked: Vec<(&str, Since)> =
            channels.iter().map(|(c, s)| (c.as_str(), *s)).collect();
        let mut gaps: super::PerChannel<bool> = smallvec::smallvec![false; channels.len()];
        loop {
            let mut polled = Polled::new(asked.len());
            let mut missed = Vec::new();
            let mut waiter = self.hub.poll(&asked, limit, |i, start| {
                polled.start(i, start, &mut missed)
            })?;
            // Each channel's place pinned first: a request that cannot
            // start gets 503.
            for &i in &missed {
                asked[i].1 = self.pin_next(asked[i].0, asked[i].1).await?;
                polled.from[i] = position(asked[i].1);
            }
            let mut down = false;
            for i in missed {
                let (channel, since) = asked[i];
                self.hub.wait_among(&mut waiter, i, channel)?;
                match self.follow_and_read(channel, since, limit).await {
                    Ok(read) => {
                        self.hub.cover_from(channel, read.last);
                        polled.read(i, read.from, read.gap, read.messages);
                    }
                    Err(Error::StoreUnavailable) => {
                        down = true;
                        break;
                    }
                    Err(err) => return Err(err),
                }
            }
            for (gap, was) in polled.gaps.iter_mut().zip(&gaps) {
                *gap |= was;
            }
            if !polled.messages.is_empty() {
                return Ok(polled.sorted());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match first_woken(waiter, left).await {
                // Woken during an outage, before every channel was read:
                // read them all again from where they were asked.
                (_, Outcome::Message(_)) if down => continue,
                (i, Outcome::Message(m)) if m.seq > polled.from[i] => {
                    polled.messages.push((i, m));
                    return Ok(polled);
                }
                (_, Outcome::Message(_)) => {
                    for ((_, since), from) in asked.iter_mut().zip(&polled.from) {
                        *since = Since::Id(*from);
                    }
                    gaps = polled.gaps;
                }
                (_, Outcome::Deleted) => return Err(Error::Gone),
                (_, Outcome::Timeout | Outcome::Shutdown | Outcome::Reset) => return Ok(polled),
            }
        }
    }

    /// Turns "the next message" into "after the channel's last id now", read
    /// before the subscriber is counted as waiting: a message published once it
    /// is counted is after that id, so it is either read or reaches the waiter.
    async fn pin_next(&self, channel: &str, since: Since) -> Result<Since, Error> {
        Ok(match since {
            Since::Next => Since::Id(self.read(channel, Since::Next, 0).await?.position),
            other => other,
        })
    }

    /// An event stream on `channels`: each one pinned, then the stream
    /// opened on the copy, then each followed and read from Redis, so that
    /// a message published at any point is in the backlog or arrives live.
    pub(super) async fn stream(&self, channels: &[(SmolStr, Since)]) -> Result<Stream, Error> {
        self.link()?;
        let mut pinned = Vec::with_capacity(channels.len());
        for (channel, since) in channels {
            pinned.push(self.pin_next(channel, *since).await?);
        }
        let next: Vec<(&str, Since)> = channels
            .iter()
            .map(|(c, _)| (c.as_str(), Since::Next))
            .collect();
        let mut stream = self.hub.stream(&next)?;
        for (i, ((channel, _), since)) in channels.iter().zip(pinned).enumerate() {
            let read = self.follow_and_read(channel, since, usize::MAX).await?;
            let following = &mut stream.channels[i];
            following.after = read.messages.last().map_or(read.position, |m| m.seq);
            following.from = read.from;
            following.gap = read.gap;
            stream
                .backlog
                .extend(read.messages.into_iter().map(|m| (i, m)));
        }
        stream.backlog.sort_by_key(|(_, m)| m.seq);
        Ok(stream)
    }

    pub(super) async fn delete(&self, channel: &str) -> Result<bool, Error> {
        let mut link = self.link()?;
        let existed: i64 = self
            .scripts
            .delete
            .call()
            .key(stream_key(channel))
            .key(meta_key(channel))
            .arg(topic(channel))
            .arg(link.con.publish_command())
            .run(&mut link.con)
            .await
            .map_err(|e| self.failed(&link, &e))?;
        Ok(existed > 0)
    }

    pub(super) async fn channel(&self, channel: &str) -> Result<ChannelState, Error> {
        let read = self.read(channel, Since::Next, 0).await?;
        Ok(ChannelState {
            subscribers: self.hub.info(channel).subscribers,
            messages: read.length,
            last_id: (read.position > 0).then(|| Ids::Stream.id(read.position)),
        })
    }

    /// Hands an announcement from Redis to the hub. Runs on the connection's reader.
    fn on_push(hub: &Hub<Content>, meter: &Meter, down: &Notify, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(topic), Some(payload)) = (
                    push.data.first().and_then(bulk),
                    push.data.get(1).and_then(bulk),
                ) else {
                    return;
                };
                let Some(channel) = channel_of_topic(topic) else {
                    return;
                };
                match announcement(payload, meter) {
                    Some(Ok(message)) => {
                        hub.deliver(channel, message);
                    }
                    Some(Err(())) => {
                        hub.delete(channel);
                    }
                    None => warn!(channel, "unreadable announcement from redis"),
                }
            }
            PushKind::Disconnection => down.notify_one(),
            // A cluster drops the followers of a slot that moves to another
            // shard: what is announced there from now on would be missed.
            // Unless this instance let the channel go itself, start over.
            PushKind::SUnsubscribe => {
                let channel = push.data.first().and_then(bulk).and_then(channel_of_topic);
                if channel.is_some_and(|c| hub.has_channel(c)) {
                    down.notify_one();
                }
            }
            _ => {}
        }
    }

    async fn connect(&self) -> redis::RedisResult<Link> {
        let down = Arc::new(Notify::new());
        let push = {
            let hub = self.hub.clone();
            let meter = self.meter.clone();
            let down = down.clone();
            move |push: PushInfo| {
                Redis::on_push(&hub, &meter, &down, push);
                Ok::<(), std::convert::Infallible>(())
            }
        };
        let durable = if self.replicas > 0 {
            DURABLE_CONNECTIONS
        } else {
            0
        };
        let (con, durable) = self
            .target
            .connect(
                push,
                (CONNECT_TIMEOUT, RESPONSE_TIMEOUT),
                durable,
                RESPONSE_TIMEOUT + REPLICA_WAIT,
            )
            .await?;
        Ok(Link { con, durable, down })
    }

    /// Keeps the link up: connects with backoff, follows the channels asked for,
    /// unfollows those nobody here uses, and starts over when the link drops.
    /// Runs until the future is dropped.
    pub(super) async fn run_link(&self) {
        let mut requests = self.requests.lock().await;
        let requests = &mut *requests;
        let mut backoff = MIN_BACKOFF;
        let mut ever_up = false;
        loop {
            let link = match self.connect().await {
                Ok(link) => link,
                Err(err) => {
                    warn!(%err, retry_in = ?backoff, "redis unreachable");
                    let until = tokio::time::sleep(backoff);
                    tokio::pin!(until);
                    loop {
                        tokio::select! {
                            _ = &mut until => break,
                            Some(request) = requests.recv() => {
                                let _ = request.done.send(false);
                            }
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = MIN_BACKOFF;
            if ever_up {
                // Whatever was announced while the link was down is in the
                // streams: let every waiter read it from there.
                self.hub.reset();
                self.reconnects.fetch_add(1, Relaxed);
            }
            ever_up = true;
            // Requests queued while down were for the old connection.
            while let Ok(request) = requests.try_recv() {
                let _ = request.done.send(false);
            }
            *self.link.lock().unwrap_or_else(PoisonError::into_inner) = Some(link.clone());
            self.up.send_replace(true);
            info!("redis link up");

            self.serve_link(link, requests).await;

            *self.link.lock().unwrap_or_else(PoisonError::into_inner) = None;
            self.up.send_replace(false);
            self.followed.store(0, Relaxed);
            warn!("redis link down");
        }
    }

    /// Follows and unfollows channels on `link`, and on a cluster probes its
    /// masters, until it drops.
    async fn serve_link(&self, link: Link, requests: &mut mpsc::UnboundedReceiver<Follow>) {
        let probe = async {
            let mut con = link.con.clone();
            if !con.mends_itself() {
                // One server: no shards to probe.
                return std::future::pending().await;
            }
            let mut tick = tokio::time::interval(SHARD_PROBE);
            loop {
                tick.tick().await;
                if let Some(shards) = con.shards(SHARD_PROBE).await {
                    *self.shards.lock().unwrap_or_else(PoisonError::into_inner) = shards;
                }
            }
        };
        tokio::select! {
            () = self.follow_channels(link.clone(), requests) => {}
            () = probe => {}
        }
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Follows and unfollows channels on `link` until it drops.
    async fn follow_channels(&self, link: Link, requests: &mut mpsc::UnboundedReceiver<Follow>) {
        let mut con = link.con.clone();
        // A cluster's failure is one shard's: the others go on.
        let cluster = con.mends_itself();
        let mut followed: HashSet<Arc<str>> = HashSet::new();
        let mut unfollow = tokio::time::interval(UNFOLLOW_INTERVAL);
        loop {
            tokio::select! {
                Some(first) = requests.recv() => {
                    let mut batch = vec![first];
                    while let Ok(more) = requests.try_recv() {
                        batch.push(more);
                    }
                    let mut new: Vec<Arc<str>> = batch
                        .iter()
                        .map(|r| r.channel.clone())
                        .filter(|c| !followed.contains(c))
                        .collect();
                    new.sort();
                    new.dedup();
                    let ok = new.is_empty() || {
                        let topics: Vec<String> = new.iter().map(|c| topic(c)).collect();
                        match con.follow(&topics).await {
                            Ok(()) => true,
                            Err(err) => {
                                self.failed(&link, &err);
                                false
                            }
                        }
                    };
                    if ok {
                        followed.extend(new);
                        self.followed.store(followed.len(), Relaxed);
                    }
                    for request in batch {
                        let _ = request.done.send(ok);
                    }
                    if !ok && !cluster {
                        return;
                    }
                }
                _ = unfollow.tick() => {
                    let idle: Vec<Arc<str>> = followed
                        .iter()
                        .filter(|c| !self.hub.has_channel(c))
                        .cloned()
                        .collect();
                    if idle.is_empty() {
                        continue;
                    }
                    let topics: Vec<String> = idle.iter().map(|c| topic(c)).collect();
                    if let Err(err) = con.unfollow(&topics).await {
                        self.failed(&link, &err);
                        if cluster {
                            continue;
                        }
                        return;
                    }
                    for c in &idle {
                        followed.remove(c);
                    }
                    self.followed.store(followed.len(), Relaxed);
                }
                _ = link.down.notified() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        assert_eq!(topic("room:1"), "comethub:{room:1}");
        assert_eq!(channel_of_topic(b"comethub:{room:1}"), Some("room:1"));
        assert_eq!(channel_of_topic(b"other:{room}"), None);
    }

    #[test]
    fn announcements() {
        let meter = Meter::default();
        let Some(Ok(m)) = announcement(b"m5-1\ntext/plain\na\nb", &meter) else {
            panic!("not a message");
        };
        assert_eq!(&m.payload.id[..], b"5-1");
        assert_eq!(m.seq, Ids::parse_stream("5-1").unwrap());
        assert_eq!(&m.payload.content_type[..], b"text/plain");
        assert_eq!(&m.payload.data[..], b"a\nb");
        assert!(matches!(announcement(b"x", &meter), Some(Err(()))));
        assert!(announcement(b"mnot-an-id\nt\nd", &meter).is_none());
        assert!(announcement(b"", &meter).is_none());
    }
}
