//! Presence, read receipts and events to the application, against a real
//! server: a member is one presence across re-polls, tabs and reconnects;
//! `$presence:C` tells the subscribers; `--events-url` gets signed batches.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{STEP, Server};
use hyper::Method;
use serde_json::{Value, json};

/// Every presence change retained on `$presence:CHANNEL`, oldest first.
async fn told(server: &Server, channel: &str) -> Vec<Value> {
    server
        .all_messages(&format!("$presence:{channel}"))
        .await
        .into_iter()
        .map(|(_, data)| serde_json::from_str(&data).unwrap())
        .collect()
}

/// The changes of one kind (`join`, `leave`, `seen`) for `member`.
fn of(changes: &[Value], kind: &str, member: &str) -> usize {
    changes
        .iter()
        .filter(|c| c["event"] == kind && (c["member"] == member || kind == "seen"))
        .count()
}

/// Waits (a long-poll on the presence channel) for the next change after
/// `since`; returns it and its id.
async fn next_change(server: &Server, channel: &str, since: &str) -> (Value, String) {
    let path = format!("/subscribe?channel=$presence:{channel}&since={since}&timeout=10");
    let resp = server.get(&path).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    (resp.json(), resp.id())
}

#[tokio::test]
async fn twenty_re_polls_of_one_member_are_one_join_and_no_leave() {
    let server = Server::start(&["--presence", "room*", "--presence-grace", "5"]);
    let mut client = server.client().await;
    for _ in 0..20 {
        let resp = client
            .get("/subscribe?channel=room1&client=alice&timeout=0")
            .await;
        assert_eq!(resp.status, 204);
    }
    let present = client.get("/channels/room1/presence").await.json();
    assert_eq!(present["members"].as_array().unwrap().len(), 1, "{present}");
    assert_eq!(present["members"][0]["id"], "alice");
    let changes = told(&server, "room1").await;
    assert_eq!(of(&changes, "join", "alice"), 1, "{changes:?}");
    assert_eq!(of(&changes, "leave", "alice"), 0, "{changes:?}");
    // A channel without presence keeps none, and says so.
    client
        .get("/subscribe?channel=other&client=alice&timeout=0")
        .await;
    client
        .get("/channels/other/presence")
        .await
        .assert_refused_for(404, "not_found");
}

#[tokio::test]
async fn a_member_that_stops_polling_leaves_once_after_the_grace_period() {
    let server = Server::start(&["--presence", "room", "--presence-grace", "1"]);
    let mut client = server.client().await;
    let started = tokio::time::Instant::now();
    client
        .get("/subscribe?channel=room&client=bob&timeout=0")
        .await;
    let (joined, id) = next_change(&server, "room", "oldest").await;
    assert_eq!(
        (joined["event"].as_str(), joined["member"].as_str()),
        (Some("join"), Some("bob"))
    );
    let (left, id) = next_change(&server, "room", &id).await;
    assert_eq!(
        (left["event"].as_str(), left["member"].as_str()),
        (Some("leave"), Some("bob"))
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the grace period"
    );
    let present = client.get("/channels/room/presence").await.json();
    assert_eq!(present["members"], json!([]));
    // Once: nothing more comes.
    let resp = server
        .get(&format!(
            "/subscribe?channel=$presence:room&since={id}&timeout=2"
        ))
        .await;
    assert_eq!(resp.status, 204);
}

#[tokio::test]
async fn two_tabs_are_one_member_and_a_resumed_reconnect_is_no_leave() {
    let server = Server::start(&["--presence", "room", "--presence-grace", "3"]);
    let first = common::spawn_get(server.addr, "/subscribe?channel=room&client=carol");
    let second = common::spawn_get(server.addr, "/subscribe?channel=room&client=carol");
    server.wait_for_stat("waiting", 2).await;
    let present = server.get("/channels/room/presence").await.json();
    assert_eq!(present["members"].as_array().unwrap().len(), 1, "{present}");
    assert_eq!(present["members"][0]["connections"], 2);
    let id = server.client().await.publish("room", "hello").await;
    assert_eq!(common::join(first).await.status, 200);
    assert_eq!(common::join(second).await.status, 200);
    // Both tabs come back with the cursor their answer gave.
    let mut client = server.client().await;
    let resp = client
        .get(&format!(
            "/subscribe?channel=room&client=carol&since={id}&timeout=0"
        ))
        .await;
    assert_eq!(resp.status, 204);
    let changes = told(&server, "room").await;
    assert_eq!(of(&changes, "join", "carol"), 1, "{changes:?}");
    assert_eq!(of(&changes, "leave", "carol"), 0, "{changes:?}");
}

