//! The server: accepts connections on its listeners, deals them out to the
//! reactors, and shuts down.
//!
//! [`run`] takes already-bound listeners ([`crate::listen`]) and a shutdown
//! future, so the binary
//! passes SIGINT/SIGTERM and tests pass a channel. It owns every task it starts
//! (the reactors and their connections, the store's background work, the memory
//! trimmer) and waits for each without polling. On shutdown it stops accepting,
//! answers every waiting subscriber (204 with its `X-Message-Id`), lets the
//! answers go out and closes the connections within [`GRACE`], then ends the rest.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::error::Error;
use crate::http::{Closing, adapter, lean};
use crate::hub;
use crate::listen::{Connection, Listener};
use crate::routes::{self, Routes};
use crate::stats::Counters;
use crate::store::Store;
use crate::tls::Certificates;

/// Longest time shutdown waits for connections to finish.
pub const GRACE: Duration = Duration::from_millis(1500);
/// Connections that must close before freed memory is handed back.
const TRIM_AFTER_CLOSED: u64 = 256;
/// How often the trimmer looks at closed connections.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// How long start-up waits for the store (Redis) before serving anyway.
const STORE_START: Duration = Duration::from_secs(3);

/// The server, built from its configuration: everything it needs before it
/// takes a connection. Every start-up check is made here, once; a
/// configuration it refuses never serves.
#[derive(Debug)]
pub struct Server {
    config: Config,
    routes: Arc<Routes>,
    builder: adapter::Builder,
    stalled: Arc<AtomicU64>,
    tls: Option<Arc<Certificates>>,
    nofile: u64,
}

