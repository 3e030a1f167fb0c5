//! SIGTERM: stop accepting, answer every waiting subscriber with 204 and its id,
//! close the idle connections at once, exit.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

mod common;

use std::time::{Duration, Instant};

use common::{Server, join, spawn_get};

#[tokio::test]
async fn sigterm_answers_waiters_with_204_and_exits() {
    let mut server = Server::start(&[]);
    let id = server.client().await.publish("bye", "last words").await;
    let waiters: Vec<_> = (0..50)
        .map(|_| spawn_get(server.addr, "/subscribe?channel=bye"))
        .collect();
    server.wait_for_stat("waiting", 50).await;
    let asked = Instant::now();
    server.terminate();
    for w in waiters {
        let got = join(w).await;
        assert_eq!(got.status, 204);
        assert_eq!(
            got.id(),
            id,
            "the id to resume from on another server or after restart"
        );
    }
    let status = server.exited_by(asked + Duration::from_secs(10)).await;
    assert!(status.success());
    eprintln!("exited {:?} after SIGTERM", asked.elapsed());
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn sigterm_with_ten_thousand_waiting_answers_them_all() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = Server::start(&[]);
    let id = server.client().await.publish("crowd", "before").await;
    let mut crowd = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /subscribe?channel=crowd HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        crowd.push(s);
    }
    server.wait_for_stat("waiting", 10_000).await;
    let asked = Instant::now();
    server.terminate();
    server.exited_by(asked + Duration::from_secs(10)).await;
    let exited = asked.elapsed();
    let mut answered = 0;
    for mut s in crowd {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(common::STEP, s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        if text.starts_with("HTTP/1.1 204") && text.contains(&format!("x-message-id: {id}\r\n")) {
            answered += 1;
        }
    }
    eprintln!("10,000 waiting: exited {exited:?} after SIGTERM, {answered} answered 204");
    assert_eq!(
        answered, 10_000,
        "every waiting subscriber got its 204 and id"
    );
}

#[tokio::test]
async fn sigterm_closes_idle_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = Server::start(&["--header-timeout", "60"]);
    // A keep-alive connection between two requests, and an HTTP/2 connection
    // with nothing open: neither is waiting on anything the hub answers.
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /subscribe?channel=x&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = common::answer(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    let (mut h2, h2_ended) = common::h2c(&server, None).await;
    let resp = h2.send_request(common::h2_get("/stats")).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);

    server.terminate();
    // Both are closed by the server as it stops, not by the grace period's
    // end or the header timeout.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(common::STEP, idle.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    tokio::time::timeout(common::STEP, h2_ended)
        .await
        .unwrap()
        .unwrap();
    let status = server.exited_by(Instant::now() + common::STEP).await;
    assert!(status.success());
    assert_eq!(server.log_lines("all connections closed").len(), 1);
    assert!(server.log_lines("grace period over").is_empty());
}
