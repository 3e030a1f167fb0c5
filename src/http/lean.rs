//! The lean HTTP/1.1 path: parses request heads and writes answers without hyper.
//!
//! Waiting long-polls are most of what the server holds, and hyper keeps an 8 KiB
//! read buffer and its connection state for every connection it serves. So each
//! connection starts here: a request head is read into a buffer that is freed
//! before waiting, turned into the routes' [`Request`], routed, and answered with
//! the [`Answer`] its handler returns, written vectored (head, then the body's
//! shared buffers, never copied per subscriber). A long-poll holds only the
//! socket and the store's wait while it waits. Heads are tokenized by httparse,
//! as hyper tokenizes them, so the two paths never read the same bytes two ways
//! (`fuzz/fuzz_targets/parity.rs` checks it). An event stream, or anything
//! unusual in a head (chunked bodies, `Expect`, `Upgrade`, other versions or
//! methods), hands the connection, with the bytes already read, to hyper for
//! the rest of its life, so every other corner of HTTP stays hyper's. Event
//! streams are written here too.
//!
//! Every HTTP/1.1 connection takes this path, whatever it comes over: a TCP
//! socket, a TLS session (ALPN `http/1.1` or none; the session's own
//! buffers are rustls's), or a Unix socket. It asks of the connection only
//! that it reads and writes ([`Socket`]), and flushes what it wrote.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Closing;
use crate::answer::{Answer, Body, same_headers};
use crate::error::Error;
use crate::routes::{Fresh, Request, Route, Routes};

/// Most header lines a request may have on this path (hyper's default too).
const MAX_HEADERS: usize = 100;
/// How long, and how many bytes, a closing connection reads and discards.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// Most buffer room a connection keeps after reading a body.
const BODY_ROOM_KEPT: usize = 16 * 1024;

/// Limits for reading requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a client has to send a head (from the connection or its last answer).
    pub header_timeout: Duration,
    /// Largest head; a larger one goes to hyper, which answers `431`.
    pub max_head: usize,
    /// Longest a write may wait for the client to take a byte; a client that
    /// reads, however slowly, may take as long as it needs.
    pub write_timeout: Duration,
}

/// A connection this path can serve: anything that reads and writes.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether it holds back what is written until flushed (a TLS session
    /// does; a socket does not, and is not asked to).
    const BUFFERED: bool;
}

impl Socket for TcpStream {
    const BUFFERED: bool = false;
}

impl Socket for tokio::net::UnixStream {
    const BUFFERED: bool = false;
}

impl<S: Socket> Socket for tokio_rustls::server::TlsStream<S> {
    const BUFFERED: bool = true;
}

/// A large session (TLS) lives on the heap, so that the futures that hold
/// the connection keep a pointer to it, not copies of it.
impl<S: Socket> Socket for Box<S> {
    const BUFFERED: bool = S::BUFFERED;
}

/// How a connection left this path.
#[derive(Debug)]
pub enum Next<S = TcpStream> {
    /// Serve the rest with hyper, replaying what was read.
    Hyper(Rewind<S>),
    /// Write this event stream until it ends ([`stream_events`]), then
    /// close; HTTP/1.0?
    Events(S, Box<Answer>, bool),
    /// Done: closed, timed out, or the client left.
    Closed,
}

/// Writes an event stream [`serve`] handed back, then closes. Awaited after
/// `serve` is done, so that the stream's writer takes the place the request
/// loop had, not room of its own beside it.
#[allow(clippy::manual_async_fn)] // see the block inside
pub fn stream_events<S: Socket>(
    mut stream: S,
    answer: Box<Answer>,
    http10: bool,
    limits: &Limits,
) -> impl Future<Output = ()> + Send + '_ {
    // A block, not an `async fn`: those keep their arguments twice, and a
    // TLS session is large.
    async move { events(&mut stream, *answer, http10, limits).await }
}

