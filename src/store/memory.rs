//! The in-memory store: the hub as the source of every message, with ids of
//! this run's epoch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{ChannelState, Polled, Published, Settings, Stream};
use crate::error::Error;
use crate::hub::{self, Hub, Outcome, Poll, Since};
use crate::protocol::{Content, Ids, Meter};

/// Channels in this process.
#[derive(Debug)]
pub struct Memory {
    hub: Arc<Hub<Content>>,
    ids: Ids,
    meter: Meter,
}

impl Memory {
    /// An empty store with a fresh epoch.
    pub fn new(settings: &Settings) -> Memory {
        Memory {
            hub: Hub::new(settings.hub(hub::Mode::Source)),
            ids: Ids::Epoch(crate::protocol::new_epoch()),
            meter: Meter::default(),
        }
    }

    pub(super) fn ids(&self) -> &Ids {
        &self.ids
    }

    pub(super) fn hub(&self) -> &Arc<Hub<Content>> {
        &self.hub
    }

    pub(super) fn meter(&self) -> &Meter {
        &self.meter
    }

    pub(super) async fn poll(
        &self,
        channel: &str,
        since: Since,
        limit: usize,
        timeout: Duration,
    ) -> Result<Polled, Error> {
        let waiter = match self.hub.poll(channel, since, limit)? {
            Poll::Ready { messages, gap } => return Ok(Polled::Messages { messages, gap }),
            Poll::Wait(waiter) => waiter,
            Poll::Miss => return Err(Error::StoreUnavailable),
        };
        let gap = waiter.gap;
        let last = match waiter.wait(timeout).await {
            Outcome::Message(m) => {
                return Ok(Polled::Messages {
                    messages: vec![m],
                    gap,
                });
            }
            Outcome::Deleted => return Err(Error::Gone),
            Outcome::Timeout(last) | Outcome::Shutdown(last) => last,
            Outcome::Reset => self.hub.last_seq(channel),
        };
        Ok(Polled::Empty {
            last_id: self.ids.id(last),
            gap,
        })
    }

    pub(super) fn stream(&self, channel: &str, since: Since) -> Result<Stream, Error> {
        Ok(self.hub.stream(channel, since)?)
    }

    pub(super) fn publish(
        &self,
        channel: &str,
        data: Bytes,
        content_type: Bytes,
    ) -> Result<Published, Error> {
        let (message, subscribers) = self.hub.publish(channel, |seq| {
            Content::new(self.ids.id(seq), data, content_type, &self.meter)
        })?;
        Ok(Published {
            id: message.payload.id.clone(),
            subscribers,
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
