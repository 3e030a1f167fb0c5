//! Long-poll and publish, as PROTOCOL.md describes them.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

mod common;

use common::{Server, join, spawn_get};
use hyper::Method;

#[tokio::test]
async fn the_seed_curl_pair_works_on_the_default_channel() {
    let server = Server::start(&[]);
    let waiting = spawn_get(server.addr, "/subscribe");
    server.wait_for_stat("waiting", 1).await;
    let published = server.get("/publish?message=hi").await;
    assert_eq!(published.status, 200);
    let answer = published.json();
    assert_eq!(answer["channel"], "default");
    assert_eq!(answer["subscribers"], 1);
    let got = join(waiting).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hi");
    assert_eq!(
        got.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(got.id(), answer["id"].as_str().unwrap());
    assert_eq!(got.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn every_subscriber_on_a_channel_gets_the_same_message() {
    let server = Server::start(&[]);
    let subs: Vec<_> = (0..5)
        .map(|_| spawn_get(server.addr, "/subscribe?channel=room"))
        .collect();
    server.wait_for_stat("waiting", 5).await;
    let id = server.client().await.publish("room", "to all").await;
    for sub in subs {
        let got = join(sub).await;
        assert_eq!(got.text(), "to all");
        assert_eq!(got.id(), id);
    }
    assert_eq!(server.stats().await["delivered"], 5);
}

#[tokio::test]
async fn channels_are_isolated() {
    let server = Server::start(&[]);
    let a = spawn_get(server.addr, "/subscribe?channel=a&timeout=1");
    server.wait_for_stat("waiting", 1).await;
    let mut client = server.client().await;
    let resp = client.get("/publish?channel=b&message=for-b").await;
    assert_eq!(resp.json()["subscribers"], 0);
    let got = join(a).await;
    assert_eq!(got.status, 204, "a must not see b's message");
    let b = client.get("/subscribe?channel=b&since=oldest").await;
    assert_eq!(b.text(), "for-b");
}

#[tokio::test]
async fn timeout_answers_204_with_the_channel_last_id() {
    let server = Server::start(&["--timeout", "1"]);
    let mut client = server.client().await;
    let id = client.publish("t", "first").await;
    // Per-request timeout.
    let got = client.get("/subscribe?channel=t&timeout=0.2").await;
    assert_eq!(got.status, 204);
    assert!(got.body.is_empty());
    assert_eq!(got.id(), id);
    // The server's default (--timeout 1) caps a larger request.
    let got = client.get("/subscribe?channel=t&timeout=3600").await;
    assert_eq!(got.status, 204);
    assert_eq!(got.id(), id);
    // Echoing the 204's id loses nothing published after it.
    let later = client.publish("t", "second").await;
    let got = client
        .get(&format!("/subscribe?channel=t&since={id}"))
        .await;
    assert_eq!((got.text(), got.id()), ("second", later));
    assert!(!got.gap());
}

#[tokio::test]
async fn timeout_on_an_empty_channel_gives_an_id_that_resumes_without_gap() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let got = client.get("/subscribe?channel=fresh&timeout=0.1").await;
    assert_eq!(got.status, 204);
    let cursor = got.id();
    client.publish("other", "noise").await;
    let id = client.publish("fresh", "news").await;
    let got = client
        .get(&format!("/subscribe?channel=fresh&since={cursor}"))
        .await;
    assert_eq!((got.text(), got.id()), ("news", id));
    assert!(!got.gap());
}

#[tokio::test]
async fn since_resumes_in_both_formats() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(client.publish("r", &format!("m{i}")).await);
    }
    let raw = client
        .get(&format!("/subscribe?channel=r&since={}", ids[0]))
        .await;
    assert_eq!(
        (raw.status.as_u16(), raw.text(), raw.id()),
        (200, "m2", ids[1].clone())
    );
    let json = client
        .get(&format!(
            "/subscribe?channel=r&since={}&format=json",
            ids[0]
        ))
        .await;
    assert_eq!(json.header("content-type"), Some("application/json"));
    let body = json.json();
    assert_eq!(body["channel"], "r");
    assert_eq!(body["gap"], false);
    assert_eq!(body["last_id"], ids[2].as_str());
    assert_eq!(json.id(), ids[2]);
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        (msgs[0]["id"].as_str(), msgs[0]["data"].as_str()),
        (Some(&*ids[1]), Some("m2"))
    );
    assert_eq!(
        (msgs[1]["id"].as_str(), msgs[1]["data"].as_str()),
        (Some(&*ids[2]), Some("m3"))
    );
    // since=oldest starts at the first retained message.
    let oldest = client.get("/subscribe?channel=r&since=oldest").await;
    assert_eq!((oldest.text(), oldest.id()), ("m1", ids[0].clone()));
    // Last-Event-ID is the same as since.
    let header = [("last-event-id", ids[1].as_str())];
    let by_header = client
        .request(Method::GET, "/subscribe?channel=r", &header, "")
        .await;
    assert_eq!((by_header.text(), by_header.id()), ("m3", ids[2].clone()));
    // Caught up: waits, then times out with the last id.
    let caught_up = client
        .get(&format!(
            "/subscribe?channel=r&since={}&timeout=0.2",
            ids[2]
        ))
        .await;
    assert_eq!(
        (caught_up.status.as_u16(), caught_up.id()),
        (204, ids[2].clone())
    );
}

