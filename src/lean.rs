//! A lean HTTP/1.1 path for the hot requests: long-polls and publishes.
//!
//! Waiting long-polls are most of what the server holds, and hyper keeps an 8 KiB
//! read buffer and its connection state for every connection it serves. So each
//! connection starts here: a request head is read into a buffer that is freed
//! before waiting, and a plain `GET /subscribe`, `GET /publish` or
//! `POST /publish` (with a Content-Length) is answered directly; a long-poll holds
//! only the socket and the hub's waiter while it waits. The answer to the waiters
//! a message wakes is serialized once for all of them. Any other request, or
//! anything unusual in one, hands the connection (with the bytes already read) to
//! hyper for the rest of its life, so every other corner of HTTP stays hyper's.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use http_body_util::Full;
use hyper::body::Body as _;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::hub::Polled;
use crate::protocol::Format;
use crate::service::{Body, LongPoll, Service};

/// `Last-Event-ID`, the SSE resume header, also read by long-polls.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Most header lines a request may have on this path (hyper's default too).
const MAX_HEADERS: usize = 100;
/// How long, and how many bytes, a closing connection reads and discards.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;
/// Longest an answer may take to be written to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits for reading request heads.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a client has to send a head (from the connection or its last answer).
    pub header_timeout: Duration,
    /// Largest head; a larger one goes to hyper, which answers `431`.
    pub max_head: usize,
    /// Largest publish body read; a larger one is refused from its length.
    pub max_body: usize,
}

/// How a connection left this path.
#[derive(Debug)]
pub enum Next {
    /// Serve the rest with hyper, replaying what was read.
    Hyper(Rewind),
    /// Done: closed, timed out, or the client left.
    Closed,
}

/// Serves long-polls and publishes on `stream` until it closes or a request
/// needs hyper.
pub async fn serve(
    mut stream: TcpStream,
    service: &Service,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) -> Next {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut stream, &mut buf, limits, &mut stop).await else {
            return Next::Closed;
        };
        let Some(Head {
            request,
            mut close,
            http10,
            body,
        }) = (end <= limits.max_head)
            .then(|| parse(&buf[..end]))
            .flatten()
        else {
            return Next::Hyper(Rewind::new(buf, stream));
        };
        let answer = if let Some(length) = body {
            // A publish: its body follows the head.
            let response = if length > limits.max_body {
                // Refused from its Content-Length; the body is never read.
                close = true;
                buf.clear();
                let mut request = request.map(|()| Full::new(Bytes::new()));
                request
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
                Box::pin(service.publish(request)).await
            } else {
                match read_body(&mut stream, &mut buf, end + length, limits).await {
                    Some(true) => {
                        let data = Bytes::copy_from_slice(&buf[end..end + length]);
                        buf.drain(..end + length);
                        Box::pin(service.publish(request.map(|()| Full::new(data)))).await
                    }
                    Some(false) => {
                        close = true;
                        Err(Error::BodyTimeout)
                    }
                    None => return Next::Closed,
                }
            };
            answer(service, response, close || *stop.borrow(), http10)
        } else {
            // Free the head before waiting; keep only pipelined bytes, if any.
            buf.drain(..end);
            buf.shrink_to_fit();
            let result = match service.long_poll(request) {
                Ok(poll) => match wait(&mut stream, std::pin::pin!(poll), &mut buf, limits).await {
                    Some(result) => result,
                    None => return Next::Closed,
                },
                Err(err) => Err(err),
            };
            close |= *stop.borrow();
            render(service, result, close, http10)
        };
        let written = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&answer)).await;
        if !matches!(written, Ok(Ok(()))) {
            return Next::Closed;
        }
        if close {
            linger(stream).await;
            return Next::Closed;
        }
    }
}

/// Closes after an answer: the write side first, then reads what the client
/// still sends (an unread body, a request in flight) for a moment. Closing with
/// unread bytes would reset the connection, and the client could lose the answer.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    // On the heap: an array here would size every connection's task.
    let mut scratch = vec![0u8; 4096];
    let mut left = LINGER_BYTES;
    let drain = async {
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Reads until `buf` holds a whole head; returns its length. `None`: the client
/// left, was too slow, or the server is stopping while it is idle.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
    stop: &mut watch::Receiver<bool>,
) -> Option<usize> {
    let deadline = Instant::now() + limits.header_timeout;
    loop {
        if let Some(end) = head_end(buf) {
            return Some(end);
        }
        if buf.len() > limits.max_head {
            return Some(buf.len());
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(1024);
        }
        tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read_buf(buf)) => match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            },
            _ = stopping(stop), if buf.is_empty() => return None,
        }
    }
}

