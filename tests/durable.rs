//! What a publisher can count on: a retry with the same `Idempotency-Key`
//! publishes nothing (in memory and on Redis, from any instance), and with
//! `--redis-replicas` a `200` means the replicas have the message, through a
//! Sentinel failover.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Client, Redis, STEP, Server};
use hyper::Method;

/// Publishes `data` on `channel` under `key` (as the header), as text
/// (the type a `?message=` publish has); returns the answer.
async fn publish_keyed(c: &mut Client, channel: &str, key: &str, data: &str) -> common::Resp {
    let path = format!("/publish?channel={channel}");
    let headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("idempotency-key", key),
    ];
    c.request(Method::POST, &path, &headers, data.to_owned())
        .await
}

/// The same key twice publishes once and answers the same id both times;
/// another key, or the same key on another channel, publishes.
async fn a_retry_with_the_same_key_publishes_nothing(server: &Server) {
    let mut c = server.client().await;
    let waiting = common::spawn_get(server.addr, "/subscribe?channel=orders");
    server.wait_for_stat("waiting", 1).await;
    let first = publish_keyed(&mut c, "orders", "order-17", "paid").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(common::join(waiting).await.text(), "paid");

    let again = publish_keyed(&mut c, "orders", "order-17", "paid").await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.id(), first.id());
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.json()["replayed"], true);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // As a query parameter, and as RFC 8941's quoted string: the same key.
    let query = c
        .get("/publish?channel=orders&message=paid&idempotency_key=order-17")
        .await;
    assert_eq!(query.id(), first.id());
    let quoted = publish_keyed(&mut c, "orders", "\"order-17\"", "paid").await;
    assert_eq!(quoted.id(), first.id());
    // The same key for another message is a client's mistake, not a retry:
    // 422, and nothing published (another body, or the same one as
    // another type).
    let reused = publish_keyed(&mut c, "orders", "order-17", "refunded").await;
    reused.assert_refused(422);
    assert!(
        reused.text().contains("Idempotency-Key"),
        "{}",
        reused.text()
    );
    let retyped = c
        .request(
            Method::POST,
            "/publish?channel=orders",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "order-17"),
            ],
            "paid",
        )
        .await;
    retyped.assert_refused(422);
    assert_eq!(server.stats().await["refused"]["idempotency_key_reused"], 2);

    let other = publish_keyed(&mut c, "orders", "order-18", "shipped").await;
    assert_ne!(other.id(), first.id());
    let elsewhere = publish_keyed(&mut c, "invoices", "order-17", "sent").await;
    assert_eq!(elsewhere.header("idempotent-replayed"), None);
    let kept: Vec<String> = server
        .all_messages("orders")
        .await
        .into_iter()
        .map(|(_, data)| data)
        .collect();
    assert_eq!(kept, ["paid", "shipped"]);
}

/// Keys that are empty, too long, not visible ASCII, or two different ones
/// get `400`, and publish nothing.
async fn bad_keys_are_refused(server: &Server) {
    let mut c = server.client().await;
    let long = "k".repeat(129);
    for key in ["", "\"\"", long.as_str(), "a b", "a\tb"] {
        let path = "/publish?channel=bad";
        let headers = [("idempotency-key", key)];
        let resp = c.request(Method::POST, path, &headers, "x").await;
        resp.assert_refused(400);
    }
    let resp = c
        .request(
            Method::POST,
            "/publish?channel=bad&idempotency_key=one",
            &[("idempotency-key", "two")],
            "x",
        )
        .await;
    resp.assert_refused(400);
    assert!(server.all_messages("bad").await.is_empty());
    let fine = publish_keyed(&mut c, "bad", &"k".repeat(128), "x").await;
    assert_eq!(fine.status, 200);
}

#[tokio::test]
async fn in_memory_a_retried_publish_is_delivered_once() {
    let server = Server::start(&[]);
    a_retry_with_the_same_key_publishes_nothing(&server).await;
    bad_keys_are_refused(&server).await;
}

#[tokio::test]
async fn on_redis_a_key_publishes_once_across_instances_until_its_window_ends() {
    let redis = Redis::start();
    let a = Server::on_redis(&redis.url(), &["--idempotency-window", "2"]).await;
    let b = Server::on_redis(&redis.url(), &["--idempotency-window", "2"]).await;
    a_retry_with_the_same_key_publishes_nothing(&a).await;
    bad_keys_are_refused(&b).await;

    // The same 50 keys sent at once to both instances: one message each.
    let mut tasks = tokio::task::JoinSet::new();
    for server in [&a, &b] {
        for i in 0..50 {
            let addr = server.addr;
            tasks.spawn(async move {
                let mut c = Client::connect(addr).await;
                let resp = publish_keyed(&mut c, "race", &format!("k{i}"), &format!("m{i}")).await;
                assert_eq!(resp.status, 200);
                (i, resp.id())
            });
        }
    }
    let mut ids: HashMap<i32, String> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (i, id) = done.unwrap();
        let first = ids.entry(i).or_insert_with(|| id.clone());
        assert_eq!(*first, id, "key k{i} answered two ids");
    }
    let kept = b.all_messages("race").await;
    assert_eq!(kept.len(), 50, "{kept:?}");

    // After the window the key publishes again.
    let mut c = a.client().await;
    let first = publish_keyed(&mut c, "late", "k", "one").await;
    // The key lives in Redis with a TTL of the window (2 s here), which
    // Redis expires on its own clock: nothing to await but the time.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = publish_keyed(&mut c, "late", "k", "two").await;
    assert_eq!(second.header("idempotent-replayed"), None);
    assert_ne!(second.id(), first.id());
    assert_eq!(a.all_messages("late").await.len(), 2);
}

