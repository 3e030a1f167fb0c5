//! The in-memory store: the hub as the source of every message, with ids of
//! this run's epoch.

use smol_str::SmolStr;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use bytes::Bytes;

use super::{ChannelState, Polled, PolledMany, Published, Settings, Stream, first_woken};
use crate::error::Error;
use crate::hub::{self, Hub, Outcome, Poll, Since};
use crate::protocol::{Content, Ids};

/// How a long-poll on the memory store starts.
#[derive(Debug)]
pub enum Started<'a> {
    /// Answered from the history.
    Ready(Polled),
    /// Waiting for the next message.
    Wait(MemoryWait<'a>),
}

pin_project_lite::pin_project! {
    /// A long-poll waiting on the memory store: the hub's wait, and what turns
    /// its outcome into an answer.
    #[derive(Debug)]
    pub struct MemoryWait<'a> {
        memory: &'a Memory,
        gap: bool,
        after: u64,
        #[pin]
        wait: hub::Wait<Content>,
    }
}

impl Future for MemoryWait<'_> {
    type Output = Result<Polled, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> TaskPoll<Self::Output> {
        let this = self.project();
        let gap = *this.gap;
        let last = match std::task::ready!(this.wait.poll(cx)) {
            Outcome::Message(m) => {
                return TaskPoll::Ready(Ok(Polled::Messages {
                    messages: vec![m],
                    gap,
                }));
            }
            Outcome::Deleted => return TaskPoll::Ready(Err(Error::Gone)),
            Outcome::Timeout(last) | Outcome::Shutdown(last) => last,
            Outcome::Reset => *this.after,
        };
        TaskPoll::Ready(Ok(Polled::Empty {
            last_id: this.memory.ids.id(last),
            gap,
        }))
    }
}

/// Channels in this process.
#[derive(Debug, Clone)]
pub struct Memory {
    hub: Arc<Hub<Content>>,
    ids: Ids,
}

impl Memory {
    /// An empty store with a fresh epoch.
    pub fn new(settings: &Settings) -> Memory {
        Memory {
            hub: Hub::new(settings.hub(hub::Mode::Source)),
            ids: Ids::Epoch(crate::protocol::new_epoch()),
        }
    }

    pub(super) fn ids(&self) -> &Ids {
        &self.ids
    }

    pub(super) fn hub(&self) -> &Arc<Hub<Content>> {
        &self.hub
    }

    /// A long-poll: answered at once, or a wait to await.
    pub(super) fn poll(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
        timeout: Duration,
    ) -> Result<Started<'_>, Error> {
        match self.hub.poll(channel, since, limit)? {
            Poll::Ready { messages, gap } => Ok(Started::Ready(Polled::Messages { messages, gap })),
            Poll::Wait(waiter) => Ok(Started::Wait(MemoryWait {
                memory: self,
                gap: waiter.gap,
                after: waiter.after,
                wait: waiter.wait(timeout),
            })),
            Poll::Miss => Err(Error::StoreUnavailable),
        }
    }

    /// A long-poll on several channels: what the history holds after each
    /// one's start, or the next message on any.
    pub(super) async fn poll_many(
        &self,
        channels: &[(SmolStr, Since)],
        limit: usize,
        timeout: Duration,
        count: bool,
    ) -> Result<PolledMany, Error> {
        let many = self.hub.poll_many(channels, limit, count)?;
        let mut polled = PolledMany::new(channels.len());
        if !polled.read_starts(many.starts).is_empty() {
            // A source hub never misses.
            return Err(Error::StoreUnavailable);
        }
        if !polled.messages.is_empty() {
            return Ok(polled.sorted());
        }
        match first_woken(many.joint, timeout).await {
            Some((i, Outcome::Message(m))) => polled.messages.push((i, m)),
            Some((_, Outcome::Deleted)) => return Err(Error::Gone),
            Some((_, Outcome::Timeout(_) | Outcome::Shutdown(_) | Outcome::Reset)) | None => {}
        }
        Ok(polled)
    }

    pub(super) fn stream(&self, channel: &str, since: Since) -> Result<Stream, Error> {
        Ok(self.hub.stream(channel, since)?)
    }

    pub(super) fn publish(
        &self,
        channel: &str,
        key: Option<&str>,
        data: Bytes,
        content_type: Bytes,
    ) -> Result<Published, Error> {
        let key = key.map(|key| (key, crate::protocol::fingerprint(&data, &content_type)));
        let make = |seq| Content::new(self.ids.id(seq), data, content_type, self.hub.meter());
        let (message, subscribers) = match key {
            None => self.hub.publish(channel, make)?,
            Some((key, print)) => match self.hub.publish_once(channel, key, print, make)? {
                hub::Published::New(message, subscribers) => (message, subscribers),
                hub::Published::Conflict => return Err(Error::KeyReused),
                hub::Published::Replayed(seq) => {
                    return Ok(Published {
                        id: self.ids.id(seq),
                        subscribers: 0,
                        replayed: true,
                    });
                }
            },
        };
        Ok(Published {
            id: message.payload.id.clone(),
            subscribers,
            replayed: false,
        })
    }

    pub(super) fn delete(&self, channel: &str) -> bool {
        self.hub.delete(channel)
    }

    pub(super) fn channel(&self, channel: &str) -> ChannelState {
        let info = self.hub.info(channel);
        ChannelState {
            subscribers: info.subscribers,
            messages: info.messages,
            last_id: (info.last_seq > 0).then(|| self.ids.id(info.last_seq)),
        }
    }
}
