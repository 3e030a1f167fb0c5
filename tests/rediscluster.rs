//! Redis Cluster: instances on a cluster of three masters with a replica
//! each (`--redis redis+cluster://…`), channels on every shard, a master
//! killed mid-stream, and a slot moved while subscribers wait on it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, Cluster, STEP, Server, join, spawn_get};
use hyper::Method;

async fn instance(cluster: &Cluster, extra: &[&str]) -> Server {
    Server::on_redis(&cluster.url(), extra).await
}

fn stream_key(channel: &str) -> String {
    format!("comethub:{{{channel}}}:s")
}

#[tokio::test]
async fn channels_on_every_shard_reach_subscribers_on_both_instances_and_resume() {
    let cluster = Cluster::start(3, 1);
    let a = instance(&cluster, &[]).await;
    let b = instance(&cluster, &[]).await;
    // One channel per shard.
    let mut channels = Vec::new();
    let mut shards = HashSet::new();
    for i in 0.. {
        let channel = format!("room{i}");
        if shards.insert(cluster.master_of(cluster.slot(&stream_key(&channel)))) {
            channels.push(channel);
        }
        if shards.len() == 3 {
            break;
        }
    }

    let mut c = a.client().await;
    for channel in &channels {
        let waiting = spawn_get(b.addr, &format!("/subscribe?channel={channel}"));
        b.wait_for_stat("waiting", 1).await;
        let id = c.publish(channel, &format!("hello {channel}")).await;
        let got = join(waiting).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), format!("hello {channel}"));
        assert_eq!(got.id(), id);

        // Resume on the other instance from that id: exactly what came after.
        let later: Vec<String> = (0..3).map(|n| format!("{channel} {n}")).collect();
        for m in &later {
            c.publish(channel, m).await;
        }
        let path = format!("/subscribe?channel={channel}&since={id}&format=json");
        let batch = a.get(&path).await.json();
        let data: Vec<&str> = batch["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["data"].as_str().unwrap())
            .collect();
        assert_eq!(data, later);
    }
    // One connection per node per instance, however many subscribers.
    for (n, node) in cluster.nodes.iter().enumerate() {
        let clients = node.cli(&["CLIENT", "LIST"]);
        let ours = clients
            .lines()
            .filter(|l| !l.contains("flags=S") && !l.contains("cmd=client|list"))
            .count();
        let expected = if cluster.is_master(n) { 2 } else { 0 };
        assert_eq!(ours, expected, "{clients}");
    }
    // Several channels on several shards in one request.
    let list = channels.join(",");
    let waiting = spawn_get(a.addr, &format!("/subscribe?channel={list}"));
    a.wait_for_stat("waiting", 1).await;
    c.publish(&channels[2], "any shard").await;
    let got = join(waiting).await;
    assert_eq!(got.text(), "any shard");
    assert_eq!(got.header("x-channel"), Some(channels[2].as_str()));
    // One publish on several channels cannot be one script across slots:
    // refused, and nothing is written on any of them.
    let resp = c
        .request(
            hyper::Method::POST,
            &format!("/publish?channel={list}&message=all"),
            &[],
            "",
        )
        .await;
    resp.assert_refused_for(400, "too_many_channels");
    assert!(
        resp.json()["error"]
            .as_str()
            .unwrap()
            .contains("Redis Cluster")
    );
    for channel in &channels {
        let last = a.all_messages(channel).await;
        assert_ne!(last.last().map(|(_, d)| d.as_str()), Some("all"));
    }
}