/// Serves requests on `stream` until it closes or a request needs hyper.
///
/// Every waiting long-poll keeps this future, so it holds little besides the
/// wait: reading and answering the other requests happens in a boxed future
/// that is freed once it is done.
#[allow(clippy::manual_async_fn)] // see the block inside
pub fn serve<'a, S: Socket>(
    mut stream: S,
    routes: &'a Routes,
    limits: &'a Limits,
    stop: &'a Closing,
    read_only: bool,
) -> impl Future<Output = Next<S>> + Send + 'a {
    // A block, not an `async fn`: those keep their arguments twice.
    async move {
        let mut buf = Vec::new();
        // The connection's one timer, for the wait between requests and a
        // long-poll's wait alike: moved to a later time it is not entered in
        // the runtime's timer wheel again.
        let mut timer = std::pin::pin!(tokio::time::sleep(limits.header_timeout));
        loop {
            // An idle connection holds no buffer and no boxed state: it gets them
            // once bytes arrive.
            let deadline = Instant::now() + limits.header_timeout;
            timer.as_mut().reset(deadline);
            if buf.is_empty() && !idle(&mut stream, &mut buf, timer.as_mut(), stop).await {
                return Next::Closed;
            }
            let step = Box::pin(next(
                &mut stream,
                &mut buf,
                routes,
                limits,
                deadline,
                read_only,
            ))
            .await;
            let (answer, close, http10) = match step {
                Step::Closed => return Next::Closed,
                Step::Hyper => {
                    return Next::Hyper(Rewind::new(buf, stream, limits.write_timeout));
                }
                Step::Answer(answer, close, http10) => (*answer, close, http10),
                Step::Stream(answer, _, http10) if matches!(answer.body, Body::Stream(_)) => {
                    return Next::Events(stream, answer, http10);
                }
                // Refused: an ordinary answer.
                Step::Stream(answer, close, http10) => (*answer, close, http10),
                Step::Wait(route, close, http10) => {
                    let poll = std::pin::pin!(routes.serve(*route, Bytes::new(), timer.as_mut()));
                    match wait(&mut stream, poll, &mut buf, limits).await {
                        Some(answer) => (answer, close, http10),
                        None => return Next::Closed,
                    }
                }
            };
            let close = close || stop.is_closed();
            let written = write(&mut stream, &answer, close, http10, limits.write_timeout);
            if written.await.is_err() {
                return Next::Closed;
            }
            if close {
                Box::pin(linger(stream)).await;
                return Next::Closed;
            }
        }
    }
}

/// What the next request on a connection comes to. Boxed parts: a waiting
/// long-poll keeps the step's room, so it is kept small.
#[derive(Debug)]
enum Step {
    /// A long-poll to wait for (asking the auth webhook first, where it
    /// decides, while the client is watched like any waiter); then close?
    /// HTTP/1.0?
    Wait(Box<Route>, bool, bool),
    /// An answer to write; then close? HTTP/1.0?
    Answer(Box<Answer>, bool, bool),
    /// An event stream to write until it ends, then close; or its refusal,
    /// then close? HTTP/1.0?
    Stream(Box<Answer>, bool, bool),
    /// Left to hyper; `buf` holds what was read.
    Hyper,
    /// The client left or was too slow.
    Closed,
}

/// Reads the next request and answers it, unless it is a long-poll (which the
/// caller waits for) or needs hyper.
async fn next<S: Socket>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    routes: &Routes,
    limits: &Limits,
    deadline: Instant,
    read_only: bool,
) -> Step {
    let Some(end) = read_head(stream, buf, limits, deadline).await else {
        return Step::Closed;
    };
    let Some((routed, length, mut close, http10)) = route(routes, buf, end, limits, read_only)
    else {
        return Step::Hyper;
    };
    let answer = match routed {
        Ok(route @ Route::Events(..)) => {
            // Nothing of the head is kept while the stream lasts; what was
            // pipelined after it is answered if the stream is refused (a
            // body, which no stream reads, closes the connection instead).
            close |= length > 0;
            buf.drain(..end);
            buf.shrink_to_fit();
            let answer = Box::pin(routes.serve(route, Bytes::new(), Fresh)).await;
            return Step::Stream(Box::new(answer), close, http10);
        }
        Ok(route @ Route::Subscribe(..)) => {
            // Free the head before waiting; keep only pipelined bytes, if any.
            buf.drain(..end);
            buf.shrink_to_fit();
            return Step::Wait(Box::new(route), close, http10);
        }
        routed => {
            // The body is read whole, and dropped where nothing takes it (a
            // refusal, GET or DELETE /publish). One larger than any route reads
            // is not read at all: the connection closes after the answer.
            let length = if length > routes.max_body() {
                close = true;
                0
            } else {
                length
            };
            match (routed, read_body(stream, buf, end, length, routes).await) {
                (Ok(route), Some(Ok(body))) => Box::pin(routes.serve(route, body, Fresh)).await,
                (Ok(_), None) => return Step::Closed,
                (Ok(_), Some(Err(err))) => {
                    close = true;
                    routes.refusal(&err)
                }
                (Err(err), body) => {
                    close |= !matches!(body, Some(Ok(_)));
                    routes.refusal(&err)
                }
            }
        }
    };
    Step::Answer(Box::new(answer), close, http10)
}

