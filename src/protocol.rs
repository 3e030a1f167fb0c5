//! The wire protocol's vocabulary: request parameters, message ids and cursors,
//! and how a message is encoded.
//!
//! Everything a client sends is checked here before it reaches a store, so the
//! stores only ever see valid channel names and cursors. A message's encodings (its
//! JSON item, its SSE frame) are made at most once and shared by every subscriber
//! it goes to.

use smol_str::SmolStr;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::Error;
pub use crate::hub::{Fingerprint, Meter, Since};

/// The channel used when a request names none.
pub const DEFAULT_CHANNEL: &str = "default";
/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Longest Content-Type a publish may give, in bytes: real ones are far
/// shorter (RFC 6838 allows 127 characters each for type and subtype), and
/// the type is kept with every message and sent with every raw answer.
pub const MAX_CONTENT_TYPE: usize = 256;
/// Longest idempotency key, in bytes (a UUID is 36).
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Content-Type of messages published as a form field or query parameter.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Checks a channel name (absent means [`DEFAULT_CHANNEL`]).
pub fn channel_name(name: Option<&str>) -> Result<&str, Error> {
    let name = name.unwrap_or(DEFAULT_CHANNEL);
    let valid = !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'));
    if valid {
        Ok(name)
    } else {
        Err(Error::BadChannel)
    }
}

/// The server's epoch: a short token that prefixes every message id, so an id from
/// before a restart or from another server is recognised as foreign.
pub fn new_epoch() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = nanos ^ (u64::from(std::process::id()) << 40) ^ (nanos >> 29);
    let mut n = mixed % 36u64.pow(6);
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
    }
    // First character is a letter, so an epoch never looks like a number.
    out[0] = b'a' + (out[0] % 26);
    String::from_utf8_lossy(&out).into_owned()
}

/// Formats a message id from an epoch and a sequence number.
pub fn message_id(epoch: &str, seq: u64) -> String {
    format!("{epoch}-{seq}")
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Parses `since` (or `Last-Event-ID`) against an in-memory epoch.
fn parse_epoch_since(value: Option<&str>, epoch: &str) -> Result<Since, Error> {
    let Some(value) = value else {
        return Ok(Since::Next);
    };
    if value == "oldest" {
        return Ok(Since::Oldest);
    }
    let at = value
        .bytes()
        .rposition(|b| b == b'-')
        .ok_or(Error::BadSince)?;
    let (prefix, seq) = (&value[..at], &value[at + 1..]);
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric());
    let seq = decimal(seq).filter(|_| prefix_ok).ok_or(Error::BadSince)?;
    Ok(if prefix == epoch {
        Since::Id(seq)
    } else {
        Since::Foreign
    })
}

/// A decimal number of at most 20 digits (no sign) that fits in a `u64`.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// `s` split at every `sep` (ASCII). The lists and queries split here are
/// short, where a byte loop beats a search per piece.
fn pieces(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        Some(match cut(r, sep) {
            Some((piece, after)) => {
                rest = Some(after);
                piece
            }
            None => {
                rest = None;
                r
            }
        })
    })
}

/// `s` before and after its first `sep` (ASCII).
fn cut(s: &str, sep: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == sep)?;
    Some((&s[..at], &s[at + 1..]))
}

/// Bits of a packed stream id that hold the sequence within a millisecond.
const STREAM_SEQ_BITS: u32 = 20;

/// How message ids are made and read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ids {
    /// In memory: `EPOCH-SEQ`, with a fresh epoch every run, so an id from an
    /// earlier run is foreign.
    Epoch(Arc<str>),
    /// On Redis: the channel stream's ids `MS-N`, valid on every instance and
    /// after any restart. Kept as one `u64`, `MS << 20 | N`, so they order as
    /// numbers.
    Stream,
}

impl Ids {
    /// The text of the id packed in `seq`.
    pub fn format(&self, seq: u64) -> String {
        String::from_utf8_lossy(&self.encode(seq)).into_owned()
    }

    /// The id packed in `seq`, as bytes: every published message makes one, so
    /// it is written without formatting machinery.
    pub fn id(&self, seq: u64) -> Bytes {
        Bytes::from(self.encode(seq))
    }