#[tokio::test]
async fn when_a_master_dies_every_acknowledged_publish_is_read_once_in_order() {
    let mut cluster = Cluster::start(3, 1);
    let a = instance(&cluster, &["--redis-replicas", "1"]).await;
    let b = instance(&cluster, &["--redis-replicas", "1"]).await;
    let master = cluster.master_of(cluster.slot(&stream_key("feed")));

    // A reader long-polls on each instance the whole time.
    let (done, stop) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .map(|addr| {
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut since = "oldest".to_owned();
                loop {
                    let path =
                        format!("/subscribe?channel=feed&format=json&timeout=1&since={since}");
                    let resp = match Client::try_connect(addr).await {
                        Ok(mut c) => c.try_request(Method::GET, &path, &[], "").await.ok(),
                        Err(_) => None,
                    };
                    match resp {
                        Some(r) if r.status == 200 => {
                            let batch = r.json();
                            for m in batch["messages"].as_array().unwrap() {
                                read.push(m["data"].as_str().unwrap().to_owned());
                            }
                            since = batch["last_id"].as_str().unwrap().to_owned();
                        }
                        Some(r) if r.status == 204 => {
                            if let Some(id) = r.header("x-message-id") {
                                since = id.to_owned();
                            }
                            if *stop.borrow_and_update() {
                                return read;
                            }
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();

    let slot = cluster.slot(&stream_key("feed"));
    let mut restarted = false;
    let mut acknowledged = Vec::new();
    let mut c = [a.client().await, b.client().await];
    let addrs = [a.addr, b.addr];
    for i in 0..30 {
        if i == 10 {
            cluster.nodes[master].kill();
        }
        let (key, data) = (format!("k{i}"), format!("m{i}"));
        let headers = [
            ("content-type", "text/plain"),
            ("idempotency-key", key.as_str()),
        ];
        // The failover, then the old master back as a replica and synced.
        let deadline = tokio::time::Instant::now() + STEP * 2;
        loop {
            let path = "/publish?channel=feed";
            match c[i % 2]
                .try_request(Method::POST, path, &headers, data.clone())
                .await
            {
                Ok(resp) if resp.status == 200 => break,
                Ok(resp) => assert_eq!(resp.status, 503, "{:?}", resp.body),
                Err(_) => c[i % 2] = Client::connect(addrs[i % 2]).await,
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "m{i} never acknowledged"
            );
            if i >= 10 && !restarted && cluster.serving(slot).is_some_and(|m| m != master) {
                // A replica took over and has no replica of its own: the
                // old master comes back as one.
                cluster.nodes[master].restart();
                restarted = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acknowledged.push(data);
    }
    assert!(restarted, "no failover happened");
    done.send_replace(true);
    for reader in readers {
        let read = tokio::time::timeout(STEP, reader).await.unwrap().unwrap();
        assert_eq!(read, acknowledged);
    }
    for server in [&a, &b] {
        let kept: Vec<String> = server
            .all_messages("feed")
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(kept, acknowledged);
    }
}

#[tokio::test]
async fn subscribers_waiting_on_a_slot_that_moves_get_what_is_published_after() {
    let cluster = Cluster::start(3, 1);
    let a = instance(&cluster, &[]).await;
    let b = instance(&cluster, &[]).await;
    let slot = cluster.slot(&stream_key("moving"));
    let from = cluster.master_of(slot);
    let mut c = b.client().await;
    let first = c.publish("moving", "before").await;

    let waiting: Vec<_> = (0..5)
        .map(|_| spawn_get(a.addr, &format!("/subscribe?channel=moving&since={first}")))
        .collect();
    a.wait_for_stat("waiting", 5).await;
    let to = (0..cluster.nodes.len())
        .find(|&n| n != from && cluster.is_master(n))
        .unwrap();
    cluster.move_slot(slot, to);
    assert_eq!(cluster.master_of(slot), to);

    // Each subscriber is answered with the message published after the
    // move, or (if its instance started over) 204 from where it stood and
    // then reads it on its next poll: nothing is lost either way.
    c.publish("moving", "after").await;
    for w in waiting {
        let got = join(w).await;
        let text = match got.status.as_u16() {
            200 => got.text().to_owned(),
            204 => {
                assert_eq!(got.id(), first);
                let again = a
                    .get(&format!("/subscribe?channel=moving&since={first}"))
                    .await;
                again.text().to_owned()
            }
            other => panic!("answered {other}"),
        };
        assert_eq!(text, "after");
    }
    let kept: Vec<String> = a
        .all_messages("moving")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(kept, ["before", "after"]);
}

/// Waits until this instance's `/stats` says whether the master on `port` is up.
async fn wait_shard(server: &Server, port: u16, up: bool) -> serde_json::Value {
    let node = format!("127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let stats = server.stats().await;
        let shards = stats["redis"]["shards"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if shards
            .iter()
            .any(|s| s["node"] == node.as_str() && s["up"] == up)
        {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shard {node} never up={up}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_dead_shard_refuses_only_its_own_channels_and_stats_say_which() {
    // No replicas, so the dead master's slots stay down until it is back.
    let mut cluster = Cluster::start(3, 0);
    let a = instance(&cluster, &[]).await;
    let (mut down, mut healthy) = (None, None);
    for i in 0.. {
        let channel = format!("ch{i}");
        let master = cluster.master_of(cluster.slot(&stream_key(&channel)));
        match (&down, &healthy) {
            (None, _) => down = Some((channel, master)),
            (Some((_, m)), None) if *m != master => healthy = Some(channel),
            _ => {}
        }
        if healthy.is_some() {
            break;
        }
    }
    let (down, master) = down.unwrap();
    let healthy = healthy.unwrap();
    let port = cluster.nodes[master].port;
    let stats = wait_shard(&a, port, true).await;
    assert_eq!(
        stats["redis"]["shards"].as_array().unwrap().len(),
        3,
        "{stats}"
    );

    cluster.nodes[master].kill();
    wait_shard(&a, port, false).await;
    let metrics = a.get("/metrics").await;
    let line = format!("comethub_redis_shard_up{{node=\"127.0.0.1:{port}\"");
    assert!(
        metrics
            .text()
            .lines()
            .any(|l| l.starts_with(&line) && l.ends_with(" 0")),
        "{}",
        metrics.text()
    );
    let mut c = a.client().await;
    let ok = c
        .request(
            Method::POST,
            &format!("/publish?channel={healthy}"),
            &[],
            "fine",
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let refused = c
        .request(
            Method::POST,
            &format!("/publish?channel={down}"),
            &[],
            "lost",
        )
        .await;
    refused.assert_refused(503);
    let polled = a
        .get(&format!("/subscribe?channel={healthy}&since=oldest"))
        .await;
    assert_eq!(polled.text(), "fine");

    cluster.nodes[master].restart();
    wait_shard(&a, port, true).await;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let resp = c
            .request(
                Method::POST,
                &format!("/publish?channel={down}"),
                &[],
                "back",
            )
            .await;
        if resp.status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", resp.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_hung_shard_refuses_only_its_own_channels() {
    // No replicas: the hung master is not failed over meanwhile.
    let cluster = Cluster::start(3, 0);
    let a = instance(&cluster, &[]).await;
    let masters: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&n| cluster.is_master(n))
        .collect();
    let hung = masters[0];
    // A channel on the hung shard, and one on each of the others.
    let mut on: Vec<Option<String>> = vec![None; cluster.nodes.len()];
    for i in 0.. {
        let channel = format!("ch{i}");
        let master = cluster.master_of(cluster.slot(&stream_key(&channel)));
        on[master].get_or_insert(channel);
        if masters.iter().all(|&m| on[m].is_some()) {
            break;
        }
    }
    let stalled = on[hung].clone().unwrap();
    cluster.nodes[hung].freeze();
    wait_shard(&a, cluster.nodes[hung].port, false).await;
    // The others answer at once, their scripts sent there for the first time.
    let mut c = a.client().await;
    for &m in masters.iter().filter(|&&m| m != hung) {
        let channel = on[m].as_deref().unwrap();
        let started = std::time::Instant::now();
        let ok = c
            .request(
                Method::POST,
                &format!("/publish?channel={channel}"),
                &[],
                "fine",
            )
            .await;
        assert_eq!(ok.status, 200, "{:?}", ok.body);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let refused = c
        .request(
            Method::POST,
            &format!("/publish?channel={stalled}"),
            &[],
            "stuck",
        )
        .await;
    refused.assert_refused(503);
    cluster.nodes[hung].thaw();
    wait_shard(&a, cluster.nodes[hung].port, true).await;
    let mut c = a.client().await;
    c.publish(&stalled, "unstuck").await;
}
