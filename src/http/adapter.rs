//! The hyper adapter: serves a connection with hyper once the lean path hands it
//! over (or from the start, for TLS), over HTTP/1.1 or HTTP/2, turning hyper's
//! requests into the routes' [`Request`] and their [`Answer`]s into hyper's
//! responses. On HTTP/2 each request is a stream; one that the client cancels
//! drops its handler, and with it its place in the hub, at once.
//!
//! The limits the lean path keeps hold here too, where hyper has none of its
//! own: a connection that sends no request within the header timeout (after
//! the TLS handshake, or a partial HTTP/2 preface) is closed; one with no
//! request open for as long is closed (HTTP/2 with a GOAWAY); and an HTTP/2
//! stream that takes no byte of its answer for the write timeout (its
//! flow-control window held at 0) is reset, and what it held freed
//! ([`StreamExecutor`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::HeaderMap;
use hyper::Response;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::debug;

use super::Closing;
use super::lean::Rewind;
use crate::answer::{Answer, Body, same_headers};
use crate::error::Error;
use crate::routes::{Request, Route, Routes};

/// How hyper serves a connection: HTTP/1.1, or HTTP/2 when it opens with the
/// HTTP/2 preface (after ALPN `h2` on TLS, or with prior knowledge in the
/// clear).
pub type Builder = auto::Builder<StreamExecutor>;

/// What serving a connection with hyper needs.
#[derive(Debug)]
pub struct Serving<'a> {
    /// The routes.
    pub routes: Arc<Routes>,
    /// hyper's settings.
    pub builder: &'a Builder,
    /// Says when the server shuts down.
    pub closing: Arc<Closing>,
    /// How long a connection may go without a request open (the first one
    /// included) before it is closed: the header timeout.
    pub idle: Duration,
    /// Came on a listener that takes no publishes.
    pub read_only: bool,
}

/// Serves the rest of a connection with hyper.
pub fn serve<'a, S>(io: Rewind<S>, serving: Serving<'a>) -> impl Future<Output = ()> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Serving {
        routes,
        builder,
        closing,
        idle,
        read_only,
    } = serving;
    let activity = Arc::new(Activity::default());
    let conn = builder.serve_connection(
        TokioIo::new(io),
        service_fn({
            let activity = activity.clone();
            move |req| handle(routes.clone(), req, read_only, Open::new(&activity))
        }),
    );
    // The connection is made here, and the block below takes it: an `async
    // fn` would keep the socket twice, its argument and the connection's.
    async move {
        tokio::pin!(conn);
        let closed = closing.wait();
        tokio::pin!(closed);
        let mut idle_since = Some(Instant::now());
        let mut shutting = false;
        loop {
            let changed = activity.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if activity.open.load(Relaxed) > 0 {
                idle_since = None;
            } else if idle_since.is_none() {
                idle_since = Some(Instant::now());
            }
            let idle_until = idle_since.map(|since| since + idle);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        debug!(cause = %err, "connection ended with an error");
                    }
                    return;
                }
                _ = &mut changed => {}
                _ = &mut closed, if !shutting => {
                    shutting = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep_until(idle_until.unwrap_or_else(Instant::now)), if idle_until.is_some() => {
                    if activity.requests.load(Relaxed) == 0 || shutting {
                        debug!("no request within the header timeout: closed");
                        return;
                    }
                    // Idle: HTTP/2 says GOAWAY, HTTP/1.1 closes; a peer that
                    // does not let that finish is dropped a timeout later.
                    shutting = true;
                    conn.as_mut().graceful_shutdown();
                    idle_since = Some(Instant::now());
                }
            }
        }
    }
}

/// What a connection has open, for its idle timer.
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose answer is not over.
    open: AtomicUsize,
    /// Requests ever received.
    requests: AtomicUsize,
    /// Told whenever `open` changes.
    changed: Notify,
}

/// A request open on its connection until its answer's body is dropped.
#[derive(Debug)]
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: &Arc<Activity>) -> Open {
        activity.open.fetch_add(1, Relaxed);
        activity.requests.fetch_add(1, Relaxed);
        activity.changed.notify_one();
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.changed.notify_one();
    }
}

/// Runs hyper's HTTP/2 streams, each under a watchdog: a stream whose
/// answer has had bytes waiting, untaken, for the write timeout (the peer
/// keeps its flow-control window shut while answering PINGs, so the socket
/// stays writable) is dropped, which resets it, and its queue is freed.
#[derive(Debug, Clone)]
pub struct StreamExecutor {
    write_timeout: Duration,
    resets: Arc<AtomicU64>,
}

impl StreamExecutor {
    /// Streams that take no byte for `write_timeout` are reset, and counted
    /// in `resets`.
    pub fn new(write_timeout: Duration, resets: Arc<AtomicU64>) -> StreamExecutor {
        StreamExecutor {
            write_timeout,
            resets,
        }
    }
}

