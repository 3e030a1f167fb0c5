//! `GET /events`: Server-Sent Events.
//!
//! A stream first sends the history after `since` (or `Last-Event-ID`), then every
//! new message as it is published, each as its shared SSE frame, and a `: ping`
//! comment after 15 s (`--ping`) of silence. On one channel the frames are made
//! as the writer asks for them ([`Live`]): the lean HTTP/1.1 path writes them
//! from the connection's own task, so an idle stream costs little more than a
//! waiting long-poll; hyper's path gets them through a small task and a bounded
//! queue ([`pump`]). Either way a client that stops reading falls behind the
//! channel's broadcast and is dropped, and the others are not held up; when the
//! client goes away the stream is dropped and the store forgets it. On several
//! channels a task reads long-polls on the store ([`answer_many`]).

use smol_str::SmolStr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderName;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::answer::{Answer, Body, Events, NOSNIFF};
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
/// new one with a fresh token and its `Last-Event-ID`. The frames are made
/// as the writer asks for them ([`Live`]): the lean path writes them from
/// the connection's own task; hyper's gets them through [`pump`].
pub fn answer(stream: Stream, ping: Duration, ends: Option<Instant>) -> Answer {
    event_stream(Events::Live(Box::new(Live::new(stream, ping, ends))))
}

/// A one-channel event stream's frames, made as they are asked for: the
/// head, the backlog, then live messages and pings. A writer that falls a
/// whole broadcast buffer behind (its client stopped reading) gets `None`,
/// and the stream ends; the browser resumes from the history.
#[derive(Debug)]
pub struct Live {
    stream: Stream,
    head: Option<Bytes>,
    backlog: std::vec::IntoIter<Message>,
    /// Silence after which a ping goes out, and when the next one is due.
    ping: Duration,
    next_ping: Instant,
    ends: Option<Instant>,
    over: bool,
}

impl Live {
    fn new(mut stream: Stream, ping: Duration, ends: Option<Instant>) -> Live {
        let mut head = format!("retry: {RETRY_MS}\n\n");
        if stream.gap {
            head.push_str("event: gap\ndata: some messages are no longer retained\n\n");
        }
        let backlog = std::mem::take(&mut stream.backlog).into_iter();
        Live {
            stream,
            head: Some(Bytes::from(head)),
            backlog,
            ping,
            next_ping: Instant::now() + ping,
            ends,
            over: false,
        }
    }

    /// The next frame, or `None` when the stream is over.
    pub async fn next(&mut self) -> Option<Bytes> {
        if self.over {
            return None;
        }
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        if let Some(message) = self.backlog.next() {
            return Some(message.payload.sse());
        }
        // One timer for the next ping and the token's expiry, whichever
        // comes first.
        let wake = match self.ends {
            Some(ends) => ends.min(self.next_ping),
            None => self.next_ping,
        };
        let timer = tokio::time::sleep_until(wake);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                received = self.stream.live.recv() => match received {
                    Ok(message) if message.seq <= self.stream.after => continue,
                    Ok(message) => {
                        self.next_ping = Instant::now() + self.ping;
                        return Some(message.payload.sse());
                    }
                    // Fell too far behind, or the channel was deleted or the server
                    // is stopping: end the stream; the browser reconnects with its
                    // Last-Event-ID and resumes from the history.
                    Err(broadcast::error::RecvError::Lagged(_))
                    | Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = &mut timer => {
                    if self.ends.is_some_and(|ends| ends <= wake) {
                        self.over = true;
                        return Some(Bytes::from_static(EXPIRED));
                    }
                    self.next_ping = wake + self.ping;
                    return Some(Bytes::from_static(b": ping\n\n"));
                }
            }
        }
    }

    /// Resolves once the writer has fallen a whole broadcast buffer behind
    /// (its client is not reading): it is given up on, as a queue's would be.
    pub async fn lagging(&self) {
        fell_behind(&self.stream.live).await;
    }
}

/// Resolves once `live` holds a whole broadcast buffer not yet read: its
/// reader has stopped keeping up.
async fn fell_behind(live: &broadcast::Receiver<Message>) {
    let mut check = tokio::time::interval(LAG_CHECK);
    loop {
        check.tick().await;
        if live.len() >= STREAM_BACKLOG {
            return;
        }
    }
}

/// A task that makes `live`'s frames into a bounded queue, for a writer
/// that polls (hyper's body): a reader that stops reading falls behind the
/// broadcast and is dropped, and the others are not held up. When the queue's
/// reader goes away the task ends, and the store forgets the stream.
pub fn pump(mut live: Live) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                frame = live.next() => frame,
                _ = tx.closed() => return,
            };
            let Some(frame) = frame else { return };
            if !deliver(&tx, frame, &live.stream.live).await {
                return;
            }
        }
    });
    rx
}

fn event_stream(events: Events) -> Answer {
    Answer::full(
        StatusCode::OK,
        Bytes::from_static(b"text/event-stream"),
        Body::Stream(events),
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
    event_stream(Events::Queue(rx))
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
    tokio::select! {
        permit = tx.reserve() => {
            let Ok(permit) = permit else { return false };
            permit.send(frame);
            true
        }
        () = fell_behind(live) => false,
    }
}
