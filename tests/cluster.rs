//! Cluster mode: several real instances on one real `redis-server`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, Events, Redis, STEP, Server, join, spawn_get};
use hyper::Method;

/// Starts an instance on `redis` and waits until its link is up.
async fn instance(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    wait_link(&server, true).await;
    server
}

/// Waits until `/stats` shows the Redis link `up` (or down).
async fn wait_link(server: &Server, up: bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let stats = server.stats().await;
        if stats["redis"]["up"] == up {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "link never {up}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids_of(batch: &serde_json::Value) -> Vec<(String, String)> {
    batch["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_message_published_on_one_instance_reaches_subscribers_on_all() {
    let redis = Redis::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;

    let on_b = spawn_get(b.addr, "/subscribe?channel=room");
    let on_a = spawn_get(a.addr, "/subscribe?channel=room&format=json");
    b.wait_for_stat("waiting", 1).await;
    a.wait_for_stat("waiting", 1).await;

    let id = a.client().await.publish("room", "hello from a").await;
    let on_b = join(on_b).await;
    assert_eq!(on_b.status, 200);
    assert_eq!(on_b.text(), "hello from a");
    assert_eq!(on_b.id(), id, "the same id everywhere");
    let on_a = join(on_a).await;
    assert_eq!(
        ids_of(&on_a.json()),
        vec![(id.clone(), "hello from a".into())]
    );

    // Other channels are not disturbed, and B follows only what it needs.
    let other = b.get("/subscribe?channel=other&timeout=0").await;
    assert_eq!(other.status, 204);
    assert_eq!(b.get("/channels/room").await.json()["last_id"], id.as_str());
}

#[tokio::test]
async fn resume_continues_on_another_instance_with_nothing_lost_or_repeated() {
    let redis = Redis::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let mut pa = a.client().await;
    let mut pb = b.client().await;
    for i in 0..5 {
        pa.publish("r", &format!("m{i}")).await;
    }
    let first = a.get("/subscribe?channel=r&since=oldest&format=json").await;
    let got = ids_of(&first.json());
    assert_eq!(got.len(), 5);
    let since = first.id();

    // Published while the client is away, on the other instance.
    for i in 5..8 {
        pb.publish("r", &format!("m{i}")).await;
    }
    let next = b
        .get(&format!("/subscribe?channel=r&since={since}&format=json"))
        .await;
    assert!(!next.gap());
    let more = ids_of(&next.json());
    let data: Vec<_> = more.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(data, ["m5", "m6", "m7"]);

    // Server-Sent Events resume from Last-Event-ID across instances too.
    let mut events = Events::open(&a, "/events?channel=r", Some(&more[0].0)).await;
    assert_eq!(events.message().await, (more[1].0.clone(), "m6".into()));
    assert_eq!(events.message().await, (more[2].0.clone(), "m7".into()));
    let live = pb.publish("r", "m8").await;
    assert_eq!(events.message().await, (live, "m8".into()));
}

#[tokio::test]
async fn concurrent_publishes_on_two_instances_are_read_in_one_order_by_all() {
    let redis = Redis::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    const EACH: usize = 200;
    let publisher = |server: &Server, tag: &'static str| {
        let addr = server.addr;
        tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for i in 0..EACH {
                c.publish("order", &format!("{tag}{i}")).await;
            }
        })
    };
    // Two readers, each alternating between the instances on every poll.
    let reader = |first: std::net::SocketAddr, second: std::net::SocketAddr| {
        tokio::spawn(async move {
            let mut clients = [Client::connect(first).await, Client::connect(second).await];
            let mut since = String::from("oldest");
            let mut got = Vec::new();
            let mut turn = 0;
            while got.len() < 2 * EACH + 1 {
                let c = &mut clients[turn % 2];
                turn += 1;
                let resp = c
                    .get(&format!(
                        "/subscribe?channel=order&since={since}&format=json&timeout=5"
                    ))
                    .await;
                assert!(!resp.gap(), "no gap");
                if resp.status == 204 {
                    continue;
                }
                assert_eq!(resp.status, 200);
                since = resp.id();
                got.extend(ids_of(&resp.json()));
            }
            got
        })
    };
    // The channel must exist before "oldest" means "everything": publish one first.
    let start = a.client().await.publish("order", "start").await;
    let r1 = reader(a.addr, b.addr);
    let r2 = reader(b.addr, a.addr);
    let (p1, p2) = (publisher(&a, "a"), publisher(&b, "b"));
    p1.await.unwrap();
    p2.await.unwrap();
    let got1 = tokio::time::timeout(STEP, r1).await.unwrap().unwrap();
    let got2 = tokio::time::timeout(STEP, r2).await.unwrap().unwrap();

    for got in [&got1, &got2] {
        let data: Vec<&str> = got.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(data[0], "start");
        assert_eq!(got[0].0, start);
        let unique: HashSet<&str> = data.iter().copied().collect();
        assert_eq!(unique.len(), data.len(), "no duplicates");
        for tag in ["a", "b"] {
            let mine: Vec<String> = data
                .iter()
                .filter(|d| d.starts_with(tag))
                .map(|d| d.to_string())
                .collect();
            let want: Vec<String> = (0..EACH).map(|i| format!("{tag}{i}")).collect();
            assert_eq!(
                mine, want,
                "every message of {tag}, in its publisher's order"
            );
        }
    }
    // Both readers saw the one order the stream gave the messages.
    assert_eq!(got1, got2);
}

