//! Hostile clients. While each misbehaves, a well-behaved client keeps publishing
//! and re-polling on its own channel: it must lose nothing, and afterwards no
//! waiter is left behind.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, STEP, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A well-behaved publisher and subscriber on the channel `canary`.
struct Canary {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    publisher: JoinHandle<()>,
    subscriber: JoinHandle<Vec<String>>,
}

impl Canary {
    async fn start(server: &Server) -> Canary {
        let addr = server.addr;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let mut sub = Client::connect(addr).await;
        let since = sub.get("/subscribe?channel=canary&timeout=0").await.id();
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let publisher = tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            while !stop2.load(Ordering::SeqCst) {
                let n = sent2.load(Ordering::SeqCst);
                c.publish("canary", &format!("c{n}")).await;
                sent2.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let (stop3, sent3) = (stop.clone(), sent.clone());
        let subscriber = tokio::spawn(async move {
            let mut since = since;
            let mut got = Vec::new();
            loop {
                let done = stop3.load(Ordering::SeqCst);
                if done && got.len() >= sent3.load(Ordering::SeqCst) {
                    return got;
                }
                let path = format!("/subscribe?channel=canary&format=json&timeout=1&since={since}");
                let resp = sub.get(&path).await;
                since = resp.id();
                if resp.status == 200 {
                    let body = resp.json();
                    assert_eq!(body["gap"], false, "the canary never misses a message");
                    for m in body["messages"].as_array().unwrap() {
                        got.push(m["data"].as_str().unwrap().to_owned());
                    }
                }
            }
        });
        Canary {
            stop,
            sent,
            publisher,
            subscriber,
        }
    }

    /// Stops publishing and checks every message arrived once, in order.
    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(STEP, self.publisher)
            .await
            .unwrap()
            .unwrap();
        let got = tokio::time::timeout(STEP, self.subscriber)
            .await
            .unwrap()
            .unwrap();
        let sent = self.sent.load(Ordering::SeqCst);
        assert!(sent > 0);
        let want: Vec<String> = (0..sent).map(|i| format!("c{i}")).collect();
        assert_eq!(
            got, want,
            "the well-behaved client got everything, in order"
        );
    }
}