impl Server {
    /// Checks `config` and builds the store, the routes with their auth, the
    /// certificates and the HTTP settings; `Err` says why it cannot start.
    pub fn new(mut config: Config) -> Result<Server, String> {
        // Read the machine's memory and open-files limit once, for everything
        // that depends on them.
        let nofile = crate::os::raise_nofile().unwrap_or_else(|err| {
            error!(cause = %err, "cannot read the open-files limit");
            1024
        });
        config.max_memory = Some(config.max_memory());
        if config.max_connections == 0 {
            config.max_connections = crate::os::connections_for(nofile);
        }
        config.check()?;
        let limits = hub::Limits {
            history: config.history,
            history_age: config.history_age(),
            max_channels: config.max_channels,
            max_subscribers: config.max_subscribers,
            max_bytes: config.max_memory(),
            idempotency_window: config.idempotency_window(),
        };
        let store = match &config.redis {
            None => Store::memory(&limits),
            Some(url) => Store::redis(&limits, url, config.redis_replicas)?,
        };
        let verifier = config.verifier(store.outside().clone())?.map(Arc::new);
        let webhook = config.webhook(store.outside().clone())?.map(Arc::new);
        let presence = config.presence(store.outside().clone());
        let events = config.events(store.outside().clone())?.map(Arc::new);
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(Certificates::load(cert, key)?)),
            _ => None,
        };
        let routes = Arc::new(Routes::new(
            store,
            Arc::new(Counters::default()),
            routes::Settings {
                timeout: config.timeout(),
                ping: Duration::from_secs(config.ping),
                body_timeout: config.header_timeout(),
                max_message: config.max_message,
                max_batch: config.max_batch_bytes,
                max_channels: config.max_channels_per_request,
                max_memory: config.max_memory(),
                cors_origin: Bytes::from(config.cors_origin.clone()),
                publish_token: config.publish_token.clone(),
                admin_token: config.admin_token.clone(),
                verifier,
                subscribe_auth: config.subscribe_auth,
                webhook,
                public_channels: crate::auth::Patterns::new(config.public_channels.clone()),
                jwt_cookie: config.jwt_cookie.clone(),
                presence,
                events,
            },
        ));
        let stalled = Arc::new(AtomicU64::new(0));
        let write_timeout = Duration::from_secs(config.write_timeout);
        let mut builder =
            adapter::Builder::new(adapter::StreamExecutor::new(write_timeout, stalled.clone()));
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout())
            .max_buf_size(config.max_header_bytes as usize);
        // An HTTP/2 connection outlives its requests, as browsers expect; one
        // whose peer has gone (no answer to a ping within the header timeout) is
        // closed, and everything it held freed.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(config.max_header_bytes)
            .keep_alive_interval(Duration::from_secs(config.ping))
            .keep_alive_timeout(config.header_timeout());
        Ok(Server {
            nofile,
            config,
            routes,
            builder,
            stalled,
            tls,
        })
    }

    /// Where the configuration says to listen (when no listener is inherited).
    pub fn listen(&self) -> &[crate::listen::Address] {
        &self.config.listen
    }

    /// The mode of the Unix sockets it makes.
    pub fn unix_mode(&self) -> u32 {
        self.config.unix_mode
    }

    /// Serves `listeners` until `shutdown` completes, then shuts down
    /// gracefully. `Err`: the listeners do not fit the configuration
    /// (`--publish-on`), and nothing was served.
    pub async fn serve(
        self,
        listeners: Vec<Listener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), String> {
        let Server {
            config,
            routes,
            builder,
            stalled,
            tls,
            nofile,
        } = self;
        let read_only = crate::listen::read_only(&listeners, &config.publish_on)?;
        log_start(&listeners, &config, nofile);

        let (store_stop, store_stopped) = watch::channel(false);
        let store_task = tokio::spawn({
            let routes = routes.clone();
            async move { routes.run(store_stopped).await }
        });
        if !routes.store().ready(STORE_START).await {
            warn!("redis not reachable yet; answering 503 until it is");
        }
        let trimmer = tokio::spawn(trim_memory(routes.clone(), stalled));
        let reloader = tls.clone().map(|tls| tokio::spawn(reload_on_hangup(tls)));
        let closing = Arc::new(Closing::default());
        let tracker = Arc::new(Tracker::default());
        let connections = Arc::new(Connections {
            routes: routes.clone(),
            builder,
            limits: lean::Limits {
                header_timeout: config.header_timeout(),
                max_head: config.max_header_bytes as usize,
                write_timeout: Duration::from_secs(config.write_timeout),
            },
            closing: closing.clone(),
            tracker: tracker.clone(),
            tls,
        });
        let reactors: Vec<Reactor> = (1..usize::from(config.threads))
            .filter_map(|i| connections.clone().reactor(i))
            .collect();

        connections
            .accept_until(
                &listeners,
                &read_only,
                &reactors,
                config.max_connections,
                shutdown,
            )
            .await;

        drop(listeners);
        closing.close();
        routes.store().close();
        tokio::select! {
            _ = tracker.wait_empty() => info!("all connections closed"),
            _ = tokio::time::sleep(GRACE) => warn!("grace period over; closing the rest"),
        }
        tracker.abort_all();
        for reactor in reactors {
            drop(reactor.handover);
            let _ = reactor.ended.await;
        }
        let _ = store_stop.send(true);
        let _ = store_task.await;
        trimmer.abort();
        let _ = trimmer.await;
        if let Some(reloader) = reloader {
            reloader.abort();
            let _ = reloader.await;
        }
        Ok(())
    }
}

/// Builds the server from `config` and serves `listeners` until `shutdown`
/// completes; `Err` says why it could not start.
pub async fn run(
    listeners: Vec<Listener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    Server::new(config)?.serve(listeners, shutdown).await
}

/// The start-up line: where the server listens, and its limits.
fn log_start(listeners: &[Listener], config: &Config, nofile: u64) {
    let addresses: Vec<String> = listeners.iter().map(Listener::address).collect();
    info!(
        addr = %addresses.first().map_or("", String::as_str),
        listeners = %addresses.join(","),
        nofile,
        timeout = config.timeout,
        history = config.history,
        history_age = config.history_age,
        max_message = config.max_message,
        max_memory = config.max_memory,
        max_batch_bytes = config.max_batch_bytes,
        write_timeout = config.write_timeout,
        cors_origin = %config.cors_origin,
        header_timeout = config.header_timeout,
        max_connections = config.max_connections,
        max_subscribers = config.max_subscribers,
        max_channels = config.max_channels,
        publish_token = config.publish_token.is_some(),
        admin_token = config.admin_token.is_some(),
        cluster = config.redis.is_some(),
        tls = config.tls_cert.is_some(),
        "listening"
    );
}

