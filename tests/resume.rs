//! Zero loss between polls: a burst of messages while a subscriber keeps re-polling.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

mod common;

use std::time::Duration;

use common::{Client, Server};

const BURST: usize = 10_000;

/// Publishes `BURST` messages on one connection while a subscriber re-polls with
/// `since`; returns what the subscriber received, in order, and the gaps it saw.
async fn burst(server: &Server, channel: &str, json: bool) -> (Vec<String>, usize) {
    let mut subscriber = server.client().await;
    // Start from the channel's current id so the very first message counts.
    let first = subscriber
        .get(&format!("/subscribe?channel={channel}&timeout=0"))
        .await;
    let mut since = first.id();

    let addr = server.addr;
    let channel_owned = channel.to_owned();
    let publisher = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        for i in 0..BURST {
            client.publish(&channel_owned, &format!("m{i}")).await;
        }
    });

    let mut got = Vec::with_capacity(BURST);
    let mut gaps = 0;
    let format = if json { "&format=json" } else { "" };
    while got.len() < BURST {
        let path = format!("/subscribe?channel={channel}&since={since}&timeout=5{format}");
        let resp = subscriber.get(&path).await;
        if resp.status == 204 {
            assert!(
                !publisher.is_finished(),
                "timed out with {} of {BURST}",
                got.len()
            );
            continue;
        }
        assert_eq!(resp.status, 200);
        gaps += usize::from(resp.gap());
        since = resp.id();
        if json {
            let body = resp.json();
            assert_eq!(body["gap"].as_bool(), Some(resp.gap()));
            assert_eq!(body["last_id"].as_str(), Some(since.as_str()));
            for m in body["messages"].as_array().unwrap() {
                got.push(m["data"].as_str().unwrap().to_owned());
            }
        } else {
            got.push(resp.text().to_owned());
        }
        if gaps > 0 && got.last().map(String::as_str) == Some(&*format!("m{}", BURST - 1)) {
            break;
        }
    }
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .unwrap()
        .unwrap();
    (got, gaps)
}

fn assert_complete(got: &[String]) {
    assert_eq!(got.len(), BURST, "every message arrives exactly once");
    for (i, data) in got.iter().enumerate() {
        assert_eq!(data, &format!("m{i}"), "in order, no duplicates");
    }
}

/// A burst on `channel` arrives with no gap, complete and in order.
async fn assert_burst_complete(server: &Server, channel: &str, json: bool) {
    let (got, gaps) = burst(server, channel, json).await;
    assert_eq!(gaps, 0);
    assert_complete(&got);
}

#[tokio::test]
async fn a_burst_arrives_complete_and_in_order_in_raw_format() {
    let server = Server::start(&["--history", "20000"]);
    assert_burst_complete(&server, "burst", false).await;
}

#[tokio::test]
async fn a_burst_arrives_complete_and_in_order_in_json_format() {
    let server = Server::start(&["--history", "20000"]);
    assert_burst_complete(&server, "burst", true).await;
}

#[tokio::test]
async fn on_two_reactors_bursts_arrive_exactly_as_on_one() {
    let server = Server::start(&["--history", "20000", "--threads", "2"]);
    // Publisher and subscribers land on different reactors (round robin).
    assert_burst_complete(&server, "two-raw", false).await;
    assert_burst_complete(&server, "two-json", true).await;
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.child.id())).unwrap();
    let names: Vec<String> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    assert!(
        names.iter().any(|n| n.trim() == "comethub-1"),
        "a second reactor thread runs: {names:?}"
    );
}

#[tokio::test]
async fn with_a_small_history_a_slow_subscriber_sees_gaps_never_disorder() {
    let server = Server::start(&["--history", "4"]);
    // The default format needs one poll per message, so with 4 kept it falls behind.
    let (got, gaps) = burst(&server, "small", false).await;
    assert!(
        gaps > 0,
        "falling behind a 4-message history must be reported"
    );
    let seqs: Vec<usize> = got.iter().map(|d| d[1..].parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "strictly in order");
    assert_eq!(seqs.last(), Some(&(BURST - 1)));
}
