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