/// Reads the certificate files again on every `SIGHUP`; a connection
/// arriving after takes the new ones, those open keep theirs.
async fn reload_on_hangup(tls: Arc<Certificates>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP: certificates will not be reloaded");
        return;
    };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => info!("SIGHUP: certificates reloaded"),
            Err(err) => warn!(%err, "SIGHUP: certificates not reloaded; keeping the old ones"),
        }
    }
}

/// Hands freed heap pages back after many connections have closed, so the
/// resident size falls again once a crowd of subscribers has left, while
/// messages are being evicted, so what the memory bound frees is given back,
/// and after `stalled` HTTP/2 streams were reset with their queues.
async fn trim_memory(routes: Arc<Routes>, stalled: Arc<AtomicU64>) {
    let counters = routes.counters();
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    let mut closed_at_trim = 0;
    let mut evicted_at_trim = 0;
    let mut stalled_at_trim = 0;
    loop {
        tick.tick().await;
        // Open first: a connection accepted between the two loads then only
        // makes `accepted` larger, never the difference negative.
        let open = counters.connections.load(Relaxed);
        let closed = counters.accepted.load(Relaxed).saturating_sub(open);
        let evicted = routes.store().gauges().hub.evicted;
        let resets = stalled.load(Relaxed);
        if closed >= closed_at_trim + TRIM_AFTER_CLOSED
            || evicted > evicted_at_trim
            || resets > stalled_at_trim
        {
            crate::os::release_free_memory();
            closed_at_trim = closed;
            evicted_at_trim = evicted;
            stalled_at_trim = resets;
        }
    }
}

/// The connection tasks of every reactor: ended all at once after the grace
/// period, and awaited (without polling) until none is left.
#[derive(Debug, Default)]
struct Tracker {
    tasks: Mutex<Tasks>,
    empty: Notify,
}

#[derive(Debug, Default)]
struct Tasks {
    next: u64,
    running: HashMap<u64, AbortHandle>,
}

/// Takes a finished task off the tracker.
#[derive(Debug)]
struct Tracked(Arc<Tracker>, u64);

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut tasks = self.0.tasks();
        tasks.running.remove(&self.1);
        if tasks.running.is_empty() {
            self.0.empty.notify_waiters();
        }
    }
}

impl Tracker {
    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns on the current reactor the task `make` builds around the guard
    /// that untracks it. (The guard goes inside the task rather than the task
    /// inside a wrapper: a future moved into an `async` block and awaited there
    /// is held twice, and a connection's task is most of what it costs.)
    fn spawn<F>(self: &Arc<Self>, make: impl FnOnce(Tracked) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Locked across the spawn: the task cannot finish (and untrack itself)
        // before it is tracked.
        let mut tasks = self.tasks();
        let key = tasks.next;
        tasks.next += 1;
        let handle = tokio::spawn(make(Tracked(self.clone(), key)));
        tasks.running.insert(key, handle.abort_handle());
    }

    async fn wait_empty(&self) {
        loop {
            let empty = self.empty.notified();
            tokio::pin!(empty);
            empty.as_mut().enable();
            if self.tasks().running.is_empty() {
                return;
            }
            empty.await;
        }
    }

    fn abort_all(&self) {
        for handle in self.tasks().running.values() {
            handle.abort();
        }
    }
}

/// A new connection, handed to the reactor that will serve it.
type HandOver = (std::net::TcpStream, OpenConnection, bool);

/// Another reactor: where to send it connections, and how to know it ended.
#[derive(Debug)]
struct Reactor {
    handover: mpsc::UnboundedSender<HandOver>,
    ended: oneshot::Receiver<()>,
}