    fn encode(&self, seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len(seq));
        self.write(seq, &mut out);
        out
    }

    /// The length of the id packed in `seq`.
    pub fn len(&self, seq: u64) -> usize {
        let digits = |n: u64| n.checked_ilog10().map_or(1, |d| d as usize + 1);
        match self {
            Ids::Epoch(epoch) => epoch.len() + 1 + digits(seq),
            Ids::Stream => {
                digits(seq >> STREAM_SEQ_BITS) + 1 + digits(seq & ((1 << STREAM_SEQ_BITS) - 1))
            }
        }
    }

    /// Appends the id packed in `seq` to `out`.
    pub fn write(&self, seq: u64, out: &mut Vec<u8>) {
        match self {
            Ids::Epoch(epoch) => {
                out.extend_from_slice(epoch.as_bytes());
                out.push(b'-');
                push_decimal(out, seq);
            }
            Ids::Stream => {
                push_decimal(out, seq >> STREAM_SEQ_BITS);
                out.push(b'-');
                push_decimal(out, seq & ((1 << STREAM_SEQ_BITS) - 1));
            }
        }
    }

    /// Parses `since` (or `Last-Event-ID`).
    pub fn parse_since(&self, value: Option<&str>) -> Result<Since, Error> {
        match self {
            Ids::Epoch(epoch) => parse_epoch_since(value, epoch),
            Ids::Stream => match value {
                None => Ok(Since::Next),
                Some("oldest") => Ok(Since::Oldest),
                Some(v) => match Ids::parse_stream(v) {
                    Some(seq) => Ok(Since::Id(seq)),
                    // Well formed but not a stream id: another server's.
                    None => parse_epoch_since(value, "").map(|_| Since::Foreign),
                },
            },
        }
    }

    /// Packs a Redis stream id `MS-N`; `None` when it is not one or does not fit.
    pub fn parse_stream(id: &str) -> Option<u64> {
        let (ms, n) = cut(id, b'-')?;
        let (ms, n) = (decimal(ms)?, decimal(n)?);
        (ms < 1 << (64 - STREAM_SEQ_BITS) && n < 1 << STREAM_SEQ_BITS)
            .then_some(ms << STREAM_SEQ_BITS | n)
    }
}

/// Parses `timeout=SECONDS` (fractions allowed) and caps it at the server's default.
pub fn timeout(value: Option<&str>, default: Duration) -> Result<Duration, Error> {
    let Some(value) = value else {
        return Ok(default);
    };
    let secs: f64 = value.trim().parse().map_err(|_| Error::BadTimeout)?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(Error::BadTimeout);
    }
    Ok(Duration::from_secs_f64(secs.min(default.as_secs_f64())))
}

/// How a long-poll answer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The first message's bytes, with its Content-Type.
    Raw,
    /// Every message after `since`, batched in one JSON body.
    Json,
}

impl Format {
    /// Parses `format=` (absent means raw).
    pub fn parse(value: Option<&str>) -> Result<Format, Error> {
        match value {
            None | Some("raw") | Some("") => Ok(Format::Raw),
            Some("json") => Ok(Format::Json),
            Some(_) => Err(Error::BadFormat),
        }
    }
}

/// The query string of `/subscribe`, `/events`, `/publish` and `/channels`,
/// borrowed from the request where nothing needed decoding.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Query<'a> {
    /// `channel=`.
    #[serde(borrow)]
    pub channel: Option<Cow<'a, str>>,
    /// `since=`.
    #[serde(borrow)]
    pub since: Option<Cow<'a, str>>,
    /// `timeout=`.
    #[serde(borrow)]
    pub timeout: Option<Cow<'a, str>>,
    /// `format=`.
    #[serde(borrow)]
    pub format: Option<Cow<'a, str>>,
    /// `message=` (publish only).
    #[serde(borrow)]
    pub message: Option<Cow<'a, str>>,
    /// `token=`: a JWT, for clients that cannot send a header (`EventSource`).
    #[serde(borrow)]
    pub token: Option<Cow<'a, str>>,
    /// `idempotency_key=` (publish only), for publishers that cannot send
    /// the `Idempotency-Key` header.
    #[serde(borrow)]
    pub idempotency_key: Option<Cow<'a, str>>,
}

