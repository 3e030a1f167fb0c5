//! Several channels in one request: each message says its channel, and the
//! composite cursor resumes every channel exactly, on long-polls and streams.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{Client, Events, Server, join, spawn_get};
use serde_json::Value;

/// A cursor as a map from channel to id.
fn entries(cursor: &str) -> HashMap<String, String> {
    cursor
        .split(',')
        .map(|e| {
            let (c, id) = e.split_once('~').unwrap();
            (c.to_owned(), id.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn one_long_poll_waits_on_several_channels_and_says_which_answered() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let before = c.publish("a", "a0").await;

    // The first answer's cursor covers every channel, those with no message too.
    let empty = c.get("/subscribe?channel=a,b,c&timeout=0").await;
    assert_eq!(empty.status, 204);
    let cursor = empty.id();
    assert_eq!(entries(&cursor)["a"], before);
    assert_eq!(entries(&cursor).len(), 3);

    let waiting = spawn_get(
        server.addr,
        &format!("/subscribe?channel=a,b,c&since={cursor}"),
    );
    server.wait_for_stat("waiting", 1).await;
    let b1 = c.publish("b", "b1").await;
    let got = join(waiting).await;
    assert_eq!((got.status.as_u16(), got.text()), (200, "b1"));
    assert_eq!(got.header("x-channel"), Some("b"));
    let cursor = got.id();
    let at = entries(&cursor);
    assert_eq!(
        (at["a"].as_str(), at["b"].as_str()),
        (before.as_str(), b1.as_str())
    );

    // Published between two polls, on two channels: the raw answers take
    // them one at a time, oldest first, and the cursor loses neither.
    let c1 = c.publish("c", "c1").await;
    let a1 = c.publish("a", "a1").await;
    let first = c
        .get(&format!("/subscribe?channel=a,b,c&since={cursor}"))
        .await;
    assert_eq!((first.text(), first.header("x-channel")), ("c1", Some("c")));
    let second = c
        .get(&format!("/subscribe?channel=a,b,c&since={}", first.id()))
        .await;
    assert_eq!(
        (second.text(), second.header("x-channel")),
        ("a1", Some("a"))
    );
    let at = entries(&second.id());
    assert_eq!(
        (at["a"].clone(), at["b"].clone(), at["c"].clone()),
        (a1.clone(), b1, c1.clone())
    );

    // The same in JSON: every message with its channel, in publish order.
    let batch = c
        .get(&format!(
            "/subscribe?channel=a,b,c&format=json&since={cursor}"
        ))
        .await;
    let body = batch.json();
    assert_eq!(body["channel"], "a,b,c");
    let messages: Vec<(String, String, String)> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_owned();
            (s("channel"), s("id"), s("data"))
        })
        .collect();
    assert_eq!(
        messages,
        vec![("c".into(), c1, "c1".into()), ("a".into(), a1, "a1".into())]
    );
    assert_eq!(body["last_id"], second.id().as_str());
    assert_eq!(batch.id(), second.id());
    assert_eq!(body["gap"], Value::Array(vec![]));
    // Nothing waits once answered.
    assert_eq!(server.stats().await["waiting"], 0);
}

/// Publishes `total` messages round-robin on `channels` while a subscriber
/// re-polls with its cursor; checks every message arrives once, in order
/// per channel, with no gap.
async fn burst_across(server: &Server, channels: &[&str], total: usize, json: bool) {
    let list = channels.join(",");
    let mut subscriber = server.client().await;
    let mut cursor = subscriber
        .get(&format!("/subscribe?channel={list}&timeout=0"))
        .await
        .id();
    let addr = server.addr;
    let names: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
    let publisher = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        for i in 0..total {
            let channel = &names[i % names.len()];
            client.publish(channel, &format!("{channel}:{i}")).await;
        }
    });
    let mut got: HashMap<String, Vec<usize>> = HashMap::new();
    let mut count = 0;
    let format = if json { "&format=json" } else { "" };
    while count < total {
        let path = format!("/subscribe?channel={list}&since={cursor}&timeout=5{format}");
        let resp = subscriber.get(&path).await;
        if resp.status == 204 {
            assert!(
                !publisher.is_finished(),
                "timed out with {count} of {total}"
            );
            continue;
        }
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-gap"), None);
        cursor = resp.id();
        let mut take = |channel: &str, data: &str| {
            let (c, i) = data.split_once(':').unwrap();
            assert_eq!(c, channel, "a message says its own channel");
            got.entry(c.to_owned())
                .or_default()
                .push(i.parse().unwrap());
            count += 1;
        };
        if json {
            let body = resp.json();
            assert_eq!(body["last_id"], cursor.as_str());
            for m in body["messages"].as_array().unwrap() {
                take(m["channel"].as_str().unwrap(), m["data"].as_str().unwrap());
            }
        } else {
            take(resp.header("x-channel").unwrap(), resp.text());
        }
    }
    publisher.await.unwrap();
    for (k, channel) in channels.iter().enumerate() {
        let expected: Vec<usize> = (k..total).step_by(channels.len()).collect();
        assert_eq!(
            got[*channel], expected,
            "{channel}: every message once, in order"
        );
    }
}