tokio::task_local! {
    /// The progress of the stream whose task this is, for its answer's body.
    static PROGRESS: Arc<Progress>;
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        let progress = Arc::new(Progress::default());
        let watched = Watched {
            stream,
            progress: progress.clone(),
            timer: None,
            limit: self.write_timeout,
            resets: self.resets.clone(),
        };
        tokio::spawn(PROGRESS.scope(progress, watched));
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 stream's task: the stream, and its watchdog. Written out
    /// rather than as a `select!` in a block, which would keep the stream
    /// twice.
    struct Watched<F> {
        #[pin]
        stream: F,
        progress: Arc<Progress>,
        // Made the first time a frame waits: a stream that never answers (a
        // waiting long-poll) has no timer.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        limit: Duration,
        resets: Arc<AtomicU64>,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.stream.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // A frame can only start waiting while the stream is polled, here:
        // with none waiting, nothing is to be timed.
        let Some(since) = this.progress.waiting_since() else {
            return Poll::Pending;
        };
        let deadline = since + *this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        debug!("HTTP/2 stream took no byte for the write timeout: reset");
        this.resets.fetch_add(1, Relaxed);
        Poll::Ready(())
    }
}

/// Since when an answer's body has had a frame out that hyper has not come
/// back for (it asks for the next frame once it has sent the last one).
#[derive(Debug, Default)]
struct Progress {
    /// Milliseconds since [`epoch`], plus one; 0 while nothing waits.
    waiting: AtomicU64,
}

/// The instant [`Progress`] counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Progress {
    fn waiting_since(&self) -> Option<Instant> {
        match self.waiting.load(Relaxed) {
            0 => None,
            ms => Some(epoch() + Duration::from_millis(ms - 1)),
        }
    }

    /// A frame went out: waiting for hyper to take the next from now.
    fn sent(&self) {
        let ms = Instant::now()
            .saturating_duration_since(epoch())
            .as_millis();
        self.waiting
            .store(u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1, Relaxed);
    }

    /// Hyper came back for more and there is none: nothing waits.
    fn drained(&self) {
        self.waiting.store(0, Relaxed);
    }
}

/// One request through the routes, to hyper's response. What reads the
/// request (its head, its body) is on the heap and freed before the answer
/// is awaited, so that a waiting stream keeps only what its handler needs;
/// this future is hyper's service future itself, which a wrapper would keep
/// twice.
fn handle(
    routes: Arc<Routes>,
    req: hyper::Request<Incoming>,
    read_only: bool,
    open: Open,
) -> impl Future<Output = Result<Response<AnswerBody>, Infallible>> + Send {
    let read = Box::pin(read(routes.clone(), req, read_only));
    async move {
        let (route, body) = match read.await {
            Ok(read) => read,
            Err(refusal) => return Ok(response(refusal, open)),
        };
        let answer = Box::pin(routes.serve(route, body, crate::routes::Fresh)).await;
        Ok(response(answer, open))
    }
}

/// A request's route and body, or the answer that refuses it.
async fn read(
    routes: Arc<Routes>,
    req: hyper::Request<Incoming>,
    read_only: bool,
) -> Result<(Route, Bytes), Answer> {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |pq| pq.as_str());
    let mut request = Request::new(req.method().clone(), target);
    request.read_only = read_only;
    for (name, value) in req.headers() {
        request.header(name.as_str(), value.as_bytes());
    }
    request.content_length = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let route = routes.route(&request).map_err(|err| routes.refusal(&err))?;
    drop(request);
    let body = match &route {
        Route::Publish(publish) if publish.has_body => {
            let limited = Limited::new(req.into_body(), publish.body_limit);
            match tokio::time::timeout(routes.body_timeout(), limited.collect()).await {
                Err(_) => Err(Error::BodyTimeout),
                // Its own allocation: a slice of hyper's read buffer would
                // keep the whole buffer alive for as long as the message.
                Ok(Ok(collected)) => Ok(Bytes::copy_from_slice(&collected.to_bytes())),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    Err(publish.too_large())
                }
                Ok(Err(_)) => Err(Error::BodyRead),
            }
        }
        _ => Ok(Bytes::new()),
    };
    body.map(|body| (route, body))
        .map_err(|err| routes.refusal(&err))
}

/// An answer as hyper's response; the request stays `open` as long as its
/// body.
fn response(answer: Answer, open: Open) -> Response<AnswerBody> {
    let frames = match answer.body {
        Body::Empty => Frames::Parts(VecDeque::new()),
        Body::Full(b) => Frames::Parts(VecDeque::from([b])),
        Body::Parts(parts) => Frames::Parts(parts.into()),
        Body::Stream(events) => Frames::Stream(events.into_queue()),
    };
    let body = AnswerBody {
        frames,
        progress: PROGRESS.try_with(Arc::clone).ok(),
        _open: open,
    };
    // The length as hyper would send it: none for a body that ends with the
    // head (empty) or whose length is not known (a stream).
    let length = (!body.is_end_stream())
        .then(|| body.size_hint().exact())
        .flatten();
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    *response.headers_mut() = header_map(answer.headers, length);
    response
}

