//! Load generator for comethub (and, for comparison, Nchan), over raw loopback TCP.
//!
//! ```text
//! cargo bench --bench loadgen -- fanout --addr 127.0.0.1:8000 --pid PID --subscribers 10000 --rounds 5
//! cargo bench --bench loadgen -- cycle  --addr 127.0.0.1:8000 --subscribers 100 --messages 20000 [--json]
//! ```
//! cargo bench --bench loadgen -- latency --addr 127.0.0.1:8000 --messages 5000
//! ```
//! `--addr` and `--pid` may be repeated (cluster mode): subscribers are spread
//! over the addresses in turn, publishes go to the first, and CPU and RSS are
//! summed over the processes (instances and Redis).
//! ```text
//! cargo bench --bench loadgen -- fanout --addr A --addr B --pid PA --pid PB --pid PREDIS ...
//! ```
//! `--server nchan` switches paths and resume headers to an Nchan long-poll
//! location (`/sub/CHANNEL`, `/pub/CHANNEL`); `--server nchan-multipart` to its
//! batching location (`/subm/CHANNEL`, `nchan_longpoll_multipart_response on`),
//! whose answers carry every waiting message as parts of one multipart body.
//! `--token JWT` adds `&token=JWT` to every comethub subscribe and publish.
//! `--members` makes each comethub subscriber a presence member of its own
//! (`&client=mN`), for a server run with `--presence`.
//! `watch` parks `--subscribers` long-polls on one instance (from `--bind IP`
//! if given), prints `READY`, and waits for one message published by someone
//! else whose data is its publish time (microseconds since the epoch); it
//! reports how many got it and how long after the publish the last one did
//! (benches/scale.sh runs several against several instances).
//! Every run is bounded in count and time and talks only to the address given
//! (use loopback).
//!
//! - fanout: N subscribers wait on one channel (or, with `--channel a,b,c,d`,
//!   each on all of them in one request, publishes going to each in turn); one
//!   32-byte message is published; reports the time until each has it (p50,
//!   p99, all), the server's CPU time for the round and for parking the
//!   subscribers' polls before it (from /proc/PID/task/*/schedstat), and its RSS growth
//!   per waiting subscriber.
//! - cycle: K subscribers re-poll with their last id while M messages are
//!   published (`--publishers P` connections at once, each in its own order);
//!   reports deliveries per second, messages lost, duplicated and out of their
//!   publisher's order.
//! - fanout-h2: the fan-out with the subscribers as HTTP/2 streams (prior
//!   knowledge in the clear, or ALPN `h2` with `--tls`), `--connections C`
//!   connections sharing them.
//!
//! Transports (fanout and fanout-h2): `--tls CERT.pem` speaks TLS to the
//! server (name `localhost`, the certificate as the one trusted root), to
//! subscribers and publisher alike; `--sse` makes each fanout subscriber one
//! event stream (`/events`, Nchan's `/ev/CHANNEL`) that reads a message a
//! round instead of re-polling; `--publish-addr IP:PORT` publishes there, in
//! the clear (an Nchan listener other than the subscribers').
//! - latency: M publishes one after another on one connection, no subscribers;
//!   reports the round trip of each (p50, p99).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const MESSAGE_LEN: usize = 32;
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Comethub,
    Nchan,
    NchanMultipart,
}

#[derive(Clone, Debug)]
struct Opts {
    mode: String,
    addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    pids: Vec<u32>,
    subscribers: usize,
    /// fanout-h2: HTTP/2 connections the subscribers' streams share.
    connections: usize,
    rounds: usize,
    messages: usize,
    publishers: usize,
    json: bool,
    kind: Kind,
    channel: String,
    /// `&token=…` added to every comethub subscribe and publish.
    token: String,
    /// watch: the local address subscribers connect from.
    bind: Option<std::net::IpAddr>,
    /// Each subscriber a presence member (`&client=mN`).
    members: bool,
    /// TLS to the server, trusting this certificate.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Subscribers are event streams.
    sse: bool,
    /// Where publishes go, in the clear, if not to `addr`.
    publish_addr: Option<SocketAddr>,
}