/// The head in `buf[..end]`, routed, with its body length and whether to close
/// after it and answer as HTTP/1.0; `None` when it is hyper's.
fn route(
    routes: &Routes,
    buf: &[u8],
    end: usize,
    limits: &Limits,
    read_only: bool,
) -> Option<(Result<Route, Error>, usize, bool, bool)> {
    if end > limits.max_head {
        return None;
    }
    let mut head = parse(&buf[..end])?;
    head.request.read_only = read_only;
    let length = head.request.content_length.unwrap_or(0) as usize;
    Some((routes.route(&head.request), length, head.close, head.http10))
}

/// Writes `answer` (a refusal made before any request was read, such as the
/// connection limit's) and closes.
pub async fn refuse<S: Socket>(mut stream: S, answer: Answer) {
    if write(&mut stream, &answer, true, false, Duration::from_secs(1))
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    }
}

/// Reads the `length` body bytes after the head that ends at `end`, then
/// removes head and body from `buf`. `None`: the client left.
async fn read_body<S: Socket>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    end: usize,
    length: usize,
    routes: &Routes,
) -> Option<Result<Bytes, Error>> {
    let deadline = Instant::now() + routes.body_timeout();
    let want = end + length;
    buf.reserve(want.saturating_sub(buf.len()));
    while buf.len() < want {
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Some(Err(Error::BodyTimeout)),
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return None,
        }
    }
    let body = Bytes::copy_from_slice(&buf[end..want]);
    buf.drain(..want);
    // A connection that published a large message does not keep its room.
    if buf.capacity() > BODY_ROOM_KEPT {
        buf.shrink_to(buf.len().max(1024));
    }
    Some(Ok(body))
}

/// Closes after an answer: the write side first, then reads what the client
/// still sends (an unread body, a request in flight) for a moment. Closing with
/// unread bytes would reset the connection, and the client could lose the answer.
async fn linger<S: Socket>(mut stream: S) {
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

/// Waits for the first bytes of a request and puts them in `buf`: `false` if
/// the client leaves or is silent until `timer` ends, or the server stops first.
async fn idle<S: Socket>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    timer: Pin<&mut tokio::time::Sleep>,
    stop: &Closing,
) -> bool {
    // Read by hand into a stack buffer: a new socket is reported readable
    // before any byte has come, and a buffer on the heap would then be held by
    // every idle connection.
    let arrived = std::future::poll_fn(|cx| {
        let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; 2048];
        let mut read = ReadBuf::uninit(&mut chunk);
        std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok::<_, io::Error>(read.filled().len()))
    });
    tokio::select! {
        biased;
        read = arrived => matches!(read, Ok(n) if n > 0),
        () = timer => false,
        _ = stop.wait() => false,
    }
}

/// Reads until `buf` holds a whole head, by `deadline`; returns its length.
/// `None`: the client left or was too slow.
async fn read_head<S: Socket>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &Limits,
    deadline: Instant,
) -> Option<usize> {
    let read = async {
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
            match stream.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
        }
    };
    tokio::time::timeout_at(deadline, read).await.ok().flatten()
}

/// Where the head at the start of `buf` can end: after its first empty line
/// (LF, then LF or CRLF), the only place httparse ends one. Whether it is a
/// head at all, and one this path answers, is [`parse`]'s to say, so a head
/// is tokenized once.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

/// A request head this path answers.
#[derive(Debug)]
struct Head<'a> {
    request: Request<'a>,
    close: bool,
    http10: bool,
}

/// What the lean path makes of the request heads at the start of `bytes`, as
/// it would serve them one after another on a connection: each one's method,
/// target, body length and the headers the routes read. It stops at the first
/// head it leaves to hyper, one that is incomplete, a body that is not all
/// there, or a request after which it closes. The parser-agreement fuzz target
/// checks that hyper reads the same bytes the same way.
pub fn readings(mut bytes: &[u8], max_head: usize) -> Vec<Reading> {
    let mut out = Vec::new();
    while let Some(end) = head_end(bytes) {
        let Some(head) = parse(&bytes[..end]).filter(|_| end <= max_head) else {
            break;
        };
        let length = head.request.content_length.unwrap_or(0) as usize;
        if bytes.len() < end + length {
            break;
        }
        let r = &head.request;
        let owned = |v: Option<&[u8]>| v.map(<[u8]>::to_vec);
        out.push(Reading {
            method: r.method.clone(),
            target: match r.query {
                Some(q) => format!("{}?{q}", r.path),
                None => r.path.to_owned(),
            },
            content_length: r.content_length,
            last_event_id: owned(r.last_event_id),
            content_type: owned(r.content_type),
            authorization: owned(r.authorization),
            body: bytes[end..end + length].to_vec(),
        });
        if head.close {
            break;
        }
        bytes = &bytes[end + length..];
    }
    out
}