/// Resolves once the server is stopping (never, if it cannot tell).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|&s| s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Reads until `buf` holds `want` bytes: `Some(true)` once it does, `Some(false)`
/// if the body is too slow, `None` if the client left.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
    limits: &Limits,
) -> Option<bool> {
    let deadline = Instant::now() + limits.header_timeout;
    buf.reserve(want.saturating_sub(buf.len()));
    while buf.len() < want {
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Some(false),
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return None,
        }
    }
    Some(true)
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A request this path answers.
#[derive(Debug)]
struct Head {
    request: Request<()>,
    close: bool,
    http10: bool,
    /// For a publish, the length of the body that follows.
    body: Option<usize>,
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Parses a plain `GET /subscribe` or `GET|POST /publish` head; `None` for
/// anything else or anything unusual, which hyper then handles.
fn parse(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    // Every line ends in CRLF; a bare LF is unusual, and left to hyper.
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').ok_or(l));
    let mut parts = lines.next()?.ok()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let path = target.split('?').next()?;
    let publish = path == "/publish";
    let method = match (method, path) {
        ("GET", "/subscribe" | "/publish") => Method::GET,
        ("POST", "/publish") => Method::POST,
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return None,
    };
    let uri: Uri = target.parse().ok()?;
    if uri.path() != path {
        return None;
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let mut length = None;
    let mut close = http10;
    let mut count = 0;
    for line in lines {
        let line = match line {
            Ok(line) => line,
            Err("") => continue,
            Err(_) => return None,
        };
        if line.is_empty() {
            continue;
        }
        count += 1;
        let (name, value) = line.split_once(':')?;
        let value = value.trim_matches([' ', '\t']);
        let bad_byte = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
        if count > MAX_HEADERS || !is_token(name) || value.bytes().any(bad_byte) {
            return None;
        }
        let is = |n: &HeaderName| {
            name.len() == n.as_str().len() && name.eq_ignore_ascii_case(n.as_str())
        };
        if is(&header::CONNECTION) {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    close = false;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    return None;
                }
            }
        } else if is(&header::CONTENT_LENGTH) {
            let digits =
                !value.is_empty() && value.len() <= 12 && value.bytes().all(|b| b.is_ascii_digit());
            if length.is_some() || !digits || (!publish && value != "0") {
                return None;
            }
            length = value.parse::<usize>().ok();
        } else if is(&header::TRANSFER_ENCODING) || is(&header::EXPECT) || is(&header::UPGRADE) {
            return None;
        } else {
            let keep: &[HeaderName] = if publish {
                &[header::CONTENT_TYPE, header::AUTHORIZATION]
            } else {
                &[LAST_EVENT_ID]
            };
            if let Some(name) = keep.iter().find(|n| is(n))
                && !request.headers().contains_key(name)
            {
                request
                    .headers_mut()
                    .insert(name.clone(), header_value(value)?);
            }
        }
    }
    Some(Head {
        request,
        close,
        http10,
        body: publish.then_some(length.unwrap_or(0)),
    })
}

/// A header value; the common content types without an allocation.
fn header_value(value: &str) -> Option<HeaderValue> {
    const COMMON: [&str; 5] = [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/json",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
    ];
    match COMMON.iter().find(|c| c.eq_ignore_ascii_case(value)) {
        Some(common) if *common == value => Some(HeaderValue::from_static(common)),
        _ => HeaderValue::from_str(value).ok(),
    }
}