/// What every connection task needs, shared by all of them.
#[derive(Debug)]
struct Connections {
    routes: Arc<Routes>,
    builder: adapter::Builder,
    limits: lean::Limits,
    closing: Arc<Closing>,
    tracker: Arc<Tracker>,
    /// With `--tls-cert`: every connection is TLS; HTTP/1.1 on the lean path,
    /// HTTP/2 by hyper.
    tls: Option<Arc<Certificates>>,
}

impl Connections {
    /// Takes connections off `listeners` until `shutdown`, refusing those over
    /// `max_connections` and dealing the rest out to this reactor and the others.
    async fn accept_until(
        self: &Arc<Self>,
        listeners: &[Listener],
        read_only: &[bool],
        reactors: &[Reactor],
        max_connections: usize,
        shutdown: impl Future<Output = ()>,
    ) {
        let counters = self.routes.counters();
        let mut next_reactor = 0;
        tokio::pin!(shutdown);
        let mut first = 0;
        loop {
            let accepted = tokio::select! {
                accepted = accept(listeners, &mut first) => match accepted {
                    Ok((i, connection)) => (read_only[i], connection),
                    Err(err) => {
                        accept_failed(err).await;
                        continue;
                    }
                },
                _ = &mut shutdown => return,
            };
            let full = counters.connections.load(Relaxed) as usize >= max_connections;
            let (read_only, stream) = match accepted {
                (read_only, Connection::Tcp(stream)) => (read_only, stream),
                (_, Connection::Unix(_)) if full => {
                    debug!("connection limit: a Unix socket connection closed at once");
                    continue;
                }
                (read_only, Connection::Unix(stream)) => {
                    let open = OpenConnection::new(counters.clone());
                    self.spawn_unix(stream, open, read_only);
                    continue;
                }
            };
            if full {
                if self.tls.is_some() {
                    // No handshake for a connection refused: closed at once.
                    continue;
                }
                let answer = self.routes.refusal(&Error::ConnectionLimit);
                self.tracker.spawn(|tracked| async move {
                    lean::refuse(stream, answer).await;
                    drop(tracked);
                });
                continue;
            }
            let _ = stream.set_nodelay(true);
            let open = OpenConnection::new(counters.clone());
            // Round robin over this reactor (slot 0) and the others.
            next_reactor = (next_reactor + 1) % (reactors.len() + 1);
            if next_reactor == 0 {
                self.spawn(stream, open, read_only);
            } else {
                match stream.into_std() {
                    Ok(stream) => {
                        let _ = reactors[next_reactor - 1]
                            .handover
                            .send((stream, open, read_only));
                    }
                    Err(err) => debug!(cause = %err, "connection lost in hand-over"),
                }
            }
        }
    }

