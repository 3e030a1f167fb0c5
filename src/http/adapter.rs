//! The hyper adapter: serves a connection with hyper once the lean path hands it
//! over (or from the start, for TLS), over HTTP/1.1 or HTTP/2, turning hyper's
//! requests into the routes' [`Request`] and their [`Answer`]s into hyper's
//! responses. On HTTP/2 each request is a stream; one that the client cancels
//! drops its handler, and with it its place in the hub, at once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::Response;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::debug;

use super::lean::Rewind;
use crate::answer::{Answer, Body};
use crate::error::Error;
use crate::routes::{Request, Route, Routes};

/// How hyper serves a connection: HTTP/1.1, or HTTP/2 when it opens with the
/// HTTP/2 preface (after ALPN `h2` on TLS, or with prior knowledge in the
/// clear).
pub type Builder = auto::Builder<TokioExecutor>;

/// Serves the rest of a connection with hyper.
pub async fn serve<S>(
    io: Rewind<S>,
    routes: Arc<Routes>,
    builder: &Builder,
    watcher: Watcher,
    read_only: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(
        TokioIo::new(io),
        service_fn(move |req| {
            let routes = routes.clone();
            async move { Ok::<_, Infallible>(response(handle(&routes, req, read_only).await)) }
        }),
    );
    if let Err(err) = watcher.watch(conn).await {
        debug!(cause = %err, "connection ended with an error");
    }
}

/// One request through the routes.
async fn handle(routes: &Routes, req: hyper::Request<Incoming>, read_only: bool) -> Answer {
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
    let route = match routes.route(&request) {
        Ok(route) => route,
        Err(err) => return routes.finish(Err(err)),
    };
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
    match body {
        Ok(body) => Box::pin(routes.serve(route, body)).await,
        Err(err) => routes.finish(Err(err)),
    }
}

/// An answer as hyper's response.
fn response(answer: Answer) -> Response<AnswerBody> {
    let body = match answer.body {
        Body::Empty => AnswerBody::Parts(VecDeque::new()),
        Body::Full(b) => AnswerBody::Parts(VecDeque::from([b])),
        Body::Parts(parts) => AnswerBody::Parts(parts.into()),
        Body::Stream(rx) => AnswerBody::Stream(rx),
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_maybe_shared(value) {
            headers.append(name, value);
        }
    }
    response
}

/// A response body: an answer's buffers, or an event stream's frames.
#[derive(Debug)]
pub enum AnswerBody {
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
        match self.get_mut() {
            AnswerBody::Parts(parts) => Poll::Ready(parts.pop_front().map(|b| Ok(Frame::data(b)))),
            AnswerBody::Stream(rx) => rx.poll_recv(cx).map(|f| f.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, AnswerBody::Parts(parts) if parts.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AnswerBody::Parts(parts) => {
                SizeHint::with_exact(parts.iter().map(|b| b.len() as u64).sum())
            }
            AnswerBody::Stream(_) => SizeHint::default(),
        }
    }
}