/// Waits for the long-poll while watching the socket: a client that hangs up is
/// forgotten at once; bytes it pipelines are kept in `pending`.
async fn wait(
    stream: &mut TcpStream,
    mut poll: Pin<&mut impl Future<Output = Result<LongPoll, Error>>>,
    pending: &mut Vec<u8>,
    limits: &Limits,
) -> Option<Result<LongPoll, Error>> {
    loop {
        tokio::select! {
            biased;
            result = poll.as_mut() => return Some(result),
            ready = stream.readable() => {
                ready.ok()?;
                let mut chunk = [0u8; 512];
                match stream.try_read(&mut chunk) {
                    Ok(0) => return None,
                    Ok(n) if pending.len() + n <= limits.max_head => {
                        pending.extend_from_slice(&chunk[..n]);
                    }
                    Ok(_) => return None,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
            }
        }
    }
}

/// The answer's bytes. One message woken without a gap (the usual case) uses the
/// head and body serialized once for every waiter it wakes.
fn render(
    service: &Service,
    result: Result<LongPoll, Error>,
    close: bool,
    http10: bool,
) -> Vec<u8> {
    let poll = match result {
        Ok(poll) => poll,
        Err(err) => return answer(service, Err(err), close, http10),
    };
    match &poll.polled {
        Polled::Messages {
            messages,
            gap: false,
        } if messages.len() == 1 => {
            let slot = usize::from(poll.format == Format::Json);
            let (head, body) = messages[0].answers[slot]
                .get_or_init(|| serialize(service.finish(Ok(poll.render()))));
            respond(head, body, close, http10)
        }
        _ => answer(service, Ok(poll.render()), close, http10),
    }
}

/// A handler's result as the bytes of its answer.
fn answer(
    service: &Service,
    result: Result<Response<Body>, Error>,
    close: bool,
    http10: bool,
) -> Vec<u8> {
    let (head, body) = serialize(service.finish(result));
    respond(&head, &body, close, http10)
}

/// An answer's bytes: its head, the date and connection lines, its body.
fn respond(head: &[u8], body: &[u8], close: bool, http10: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(head);
    DATE.with(|d| out.extend_from_slice(&d.borrow_mut().line()));
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A response as (status line and headers, without the blank line; body).
fn serialize(response: Response<Body>) -> (Bytes, Bytes) {
    let (parts, body) = response.into_parts();
    let body = body_bytes(body);
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if parts.status != StatusCode::NO_CONTENT && parts.status != StatusCode::NOT_MODIFIED {
        head.extend_from_slice(b"content-length: ");
        crate::protocol::push_decimal(&mut head, body.len() as u64);
        head.extend_from_slice(b"\r\n");
    }
    (head.into(), body)
}

/// The bytes of a complete body (every answer on this path has one).
fn body_bytes(mut body: Body) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
        if let Ok(data) = frame.into_data() {
            if out.is_empty() && body.is_end_stream() {
                return data;
            }
            out.extend_from_slice(&data);
        }
    }
    out.into()
}

thread_local! {
    static DATE: RefCell<Date> = const { RefCell::new(Date { second: 0, line: Bytes::new() }) };
}

/// The `date:` header line, made once a second.
#[derive(Debug)]
struct Date {
    second: u64,
    line: Bytes,
}

impl Date {
    fn line(&mut self) -> Bytes {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.line.is_empty() {
            self.second = second;
            self.line = format!("date: {}\r\n", httpdate::fmt_http_date(now)).into();
        }
        self.line.clone()
    }
}

/// A connection handed to hyper: the bytes already read, then the socket.
#[derive(Debug)]
pub struct Rewind {
    read: Bytes,
    inner: TcpStream,
}

impl Rewind {
    fn new(read: Vec<u8>, inner: TcpStream) -> Rewind {
        Rewind {
            read: read.into(),
            inner,
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_long_polls_are_taken_and_the_rest_left_to_hyper() {
        let head = parse(b"GET /subscribe?channel=a&since=x-1 HTTP/1.1\r\nHost: h\r\nLast-Event-ID: x-2\r\nLast-Event-ID: x-3\r\n\r\n").unwrap();
        assert_eq!(head.request.uri().query(), Some("channel=a&since=x-1"));
        assert_eq!(head.request.headers()["last-event-id"], "x-2");
        assert!(!head.close && !head.http10);
        assert!(
            parse(b"GET /subscribe HTTP/1.1\r\nConnection: Close\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(parse(b"GET /subscribe HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(
            !parse(b"GET /subscribe HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .close
        );
        for other in [
            &b"POST /subscribe HTTP/1.1\r\n\r\n"[..],
            b"DELETE /publish HTTP/1.1\r\n\r\n",
            b"GET /events HTTP/1.1\r\n\r\n",
            b"POST /publish HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST /publish HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /subscribex HTTP/1.1\r\n\r\n",
            b"GET /subscribe HTTP/2.0\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\n folded\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\nbad name: v\r\n\r\n",
            b"GET  /subscribe HTTP/1.1\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\nX: \xff\r\n\r\n",
        ] {
            assert!(parse(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn serialized_answers_carry_status_headers_and_length() {
        let response = crate::service::full(
            StatusCode::OK,
            HeaderValue::from_static("text/plain"),
            Bytes::from_static(b"hello"),
        );
        let (head, body) = serialize(response);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n"
        );
        assert_eq!(&body[..], b"hello");
    }
}
