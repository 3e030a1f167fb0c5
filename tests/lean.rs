//! The lean path: plain long-polls and publishes answered without hyper, and
//! connections handed to hyper for everything else, on the same socket.
#![allow(clippy::unwrap_used)]

mod common;

use common::{STEP, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `s` until `want` answers (by status line) have arrived or it closes.
async fn read_answers(s: &mut TcpStream, want: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while String::from_utf8_lossy(&out).matches("HTTP/1.1 ").count() < want {
        match tokio::time::timeout(STEP, s.read(&mut buf)).await.unwrap() {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(answer: &str) -> Vec<&str> {
    answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect()
}

#[tokio::test]
async fn long_polls_then_other_requests_on_one_connection_are_answered_in_order() {
    let server = Server::start(&[]);
    let id = server.client().await.publish("mix", "first").await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!(
            "GET /subscribe?channel=mix&since=oldest HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /subscribe?channel=mix&since={id}&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /publish?channel=mix&message=second HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /subscribe?channel=mix&since={id} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_answers(&mut s, 4).await;
    assert_eq!(statuses(&answer), ["200", "204", "200", "200"], "{answer}");
    let first = answer.find("\r\n\r\nfirst").unwrap();
    let published = answer.find("\"subscribers\"").unwrap();
    let second = answer.rfind("\r\n\r\nsecond").unwrap();
    assert!(first < published && published < second, "{answer}");
}

#[tokio::test]
async fn a_long_poll_answer_carries_what_hyper_answers_carry() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /subscribe?channel=h HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    server.wait_for_stat("waiting", 1).await;
    let id = server.client().await.publish("h", "hello").await;
    let answer = read_answers(&mut s, 1).await;
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    for line in [
        "http/1.1 200 ok",
        "content-type: text/plain",
        &format!("x-message-id: {id}"),
        "access-control-allow-origin: *",
        "access-control-expose-headers: x-message-id, x-gap",
        "cache-control: no-store",
        "content-length: 5",
        "date: ",
    ] {
        assert!(head.contains(line), "{line} missing in {head}");
    }
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
    // The connection stays open for the next poll.
    s.write_all(b"GET /subscribe?channel=h&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(statuses(&read_answers(&mut s, 1).await), ["204"]);
}

#[tokio::test]
async fn http_1_0_clients_are_closed_unless_they_ask_to_keep_alive() {
    let server = Server::start(&[]);
    server.client().await.publish("old", "x").await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /subscribe?channel=old&since=oldest HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answers(&mut s, 2).await;
    assert_eq!(statuses(&answer), ["200"]);
    assert!(answer.contains("connection: close"), "{answer}");

    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let req = b"GET /subscribe?channel=old&since=oldest HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    s.write_all(req).await.unwrap();
    let answer = read_answers(&mut s, 1).await;
    assert!(answer.contains("connection: keep-alive"), "{answer}");
    s.write_all(req).await.unwrap();
    assert_eq!(statuses(&read_answers(&mut s, 1).await), ["200"]);
}

#[tokio::test]
async fn a_bad_long_poll_gets_its_error_and_the_connection_goes_on() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /subscribe?channel=a%20b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answers(&mut s, 1).await;
    assert_eq!(statuses(&answer), ["400"]);
    assert!(answer.contains("{\"error\":\"bad channel name"), "{answer}");
    s.write_all(b"GET /subscribe?channel=ok&timeout=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(statuses(&read_answers(&mut s, 1).await), ["204"]);
    let stats = server.stats().await;
    assert_eq!(stats["refused"]["bad_channel"], 1);
    // A subscriber that hangs up mid-wait is forgotten.
    s.write_all(b"GET /subscribe?channel=gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    server.wait_for_stat("waiting", 1).await;
    drop(s);
    server.wait_for_stat("waiting", 0).await;
}

#[tokio::test]
async fn a_client_sending_a_body_far_over_the_limit_still_reads_its_413() {
    let server = Server::start(&["--max-message", "100"]);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let body = vec![b'w'; 12 << 20];
    let head = format!(
        "POST /publish?channel=big HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The whole body goes out although the answer is already on its way: the
    // server reads and drops it instead of resetting the connection.
    s.write_all(&body).await.unwrap();
    let answer = read_answers(&mut s, 1).await;
    assert_eq!(statuses(&answer), ["413"], "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
}

#[tokio::test]
async fn a_body_a_route_does_not_read_is_skipped_and_the_connection_goes_on() {
    let server = Server::start(&[]);
    let id = server.client().await.publish("skip", "kept").await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /publish?channel=skip&message=q HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nGET /nope\
          DELETE /publish?channel=other HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody\
          GET /stats HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_answers(&mut s, 3).await;
    assert_eq!(statuses(&answer), ["200", "200", "200"], "{answer}");
    assert!(answer.contains("\"deleted\":false"), "{answer}");
    assert!(answer.contains("\"published\":2"), "{answer}");
    // The query's message was published; the body was not read as a request.
    let got = server
        .get(&format!("/subscribe?channel=skip&since={id}&timeout=0"))
        .await;
    assert_eq!(got.text(), "q");
}

#[tokio::test]
async fn a_connection_asked_to_close_is_closed_whatever_a_later_line_says() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // HTTP/1.0 with `close` and then `keep-alive`: hyper closes after the
    // first answer, and so must the lean path, or the two would disagree on
    // whether the second request is served at all.
    s.write_all(
        b"GET /stats HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n\
          GET /publish?channel=smuggled&message=x HTTP/1.0\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_answers(&mut s, 2).await;
    assert_eq!(statuses(&answer), ["200"], "{answer}");
    let info = server.get("/channels/smuggled").await.json();
    assert_eq!(info["last_id"], serde_json::Value::Null, "never published");
}

#[tokio::test]
async fn heads_with_bare_line_feeds_are_read_as_hyper_reads_them() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /publish?channel=lf&message=a HTTP/1.1\nHost: x\n\nGET /subscribe?channel=lf&since=oldest HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answers(&mut s, 2).await;
    assert_eq!(statuses(&answer), ["200", "200"], "{answer}");
    assert!(answer.ends_with("\r\n\r\na"), "{answer}");
}

#[tokio::test]
async fn a_long_poll_longer_than_the_header_timeout_waits_its_own_time() {
    let server = Server::start(&["--header-timeout", "1"]);
    let mut c = server.client().await;
    // The connection's one timer was set for the wait between two requests
    // (1 s) when the long-poll begins; the long-poll still lasts its 2 s.
    let id = c.publish("kept", "first").await;
    let start = std::time::Instant::now();
    let timed_out = c
        .get(&format!("/subscribe?channel=kept&since={id}&timeout=2"))
        .await;
    assert_eq!(timed_out.status, 204);
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(1900),
        "answered after {:?}",
        start.elapsed()
    );
    // The connection goes on, and its next wait gets the next message.
    let next = server.client().await.publish("kept", "second").await;
    let got = c.get(&format!("/subscribe?channel=kept&since={id}")).await;
    assert_eq!((got.text(), got.id()), ("second", next));
}