impl<'a> Query<'a> {
    /// Decodes a query string; unknown parameters (cache busters) are ignored,
    /// a repeated one is refused. A query with nothing to decode (no `%`, no
    /// `+`) is split in place, its values borrowed as they are; any other goes
    /// through serde_urlencoded. The two agree (the params fuzz target checks).
    pub fn parse(query: Option<&'a str>) -> Result<Query<'a>, Error> {
        match query {
            None | Some("") => Ok(Query::default()),
            // Two memchr scans, a word at a time.
            Some(q) if !q.as_bytes().contains(&b'%') && !q.as_bytes().contains(&b'+') => {
                Query::split(q)
            }
            Some(q) => Query::decode(q),
        }
    }

    /// The query through serde_urlencoded: what [`Query::parse`] does with
    /// one that has something to decode.
    pub fn decode(q: &'a str) -> Result<Query<'a>, Error> {
        serde_urlencoded::from_str(q).map_err(|e| Error::BadQuery(e.to_string()))
    }

    /// A query with nothing to decode, split on `&` and `=`.
    pub fn split(q: &'a str) -> Result<Query<'a>, Error> {
        let mut out = Query::default();
        for pair in pieces(q, b'&').filter(|p| !p.is_empty()) {
            let (key, value) = cut(pair, b'=').unwrap_or((pair, ""));
            let slot = match key {
                "channel" => &mut out.channel,
                "since" => &mut out.since,
                "timeout" => &mut out.timeout,
                "format" => &mut out.format,
                "message" => &mut out.message,
                "token" => &mut out.token,
                "idempotency_key" => &mut out.idempotency_key,
                _ => continue,
            };
            if slot.is_some() {
                return Err(Error::BadQuery(format!("duplicate field `{key}`")));
            }
            *slot = Some(Cow::Borrowed(value));
        }
        Ok(out)
    }
}

/// The form body of `POST /publish`.
#[derive(Debug, Deserialize)]
pub struct PublishForm {
    /// `message=`.
    pub message: Option<String>,
}

/// One message in a JSON answer.
#[derive(Debug, Serialize)]
pub struct JsonMessage<'a> {
    /// The message id.
    pub id: &'a str,
    /// The channel it was published on.
    pub channel: &'a str,
    /// The data as text, or base64 when it is not UTF-8 (see `encoding`).
    pub data: std::borrow::Cow<'a, str>,
    /// The publisher's Content-Type.
    #[serde(rename = "type")]
    pub content_type: &'a str,
    /// `"base64"` when the data is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
}

impl<'a> JsonMessage<'a> {
    /// Builds the JSON view of a message's bytes.
    pub fn new(id: &'a str, channel: &'a str, data: &'a [u8], content_type: &'a str) -> Self {
        match std::str::from_utf8(data) {
            Ok(text) => JsonMessage {
                id,
                channel,
                data: text.into(),
                content_type,
                encoding: None,
            },
            Err(_) => JsonMessage {
                id,
                channel,
                data: base64(data).into(),
                content_type,
                encoding: Some("base64"),
            },
        }
    }
}

/// The body of a publish answer.
#[derive(Debug, Serialize)]
pub struct PublishAnswer<'a> {
    /// The new message's id.
    pub id: &'a str,
    /// The channel.
    pub channel: &'a str,
    /// How many subscribers the message was handed to.
    pub subscribers: usize,
    /// A retry with an idempotency key already used: nothing was published,
    /// `id` is the first publish's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// The body of `GET /channels/C`.
#[derive(Debug, Serialize)]
pub struct ChannelInfo {
    /// The channel.
    pub channel: String,
    /// Waiting long-poll subscribers plus open streams.
    pub subscribers: usize,
    /// Messages retained in the history.
    pub messages: usize,
    /// The id of the last message, if any is known.
    pub last_id: Option<String>,
}

/// One message as stored: its id, data and type, and its encodings, each made
/// once on first use and shared by every subscriber.
#[derive(Debug)]
pub struct Content {
    /// The id clients see.
    pub id: Bytes,
    /// The data, byte for byte as published.
    pub data: Bytes,
    /// The publisher's Content-Type.
    pub content_type: Bytes,
    json: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
    meter: Meter,
}

/// What a retained message costs beyond its bytes: the shared message and its
/// reference counts, the id's buffer, a shared handle on the data, allocator
/// headers, and the history's and eviction order's entries. Checked against
/// the resident size by `tests/memory.rs`.
pub const MESSAGE_OVERHEAD: usize = 320;

impl crate::hub::Payload for Content {
    fn size(&self) -> usize {
        use crate::os::allocated;
        allocated(self.data.len())
            + allocated(self.content_type.len())
            + allocated(self.id.len())
            + MESSAGE_OVERHEAD
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        let held = |slot: &OnceLock<Bytes>| slot.get().map_or(0, |b| crate::os::allocated(b.len()));
        self.meter.sub(held(&self.json) + held(&self.sse));
    }
}

impl Content {
    /// A message's content; its encodings are counted on `meter`.
    pub fn new(id: Bytes, data: Bytes, content_type: Bytes, meter: &Meter) -> Content {
        Content {
            id,
            data,
            content_type,
            json: OnceLock::new(),
            sse: OnceLock::new(),
            meter: meter.clone(),
        }
    }

    fn encoded(&self, slot: &OnceLock<Bytes>, make: impl FnOnce() -> Bytes) -> Bytes {
        slot.get_or_init(|| {
            let bytes = make();
            self.meter.add(crate::os::allocated(bytes.len()));
            bytes
        })
        .clone()
    }

    /// The message as one item of a JSON batch, on `channel` (the one it
    /// was published on, so the item made once serves every answer):
    /// `{"id":…,"channel":…,"data":…,"type":…}` (data base64 with
    /// `"encoding":"base64"` when it is not UTF-8).
    pub fn json(&self, channel: &str) -> Bytes {
        self.encoded(&self.json, || {
            let id = std::str::from_utf8(&self.id).unwrap_or_default();
            let ct = std::str::from_utf8(&self.content_type).unwrap_or_default();
            let mut out =
                Vec::with_capacity(self.data.len() + id.len() + channel.len() + ct.len() + 80);
            let item = JsonMessage::new(id, channel, &self.data, ct);
            if serde_json::to_writer(&mut out, &item).is_err() {
                out.clear();
            }
            // Escapes or base64 may have grown it past the estimate: the item
            // keeps only its own bytes.
            out.shrink_to_fit();
            out.into()
        })
    }

    /// The message as a Server-Sent Event: `id:` then a `data:` line per line.
    /// Data that is not UTF-8 (which an event stream cannot carry) goes as one
    /// `event: binary` whose data is the bytes in base64.
    pub fn sse(&self) -> Bytes {
        self.encoded(&self.sse, || {
            let mut out = BytesMut::with_capacity(self.data.len() * 4 / 3 + 64);
            out.put_slice(b"id: ");
            out.put_slice(&self.id);
            out.put_u8(b'\n');
            match std::str::from_utf8(&self.data) {
                Ok(text) => {
                    for line in text.split("\r\n").flat_map(|l| l.split(['\n', '\r'])) {
                        out.put_slice(b"data: ");
                        out.put_slice(line.as_bytes());
                        out.put_u8(b'\n');
                    }
                }
                Err(_) => {
                    out.put_slice(b"event: binary\ndata: ");
                    out.put_slice(base64(&self.data).as_bytes());
                    out.put_u8(b'\n');
                }
            }
            out.put_u8(b'\n');
            // The frame keeps only its own bytes.
            Bytes::copy_from_slice(&out)
        })
    }
}

/// The parts of a `format=json` answer, around the shared items of its messages:
/// `{"channel":C,"messages":[` item `,` item `],"last_id":ID,"gap":G}`. `C`
/// is the request's `channel` (several joined by commas); `gap` is given as
/// JSON (`true`/`false`, or the list of channels that missed messages).
pub fn json_batch(
    channel: &str,
    items: impl ExactSizeIterator<Item = Bytes>,
    last_id: &[u8],
    gap: &[u8],
) -> Vec<Bytes> {
    let mut parts = Vec::with_capacity(items.len() * 2 + 1);
    // Channel names and ids need no JSON escaping: both are checked to be plain.
    parts.push(Bytes::from(format!(
        "{{\"channel\":\"{channel}\",\"messages\":["
    )));
    for (i, item) in items.enumerate() {
        if i > 0 {
            parts.push(Bytes::from_static(b","));
        }
        parts.push(item);
    }
    let mut tail = Vec::with_capacity(32 + last_id.len() + gap.len());
    tail.extend_from_slice(b"],\"last_id\":\"");
    tail.extend_from_slice(last_id);
    tail.extend_from_slice(b"\",\"gap\":");
    tail.extend_from_slice(gap);
    tail.extend_from_slice(b"}\n");
    parts.push(tail.into());
    parts
}

/// How many of `items` (at least one) a JSON batch of at most `max` bytes
/// holds: the batch stops before the item that would pass the bound, and its
/// `last_id` is that of the last item it holds, so the next poll goes on from
/// there. Each item is encoded once and shared, so measuring costs nothing
/// twice. The envelope is counted at its largest (`extra`: the request's
/// channels beyond one, whose names and cursor entries it carries).
pub fn batch_len(items: impl Iterator<Item = Bytes>, max: usize, extra: usize) -> usize {
    // `{"channel":…,"messages":[` and `],"last_id":…,"gap":…}`.
    let mut size = 96 + MAX_CHANNEL_LEN + extra * (3 * MAX_CHANNEL_LEN + 64);
    let mut n = 0;
    for item in items {
        size += item.len() + 1;
        if n > 0 && size > max {
            break;
        }
        n += 1;
    }
    n
}

/// Separates the channels of a request, and the entries of a composite cursor.
pub const LIST_SEPARATOR: u8 = b',';
/// Separates a channel from its id in a composite cursor entry.
pub const CURSOR_SEPARATOR: u8 = b'~';
/// Most entries a composite cursor may have (a client may keep entries of
/// channels it no longer asks for; they are ignored).
const MAX_CURSOR_ENTRIES: usize = 256;

/// The channels a subscription reads, each with where it starts, in the
/// order asked. A subscription is a list of channels, one channel a list of
/// one; what clients of one channel see differently (the v1 protocol: plain
/// ids, `gap` as a boolean, no `X-Channel`, plain SSE frames) from clients of
/// several (`channel=a,b`: composite cursors, the channels that missed
/// messages, JSON items in SSE) is decided here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels(pub Vec<(SmolStr, Since)>);

impl Channels {
    /// The channels, each with where it starts.
    pub fn list(&self) -> &[(SmolStr, Since)] {
        &self.0
    }

    /// The channels' names, in the order asked.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| name.as_str())
    }

    /// The name of the channel at `place`.
    pub fn name(&self, place: usize) -> &str {
        self.0.get(place).map_or("", |(name, _)| name.as_str())
    }

    /// Several channels: resumed by composite cursors.
    fn several(&self) -> bool {
        self.0.len() > 1
    }

    /// Where a reader stands with each channel at the sequence in `at`
    /// (that of the last message it has, or of where it stood): a plain id
    /// on one channel (`last`'s own, when it is the last message answered),
    /// a composite cursor on several.
    pub fn position(&self, ids: &Ids, at: &[u64], last: Option<&Content>) -> Bytes {
        match (self.several(), last) {
            (false, Some(last)) => last.id.clone(),
            (false, None) => ids.id(at.first().copied().unwrap_or_default()),
            (true, _) => cursor(ids, &self.0, at),
        }
    }

    /// `X-Gap`, when a channel missed messages: `1` on one channel, the
    /// names of those that did on several.
    pub fn gap_header(&self, gaps: &[bool]) -> Option<Bytes> {
        if !gaps.contains(&true) {
            return None;
        }
        Some(match self.several() {
            false => Bytes::from_static(b"1"),
            true => Bytes::from(self.missed(gaps).join(",")),
        })
    }

    /// A JSON batch's `gap`: `true`/`false` on one channel, the list of
    /// those that missed messages on several.
    pub fn gap_json(&self, gaps: &[bool]) -> Vec<u8> {
        match self.several() {
            false if gaps.contains(&true) => b"true".to_vec(),
            false => b"false".to_vec(),
            true => serde_json::to_vec(&self.missed(gaps)).unwrap_or_else(|_| b"[]".to_vec()),
        }
    }

    /// A JSON batch's `channel`: the names, joined by commas.
    pub fn joined(&self) -> String {
        self.names().collect::<Vec<_>>().join(",")
    }

    /// `X-Channel` of a raw message from the channel at `place`: on several
    /// channels only.
    pub fn x_channel(&self, place: usize) -> Option<Bytes> {
        self.several()
            .then(|| Bytes::copy_from_slice(self.name(place).as_bytes()))
    }

    /// The SSE event of `message`, from the channel at `place`, the
    /// channels then standing at `at`: its shared frame on one channel; on
    /// several, `id:` the composite cursor and `data:` its JSON item (one
    /// line: JSON escapes line breaks).
    pub fn event(&self, ids: &Ids, at: &[u64], place: usize, message: &Content) -> Bytes {
        if !self.several() {
            return message.sse();
        }
        let cursor = cursor(ids, &self.0, at);
        let item = message.json(self.name(place));
        let mut out = Vec::with_capacity(cursor.len() + item.len() + 16);
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(&cursor);
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&item);
        out.extend_from_slice(b"\n\n");
        out.into()
    }