fn parse_args() -> Opts {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut o = Opts {
        mode: args.next().unwrap_or_else(|| "fanout".into()),
        addr: "127.0.0.1:8000".parse().expect("addr"),
        addrs: Vec::new(),
        pids: Vec::new(),
        subscribers: 1000,
        connections: 100,
        rounds: 5,
        messages: 10_000,
        publishers: 1,
        json: false,
        kind: Kind::Comethub,
        channel: "bench".into(),
        token: String::new(),
        bind: None,
        members: false,
        tls: None,
        sse: false,
        publish_addr: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--addr" => o.addrs.push(value().parse().expect("--addr IP:PORT")),
            "--pid" => o.pids.push(value().parse().expect("--pid N")),
            "--subscribers" => o.subscribers = value().parse().expect("--subscribers N"),
            "--rounds" => o.rounds = value().parse().expect("--rounds N"),
            "--messages" => o.messages = value().parse().expect("--messages N"),
            "--publishers" => o.publishers = value().parse().expect("--publishers N"),
            "--channel" => o.channel = value(),
            "--token" => o.token = format!("&token={}", value()),
            "--bind" => o.bind = Some(value().parse().expect("--bind IP")),
            "--json" => o.json = true,
            "--members" => o.members = true,
            "--sse" => o.sse = true,
            "--tls" => o.tls = Some(trusting(&value())),
            "--publish-addr" => {
                o.publish_addr = Some(value().parse().expect("--publish-addr IP:PORT"));
            }
            "--connections" => o.connections = value().parse().expect("--connections N"),
            "--server" => {
                o.kind = match value().as_str() {
                    "nchan" => Kind::Nchan,
                    "nchan-multipart" => Kind::NchanMultipart,
                    _ => Kind::Comethub,
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    if let Some(first) = o.addrs.first() {
        o.addr = *first;
    } else {
        o.addrs.push(o.addr);
    }
    o
}

/// A parsed HTTP response.
#[derive(Debug, Default)]
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Reads one response (Content-Length or chunked) from a keep-alive connection.
async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Resp> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let headers: HashMap<String, String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let start = end + 4;
            if headers
                .get("transfer-encoding")
                .is_some_and(|v| v.contains("chunked"))
            {
                let mut body = Vec::new();
                let mut pos = start;
                loop {
                    while find(&buf[pos..], b"\r\n").is_none() {
                        fill(s, buf).await?;
                    }
                    let line_end = pos + find(&buf[pos..], b"\r\n").unwrap_or(0);
                    let size = usize::from_str_radix(
                        String::from_utf8_lossy(&buf[pos..line_end]).trim(),
                        16,
                    )
                    .unwrap_or(0);
                    while buf.len() < line_end + 2 + size + 2 {
                        fill(s, buf).await?;
                    }
                    body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                    pos = line_end + 2 + size + 2;
                    if size == 0 {
                        break;
                    }
                }
                buf.drain(..pos);
                return Ok(Resp {
                    status,
                    headers,
                    body,
                });
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < start + len {
                fill(s, buf).await?;
            }
            let body = buf[start..start + len].to_vec();
            buf.drain(..start + len);
            return Ok(Resp {
                status,
                headers,
                body,
            });
        }
        fill(s, buf).await?;
    }
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// A connection to the server, in the clear or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

/// A TLS client configuration whose one trusted root is the certificate in
/// `pem` (the benchmark's self-signed one).
fn trusting(pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).expect("--tls CERT.pem") {
        roots.add(cert.expect("a PEM certificate")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Connects to `addr`, over TLS with ALPN `alpn` if `o.tls` says so.
async fn connect(o: &Opts, addr: SocketAddr, alpn: &[u8]) -> Conn {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).ok();
    let Some(tls) = &o.tls else {
        return Box::new(s);
    };
    let mut config = (**tls).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, s)
        .await
        .expect("TLS handshake");
    Box::new(s)
}

/// Reads an event stream until one more message frame (`data:`) has come
/// whole, and drops what it read.
async fn next_event<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        if let Some(data) = find(buf, b"\ndata:")
            && let Some(end) = find(&buf[data..], b"\n\n")
        {
            buf.drain(..data + end + 2);
            return Ok(());
        }
        fill(s, buf).await?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where a subscriber resumes from, in the server's own terms.
#[derive(Clone, Debug, Default)]
struct Cursor {
    id: Option<String>,
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Cursor {
    fn update(&mut self, r: &Resp) {
        if let Some(v) = r.headers.get("x-message-id") {
            self.id = Some(v.clone());
        }
        if let Some(v) = r.headers.get("etag") {
            self.etag = Some(v.clone());
        }
        if let Some(v) = r.headers.get("last-modified") {
            self.last_modified = Some(v.clone());
        }
    }
}

fn subscribe_request(o: &Opts, cursor: &Cursor, who: usize) -> String {
    match o.kind {
        Kind::Comethub => {
            let member = match o.members {
                true => format!("&client=m{who}"),
                false => String::new(),
            };
            let since = cursor
                .id
                .as_deref()
                .map(|id| format!("&since={id}"))
                .unwrap_or_default();
            let format = if o.json { "&format=json" } else { "" };
            format!(
                "GET /subscribe?channel={}{since}{format}{}{member} HTTP/1.1\r\nHost: x\r\n\r\n",
                o.channel, o.token
            )
        }
        Kind::Nchan | Kind::NchanMultipart => {
            let mut extra = String::new();
            if let Some(v) = &cursor.last_modified {
                extra.push_str(&format!("If-Modified-Since: {v}\r\n"));
            }
            if let Some(v) = &cursor.etag {
                extra.push_str(&format!("If-None-Match: {v}\r\n"));
            }
            let location = if o.kind == Kind::Nchan { "sub" } else { "subm" };
            format!(
                "GET /{location}/{} HTTP/1.1\r\nHost: x\r\n{extra}\r\n",
                o.channel
            )
        }
    }
}

/// Opens a subscriber's event stream.
fn stream_request(o: &Opts) -> String {
    let path = match o.kind {
        Kind::Comethub => format!("/events?channel={}{}", o.channel, o.token),
        Kind::Nchan | Kind::NchanMultipart => format!("/ev/{}", o.channel),
    };
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
}

fn publish_request(o: &Opts, seq: usize) -> Vec<u8> {
    let mut body = format!("m{seq:08}").into_bytes();
    body.resize(MESSAGE_LEN, b'.');
    let path = match o.kind {
        Kind::Comethub => {
            // Several channels (`--channel a,b,c`): publishes go to each in turn.
            let channels: Vec<&str> = o.channel.split(',').collect();
            let channel = channels[seq % channels.len()];
            format!("/publish?channel={channel}{}", o.token)
        }
        Kind::Nchan | Kind::NchanMultipart => format!("/pub/{}", o.channel),
    };
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

/// The sequence numbers a response carries (one, or a JSON batch).
fn sequences(o: &Opts, r: &Resp) -> Vec<usize> {
    let parse = |data: &[u8]| -> Option<usize> {
        let text = std::str::from_utf8(data).ok()?;
        text.get(1..9)?.parse().ok()
    };
    if o.json && o.kind == Kind::Comethub {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        v["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| parse(m["data"].as_str().unwrap_or_default().as_bytes()))
                    .collect()
            })
            .unwrap_or_default()
    } else if o.kind == Kind::NchanMultipart {
        multipart(r).iter().filter_map(|part| parse(part)).collect()
    } else {
        parse(&r.body).into_iter().collect()
    }
}

/// The parts' bodies of a `multipart/mixed` answer (a plain answer is one part).
fn multipart(r: &Resp) -> Vec<&[u8]> {
    let boundary = r
        .headers
        .get("content-type")
        .and_then(|ct| ct.split("boundary=").nth(1))
        .map(|b| format!("--{}", b.trim_matches('"')));
    let Some(boundary) = boundary else {
        return vec![&r.body];
    };
    let mut parts = Vec::new();
    let mut rest = &r.body[..];
    while let Some(at) = find(rest, boundary.as_bytes()) {
        rest = &rest[at + boundary.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let body = &rest[head_end + 4..];
        let end = find(body, boundary.as_bytes()).unwrap_or(body.len());
        parts.push(body[..end].strip_suffix(b"\r\n").unwrap_or(&body[..end]));
    }
    parts
}

/// CPU time of all of `pids`, in ms.
fn cpu_ms(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_ms_of(p)).sum()
}

/// Resident memory of all of `pids`, in KiB.
fn rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_kib_of(p)).sum()
}

/// CPU time of a process: the time its threads ran, in nanoseconds, from
/// `/proc/PID/task/*/schedstat`; where the kernel keeps none, user + system
/// time from `/proc/PID/stat`, in 10 ms clock ticks (one tick is about a
/// tenth of a 10,000-subscriber fan-out round, too coarse to compare two).
fn cpu_ms_of(pid: u32) -> Option<f64> {
    let ran = |task: std::fs::DirEntry| -> Option<u64> {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        stat.split_whitespace().next()?.parse().ok()
    };
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let ns: Option<u64> = tasks.map(|t| ran(t.ok()?)).sum();
        if let Some(ns) = ns {
            return Some(ns as f64 / 1e6);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1000.0 / 100.0)
}

fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

async fn publish(o: &Opts, seq: usize) -> Resp {
    let mut s: Conn = match o.publish_addr {
        Some(addr) => Box::new(TcpStream::connect(addr).await.expect("publisher connect")),
        None => connect(o, o.addr, b"http/1.1").await,
    };
    s.write_all(&publish_request(o, seq))
        .await
        .expect("publish write");
    s.flush().await.expect("publish write");
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf)
        .await
        .expect("publish answer")
}