/// An answer's headers as hyper's map, with the `content-length` and `date`
/// hyper would add, so that it adds nothing. A fan-out answers its streams
/// one after another with the same headers, so the last map made on this
/// thread is kept and cloned when the next answer's is the same.
fn header_map(headers: Vec<(HeaderName, Bytes)>, length: Option<u64>) -> HeaderMap {
    let second = super::date_second();
    LAST_MAP.with(|last| {
        let mut last = last.borrow_mut();
        if last.made.is_none_or(|made| made != (length, second))
            || !same_headers(&last.headers, &headers)
        {
            let mut map = HeaderMap::with_capacity(headers.len() + 2);
            for (name, value) in &headers {
                if let Ok(value) = HeaderValue::from_maybe_shared(value.clone()) {
                    map.append(name.clone(), value);
                }
            }
            if let Some(length) = length {
                map.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            if let Ok(date) = HeaderValue::try_from(super::http_date(second)) {
                map.insert(header::DATE, date);
            }
            *last = LastMap {
                made: Some((length, second)),
                headers,
                map,
            };
        }
        last.map.clone()
    })
}

/// The last header map made on this thread, with what it was made of: the
/// body's length, the `date:` second and the answer's headers (holding them
/// keeps their memory, so [`same_headers`] may compare addresses).
#[derive(Debug)]
struct LastMap {
    made: Option<(Option<u64>, u64)>,
    headers: Vec<(HeaderName, Bytes)>,
    map: HeaderMap,
}

thread_local! {
    static LAST_MAP: RefCell<LastMap> = RefCell::new(LastMap {
        made: None,
        headers: Vec::new(),
        map: HeaderMap::new(),
    });
}

/// A response body: an answer's buffers, or an event stream's frames; on
/// HTTP/2 it tells its stream's watchdog how hyper takes them.
#[derive(Debug)]
pub struct AnswerBody {
    frames: Frames,
    progress: Option<Arc<Progress>>,
    _open: Open,
}

/// What an answer's body holds.
#[derive(Debug)]
enum Frames {
    /// Known buffers.
    Parts(VecDeque<Bytes>),
    /// Frames until the sender goes away.
    Stream(mpsc::Receiver<Bytes>),
}

impl HttpBody for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let polled = match &mut this.frames {
            Frames::Parts(parts) => Poll::Ready(parts.pop_front()),
            Frames::Stream(rx) => rx.poll_recv(cx),
        };
        if let Some(progress) = &this.progress {
            match &polled {
                Poll::Ready(Some(_)) => progress.sent(),
                _ => progress.drained(),
            }
        }
        polled.map(|f| f.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.frames, Frames::Parts(parts) if parts.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.frames {
            Frames::Parts(parts) => {
                SizeHint::with_exact(parts.iter().map(|b| b.len() as u64).sum())
            }
            Frames::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::X_MESSAGE_ID;
    use hyper::StatusCode;

    fn headers_of(answer: Answer) -> HeaderMap {
        let activity = Arc::new(Activity::default());
        response(answer, Open::new(&activity)).headers().clone()
    }

    fn message(id: &[u8], body: &'static [u8]) -> Answer {
        Answer::full(
            StatusCode::OK,
            Bytes::from_static(b"text/plain"),
            Bytes::from_static(body),
        )
        .with(X_MESSAGE_ID, Bytes::copy_from_slice(id))
    }

    #[test]
    fn a_header_map_made_again_is_the_same_and_any_difference_shows() {
        let first = headers_of(message(b"abc-1", b"hi"));
        assert_eq!(first[X_MESSAGE_ID], "abc-1");
        assert_eq!(first[header::CONTENT_LENGTH], "2");
        assert_eq!(first.get_all(header::DATE).iter().count(), 1);
        // The same answer again, its id in a buffer of its own: the same map,
        // unless the second changed in between.
        let again = headers_of(message(b"abc-1", b"hi"));
        if first[header::DATE] == again[header::DATE] {
            assert_eq!(first, again);
        }
        // An id of the same length, another length: each is in its map.
        let other = headers_of(message(b"abc-2", b"hi"));
        assert_eq!(other[X_MESSAGE_ID], "abc-2");
        let longer = headers_of(message(b"abc-2", b"hello"));
        assert_eq!(longer[header::CONTENT_LENGTH], "5");
        // An empty answer ends its stream with the head: no length, as hyper
        // would send it.
        let empty = headers_of(
            Answer::status(StatusCode::NO_CONTENT).with(X_MESSAGE_ID, Bytes::from_static(b"abc-2")),
        );
        assert!(!empty.contains_key(header::CONTENT_LENGTH), "{empty:?}");
        assert_eq!(empty[X_MESSAGE_ID], "abc-2");
    }
}
