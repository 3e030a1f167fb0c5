//! Bounded answers: one small request never builds an unbounded answer, and a
//! client that follows `last_id` still gets every message.
#![allow(clippy::unwrap_used)]

mod common;

use common::Server;

#[tokio::test]
async fn a_json_resume_comes_in_bounded_batches_and_loses_nothing() {
    const MESSAGES: usize = 10_000;
    const BOUND: usize = 64 * 1024;
    let server = Server::start(&["--history", "10000", "--max-batch-bytes", "64K"]);
    let mut c = server.client().await;
    let mut published = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        // Sizes vary so batches end at different places.
        let data = format!("m{i}:{}", "x".repeat(i % 97));
        published.push((c.publish("big", &data).await, data));
    }
    let mut got = Vec::with_capacity(MESSAGES);
    let mut since = "oldest".to_owned();
    let mut batches = 0;
    loop {
        let resp = c
            .get(&format!(
                "/subscribe?channel=big&since={since}&format=json&timeout=0"
            ))
            .await;
        if resp.status == 204 {
            break;
        }
        assert_eq!(resp.status, 200);
        assert!(
            resp.body.len() <= BOUND,
            "a batch of {} bytes passed the bound",
            resp.body.len()
        );
        let json = resp.json();
        assert_eq!(json["gap"], false);
        let messages = json["messages"].as_array().unwrap();
        assert!(!messages.is_empty());
        let last = messages.last().unwrap()["id"].as_str().unwrap();
        assert_eq!(json["last_id"], last, "last_id is where the batch stopped");
        assert_eq!(resp.id(), last);
        for m in messages {
            got.push((
                m["id"].as_str().unwrap().to_owned(),
                m["data"].as_str().unwrap().to_owned(),
            ));
        }
        since = last.to_owned();
        batches += 1;
    }
    assert!(batches > 10, "only {batches} batches");
    assert_eq!(got.len(), MESSAGES);
    assert!(got == published, "every message once, in order");
}

#[tokio::test]
async fn a_message_larger_than_the_batch_bound_still_goes_out_alone() {
    let server = Server::start(&["--max-batch-bytes", "1K"]);
    let mut c = server.client().await;
    let big = "y".repeat(4000);
    let first = c.publish("one", &big).await;
    let second = c.publish("one", "small").await;
    let resp = c
        .get("/subscribe?channel=one&since=oldest&format=json")
        .await;
    let json = resp.json();
    assert_eq!(json["messages"].as_array().unwrap().len(), 1);
    assert_eq!(json["messages"][0]["data"], big.as_str());
    assert_eq!(json["last_id"], first.as_str());
    let resp = c
        .get(&format!("/subscribe?channel=one&since={first}&format=json"))
        .await;
    assert_eq!(resp.json()["messages"][0]["id"], second.as_str());
}