#[tokio::test]
async fn without_since_only_later_messages_arrive() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    client.publish("n", "old").await;
    let waiting = spawn_get(server.addr, "/subscribe?channel=n");
    server.wait_for_stat("waiting", 1).await;
    client.publish("n", "new").await;
    assert_eq!(join(waiting).await.text(), "new");
}

#[tokio::test]
async fn a_foreign_id_is_reported_as_a_gap() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let id = client.publish("f", "kept").await;
    let raw = client.get("/subscribe?channel=f&since=zzzzzz-1").await;
    assert!(raw.gap(), "another epoch's id");
    assert_eq!((raw.text(), raw.id()), ("kept", id.clone()));
    let json = client
        .get("/subscribe?channel=f&since=zzzzzz-1&format=json")
        .await
        .json();
    assert_eq!(json["gap"], true);
    // An id of this epoch from the future is foreign too.
    let epoch = id.rsplit_once('-').unwrap().0;
    let future = client
        .get(&format!("/subscribe?channel=f&since={epoch}-999999"))
        .await;
    assert!(future.gap());
    // And a server restarted has a new epoch: the old id is foreign.
    drop(client);
    drop(server);
    let restarted = Server::start(&[]);
    let waiting = spawn_get(restarted.addr, &format!("/subscribe?channel=f&since={id}"));
    restarted.wait_for_stat("waiting", 1).await;
    let new_id = restarted.client().await.publish("f", "after restart").await;
    let got = join(waiting).await;
    assert!(got.gap());
    assert_eq!((got.text(), got.id()), ("after restart", new_id.clone()));
    assert_ne!(new_id.rsplit_once('-').unwrap().0, epoch);
}

#[tokio::test]
async fn a_small_history_reports_a_gap_instead_of_skipping_silently() {
    let server = Server::start(&["--history", "3"]);
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 1..=10 {
        ids.push(client.publish("h", &format!("m{i}")).await);
    }
    let got = client
        .get(&format!("/subscribe?channel=h&since={}", ids[0]))
        .await;
    assert!(got.gap());
    assert_eq!((got.text(), got.id()), ("m8", ids[7].clone()));
    let json = client
        .get(&format!(
            "/subscribe?channel=h&since={}&format=json",
            ids[0]
        ))
        .await
        .json();
    assert_eq!(json["gap"], true);
    assert_eq!(json["messages"].as_array().unwrap().len(), 3);
    // Within the history there is no gap.
    let got = client
        .get(&format!("/subscribe?channel=h&since={}", ids[7]))
        .await;
    assert!(!got.gap());
    assert_eq!(got.text(), "m9");
    let info = client.get("/channels/h").await.json();
    assert_eq!(info["messages"], 3);
    assert_eq!(info["last_id"], ids[9].as_str());
}