/// One request as [`readings`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub target: String,
    /// The declared body length.
    pub content_length: Option<u64>,
    /// The first `Last-Event-ID`.
    pub last_event_id: Option<Vec<u8>>,
    /// The first `Content-Type`.
    pub content_type: Option<Vec<u8>>,
    /// The first `Authorization`.
    pub authorization: Option<Vec<u8>>,
    /// The body.
    pub body: Vec<u8>,
}

/// Bytes of a target's path and query that `http::Uri` (and so hyper)
/// takes as they are: everything visible but `#` (a fragment, which it
/// would cut off), `<`, `>`, and `` ` `` in the path or `"` in the query;
/// bytes above 0x7F are UTF-8, which a `&str` already is.
const fn target_bytes(query: bool) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'#' | b'<' | b'>' => false,
            b'`' => query,
            b'"' => !query,
            0x21..=0x7e | 0x80..=0xff => true,
            _ => false,
        };
        b += 1;
    }
    table
}
const PATH_BYTES: [bool; 256] = target_bytes(false);
const QUERY_BYTES: [bool; 256] = target_bytes(true);
/// Longest target `http::Uri` takes.
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Whether hyper would read the request's target (which starts with `/`) as
/// exactly its path and query: the check `http::Uri` makes, without building
/// one, on the split the request already made.
fn plain_target(request: &Request<'_>) -> bool {
    let query = request.query.unwrap_or_default();
    let len = request.path.len() + request.query.map_or(0, |q| q.len() + 1);
    len <= MAX_TARGET
        && request.path.bytes().all(|b| PATH_BYTES[b as usize])
        && query.bytes().all(|b| QUERY_BYTES[b as usize])
}

/// Reads a complete request head with plain framing, tokenized by httparse as
/// hyper does; `None` for anything this path leaves to hyper: a head httparse
/// does not end exactly there, other methods and versions, chunked bodies,
/// `Expect`, `Upgrade`, duplicate or unusual lengths, targets that are not a
/// path.
fn parse(head: &[u8]) -> Option<Head<'_>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    if parsed.parse(head) != Ok(httparse::Status::Complete(head.len())) {
        return None;
    }
    let method = match parsed.method? {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "DELETE" => Method::DELETE,
        "OPTIONS" => Method::OPTIONS,
        _ => return None,
    };
    let target = parsed.path?;
    if !target.starts_with('/') {
        return None;
    }
    let http10 = match parsed.version? {
        1 => false,
        0 => true,
        _ => return None,
    };
    let mut request = Request::new(method, target);
    if !plain_target(&request) {
        return None;
    }
    let publish = request.path == "/publish";
    // As hyper decides it: HTTP/1.0 closes unless asked to keep alive, and
    // once any `Connection` line says close, nothing undoes it.
    let mut close = http10;
    let mut asked_close = false;
    for header in parsed.headers.iter() {
        let (name, value) = (header.name, header.value);
        // hyper would refuse a name the `http` crate cannot hold.
        http::HeaderName::from_bytes(name.as_bytes()).ok()?;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let tokens = || {
            value
                .split(|&b| b == b',')
                .map(|t| t.trim_ascii())
                .filter(|t| !t.is_empty())
        };
        if is("connection") {
            for token in tokens() {
                if token.eq_ignore_ascii_case(b"close") {
                    asked_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 && !asked_close {
                    close = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        } else if is("content-length") {
            let digits =
                !value.is_empty() && value.len() <= 12 && value.iter().all(u8::is_ascii_digit);
            if request.content_length.is_some() || !digits || (!publish && value != b"0") {
                return None;
            }
            request.content_length = std::str::from_utf8(value).ok()?.parse().ok();
        } else if is("transfer-encoding") || is("expect") || is("upgrade") {
            return None;
        } else {
            request.header(name, value);
        }
    }
    Some(Head {
        request,
        close: close || asked_close,
        http10,
    })
}

/// Waits for the long-poll while watching the socket: a client that hangs up is
/// forgotten at once; bytes it pipelines are kept in `pending`.
fn wait<'a, S: Socket>(
    stream: &'a mut S,
    mut poll: Pin<&'a mut impl Future<Output = Answer>>,
    pending: &'a mut Vec<u8>,
    limits: &'a Limits,
) -> impl Future<Output = Option<Answer>> + 'a {
    // Polled by hand: a `readable()` future would add its size to every
    // waiting subscriber's task.
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(answer) = poll.as_mut().poll(cx) {
            return Poll::Ready(Some(answer));
        }
        loop {
            let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; 512];
            let mut read = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(()))
                    if !read.filled().is_empty()
                        && pending.len() + read.filled().len() <= limits.max_head =>
                {
                    pending.extend_from_slice(read.filled());
                }
                // The client hung up, or sent more than a head while waiting.
                Poll::Ready(_) => return Poll::Ready(None),
            }
        }
    })
}

