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

/// Sends `GET path` on a new connection and reads the answer's head (the
/// answers read here have no body), with no deadline of its own: under
/// paused time a deadline would be the next timer, and fire first.
async fn head(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    s.read_to_end(&mut head).await.unwrap();
    String::from_utf8(head).unwrap()
}

/// The `X-Message-Id` of an answer's head.
fn message_id(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(": ")?;
        name.eq_ignore_ascii_case("x-message-id")
            .then(|| value.to_owned())
    })
}

/// With tokio's clock paused, time passes only when every task waits, and
/// then at once to the next timer: a 30 s long-poll and a 60 s history age
/// are checked in milliseconds, to the second.
#[tokio::test(start_paused = true)]
async fn under_paused_time_a_long_poll_times_out_and_messages_age_out_on_time() {
    use tokio::time::Instant;
    let listener = comethub::listen::tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = comethub::Config {
        redis: None,
        publish_token: None,
        history_age: 60,
        ..Default::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(comethub::run(vec![listener.into()], config, async {
        let _ = stopped.await;
    }));
    let published = head(addr, "/publish?channel=t&message=old").await;
    assert!(published.starts_with("HTTP/1.1 200"), "{published}");
    let id = message_id(&published).unwrap();

    let asked = Instant::now();
    let timed_out = head(addr, &format!("/subscribe?channel=t&since={id}&timeout=30")).await;
    let waited = asked.elapsed();
    assert!(timed_out.starts_with("HTTP/1.1 204"), "{timed_out}");
    assert_eq!(message_id(&timed_out), Some(id.clone()), "{timed_out}");
    assert_eq!(waited.as_secs(), 30, "answered after {waited:?}");

    // 30 s in: still kept. Past 60 s: gone, and the reader is told where the
    // channel stands.
    let kept = head(addr, "/subscribe?channel=t&since=oldest&timeout=0").await;
    assert!(kept.starts_with("HTTP/1.1 200"), "{kept}");
    tokio::time::sleep(std::time::Duration::from_secs(31)).await;
    let aged = head(addr, "/subscribe?channel=t&since=oldest&timeout=0").await;
    assert!(aged.starts_with("HTTP/1.1 204"), "{aged}");
    assert_eq!(message_id(&aged), Some(id), "{aged}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
