//! Presence shared by every instance on one Redis.
//!
//! Each instance keeps its own presence (its open polls and streams, its
//! leases) and tells Redis what changed: per channel, a sorted set of
//! entries, one per instance that holds the channel (`INSTANCE`) and one per
//! instance and member (`INSTANCE MEMBER`), scored with when it lapses; a
//! hash counts each member's entries. A member joins when its first entry is
//! added and leaves when its last is removed; a channel is occupied with its
//! first entry and vacated with its last. Each script that sees such a
//! transition is the one that reports it, so an event is reported once. An
//! instance refreshes its entries every tick; those of an instance that died
//! lapse within the grace period and [`LAPSE`], and whichever instance sweeps
//! first removes them.

use super::*;
use crate::presence::{Change, Event, Shown};
use crate::store::connection::Call;

/// How long an entry outlives its instance's last refresh, beyond the grace
/// period.
pub(super) const LAPSE: Duration = Duration::from_secs(5);
/// The set of channels that have entries, for the sweep.
const CHANNELS: &str = "comethub:presence";

pub(super) const ENTER: &str = r#"
local empty = redis.call('ZCARD', KEYS[1]) == 0
local added = redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
local joined = 0
if added == 1 and ARGV[2] ~= '' then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
    joined = 1
    redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
  end
end
return {(empty and added == 1) and 1 or 0, joined}
"#;

pub(super) const LEAVE: &str = r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
local left = 0
if removed == 1 and ARGV[2] ~= '' then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    redis.call('HDEL', KEYS[3], ARGV[2])
    redis.call('HDEL', KEYS[4], ARGV[2])
    left = 1
  end
end
return {left, (removed == 1 and redis.call('ZCARD', KEYS[1]) == 0) and 1 or 0}
"#;

pub(super) const SWEEP: &str = r#"
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local left = {}
for _, entry in ipairs(lapsed) do
  redis.call('ZREM', KEYS[1], entry)
  local member = string.match(entry, '^%S+ (.+)$')
  if member and redis.call('HINCRBY', KEYS[2], member, -1) <= 0 then
    redis.call('HDEL', KEYS[2], member)
    redis.call('HDEL', KEYS[3], member)
    redis.call('HDEL', KEYS[4], member)
    left[#left + 1] = member
  end
end
return {left, (#lapsed > 0 and redis.call('ZCARD', KEYS[1]) == 0) and 1 or 0}
"#;

pub(super) const SEEN: &str = r#"
local function key(id)
  local ms, sq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(sq)
end
for i = 1, #ARGV, 2 do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  local ms, sq = key(ARGV[i + 1])
  local hms, hsq = 0, -1
  if held then hms, hsq = key(held) end
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 and (ms > hms or (ms == hms and sq > hsq)) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"#;

fn entries_key(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}:pe")
}
fn counts_key(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}:pn")
}
fn joined_key(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}:pj")
}
fn seen_key(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}:ps")
}

/// A channel's four keys, as leaving and sweeping take them.
fn all_keys<'a, 'c>(call: &'c mut Call<'a>, channel: &str) -> &'c mut Call<'a> {
    call.key(entries_key(channel))
        .key(counts_key(channel))
        .key(joined_key(channel))
        .key(seen_key(channel))
}

/// Milliseconds since the epoch, as the entries' scores.
fn now_ms() -> u64 {
    crate::presence::now_ms()
}

impl Redis {
    fn entry(&self, member: Option<&str>) -> String {
        match member {
            Some(m) => format!("{} {m}", self.instance),
            None => self.instance.clone(),
        }
    }

