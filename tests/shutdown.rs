//! SIGTERM: stop accepting, answer every waiting subscriber with 204 and its id, exit.

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
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "server did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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
    let exited = loop {
        if server.child.try_wait().unwrap().is_some() {
            break asked.elapsed();
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "server did not exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
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
