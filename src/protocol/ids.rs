//! Message ids and cursors: an in-memory run's epoch ids and Redis stream
//! ids, read and written, and the composite cursor of a subscription on
//! several channels; what a one-channel client sees differently is decided
//! in [`Channels`].

use super::*;

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
pub(super) fn pieces(s: &str, sep: u8) -> impl Iterator<Item = &str> {
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
pub(super) fn cut(s: &str, sep: u8) -> Option<(&str, &str)> {
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

    /// Moves a reader past `message` (sequence `seq`), read on the channel
    /// at `place`: that channel stands at it, and so does every other one of
    /// these channels it was published on at once. `false` when the reader
    /// had it already: a copy of a publish on several of these channels,
    /// read on another of them first. The one place this is decided, for
    /// long-poll answers and event streams alike.
    pub fn advance(&self, at: &mut [u64], place: usize, seq: u64, message: &Content) -> bool {
        if message.channels.is_none() {
            if let Some(stands) = at.get_mut(place) {
                *stands = seq;
            }
            return true;
        }
        if at.get(place).is_some_and(|&stands| stands >= seq) {
            return false;
        }
        for (stands, (name, _)) in at.iter_mut().zip(&self.0) {
            if message.also_on(name) {
                *stands = (*stands).max(seq);
            }
        }
        true
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_reader_moves_past_a_publish_on_several_of_its_channels_once() {
        let channels = Channels(
            ["a", "b", "c"]
                .iter()
                .map(|c| ((*c).into(), Since::Next))
                .collect(),
        );
        let content = |several: Option<&[&str]>| {
            Content::new(Bytes::new(), Bytes::new(), Bytes::new(), &Meter::default())
                .on(several.map(|list| list.iter().map(|&c| SmolStr::from(c)).collect()))
        };
        let mut at = [1, 2, 3];
        // A message of one channel moves that channel only.
        assert!(channels.advance(&mut at, 1, 5, &content(None)));
        assert_eq!(at, [1, 5, 3]);
        // One published on a, c and d: read on c, it moves a and c; read
        // again on a, it is a copy.
        let both = content(Some(&["a", "c", "d"]));
        assert!(channels.advance(&mut at, 2, 9, &both));
        assert_eq!(at, [9, 5, 9]);
        assert!(!channels.advance(&mut at, 0, 9, &both));
        assert_eq!(at, [9, 5, 9]);
        // A later one on a alone is no copy.
        assert!(channels.advance(&mut at, 0, 10, &content(Some(&["a", "x"]))));
        assert_eq!(at, [10, 5, 9]);
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
