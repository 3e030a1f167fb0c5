//! A subscriber that hangs up is forgotten at once, not at the next publish.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

mod common;

use common::Server;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn a_thousand_subscribers_that_hang_up_are_forgotten() {
    let server = Server::start(&[]);
    let baseline_rss = server.rss_kib();
    let mut sockets = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let channel = i % 10;
        let req = format!("GET /subscribe?channel=c{channel} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        sockets.push(s);
    }
    server.wait_for_stat("waiting", 1000).await;
    assert_eq!(server.stats().await["channels"], 10);
    let held_rss = server.rss_kib();
    drop(sockets);
    server.wait_for_stat("waiting", 0).await;
    server.wait_for_stat("channels", 0).await;
    // Only the stats request's own connection is left.
    server.wait_for_stat("connections", 1).await;
    // Nobody is left to deliver to.
    let resp = server.get("/publish?channel=c1&message=anyone").await;
    assert_eq!(resp.json()["subscribers"], 0);
    // Memory goes back down: at least half of what the crowd took is returned.
    server.assert_rss_returns(baseline_rss, held_rss, 2).await;
}

#[tokio::test]
async fn a_subscriber_that_hangs_up_does_not_take_a_message() {
    let server = Server::start(&[]);
    let mut gone = TcpStream::connect(server.addr).await.unwrap();
    gone.write_all(b"GET /subscribe?channel=q HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let stays = common::spawn_get(server.addr, "/subscribe?channel=q");
    server.wait_for_stat("waiting", 2).await;
    drop(gone);
    server.wait_for_stat("waiting", 1).await;
    let resp = server.get("/publish?channel=q&message=one").await;
    assert_eq!(resp.json()["subscribers"], 1);
    assert_eq!(common::join(stays).await.text(), "one");
    // Counted when handed out, before the publish answered.
    assert_eq!(server.stats().await["delivered"], 1);
}
