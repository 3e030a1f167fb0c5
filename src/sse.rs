//! `GET /events`: Server-Sent Events.
//!
//! A stream first sends the history after `since` (or `Last-Event-ID`), then every
//! new message as it is published, each as its shared SSE frame, and a `: ping`
//! comment after 15 s (`--ping`) of silence. One small task per stream copies
//! frames from the channel's broadcast into a bounded queue that the answer's
//! body drains: a client that stops reading falls behind the broadcast and is
//! dropped, and the others are not held up. When the client goes away the body
//! is dropped, the task sees its queue closed and ends, and the store forgets
//! the stream.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderName;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::answer::{Answer, Body, NOSNIFF};
use crate::hub::STREAM_BACKLOG;
use crate::store::{Message, Stream};

/// The last event of a stream whose token expired.
const EXPIRED: &[u8] = b"event: expired\ndata: the token expired: reconnect with a fresh one\n\n";
/// How long a browser waits before reconnecting, sent as `retry:`.
pub const RETRY_MS: u32 = 2000;
/// Frames queued between the stream task and the connection.
const QUEUE: usize = 16;
/// How often a blocked stream checks whether its reader has fallen too far behind.
const LAG_CHECK: Duration = Duration::from_millis(250);

/// Answers an `/events` request with `stream`: its backlog, then live
/// messages, until `ends` (when the token it was opened with expires), if set.
/// Then an `event: expired` says why, and the stream ends; the client opens a
/// new one with a fresh token and its `Last-Event-ID`.
pub fn answer(mut stream: Stream, ping: Duration, ends: Option<Instant>) -> Answer {
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut head = format!("retry: {RETRY_MS}\n\n");
    if stream.gap {
        head.push_str("event: gap\ndata: some messages are no longer retained\n\n");
    }
    let backlog = std::mem::take(&mut stream.backlog);
    tokio::spawn(async move {
        // Own the whole stream, so that its guard lives as long as this task.
        let mut stream = stream;
        if tx.send(Bytes::from(head)).await.is_err() {
            return;
        }
        for message in &backlog {
            if !deliver(&tx, message.payload.sse(), &stream.live).await {
                return;
            }
        }
        drop(backlog);
        let mut ping = tokio::time::interval_at(Instant::now() + ping, ping);
        let expiry = async {
            match ends {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            let frame = tokio::select! {
                received = stream.live.recv() => match received {
                    Ok(message) if message.seq <= stream.after => continue,
                    Ok(message) => message.payload.sse(),
                    // Fell too far behind, or the channel was deleted or the server
                    // is stopping: end the stream; the browser reconnects with its
                    // Last-Event-ID and resumes from the history.
                    Err(broadcast::error::RecvError::Lagged(_))
                    | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ping.tick() => Bytes::from_static(b": ping\n\n"),
                () = &mut expiry => {
                    let _ = tx.try_send(Bytes::from_static(EXPIRED));
                    return;
                }
                _ = tx.closed() => return,
            };
            if !deliver(&tx, frame, &stream.live).await {
                return;
            }
            ping.reset();
        }
    });
    Answer::full(
        StatusCode::OK,
        Bytes::from_static(b"text/event-stream"),
        Body::Stream(rx),
    )
    .with(
        HeaderName::from_static("x-accel-buffering"),
        Bytes::from_static(b"no"),
    )
    .with_static(NOSNIFF)
}

/// Queues a frame for the connection. While the queue is full (the client is not
/// reading), gives up once the client has fallen a whole broadcast buffer behind,
/// or has gone away; returns whether the frame was queued.
async fn deliver(
    tx: &mpsc::Sender<Bytes>,
    frame: Bytes,
    live: &broadcast::Receiver<Message>,
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
