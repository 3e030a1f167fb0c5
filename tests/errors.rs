//! Every refusal in PROTOCOL.md's Errors section: its status, a one-line JSON body,
//! and a server that goes on serving everyone else.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

mod common;

use std::time::Duration;

use common::{Client, STEP, Server, join, spawn_get};
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Publishes and receives on a fresh channel: the server still works.
async fn still_serving(server: &Server) {
    let waiting = spawn_get(server.addr, "/subscribe?channel=canary");
    server.wait_for_stat("waiting", 1).await;
    let resp = server.get("/publish?channel=canary&message=alive").await;
    assert_eq!(resp.status, 200);
    assert_eq!(join(waiting).await.text(), "alive");
}

#[tokio::test]
async fn bad_parameters_get_400() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    let long = "x".repeat(129);
    // Each refused for its own reason, not merely refused.
    for (path, reason) in [
        ("/subscribe?channel=", "bad_channel"),
        ("/subscribe?channel=a%20b", "bad_channel"),
        ("/subscribe?channel=%C3%A9", "bad_channel"),
        (&format!("/subscribe?channel={long}"), "bad_channel"),
        ("/subscribe?since=garbage", "bad_since"),
        ("/subscribe?since=abc-", "bad_since"),
        ("/subscribe?since=%FF%FE-1", "bad_since"),
        ("/subscribe?timeout=-1", "bad_timeout"),
        ("/subscribe?timeout=soon", "bad_timeout"),
        ("/subscribe?timeout=NaN", "bad_timeout"),
        ("/subscribe?format=xml", "bad_format"),
        ("/subscribe?channel=a&channel=b", "bad_query"),
        ("/events?since=garbage", "bad_since"),
        ("/events?channel=no/slash", "bad_channel"),
        ("/publish?channel=bad%20name&message=x", "bad_channel"),
        ("/publish?channel=ok", "missing_message"),
        ("/channels/bad%20name", "bad_channel"),
    ] {
        c.get(path).await.assert_refused_for(400, reason);
    }
    let bad_header = [("last-event-id", "not-an-id!")];
    c.request(Method::GET, "/subscribe", &bad_header, "")
        .await
        .assert_refused(400);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    c.request(Method::POST, "/publish", &form, "other=1")
        .await
        .assert_refused(400);
    c.request(Method::POST, "/publish", &[], "")
        .await
        .assert_refused(400);
    // A 16 KB Content-Type on a one-byte message would cost 16 KB a message.
    let huge_type = format!("text/plain; x={}", "y".repeat(16_000));
    let resp = c
        .request(
            Method::POST,
            "/publish",
            &[("content-type", &huge_type)],
            "1",
        )
        .await;
    resp.assert_refused(400);
    assert!(
        resp.json()["error"]
            .as_str()
            .unwrap()
            .contains("content type")
    );
    let fine_type = format!("text/plain; x={}", "y".repeat(200));
    let resp = c
        .request(
            Method::POST,
            "/publish?channel=t",
            &[("content-type", &fine_type)],
            "1",
        )
        .await;
    assert_eq!(resp.status, 200);
    c.request(Method::DELETE, "/publish?channel=t", &[], "")
        .await;
    assert_eq!(
        server.stats().await["channels"],
        0,
        "no channel made by a refusal"
    );
    still_serving(&server).await;
}

#[tokio::test]
async fn unknown_paths_get_404_and_wrong_methods_405() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    c.get("/nowhere").await.assert_refused(404);
    c.get("/subscribe/extra").await.assert_refused(404);
    let resp = c.request(Method::PUT, "/publish", &[], "x").await;
    resp.assert_refused(405);
    assert!(resp.header("allow").unwrap().contains("POST"));
    c.request(Method::POST, "/subscribe", &[], "")
        .await
        .assert_refused(405);
    c.request(Method::DELETE, "/stats", &[], "")
        .await
        .assert_refused(405);
    still_serving(&server).await;
}