    /// Serves `stream` on the current reactor: the lean path first, hyper for
    /// what it hands over.
    fn spawn(self: &Arc<Self>, stream: TcpStream, open: OpenConnection, read_only: bool) {
        let this = self.clone();
        if let Some(tls) = &self.tls {
            let acceptor = tls.acceptor();
            self.tracker.spawn(|tracked| async move {
                // The handshake's state and the session each live on the heap:
                // the one is freed when it ends, and the other is not copied
                // into every future that serves the connection.
                let limit = this.limits.header_timeout;
                let handshake = Box::pin(tokio::time::timeout(limit, acceptor.accept(stream)));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(err)) => return debug!(cause = %err, "TLS handshake failed"),
                    Err(_) => return debug!("TLS handshake too slow"),
                };
                // HTTP/2 is hyper's; HTTP/1.1 takes the lean path, as in the clear.
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    this.hyper(stream, read_only).await;
                    drop((open, tracked));
                } else {
                    this.lean(stream, read_only, (open, tracked)).await;
                }
            });
            return;
        }
        self.tracker
            .spawn(|tracked| this.lean(stream, read_only, (open, tracked)));
    }

    /// Serves a connection on the lean HTTP/1.1 path, and with hyper from
    /// the request it hands over, if any; `held` (its count as open, its
    /// place in the tracker) goes when it ends. The task's future itself: a
    /// wrapper would keep a second copy of the socket for every connection.
    #[allow(clippy::manual_async_fn)] // see the block inside
    fn lean<S: lean::Socket>(
        self: Arc<Self>,
        stream: S,
        read_only: bool,
        held: (OpenConnection, Tracked),
    ) -> impl Future<Output = ()> + Send {
        // A block, not an `async fn`: those keep their arguments twice.
        async move {
            let next =
                lean::serve(stream, &self.routes, &self.limits, &self.closing, read_only).await;
            match next {
                lean::Next::Hyper(io) => Box::pin(self.serve_hyper(io, read_only)).await,
                lean::Next::Events(stream, answer, http10) => {
                    lean::stream_events(stream, answer, http10, &self.limits).await;
                }
                lean::Next::Closed => {}
            }
            drop(held);
        }
    }

    /// Serves a Unix socket connection (a proxy in front) on the current
    /// reactor, as a TCP one.
    fn spawn_unix(self: &Arc<Self>, stream: UnixStream, open: OpenConnection, read_only: bool) {
        let this = self.clone();
        self.tracker
            .spawn(|tracked| this.lean(stream, read_only, (open, tracked)));
    }

    /// Serves a connection hyper takes from its first byte (HTTP/2 over
    /// TLS), under the write timeout.
    fn hyper<S>(&self, stream: S, read_only: bool) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = lean::Rewind::wrap(stream, self.limits.write_timeout);
        Box::pin(self.serve_hyper(io, read_only))
    }

    /// Serves the rest of a connection with hyper, under the same header
    /// timeout and shutdown as the lean path.
    #[allow(clippy::manual_async_fn)] // see the block inside
    fn serve_hyper<S>(
        &self,
        io: lean::Rewind<S>,
        read_only: bool,
    ) -> impl Future<Output = ()> + Send + '_
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let serving = adapter::Serving {
            routes: self.routes.clone(),
            builder: &self.builder,
            closing: self.closing.clone(),
            idle: self.limits.header_timeout,
            read_only,
        };
        // A block, not an `async fn`, which would keep the connection twice.
        async move { adapter::serve(io, serving).await }
    }

    /// Starts another single-threaded reactor on its own thread (`--threads`); it
    /// serves the connections sent to it, sharing the store with all the others,
    /// until the acceptor drops its sender.
    fn reactor(self: Arc<Self>, index: usize) -> Option<Reactor> {
        let (handover, mut rx) = mpsc::unbounded_channel::<HandOver>();
        let (ended_tx, ended) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| error!(cause = %err, "cannot start a reactor"))
            .ok()?;
        let started = std::thread::Builder::new()
            .name(format!("comethub-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some((stream, open, read_only)) = rx.recv().await {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => self.spawn(stream, open, read_only),
                            Err(err) => debug!(cause = %err, "connection lost in hand-over"),
                        }
                    }
                });
                // Dropping the runtime ends what is left of its tasks.
                drop(runtime);
                let _ = ended_tx.send(());
            });
        match started {
            Ok(_) => Some(Reactor { handover, ended }),
            Err(err) => {
                error!(cause = %err, "cannot start a reactor thread");
                None
            }
        }
    }
}

/// Counts a connection as open for as long as it lives.
#[derive(Debug)]
struct OpenConnection(Arc<Counters>);

impl OpenConnection {
    fn new(counters: Arc<Counters>) -> Self {
        Counters::bump(&counters.accepted);
        Counters::bump(&counters.connections);
        OpenConnection(counters)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

/// The next connection on any of `listeners`, looking at them in turn from
/// `first` so that none is starved.
async fn accept(listeners: &[Listener], first: &mut usize) -> io::Result<(usize, Connection)> {
    if listeners.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for k in 0..listeners.len() {
            let i = (*first + k) % listeners.len();
            if let std::task::Poll::Ready(accepted) = listeners[i].poll_accept(cx) {
                *first = (i + 1) % listeners.len();
                return std::task::Poll::Ready(accepted.map(|c| (i, c)));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Connection errors are the peer's business; others (such as running out of
/// file descriptors) deserve a log line and a pause before accepting again.
async fn accept_failed(err: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    error!(cause = %err, "accept failed; pausing");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