    /// What this instance's presence saw, as every instance's presence
    /// sees it: a join or an occupied channel only if no instance had it, a
    /// leave or a vacated channel only once no instance has it. `held` is
    /// (on each tick) every channel this instance keeps presence on, with
    /// its members: their entries are refreshed, and entries that lapsed (an
    /// instance that died) are swept, and what that ends reported too.
    pub(crate) async fn share_presence(
        &self,
        local: Vec<Event>,
        held: Option<&[(SmolStr, Vec<SmolStr>)]>,
        grace: Duration,
    ) -> Vec<Event> {
        let Ok(mut link) = self.link() else {
            return Vec::new();
        };
        let lapse = now_ms() + (grace + LAPSE).as_millis() as u64;
        let mut out = Vec::new();
        for event in local {
            let channel = event.channel.as_str();
            let member = match &event.change {
                Change::Joined(m) | Change::Left(m) => Some(m.as_str()),
                _ => None,
            };
            let result = match &event.change {
                Change::Occupied | Change::Joined(_) => {
                    let _: redis::RedisResult<()> = redis::cmd("SADD")
                        .arg(CHANNELS)
                        .arg(channel)
                        .query_async(&mut link.con)
                        .await;
                    self.presence_scripts
                        .enter
                        .call()
                        .key(entries_key(channel))
                        .key(counts_key(channel))
                        .key(joined_key(channel))
                        .arg(self.entry(member))
                        .arg(member.unwrap_or_default())
                        .arg(lapse)
                        .arg(event.at_ms)
                        .run::<(u8, u8)>(&mut link.con)
                        .await
                        .map(|(occupied, joined)| {
                            let first = match member {
                                Some(_) => joined,
                                None => occupied,
                            };
                            (first == 1).then(|| event.clone()).into_iter().collect()
                        })
                }
                Change::Left(_) | Change::Vacated => {
                    all_keys(&mut self.presence_scripts.leave.call(), channel)
                        .arg(self.entry(member))
                        .arg(member.unwrap_or_default())
                        .run::<(u8, u8)>(&mut link.con)
                        .await
                        .map(|(left, vacated)| {
                            let mut told = Vec::new();
                            if left == 1 {
                                told.push(event.clone());
                            }
                            if vacated == 1 {
                                told.push(at(channel, Change::Vacated, event.at_ms));
                            }
                            told
                        })
                }
                Change::Seen(seen) => {
                    let mut call = self.presence_scripts.seen.call();
                    call.key(seen_key(channel)).key(counts_key(channel));
                    for (m, seq) in seen {
                        call.arg(m.as_str()).arg(Ids::Stream.format(*seq));
                    }
                    call.run::<u8>(&mut link.con)
                        .await
                        .map(|_| vec![event.clone()])
                }
            };
            match result {
                Ok(told) => out.extend(told),
                Err(err) => {
                    self.failed(&link, &err);
                }
            }
        }
        let Some(held) = held else {
            return out;
        };
        for (channel, members) in held {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(entries_key(channel)).arg("XX");
            cmd.arg(lapse).arg(self.entry(None));
            for m in members {
                cmd.arg(lapse).arg(self.entry(Some(m)));
            }
            if let Err(err) = cmd.query_async::<u64>(&mut link.con).await {
                self.failed(&link, &err);
            }
        }
        out.extend(self.sweep_presence(&mut link).await);
        out
    }

    /// Removes the entries that lapsed on every channel with entries.
    async fn sweep_presence(&self, link: &mut Link) -> Vec<Event> {
        let channels: Vec<String> = match redis::cmd("SMEMBERS")
            .arg(CHANNELS)
            .query_async(&mut link.con)
            .await
        {
            Ok(channels) => channels,
            Err(err) => {
                self.failed(link, &err);
                return Vec::new();
            }
        };
        let now = now_ms();
        let mut out = Vec::new();
        for channel in channels {
            let swept = all_keys(&mut self.presence_scripts.sweep.call(), &channel)
                .arg(now)
                .run::<(Vec<String>, u8)>(&mut link.con)
                .await;
            let (left, vacated) = match swept {
                Ok(swept) => swept,
                Err(err) => {
                    self.failed(link, &err);
                    continue;
                }
            };
            for m in left {
                out.push(at(&channel, Change::Left(m.into()), now));
            }
            if vacated == 1 {
                out.push(at(&channel, Change::Vacated, now));
            }
            let gone: redis::RedisResult<u8> = redis::cmd("EXISTS")
                .arg(entries_key(&channel))
                .query_async(&mut link.con)
                .await;
            if let Ok(0) = gone {
                let _: redis::RedisResult<()> = redis::cmd("SREM")
                    .arg(CHANNELS)
                    .arg(&channel)
                    .query_async(&mut link.con)
                    .await;
            }
        }
        out
    }

    /// Who is on `channel`, on every instance: each member with the number
    /// of instances that hold it (as `connections`), when it joined and its
    /// receipt.
    pub(crate) async fn presence_members(&self, channel: &str) -> Result<Vec<Shown>, Error> {
        let mut link = self.link()?;
        type Map = std::collections::HashMap<String, String>;
        let (counts, joined, seen): (Map, Map, Map) = redis::pipe()
            .hgetall(counts_key(channel))
            .hgetall(joined_key(channel))
            .hgetall(seen_key(channel))
            .query_async(&mut link.con)
            .await
            .map_err(|e| self.failed(&link, &e))?;
        let mut shown: Vec<Shown> = counts
            .into_iter()
            .map(|(id, n)| Shown {
                since: joined.get(&id).and_then(|t| t.parse().ok()).unwrap_or(0),
                seen: seen
                    .get(&id)
                    .and_then(|s| Ids::parse_stream(s))
                    .unwrap_or(0),
                connections: n.parse().unwrap_or(0),
                id: id.into(),
            })
            .collect();
        shown.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(shown)
    }
}

fn at(channel: &str, change: Change, at_ms: u64) -> Event {
    Event {
        channel: channel.into(),
        change,
        at_ms,
    }
}