    /// The SSE event that says messages were missed, if any were.
    pub fn gap_event(&self, gaps: &[bool]) -> Option<Bytes> {
        if !gaps.contains(&true) {
            return None;
        }
        Some(match self.several() {
            false => {
                Bytes::from_static(b"event: gap\ndata: some messages are no longer retained\n\n")
            }
            true => {
                let list = serde_json::to_string(&self.missed(gaps)).unwrap_or_default();
                Bytes::from(format!("event: gap\ndata: {{\"channels\":{list}}}\n\n"))
            }
        })
    }

    /// The names of the channels that missed messages.
    fn missed(&self, gaps: &[bool]) -> Vec<&str> {
        self.names()
            .zip(gaps)
            .filter(|(_, gap)| **gap)
            .map(|(name, _)| name)
            .collect()
    }
}

/// A composite cursor: for each of `channels`, in order, `CHANNEL~ID`, the
/// id packed in its entry of `at` (that of the last message of it the
/// reader has, or of where it stands), joined by commas. Made in one
/// allocation: every answer to several channels carries one.
pub fn cursor(ids: &Ids, channels: &[(SmolStr, Since)], at: &[u64]) -> Bytes {
    let len = channels
        .iter()
        .zip(at)
        .map(|((name, _), &seq)| name.len() + 2 + ids.len(seq))
        .sum::<usize>();
    let mut out = Vec::with_capacity(len.saturating_sub(1));
    for (i, ((name, _), &seq)) in channels.iter().zip(at).enumerate() {
        if i > 0 {
            out.push(LIST_SEPARATOR);
        }
        out.extend_from_slice(name.as_bytes());
        out.push(CURSOR_SEPARATOR);
        ids.write(seq, &mut out);
    }
    out.into()
}