#[tokio::test]
async fn a_burst_across_three_channels_arrives_once_and_in_order_per_channel() {
    let server = Server::start(&["--history", "20000"]);
    burst_across(&server, &["x", "y", "z"], 10_000, true).await;
    burst_across(&server, &["p", "q", "r"], 3_000, false).await;
}

/// The id and JSON item of the next message event.
async fn event(stream: &mut Events) -> (String, Value) {
    let (id, data) = stream.message().await;
    (id, serde_json::from_str(&data).unwrap())
}

#[tokio::test]
async fn an_event_stream_on_several_channels_resumes_every_channel_from_its_last_event_id() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let old = c.publish("b", "before").await;
    let mut stream = Events::open(&server, "/events?channel=a,b", None).await;
    server.wait_for_stat("streams", 1).await;
    let a1 = c.publish("a", "a1").await;
    let b1 = c.publish("b", "b1").await;
    let (first, item) = event(&mut stream).await;
    assert_eq!(
        (item["channel"].as_str(), item["data"].as_str()),
        (Some("a"), Some("a1"))
    );
    assert_eq!(item["id"], a1.as_str());
    assert_eq!(entries(&first)["a"], a1);
    assert_eq!(
        entries(&first)["b"],
        old,
        "b stands where it was when the stream opened"
    );
    let (second, item) = event(&mut stream).await;
    assert_eq!(
        (item["channel"].as_str(), item["data"].as_str()),
        (Some("b"), Some("b1"))
    );
    assert_eq!(entries(&second)["b"], b1);
    drop(stream);
    server.wait_for_stat("streams", 0).await;

    // Away for a while: the browser resumes with its Last-Event-ID and gets
    // exactly what it missed on each channel.
    let b2 = c.publish("b", "b2").await;
    let a2 = c.publish("a", "a2").await;
    let mut stream = Events::open(&server, "/events?channel=a,b", Some(&second)).await;
    let (_, item) = event(&mut stream).await;
    assert_eq!(
        (item["channel"].as_str(), item["id"].as_str()),
        (Some("b"), Some(b2.as_str()))
    );
    let (last, item) = event(&mut stream).await;
    assert_eq!(
        (item["channel"].as_str(), item["id"].as_str()),
        (Some("a"), Some(a2.as_str()))
    );
    assert_eq!(
        entries(&last),
        HashMap::from([("a".into(), a2), ("b".into(), b2)])
    );
    let stats = server.stats().await;
    assert_eq!(
        (stats["streams"].as_u64(), stats["waiting"].as_u64()),
        (Some(1), Some(0))
    );
}

