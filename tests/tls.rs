//! HTTPS and HTTP/2: TLS with ALPN (curl as the client), HTTP/2 in the clear
//! with prior knowledge (hyper's client), streams multiplexed and cancelled,
//! limits, and certificates reloaded on SIGHUP.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{STEP, Server, Temp};
use http_body_util::{BodyExt, Full};

/// A fresh self-signed certificate for localhost, written as `NAME.crt` and
/// `NAME.key` in `dir`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

fn tls_server(cert: &Path, key: &Path) -> Server {
    Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
}

/// What curl got: status, HTTP version, body.
#[derive(Debug)]
struct Got {
    status: u16,
    version: String,
    body: String,
}

/// Runs curl against `https://localhost:PORT{path}` (PORT that of `addr`),
/// trusting `ca`.
async fn curl(addr: SocketAddr, ca: &Path, path: &str, extra: &[&str]) -> Got {
    let port = addr.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "15", "--cacert", ca.to_str().unwrap()])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, version) = last.split_once(' ').unwrap_or(("0", ""));
    Got {
        status: status.parse().unwrap_or(0),
        version: version.to_owned(),
        body: body.to_owned(),
    }
}

async fn tls_stats(server: &Server, ca: &Path) -> serde_json::Value {
    serde_json::from_str(&curl(server.addr, ca, "/stats", &[]).await.body).unwrap()
}

