//! `GET /events`: Server-Sent Events.
//!
//! A stream first sends the history after `since` (or `Last-Event-ID`) of each
//! of its channels, then every new message as it is published, and a `: ping`
//! comment after 15 s (`--ping`) of silence. What an event looks like (the
//! shared frame of one channel, or a composite cursor and a JSON item on
//! several) is the protocol's to say ([`Channels::event`]). The frames are made
//! as the writer asks for them ([`Live`]): the lean HTTP/1.1 path writes them
//! from the connection's own task, so an idle stream costs little more than a
//! waiting long-poll; hyper's path gets them through a small task and a bounded
//! queue ([`pump`]). Either way a client that stops reading falls behind the
//! channels' broadcasts and is dropped, and the others are not held up; when
//! the client goes away the stream is dropped and the store forgets it.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderName;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::answer::{Answer, Body, Events, NOSNIFF};
use crate::hub::{Following, STREAM_BACKLOG};
use crate::presence::Lease;
use crate::protocol::{Channels, Content, Ids};
use crate::store::{Message, PerChannel, Stream};

/// The last event of a stream whose token expired.
const EXPIRED: &[u8] = b"event: expired\ndata: the token expired: reconnect with a fresh one\n\n";
/// How long a browser waits before reconnecting, sent as `retry:`.
pub const RETRY_MS: u32 = 2000;
/// Frames queued between the stream task and the connection.
const QUEUE: usize = 16;
/// How often a blocked stream checks whether its reader has fallen too far behind.
const LAG_CHECK: Duration = Duration::from_millis(250);

/// Answers an `/events` request on `channels` with `stream`: the backlog,
/// then live messages, until `ends` (when the token it was opened with
/// expires), if set. Then an `event: expired` says why, and the stream ends;
/// the client opens a new one with a fresh token and its `Last-Event-ID`.
pub fn answer(
    stream: Stream,
    channels: Channels,
    ids: Ids,
    ping: Duration,
    ends: Option<Instant>,
    lease: Option<Box<Lease>>,
) -> Answer {
    let mut live = Live::new(stream, channels, ids, ping, ends);
    live.lease = lease;
    event_stream(Events::Live(Box::new(live)))
}

/// An event stream's frames, made as they are asked for: the head, the
/// backlog, then live messages (in sequence order across channels) and
/// pings. A writer that falls a whole broadcast buffer behind (its client
/// stopped reading) gets `None`, and the stream ends; the browser resumes
/// from the history.
#[derive(Debug)]
pub struct Live {
    stream: Stream,
    channels: Channels,
    ids: Ids,
    /// Each channel at the last message sent, or where it stood.
    at: PerChannel<u64>,
    /// Per channel, a live message taken from its broadcast and not sent
    /// yet, so that what several channels have ready goes out oldest first.
    ready: PerChannel<Option<Message>>,
    head: Option<Bytes>,
    backlog: std::vec::IntoIter<(usize, Message)>,
    /// Silence after which a ping goes out (milliseconds: a narrower field
    /// keeps the stream in a smaller allocation), and when the next one is due.
    ping_ms: u32,
    next_ping: Instant,
    ends: Option<Instant>,
    over: bool,
    /// Its place in presence: each message sent moves its member's receipt.
    lease: Option<Box<Lease>>,
}

