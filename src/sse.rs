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

use smol_str::SmolStr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderName;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::answer::{Answer, Body, NOSNIFF};
use crate::hub::{STREAM_BACKLOG, Since, StreamGuard};
use crate::protocol::{self, Content};
use crate::store::{Message, Store, Stream};

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
    event_stream(rx)
}

fn event_stream(rx: mpsc::Receiver<Bytes>) -> Answer {
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

/// An event stream on several channels, read by long-polls on the store.
#[derive(Debug)]
pub struct Polls {
    /// The store.
    pub store: Store,
    /// The channels, each from where it starts.
    pub channels: Vec<(SmolStr, Since)>,
    /// Counts the stream as open while it is.
    pub counted: StreamGuard<Content>,
}

/// Answers an `/events` request for several channels: what each holds
/// after its start, then every new message, each event with the composite
/// cursor after it; a `: ping` after `ping` of silence; ends at `ends` with
/// `event: expired`, and when a channel is deleted, the store goes away or
/// the server stops.
pub fn answer_many(polls: Polls, ping: Duration, ends: Option<Instant>) -> Answer {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let Polls {
            store,
            mut channels,
            counted: _counted,
        } = polls;
        let head = format!("retry: {RETRY_MS}\n\n");
        if tx.send(Bytes::from(head)).await.is_err() {
            return;
        }
        let expiry = async {
            match ends {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        // The first look does not wait, so a gap is told at once even when
        // nothing is left to send after it.
        let mut wait = Duration::ZERO;
        loop {
            let polled = tokio::select! {
                polled = store.poll_many(&channels, usize::MAX, wait, false) => polled,
                () = &mut expiry => {
                    let _ = tx.try_send(Bytes::from_static(EXPIRED));
                    return;
                }
                _ = tx.closed() => return,
            };
            let Ok(polled) = polled else { return };
            let missed = polled.missed(&channels);
            let mut frames = Vec::with_capacity(polled.messages.len() + 1);
            if !missed.is_empty() {
                let list = serde_json::to_string(&missed).unwrap_or_default();
                frames.push(Bytes::from(format!(
                    "event: gap\ndata: {{\"channels\":{list}}}\n\n"
                )));
            }
            if polled.messages.is_empty() && missed.is_empty() && !wait.is_zero() {
                frames.push(Bytes::from_static(b": ping\n\n"));
            }
            wait = ping;
            let mut at = polled.from;
            for (i, m) in &polled.messages {
                at[*i] = m.seq;
                let cursor = protocol::cursor(store.ids(), &channels, &at);
                frames.push(event(&cursor, &m.payload.json(&channels[*i].0)));
            }
            for ((_, since), seq) in channels.iter_mut().zip(at) {
                *since = Since::Id(seq);
            }
            for frame in frames {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        }
    });
    event_stream(rx)
}

/// One event of a stream on several channels: `id:` the cursor, `data:` the
/// message's JSON item (one line: JSON escapes line breaks).
fn event(cursor: &[u8], item: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(cursor.len() + item.len() + 16);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(cursor);
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(item);
    out.extend_from_slice(b"\n\n");
    out.into()
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