#[tokio::test]
async fn a_gap_is_reported_for_the_channels_that_missed_messages_only() {
    let server = Server::start(&["--history", "2"]);
    let mut c = server.client().await;
    let cursor = c.get("/subscribe?channel=a,b&timeout=0").await.id();
    for i in 0..5 {
        c.publish("a", &format!("a{i}")).await;
    }
    c.publish("b", "b0").await;
    let batch = c
        .get(&format!(
            "/subscribe?channel=a,b&format=json&since={cursor}"
        ))
        .await;
    assert_eq!(batch.header("x-gap"), Some("a"));
    let body = batch.json();
    assert_eq!(body["gap"], serde_json::json!(["a"]));
    let data: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["a3", "a4", "b0"]);
    // Told once: the next poll from the new cursor has no gap.
    let next = c
        .get(&format!(
            "/subscribe?channel=a,b&timeout=0&since={}",
            batch.id()
        ))
        .await;
    assert_eq!((next.status.as_u16(), next.header("x-gap")), (204, None));

    // An event stream says it in an `event: gap` naming the channels.
    let mut stream = Events::open(&server, "/events?channel=a,b", Some(&cursor)).await;
    let gap = loop {
        let block = stream.next().await.unwrap();
        if block.contains("event: gap") {
            break block;
        }
    };
    assert!(gap.contains(r#"data: {"channels":["a"]}"#), "{gap}");
}

#[tokio::test]
async fn after_a_restart_every_channel_of_a_cursor_reports_its_gap() {
    let first = Server::start(&[]);
    let mut c = first.client().await;
    c.publish("a", "lost").await;
    let cursor = c.get("/subscribe?channel=a,b&timeout=0").await.id();
    drop(c);
    drop(first);

    let second = Server::start(&[]);
    let mut c = second.client().await;
    let resp = c
        .get(&format!("/subscribe?channel=a,b&timeout=0&since={cursor}"))
        .await;
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("x-gap"), Some("a,b"));
    let id = c.publish("b", "new").await;
    let resp = c
        .get(&format!(
            "/subscribe?channel=a,b&format=json&since={cursor}"
        ))
        .await;
    let body = resp.json();
    assert_eq!(body["gap"], serde_json::json!(["a", "b"]));
    assert_eq!(body["messages"][0]["id"], id.as_str());
}