/// Where each of `channels` starts, from a `since` (or `Last-Event-ID`)
/// that is absent (each from now), `oldest` (each from its oldest message),
/// or a composite cursor: each named channel from its id (or `oldest`), any
/// other from now; entries of channels not asked for are ignored (but must
/// be well formed).
pub fn apply_cursor<S: AsRef<str>>(
    value: Option<&str>,
    channels: &mut [(S, Since)],
    ids: &Ids,
) -> Result<(), Error> {
    match value {
        None => {}
        Some("oldest") => channels.iter_mut().for_each(|(_, s)| *s = Since::Oldest),
        Some(value) if value.bytes().any(|b| b == CURSOR_SEPARATOR) => {
            for (n, entry) in pieces(value, LIST_SEPARATOR).enumerate() {
                if n >= MAX_CURSOR_ENTRIES {
                    return Err(Error::BadCursor);
                }
                let (channel, id) = cut(entry, CURSOR_SEPARATOR).ok_or(Error::BadCursor)?;
                let since = ids.parse_since(Some(id)).map_err(|_| Error::BadCursor)?;
                match channels
                    .iter_mut()
                    .find(|(name, _)| name.as_ref() == channel)
                {
                    Some((_, slot)) => *slot = since,
                    // Names asked for are checked already; this one is not.
                    None => {
                        channel_name(Some(channel)).map_err(|_| Error::BadCursor)?;
                    }
                }
            }
        }
        Some(_) => return Err(Error::BadCursor),
    }
    Ok(())
}

/// `GET /subscribe`'s parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The channels, each with where it starts.
    pub channels: Channels,
    /// How long to wait.
    pub timeout: Duration,
    /// How to answer.
    pub format: Format,
}

impl Subscribe {
    /// Most messages one answer carries (from each channel).
    pub fn limit(&self) -> usize {
        match self.format {
            Format::Raw => 1,
            Format::Json => usize::MAX,
        }
    }
}

/// `GET /events`' parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Events {
    /// The channels, each with where it starts.
    pub channels: Channels,
}