#[tokio::test]
async fn seen_moves_only_when_the_members_own_poll_acknowledges() {
    let server = Server::start(&["--presence", "room"]);
    let mut client = server.client().await;
    let id = client.publish("room", "first").await;
    let resp = client
        .get("/subscribe?channel=room&client=dave&since=oldest&timeout=0")
        .await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "first"));
    let seen = || async {
        let present = server.get("/channels/room/presence").await.json();
        present["members"][0]["seen"].clone()
    };
    assert_eq!(
        seen().await,
        Value::Null,
        "received is not yet acknowledged"
    );
    let resp = client
        .get(&format!(
            "/subscribe?channel=room&client=dave&since={id}&timeout=0"
        ))
        .await;
    assert_eq!(resp.status, 204);
    assert_eq!(seen().await, json!(id));
    // The receipt reaches the subscribers of $presence:room (within a second).
    let mut since = "oldest".to_owned();
    loop {
        let (change, at) = next_change(&server, "room", &since).await;
        if change["event"] == "seen" {
            assert_eq!(change["seen"]["dave"], json!(id));
            break;
        }
        since = at;
    }
}

#[tokio::test]
async fn a_presence_channel_is_read_with_its_channel_and_written_by_the_server_only() {
    let server = Server::start(&["--presence", "room"]);
    let mut client = server.client().await;
    let both = common::spawn_get(
        server.addr,
        "/subscribe?channel=room,$presence:room&client=erin&format=json",
    );
    let resp = common::join(both).await;
    assert_eq!(resp.status, 200);
    let batch = resp.json();
    assert_eq!(batch["messages"][0]["channel"], "$presence:room", "{batch}");
    let change: Value =
        serde_json::from_str(batch["messages"][0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        (change["event"].as_str(), change["member"].as_str()),
        (Some("join"), Some("erin"))
    );
    for method in [Method::POST, Method::DELETE] {
        client
            .request(
                method,
                "/publish?channel=$presence:room&message=forged",
                &[],
                "",
            )
            .await
            .assert_refused_for(403, "forbidden");
    }
    client
        .get("/subscribe?channel=room&client=bad%20id&timeout=0")
        .await
        .assert_refused_for(400, "bad_query");
}

const SECRET: &str = "a-test-secret-of-more-than-32-bytes";

fn token(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn exp() -> u64 {
    presence_now() / 1000 + 60
}

fn presence_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_tokens_sub_is_the_member_and_presence_is_refused_to_whom_the_channel_is() {
    let server = Server::start(&[
        "--presence",
        "room",
        "--jwt-key",
        SECRET,
        "--subscribe-auth",
        "token",
        "--admin-token",
        "operator",
    ]);
    let frank = token(json!({"exp": exp(), "sub": "frank", "comethub": {"subscribe": ["room"]}}));
    let elsewhere =
        token(json!({"exp": exp(), "sub": "gina", "comethub": {"subscribe": ["other"]}}));
    let mut client = server.client().await;
    let bearer = |t: &str| format!("Bearer {t}");
    // A self-declared client= does not override the token's sub.
    let resp = client
        .request(
            Method::GET,
            "/subscribe?channel=room&client=mallory&timeout=0",
            &[("authorization", &bearer(&frank))],
            "",
        )
        .await;
    assert_eq!(resp.status, 204);
    let resp = client
        .request(
            Method::GET,
            "/channels/room/presence",
            &[("authorization", &bearer(&frank))],
            "",
        )
        .await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    let ids: Vec<Value> = resp.json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!("frank")]);
    client
        .get("/channels/room/presence")
        .await
        .assert_refused_for(401, "invalid_token");
    client
        .request(
            Method::GET,
            "/channels/room/presence",
            &[("authorization", &bearer(&elsewhere))],
            "",
        )
        .await
        .assert_refused_for(403, "forbidden");
    let resp = client
        .request(
            Method::GET,
            "/channels/room/presence",
            &[("authorization", "Bearer operator")],
            "",
        )
        .await;
    assert_eq!(resp.status, 200);
    // The presence channel follows its channel's rules.
    client
        .request(
            Method::GET,
            "/subscribe?channel=$presence:room&timeout=0",
            &[("authorization", &bearer(&elsewhere))],
            "",
        )
        .await
        .assert_refused_for(403, "forbidden");
}

