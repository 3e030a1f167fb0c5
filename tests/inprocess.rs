//! The server started in-process with `comethub::run`, as an embedding program
//! would: it serves, and when told to stop it answers its waiters and returns,
//! having ended every task it started.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{Client, STEP, join, spawn_get};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

async fn start(
    threads: u16,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<Result<(), String>>,
) {
    let listener = comethub::listen::tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = comethub::Config {
        threads,
        redis: None,
        publish_token: None,
        ..Default::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(comethub::run(vec![listener.into()], config, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

async fn waiting(addr: SocketAddr) -> u64 {
    Client::connect(addr).await.get("/stats").await.json()["waiting"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn run_serves_then_answers_its_waiters_and_returns_when_stopped() {
    for threads in [1, 2] {
        let (addr, stop, server) = start(threads).await;
        let mut publisher = Client::connect(addr).await;
        let first = publisher.publish("in", "one").await;
        let got = Client::connect(addr)
            .await
            .get("/subscribe?channel=in&since=oldest")
            .await;
        assert_eq!((got.text(), got.id()), ("one", first.clone()));

        let waiters: Vec<_> = (0..6)
            .map(|_| spawn_get(addr, &format!("/subscribe?channel=in&since={first}")))
            .collect();
        let deadline = tokio::time::Instant::now() + STEP;
        while waiting(addr).await < 6 {
            assert!(tokio::time::Instant::now() < deadline, "waiters parked");
            tokio::task::yield_now().await;
        }
        stop.send(()).unwrap();
        for w in waiters {
            let resp = join(w).await;
            assert_eq!(resp.status, 204, "threads={threads}");
            assert_eq!(resp.id(), first);
        }
        // run returns: every task it started has ended.
        tokio::time::timeout(STEP, server)
            .await
            .expect("run returned")
            .unwrap()
            .expect("no start-up error");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }
}

#[tokio::test]
async fn run_refuses_a_configuration_it_cannot_serve_and_binds_nothing_of_it() {
    let listener = comethub::listen::tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = comethub::Config {
        redis: None,
        publish_token: None,
        max_message: 0,
        ..Default::default()
    };
    // Never completes: a server that started would serve until stopped.
    let refused = comethub::run(vec![listener.into()], config, std::future::pending()).await;
    let err = refused.expect_err("a server that refuses every message does not start");
    assert!(err.contains("--max-message 0"), "{err}");
    // The listener it was given is closed, not left accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