impl Query<'_> {
    /// The channel named, checked.
    pub fn channel(&self) -> Result<String, Error> {
        channel_name(self.channel.as_deref()).map(str::to_owned)
    }

    /// A publish's idempotency key: the `Idempotency-Key` header (bare, or
    /// as the quoted string RFC 8941 makes it) or `idempotency_key=`; both
    /// may be given if they agree.
    pub fn idempotency_key(&self, header: Option<&[u8]>) -> Result<Option<String>, Error> {
        let bad = Error::BadIdempotencyKey(MAX_IDEMPOTENCY_KEY);
        let header = match header {
            Some(v) => {
                let v = v.trim_ascii();
                let v = match v {
                    [b'"', inner @ .., b'"'] => inner,
                    _ => v,
                };
                Some(std::str::from_utf8(v).map_err(|_| bad.clone())?)
            }
            None => None,
        };
        let key = match (header, self.idempotency_key.as_deref()) {
            (Some(a), Some(b)) if a != b => return Err(bad),
            (a, b) => match a.or(b) {
                Some(key) => key,
                None => return Ok(None),
            },
        };
        let visible = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"';
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.bytes().all(visible) {
            return Err(bad);
        }
        Ok(Some(key.to_owned()))
    }

    /// The channels a subscription names (`channel=a,b,c`), each checked,
    /// at most `max`, with where each starts: from `since`, or the
    /// `Last-Event-ID` header when the query has none.
    pub fn channels(
        &self,
        last_event_id: Option<&[u8]>,
        ids: &Ids,
        max: usize,
    ) -> Result<Channels, Error> {
        let header = match last_event_id {
            Some(v) => Some(std::str::from_utf8(v).map_err(|_| Error::BadSince)?),
            None => None,
        };
        let since = self.since.as_deref().or(header);
        let list = self.channel.as_deref().unwrap_or(DEFAULT_CHANNEL);
        // One channel (a comma is no name's): plain ids, or a cursor.
        if let Ok(channel) = channel_name(Some(list)) {
            let mut one = vec![(SmolStr::from(channel), Since::Next)];
            one[0].1 = match ids.parse_since(since) {
                Err(_) if since.is_some_and(|s| s.bytes().any(|b| b == CURSOR_SEPARATOR)) => {
                    apply_cursor(since, &mut one, ids)?;
                    one[0].1
                }
                since => since?,
            };
            return Ok(Channels(one));
        }
        if !list.bytes().any(|b| b == LIST_SEPARATOR) {
            return Err(Error::BadChannel);
        }
        let mut channels: Vec<(SmolStr, Since)> = Vec::with_capacity(4);
        for name in pieces(list, LIST_SEPARATOR) {
            let name = channel_name(Some(name))?;
            if channels.len() == max {
                return Err(Error::TooManyChannels(max));
            }
            if channels.iter().any(|(n, _)| n == name) {
                return Err(Error::DuplicateChannel);
            }
            channels.push((name.into(), Since::Next));
        }
        apply_cursor(since, &mut channels, ids)?;
        Ok(Channels(channels))
    }

    /// The query as `/subscribe` parameters (at most `max_channels`).
    pub fn subscribe(
        &self,
        last_event_id: Option<&[u8]>,
        ids: &Ids,
        max_timeout: Duration,
        max_channels: usize,
    ) -> Result<Subscribe, Error> {
        Ok(Subscribe {
            channels: self.channels(last_event_id, ids, max_channels)?,
            timeout: timeout(self.timeout.as_deref(), max_timeout)?,
            format: Format::parse(self.format.as_deref())?,
        })
    }

    /// The query as `/events` parameters (at most `max_channels`).
    pub fn events(
        &self,
        last_event_id: Option<&[u8]>,
        ids: &Ids,
        max_channels: usize,
    ) -> Result<Events, Error> {
        Ok(Events {
            channels: self.channels(last_event_id, ids, max_channels)?,
        })
    }
}

/// The largest form body a publish of `max_message` bytes may take: a form
/// encodes each byte in up to three.
pub fn form_limit(max_message: usize) -> usize {
    max_message * 3 + 1024
}

/// Whether a Content-Type is a URL-encoded form.
pub fn is_form(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|ct| {
        ct.len() >= 33 && ct[..33].eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    })
}

/// Whether a browser may show a published message of this Content-Type in
/// place. Anything else (HTML, SVG, XML, scripts, unknown types) is served as
/// an attachment, so a publisher can never put a page on the server's origin.
pub fn shown_inline(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_ascii_lowercase();
    matches!(
        essence.as_slice(),
        b"text/plain"
            | b"text/csv"
            | b"application/json"
            | b"application/octet-stream"
            | b"image/png"
            | b"image/jpeg"
            | b"image/gif"
            | b"image/webp"
            | b"image/avif"
    ) || essence.starts_with(b"audio/")
        || essence.starts_with(b"video/")
}

