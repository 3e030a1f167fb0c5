//! What a request says: its parameters (channels, `since`, timeout, format,
//! idempotency key) and a publish's message, checked before anything reaches
//! a store.

use super::*;

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

/// Checks a channel name (absent means [`DEFAULT_CHANNEL`]); a channel's
/// presence channel is `$presence:` and its name.
pub fn channel_name(name: Option<&str>) -> Result<&str, Error> {
    let full = name.unwrap_or(DEFAULT_CHANNEL);
    let name = crate::presence::of(full).unwrap_or(full);
    let valid = !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'));
    if valid {
        Ok(full)
    } else {
        Err(Error::BadChannel)
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
    /// `client=`: who a subscriber says it is, for presence without auth
    /// (unverified).
    #[serde(borrow)]
    pub client: Option<Cow<'a, str>>,
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
                "client" => &mut out.client,
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
    /// `client=`, checked: who a subscriber says it is.
    pub fn client(&self) -> Result<Option<SmolStr>, Error> {
        match self.client.as_deref() {
            None => Ok(None),
            Some(id) if crate::presence::valid_member(id) => Ok(Some(id.into())),
            Some(_) => Err(Error::BadQuery(format!(
                "client: use 1-{} visible ASCII characters",
                crate::presence::MAX_MEMBER
            ))),
        }
    }

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
    const INLINE: [&[u8]; 9] = [
        b"text/plain",
        b"text/csv",
        b"application/json",
        b"application/octet-stream",
        b"image/png",
        b"image/jpeg",
        b"image/gif",
        b"image/webp",
        b"image/avif",
    ];
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let starts = |prefix: &[u8]| {
        essence.len() >= prefix.len() && essence[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    INLINE.iter().any(|t| essence.eq_ignore_ascii_case(t)) || starts(b"audio/") || starts(b"video/")
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
    fn only_passive_types_are_shown_inline() {
        for inline in [
            &b"text/plain"[..],
            b"text/plain; charset=utf-8",
            b"Application/JSON",
            b"image/png",
            b"video/mp4",
            b"  AUDIO/ogg ; codecs=opus",
            b" text/CSV",
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
            b"audio",
            b"xvideo/mp4",
        ] {
            assert!(!shown_inline(active), "{}", String::from_utf8_lossy(active));
        }
    }
}
