//! Binds the listener, accepts connections, serves HTTP/1 on each, and shuts down.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so the binary
//! passes SIGINT/SIGTERM and tests pass a channel. On shutdown it stops
//! accepting, answers every waiting subscriber (204 with its `X-Message-Id`),
//! lets the answers go out and closes the connections, within [`GRACE`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::hub::{Hub, HubConfig};
use crate::lean::{self, Next};
use crate::protocol::Ids;
use crate::service::Service;
use crate::stats::Counters;

/// Longest time shutdown waits for connections to finish.
pub const GRACE: Duration = Duration::from_millis(1500);
/// Connections that must close before freed memory is handed back.
const TRIM_AFTER_CLOSED: u64 = 256;
/// How long start-up waits for the link to Redis before serving anyway.
const CLUSTER_START: Duration = Duration::from_secs(3);
/// How often expired history is swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Binds a listener with SO_REUSEADDR and a deep accept backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
    let (hub, cluster) = match &config.redis {
        None => (Hub::new(HubConfig::from(&config)), None),
        Some(url) => {
            let hub = Hub::with_ids(HubConfig::from(&config), Ids::Stream);
            match Cluster::start(hub.clone(), url, &config) {
                Ok(cluster) => {
                    if !cluster.wait_up(CLUSTER_START).await {
                        warn!("redis not reachable yet; answering 503 until it is");
                    }
                    (hub, Some(cluster))
                }
                Err(err) => {
                    error!(%err, "cluster mode not started");
                    return;
                }
            }
        }
    };
    let service = Arc::new(Service::new(hub.clone(), cluster, &config));
    let max_connections = match config.max_connections {
        0 => crate::os::connections_for(crate::os::raise_nofile().unwrap_or(1024)),
        n => n,
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout())
        .max_buf_size(config.max_header_bytes as usize);
    let builder = Arc::new(builder);
    let limits = lean::Limits {
        header_timeout: config.header_timeout(),
        max_head: config.max_header_bytes as usize,
        max_body: crate::service::form_limit(config.max_message),
    };
    let graceful = GracefulShutdown::new();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let connections = Connections {
        service,
        builder,
        limits,
        stop,
    };
    let others: Vec<_> = (1..usize::from(config.threads))
        .filter_map(|i| connections.clone().reactor(i))
        .collect();
    let mut next_reactor = 0;

    let sweeper = tokio::spawn({
        let hub = hub.clone();
        async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            let mut closed_at_trim = 0;
            loop {
                tick.tick().await;
                hub.sweep();
                let c = &hub.counters;
                // Open first: a connection accepted between the two loads then
                // only makes `accepted` larger, never the difference negative.
                let open = c.connections.load(Relaxed);
                let closed = c.accepted.load(Relaxed).saturating_sub(open);
                if closed >= closed_at_trim + TRIM_AFTER_CLOSED {
                    crate::os::release_free_memory();
                    closed_at_trim = closed;
                }
            }
        }
    });

    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if hub.counters.connections.load(Relaxed) as usize >= max_connections {
            hub.counters.refused("connection_limit");
            warn!(limit = max_connections, "connection limit reached");
            tokio::spawn(refuse_connection(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(hub.clone());
        let watcher = graceful.watcher();
        // Round robin over this reactor (slot 0) and the others.
        next_reactor = (next_reactor + 1) % (others.len() + 1);
        if next_reactor == 0 {
            connections.spawn(stream, watcher, open);
        } else {
            match stream.into_std() {
                Ok(stream) => {
                    let _ = others[next_reactor - 1].send((stream, watcher, open));
                }
                Err(err) => debug!(cause = %err, "connection lost in hand-over"),
            }
        }
    }

    drop(listener);
    sweeper.abort();
    let _ = stop_tx.send(true);
    hub.close();
    let all_closed = async {
        graceful.shutdown().await;
        while hub.counters.connections.load(Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = all_closed => info!("all connections closed"),
        _ = tokio::time::sleep(GRACE) => warn!("grace period over; closing the rest"),
    }
}

/// A new connection, handed to the reactor that will serve it.
type HandOver = (std::net::TcpStream, Watcher, OpenConnection);

/// What every connection task needs; one per reactor.
#[derive(Debug, Clone)]
struct Connections {
    service: Arc<Service>,
    builder: Arc<http1::Builder>,
    limits: lean::Limits,
    stop: watch::Receiver<bool>,
}

impl Connections {
    /// Serves `stream` on the current reactor: the lean long-poll path first,
    /// hyper for the rest.
    fn spawn(&self, stream: TcpStream, watcher: Watcher, open: OpenConnection) {
        let this = self.clone();
        tokio::spawn(async move {
            let Connections {
                service,
                builder,
                limits,
                stop,
            } = this;
            if let Next::Hyper(io) = lean::serve(stream, &service, &limits, stop).await {
                Box::pin(serve_hyper(io, service, &builder, watcher)).await;
            }
            drop(open);
        });
    }

    /// Starts another single-threaded reactor on its own thread (`--threads`); it
    /// serves the connections sent to it, sharing the hub with all the others.
    fn reactor(self, index: usize) -> Option<mpsc::UnboundedSender<HandOver>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<HandOver>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| error!(cause = %err, "cannot start a reactor"))
            .ok()?;
        let started = std::thread::Builder::new()
            .name(format!("comethub-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some((stream, watcher, open)) = rx.recv().await {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => self.spawn(stream, watcher, open),
                            Err(err) => debug!(cause = %err, "connection lost in hand-over"),
                        }
                    }
                    // The acceptor is gone: keep serving until the process ends.
                    std::future::pending::<()>().await;
                });
            });
        match started {
            Ok(_) => Some(tx),
            Err(err) => {
                error!(cause = %err, "cannot start a reactor thread");
                None
            }
        }
    }
}

/// Serves the rest of a connection with hyper.
async fn serve_hyper(
    io: lean::Rewind,
    service: Arc<Service>,
    builder: &http1::Builder,
    watcher: Watcher,
) {
    let conn = builder.serve_connection(
        TokioIo::new(io),
        service_fn(move |req| service.clone().handle(req)),
    );
    if let Err(err) = watcher.watch(conn).await {
        debug!(cause = %err, "connection ended with an error");
    }
}

/// Counts a connection as open for as long as it lives.
#[derive(Debug)]
struct OpenConnection(Arc<Hub>);

impl OpenConnection {
    fn new(hub: Arc<Hub>) -> Self {
        Counters::bump(&hub.counters.accepted);
        Counters::bump(&hub.counters.connections);
        OpenConnection(hub)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.counters.connections.fetch_sub(1, Relaxed);
    }
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

/// Past the connection limit: a plain 503 and a close, without parsing anything.
async fn refuse_connection(mut stream: TcpStream) {
    const BODY: &str = "{\"error\":\"too many connections: try again later\"}\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         access-control-allow-origin: *\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}