#[tokio::test]
async fn too_many_channels_and_bad_cursors_are_refused_and_nothing_waits() {
    let server = Server::start(&["--max-channels-per-request", "3"]);
    let mut c = server.client().await;
    for path in [
        "/subscribe?channel=a,b,c,d",
        "/events?channel=a,b,c,d",
        "/subscribe?channel=a,b&since=abc-1",
        "/subscribe?channel=a,b&since=a~nonsense",
        "/subscribe?channel=a,b&since=a~",
        "/events?channel=a,b&since=~abc-1",
        "/subscribe?channel=a,b,a",
        "/subscribe?channel=a,,b",
    ] {
        c.get(path).await.assert_refused(400);
    }
    let many = c.get("/subscribe?channel=a,b,c,d").await;
    assert!(many.json()["error"].as_str().unwrap().contains("at most 3"));
    // The same bad cursor in Last-Event-ID.
    let resp = c
        .request(
            hyper::Method::GET,
            "/events?channel=a,b",
            &[("last-event-id", "a-1-2")],
            "",
        )
        .await;
    resp.assert_refused(400);
    let stats = server.stats().await;
    assert_eq!(
        (stats["waiting"].as_u64(), stats["channels"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(stats["refused"]["too_many_channels"], 3);
}

#[tokio::test]
async fn a_subscriber_on_several_channels_counts_once_and_leaves_nothing_when_gone() {
    let server = Server::start(&[]);
    let waiting = spawn_get(server.addr, "/subscribe?channel=a,b,c,d");
    server.wait_for_stat("waiting", 1).await;
    assert_eq!(server.stats().await["channels"], 4);
    waiting.abort();
    server.wait_for_stat("waiting", 0).await;
    server.wait_for_stat("channels", 0).await;
}

/// Publishes `data` on `channels` (comma-separated) at once: the answer.
async fn publish_on(c: &mut Client, channels: &str, data: &str) -> Value {
    let resp = c
        .request(
            hyper::Method::POST,
            &format!("/publish?channel={channels}"),
            &[("content-type", "text/plain")],
            data.to_owned(),
        )
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    resp.json()
}

#[tokio::test]
async fn one_publish_reaches_a_subscriber_of_three_of_its_channels_once_and_resumes_exactly() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let cursor = c.get("/subscribe?channel=a,b,c,z&timeout=0").await.id();
    let waiting = spawn_get(
        server.addr,
        &format!("/subscribe?channel=a,b,c,z&since={cursor}"),
    );
    server.wait_for_stat("waiting", 1).await;
    let answer = publish_on(&mut c, "a,b,c,d", "to all").await;
    let id = answer["id"].as_str().unwrap().to_owned();
    assert_eq!(answer["channel"], "a,b,c,d");
    for ch in ["a", "b", "c", "d"] {
        assert_eq!(answer["ids"][ch], id.as_str(), "{answer}");
        assert_eq!(
            server.all_messages(ch).await,
            [(id.clone(), "to all".into())]
        );
    }
    assert_eq!(
        answer["subscribers"], 1,
        "the subscriber of three channels counts once"
    );
    let got = join(waiting).await;
    assert_eq!(got.text(), "to all");
    let at = entries(&got.id());
    for ch in ["a", "b", "c"] {
        assert_eq!(at[ch], id, "{ch} moved past it");
    }
    assert_eq!(at["z"], entries(&cursor)["z"]);
    // Resuming gets nothing twice, then what follows.
    let again = c
        .get(&format!(
            "/subscribe?channel=a,b,c,z&since={}&timeout=0",
            got.id()
        ))
        .await;
    assert_eq!(again.status, 204);
    let next = c.publish("b", "then b").await;
    let batch = c
        .get(&format!(
            "/subscribe?channel=a,b,c,z&since={cursor}&format=json"
        ))
        .await
        .json();
    let items: Vec<(&str, &str)> = batch["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["data"].as_str().unwrap(), m["id"].as_str().unwrap()))
        .collect();
    assert_eq!(items, [("to all", id.as_str()), ("then b", next.as_str())]);
    // An event stream on two of them gets it once too.
    let mut stream = Events::open(
        &server,
        &format!("/events?channel=a,c&since={cursor}"),
        None,
    )
    .await;
    let (first, item) = event(&mut stream).await;
    assert_eq!(item["data"], "to all");
    assert_eq!(
        (entries(&first)["a"].as_str(), entries(&first)["c"].as_str()),
        (id.as_str(), id.as_str())
    );
    c.publish("c", "then c").await;
    let (_, item) = event(&mut stream).await;
    assert_eq!(item["data"], "then c", "the copy on c was not sent again");
}

#[tokio::test]
async fn a_publish_on_several_channels_is_all_or_none_and_one_key_covers_it() {
    let server = Server::start(&["--max-channels", "3"]);
    let mut c = server.client().await;
    c.publish("x", "x0").await;
    let resp = c
        .request(
            hyper::Method::POST,
            "/publish?channel=x,y,z,w&message=m",
            &[],
            "",
        )
        .await;
    resp.assert_refused_for(503, "busy");
    for ch in ["y", "z", "w"] {
        assert!(server.all_messages(ch).await.is_empty(), "{ch}");
    }
    assert_eq!(
        server.all_messages("x").await.len(),
        1,
        "x got nothing either"
    );
    // One key for the whole publish: a retry publishes nothing; the same
    // key for other channels is another publish, refused.
    let keyed = |channels: &'static str| {
        let path = format!("/publish?channel={channels}");
        (
            path,
            [("idempotency-key", "k"), ("content-type", "text/plain")],
        )
    };
    let (path, headers) = keyed("x,y");
    let first = c
        .request(hyper::Method::POST, &path, &headers, "once")
        .await;
    let retry = c
        .request(hyper::Method::POST, &path, &headers, "once")
        .await;
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json()["id"], first.json()["id"]);
    assert_eq!(server.all_messages("y").await.len(), 1);
    let (path, headers) = keyed("x,z");
    c.request(hyper::Method::POST, &path, &headers, "once")
        .await
        .assert_refused_for(422, "idempotency_key_reused");
    // What no list may hold.
    for (list, status, reason) in [
        ("x,x", 400, "bad_channel"),
        ("x,$presence:x", 403, "forbidden"),
        ("x,bad%20name", 400, "bad_channel"),
    ] {
        c.request(
            hyper::Method::POST,
            &format!("/publish?channel={list}&message=m"),
            &[],
            "",
        )
        .await
        .assert_refused_for(status, reason);
    }
}