#[tokio::test]
async fn waiters_survive_a_redis_restart_and_nothing_retained_is_lost() {
    let mut redis = Redis::start();
    let a = instance(&redis, &[]).await;
    let mut c = a.client().await;
    let before = c.publish("w", "before").await;
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            spawn_get(
                a.addr,
                &format!("/subscribe?channel=w&since={before}&timeout=30"),
            )
        })
        .collect();
    // Once counted as waiting, a subscriber waits on whatever happens to Redis,
    // even if it is killed before the subscriber's first read of the stream.
    a.wait_for_stat("waiting", 20).await;
    redis.kill();
    wait_link(&a, false).await;
    let refused = c
        .request(
            Method::POST,
            "/publish?channel=w",
            &[("content-type", "text/plain")],
            "lost",
        )
        .await;
    refused.assert_refused(503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("redis"), "{}", refused.text());
    let metrics = a.get("/metrics").await;
    assert!(
        metrics.text().contains("comethub_redis_up 0"),
        "{}",
        metrics.text()
    );
    // Subscribers already waiting keep waiting while Redis is away.
    assert_eq!(a.stats().await["waiting"], 20);

    redis.restart();
    wait_link(&a, true).await;
    let stats = a.stats().await;
    assert_eq!(stats["redis"]["reconnects"], 1);
    // Each waiter is told to poll again from where it stood.
    for w in waiters {
        let resp = join(w).await;
        assert_eq!(resp.status, 204);
        assert_eq!(resp.id(), before);
    }
    // History from before the restart is still there, and new messages flow.
    let after = c.publish("w", "after").await;
    let resumed = a.get("/subscribe?channel=w&since=oldest&format=json").await;
    let data: Vec<_> = ids_of(&resumed.json())
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, ["before", "after"]);
    let next = a.get(&format!("/subscribe?channel=w&since={before}")).await;
    assert_eq!((next.text(), next.id()), ("after", after));
}