#[tokio::test]
async fn old_messages_leave_the_history() {
    let server = Server::start(&["--history-age", "1"]);
    let mut client = server.client().await;
    let id = client.publish("aging", "soon gone").await;
    let stats = server.stats().await;
    assert_eq!(stats["messages"], 1);
    assert!(stats["history_bytes"].as_u64().unwrap() >= 9);
    // The sweep (every second) drops it once it is a second old.
    server.wait_for_stat("messages", 0).await;
    let got = client
        .get("/subscribe?channel=aging&since=oldest&timeout=0.2")
        .await;
    assert_eq!(got.status, 204);
    let stats = server.stats().await;
    assert_eq!(stats["history_bytes"], 0);
    // A subscriber resuming from before the expiry learns it missed something.
    let epoch = id.rsplit_once('-').unwrap().0;
    let before = format!("{epoch}-0");
    let waiting = spawn_get(
        server.addr,
        &format!("/subscribe?channel=aging&since={before}"),
    );
    server.wait_for_stat("waiting", 1).await;
    client.publish("aging", "fresh").await;
    let got = join(waiting).await;
    assert!(got.gap());
    assert_eq!(got.text(), "fresh");
}

#[tokio::test]
async fn the_publisher_content_type_and_bytes_are_kept() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let bytes: Vec<u8> = (0..=255u8).collect();
    let resp = client
        .request(
            Method::POST,
            "/publish?channel=bin",
            &[("content-type", "image/png")],
            bytes.clone(),
        )
        .await;
    assert_eq!(resp.status, 200);
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let raw = client.get("/subscribe?channel=bin&since=oldest").await;
    assert_eq!(raw.header("content-type"), Some("image/png"));
    assert_eq!(&raw.body[..], &bytes[..]);
    assert_eq!(raw.id(), id);
    let json = client
        .get("/subscribe?channel=bin&since=oldest&format=json")
        .await
        .json();
    let m = &json["messages"][0];
    assert_eq!(m["type"], "image/png");
    assert_eq!(m["encoding"], "base64");
    assert_eq!(m["data"].as_str().unwrap().len(), 344);

    let doc = r#"{"name":"ann","text":"hello"}"#;
    client
        .request(
            Method::POST,
            "/publish?channel=js",
            &[("content-type", "application/json")],
            doc,
        )
        .await;
    let got = client.get("/subscribe?channel=js&since=oldest").await;
    assert_eq!(
        (got.header("content-type"), got.text()),
        (Some("application/json"), doc)
    );
}

#[tokio::test]
async fn form_posts_and_query_publishes_are_utf8_text() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let resp = client
        .request(
            Method::POST,
            "/publish?channel=f",
            &form,
            "message=caf%C3%A9+%26+tea",
        )
        .await;
    assert_eq!(resp.status, 200);
    let got = client.get("/subscribe?channel=f&since=oldest").await;
    assert_eq!(got.text(), "café & tea");
    assert_eq!(
        got.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let resp = client
        .get("/publish?channel=f&message=%D0%BF%D1%80%D0%B8%D0%B2%D0%B5%D1%82")
        .await;
    assert_eq!(resp.status, 200);
    let json = client
        .get(&format!(
            "/subscribe?channel=f&since={}&format=json",
            got.id()
        ))
        .await
        .json();
    assert_eq!(json["messages"][0]["data"], "привет");
}

#[tokio::test]
async fn ids_increase_strictly_within_a_channel() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let mut last = 0u64;
    for i in 0..50 {
        let channel = if i % 2 == 0 { "even" } else { "odd" };
        let id = client.publish(channel, "x").await;
        let seq: u64 = id.rsplit_once('-').unwrap().1.parse().unwrap();
        assert!(seq > last);
        last = seq;
    }
}