/// A stand-in for the application: its auth webhook names `session=S` user
/// `S`; its events receiver answers each POST with the next status of
/// `statuses` (then 200) and hands over each batch and its headers.
async fn app(statuses: Vec<u16>) -> (std::net::SocketAddr, Batches) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(statuses.into_iter()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let statuses = statuses.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        let statuses = statuses.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let (status, answer) = if parts.method == Method::POST {
                                let status = statuses.lock().unwrap().next().unwrap_or(200);
                                tx.send((parts.headers, body, status)).unwrap();
                                (status, String::new())
                            } else {
                                let cookie = parts
                                    .headers
                                    .get("cookie")
                                    .and_then(|c| c.to_str().ok())
                                    .and_then(|c| c.strip_prefix("session="))
                                    .unwrap_or_default()
                                    .to_owned();
                                match cookie.is_empty() {
                                    true => (401, String::new()),
                                    false => (200, json!({ "user": cookie }).to_string()),
                                }
                            };
                            let mut resp = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(answer),
                            ));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, rx)
}

type Batches = tokio::sync::mpsc::UnboundedReceiver<(hyper::HeaderMap, bytes::Bytes, u16)>;

/// The next batch the receiver got.
async fn recv(batches: &mut Batches) -> (hyper::HeaderMap, bytes::Bytes, u16) {
    tokio::time::timeout(STEP, batches.recv())
        .await
        .expect("a batch in time")
        .unwrap()
}

