//! What comethub keeps in Redis and how: the key and topic names, the Lua
//! scripts that publish, read and delete, and reading their answers and
//! the announcements back into messages.

use super::*;

/// Prefix of every key and topic comethub uses in Redis.
pub(super) const PREFIX: &str = "comethub:";
/// How long a channel's last and dropped ids are remembered after its last
/// publish, so that a late resume still learns of a gap.
pub(super) const META_TTL: Duration = Duration::from_secs(24 * 3600);

/// Trims a stream to the history age, raising the dropped watermark. Shared by
/// the scripts below.
pub(super) const TRIM_AGE: &str = r#"
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
pub(super) const PUBLISH: &str = r#"
local n = tonumber(ARGV[1])
local k = KEYS[2 * n + 1]
if k then
  local first = redis.call('GET', k)
  if first then
    redis.call('SET', k, first, 'KEEPTTL')
    local id, print = string.match(first, '^(%S+) ?(%S*)$')
    if print ~= '' and print ~= ARGV[9] then return {id, 0, 2} end
    return {id, 0, 1}
  end
end
local history, age, list = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[10]
local id = '*'
if n > 1 then
  -- One id on every stream: past the time and past each one's last.
  local t = redis.call('TIME')
  local ms, sq = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 0
  for i = 1, n do
    local lasts = {redis.call('HGET', KEYS[2 * i], 'last')}
    local top = redis.call('XREVRANGE', KEYS[2 * i - 1], '+', '-', 'COUNT', 1)[1]
    if top then lasts[#lasts + 1] = top[1] end
    for _, last in ipairs(lasts) do
      if last then
        local lms, lsq = string.match(last, '^(%d+)-(%d+)$')
        lms, lsq = tonumber(lms), tonumber(lsq)
        if lms > ms or (lms == ms and lsq >= sq) then ms, sq = lms, lsq + 1 end
      end
    end
  end
  id = string.format('%d-%d', ms, sq)
end
local total = 0
for i = 1, n do
  local s, m = KEYS[2 * i - 1], KEYS[2 * i]
  if list == '' then
    id = redis.call('XADD', s, id, 't', ARGV[5], 'd', ARGV[6])
  else
    redis.call('XADD', s, id, 't', ARGV[5], 'd', ARGV[6], 'c', list)
  end
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
  local note = 'm' .. id .. '\n' .. ARGV[5] .. '\n' .. ARGV[6]
  if list ~= '' then note = 'M' .. id .. '\n' .. list .. '\n' .. ARGV[5] .. '\n' .. ARGV[6] end
  total = total + redis.call(ARGV[8], ARGV[10 + i], note)
end
if k then redis.call('SET', k, id .. ' ' .. ARGV[9], 'PX', ARGV[7]) end
return {id, total, 0}
"#;

/// KEYS: stream, meta. ARGV: after (an id, `-` for the oldest, `+` for none),
/// count, age ms. Returns `{last, dropped, entries, length}`.
pub(super) const READ: &str = r#"
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
pub(super) const DELETE: &str = r#"
local existed = redis.call('DEL', KEYS[1])
local last = redis.call('HGET', KEYS[2], 'last')
if last then redis.call('HSET', KEYS[2], 'dropped', last) end
redis.call(ARGV[2], ARGV[1], 'x')
return existed
"#;

#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) publish: Lua,
    pub(super) read: Lua,
    pub(super) delete: Lua,
}

pub(super) fn stream_key(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}:s")
}

pub(super) fn meta_key(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}:m")
}

/// Where a publish's idempotency key is kept: beside its channel's stream,
/// on the same hash slot.
pub(super) fn key_key(channel: &str, key: &str) -> String {
    format!("{PREFIX}{{{channel}}}:k:{key}")
}

pub(super) fn topic(channel: &str) -> String {
    format!("{PREFIX}{{{channel}}}")
}

pub(super) fn channel_of_topic(topic: &[u8]) -> Option<&str> {
    let name = topic.strip_prefix(PREFIX.as_bytes())?;
    let name = name.strip_prefix(b"{")?.strip_suffix(b"}")?;
    std::str::from_utf8(name).ok()
}

pub(super) fn message(
    id: &str,
    content_type: Bytes,
    data: Bytes,
    channels: Option<&[u8]>,
    meter: &Meter,
) -> Option<Message> {
    let seq = Ids::parse_stream(id)?;
    let several = match channels {
        None => None,
        Some(list) => Some(
            std::str::from_utf8(list)
                .ok()?
                .split(',')
                .map(SmolStr::from)
                .collect(),
        ),
    };
    Some(hub::Message::new(
        seq,
        Content::new(
            Bytes::copy_from_slice(id.as_bytes()),
            data,
            content_type,
            meter,
        )
        .on(several),
    ))
}

/// Parses a topic announcement: `m` ID `\n` TYPE `\n` DATA; `M` ID `\n`
/// CHANNELS `\n` TYPE `\n` DATA (published on several channels at once);
/// or `x` (deleted).
pub(super) fn announcement(payload: &[u8], meter: &Meter) -> Option<Result<Message, ()>> {
    match payload.split_first()? {
        (b'x', _) => Some(Err(())),
        (b'm', rest) => {
            let mut parts = rest.splitn(3, |&b| b == b'\n');
            let id = std::str::from_utf8(parts.next()?).ok()?;
            let content_type = Bytes::copy_from_slice(parts.next()?);
            let data = Bytes::copy_from_slice(parts.next()?);
            message(id, content_type, data, None, meter).map(Ok)
        }
        (b'M', rest) => {
            let mut parts = rest.splitn(4, |&b| b == b'\n');
            let id = std::str::from_utf8(parts.next()?).ok()?;
            let channels = parts.next()?;
            let content_type = Bytes::copy_from_slice(parts.next()?);
            let data = Bytes::copy_from_slice(parts.next()?);
            message(id, content_type, data, Some(channels), meter).map(Ok)
        }
        _ => None,
    }
}

/// Where a reader from `since` (pinned: not `Next`) stands: after this
/// sequence (0: before the oldest).
pub(super) fn position(since: Since) -> u64 {
    match since {
        Since::Id(seq) => seq,
        _ => 0,
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn bulk(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
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
        let Some(Ok(m)) = announcement(b"M5-2\na,b\ntext/plain\nhi", &meter) else {
            panic!("a publish on several channels");
        };
        assert_eq!(
            (m.seq, &m.payload.data[..]),
            (Ids::parse_stream("5-2").unwrap(), &b"hi"[..])
        );
        assert!(m.payload.also_on("b") && !m.payload.also_on("c"));
        assert!(matches!(announcement(b"x", &meter), Some(Err(()))));
        assert!(announcement(b"mnot-an-id\nt\nd", &meter).is_none());
        assert!(announcement(b"", &meter).is_none());
    }
}