#[tokio::test]
async fn clients_of_a_killed_instance_continue_on_another_without_loss() {
    let redis = Redis::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (a_addr, b_addr) = (a.addr, b.addr);
    const TOTAL: usize = 300;
    let publisher = tokio::spawn(async move {
        let mut c = Client::connect(b_addr).await;
        for i in 0..TOTAL {
            c.publish("k", &format!("{i}")).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let (progress, mut read_so_far) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut since = String::from("oldest");
        let mut got: Vec<String> = Vec::new();
        let mut addr = a_addr;
        let mut switched_at = None;
        while got.len() < TOTAL {
            // A plain socket per poll: a killed instance shows as an error.
            let path = format!("/subscribe?channel=k&since={since}&format=json&timeout=5");
            let resp = async {
                let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                let (mut tx, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .ok()?;
                tokio::spawn(conn);
                let req = hyper::Request::get(path).header("host", "x");
                let resp = tx
                    .send_request(
                        req.body(http_body_util::Empty::<bytes::Bytes>::new())
                            .ok()?,
                    )
                    .await
                    .ok()?;
                let id = resp
                    .headers()
                    .get("x-message-id")?
                    .to_str()
                    .ok()?
                    .to_owned();
                let status = resp.status();
                use http_body_util::BodyExt;
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                Some((status, id, body))
            }
            .await;
            let Some((status, id, body)) = resp else {
                addr = b_addr;
                switched_at.get_or_insert(got.len());
                continue;
            };
            since = id;
            if status == 200 {
                let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(batch["gap"], false);
                for m in batch["messages"].as_array().unwrap() {
                    got.push(m["data"].as_str().unwrap().to_owned());
                }
                progress.send_replace(got.len());
            }
        }
        (got, switched_at)
    });
    // Kill A while the reader is in the middle of the stream.
    tokio::time::timeout(STEP, read_so_far.wait_for(|&n| n >= 30))
        .await
        .unwrap()
        .unwrap();
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    publisher.await.unwrap();
    let (got, switched_at) = tokio::time::timeout(STEP, reader).await.unwrap().unwrap();
    let switched_at = switched_at.expect("the reader had to switch instances");
    assert!(
        switched_at > 0 && switched_at < TOTAL,
        "killed mid-stream: {switched_at}"
    );
    let want: Vec<String> = (0..TOTAL).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every message once, in order");
}

#[tokio::test]
async fn delete_and_gaps_reach_every_instance() {
    let redis = Redis::start();
    let a = instance(&redis, &["--history", "4"]).await;
    let b = instance(&redis, &["--history", "4"]).await;
    let mut c = a.client().await;
    let first = c.publish("g", "0").await;
    for i in 1..10 {
        c.publish("g", &i.to_string()).await;
    }
    let resumed = b
        .get(&format!("/subscribe?channel=g&since={first}&format=json"))
        .await;
    assert!(resumed.gap(), "six messages were trimmed");
    let data: Vec<_> = ids_of(&resumed.json())
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, ["6", "7", "8", "9"]);
    // Resuming from the last trimmed message is no gap.
    let all = b.get("/subscribe?channel=g&since=oldest&format=json").await;
    assert!(!all.gap());
    assert_eq!(b.get("/channels/g").await.json()["messages"], 4);

    let waiter = spawn_get(b.addr, &format!("/subscribe?channel=g&since={}", all.id()));
    b.wait_for_stat("waiting", 1).await;
    let deleted = c
        .request(Method::DELETE, "/publish?channel=g", &[], "")
        .await;
    assert_eq!(deleted.json()["deleted"], true);
    assert_eq!(join(waiter).await.status, 410);
    // A reader that had read everything missed nothing; one that had not, did.
    let done = b
        .get(&format!(
            "/subscribe?channel=g&since={}&timeout=0",
            all.id()
        ))
        .await;
    assert_eq!(done.status, 204);
    assert!(!done.gap());
    let behind = b
        .get(&format!("/subscribe?channel=g&since={first}&timeout=0"))
        .await;
    assert_eq!(behind.status, 204);
    assert!(behind.gap(), "the deleted messages are reported missing");
}

#[tokio::test]
async fn an_instance_started_before_redis_answers_503_until_redis_is_there() {
    let mut redis = Redis::start();
    redis.kill();
    let url = redis.url();
    let a = Server::start(&["--redis", &url]);
    for path in ["/subscribe?channel=s&timeout=0", "/events?channel=s"] {
        let resp = a.get(path).await;
        resp.assert_refused(503);
        assert_eq!(resp.header("retry-after"), Some("1"));
    }
    let stats = a.stats().await;
    assert_eq!(stats["redis"]["up"], false);
    assert_eq!(stats["refused"]["store_unavailable"], 2);

    redis.restart();
    wait_link(&a, true).await;
    let id = a.client().await.publish("s", "now").await;
    let got = a.get("/subscribe?channel=s&since=oldest").await;
    assert_eq!((got.text(), got.id()), ("now", id));
}

#[test]
fn a_bad_redis_url_stops_the_server_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_comethub"))
        .args(["--listen", "127.0.0.1:0", "--redis", "mysql://nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("bad --redis URL"), "{log}");
}

#[tokio::test]
async fn tokens_decide_the_same_on_every_instance() {
    let redis = Redis::start();
    let secret = "a-cluster-secret-of-more-than-32-bytes";
    let auth = ["--jwt-key", secret, "--subscribe-auth", "token"];
    let a = instance(&redis, &auth).await;
    let b = instance(&redis, &auth).await;
    let mint = |args: &[&str]| common::mint_token(&[&["--key", secret], args].concat());
    let reader = mint(&["--subscribe", "room.*"]);
    let writer = mint(&["--publish", "room.*"]);
    // A reader on A, a writer on B: the message crosses Redis.
    let on_a = spawn_get(a.addr, &format!("/subscribe?channel=room.1&token={reader}"));
    a.wait_for_stat("waiting", 1).await;
    let mut cb = b.client().await;
    let published = cb
        .get(&format!(
            "/publish?channel=room.1&message=hi&token={writer}"
        ))
        .await;
    assert_eq!(published.status, 200);
    assert_eq!(join(on_a).await.text(), "hi");
    // The same refusals on both.
    for server in [&a, &b] {
        let mut c = server.client().await;
        c.get("/subscribe?channel=room.1&timeout=0")
            .await
            .assert_refused(401);
        c.get(&format!(
            "/subscribe?channel=other&timeout=0&token={reader}"
        ))
        .await
        .assert_refused(403);
        c.get(&format!("/publish?channel=room.1&message=x&token={reader}"))
            .await
            .assert_refused(403);
        let resp = c
            .get(&format!(
                "/subscribe?channel=room.1&since=oldest&token={reader}"
            ))
            .await;
        assert_eq!(resp.text(), "hi");
    }
}

#[tokio::test]
async fn several_channels_resume_on_another_instance_with_nothing_lost() {
    let redis = Redis::start();
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let cursor = a.get("/subscribe?channel=x,y,z&timeout=0").await.id();
    let waiting = spawn_get(a.addr, &format!("/subscribe?channel=x,y,z&since={cursor}"));
    a.wait_for_stat("waiting", 1).await;
    let y1 = b.client().await.publish("y", "y1").await;
    let got = join(waiting).await;
    assert_eq!((got.text(), got.header("x-channel")), ("y1", Some("y")));
    let cursor = got.id();
    assert!(cursor.contains(&format!("y~{y1}")), "{cursor}");

    // Published on A while the client moves to B: B's answer has each of
    // them once, with its channel, and a cursor at each channel's last.
    let mut on_a = a.client().await;
    let x1 = on_a.publish("x", "x1").await;
    let z1 = on_a.publish("z", "z1").await;
    let y2 = on_a.publish("y", "y2").await;
    let batch = b
        .get(&format!(
            "/subscribe?channel=x,y,z&format=json&since={cursor}"
        ))
        .await;
    let body = batch.json();
    let mut got: Vec<(String, String)> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_owned();
            (s("channel"), s("id"))
        })
        .collect();
    got.sort();
    let expected = [("x", &x1), ("y", &y2), ("z", &z1)];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(c, id)| ((*c).to_owned(), (*id).clone()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(body["gap"], serde_json::json!([]));
    assert_eq!(body["last_id"], format!("x~{x1},y~{y2},z~{z1}").as_str());

    // An event stream on B resumes from the older cursor just as exactly.
    let mut stream = Events::open(&b, "/events?channel=x,y,z", Some(&cursor)).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (_, data) = stream.message().await;
        let item: serde_json::Value = serde_json::from_str(&data).unwrap();
        seen.push((
            item["channel"].as_str().unwrap().to_owned(),
            item["id"].as_str().unwrap().to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(seen, expected);
    let y3 = on_a.publish("y", "y3").await;
    let (id, data) = stream.message().await;
    assert!(data.contains("\"y3\""), "{data}");
    assert_eq!(id, format!("x~{x1},y~{y3},z~{z1}"));
}

#[tokio::test]
async fn health_says_whether_an_instance_can_serve_and_liveness_that_it_answers() {
    let memory = Server::start(&[]);
    let ready = memory.get("/health").await;
    assert_eq!(
        (ready.status.as_u16(), ready.json()["status"].as_str()),
        (200, Some("ready"))
    );
    assert_eq!(memory.get("/live").await.status, 200);

    let mut redis = Redis::start();
    let server = instance(&redis, &[]).await;
    assert_eq!(server.get("/health").await.status, 200);
    redis.kill();
    wait_link(&server, false).await;
    let down = server.get("/health").await;
    assert_eq!(down.status, 503);
    assert_eq!(down.header("retry-after"), Some("1"));
    assert_eq!(down.json()["reason"], "redis unreachable");
    // Alive all the same: a liveness probe must not restart it for Redis.
    assert_eq!(server.get("/live").await.status, 200);
    // Probes are not refusals.
    assert_eq!(server.stats().await["refused"], serde_json::json!({}));
    redis.restart();
    wait_link(&server, true).await;
    assert_eq!(server.get("/health").await.status, 200);
}

#[tokio::test]
async fn one_channel_and_several_wait_through_an_outage_alike() {
    let mut redis = Redis::start();
    let a = instance(&redis, &[]).await;
    let mut c = a.client().await;
    let one = c.publish("o1", "before").await;
    let two = c.publish("o2", "before").await;
    // Redis stalls before either subscriber has read its channels: both are
    // counted as waiting, then stuck following them; then Redis dies.
    redis.freeze();
    let single = spawn_get(
        a.addr,
        &format!("/subscribe?channel=o1&since={one}&timeout=30"),
    );
    let cursor = format!("o1~{one},o2~{two}");
    let several = spawn_get(
        a.addr,
        &format!("/subscribe?channel=o1,o2&since={cursor}&timeout=30"),
    );
    a.wait_for_stat("waiting", 2).await;
    redis.kill();
    wait_link(&a, false).await;
    // Neither is answered while Redis is away (a new request is, with 503).
    a.get("/subscribe?channel=o3&timeout=0")
        .await
        .assert_refused(503);
    assert_eq!(a.stats().await["waiting"], 2);
    redis.restart();
    wait_link(&a, true).await;
    // Each is told to poll again from where it stood, and nothing is lost.
    let single = join(single).await;
    assert_eq!((single.status.as_u16(), single.id()), (204, one.clone()));
    let several = join(several).await;
    assert_eq!((several.status.as_u16(), several.id()), (204, cursor));
    assert_eq!(a.stats().await["waiting"], 0);
}