/// Writes an answer: its head, then its body's buffers as they are, never
/// copied. A client that takes nothing for `write_timeout` is given up on.
/// Usually the socket takes it all at once; only an answer it does not gets
/// the waiting writer, on the heap, so that a connection's own state stays
/// small.
async fn write<S: Socket>(
    stream: &mut S,
    answer: &Answer,
    close: bool,
    http10: bool,
    write_timeout: Duration,
) -> io::Result<()> {
    match write_at_once(stream, answer, close, http10)? {
        None => Ok(()),
        Some(rest) => Box::pin(write_rest(stream, answer, rest, write_timeout)).await,
    }
}

/// What [`write_at_once`] left of an answer: the rest of its head (copied),
/// and how much of its body went.
#[derive(Debug)]
struct Unwritten {
    head: Vec<u8>,
    body_written: usize,
}

/// Writes what the connection takes of an answer now, without waiting: one
/// vectored write, with the head serialized in a scratch buffer of this
/// thread and nothing allocated. Usually that is all of it (`None`); else
/// what is left, for [`write_rest`].
fn write_at_once<S: Socket>(
    stream: &mut S,
    answer: &Answer,
    close: bool,
    http10: bool,
) -> io::Result<Option<Unwritten>> {
    let parts = answer.body_parts();
    SCRATCH.with(|scratch| {
        let mut head = scratch.borrow_mut();
        head.clear();
        write_head(&mut head, answer, close, http10, false);
        let mut slices = [IoSlice::new(&[]); SLICES];
        slices[0] = IoSlice::new(&head);
        for (slot, part) in slices[1..].iter_mut().zip(parts) {
            *slot = IoSlice::new(part);
        }
        let slices = &slices[..=parts.len().min(SLICES - 1)];
        let (written, flushed) = write_now(stream, slices)?;
        let total = head.len() + parts.iter().map(Bytes::len).sum::<usize>();
        if written == total && flushed {
            return Ok(None);
        }
        Ok(Some(Unwritten {
            head: head[written.min(head.len())..].to_vec(),
            body_written: written.saturating_sub(head.len()),
        }))
    })
}

/// Writes the rest of an answer as the client reads it, from the same shared
/// buffers, and flushes it.
async fn write_rest<S: Socket>(
    stream: &mut S,
    answer: &Answer,
    rest: Unwritten,
    write_timeout: Duration,
) -> io::Result<()> {
    write_all::<_, _, 1>(stream, &[rest.head], 0, write_timeout).await?;
    write_all::<_, _, SLICES>(
        stream,
        answer.body_parts(),
        rest.body_written,
        write_timeout,
    )
    .await?;
    flush(stream, write_timeout).await
}

/// Sends what the connection holds of what was written (a TLS session's
/// last records; nothing on a socket), unless the client takes nothing for
/// `write_timeout`.
async fn flush<S: Socket>(stream: &mut S, write_timeout: Duration) -> io::Result<()> {
    if !S::BUFFERED {
        return Ok(());
    }
    unless_stalled(write_timeout, |cx| Pin::new(&mut *stream).poll_flush(cx)).await
}

/// Polls `op` until it is done, or fails once it has waited `limit`.
async fn unless_stalled<T>(
    limit: Duration,
    mut op: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>>,
) -> io::Result<T> {
    let mut stall = Stall::new(limit);
    std::future::poll_fn(|cx| {
        let polled = op(cx);
        stall.check(cx, polled)
    })
    .await
}

/// How long a write may wait for the client to take a byte. The timer is
/// made only once a write has to wait, and on the heap: a writer's state (an
/// event stream's, kept while it lasts) does not hold one.
#[derive(Debug)]
struct Stall {
    limit: Duration,
    /// Set while a write is blocked: when it gives up.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stall {
    fn new(limit: Duration) -> Stall {
        Stall { limit, timer: None }
    }