/// Content-Type of a published body that came without one.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The message a publish carries, from its query, form or body, with its type.
pub fn published_message(
    query_message: Option<String>,
    content_type: Option<Bytes>,
    body: Bytes,
    max_message: usize,
) -> Result<(Bytes, Bytes), Error> {
    let text = || Bytes::from_static(TEXT_PLAIN.as_bytes());
    let from_query = |m: Option<String>| m.map(Bytes::from).ok_or(Error::MissingMessage);
    let (data, content_type) = if is_form(content_type.as_deref()) {
        let form: PublishForm =
            serde_urlencoded::from_bytes(&body).map_err(|e| Error::BadQuery(e.to_string()))?;
        (from_query(form.message.or(query_message))?, text())
    } else if body.is_empty() {
        (from_query(query_message)?, text())
    } else {
        let ct = content_type.unwrap_or(Bytes::from_static(OCTET_STREAM.as_bytes()));
        (body, ct)
    };
    if data.len() > max_message {
        return Err(Error::TooLarge(max_message));
    }
    if content_type.len() > MAX_CONTENT_TYPE {
        return Err(Error::BadContentType(MAX_CONTENT_TYPE));
    }
    Ok((data, content_type))
}

/// Standard base64 with padding, for message data that is not UTF-8.
pub fn base64(data: &[u8]) -> String {
    use ::base64::Engine;
    ::base64::engine::general_purpose::STANDARD.encode(data)
}

