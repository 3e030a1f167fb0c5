//! The in-memory store: the hub as the source of every message, with ids of
//! this run's epoch.

use smol_str::SmolStr;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use bytes::Bytes;

use super::{ChannelState, Polled, Published, hub_limits};
use crate::error::Error;
use crate::hub::{self, Clock, Hub, Limits, Outcome, Since};
use crate::protocol::{Content, Ids};

/// How a long-poll on the memory store starts.
#[derive(Debug)]
pub enum Started<T> {
    /// Answered from the history.
    Ready(Polled),
    /// Waiting for the next message.
    Wait(MemoryWait<T>),
}

pin_project_lite::pin_project! {
    /// A long-poll waiting on the memory store: what it read (nothing yet,
    /// and where each channel stands) and the hub's wait.
    #[derive(Debug)]
    pub struct MemoryWait<T> {
        polled: Polled,
        #[pin]
        wait: hub::Wait<Content, T>,
    }
}

impl<T: Future<Output = ()>> Future for MemoryWait<T> {
    type Output = Result<Polled, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> TaskPoll<Self::Output> {
        let this = self.project();
        let (place, outcome) = std::task::ready!(this.wait.poll(cx));
        let mut polled = std::mem::take(this.polled);
        match outcome {
            Outcome::Message(m) => polled.messages.push((place, m)),
            Outcome::Deleted => return TaskPoll::Ready(Err(Error::Gone)),
            Outcome::Timeout | Outcome::Shutdown | Outcome::Reset => {}
        }
        TaskPoll::Ready(Ok(polled))
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
    pub fn new(limits: &Limits) -> Memory {
        Memory {
            hub: Hub::new(hub_limits(limits), hub::Mode::Source),
            ids: Ids::Epoch(crate::protocol::new_epoch().into()),
        }
    }

    pub(super) fn ids(&self) -> &Ids {
        &self.ids
    }

    pub(super) fn hub(&self) -> &Arc<Hub<Content>> {
        &self.hub
    }

    /// A long-poll on `channels`: what the history holds after each one's
    /// start, or a wait for the next message on any.
    pub(super) fn poll<C: Clock>(
        &self,
        channels: &[(SmolStr, Since)],
        limit: usize,
        timeout: Duration,
        clock: C,
    ) -> Result<Started<C::Timer>, Error> {
        let mut polled = Polled::new(channels.len());
        let mut missed = Vec::new();
        let waiter = self.hub.poll(channels, limit, |i, start| {
            polled.start(i, start, &mut missed)
        })?;
        if !missed.is_empty() {
            // A source hub never misses.
            return Err(Error::StoreUnavailable);
        }
        Ok(match waiter {
            Some(waiter) => Started::Wait(MemoryWait {
                polled,
                wait: waiter.wait_on(clock, timeout),
            }),
            None => Started::Ready(polled.sorted()),
        })
    }

    pub(super) fn publish(
        &self,
        channels: &[&str],
        key: Option<&str>,
        data: Bytes,
        content_type: Bytes,
    ) -> Result<Published, Error> {
        let print = || crate::protocol::fingerprint(&data, &content_type, channels);
        let key = key.map(|key| (key, print()));
        let several: Option<Arc<[SmolStr]>> =
            (channels.len() > 1).then(|| channels.iter().map(|&c| SmolStr::from(c)).collect());
        let make = |seq| {
            Content::new(
                self.ids.id(seq),
                data.clone(),
                content_type.clone(),
                self.hub.meter(),
            )
            .on(several.clone())
        };
        let (message, subscribers) = match key {
            None => self.hub.publish(channels, make)?,
            Some((key, print)) => match self.hub.publish_once(channels, key, print, make)? {
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
