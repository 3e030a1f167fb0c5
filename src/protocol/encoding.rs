//! How a message is encoded: its raw answer, JSON item and SSE frame, made
//! at most once and shared by every subscriber it goes to, and counted
//! against the memory bound.

use super::*;

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
    /// The channel (several joined by commas).
    pub channel: &'a str,
    /// On several channels: each one's id for the message (the same one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<std::collections::BTreeMap<&'a str, &'a str>>,
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
    /// Every channel it was published on, when it was published on several
    /// at once: a subscriber of several of them gets it once.
    pub channels: Option<Arc<[SmolStr]>>,
    /// A browser may show it in place ([`super::shown_inline`]), decided
    /// once for every answer that carries it raw.
    pub inline: bool,
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
            inline: super::shown_inline(&content_type),
            content_type,
            channels: None,
            json: OnceLock::new(),
            sse: OnceLock::new(),
            meter: meter.clone(),
        }
    }

    /// The same content, published on every one of `channels` at once.
    pub fn on(mut self, channels: Option<Arc<[SmolStr]>>) -> Content {
        self.channels = channels;
        self
    }

    /// Whether it was published on `channel` too.
    pub fn also_on(&self, channel: &str) -> bool {
        self.channels
            .as_ref()
            .is_some_and(|list| list.iter().any(|c| c == channel))
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

/// Standard base64 with padding, for message data that is not UTF-8.
pub fn base64(data: &[u8]) -> String {
    use ::base64::Engine;
    ::base64::engine::general_purpose::STANDARD.encode(data)
}

/// What an idempotent publish carried: the first 16 bytes of a SHA-256 of
/// its type and body, the same on every instance (the Redis store keeps it).
pub fn fingerprint(data: &[u8], content_type: &[u8], channels: &[&str]) -> Fingerprint {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    digest.update((content_type.len() as u64).to_be_bytes());
    digest.update(content_type);
    if channels.len() > 1 {
        // A publish to several channels is another publish than to one;
        // one to one channel prints as it always has.
        for channel in channels {
            digest.update((channel.len() as u64).to_be_bytes());
            digest.update(channel);
        }
    }
    digest.update(data);
    let mut print = [0; 16];
    print.copy_from_slice(&digest.finalize()[..16]);
    print
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }
}
