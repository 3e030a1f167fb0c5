//! `GET /events`: Server-Sent Events.
//!
//! A stream first sends the history after `since` (or `Last-Event-ID`), then every
//! new message as it is published, each as `id:` and `data:` lines, and a `: ping`
//! comment after 15 s (`--ping`) of silence. One small task per stream copies messages from the
//! channel's broadcast into a bounded queue that the response body drains: a
//! client that stops reading falls behind the broadcast and is dropped, and the
//! others are not held up. When the client goes away hyper drops the body, the
//! task sees its queue closed and ends, and the hub forgets the stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{broadcast, mpsc};

use crate::error::Error;
use crate::hub::{Hub, Message, STREAM_BACKLOG, Stream};
use crate::protocol::{self, Query, Since};
use crate::service::Body;

/// How long a browser waits before reconnecting, sent as `retry:`.
pub const RETRY_MS: u32 = 2000;
/// Frames queued between the stream task and the connection.
const QUEUE: usize = 16;
/// How often a blocked stream checks whether its reader has fallen too far behind.
const LAG_CHECK: Duration = Duration::from_millis(250);

/// The channel and starting point an `/events` request asks for.
pub fn request<B>(req: &Request<B>, hub: &Hub) -> Result<(String, Since), Error> {
    let query = Query::parse(req.uri().query())?;
    let channel = protocol::channel_name(query.channel.as_deref())?;
    let since = crate::service::since(&query, req, hub.ids())?;
    Ok((channel.to_owned(), since))
}

/// Answers an `/events` request with `stream`: its backlog, then live messages.
pub fn respond(mut stream: Stream, ping: Duration) -> Response<Body> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut head = format!("retry: {RETRY_MS}\n\n");
    if stream.gap {
        head.push_str("event: gap\ndata: some messages are no longer retained\n\n");
    }
    let backlog = std::mem::take(&mut stream.backlog);
    tokio::spawn(async move {
        // Own the whole stream (not just the field used below), so that its
        // guard lives as long as this task.
        let mut stream = stream;
        if tx.send(Bytes::from(head)).await.is_err() {
            return;
        }
        for message in &backlog {
            if !deliver(&tx, encode(message), &stream.live).await {
                return;
            }
        }
        drop(backlog);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
        loop {
            let frame = tokio::select! {
                received = stream.live.recv() => match received {
                    Ok(message) if message.seq <= stream.after => continue,
                    Ok(message) => encode(&message),
                    // Fell too far behind, or the channel was deleted or the server
                    // is stopping: end the stream; the browser reconnects with its
                    // Last-Event-ID and resumes from the history.
                    Err(broadcast::error::RecvError::Lagged(_))
                    | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ping.tick() => Bytes::from_static(b": ping\n\n"),
                _ = tx.closed() => return,
            };
            if !deliver(&tx, frame, &stream.live).await {
                return;
            }
            ping.reset();
        }
    });

    let mut response = Response::new(Queue(rx).boxed());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Queues a frame for the connection. While the queue is full (the client is not
/// reading), gives up once the client has fallen a whole broadcast buffer behind,
/// or has gone away; returns whether the frame was queued.
async fn deliver(
    tx: &mpsc::Sender<Bytes>,
    frame: Bytes,
    live: &broadcast::Receiver<Arc<Message>>,
) -> bool {
    // The usual case: there is room, and no timer is needed.
    let frame = match tx.try_send(frame) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(frame)) => frame,
    };
    let mut check = tokio::time::interval(LAG_CHECK);
    loop {
        tokio::select! {
            permit = tx.reserve() => {
                let Ok(permit) = permit else { return false };
                permit.send(frame);
                return true;
            }
            _ = check.tick() => {
                if live.len() >= STREAM_BACKLOG {
                    return false;
                }
            }
        }
    }
}

/// One message as an SSE event: `id:` then a `data:` line per line of data.
pub fn encode(message: &Message) -> Bytes {
    let text = String::from_utf8_lossy(&message.data);
    let mut out = BytesMut::with_capacity(text.len() + 32);
    out.put_slice(b"id: ");
    out.put_slice(message.id.as_bytes());
    out.put_u8(b'\n');
    for line in text.split("\r\n").flat_map(|l| l.split(['\n', '\r'])) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// The response body: frames from the stream task's queue.
#[derive(Debug)]
struct Queue(mpsc::Receiver<Bytes>);

impl HttpBody for Queue {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|frame| frame.map(|b| Ok(Frame::data(b))))
    }
}