/// What an idempotent publish carried: the first 16 bytes of a SHA-256 of
/// its type and body, the same on every instance (the Redis store keeps it).
pub fn fingerprint(data: &[u8], content_type: &[u8]) -> Fingerprint {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    digest.update((content_type.len() as u64).to_be_bytes());
    digest.update(content_type);
    digest.update(data);
    let mut print = [0; 16];
    print.copy_from_slice(&digest.finalize()[..16]);
    print
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert_eq!(channel_name(None), Ok("default"));
        assert_eq!(channel_name(Some("room:1@a.b-c_d")), Ok("room:1@a.b-c_d"));
        assert_eq!(channel_name(Some("")), Err(Error::BadChannel));
        assert_eq!(channel_name(Some("a b")), Err(Error::BadChannel));
        assert_eq!(channel_name(Some("é")), Err(Error::BadChannel));
        assert!(channel_name(Some(&"x".repeat(128))).is_ok());
        assert_eq!(channel_name(Some(&"x".repeat(129))), Err(Error::BadChannel));
    }

    #[test]
    fn byte_splits_agree_with_str_split() {
        for s in ["", ",", "a", "a,b", ",a,", "a,,b", "é,ü", "~,~~"] {
            assert_eq!(
                pieces(s, b',').collect::<Vec<_>>(),
                s.split(',').collect::<Vec<_>>()
            );
            assert_eq!(cut(s, b'~'), s.split_once('~'));
        }
        assert_eq!(decimal("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "18446744073709551616", "+1", "-1", "1a", "٣"] {
            assert_eq!(decimal(bad), None, "{bad}");
        }
        assert_eq!(decimal("007"), Some(7));
    }

    #[test]
    fn since_values() {
        assert_eq!(parse_epoch_since(None, "abc"), Ok(Since::Next));
        assert_eq!(parse_epoch_since(Some("oldest"), "abc"), Ok(Since::Oldest));
        assert_eq!(parse_epoch_since(Some("abc-42"), "abc"), Ok(Since::Id(42)));
        assert_eq!(parse_epoch_since(Some("zzz-42"), "abc"), Ok(Since::Foreign));
        for bad in [
            "",
            "42",
            "abc-",
            "-1",
            "abc--1",
            "abc-x",
            "a b-1",
            "abc-99999999999999999999",
        ] {
            assert_eq!(
                parse_epoch_since(Some(bad), "abc"),
                Err(Error::BadSince),
                "{bad}"
            );
        }
    }

    #[test]
    fn stream_ids() {
        let ids = Ids::Stream;
        let seq = Ids::parse_stream("1732550000000-7").unwrap();
        assert_eq!(ids.format(seq), "1732550000000-7");
        assert!(Ids::parse_stream("1732550000000-8").unwrap() > seq);
        assert!(Ids::parse_stream("1732550000001-0").unwrap() > seq);
        assert_eq!(ids.parse_since(Some("5-1")), Ok(Since::Id(5 << 20 | 1)));
        assert_eq!(ids.parse_since(Some("oldest")), Ok(Since::Oldest));
        assert_eq!(ids.parse_since(None), Ok(Since::Next));
        assert_eq!(ids.parse_since(Some("abc-1")), Ok(Since::Foreign));
        assert_eq!(ids.parse_since(Some("1-9999999")), Ok(Since::Foreign));
        assert_eq!(ids.parse_since(Some("1-")), Err(Error::BadSince));
        assert_eq!(ids.parse_since(Some("x")), Err(Error::BadSince));
    }

    #[test]
    fn id_headers_match_the_formatted_ids() {
        for ids in [Ids::Epoch("k3x9af".into()), Ids::Stream] {
            for seq in [
                0,
                1,
                9,
                10,
                42,
                1 << 20,
                (1764080000000 << 20) | 7,
                u64::MAX,
            ] {
                assert_eq!(ids.id(seq), ids.format(seq).as_bytes());
            }
        }
        assert_eq!(
            Ids::Epoch("k3x9af".into()).format(42),
            message_id("k3x9af", 42)
        );
        assert_eq!(
            Ids::Stream.format((1764080000000 << 20) | 7),
            "1764080000000-7"
        );
        assert_eq!(Ids::Stream.format(u64::MAX), "17592186044415-1048575");
    }

    #[test]
    fn timeouts() {
        let d = Duration::from_secs(30);
        assert_eq!(timeout(None, d), Ok(d));
        assert_eq!(timeout(Some("5"), d), Ok(Duration::from_secs(5)));
        assert_eq!(timeout(Some("0.5"), d), Ok(Duration::from_millis(500)));
        assert_eq!(timeout(Some("999999"), d), Ok(d));
        for bad in ["-1", "x", "NaN", "inf", ""] {
            assert_eq!(timeout(Some(bad), d), Err(Error::BadTimeout), "{bad}");
        }
    }

    #[test]
    fn epochs_are_distinct_tokens() {
        let e = new_epoch();
        assert_eq!(e.len(), 6);
        assert!(e.as_bytes()[0].is_ascii_lowercase());
        assert!(matches!(
            parse_epoch_since(Some(&message_id(&e, 7)), &e),
            Ok(Since::Id(7))
        ));
    }

    #[test]
    fn only_passive_types_are_shown_inline() {
        for inline in [
            &b"text/plain"[..],
            b"text/plain; charset=utf-8",
            b"Application/JSON",
            b"image/png",
            b"video/mp4",
        ] {
            assert!(shown_inline(inline), "{}", String::from_utf8_lossy(inline));
        }
        for active in [
            &b"text/html"[..],
            b"TEXT/HTML; charset=utf-8",
            b"image/svg+xml",
            b"application/xhtml+xml",
            b"text/xml",
            b"application/javascript",
            b"",
            b"text/plainx",
        ] {
            assert!(!shown_inline(active), "{}", String::from_utf8_lossy(active));
        }
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn several_channels_and_their_cursors() {
        let ids = Ids::Epoch("k3x9af".into());
        let query = |q: &'static str| Query::parse(Some(q)).unwrap();
        let several = |q, header: Option<&[u8]>| query(q).channels(header, &ids, 4);
        // One channel keeps plain ids; a composite cursor naming it works too.
        assert_eq!(
            several("channel=a&since=k3x9af-7", None),
            Ok(Channels(vec![("a".into(), Since::Id(7))]))
        );
        assert_eq!(
            several("channel=a&since=b~k3x9af-1,a~k3x9af-7", None),
            Ok(Channels(vec![("a".into(), Since::Id(7))]))
        );
        let list = |pairs: &[(&str, Since)]| {
            Ok(Channels(
                pairs.iter().map(|(c, s)| ((*c).into(), *s)).collect(),
            ))
        };
        assert_eq!(
            several("channel=a,b,c", None),
            list(&[("a", Since::Next), ("b", Since::Next), ("c", Since::Next)])
        );
        assert_eq!(
            several("channel=a,b&since=oldest", None),
            list(&[("a", Since::Oldest), ("b", Since::Oldest)])
        );
        // Each channel from its entry; one the cursor does not name from now;
        // an entry for a channel not asked for is ignored; a foreign id is a gap.
        assert_eq!(
            several(
                "channel=a,b,c&since=c~oldest,a~k3x9af-3,gone~k3x9af-9,b~zz-1",
                None
            ),
            list(&[
                ("a", Since::Id(3)),
                ("b", Since::Foreign),
                ("c", Since::Oldest)
            ])
        );
        let header: &[u8] = b"b~k3x9af-2";
        assert_eq!(
            several("channel=a,b", Some(header)),
            list(&[("a", Since::Next), ("b", Since::Id(2))])
        );
        for (q, err) in [
            ("channel=a,b&since=k3x9af-3", Error::BadCursor),
            ("channel=a,b&since=a~x", Error::BadCursor),
            ("channel=a,b&since=a~k3x9af-1,", Error::BadCursor),
            ("channel=a,b&since=a b~k3x9af-1", Error::BadCursor),
            ("channel=a,,b", Error::BadChannel),
            ("channel=a,b,", Error::BadChannel),
            ("channel=a,b,a", Error::DuplicateChannel),
            ("channel=a,b,c,d,e", Error::TooManyChannels(4)),
        ] {
            assert_eq!(several(q, None), Err(err), "{q}");
        }
        let long = format!("channel=a,b&since={}", vec!["x~k3x9af-1"; 300].join(","));
        assert_eq!(
            Query::parse(Some(&long)).unwrap().channels(None, &ids, 4),
            Err(Error::BadCursor)
        );
    }

    #[test]
    fn cursors_name_each_channel_with_its_id() {
        for ids in [Ids::Epoch("k3x9af".into()), Ids::Stream] {
            let mut channels: Vec<(SmolStr, Since)> =
                vec![("a".into(), Since::Next), ("room.1".into(), Since::Next)];
            let at = [3, (1_764_080_000_000 << 20) | 12];
            let cursor = cursor(&ids, &channels, &at);
            let text = std::str::from_utf8(&cursor).unwrap();
            assert_eq!(
                text,
                format!("a~{},room.1~{}", ids.format(at[0]), ids.format(at[1]))
            );
            assert_eq!(cursor.len(), text.len());
            // What a cursor says is what reading it gives back.
            channels.reverse();
            apply_cursor(Some(text), &mut channels, &ids).unwrap();
            assert_eq!(channels[0].1, Since::Id(at[1]));
            assert_eq!(channels[1].1, Since::Id(at[0]));
        }
    }
}