#[tokio::test]
async fn head_answers_as_get_without_a_body_where_it_makes_sense() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    for path in [
        "/stats",
        "/metrics",
        "/",
        "/chat.js",
        "/chat.css",
        "/channels/x",
    ] {
        let get = c.get(path).await;
        let head = c.request(Method::HEAD, path, &[], "").await;
        assert_eq!(head.status, 200, "{path}");
        assert!(head.body.is_empty(), "{path}");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{path}"
        );
    }
    // A long-poll or a stream without its body would be a wait for nothing.
    for path in ["/subscribe", "/events", "/publish"] {
        let head = c.request(Method::HEAD, path, &[], "").await;
        assert_eq!(head.status, 405, "{path}");
        assert_eq!(head.header("content-type"), Some("application/json"));
        assert!(!head.header("allow").unwrap().contains("HEAD"), "{path}");
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn oversized_messages_get_413() {
    let server = Server::start(&["--max-message", "100"]);
    let mut c = server.client().await;
    let text = [("content-type", "text/plain")];
    let ok = c
        .request(Method::POST, "/publish?channel=big", &text, "x".repeat(100))
        .await;
    assert_eq!(ok.status, 200);
    c.request(Method::POST, "/publish?channel=big", &text, "x".repeat(101))
        .await
        .assert_refused(413);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let body = format!("message={}", "y".repeat(101));
    c.request(Method::POST, "/publish?channel=big", &form, body)
        .await
        .assert_refused(413);
    let q = format!("/publish?channel=big&message={}", "z".repeat(101));
    server.get(&q).await.assert_refused(413);
    // A body far over the limit is refused from its Content-Length, unread: the
    // answer comes while the client has sent only the headers.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(
        b"POST /publish?channel=big HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 1048576\r\n\r\nwww",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(STEP, raw.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");
    let info = server.get("/channels/big").await.json();
    assert_eq!(
        info["messages"], 1,
        "only the message within the limit was kept"
    );
    still_serving(&server).await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let big = "a".repeat(64 * 1024);
    let req = format!("GET /subscribe HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(common::STEP, s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    still_serving(&server).await;
}

#[tokio::test]
async fn a_publish_token_guards_publish_and_delete_but_not_subscribe() {
    let server = Server::start(&["--publish-token", "s3cret"]);
    let mut c = server.client().await;
    let resp = c.get("/publish?channel=p&message=x").await;
    resp.assert_refused(401);
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    let wrong = [("authorization", "Bearer s3cres")];
    c.request(Method::GET, "/publish?channel=p&message=x", &wrong, "")
        .await
        .assert_refused(401);
    c.request(Method::DELETE, "/publish?channel=p", &wrong, "")
        .await
        .assert_refused(401);
    let right = [("authorization", "Bearer s3cret")];
    let ok = c
        .request(Method::GET, "/publish?channel=p&message=x", &right, "")
        .await;
    assert_eq!(ok.status, 200);
    let got = c.get("/subscribe?channel=p&since=oldest").await;
    assert_eq!(got.text(), "x", "subscribing stays open");
}

#[tokio::test]
async fn an_admin_token_guards_the_operators_endpoints_and_deleting() {
    let server = Server::start(&["--admin-token", "adm1n", "--publish-token", "pub"]);
    let mut c = server.client().await;
    let admin = [("authorization", "Bearer adm1n")];
    let publisher = [("authorization", "Bearer pub")];
    c.request(Method::GET, "/publish?channel=a&message=x", &publisher, "")
        .await;
    for path in ["/stats", "/metrics", "/channels/a"] {
        for method in [Method::GET, Method::HEAD] {
            let resp = c.request(method.clone(), path, &[], "").await;
            assert_eq!(resp.status, 401, "{method} {path}");
            assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
            // The publisher's token is not the operator's.
            let resp = c.request(method.clone(), path, &publisher, "").await;
            assert_eq!(resp.status, 401, "{method} {path}");
            let resp = c.request(method.clone(), path, &admin, "").await;
            assert_eq!(resp.status, 200, "{method} {path}");
        }
    }
    c.get("/stats").await.assert_refused(401);
    let resp = c
        .request(Method::DELETE, "/publish?channel=a", &publisher, "")
        .await;
    resp.assert_refused(401);
    let resp = c
        .request(Method::DELETE, "/publish?channel=a", &admin, "")
        .await;
    assert_eq!(resp.json()["deleted"], true);
    // Subscribing stays open; publishing keeps its own token.
    let got = c.get("/subscribe?channel=b&since=oldest&timeout=0").await;
    assert_eq!(got.status, 204);
    c.request(Method::GET, "/publish?channel=b&message=x", &admin, "")
        .await
        .assert_refused(401);
    let stats = c.request(Method::GET, "/stats", &admin, "").await.json();
    // 3 paths x 2 methods x 2 wrong tokens, then /stats, DELETE, publish.
    assert_eq!(stats["refused"]["unauthorized"], 12 + 3);
}

#[tokio::test]
async fn the_subscriber_limit_answers_503_with_retry_after() {
    let server = Server::start(&["--max-subscribers", "2"]);
    let a = spawn_get(server.addr, "/subscribe?channel=l");
    let b = spawn_get(server.addr, "/subscribe?channel=l");
    server.wait_for_stat("waiting", 2).await;
    let refused = server.get("/subscribe?channel=l").await;
    refused.assert_refused(503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Those already waiting are undisturbed, and history answers still work.
    let resp = server.get("/publish?channel=l&message=both").await;
    assert_eq!(resp.json()["subscribers"], 2);
    assert_eq!(join(a).await.text(), "both");
    assert_eq!(join(b).await.text(), "both");
    let got = server.get("/subscribe?channel=l&since=oldest").await;
    assert_eq!(got.text(), "both");
}

#[tokio::test]
async fn event_streams_count_against_the_subscriber_limit() {
    let server = Server::start(&["--max-subscribers", "2"]);
    let _one = common::Events::open(&server, "/events?channel=s", None).await;
    let waiting = spawn_get(server.addr, "/subscribe?channel=s");
    server.wait_for_stat("waiting", 1).await;
    server.wait_for_stat("streams", 1).await;
    // A third of either kind is refused.
    server.get("/events?channel=s").await.assert_refused(503);
    server.get("/subscribe?channel=s").await.assert_refused(503);
    let resp = server.get("/publish?channel=s&message=m").await;
    assert_eq!(resp.json()["subscribers"], 2);
    assert_eq!(join(waiting).await.text(), "m");
}

#[tokio::test]
async fn a_flood_of_refusals_is_not_a_flood_of_log_lines() {
    let server = Server::start(&["--max-subscribers", "1"]);
    let _held = spawn_get(server.addr, "/subscribe?channel=f");
    server.wait_for_stat("waiting", 1).await;
    let mut c = server.client().await;
    for _ in 0..500 {
        c.get("/subscribe?channel=f").await.assert_refused(503);
    }
    // Every refusal is counted, but a second gets one warning line per reason;
    // the next line says how many were held back.
    assert_eq!(server.stats().await["refused"]["busy"], 500);
    let deadline = tokio::time::Instant::now() + common::STEP;
    let last = loop {
        c.get("/subscribe?channel=f").await.assert_refused(503);
        let lines = server.log_lines("limit reached");
        if let Some(held) = lines.iter().find(|l| !l.contains("suppressed=0")) {
            assert!(lines.len() <= 1 + 500usize.div_ceil(100), "{lines:?}");
            break held.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(last.contains("suppressed="), "{last}");
}

#[tokio::test]
async fn the_channel_limit_answers_503() {
    let server = Server::start(&["--max-channels", "2"]);
    let mut c = server.client().await;
    c.publish("one", "1").await;
    c.publish("two", "2").await;
    let resp = c.get("/publish?channel=three&message=3").await;
    resp.assert_refused(503);
    assert!(resp.header("retry-after").is_some());
    c.get("/subscribe?channel=three&timeout=0")
        .await
        .assert_refused(503);
    c.publish("one", "more").await;
}

#[tokio::test]
async fn the_connection_limit_answers_503_and_closes() {
    let origin = "https://app.example";
    let server = Server::start(&["--max-connections", "4", "--cors-origin", origin]);
    let mut held: Vec<_> = (0..3)
        .map(|_| spawn_get(server.addr, "/subscribe?channel=k&timeout=60"))
        .collect();
    server.wait_for_stat("waiting", 3).await;
    held.push(spawn_get(server.addr, "/subscribe?channel=k&timeout=60"));
    // Once the fourth is held, a fifth connection is turned away.
    let deadline = tokio::time::Instant::now() + common::STEP;
    let answer = loop {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let probe = b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        s.write_all(probe).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(common::STEP, s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        if text.starts_with("HTTP/1.1 503") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refused: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(answer.contains("retry-after: 1"));
    // A browser on the configured origin can read why it was turned away.
    assert!(
        answer.contains(&format!("access-control-allow-origin: {origin}\r\n")),
        "{answer}"
    );
    assert!(answer.ends_with(
        "{\"error\":\"too many connections: try again later\",\"reason\":\"connection_limit\"}\n"
    ));
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn a_client_that_dribbles_its_headers_is_cut_off() {
    let server = Server::start(&["--header-timeout", "1"]);
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /subscribe HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut cut = false;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow.write_all(b"X-Drip: 1\r\n").await.is_err() {
            cut = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(cut, "the connection was closed before the headers finished");
    still_serving(&server).await;
}

#[tokio::test]
async fn a_chunked_body_that_never_ends_is_cut_off() {
    let server = Server::start(&["--header-timeout", "1"]);
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"POST /publish?channel=slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(common::STEP, s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let info = server.get("/channels/slow").await.json();
    assert_eq!(info["messages"], 0, "half a message is not published");
    still_serving(&server).await;
}

#[tokio::test]
async fn a_refusal_does_not_disturb_the_keep_alive_connection() {
    let server = Server::start(&[]);
    let mut c = Client::connect(server.addr).await;
    c.get("/subscribe?timeout=x").await.assert_refused(400);
    c.get("/nope").await.assert_refused(404);
    let id = c.publish("same-conn", "fine").await;
    let got = c.get("/subscribe?channel=same-conn&since=oldest").await;
    assert_eq!((got.text(), got.id()), ("fine", id));
    let refused = server.stats().await["refused"].clone();
    assert_eq!(
        (
            refused["bad_timeout"].as_u64(),
            refused["not_found"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[test]
fn a_configuration_that_would_fail_open_stops_the_server_at_start() {
    use std::io::{BufRead, BufReader};
    // The exit code and the log; a server that starts listening is stopped
    // and shows as no exit code.
    let start = |args: &[&str], env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_comethub"));
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        cmd.env_remove("COMETHUB_PUBLISH_TOKEN");
        cmd.env_remove("COMETHUB_ADMIN_TOKEN");
        cmd.env_remove("COMETHUB_JWT_KEY");
        if let Some(token) = env {
            cmd.env("COMETHUB_PUBLISH_TOKEN", token);
        }
        cmd.stdout(std::process::Stdio::null());
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut log = String::new();
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            log.push_str(&line);
            log.push('\n');
            if line.contains("listening") {
                child.kill().unwrap();
                break;
            }
        }
        (child.wait().unwrap().code(), log)
    };
    // An empty token would have left publishing open while the log said it was guarded.
    let (code, log) = start(&["--publish-token", ""], None);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--publish-token"), "{log}");
    let (code, log) = start(&[], Some(""));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("COMETHUB_PUBLISH_TOKEN"), "{log}");
    // A CORS origin with a control character used to become '*'.
    let (code, log) = start(&["--cors-origin", "https://a.example\u{1}"], None);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--cors-origin"), "{log}");
    // Token checks that would check nothing, or with a key that is not one.
    for args in [
        &["--jwt-key", "short"][..],
        &["--jwt-key", "/nonexistent/key.pem"],
        &["--jwt-key", "/etc/hostname"],
        &["--jwt-key", "/etc/hostname-of-more-than-32-bytes.pem"],
        &["--subscribe-auth", "token"],
        &["--jwt-audience", "chat"],
        &["--subscribe-auth", "webhook"],
        &["--auth-url", "http://127.0.0.1:9/auth"],
        &[
            "--subscribe-auth",
            "webhook",
            "--auth-url",
            "ftp://127.0.0.1/auth",
        ],
    ] {
        let (code, log) = start(args, None);
        assert_eq!(code, Some(2), "{args:?}: {log}");
    }
    let (code, log) = start(&["--admin-token", " "], None);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--admin-token"), "{log}");
    let (code, log) = start(&["--max-message", "0"], None);
    assert_eq!(code, Some(2), "{log}");
    // Bounds that cannot hold anything, or are not sizes at all.
    for (flag, value) in [
        ("--max-memory", "0"),
        ("--max-memory", "100K"),
        ("--max-memory", "lots"),
        ("--max-batch-bytes", "0"),
        ("--max-batch-bytes", "1T"),
        ("--write-timeout", "0"),
    ] {
        let (code, log) = start(&[flag, value], None);
        assert_eq!(code, Some(2), "{flag} {value}: {log}");
        assert!(log.contains(flag) || log.contains(value), "{log}");
    }
    // A sensible bound starts.
    let (code, log) = start(&["--max-memory", "64M"], None);
    assert_eq!(code, None, "{log}");
}