    /// Passes on a write's outcome: progress clears the timer; no progress
    /// starts it, or fails once it has run out.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Writes an event stream: its head, then each frame as it comes (chunked on
/// HTTP/1.1, until the close on HTTP/1.0), until the stream ends, the client
/// leaves, falls a whole broadcast buffer behind, or takes no byte for the
/// write timeout. The connection keeps no buffer of its own meanwhile.
fn events<'a, S: Socket>(
    stream: &'a mut S,
    answer: Answer,
    http10: bool,
    limits: &'a Limits,
) -> impl Future<Output = ()> + Send + 'a {
    let chunked = !http10;
    let mut head = Vec::with_capacity(256);
    write_head(&mut head, &answer, true, http10, chunked);
    // The rest of the answer (its headers) is not kept while the stream lasts;
    // and a block, not an `async fn`, which would keep it.
    let frames = match answer.into_body() {
        Body::Stream(frames) => Some(frames),
        _ => None,
    };
    async move {
        let Some(mut frames) = frames else {
            return;
        };
        let wrote = write_all::<_, _, 1>(stream, &[&head], 0, limits.write_timeout).await;
        if wrote.is_err() || flush(stream, limits.write_timeout).await.is_err() {
            return;
        }
        drop(head);
        loop {
            let frame = tokio::select! {
                frame = frames.next() => frame,
                () = gone(stream) => return,
            };
            let Some(frame) = frame else { break };
            let mut size = [0u8; 18];
            let parts: [&[u8]; 3] = match chunked {
                true => [chunk_size(&mut size, frame.len()), &frame, b"\r\n"],
                false => [&frame, b"", b""],
            };
            // Usually the socket takes the frame at once; only a frame it
            // does not take gets the waiting writer, on the heap, so that
            // the stream's own state stays as small as an idle one needs.
            let Ok((wrote, flushed)) = write_now(stream, &parts.map(IoSlice::new)) else {
                return;
            };
            if wrote == parts.iter().map(|p| p.len()).sum::<usize>() && flushed {
                continue;
            }
            let rest = Box::pin(async {
                write_all::<_, _, 3>(stream, &parts, wrote, limits.write_timeout).await?;
                flush(stream, limits.write_timeout).await
            });
            let written = tokio::select! {
                written = rest => written.is_ok(),
                () = frames.lagging() => false,
            };
            if !written {
                return;
            }
        }
        if chunked {
            let _ = write_all::<_, _, 1>(stream, &[b"0\r\n\r\n"], 0, limits.write_timeout).await;
            let _ = flush(stream, limits.write_timeout).await;
        }
        let _ = tokio::time::timeout(limits.write_timeout, stream.shutdown()).await;
    }
}

/// Writes what `stream` takes of `slices` without waiting, and flushes it if
/// it can: how many bytes it took, and whether they are all sent on.
fn write_now<S: Socket>(stream: &mut S, slices: &[IoSlice<'_>]) -> io::Result<(usize, bool)> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let wrote = match Pin::new(&mut *stream).poll_write_vectored(&mut cx, slices) {
        Poll::Ready(wrote) => wrote?,
        Poll::Pending => return Ok((0, false)),
    };
    if !S::BUFFERED {
        return Ok((wrote, true));
    }
    let flushed = match Pin::new(&mut *stream).poll_flush(&mut cx) {
        Poll::Ready(flushed) => flushed.map(|()| true)?,
        Poll::Pending => false,
    };
    Ok((wrote, flushed))
}

/// A chunk's size line (`HEX\r\n`) in `out`.
fn chunk_size(out: &mut [u8; 18], len: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 16;
    let mut n = len;
    loop {
        at -= 1;
        out[at] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out[16] = b'\r';
    out[17] = b'\n';
    &out[at..]
}

/// Resolves when the client of an event stream hangs up (end of stream or
/// an error); what it sends meanwhile is read and dropped.
async fn gone<S: Socket>(stream: &mut S) {
    std::future::poll_fn(|cx| {
        loop {
            let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; 64];
            let mut read = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(()),
            }
        }
    })
    .await
}

/// Writes `parts` but their first `written` bytes, at most `N` buffers a
/// vectored write, as they are, never copied; fails once the client takes
/// nothing for `write_timeout`.
async fn write_all<S: Socket, B: AsRef<[u8]>, const N: usize>(
    stream: &mut S,
    parts: &[B],
    mut written: usize,
    write_timeout: Duration,
) -> io::Result<()> {
    // Where the bytes go on: a part and an offset in it. The buffers of a
    // write are gathered as it is tried, so that a waiting write keeps none.
    let (mut part, mut offset) = (0, 0);
    loop {
        while part < parts.len() && written >= parts[part].as_ref().len() - offset {
            written -= parts[part].as_ref().len() - offset;
            (part, offset) = (part + 1, 0);
        }
        offset += written;
        if part == parts.len() {
            return Ok(());
        }
        let wrote = unless_stalled(write_timeout, |cx| {
            let mut slices = [IoSlice::new(&[]); N];
            let mut n = 0;
            for (i, p) in parts[part..].iter().take(N).enumerate() {
                let p = p.as_ref();
                slices[n] = IoSlice::new(if i == 0 { &p[offset..] } else { p });
                n += 1;
            }
            Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n])
        });
        written = match wrote.await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => n,
        };
    }
}

