//! The link to Redis: connecting with backoff, following the topics of the
//! channels subscribed here, handing what arrives to the hub, and what the
//! rest of the store sees of it (up or down, `/stats`).

use super::*;

/// How long a connection attempt or a command may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a cluster's masters are probed, and how long each may take.
pub(super) const SHARD_PROBE: Duration = Duration::from_secs(1);
/// Reconnection backoff bounds.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often channels nobody here waits on any more are unfollowed.
pub(super) const UNFOLLOW_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub(super) struct Link {
    pub(super) con: Con,
    /// With `--redis-replicas`: the connections publishes and their `WAIT`
    /// go on.
    pub(super) durable: Vec<Con>,
    down: Arc<Notify>,
}

/// A request to follow a channel's topic; answered once it is followed.
#[derive(Debug)]
pub(super) struct Follow {
    pub(super) channel: Arc<str>,
    pub(super) done: oneshot::Sender<bool>,
}

impl Redis {
    /// Waits until the link is up, or `limit` has passed; returns whether it is.
    pub async fn wait_up(&self, limit: Duration) -> bool {
        let mut up = self.up.subscribe();
        let _ = tokio::time::timeout(limit, up.wait_for(|&u| u)).await;
        *self.up.borrow()
    }

    /// The link's state for `/stats` and `/metrics`.
    pub fn link_state(&self) -> RedisLink {
        RedisLink {
            up: *self.up.borrow(),
            reconnects: self.reconnects.load(Relaxed),
            followed: self.followed.load(Relaxed),
            errors: self.errors.load(Relaxed),
            shards: self
                .shards
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    pub(super) fn link(&self) -> Result<Link, Error> {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Error::StoreUnavailable)
    }

    /// Counts a failed command; a connection that no longer answers is dropped
    /// so the link task reconnects.
    ///
    /// A cluster connection mends itself node by node (and says so with a
    /// disconnection push), so a failed command there fails only itself: a
    /// shard that is down makes only its channels answer `503`.
    pub(super) fn failed(&self, link: &Link, err: &redis::RedisError) -> Error {
        self.errors.fetch_add(1, Relaxed);
        warn!(%err, "redis command failed");
        // A master demoted by a failover refuses writes: find the new one.
        let demoted = err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        let broken = err.is_io_error() || err.is_timeout() || err.is_connection_dropped();
        if (broken || demoted) && !link.con.mends_itself() {
            link.down.notify_one();
        }
        Error::StoreUnavailable
    }

    /// Hands an announcement from Redis to the hub. Runs on the connection's reader.
    fn on_push(hub: &Hub<Content>, meter: &Meter, down: &Notify, push: PushInfo) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(topic), Some(payload)) = (
                    push.data.first().and_then(bulk),
                    push.data.get(1).and_then(bulk),
                ) else {
                    return;
                };
                let Some(channel) = channel_of_topic(topic) else {
                    return;
                };
                match announcement(payload, meter) {
                    Some(Ok(message)) => {
                        hub.deliver(channel, message);
                    }
                    Some(Err(())) => {
                        hub.delete(channel);
                    }
                    None => warn!(channel, "unreadable announcement from redis"),
                }
            }
            PushKind::Disconnection => down.notify_one(),
            // A cluster drops the followers of a slot that moves to another
            // shard: what is announced there from now on would be missed.
            // Unless this instance let the channel go itself, start over.
            PushKind::SUnsubscribe => {
                let channel = push.data.first().and_then(bulk).and_then(channel_of_topic);
                if channel.is_some_and(|c| hub.has_channel(c)) {
                    down.notify_one();
                }
            }
            _ => {}
        }
    }

    async fn connect(&self) -> redis::RedisResult<Link> {
        let down = Arc::new(Notify::new());
        let push = {
            let hub = self.hub.clone();
            let meter = self.meter.clone();
            let down = down.clone();
            move |push: PushInfo| {
                Redis::on_push(&hub, &meter, &down, push);
                Ok::<(), std::convert::Infallible>(())
            }
        };
        let durable = if self.replicas > 0 {
            DURABLE_CONNECTIONS
        } else {
            0
        };
        let (con, durable) = self
            .target
            .connect(
                push,
                (CONNECT_TIMEOUT, RESPONSE_TIMEOUT),
                durable,
                RESPONSE_TIMEOUT + REPLICA_WAIT,
            )
            .await?;
        Ok(Link { con, durable, down })
    }

    /// Keeps the link up: connects with backoff, follows the channels asked for,
    /// unfollows those nobody here uses, and starts over when the link drops.
    /// Runs until the future is dropped.
    pub(in crate::store) async fn run_link(&self) {
        let mut requests = self.requests.lock().await;
        let requests = &mut *requests;
        let mut backoff = MIN_BACKOFF;
        let mut ever_up = false;
        loop {
            let link = match self.connect().await {
                Ok(link) => link,
                Err(err) => {
                    warn!(%err, retry_in = ?backoff, "redis unreachable");
                    let until = tokio::time::sleep(backoff);
                    tokio::pin!(until);
                    loop {
                        tokio::select! {
                            _ = &mut until => break,
                            Some(request) = requests.recv() => {
                                let _ = request.done.send(false);
                            }
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = MIN_BACKOFF;
            if ever_up {
                // Whatever was announced while the link was down is in the
                // streams: let every waiter read it from there.
                self.hub.reset();
                self.reconnects.fetch_add(1, Relaxed);
            }
            ever_up = true;
            // Requests queued while down were for the old connection.
            while let Ok(request) = requests.try_recv() {
                let _ = request.done.send(false);
            }
            *self.link.lock().unwrap_or_else(PoisonError::into_inner) = Some(link.clone());
            self.up.send_replace(true);
            info!("redis link up");

            self.serve_link(link, requests).await;

            *self.link.lock().unwrap_or_else(PoisonError::into_inner) = None;
            self.up.send_replace(false);
            self.followed.store(0, Relaxed);
            warn!("redis link down");
        }
    }

    /// Follows and unfollows channels on `link`, and on a cluster probes its
    /// masters, until it drops.
    async fn serve_link(&self, link: Link, requests: &mut mpsc::UnboundedReceiver<Follow>) {
        let probe = async {
            let mut con = link.con.clone();
            if !con.mends_itself() {
                // One server: no shards to probe.
                return std::future::pending().await;
            }
            let mut tick = tokio::time::interval(SHARD_PROBE);
            loop {
                tick.tick().await;
                if let Some(shards) = con.shards(SHARD_PROBE).await {
                    *self.shards.lock().unwrap_or_else(PoisonError::into_inner) = shards;
                }
            }
        };
        tokio::select! {
            () = self.follow_channels(link.clone(), requests) => {}
            () = probe => {}
        }
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Follows and unfollows channels on `link` until it drops.
    async fn follow_channels(&self, link: Link, requests: &mut mpsc::UnboundedReceiver<Follow>) {
        let mut con = link.con.clone();
        // A cluster's failure is one shard's: the others go on.
        let cluster = con.mends_itself();
        let mut followed: HashSet<Arc<str>> = HashSet::new();
        let mut unfollow = tokio::time::interval(UNFOLLOW_INTERVAL);
        loop {
            tokio::select! {
                Some(first) = requests.recv() => {
                    let mut batch = vec![first];
                    while let Ok(more) = requests.try_recv() {
                        batch.push(more);
                    }
                    let mut new: Vec<Arc<str>> = batch
                        .iter()
                        .map(|r| r.channel.clone())
                        .filter(|c| !followed.contains(c))
                        .collect();
                    new.sort();
                    new.dedup();
                    let ok = new.is_empty() || {
                        let topics: Vec<String> = new.iter().map(|c| topic(c)).collect();
                        match con.follow(&topics).await {
                            Ok(()) => true,
                            Err(err) => {
                                self.failed(&link, &err);
                                false
                            }
                        }
                    };
                    if ok {
                        followed.extend(new);
                        self.followed.store(followed.len(), Relaxed);
                    }
                    for request in batch {
                        let _ = request.done.send(ok);
                    }
                    if !ok && !cluster {
                        return;
                    }
                }
                _ = unfollow.tick() => {
                    let idle: Vec<Arc<str>> = followed
                        .iter()
                        .filter(|c| !self.hub.has_channel(c))
                        .cloned()
                        .collect();
                    if idle.is_empty() {
                        continue;
                    }
                    let topics: Vec<String> = idle.iter().map(|c| topic(c)).collect();
                    if let Err(err) = con.unfollow(&topics).await {
                        self.failed(&link, &err);
                        if cluster {
                            continue;
                        }
                        return;
                    }
                    for c in &idle {
                        followed.remove(c);
                    }
                    self.followed.store(followed.len(), Relaxed);
                }
                _ = link.down.notified() => return,
            }
        }
    }
}
