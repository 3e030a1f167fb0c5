//! Faults as an operator meets them: two instances on one Redis behind
//! Debian's nginx, configured with the README's own block, while a publisher
//! retries with idempotency keys and readers long-poll through nginx. One
//! instance, then Redis, then the other instance is killed (SIGKILL) and
//! restarted, and Redis stalls once with a publish in flight: every
//! acknowledged message reaches every reader once, in one order, and no retry
//! stores a message twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Client, Redis, STEP, Server, comethub, fixed_port};
use hyper::Method;
use tokio::sync::watch;

/// How many messages the publisher sends.
const MESSAGES: usize = 240;

/// An instance on a fixed port, so that nginx finds it again after a restart.
fn instance(port: u16, redis: &Redis) -> Server {
    let mut cmd = comethub();
    cmd.args(["--listen", &format!("127.0.0.1:{port}")]).args([
        "--redis",
        &redis.url(),
        "--timeout",
        "5",
    ]);
    Server::spawn(cmd)
}

/// Debian's nginx in the foreground, with the README's configuration for two
/// instances; stopped on drop.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(a: u16, b: u16) -> Nginx {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let block = readme
            .split("```nginx\n")
            .map(|part| part.split("```").next().unwrap())
            .find(|block| block.contains("127.0.0.1:8002"))
            .expect("the README's nginx block for several instances");
        let port = fixed_port();
        let block = block
            .replace("127.0.0.1:8001", &format!("127.0.0.1:{a}"))
            .replace("127.0.0.1:8002", &format!("127.0.0.1:{b}"))
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
        let dir =
            std::env::temp_dir().join(format!("comethub-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             {block}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &dir.display().to_string(), "-c", "nginx.conf"])
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx (apt-get install -y nginx)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + STEP;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { addr, child, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request through `addr` on `client` (connected anew if it broke);
/// `None` for anything but an answer.
async fn ask(
    client: &mut Option<Client>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<common::Resp> {
    if client.is_none() {
        *client = Client::try_connect(addr).await.ok();
    }
    let c = client.as_mut()?;
    match c.try_request(method, path, headers, body.to_owned()).await {
        Ok(resp) => Some(resp),
        Err(_) => {
            *client = None;
            None
        }
    }
}

/// Publishes `m{i}` under key `k{i}` until it is acknowledged; returns its id.
async fn publish_until_acknowledged(
    client: &mut Option<Client>,
    addr: SocketAddr,
    i: usize,
) -> String {
    let (key, data) = (format!("k{i}"), format!("m{i}"));
    let deadline = tokio::time::Instant::now() + STEP * 2;
    loop {
        let headers = [
            ("idempotency-key", key.as_str()),
            ("content-type", "text/plain"),
        ];
        let path = "/publish?channel=chaos";
        if let Some(resp) = ask(client, addr, Method::POST, path, &headers, &data).await
            && resp.status == 200
        {
            return resp.id();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "m{i} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Long-polls through `addr` from the start, resuming from its cursor after
/// any failure, until it has read `want` messages (once the publisher says
/// how many); returns (id, data) in the order read.
async fn read_all(
    addr: SocketAddr,
    mut want: watch::Receiver<Option<usize>>,
) -> Vec<(String, String)> {
    let mut client = None;
    let mut since = "oldest".to_owned();
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + STEP * 6;
    loop {
        if want.borrow_and_update().is_some_and(|n| read.len() >= n) {
            return read;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} messages",
            read.len()
        );
        let path = format!("/subscribe?channel=chaos&format=json&since={since}");
        match ask(&mut client, addr, Method::GET, &path, &[], "").await {
            Some(resp) if resp.status == 200 => {
                let batch = resp.json();
                for m in batch["messages"].as_array().unwrap() {
                    read.push((
                        m["id"].as_str().unwrap().to_owned(),
                        m["data"].as_str().unwrap().to_owned(),
                    ));
                }
                since = batch["last_id"].as_str().unwrap().to_owned();
            }
            Some(resp) if resp.status == 204 => {
                if let Some(id) = resp.header("x-message-id") {
                    since = id.to_owned();
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn killing_an_instance_then_redis_then_the_other_loses_and_repeats_nothing() {
    let mut redis = Redis::start();
    let (pa, pb) = (fixed_port(), fixed_port());
    let mut a = instance(pa, &redis);
    let mut b = instance(pb, &redis);
    let nginx = Nginx::start(pa, pb);
    let addr = nginx.addr;

    let (total, want) = watch::channel(None);
    let readers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(read_all(addr, want.clone())))
        .collect();

    let mut publisher = None;
    let mut acknowledged = Vec::new();
    for i in 0..MESSAGES {
        match i {
            40 => {
                a.child.kill().unwrap();
                a.child.wait().unwrap();
            }
            80 => a = instance(pa, &redis),
            100 => {
                // Redis stalls with a publish in flight: the instance gives
                // up on it and answers 503, then Redis wakes and stores it.
                // The publisher's retry must not store it again.
                redis.freeze();
                let path = "/publish?channel=chaos";
                let headers = [("idempotency-key", "k100"), ("content-type", "text/plain")];
                let resp = ask(&mut publisher, addr, Method::POST, path, &headers, "m100").await;
                // comethub's 503 reaches the client through nginx as it is.
                let resp = resp.expect("an answer through nginx");
                resp.assert_refused(503);
                assert_eq!(resp.header("retry-after"), Some("1"));
                redis.thaw();
            }
            120 => {
                redis.kill();
                // Attempts while Redis is away get 503 (or, mid-command, an
                // unknown outcome) and are retried once it is back.
                let path = "/publish?channel=chaos";
                let headers = [("idempotency-key", "k120"), ("content-type", "text/plain")];
                let resp = ask(&mut publisher, addr, Method::POST, path, &headers, "m120").await;
                let resp = resp.expect("an answer through nginx");
                resp.assert_refused(503);
                assert_eq!(resp.header("retry-after"), Some("1"));
                redis.restart();
            }
            160 => {
                b.child.kill().unwrap();
                b.child.wait().unwrap();
            }
            200 => b = instance(pb, &redis),
            _ => {}
        }
        let id = publish_until_acknowledged(&mut publisher, addr, i).await;
        acknowledged.push((id, format!("m{i}")));
    }
    total.send_replace(Some(MESSAGES));
    for reader in readers {
        let read = reader.await.unwrap();
        assert_eq!(
            read.len(),
            MESSAGES,
            "a reader read {} of {MESSAGES}",
            read.len()
        );
        assert_eq!(
            read, acknowledged,
            "a reader read another order or other messages"
        );
    }
    drop((a, b));
}