/// Buffers one vectored write takes at most.
const SLICES: usize = 64;

/// An answer's head: status line, its headers, length (or chunked), date,
/// connection. A fan-out answers its waiters one after another with the same
/// head, so the last head made on this thread is kept and copied whole when
/// the next answer's head is the same.
fn write_head(head: &mut Vec<u8>, answer: &Answer, close: bool, http10: bool, chunked: bool) {
    let shape = Shape {
        status: answer.status,
        close,
        http10,
        chunked,
        length: match &answer.body {
            Body::Stream(_) => None,
            body => body.len(),
        },
        second: super::date_second(),
    };
    LAST_HEAD.with(|last| {
        let mut last = last.borrow_mut();
        if !last.is_for(&shape, &answer.headers) {
            last.make(shape, answer);
        }
        head.extend_from_slice(&last.head);
    });
}

/// What a head depends on besides its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    status: http::StatusCode,
    close: bool,
    http10: bool,
    chunked: bool,
    /// The body's length, unless it is a stream.
    length: Option<usize>,
    /// The `date:` second.
    second: u64,
}

/// The last head made on this thread, with what it was made of. Holding the
/// header values keeps their memory, so a value at the same address with the
/// same length is the same value.
#[derive(Debug)]
struct LastHead {
    shape: Option<Shape>,
    headers: Vec<(http::HeaderName, Bytes)>,
    date: String,
    head: Vec<u8>,
}

impl LastHead {
    fn is_for(&self, shape: &Shape, headers: &[(http::HeaderName, Bytes)]) -> bool {
        self.shape.as_ref() == Some(shape) && same_headers(&self.headers, headers)
    }