/// Publishes message `seq` on the keep-alive connection `s`.
async fn publish_on(o: &Opts, s: &mut TcpStream, buf: &mut Vec<u8>, seq: usize) {
    s.write_all(&publish_request(o, seq))
        .await
        .expect("publish");
    let r = read_response(s, buf).await.expect("publish answer");
    assert!(r.status < 300, "publish answered {}", r.status);
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn fanout(o: Opts) {
    let rss0 = rss_kib(&o.pids);
    let mut conns = Vec::with_capacity(o.subscribers);
    for i in 0..o.subscribers {
        let mut s = connect(&o, o.addrs[i % o.addrs.len()], b"http/1.1").await;
        if o.sse {
            s.write_all(stream_request(&o).as_bytes())
                .await
                .expect("open an event stream");
            s.flush().await.expect("open an event stream");
        }
        conns.push((s, Vec::new(), Cursor::default()));
    }
    println!(
        "fanout: {} {} over {} address(es){}, {} rounds, {MESSAGE_LEN}-byte messages, server {:?}",
        o.subscribers,
        if o.sse { "event streams" } else { "long-polls" },
        o.addrs.len(),
        if o.tls.is_some() { " over TLS" } else { "" },
        o.rounds,
        o.kind
    );
    let mut tally = Tally::default();
    for round in 0..o.rounds {
        let park0 = cpu_ms(&o.pids);
        if !o.sse {
            for (who, (s, _, cursor)) in conns.iter_mut().enumerate() {
                s.write_all(subscribe_request(&o, cursor, who).as_bytes())
                    .await
                    .expect("subscribe");
                // A TLS session may hold the request back until flushed.
                s.flush().await.expect("subscribe");
            }
        }
        let cpu0 = tally.parked(&o, round, rss0, park0).await;
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let sse = o.sse;
        for (mut s, mut buf, mut cursor) in conns.drain(..) {
            tasks.spawn(async move {
                if sse {
                    next_event(&mut s, &mut buf).await.expect("an event");
                } else {
                    let r = read_response(&mut s, &mut buf)
                        .await
                        .expect("subscriber answer");
                    assert_eq!(r.status, 200, "subscriber got {}", r.status);
                    cursor.update(&r);
                }
                let at = t0.elapsed();
                (s, buf, cursor, at)
            });
        }
        let answer = publish(&o, round).await;
        assert!(answer.status < 300, "publish answered {}", answer.status);
        let mut lat = Vec::with_capacity(o.subscribers);
        while let Some(done) = tokio::time::timeout(DEADLINE, tasks.join_next())
            .await
            .expect("round in time")
        {
            let (s, buf, cursor, at) = done.expect("task");
            lat.push(at.as_secs_f64() * 1000.0);
            conns.push((s, buf, cursor));
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let all = lat.last().copied().unwrap_or(f64::NAN);
        let cpu = tally.round(&o, cpu0, all).await;
        println!(
            "round {round}: p50 {:.1} ms, p99 {:.1} ms, all {:.1} ms, server cpu {}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            all,
            cpu.map_or("n/a".into(), |c| format!("{c:.0} ms"))
        );
    }
    println!(
        "RESULT fanout subscribers={} {}",
        o.subscribers,
        tally.result(o.subscribers)
    );
}

/// What a fan-out measures, round by round: the server's CPU for parking the
/// re-polls and for the round, the time until every subscriber had the
/// message, and (first round) its RSS growth per waiting subscriber.
#[derive(Default)]
struct Tally {
    park: Vec<f64>,
    round: Vec<f64>,
    all_ms: Vec<f64>,
    rss_per_subscriber: Option<f64>,
    /// The same, waiting again after the earlier rounds' deliveries.
    rss_after: Option<f64>,
}

impl Tally {
    /// Lets every re-poll reach the server and park, then notes what that
    /// cost since `park0` (and, in round 0, the RSS grown since `rss0`);
    /// returns the CPU reading the round starts from.
    async fn parked(
        &mut self,
        o: &Opts,
        round: usize,
        rss0: Option<u64>,
        park0: Option<f64>,
    ) -> Option<f64> {
        tokio::time::sleep(Duration::from_millis(500 + o.subscribers as u64 / 10)).await;
        if let (Some(a), Some(b)) = (rss0, rss_kib(&o.pids)) {
            let grown = Some(b.saturating_sub(a) as f64 * 1024.0 / o.subscribers as f64);
            match round {
                0 => self.rss_per_subscriber = grown,
                _ => self.rss_after = grown,
            }
        }
        let cpu0 = cpu_ms(&o.pids);
        if let Some(park) = cpu0.zip(park0).map(|(b, a)| b - a) {
            self.park.push(park);
        }
        cpu0
    }

    /// Notes a round that took `all_ms` until everyone had the message;
    /// returns its server CPU since `cpu0`.
    async fn round(&mut self, o: &Opts, cpu0: Option<f64>, all_ms: f64) -> Option<f64> {
        // Give the server a moment to finish its bookkeeping before reading its CPU.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let cpu = cpu_ms(&o.pids).zip(cpu0).map(|(b, a)| b - a);
        self.all_ms.push(all_ms);
        self.round.extend(cpu);
        cpu
    }

    /// The medians, as the RESULT line gives them, and the server CPU per
    /// delivery (parking the re-poll plus answering it) over every round
    /// after the first, which also connects and creates the channels. Summed
    /// over many rounds, it is not bounded by the kernel's 10 ms CPU tick as
    /// one round's figure is.
    fn result(mut self, subscribers: usize) -> String {
        let later = |v: &[f64]| v.iter().skip(1).sum::<f64>();
        let deliveries = (self.round.len().saturating_sub(1) * subscribers) as f64;
        let per_delivery = (later(&self.park) + later(&self.round)) * 1000.0 / deliveries;
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            percentile(v, 0.5)
        };
        format!(
            "cpu_us_per_delivery={per_delivery:.2} all_ms_median={:.1} cpu_ms_median={:.1} park_cpu_ms_median={:.1} rss_bytes_per_subscriber={} rss_kept_after_deliveries_bytes_per_subscriber={}",
            median(&mut self.all_ms),
            median(&mut self.round),
            median(&mut self.park),
            self.rss_per_subscriber
                .map_or("n/a".into(), |v| format!("{v:.0}")),
            self.rss_after.zip(self.rss_per_subscriber).map_or(
                "n/a".into(),
                |(after, first)| format!("{:.0}", after - first)
            )
        )
    }
}

async fn cycle(o: Opts) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.subscribers {
        let o = o.clone();
        let stop = stop.clone();
        let mut s = TcpStream::connect(o.addrs[i % o.addrs.len()])
            .await
            .expect("subscriber connect");
        s.set_nodelay(true).ok();
        tasks.spawn(async move {
            let mut buf = Vec::new();
            let mut cursor = Cursor::default();
            let mut got = Vec::new();
            let mut last_at = Instant::now();
            loop {
                s.write_all(subscribe_request(&o, &cursor, i).as_bytes())
                    .await
                    .expect("subscribe");
                let r = match tokio::time::timeout(
                    Duration::from_secs(3),
                    read_response(&mut s, &mut buf),
                )
                .await
                {
                    Ok(r) => r.expect("answer"),
                    Err(_) if stop.load(Ordering::SeqCst) => return (got, last_at),
                    Err(_) => continue,
                };
                cursor.update(&r);
                if r.status == 200 {
                    got.extend(sequences(&o, &r));
                    last_at = Instant::now();
                    if got.len() >= o.messages {
                        return (got, last_at);
                    }
                } else if r.status == 204 || r.status == 304 || r.status == 408 {
                    if stop.load(Ordering::SeqCst) {
                        return (got, last_at);
                    }
                } else {
                    panic!("subscriber got {}", r.status);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500 + o.subscribers as u64)).await;
    let t0 = Instant::now();
    let cpu0 = cpu_ms(&o.pids);
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..o.publishers.max(1) {
        let o = o.clone();
        publishers.spawn(async move {
            let mut s = TcpStream::connect(o.addr).await.expect("publisher connect");
            s.set_nodelay(true).ok();
            let mut buf = Vec::new();
            for seq in (p..o.messages).step_by(o.publishers.max(1)) {
                publish_on(&o, &mut s, &mut buf, seq).await;
            }
        });
    }
    while let Some(done) = publishers.join_next().await {
        done.expect("publisher");
    }
    stop.store(true, Ordering::SeqCst);
    let mut delivered = 0usize;
    let mut lost = 0usize;
    let mut dups = 0usize;
    let mut disordered = 0usize;
    let mut end = t0;
    while let Some(done) = tokio::time::timeout(DEADLINE, tasks.join_next())
        .await
        .expect("cycle in time")
    {
        let (got, last_at) = done.expect("task");
        end = end.max(last_at);
        delivered += got.len();
        let mut seen = vec![false; o.messages];
        // Each publisher's messages must arrive in its order.
        let p = o.publishers.max(1);
        let mut last = vec![None; p];
        for &seq in &got {
            let slot = &mut last[seq % p];
            disordered += usize::from(slot.is_some_and(|l| l >= seq));
            *slot = Some(seq);
        }
        for &seq in &got {
            if seq < o.messages {
                dups += usize::from(seen[seq]);
                seen[seq] = true;
            }
        }
        lost += seen.iter().filter(|s| !**s).count();
    }
    let secs = end.duration_since(t0).as_secs_f64();
    let cpu = cpu_ms(&o.pids).zip(cpu0).map(|(b, a)| b - a);
    println!(
        "RESULT cycle subscribers={} messages={} publishers={} json={} deliveries_per_s={:.0} lost={lost} duplicates={dups} disordered={disordered} seconds={secs:.2} server_cpu_ms={}",
        o.subscribers,
        o.messages,
        o.publishers,
        o.json,
        delivered as f64 / secs,
        cpu.map_or("n/a".into(), |c| format!("{c:.0}"))
    );
}

async fn latency(o: Opts) {
    let mut s = TcpStream::connect(o.addr).await.expect("publisher connect");
    s.set_nodelay(true).ok();
    let mut buf = Vec::new();
    let mut lat = Vec::with_capacity(o.messages);
    let cpu0 = cpu_ms(&o.pids);
    let t0 = Instant::now();
    for seq in 0..o.messages {
        let t = Instant::now();
        publish_on(&o, &mut s, &mut buf, seq).await;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(t0.elapsed() < DEADLINE, "latency run over its deadline");
    }
    let cpu = cpu_ms(&o.pids).zip(cpu0).map(|(b, a)| b - a);
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "RESULT latency messages={} p50_us={:.0} p99_us={:.0} server_cpu_us_per_publish={}",
        o.messages,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        cpu.map_or("n/a".into(), |c| format!(
            "{:.1}",
            c * 1000.0 / o.messages as f64
        ))
    );
}

/// The fan-out over HTTP/2 in the clear: the subscribers are streams spread
/// over `--connections` connections (prior knowledge), each re-polling with
/// its last id; reports as `fanout` does.
async fn fanout_h2(o: Opts) {
    use http_body_util::{BodyExt, Empty};
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let rss0 = rss_kib(&o.pids);
    let mut senders = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        let s = connect(&o, o.addr, b"h2").await;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(s))
            .await
            .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        senders.push(sender);
    }
    println!(
        "fanout-h2: {} subscribers as streams on {} connections, {} rounds",
        o.subscribers, o.connections, o.rounds
    );
    let mut cursors: Vec<Cursor> = vec![Cursor::default(); o.subscribers];
    let mut tally = Tally::default();
    for round in 0..o.rounds {
        let park0 = cpu_ms(&o.pids);
        let mut tasks = tokio::task::JoinSet::new();
        let t0 = Arc::new(std::sync::Mutex::new(None::<Instant>));
        for (i, cursor) in cursors.iter().enumerate() {
            let mut sender = senders[i % senders.len()].clone();
            let scheme = if o.tls.is_some() { "https" } else { "http" };
            let mut req = match o.kind {
                Kind::Comethub => {
                    let since = cursor
                        .id
                        .as_deref()
                        .map(|id| format!("&since={id}"))
                        .unwrap_or_default();
                    hyper::Request::get(format!(
                        "{scheme}://localhost/subscribe?channel={}{since}{}",
                        o.channel, o.token
                    ))
                }
                Kind::Nchan | Kind::NchanMultipart => {
                    hyper::Request::get(format!("{scheme}://localhost/sub/{}", o.channel))
                }
            };
            if let Some(v) = &cursor.last_modified {
                req = req.header("if-modified-since", v);
            }
            if let Some(v) = &cursor.etag {
                req = req.header("if-none-match", v);
            }
            let t0 = t0.clone();
            let mut cursor = cursor.clone();
            tasks.spawn(async move {
                let req = req.body(Empty::new()).expect("request");
                let resp = sender.send_request(req).await.expect("h2 answer");
                let at = t0.lock().ok().and_then(|t| *t).map(|t| t.elapsed());
                assert_eq!(resp.status(), 200, "subscriber got {}", resp.status());
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                cursor.id = header("x-message-id").or(cursor.id);
                cursor.etag = header("etag").or(cursor.etag);
                cursor.last_modified = header("last-modified").or(cursor.last_modified);
                let _ = resp.into_body().collect().await;
                (i, cursor, at)
            });
        }
        let cpu0 = tally.parked(&o, round, rss0, park0).await;
        let start = Instant::now();
        if let Ok(mut t) = t0.lock() {
            *t = Some(start);
        }
        let answer = publish(&o, round).await;
        assert!(answer.status < 300, "publish answered {}", answer.status);
        let mut last = 0.0f64;
        while let Some(done) = tokio::time::timeout(DEADLINE, tasks.join_next())
            .await
            .expect("round in time")
        {
            let (i, cursor, at) = done.expect("task");
            cursors[i] = cursor;
            last = last.max(at.unwrap_or_default().as_secs_f64() * 1000.0);
        }
        let cpu = tally.round(&o, cpu0, last).await;
        println!(
            "round {round}: all {last:.1} ms, server cpu {}",
            cpu.map_or("n/a".into(), |c| format!("{c:.0} ms"))
        );
    }
    println!(
        "RESULT fanout-h2 subscribers={} connections={} {}",
        o.subscribers,
        o.connections,
        tally.result(o.subscribers)
    );
}

