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
//!
//! In rooms: `scripts` (key and topic names, the Lua scripts, reading their
//! answers), `link` (the connection's lifecycle and the topics followed),
//! `presence` (presence shared by the instances), and here the store's
//! operations.

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

mod link;
mod presence;
mod scripts;

use link::{Follow, Link};
use scripts::*;

/// How long this instance keeps its copy of a channel nobody here uses.
const COPY_IDLE: Duration = Duration::from_secs(10);
/// How long a publish waits for `--redis-replicas` to confirm it.
const REPLICA_WAIT: Duration = Duration::from_secs(1);
/// Connections that carry publishes with `--redis-replicas`: `WAIT` holds
/// its connection, so publishes take turns on a few.
const DURABLE_CONNECTIONS: usize = 4;

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
    /// This instance's name in the presence it shares.
    instance: String,
    presence_scripts: PresenceScripts,
}

/// The scripts of shared presence.
#[derive(Debug)]
struct PresenceScripts {
    enter: Lua,
    leave: Lua,
    sweep: Lua,
    seen: Lua,
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
            instance: crate::protocol::new_epoch(),
            presence_scripts: PresenceScripts {
                enter: Lua::new(presence::ENTER.to_owned()),
                leave: Lua::new(presence::LEAVE.to_owned()),
                sweep: Lua::new(presence::SWEEP.to_owned()),
                seen: Lua::new(presence::SEEN.to_owned()),
            },
        })
    }

    pub(super) fn hub(&self) -> &Arc<Hub<Content>> {
        &self.hub
    }

    pub(super) async fn publish(
        &self,
        channels: &[&str],
        key: Option<&str>,
        data: Bytes,
        content_type: Bytes,
    ) -> Result<Published, Error> {
        let link = self.link()?;
        if channels.len() > 1 && link.con.mends_itself() {
            // Each channel is its own hash slot: one script cannot write them all.
            return Err(Error::SeveralOnCluster);
        }
        let Some(first) = channels.first() else {
            return Err(Error::BadChannel);
        };
        let stream = stream_key(first);
        let mut invocation = self.scripts.publish.call();
        for channel in channels {
            invocation.key(stream_key(channel)).key(meta_key(channel));
        }
        if let Some(key) = key {
            invocation.key(key_key(first, key));
        }
        invocation
            .arg(channels.len())
            .arg(self.history)
            .arg(self.age_ms)
            .arg(META_TTL.as_millis() as u64)
            .arg(content_type.as_ref())
            .arg(data.as_ref())
            .arg(self.key_window_ms)
            .arg(link.con.publish_command())
            .arg(key.map_or_else(String::new, |_| {
                hex(&crate::protocol::fingerprint(
                    &data,
                    &content_type,
                    channels,
                ))
            }))
            .arg(match channels.len() {
                1 => String::new(),
                _ => channels.join(","),
            });
        for channel in channels {
            invocation.arg(topic(channel));
        }
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
                let mut several = None;
                let mut fields = fields.into_iter();
                while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                    match name.as_slice() {
                        b"t" => content_type = Some(Bytes::from(value)),
                        b"d" => data = Some(Bytes::from(value)),
                        b"c" => several = Some(value),
                        _ => {}
                    }
                }
                message(&id, content_type?, data?, several.as_deref(), &self.meter)
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
                // A channel read before a publish on several may have had it
                // delivered to the waiter while a later one read it: it is
                // kept on the first of them, as when it is only waited for.
                if let Some((i, Outcome::Message(m))) = waiter.as_mut().and_then(|w| w.woken())
                    && m.seq > polled.from[i]
                    && !polled
                        .messages
                        .iter()
                        .any(|(j, n)| *j == i && n.seq >= m.seq)
                    && !down
                {
                    polled.messages.push((i, m));
                }
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