    fn make(&mut self, shape: Shape, answer: &Answer) {
        if self.shape.is_none_or(|s| s.second != shape.second) {
            self.date = format!("date: {}\r\n", super::http_date(shape.second));
        }
        let head = &mut self.head;
        head.clear();
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(answer.status.as_str().as_bytes());
        head.push(b' ');
        let reason = answer.status.canonical_reason().unwrap_or_default();
        head.extend_from_slice(reason.as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in &answer.headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        if shape.chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if let Some(length) = shape.length.filter(|_| answer.has_body()) {
            head.extend_from_slice(b"content-length: ");
            crate::protocol::push_decimal(head, length as u64);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(self.date.as_bytes());
        if shape.close {
            head.extend_from_slice(b"connection: close\r\n");
        } else if shape.http10 {
            head.extend_from_slice(b"connection: keep-alive\r\n");
        }
        head.extend_from_slice(b"\r\n");
        self.headers.clone_from(&answer.headers);
        self.shape = Some(shape);
    }
}

thread_local! {
    static LAST_HEAD: RefCell<LastHead> = const {
        RefCell::new(LastHead { shape: None, headers: Vec::new(), date: String::new(), head: Vec::new() })
    };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A connection handed to hyper: the bytes already read, then the socket. Its
/// writes fail once the client has taken nothing for the write timeout, which
/// hyper has no setting for, so a reader that stopped reading (an event stream
/// left open, a batch never read) lets go of its connection.
#[derive(Debug)]
pub struct Rewind<S = TcpStream> {
    read: Bytes,
    inner: S,
    stall: Stall,
}

impl<S> Rewind<S> {
    fn new(read: Vec<u8>, inner: S, write_timeout: Duration) -> Rewind<S> {
        Rewind {
            read: read.into(),
            inner,
            stall: Stall::new(write_timeout),
        }
    }

    /// `inner` with nothing read yet, under the same write timeout (a TLS
    /// connection, which hyper serves from the start).
    pub fn wrap(inner: S, write_timeout: Duration) -> Rewind<S> {
        Rewind::new(Vec::new(), inner, write_timeout)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
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
        if self.read.is_empty() {
            // Replayed: let the lean path's read buffer go.
            self.read = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stall.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stall.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.stall.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    /// What hyper decides: `http::Uri` parses the target to this very path
    /// and query.
    fn uri_takes(target: &str) -> bool {
        target
            .parse::<http::Uri>()
            .is_ok_and(|uri| uri.path_and_query().map(|pq| pq.as_str()) == Some(target))
    }

    /// What the lean path decides.
    fn takes(target: &str) -> bool {
        plain_target(&Request::new(Method::GET, target))
    }

    #[test]
    fn targets_are_taken_exactly_when_http_uri_takes_them() {
        let mut chars: Vec<char> = (0u8..0x80).map(char::from).collect();
        chars.extend(['é', '€', '😀']);
        for c in chars {
            for target in [
                format!("/a{c}b"),
                format!("/a?x={c}"),
                format!("/a?{c}"),
                format!("/{c}?q"),
            ] {
                assert_eq!(takes(&target), uri_takes(&target), "{target:?}");
            }
        }
        for target in ["/", "/?", "/a??b", "/a?b#c", "/a#b?c", "/%zz?%41"] {
            assert_eq!(takes(target), uri_takes(target), "{target:?}");
        }
        let long = format!("/?t={}", "a".repeat(MAX_TARGET));
        assert!(!takes(&long) && !uri_takes(&long));
    }

    #[test]
    fn plain_heads_are_taken_and_the_rest_left_to_hyper() {
        let head = parse(b"GET /subscribe?channel=a&since=x-1 HTTP/1.1\r\nHost: h\r\nLast-Event-ID: x-2\r\nLast-Event-ID: x-3\r\n\r\n").unwrap();
        assert_eq!(head.request.path, "/subscribe");
        assert_eq!(head.request.query, Some("channel=a&since=x-1"));
        assert_eq!(head.request.last_event_id, Some(&b"x-2"[..]));
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
        // What hyper's parser takes, this path takes too: bare LF line ends,
        // and bytes past ASCII in a value.
        assert!(parse(b"GET /subscribe HTTP/1.1\nHost: x\n\n").is_some());
        assert!(parse(b"GET /subscribe HTTP/1.1\r\nX: \xff\r\n\r\n").is_some());
        // A close is not undone by a later keep-alive.
        let head =
            b"GET /subscribe HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n";
        assert!(parse(head).unwrap().close);
        let publish = parse(b"POST /publish HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(publish.request.content_length, Some(12));
        for other in [
            &b"PUT /subscribe HTTP/1.1\r\n\r\n"[..],
            b"HEAD /stats HTTP/1.1\r\n\r\n",
            b"POST /publish HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST /publish HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /subscribe HTTP/2.0\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /publish HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\n folded\r\n\r\n",
            b"GET /subscribe HTTP/1.1\r\nbad name: v\r\n\r\n",
            b"GET  /subscribe HTTP/1.1\r\n\r\n",
            b"GET http://h/subscribe HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn heads_carry_status_headers_length_date_and_connection() {
        let answer = Answer::full(
            StatusCode::OK,
            Bytes::from_static(b"text/plain"),
            vec![Bytes::from_static(b"hel"), Bytes::from_static(b"lo")],
        );
        let mut head = Vec::new();
        write_head(&mut head, &answer, true, false, false);
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\ndate: "
        ));
        assert!(text.ends_with("\r\nconnection: close\r\n\r\n"));
        let empty = Answer::status(StatusCode::NO_CONTENT);
        let mut head = Vec::new();
        write_head(&mut head, &empty, false, true, false);
        let text = String::from_utf8(head).unwrap();
        assert!(!text.contains("content-length"));
        assert!(text.ends_with("connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn a_head_made_again_is_the_same_and_any_difference_shows() {
        let head_of = |id: &[u8], body: &'static [u8], close: bool| {
            let answer = Answer::full(
                StatusCode::OK,
                Bytes::from_static(b"text/plain"),
                Bytes::from_static(body),
            )
            .with(crate::answer::X_MESSAGE_ID, Bytes::copy_from_slice(id));
            let mut head = Vec::new();
            write_head(&mut head, &answer, close, false, false);
            String::from_utf8(head).unwrap()
        };
        let first = head_of(b"abc-1", b"hi", false);
        assert!(first.contains("x-message-id: abc-1\r\n"), "{first}");
        // The same answer again (its id in a buffer of its own): the same
        // head, unless the second changed in between.
        let again = head_of(b"abc-1", b"hi", false);
        let date = |h: &str| {
            h.lines()
                .find(|l| l.starts_with("date: "))
                .map(str::to_owned)
        };
        if date(&first) == date(&again) {
            assert_eq!(first, again);
        }
        // An id of the same length, another length, a closing connection:
        // each is in its head.
        let other = head_of(b"abc-2", b"hi", false);
        assert!(other.contains("x-message-id: abc-2\r\n"), "{other}");
        let longer = head_of(b"abc-2", b"hello", false);
        assert!(longer.contains("content-length: 5\r\n"), "{longer}");
        let closing = head_of(b"abc-2", b"hello", true);
        assert!(closing.ends_with("connection: close\r\n\r\n"), "{closing}");
        let kept = head_of(b"abc-2", b"hello", false);
        assert!(!kept.contains("connection: close"), "{kept}");
    }
}
