//! `GET /events`: Server-Sent Events, as a browser's EventSource sees them.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

mod common;

use common::{Events, STEP, Server};

#[tokio::test]
async fn a_stream_sends_history_then_live_messages() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let first = c.publish("s", "one").await;
    let second = c.publish("s", "two").await;
    let mut events = Events::open(&server, &format!("/events?channel=s&since={first}"), None).await;
    assert_eq!(events.headers["content-type"], "text/event-stream");
    assert_eq!(events.headers["access-control-allow-origin"], "*");
    let head = events.next().await.unwrap();
    assert!(head.starts_with("retry: "), "{head}");
    assert_eq!(events.message().await, (second, "two".to_owned()));
    server.wait_for_stat("streams", 1).await;
    let third = c.publish("s", "line 1\nline 2\r\nline 3").await;
    let resp = c.get("/publish?channel=s&message=four").await;
    assert_eq!(
        resp.json()["subscribers"],
        1,
        "the stream counts as a subscriber"
    );
    let (id, data) = events.message().await;
    assert_eq!((id, data.as_str()), (third, "line 1\nline 2\nline 3"));
    assert_eq!(events.message().await.1, "four");
}

#[tokio::test]
async fn last_event_id_resumes_a_stream_without_loss() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let mut events = Events::open(&server, "/events?channel=r", None).await;
    server.wait_for_stat("streams", 1).await;
    let a = c.publish("r", "a").await;
    assert_eq!(events.message().await.0, a);
    drop(events);
    server.wait_for_stat("streams", 0).await;
    // Published while the browser was away.
    let b = c.publish("r", "b").await;
    let d = c.publish("r", "c").await;
    let mut events = Events::open(&server, "/events?channel=r", Some(&a)).await;
    assert_eq!(events.message().await, (b, "b".to_owned()));
    assert_eq!(events.message().await, (d, "c".to_owned()));
}

#[tokio::test]
async fn a_foreign_last_event_id_starts_with_a_gap_event() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    c.publish("g", "kept").await;
    let mut events = Events::open(&server, "/events?channel=g", Some("zzzzzz-5")).await;
    let mut saw_gap = false;
    loop {
        let block = events.next().await.unwrap();
        if block.contains("event: gap") {
            saw_gap = true;
        }
        if block.contains("data: kept") {
            break;
        }
    }
    assert!(saw_gap);
}

#[tokio::test]
async fn a_quiet_stream_gets_pings() {
    let server = Server::start(&["--ping", "1"]);
    let mut events = Events::open(&server, "/events?channel=quiet", None).await;
    let _retry = events.next().await.unwrap();
    assert_eq!(events.next().await.unwrap(), ": ping");
}