#[tokio::test]
async fn delete_drops_the_channel_and_answers_waiters_410() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    client.publish("gone", "before").await;
    let waiting = spawn_get(
        server.addr,
        "/subscribe?channel=gone&since=oldest&format=json&timeout=5",
    )
    .await
    .unwrap();
    assert_eq!(waiting.status, 200, "history answered at once");
    let waiting = spawn_get(server.addr, "/subscribe?channel=gone");
    server.wait_for_stat("waiting", 1).await;
    let resp = client
        .request(Method::DELETE, "/publish?channel=gone", &[], "")
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["deleted"], true);
    join(waiting).await.assert_refused(410);
    let after = client
        .get("/subscribe?channel=gone&since=oldest&timeout=0.1")
        .await;
    assert_eq!(after.status, 204, "history is gone");
    assert_eq!(server.stats().await["channels"], 0);
}

#[tokio::test]
async fn stats_and_channel_info_describe_the_server() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    client.publish("s", "12345").await;
    let waiting = spawn_get(server.addr, "/subscribe?channel=s");
    server.wait_for_stat("waiting", 1).await;
    let info = client.get("/channels/s").await.json();
    assert_eq!(info["channel"], "s");
    assert_eq!(info["subscribers"], 1);
    assert_eq!(info["messages"], 1);
    let stats = server.stats().await;
    assert_eq!(stats["channels"], 1);
    assert_eq!(stats["published"], 1);
    assert_eq!(stats["messages"], 1);
    // The data and what keeping it costs.
    assert!(stats["history_bytes"].as_u64().unwrap() > 5);
    assert!(stats["connections"].as_u64().unwrap() >= 2);
    assert!(stats["uptime_seconds"].is_u64());
    client.publish("s", "x").await;
    join(waiting).await;
    let metrics = client.get("/metrics").await;
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(metrics.text().contains("comethub_published_total 2\n"));
    assert!(metrics.text().contains("comethub_delivered_total 1\n"));
    assert!(
        metrics
            .text()
            .contains("# TYPE comethub_waiting_subscribers gauge")
    );
    let unknown = client.get("/channels/nobody").await.json();
    assert_eq!(
        (
            unknown["subscribers"].as_u64(),
            unknown["messages"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn history_bytes_count_the_encodings_kept_with_each_message() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    // Not UTF-8: its JSON item carries it in base64, a third larger.
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 7) as u8 | 0x80).collect();
    for _ in 0..50 {
        let resp = client
            .request(
                Method::POST,
                "/publish?channel=bin",
                &[("content-type", "application/octet-stream")],
                data.clone(),
            )
            .await;
        assert_eq!(resp.status, 200);
    }
    let kept = server.stats().await["history_bytes"].as_u64().unwrap();
    assert!(kept >= 50 * 1000, "{kept}");
    let batch = client
        .get("/subscribe?channel=bin&since=oldest&format=json")
        .await
        .json();
    assert_eq!(batch["messages"].as_array().unwrap().len(), 50);
    let held = server.stats().await["history_bytes"].as_u64().unwrap();
    let base64 = 1000u64.div_ceil(3) * 4;
    assert!(
        held >= kept + 50 * base64,
        "history_bytes {held} leaves out the JSON kept for 50 messages"
    );
    // Deleting the channel gives every byte back.
    let deleted = client
        .request(Method::DELETE, "/publish?channel=bin", &[], "")
        .await;
    assert_eq!(deleted.status, 200);
    server.wait_for_stat("history_bytes", 0).await;
}

#[tokio::test]
async fn a_channel_freed_among_thousands_resumes_without_a_false_gap() {
    let server = Server::start(&["--history-age", "1"]);
    let mut client = server.client().await;
    let mine = client.publish("mine", "only").await;
    // Thousands of other channels get later messages, and all are freed.
    for i in 0..20_000 {
        client.publish(&format!("other{i}"), "x").await;
    }
    server.wait_for_stat("channels", 0).await;
    let resumed = client
        .get(&format!("/subscribe?channel=mine&since={mine}&timeout=0"))
        .await;
    assert_eq!(resumed.status, 204);
    assert!(
        !resumed.gap(),
        "nothing was published on 'mine' after {mine}"
    );
    assert_eq!(resumed.id(), mine);
    // While a reader from before "only" did miss it.
    let before = mine.replace("-1", "-0");
    let missed = client
        .get(&format!("/subscribe?channel=mine&since={before}&timeout=0"))
        .await;
    assert!(missed.gap());
}