impl Live {
    fn new(
        mut stream: Stream,
        channels: Channels,
        ids: Ids,
        ping: Duration,
        ends: Option<Instant>,
    ) -> Live {
        let gaps: PerChannel<bool> = stream.channels.iter().map(|c| c.gap).collect();
        let mut head = format!("retry: {RETRY_MS}\n\n").into_bytes();
        if let Some(gap) = channels.gap_event(&gaps) {
            head.extend_from_slice(&gap);
        }
        let backlog = std::mem::take(&mut stream.backlog).into_iter();
        Live {
            at: stream.channels.iter().map(|c| c.from).collect(),
            ready: stream.channels.iter().map(|_| None).collect(),
            stream,
            channels,
            ids,
            head: Some(Bytes::from(head)),
            backlog,
            ping_ms: u32::try_from(ping.as_millis()).unwrap_or(u32::MAX),
            next_ping: Instant::now() + ping,
            ends,
            over: false,
            lease: None,
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
        while let Some((place, message)) = self.backlog.next() {
            if let Some(frame) = self.event(place, &message) {
                return Some(frame);
            }
        }
        loop {
            if let Some((place, message)) = self.take_ready()? {
                if let Some(frame) = self.event(place, &message) {
                    self.next_ping = Instant::now() + self.ping();
                    return Some(frame);
                }
                continue;
            }
            // One timer for the next ping and the token's expiry, whichever
            // comes first.
            let wake = match self.ends {
                Some(ends) => ends.min(self.next_ping),
                None => self.next_ping,
            };
            tokio::select! {
                (place, received) = recv_any(&mut self.stream.channels) => match received {
                    Ok(message) => {
                        self.ready[place] = unsent(&self.stream.channels[place], message);
                    }
                    // Fell too far behind, or a channel was deleted or the
                    // server is stopping: end the stream; the browser
                    // reconnects with its Last-Event-ID and resumes from the
                    // history.
                    Err(_) => return None,
                },
                () = tokio::time::sleep_until(wake) => {
                    if self.ends.is_some_and(|ends| ends <= wake) {
                        self.over = true;
                        return Some(Bytes::from_static(EXPIRED));
                    }
                    self.next_ping = wake + self.ping();
                    return Some(Bytes::from_static(b": ping\n\n"));
                }
            }
        }
    }

    /// The event of `message`, from the channel at `place`, which now
    /// stands there; `None` for a copy already sent from another channel.
    fn event(&mut self, place: usize, message: &Message) -> Option<Bytes> {
        if !self
            .channels
            .advance(&mut self.at, place, message.seq, &message.payload)
        {
            return None;
        }
        if let Some(lease) = &self.lease {
            lease.ack(self.channels.name(place), message.seq);
        }
        Some(
            self.channels
                .event(&self.ids, &self.at, place, &message.payload),
        )
    }

    fn ping(&self) -> Duration {
        Duration::from_millis(u64::from(self.ping_ms))
    }

    /// Fills each channel's ready slot from what its broadcast holds, and
    /// takes the oldest; `None` (the outer) once the stream must end.
    fn take_ready(&mut self) -> Option<Option<(usize, Message)>> {
        for (following, slot) in self.stream.channels.iter_mut().zip(&mut self.ready) {
            while slot.is_none() {
                match following.live.try_recv() {
                    Ok(message) => *slot = unsent(following, message),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => return None,
                }
            }
        }
        let oldest = self
            .ready
            .iter()
            .enumerate()
            .filter_map(|(place, m)| Some((place, m.as_ref()?.seq)))
            .min_by_key(|(_, seq)| *seq)
            .map(|(place, _)| place);
        Some(oldest.and_then(|place| Some((place, self.ready[place].take()?))))
    }

    /// Resolves once the writer has fallen a whole broadcast buffer behind
    /// (its client is not reading): it is given up on, as a queue's would be.
    pub async fn lagging(&self) {
        fell_behind(&self.stream.channels).await;
    }
}

/// `message`, unless `following` sent it already in its backlog (read from
/// elsewhere after subscribing, a backlog can overlap the live messages).
fn unsent(following: &Following<Content>, message: Message) -> Option<Message> {
    (message.seq > following.after).then_some(message)
}

/// The next message (or error) from any of `channels`' broadcasts, with its
/// channel's place.
async fn recv_any(channels: &mut [Following<Content>]) -> (usize, Result<Message, RecvError>) {
    if let [one] = channels {
        return (0, one.live.recv().await);
    }
    let mut receiving: Vec<_> = channels
        .iter_mut()
        .enumerate()
        .map(|(place, following)| Box::pin(async move { (place, following.live.recv().await) }))
        .collect();
    std::future::poll_fn(|cx| {
        for receive in &mut receiving {
            if let Poll::Ready(received) = receive.as_mut().poll(cx) {
                return Poll::Ready(received);
            }
        }
        Poll::Pending
    })
    .await
}

/// Resolves once one of `channels` holds a whole broadcast buffer not yet
/// read: its reader has stopped keeping up.
async fn fell_behind(channels: &[Following<Content>]) {
    let mut check = tokio::time::interval(LAG_CHECK);
    loop {
        check.tick().await;
        if channels.iter().any(|c| c.live.len() >= STREAM_BACKLOG) {
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
            if !deliver(&tx, frame, &live.stream.channels).await {
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

/// Queues a frame for the connection. While the queue is full (the client is not
/// reading), gives up once the client has fallen a whole broadcast buffer behind,
/// or has gone away; returns whether the frame was queued.
async fn deliver(tx: &mpsc::Sender<Bytes>, frame: Bytes, channels: &[Following<Content>]) -> bool {
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
        () = fell_behind(channels) => false,
    }
}