#[tokio::test]
async fn a_stream_that_hangs_up_is_forgotten_and_deletion_ends_streams() {
    let server = Server::start(&[]);
    let events = Events::open(&server, "/events?channel=h", None).await;
    server.wait_for_stat("streams", 1).await;
    assert_eq!(server.stats().await["channels"], 1);
    drop(events);
    server.wait_for_stat("streams", 0).await;
    server.wait_for_stat("channels", 0).await;

    let mut events = Events::open(&server, "/events?channel=h", None).await;
    server.wait_for_stat("streams", 1).await;
    let resp = server
        .client()
        .await
        .request(hyper::Method::DELETE, "/publish?channel=h", &[], "")
        .await;
    assert_eq!(resp.status, 200);
    while events.next().await.is_some() {}
    server.wait_for_stat("streams", 0).await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_dropped_and_others_get_everything() {
    let server = Server::start(&[]);
    // Never reads after the headers.
    let stalled = Events::open(&server, "/events?channel=flood", None).await;
    let mut reader = Events::open(&server, "/events?channel=flood", None).await;
    server.wait_for_stat("streams", 2).await;
    let payload = "x".repeat(60_000);
    let addr = server.addr;
    let publisher = tokio::spawn(async move {
        let mut c = common::Client::connect(addr).await;
        for i in 0..800 {
            c.publish("flood", &format!("{i}:{payload}")).await;
        }
    });
    for i in 0..800 {
        let (_, data) = reader.message().await;
        assert!(data.starts_with(&format!("{i}:")), "message {i} in order");
    }
    publisher.await.unwrap();
    // The stalled reader was dropped by the server while it still held on.
    server.wait_for_stat("streams", 1).await;
    drop(stalled);
    assert_eq!(server.stats().await["published"], 800);
    // The reader that kept up is still live.
    server.client().await.publish("flood", "800:after").await;
    assert_eq!(reader.message().await.1, "800:after");
}

#[tokio::test]
async fn shutdown_ends_streams() {
    let mut server = Server::start(&[]);
    let mut events = Events::open(&server, "/events?channel=bye", None).await;
    server.wait_for_stat("streams", 1).await;
    server.terminate();
    while events.next().await.is_some() {}
    server.exited_by(std::time::Instant::now() + STEP).await;
}

#[tokio::test]
async fn binary_data_goes_as_a_base64_binary_event() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let bytes: Vec<u8> = vec![0xff, 0x00, 0xfe, b'\n', 0x80, b'a'];
    let resp = c
        .request(
            hyper::Method::POST,
            "/publish?channel=bin",
            &[("content-type", "application/octet-stream")],
            bytes.clone(),
        )
        .await;
    assert_eq!(resp.status, 200);
    let id = resp.id();
    c.publish("bin", "text after").await;
    let mut events = Events::open(&server, "/events?channel=bin&since=oldest", None).await;
    let block = loop {
        let block = events.next().await.unwrap();
        if block.contains("id: ") {
            break block;
        }
    };
    // Not turned into U+FFFD: the exact bytes, marked, so a client can tell.
    assert_eq!(
        block,
        format!("id: {id}\nevent: binary\ndata: /wD+CoBh"),
        "{block}"
    );
    assert_eq!(events.message().await.1, "text after");
}

/// Reads from `s` until `text` has arrived; everything read so far.
async fn read_until(s: &mut tokio::net::TcpStream, seen: &mut String, text: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while !seen.contains(text) {
        let n = tokio::time::timeout(STEP, s.read(&mut buf))
            .await
            .expect("in time")
            .unwrap();
        assert!(n > 0, "closed before {text:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn on_the_wire_a_stream_is_chunked_on_http11_and_runs_to_the_close_on_http10() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&[]);
    let mut c = server.client().await;
    for (version, chunked) in [("HTTP/1.1", true), ("HTTP/1.0", false)] {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = format!("GET /events?channel=wire {version}\r\nHost: x\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut seen = String::new();
        read_until(&mut s, &mut seen, "retry: ").await;
        let head = seen.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(
            head.contains("transfer-encoding: chunked"),
            chunked,
            "{head}"
        );
        server.wait_for_stat("streams", 1).await;
        c.publish("wire", "over the wire").await;
        read_until(&mut s, &mut seen, "data: over the wire\n\n").await;
        // A client that hangs up is forgotten.
        drop(s);
        server.wait_for_stat("streams", 0).await;
    }
}

#[tokio::test]
async fn a_stream_whose_reader_takes_nothing_is_closed_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&["--write-timeout", "1"]);
    // A socket that never reads: its receive window fills, then stays shut.
    let mut stalled = common::connect_with_receive_buffer(server.addr, 4096).await;
    stalled
        .write_all(b"GET /events?channel=shut HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    server.wait_for_stat("streams", 1).await;
    let mut c = server.client().await;
    let big = "z".repeat(60_000);
    // More than the kernel's buffers on both sides hold.
    for _ in 0..200 {
        c.publish("shut", &big).await;
    }
    // Given up on, and forgotten; everyone else is served meanwhile.
    server.wait_for_stat("streams", 0).await;
    assert_eq!(c.get("/subscribe?channel=shut&timeout=0").await.status, 204);
    drop(stalled);
}