/// Microseconds since the epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn watch(o: Opts) {
    let mut conns = Vec::with_capacity(o.subscribers);
    for _ in 0..o.subscribers {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(ip) = o.bind {
            socket.bind(SocketAddr::new(ip, 0)).expect("bind --bind");
        }
        let mut s = socket.connect(o.addr).await.expect("subscriber connect");
        s.set_nodelay(true).ok();
        let request = format!(
            "GET /subscribe?channel={}&timeout=600 HTTP/1.1\r\nHost: x\r\n\r\n",
            o.channel
        );
        s.write_all(request.as_bytes()).await.expect("subscribe");
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500 + o.subscribers as u64 / 10)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in conns {
        tasks.spawn(async move {
            let mut buf = Vec::new();
            let r = read_response(&mut s, &mut buf).await.ok()?;
            let at = now_us();
            let sent: u64 = std::str::from_utf8(&r.body).ok()?.trim().parse().ok()?;
            (r.status == 200).then(|| at.saturating_sub(sent))
        });
    }
    println!("READY");
    let mut after = Vec::with_capacity(o.subscribers);
    while let Some(done) = tokio::time::timeout(DEADLINE * 5, tasks.join_next())
        .await
        .ok()
        .flatten()
    {
        if let Ok(Some(us)) = done {
            after.push(us as f64 / 1000.0);
        }
    }
    after.sort_by(|a, b| a.total_cmp(b));
    println!(
        "RESULT watch subscribers={} received={} median_ms={:.1} last_ms={:.1}",
        o.subscribers,
        after.len(),
        percentile(&after, 0.5),
        after.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    let opts = parse_args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        match opts.mode.as_str() {
            "fanout" => fanout(opts).await,
            "cycle" => cycle(opts).await,
            "latency" => latency(opts).await,
            "fanout-h2" => fanout_h2(opts).await,
            "watch" => watch(opts).await,
            other => panic!("unknown mode {other}: use fanout, fanout-h2, cycle, latency or watch"),
        }
    });
}
