//! Event streams: the missed history of each channel, then every new message
//! through the channel's broadcast, counted as one subscriber until dropped.

use std::sync::Arc;

use smallvec::SmallVec;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::channel::channel_in;
use super::message::{Message, Payload, Since};
use super::{Hub, Refused};

/// Messages an event stream may fall behind before it is dropped.
pub const STREAM_BACKLOG: usize = 256;

/// An open event stream on a list of channels.
#[derive(Debug)]
pub struct Stream<P: Payload> {
    /// Retained messages after each channel's start, with the channel's
    /// place in the request, in sequence order.
    pub backlog: Vec<(usize, Arc<Message<P>>)>,
    /// Each channel, in the order asked (inline for one channel, the usual
    /// stream).
    pub channels: SmallVec<[Following<P>; 1]>,
    _guard: StreamGuard<P>,
}

/// One channel of a [`Stream`].
#[derive(Debug)]
pub struct Following<P> {
    /// New messages as they come; closed when the channel is deleted or the
    /// hub closes or resets, lagged when the reader falls too far behind.
    pub live: broadcast::Receiver<Arc<Message<P>>>,
    /// Live messages up to this sequence were already read (a backlog read
    /// from elsewhere after subscribing can overlap them).
    pub after: u64,
    /// Where the reader stood before the backlog: it has, or was told it
    /// missed, everything up to here.
    pub from: u64,
    /// Some messages after the start were no longer retained.
    pub gap: bool,
}

/// Counts an open stream until dropped, and frees the channels it leaves
/// idle (its receivers, dropped first, kept them).
#[derive(Debug)]
struct StreamGuard<P: Payload> {
    hub: Arc<Hub<P>>,
    channels: SmallVec<[Arc<str>; 1]>,
}

impl<P: Payload> Drop for StreamGuard<P> {
    fn drop(&mut self) {
        let mut state = self.hub.state();
        state.tally.streams -= 1;
        for channel in &self.channels {
            state.free_if_idle(channel);
        }
    }
}

impl<P: Payload> Hub<P> {
    /// Opens an event stream on `channels`, each from its own `since`,
    /// within `max_subscribers` (counted once).
    pub fn stream<S: AsRef<str>>(
        self: &Arc<Self>,
        channels: &[(S, Since)],
    ) -> Result<Stream<P>, Refused> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        if state.tally.full(self.limits.max_subscribers) {
            return Err(Refused::Subscribers);
        }
        let now = Instant::now();
        let newest = state.seq;
        let mut backlog = Vec::new();
        let mut following = SmallVec::with_capacity(channels.len());
        let mut names: SmallVec<[Arc<str>; 1]> = SmallVec::with_capacity(channels.len());
        for (place, (channel, since)) in channels.iter().enumerate() {
            let ch = match channel_in(
                &mut state.channels,
                &mut state.freed,
                channel.as_ref(),
                &self.limits,
            ) {
                Ok(ch) => ch,
                Err(refused) => {
                    drop(following);
                    for name in &names {
                        state.free_if_idle(name);
                    }
                    return Err(refused);
                }
            };
            state.held -= ch.refresh(&mut state.due, &self.limits, self.mode, now);
            ch.visited = now;
            let live = ch
                .live
                .get_or_insert_with(|| broadcast::channel(STREAM_BACKLOG).0)
                .subscribe();
            let (after, gap) = since.start(ch.last_seq, ch.evicted, newest);
            let read = ch.after(after, usize::MAX);
            following.push(Following {
                live,
                after: read.last().map_or(after, |m| m.seq),
                from: after.max(ch.evicted),
                gap,
            });
            backlog.extend(read.into_iter().map(|m| (place, m)));
            names.push(ch.name.clone());
        }
        if channels.len() > 1 {
            backlog.sort_by_key(|(_, m)| m.seq);
        }
        state.tally.streams += 1;
        Ok(Stream {
            backlog,
            channels: following,
            _guard: StreamGuard {
                hub: self.clone(),
                channels: names,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    #[tokio::test(start_paused = true)]
    async fn a_stream_gets_its_backlog_then_live_messages() {
        let hub = hub(10, 60);
        let first = publish(&hub, "c", "a");
        publish(&hub, "c", "b");
        let mut stream = hub.stream(&[("c", Since::Id(first))]).unwrap();
        assert_eq!(stream.backlog.len(), 1);
        assert_eq!(hub.snapshot().streams, 1);
        publish(&hub, "c", "c");
        assert_eq!(stream.channels[0].live.recv().await.unwrap().payload, "c");
        drop(stream);
        assert_eq!(hub.snapshot().streams, 0);
    }
}
