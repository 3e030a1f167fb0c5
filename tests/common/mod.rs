//! Test helpers: start the real `comethub` binary on port 0 and speak HTTP to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Every awaited step of a test is bounded by this.
pub const STEP: Duration = Duration::from_secs(20);

/// Polls `stats` (a server's `/stats`, however it is asked) until `field`
/// equals `value`, or panics after `STEP`.
pub async fn wait_for_stat_of<F, S>(stats: F, field: &str, value: u64)
where
    F: Fn() -> S,
    S: std::future::Future<Output = serde_json::Value>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let stats = stats().await;
        if stats[field] == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{field} stayed at {} (want {value})",
            stats[field]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A file or directory in the temp directory, named for this test process,
/// removed when dropped, so that a run leaves nothing behind.
#[derive(Debug)]
pub struct Temp(std::path::PathBuf);

impl Temp {
    /// `comethub-NAME-PID` followed by `ext`, with nothing there yet.
    pub fn path(name: &str, ext: &str) -> Temp {
        let name = format!("comethub-{name}-{}{ext}", std::process::id());
        let temp = Temp(std::env::temp_dir().join(name));
        temp.clear();
        temp
    }

    /// A fresh directory `comethub-NAME-PID`.
    pub fn dir(name: &str) -> Temp {
        let temp = Temp::path(name, "");
        std::fs::create_dir_all(&temp.0).expect("temp dir");
        temp
    }