async fn until_stat(server: &Server, ca: &Path, field: &str, value: u64) {
    let deadline = tokio::time::Instant::now() + STEP;
    while tls_stats(server, ca).await[field] != value {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{field} never {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn long_polls_streams_and_publishes_go_over_https_with_http2() {
    let dir = Temp::dir("https");
    let (cert, key) = certificate(&dir, "a");
    let server = tls_server(&cert, &key);
    let waiting = {
        let (addr, cert) = (server.addr, cert.clone());
        tokio::spawn(async move {
            curl(addr, &cert, "/subscribe?channel=t&timeout=10", &["--http2"]).await
        })
    };
    until_stat(&server, &cert, "waiting", 1).await;
    let sent = curl(
        server.addr,
        &cert,
        "/publish?channel=t&message=over-tls",
        &["--http2"],
    )
    .await;
    assert_eq!((sent.status, sent.version.as_str()), (200, "2"));
    let got = waiting.await.unwrap();
    assert_eq!(
        (got.status, got.version.as_str(), got.body.as_str()),
        (200, "2", "over-tls")
    );

    // An event stream over HTTP/2 gets the history after its id.
    let first: serde_json::Value = serde_json::from_str(&sent.body).unwrap();
    curl(server.addr, &cert, "/publish?channel=t&message=second", &[]).await;
    let since = first["id"].as_str().unwrap();
    let stream = curl(
        server.addr,
        &cert,
        &format!("/events?channel=t&since={since}"),
        &["--http2", "-N", "-m", "1"],
    )
    .await;
    assert!(stream.body.contains("data: second"), "{stream:?}");
    // HTTP/1.1 over TLS still works, and plain HTTP is not served.
    let old = curl(server.addr, &cert, "/stats", &["--http1.1"]).await;
    assert_eq!((old.status, old.version.as_str()), (200, "1.1"));
    let plain = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/stats", server.addr.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
}

#[tokio::test]
async fn fifty_event_streams_share_one_http2_connection_and_all_receive() {
    let server = Server::start(&[]);
    let sender = common::h2c(&server, None).await.0;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut sender = sender.clone();
        let resp = tokio::time::timeout(
            STEP,
            sender.send_request(common::h2_get("/events?channel=many")),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        streams.push(resp.into_body());
    }
    server.wait_for_stat("streams", 50).await;
    // 50 streams on one connection, and the one asking. Waited for: on two
    // reactors the close of the previous stats request may not be counted
    // yet when the next one is answered.
    server.wait_for_stat("connections", 2).await;
    server.client().await.publish("many", "to all fifty").await;
    for mut body in streams {
        let mut seen = String::new();
        while !seen.contains("data: to all fifty") {
            let frame = tokio::time::timeout(STEP, body.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap()));
        }
    }
}

#[tokio::test]
async fn a_cancelled_http2_stream_frees_its_waiter_and_the_connection_goes_on() {
    let server = Server::start(&[]);
    let mut sender = common::h2c(&server, None).await.0;
    let waiting = {
        let mut sender = sender.clone();
        tokio::spawn(async move {
            sender
                .send_request(common::h2_get("/subscribe?channel=c&timeout=30"))
                .await
        })
    };
    server.wait_for_stat("waiting", 1).await;
    // Dropping the request resets its stream (RST_STREAM).
    waiting.abort();
    server.wait_for_stat("waiting", 0).await;
    server.wait_for_stat("channels", 0).await;
    let resp = sender
        .send_request(common::h2_get("/subscribe?channel=c&timeout=0"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    // The same connection went on: it and the one asking.
    server.wait_for_stat("connections", 2).await;
}

#[tokio::test]
async fn a_long_poll_on_several_channels_over_http2_answers_and_leaves_every_channel() {
    let server = Server::start(&[]);
    let sender = common::h2c(&server, None).await.0;
    let poll = |path: String| {
        let mut sender = sender.clone();
        tokio::spawn(async move { sender.send_request(common::h2_get(&path)).await })
    };
    let waiting = poll("/subscribe?channel=a,b,c&timeout=30".into());
    server.wait_for_stat("waiting", 1).await;
    server.client().await.publish("b", "on b").await;
    let resp = tokio::time::timeout(STEP, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.headers()["x-channel"], "b");
    let cursor = resp.headers()["x-message-id"].to_str().unwrap().to_owned();
    let names: Vec<&str> = cursor
        .split(',')
        .map(|e| e.split('~').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "c"],
        "the cursor covers every channel: {cursor}"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"on b");
    // Answered, it waits nowhere; only b, which holds the message, is kept.
    server.wait_for_stat("waiting", 0).await;
    server.wait_for_stat("channels", 1).await;
    // Resumed from the cursor and cancelled mid-wait: off every channel.
    let waiting = poll(format!(
        "/subscribe?channel=a,b,c&since={cursor}&timeout=30"
    ));
    server.wait_for_stat("channels", 3).await;
    server.wait_for_stat("waiting", 1).await;
    waiting.abort();
    server.wait_for_stat("waiting", 0).await;
    server.wait_for_stat("channels", 1).await;
}

#[tokio::test]
async fn limits_hold_on_http2() {
    let server = Server::start(&["--max-message", "1000", "--max-channels-per-request", "2"]);
    let mut sender = common::h2c(&server, None).await.0;
    let big = hyper::Request::post("http://localhost/publish?channel=l")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(vec![b'x'; 5000])))
        .unwrap();
    let resp = sender.send_request(big).await.unwrap();
    assert_eq!(resp.status(), 413);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("message too large"));
    let resp = sender
        .send_request(common::h2_get("/subscribe?channel=a,b,c"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Headers past --max-header-bytes end the request, not the server.
    let huge = hyper::Request::get("http://localhost/stats")
        .header("x-filler", "y".repeat(40_000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let refused = sender.send_request(huge).await;
    assert!(refused.map(|r| r.status() != 200).unwrap_or(true));
    assert_eq!(
        server.get("/subscribe?channel=l&timeout=0").await.status,
        204
    );
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_while_an_open_stream_stays() {
    let dir = Temp::dir("sighup");
    let (cert, key) = certificate(&dir, "live");
    let old_ca = dir.join("old.crt");
    std::fs::copy(&cert, &old_ca).unwrap();
    let server = tls_server(&cert, &key);
    let stream = {
        let (addr, ca) = (server.addr, old_ca.clone());
        tokio::spawn(async move {
            curl(
                addr,
                &ca,
                "/events?channel=h",
                &["--http2", "-N", "-m", "4"],
            )
            .await
        })
    };
    until_stat(&server, &old_ca, "streams", 1).await;

    // A renewed certificate (another key) replaces the files; SIGHUP.
    let (new_cert, new_key) = certificate(&dir, "renewed");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = tokio::time::Instant::now() + STEP;
    while server.log_lines("certificates reloaded").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no reload logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New connections get the new certificate; the old one is no longer trusted.
    assert_eq!(
        curl(server.addr, &new_cert, "/stats", &[]).await.status,
        200
    );
    assert_eq!(curl(server.addr, &old_ca, "/stats", &[]).await.status, 0);
    // The stream opened before goes on.
    curl(
        server.addr,
        &new_cert,
        "/publish?channel=h&message=after-reload",
        &[],
    )
    .await;
    let got = stream.await.unwrap();
    assert!(got.body.contains("data: after-reload"), "{got:?}");
}