#[tokio::test]
async fn with_redis_replicas_a_publish_is_acknowledged_only_once_a_replica_has_it() {
    let master = Redis::start();
    let mut replica = Redis::replica_of(&master);
    let server = Server::on_redis(&master.url(), &["--redis-replicas", "1"]).await;
    let mut c = server.client().await;

    let ok = publish_keyed(&mut c, "ledger", "k1", "one").await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let on_replica = replica.cli(&["XLEN", "comethub:{ledger}:s"]);
    assert_eq!(on_replica.trim(), "1");

    // No replica: the message is stored on the master but not confirmed.
    replica.kill();
    let refused = publish_keyed(&mut c, "ledger", "k2", "two").await;
    refused.assert_refused(503);
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("replicas")
    );

    // A retry is not acknowledged either while no replica has the message.
    let retried = publish_keyed(&mut c, "ledger", "k2", "two").await;
    retried.assert_refused(503);

    // Back, synced: the publisher's retry is confirmed and publishes nothing new.
    replica.restart();
    replica.wait_synced();
    let retry = publish_keyed(&mut c, "ledger", "k2", "two").await;
    assert_eq!(retry.status, 200, "{:?}", retry.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let data: Vec<String> = server
        .all_messages("ledger")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, ["one", "two"]);
    let metrics = server.get("/metrics").await;
    assert!(
        metrics
            .text()
            .contains("comethub_refused_total{reason=\"not_replicated\"} 2"),
        "{}",
        metrics.text()
    );
}

#[tokio::test]
async fn through_a_sentinel_failover_every_acknowledged_publish_is_read_once_in_order() {
    let mut master = Redis::start();
    let replica = Redis::replica_of(&master);
    let sentinels: Vec<Redis> = (0..3).map(|_| Redis::sentinel(&master, "main")).collect();
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis+sentinel://{}/main", hosts.join(","));
    let a = Server::on_redis(&url, &["--redis-replicas", "1"]).await;
    let b = Server::on_redis(&url, &["--redis-replicas", "1"]).await;

    // A publisher that retries every message with its key until it is
    // acknowledged, on either instance; the master dies a third of the way.
    let mut acknowledged = Vec::new();
    let addrs = [a.addr, b.addr];
    let mut c = [a.client().await, b.client().await];
    let mut killed = false;
    let mut failed_over = false;
    for i in 0..30 {
        if i == 10 {
            master.kill();
            killed = true;
        }
        // A failover, then the old master coming back as a replica and syncing.
        let deadline = tokio::time::Instant::now() + STEP * 2;
        let (key, data) = (format!("k{i}"), format!("m{i}"));
        let headers = [
            ("content-type", "text/plain"),
            ("idempotency-key", key.as_str()),
        ];
        let id = loop {
            let (path, body) = ("/publish?channel=feed", data.clone());
            match c[i % 2]
                .try_request(Method::POST, path, &headers, body)
                .await
            {
                Ok(resp) if resp.status == 200 => break resp.id(),
                Ok(resp) => assert_eq!(resp.status, 503, "{:?}", resp.body),
                // Idle past --header-timeout while the other took the retries.
                Err(_) => c[i % 2] = Client::connect(addrs[i % 2]).await,
            }
            assert!(tokio::time::Instant::now() < deadline, "never acknowledged");
            let switched = || {
                sentinels[0]
                    .cli(&["SENTINEL", "get-master-addr-by-name", "main"])
                    .contains(&replica.port.to_string())
            };
            if killed && switched() {
                // The sentinels have made the replica master, and it has no
                // replica of its own: the old master comes back as one.
                master.restart();
                killed = false;
                failed_over = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        acknowledged.push((id, format!("m{i}")));
    }
    assert!(failed_over, "no failover happened");
    let logs: Vec<String> = sentinels.iter().map(Redis::log).collect();
    assert!(
        replica.cli(&["ROLE"]).starts_with("master"),
        "the sentinels failed back: {logs:#?}"
    );
    for server in [&a, &b] {
        server.wait_ready().await;
        assert_eq!(server.all_messages("feed").await, acknowledged);
    }
}
