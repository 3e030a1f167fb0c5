//! Bounded answers: one small request never builds an unbounded answer, and a
//! client that follows `last_id` still gets every message.
#![allow(clippy::unwrap_used)]

mod common;

use common::Server;

#[tokio::test]
async fn a_json_resume_comes_in_bounded_batches_and_loses_nothing() {
    const MESSAGES: usize = 10_000;
    const BOUND: usize = 64 * 1024;
    let server = Server::start(&["--history", "10000", "--max-batch-bytes", "64K"]);
    let mut c = server.client().await;
    let mut published = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        // Sizes vary so batches end at different places.
        let data = format!("m{i}:{}", "x".repeat(i % 97));
        published.push((c.publish("big", &data).await, data));
    }
    let mut got = Vec::with_capacity(MESSAGES);
    let mut since = "oldest".to_owned();
    let mut batches = 0;
    loop {
        let resp = c
            .get(&format!(
                "/subscribe?channel=big&since={since}&format=json&timeout=0"
            ))
            .await;
        if resp.status == 204 {
            break;
        }
        assert_eq!(resp.status, 200);
        assert!(
            resp.body.len() <= BOUND,
            "a batch of {} bytes passed the bound",
            resp.body.len()
        );
        let json = resp.json();
        assert_eq!(json["gap"], false);
        let messages = json["messages"].as_array().unwrap();
        assert!(!messages.is_empty());
        let last = messages.last().unwrap()["id"].as_str().unwrap();
        assert_eq!(json["last_id"], last, "last_id is where the batch stopped");
        assert_eq!(resp.id(), last);
        for m in messages {
            got.push((
                m["id"].as_str().unwrap().to_owned(),
                m["data"].as_str().unwrap().to_owned(),
            ));
        }
        since = last.to_owned();
        batches += 1;
    }
    assert!(batches > 10, "only {batches} batches");
    assert_eq!(got.len(), MESSAGES);
    assert!(got == published, "every message once, in order");
}

#[tokio::test]
async fn a_message_larger_than_the_batch_bound_still_goes_out_alone() {
    let server = Server::start(&["--max-batch-bytes", "1K"]);
    let mut c = server.client().await;
    let big = "y".repeat(4000);
    let first = c.publish("one", &big).await;
    let second = c.publish("one", "small").await;
    let resp = c
        .get("/subscribe?channel=one&since=oldest&format=json")
        .await;
    let json = resp.json();
    assert_eq!(json["messages"].as_array().unwrap().len(), 1);
    assert_eq!(json["messages"][0]["data"], big.as_str());
    assert_eq!(json["last_id"], first.as_str());
    let resp = c
        .get(&format!("/subscribe?channel=one&since={first}&format=json"))
        .await;
    assert_eq!(resp.json()["messages"][0]["id"], second.as_str());
}

/// A connection whose receive buffer is small, so the server cannot hand it an
/// answer without it reading.
async fn narrow_connection(server: &Server, request: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = common::connect_with_receive_buffer(server.addr, 16 * 1024).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// 128 messages of 65,000 bytes (7.9 MiB) on `channel`.
async fn fill(server: &Server, channel: &str) {
    let mut c = server.client().await;
    let data = "z".repeat(65_000);
    for _ in 0..128 {
        c.publish(channel, &data).await;
    }
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_let_go_after_the_write_timeout() {
    let server = Server::start(&["--write-timeout", "1", "--max-batch-bytes", "16M"]);
    fill(&server, "big").await;
    let get = |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let json = "/subscribe?channel=big&since=oldest&format=json";
    // The lean path, hyper's (an `Expect` header sends it there) and an event stream.
    let _held = [
        narrow_connection(&server, &get(json, "")).await,
        narrow_connection(&server, &get(json, "Expect: 100-continue\r\n")).await,
        narrow_connection(&server, &get("/events?channel=big&since=oldest", "")).await,
    ];
    let stats = server.stats().await;
    assert!(stats["connections"].as_u64().unwrap() >= 4, "{stats}");
    // Only the connection asking for the stats is left.
    server.wait_for_stat("connections", 1).await;
    server.wait_for_stat("streams", 0).await;
}

#[tokio::test]
async fn a_client_that_reads_slowly_gets_a_whole_8_mib_batch() {
    use tokio::io::AsyncReadExt;
    let server = Server::start(&["--write-timeout", "1", "--max-batch-bytes", "16M"]);
    fill(&server, "big").await;
    let mut stream = narrow_connection(
        &server,
        "GET /subscribe?channel=big&since=oldest&format=json HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let body = loop {
        // About 1.6 MB/s: the answer takes several write timeouts to read.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&got[..end])
            .unwrap()
            .to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        if got.len() >= end + 4 + length {
            break &got[end + 4..end + 4 + length];
        }
    };
    assert!(started.elapsed().as_secs() >= 2, "the client read slowly");
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    let messages = json["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 128);
    assert!(
        messages
            .iter()
            .all(|m| m["data"].as_str().unwrap().len() == 65_000)
    );
}