/// Sends raw bytes, then reads what comes back until the server closes or goes quiet.
async fn raw(server: &Server, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let server = Server::start(&[]);
    let canary = Canary::start(&server).await;
    for bytes in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /subscribe HTTP/9.9\r\n\r\n",
        b"GET /sub scribe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /stats HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
    ] {
        let answer = raw(&server, bytes).await;
        assert_eq!(
            status_of(&answer),
            Some(400),
            "{:?} -> {answer}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Too many headers, and a huge header, get 431.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        &server,
        format!("GET /stats HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), Some(431), "{answer}");
    canary.finish().await;
    assert_eq!(server.stats().await["waiting"], 0);
}

#[tokio::test]
async fn bad_encodings_are_refused_or_kept_as_text() {
    let server = Server::start(&[]);
    let canary = Canary::start(&server).await;
    let mut c = server.client().await;
    c.get("/subscribe?channel=%ZZ").await.assert_refused(400);
    c.get("/subscribe?channel=%FF%FE").await.assert_refused(400);
    c.get("/publish?channel=%C0%AF&message=x")
        .await
        .assert_refused(400);
    // Bad escapes and invalid UTF-8 in a message are kept as (lossy) text.
    let resp = c.get("/publish?channel=enc&message=100%ZZ%FFok").await;
    assert_eq!(resp.status, 200);
    let got = c.get("/subscribe?channel=enc&since=oldest").await;
    assert_eq!(got.text(), "100%ZZ\u{fffd}ok");
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let resp = c
        .request(
            hyper::Method::POST,
            "/publish?channel=enc",
            &form,
            "message=%FF%FE&x=%",
        )
        .await;
    assert_eq!(resp.status, 200);
    // Duplicated parameters are refused rather than guessed.
    c.get("/subscribe?since=oldest&since=oldest")
        .await
        .assert_refused(400);
    // Duplicated Last-Event-ID: the first is used.
    let id = c.publish("dup", "one").await;
    let two = c.publish("dup", "two").await;
    let answer = raw(
        &server,
        format!("GET /subscribe?channel=dup HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {id}\r\nLast-Event-ID: garbage\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(answer.contains(&format!("x-message-id: {two}")), "{answer}");
    // Huge and tiny timeouts.
    let got = c
        .get("/subscribe?channel=enc&timeout=1e308&since=oldest")
        .await;
    assert_eq!(got.status, 200);
    c.get("/subscribe?channel=enc&timeout=-0.5")
        .await
        .assert_refused(400);
    c.get("/subscribe?channel=enc&timeout=1e999")
        .await
        .assert_refused(400);
    canary.finish().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let answer = raw(
        &server,
        b"GET /publish?channel=pipe&message=one HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /subscribe?channel=pipe&since=oldest HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /channels/pipe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "404", "200"], "{answer}");
    let one = answer
        .find("\r\n\r\none")
        .expect("the subscribe answer carries the message");
    assert!(one < answer.find("not found").unwrap());
}

#[tokio::test]
async fn half_requests_and_silent_clients_leave_nothing_behind() {
    let server = Server::start(&["--header-timeout", "1"]);
    let canary = Canary::start(&server).await;
    for bytes in [
        &b"GET /subscribe?channel=half HTTP/1.1\r\nHo"[..],
        b"POST /publish?channel=half HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part",
        b"GET /events?channel=half HTTP/1.1\r\nHost: x\r\n",
    ] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        drop(s);
    }
    // Connected, never sends a byte: closed by the header timeout.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(STEP, silent.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)));
    let info = server.get("/channels/half").await.json();
    assert_eq!(info["messages"], 0, "a broken-off body publishes nothing");
    canary.finish().await;
    server.wait_for_stat("waiting", 0).await;
    server.wait_for_stat("streams", 0).await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_its_answer_holds_up_nobody() {
    let server = Server::start(&[]);
    let canary = Canary::start(&server).await;
    // Many long-polls answered with a big message that they never read.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /subscribe?channel=big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    server.wait_for_stat("waiting", 50).await;
    let mut c = server.client().await;
    let big = "b".repeat(60_000);
    let resp = c
        .request(
            hyper::Method::POST,
            "/publish?channel=big",
            &[("content-type", "text/plain")],
            big,
        )
        .await;
    assert_eq!(resp.json()["subscribers"], 50);
    canary.finish().await;
    drop(stalled);
    server.wait_for_stat("connections", 1).await;
}

#[tokio::test]
async fn an_answer_the_socket_cannot_take_at_once_arrives_whole_and_the_connection_goes_on() {
    let server = Server::start(&["--max-message", "8000000"]);
    // A message larger than a socket's send buffer (4 MiB at most by
    // default) and a small receive buffer: the answer cannot go out in one
    // write, and the rest is written as the client reads it.
    let mut s = common::connect_with_receive_buffer(server.addr, 4096).await;
    s.write_all(b"GET /subscribe?channel=whole HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    server.wait_for_stat("waiting", 1).await;
    let big: String = (0..8_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut c = server.client().await;
    let resp = c
        .request(
            hyper::Method::POST,
            "/publish?channel=whole",
            &[("content-type", "text/plain")],
            big.clone(),
        )
        .await;
    assert_eq!(resp.json()["subscribers"], 1);
    let (head, body) = common::answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body == big, "the answer's body differs from the message");
    // The same connection takes the next request.
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = common::answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("live"), "{body}");
}

#[tokio::test]
async fn ten_thousand_subscribers_that_vanish_at_once() {
    let server = Server::start(&[]);
    let start_rss = server.rss_kib();
    let canary = Canary::start(&server).await;
    let mut crowd = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let req = format!(
            "GET /subscribe?channel=crowd{} HTTP/1.1\r\nHost: x\r\n\r\n",
            i % 100
        );
        s.write_all(req.as_bytes()).await.unwrap();
        crowd.push(s);
    }
    server.wait_for_stat("waiting", 10_001).await;
    let held_rss = server.rss_kib();
    drop(crowd);
    canary.finish().await;
    server.wait_for_stat("waiting", 0).await;
    server.wait_for_stat("channels", 1).await; // only the canary's history is left
    // Memory back near its start: all but a quarter of what the crowd took.
    server.assert_rss_returns(start_rss, held_rss, 4).await;
}

#[tokio::test]
async fn a_publish_flood_to_many_channels_stays_bounded() {
    let server = Server::start(&[
        "--history",
        "4",
        "--history-age",
        "1",
        "--max-channels",
        "1000",
    ]);
    let canary = Canary::start(&server).await;
    let mut flooders = Vec::new();
    for f in 0..4 {
        let addr = server.addr;
        flooders.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut refused = 0;
            for i in 0..2_500 {
                let path = format!(
                    "/publish?channel=flood{}&message=m{i}",
                    (f * 2_500 + i) % 1_500
                );
                let resp = c.get(&path).await;
                match resp.status.as_u16() {
                    200 => {}
                    503 => refused += 1,
                    s => panic!("unexpected {s}"),
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for f in flooders {
        refused += f.await.unwrap();
    }
    let stats = server.stats().await;
    assert!(
        stats["channels"].as_u64().unwrap() <= 1000,
        "max-channels holds"
    );
    assert!(refused > 0, "channels past the limit were refused");
    // History limits hold: at most 4 messages per channel.
    assert!(stats["messages"].as_u64().unwrap() <= 1000 * 4);
    canary.finish().await;
    // Once the messages age out, the empty channels are freed.
    server.wait_for_stat("channels", 0).await;
    server.wait_for_stat("history_bytes", 0).await;
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_comethub"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let log: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(log["level"], "INFO");
    assert_eq!(log["fields"]["message"], "listening");
    assert!(log["fields"]["nofile"].as_u64().unwrap() > 0);
    assert_eq!(log["fields"]["history"], 128);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = Server::start(&["--header-timeout", "1"]);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the answer, then keep reading: the server closes the idle connection
    // cleanly (end of stream, not a reset).
    let end = tokio::time::timeout(STEP, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Err(err) => return Err(err.kind()),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(end, Ok(()), "closed by the server");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    server.wait_for_stat("connections", 1).await;
}