    fn clear(&self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Temp {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Temp {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Temp {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A running server process, killed on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
    /// Every log line the server has written since it listened.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The binary, with none of the settings the environment may carry.
pub fn comethub() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comethub"));
    for var in [
        "COMETHUB_PUBLISH_TOKEN",
        "COMETHUB_ADMIN_TOKEN",
        "COMETHUB_JWT_KEY",
        "COMETHUB_CONFIG",
        "COMETHUB_REDIS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

impl Server {
    /// Starts the binary with extra flags and waits for its "listening" line.
    pub fn start(args: &[&str]) -> Server {
        // COMETHUB_TEST_THREADS=N runs every test's server on N reactors.
        let threads = std::env::var("COMETHUB_TEST_THREADS")
            .ok()
            .filter(|_| !args.contains(&"--threads"));
        let threads = threads.iter().flat_map(|n| ["--threads", n.as_str()]);
        let mut cmd = comethub();
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(threads)
            .args(args);
        Server::spawn(cmd)
    }

    /// Starts `cmd` (which runs the binary, its environment as the caller
    /// set it) and waits for its "listening" line.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start comethub");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("read log");
            // Text logs say addr=IP:PORT, JSON logs "addr":"IP:PORT".
            let rest = line
                .split("addr=")
                .nth(1)
                .or_else(|| line.split("\"addr\":\"").nth(1));
            if let Some(rest) = rest {
                let addr = rest.split(|c: char| c.is_whitespace() || c == '"').next();
                break addr.expect("addr value").parse().expect("socket address");
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Server { addr, child, log }
    }

    /// Log lines so far that contain `text`.
    pub fn log_lines(&self, text: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// A new keep-alive client connection.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// One request on a fresh connection.
    pub async fn get(&self, path: &str) -> Resp {
        self.client().await.get(path).await
    }

    /// `GET /stats` as JSON.
    pub async fn stats(&self) -> serde_json::Value {
        self.get("/stats").await.json()
    }

    /// Starts the binary on the Redis at `url` (any `--redis` form) with
    /// extra flags, and waits until `/health` says it can serve.
    pub async fn on_redis(url: &str, extra: &[&str]) -> Server {
        let mut args = vec!["--redis", url];
        args.extend_from_slice(extra);
        let server = Server::start(&args);
        server.wait_ready().await;
        server
    }

    /// Waits until `/health` answers `200`.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + STEP;
        while self.get("/health").await.status != 200 {
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every message `channel` retains, from the oldest, as (id, data).
    pub async fn all_messages(&self, channel: &str) -> Vec<(String, String)> {
        let path = format!("/subscribe?channel={channel}&since=oldest&format=json&timeout=0");
        let resp = self.get(&path).await;
        if resp.status == 204 {
            return Vec::new();
        }
        assert_eq!(resp.status, 200, "{:?}", resp.body);
        let batch = resp.json();
        let messages = batch["messages"].as_array().expect("messages");
        messages
            .iter()
            .map(|m| {
                let text = |field: &str| m[field].as_str().expect(field).to_owned();
                (text("id"), text("data"))
            })
            .collect()
    }

    /// Resident memory the server allocated (anonymous pages), in KiB: its
    /// code, mapped from the binary and shared, is left out, so a larger
    /// binary or code first run during a test does not count as memory taken.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("RssAnon")
    }

    /// Waits (up to `STEP`) for the resident memory to fall to `target` KiB;
    /// returns where it ended.
    pub async fn wait_for_rss_below(&self, target: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + STEP;
        while self.rss_kib() > target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.rss_kib()
    }

    /// Waits for the resident memory to give back all but `1/share` of what
    /// went from `start` to `held` (KiB), and fails if it does not.
    pub async fn assert_rss_returns(&self, start: u64, held: u64, share: u64) {
        let target = start + (held - start) / share;
        let end = self.wait_for_rss_below(target).await;
        eprintln!("rss: start {start} KiB, held {held} KiB, after {end} KiB");
        assert!(end <= target, "rss {end} KiB stayed above {target} KiB");
    }

    /// Waits for the process to exit, by `deadline`: its exit status.
    pub async fn exited_by(&mut self, deadline: std::time::Instant) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/stats` until `field` equals `value`, or panics after `STEP`.
    pub async fn wait_for_stat(&self, field: &str, value: u64) {
        wait_for_stat_of(|| self.stats(), field, value).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `comethub token ARGS…` and returns the token it prints.
pub fn mint_token(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_comethub"))
        .arg("token")
        .args(args)
        .env_remove("COMETHUB_JWT_KEY")
        .output()
        .expect("run comethub token");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
    pub fn id(&self) -> String {
        self.header("x-message-id")
            .expect("x-message-id")
            .to_owned()
    }
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn gap(&self) -> bool {
        self.header("x-gap") == Some("1")
    }
    /// Asserts a refusal: the status and a one-line `{"error":"…","reason":"…"}` body.
    pub fn assert_refused(&self, status: u16) {
        assert_eq!(self.status.as_u16(), status, "body: {:?}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        let text = self.text().trim_end_matches('\n');
        assert!(!text.contains('\n'), "one line: {text}");
        let error = &self.json()["error"];
        assert!(
            error.as_str().is_some_and(|e| !e.is_empty()),
            "error text: {text}"
        );
        let reason = &self.json()["reason"];
        assert!(
            reason.as_str().is_some_and(|r| !r.is_empty()),
            "reason: {text}"
        );
    }

    /// A refusal with this status, for this reason (its name in `/stats`).
    pub fn assert_refused_for(&self, status: u16, reason: &str) {
        self.assert_refused(status);
        assert_eq!(self.json()["reason"], reason, "body: {:?}", self.body);
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    pub addr: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).await.expect("connect")
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        self.try_request(method, path, headers, body)
            .await
            .expect("response")
    }

    /// A connection to `addr`, or why not.
    pub async fn try_connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client { sender, addr })
    }

    /// A request whose connection may fail (a server being killed): the
    /// answer, or why there is none.
    pub async fn try_request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("request");
        let work = async {
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Resp {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(STEP, work)
            .await
            .expect("answer in time")
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// Publishes `data` as a raw text body on `channel`; returns the new id.
    pub async fn publish(&mut self, channel: &str, data: &str) -> String {
        let path = format!("/publish?channel={channel}");
        let headers = [("content-type", "text/plain")];
        let resp = self
            .request(Method::POST, &path, &headers, data.to_owned())
            .await;
        assert_eq!(resp.status, 200, "{:?}", resp.body);
        resp.json()["id"].as_str().expect("id").to_owned()
    }
}

/// Spawns a long-poll on its own connection; the handle yields its answer.
pub fn spawn_get(addr: SocketAddr, path: &str) -> tokio::task::JoinHandle<Resp> {
    let path = path.to_owned();
    tokio::spawn(async move { Client::connect(addr).await.get(&path).await })
}

/// Waits for a spawned request, bounded.
pub async fn join(handle: tokio::task::JoinHandle<Resp>) -> Resp {
    tokio::time::timeout(STEP, handle)
        .await
        .expect("in time")
        .expect("task")
}

/// A free loopback port for a server that must come back on the same port
/// after it is killed: below the kernel's ephemeral range (so no client
/// socket takes it meanwhile), and never the same twice in a run (so no other
/// test's server does).
pub fn fixed_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 400) as u16 * 10;
    loop {
        let port = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A real `redis-server` on a free loopback port, with its data in a fresh
/// directory (append-only file, fsync always, so a killed server keeps it).
/// Killed and its directory removed on drop.
pub struct Redis {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
    /// Arguments after the usual ones (`--replicaof`), or a sentinel's
    /// configuration.
    role: Role,
}

enum Role {
    Server(Vec<String>),
    Sentinel(String),
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_as(Role::Server(Vec::new()))
    }

    /// A replica of `master`, synced before this returns.
    pub fn replica_of(master: &Redis) -> Redis {
        let port = master.port.to_string();
        let replica = Redis::start_as(Role::Server(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            port,
        ]));
        replica.wait_synced();
        replica
    }

    /// A sentinel watching `master` as `name` (quorum 2), declaring it down
    /// after 3 s of silence.
    pub fn sentinel(master: &Redis, name: &str) -> Redis {
        Redis::start_as(Role::Sentinel(format!(
            "sentinel monitor {name} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {name} 3000\n\
             sentinel failover-timeout {name} 6000\n\
             sentinel parallel-syncs {name} 1\n",
            master.port
        )))
    }

    /// A command's answer, by redis-cli.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A sentinel's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Waits until this replica has finished its sync with its master.
    pub fn wait_synced(&self) {
        let deadline = std::time::Instant::now() + STEP;
        while !self
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(std::time::Instant::now() < deadline, "replica never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_as(role: Role) -> Redis {
        let port = fixed_port();
        let dir =
            std::env::temp_dir().join(format!("comethub-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Redis {
            port,
            dir,
            child: None,
            role,
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and data) and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        match &self.role {
            Role::Server(extra) => {
                command
                    .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--save",
                        "",
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                    ])
                    .arg("--dir")
                    .arg(&self.dir)
                    .args(extra);
            }
            Role::Sentinel(conf) => {
                // A sentinel rewrites its file with what it learns; a
                // restarted one reads that back.
                let file = self.dir.join("sentinel.conf");
                if !file.exists() {
                    let conf = format!(
                        "port {}\nbind 127.0.0.1\nlogfile {}/log\n{conf}",
                        self.port,
                        self.dir.display()
                    );
                    std::fs::write(&file, conf).expect("sentinel.conf");
                }
                command.arg(&file).arg("--sentinel");
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + STEP;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server answering without closing a connection (SIGSTOP),
    /// as a stall would; [`Redis::thaw`] lets it go on.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `masters` masters with `replicas` replicas each, every node
/// started as [`Redis`] (AOF, fixed ports), created with `redis-cli
/// --cluster create`; ready (every slot served) when this returns.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        let nodes: Vec<Redis> = (0..masters * (1 + replicas))
            .map(|_| {
                let bus = fixed_port().to_string();
                Redis::start_as(Role::Server(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        // The shards that are up go on serving their slots.
                        "--cluster-require-full-coverage",
                        "no",
                        "--cluster-port",
                        &bus,
                    ]
                    .map(String::from)
                    .to_vec(),
                ))
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// `redis+cluster://` naming one node (the rest are discovered).
    pub fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.nodes[0].port)
    }

    /// Waits until every live node says every slot is served.
    pub fn wait_ok(&self) {
        let deadline = std::time::Instant::now() + STEP * 2;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            while !node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(std::time::Instant::now() < deadline, "cluster never ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> u16 {
        self.any()
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("slot")
    }

    fn any(&self) -> &Redis {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node")
    }

    /// The place in `nodes` of the master serving `slot`, as the live nodes see it.
    pub fn master_of(&self, slot: u16) -> usize {
        self.serving(slot).expect("a master serving the slot")
    }

    /// Whether node `n` is a master.
    pub fn is_master(&self, n: usize) -> bool {
        self.nodes[n].cli(&["ROLE"]).starts_with("master")
    }

    /// The master serving `slot`, unless it is failing (or none does).
    pub fn serving(&self, slot: u16) -> Option<usize> {
        let table = self.any().cli(&["CLUSTER", "NODES"]);
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("node port");
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// A node's id.
    pub fn id(&self, node: usize) -> String {
        self.nodes[node].cli(&["CLUSTER", "MYID"]).trim().to_owned()
    }

    /// Moves `slot` with its keys to the master `to`, as `redis-cli --cluster
    /// reshard` does, one slot: importing, migrating, the keys, then the new
    /// owner announced to every master.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.master_of(slot);
        let (from_id, to_id) = (self.id(from), self.id(to));
        let slot_arg = slot.to_string();
        let to_port = self.nodes[to].port.to_string();
        self.nodes[to].cli(&["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id]);
        self.nodes[from].cli(&["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id]);
        loop {
            let keys = self.nodes[from].cli(&["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let out = self.nodes[from].cli(&args);
            assert!(out.contains("OK"), "MIGRATE: {out}");
        }
        for node in &self.nodes {
            if node.child.is_some() {
                node.cli(&["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
            }
        }
    }
}

/// An open event stream, read event by event.
pub struct Events {
    body: hyper::body::Incoming,
    buf: String,
    pub headers: hyper::HeaderMap,
    _conn: tokio::task::JoinHandle<()>,
}

impl Events {
    pub async fn open(server: &Server, path: &str, last_event_id: Option<&str>) -> Events {
        let stream = TcpStream::connect(server.addr).await.expect("event stream");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("event stream");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::get(path)
            .header("host", "x")
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = tokio::time::timeout(
            STEP,
            sender.send_request(
                req.body(http_body_util::Empty::<Bytes>::new())
                    .expect("event stream"),
            ),
        )
        .await
        .expect("event stream")
        .expect("event stream");
        assert_eq!(resp.status(), 200);
        let headers = resp.headers().clone();
        Events {
            body: resp.into_body(),
            buf: String::new(),
            headers,
            _conn: conn,
        }
    }

    /// The next event block (text up to a blank line), or None when the stream ends.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block = self.buf[..end].to_owned();
                self.buf.drain(..end + 2);
                return Some(block);
            }
            let frame = tokio::time::timeout(STEP, self.body.frame())
                .await
                .expect("event in time")?;
            let data = frame
                .expect("event stream")
                .into_data()
                .expect("event stream");
            self.buf
                .push_str(std::str::from_utf8(&data).expect("event stream"));
        }
    }

    /// The next message event as (id, data), skipping retry hints and comments.
    pub async fn message(&mut self) -> (String, String) {
        loop {
            let block = self.next().await.expect("stream open");
            let mut id = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            if let Some(id) = id {
                return (id, data.join("\n"));
            }
        }
    }
}

/// An HTTP/2 connection in the clear (prior knowledge), with `window` as its
/// streams' initial flow-control window if given; a receiver that fires
/// when the connection ends.
pub async fn h2c(
    server: &Server,
    window: Option<u32>,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let stream = TcpStream::connect(server.addr).await.unwrap();
    h2_over(stream, window).await
}

/// An HTTP/2 connection over `io` (in the clear, or TLS that agreed on
/// `h2`), as [`h2c`] makes one.
pub async fn h2_over<T>(
    io: T,
    window: Option<u32>,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::sync::oneshot::Receiver<()>,
)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    if let Some(window) = window {
        builder.initial_stream_window_size(window);
    }
    let (sender, conn) = builder.handshake(TokioIo::new(io)).await.unwrap();
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = ended_tx.send(());
    });
    (sender, ended)
}

/// A connection to `addr` whose receive buffer is `bytes`: a client whose
/// window fills after that much, for the write limits and partial writes.
pub async fn connect_with_receive_buffer(addr: SocketAddr, bytes: u32) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads one answer with a `Content-Length` (or none) from a raw HTTP/1.1
/// connection: its status line and headers, and its body.
pub async fn answer(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, io.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(": ")?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tokio::time::timeout(STEP, io.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// A GET for `path` with an empty body, for [`h2c`].
pub fn h2_get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://localhost{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}