/// Checks a batch's `Comethub-Signature` against its body, as a receiver
/// would, with the hmac crate; the batch.
fn verify(headers: &hyper::HeaderMap, body: &[u8], secret: &str) -> Value {
    use hmac::Mac;
    let value = headers["comethub-signature"].to_str().unwrap();
    let (t, v1) = value
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap();
    let sent: u64 = t.parse().unwrap();
    assert!(presence_now() / 1000 - sent < 60, "a fresh timestamp");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let digest: Vec<u8> = (0..v1.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v1[i..i + 2], 16).unwrap())
        .collect();
    mac.verify_slice(&digest).expect("the signature checks out");
    let mut tampered = body.to_vec();
    tampered[body.len() / 2] ^= 1;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&tampered);
    assert!(
        mac.verify_slice(&digest).is_err(),
        "a changed body fails the check"
    );
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn events_are_signed_batched_retried_with_the_same_ids_and_none_for_re_polls() {
    let (addr, mut batches) = app(vec![500]).await;
    let url = format!("http://{addr}/events");
    let server = Server::start(&[
        "--presence",
        "room",
        "--presence-grace",
        "1",
        "--subscribe-auth",
        "webhook",
        "--auth-url",
        &format!("http://{addr}/auth"),
        "--events-url",
        &url,
        "--events-secret",
        "shh",
    ]);
    let mut client = server.client().await;
    for _ in 0..10 {
        let resp = client
            .request(
                Method::GET,
                "/subscribe?channel=room&timeout=0",
                &[("cookie", "session=hana")],
                "",
            )
            .await;
        assert_eq!(resp.status, 204);
    }
    let (headers, body, status) = recv(&mut batches).await;
    assert_eq!(status, 500);
    let first = verify(&headers, &body, "shh");
    let (headers, body, status) = recv(&mut batches).await;
    assert_eq!(status, 200);
    let again = verify(&headers, &body, "shh");
    let ids = |b: &Value| -> Vec<Value> {
        b["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect()
    };
    assert_eq!(ids(&first), ids(&again), "a retry sends the same events");
    let types: Vec<&str> = again["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["channel_occupied", "member_joined"],
        "one join for ten polls"
    );
    assert_eq!(again["events"][1]["member"], "hana");
    assert_eq!(again["events"][1]["channel"], "room");
    // After the grace period: the member leaves and the channel is vacated.
    let mut after = Vec::new();
    while after.len() < 2 {
        let (_, body, _) = recv(&mut batches).await;
        let batch: Value = serde_json::from_slice(&body).unwrap();
        for e in batch["events"].as_array().unwrap() {
            after.push(e["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(after, ["member_left", "channel_vacated"]);
    let stats = server.stats().await;
    assert_eq!(stats["events"]["sent"], 4, "{stats}");
    assert!(stats["events"]["failed"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn the_events_queue_is_bounded_while_the_receiver_is_down() {
    // Nothing listens on the port: every attempt fails.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/events");
    let server = Server::start(&[
        "--presence",
        "room*",
        "--events-url",
        &url,
        "--max-memory",
        "4M",
    ]);
    let mut client = server.client().await;
    for i in 0..3000 {
        let resp = client
            .get(&format!(
                "/subscribe?channel=room{}&client=m{i}&timeout=0",
                i % 7
            ))
            .await;
        assert_eq!(resp.status, 204);
    }
    let stats = server.stats().await;
    let events = &stats["events"];
    assert!(events["dropped"].as_u64().unwrap() > 0, "{stats}");
    assert!(events["queued"].as_u64().unwrap() < 3000, "{stats}");
    assert_eq!(events["sent"], 0);
    // The queue and the members each stay within their budget, a sixteenth
    // of --max-memory (256 KiB): what auth, presence and events keep
    // together is under twice that.
    assert!(
        stats["auth_cache_bytes"].as_u64().unwrap() <= 512 << 10,
        "{stats}"
    );
    // Subscribing goes on meanwhile.
    assert_eq!(
        client
            .get("/subscribe?channel=room1&client=late&timeout=0")
            .await
            .status,
        204
    );
}

/// Every event the receiver gets until it has had none for `quiet`.
async fn events_until_quiet(batches: &mut Batches, quiet: Duration) -> Vec<Value> {
    let mut all = Vec::new();
    while let Ok(Some((_, body, _))) = tokio::time::timeout(quiet, batches.recv()).await {
        let batch: Value = serde_json::from_slice(&body).unwrap();
        all.extend(batch["events"].as_array().unwrap().iter().cloned());
    }
    all
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind).count()
}

#[tokio::test]
async fn on_redis_a_member_on_two_instances_is_one_and_a_dead_instance_makes_it_leave_once() {
    let redis = common::Redis::start();
    let (addr, mut batches) = app(vec![]).await;
    let url = format!("http://{addr}/events");
    let flags = [
        "--presence",
        "room",
        "--presence-grace",
        "1",
        "--events-url",
        &url,
    ];
    let a = Server::on_redis(&redis.url(), &flags).await;
    let mut b = Server::on_redis(&redis.url(), &flags).await;
    // Alice on both instances at once, Bob on b only.
    // Alice re-polls on a throughout (each poll well within the client's bound).
    let keep = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let on_a = tokio::spawn({
        let (addr, keep) = (a.addr, keep.clone());
        async move {
            let mut c = common::Client::connect(addr).await;
            while keep.load(std::sync::atomic::Ordering::SeqCst) {
                let resp = c
                    .get("/subscribe?channel=room&client=alice&timeout=2")
                    .await;
                assert!(resp.status == 204 || resp.status == 200, "{}", resp.status);
            }
        }
    });
    let on_b = doomed(b.addr, "/subscribe?channel=room&client=alice");
    let bob = doomed(b.addr, "/subscribe?channel=room&client=bob");
    a.wait_for_stat("waiting", 1).await;
    b.wait_for_stat("waiting", 2).await;
    let deadline = tokio::time::Instant::now() + STEP;
    let present = loop {
        let present = a.get("/channels/room/presence").await.json();
        if present["members"].as_array().unwrap().len() == 2 {
            break present;
        }
        assert!(tokio::time::Instant::now() < deadline, "{present}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(present["members"][0]["id"], "alice");
    assert_eq!(
        present["members"][0]["connections"], 2,
        "held by both instances"
    );
    assert_eq!(
        b.get("/channels/room/presence").await.json()["members"],
        present["members"]
    );
    // Told once, whichever instance saw it first.
    let sent = events_until_quiet(&mut batches, Duration::from_millis(1500)).await;
    assert_eq!(count(&sent, "member_joined"), 2, "{sent:?}");
    assert_eq!(count(&sent, "channel_occupied"), 1, "{sent:?}");
    let changes = told(&a, "room").await;
    assert_eq!(of(&changes, "join", "alice"), 1, "{changes:?}");

    // b dies: Bob leaves (once) within the grace period and the lapse;
    // Alice, still on a, stays.
    let killed = tokio::time::Instant::now();
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    drop((on_b, bob));
    let mut left = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while count(&left, "member_left") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never left: {left:?}"
        );
        left.extend(events_until_quiet(&mut batches, Duration::from_secs(1)).await);
    }
    assert!(
        killed.elapsed() < Duration::from_secs(1 + 5 + 3),
        "within the grace, the lapse and a tick"
    );
    left.extend(events_until_quiet(&mut batches, Duration::from_secs(2)).await);
    let gone: Vec<&Value> = left.iter().filter(|e| e["type"] == "member_left").collect();
    assert_eq!(gone.len(), 1, "{left:?}");
    assert_eq!(gone[0]["member"], "bob");
    assert_eq!(count(&left, "channel_vacated"), 0);
    let present = a.get("/channels/room/presence").await.json();
    let ids: Vec<&Value> = present["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert_eq!(ids, [&json!("alice")]);
    keep.store(false, std::sync::atomic::Ordering::SeqCst);
    on_a.await.unwrap();
}

/// A long-poll on an instance that will be killed: its end is not checked.
fn doomed(addr: std::net::SocketAddr, path: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut c = common::Client::connect(addr).await;
        let _ = c.try_request(Method::GET, path, &[], "").await;
    })
}
