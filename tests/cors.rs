//! Cross-origin: every endpoint answers CORS, so a page elsewhere can long-poll.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point

mod common;

use common::Server;
use hyper::Method;

#[tokio::test]
async fn every_answer_carries_cors_headers() {
    let server = Server::start(&[]);
    let mut c = server.client().await;
    c.publish("x", "hi").await;
    for path in [
        "/subscribe?channel=x&since=oldest",
        "/subscribe?channel=x&timeout=0",
        "/publish?channel=x&message=y",
        "/stats",
        "/metrics",
        "/channels/x",
        "/nowhere",
        "/subscribe?since=bad",
    ] {
        let resp = c.get(path).await;
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some("*"),
            "{path}"
        );
        let exposed = resp
            .header("access-control-expose-headers")
            .unwrap_or_default();
        assert!(
            exposed.contains("X-Message-Id") && exposed.contains("X-Gap"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn preflight_allows_the_protocol_methods_and_headers() {
    let server = Server::start(&["--cors-origin", "https://chat.example"]);
    let mut c = server.client().await;
    let headers = [
        ("origin", "https://chat.example"),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "authorization, content-type",
        ),
    ];
    let resp = c
        .request(Method::OPTIONS, "/publish?channel=x", &headers, "")
        .await;
    assert_eq!(resp.status, 204);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://chat.example")
    );
    let methods = resp.header("access-control-allow-methods").unwrap();
    assert!(methods.contains("POST") && methods.contains("DELETE"));
    let allowed = resp
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert!(allowed.contains("last-event-id"));
    // A browser's publish retried with its key passes the preflight.
    assert!(allowed.contains("idempotency-key"), "{allowed}");
    let sub = c.get("/subscribe?timeout=0").await;
    assert_eq!(
        sub.header("access-control-allow-origin"),
        Some("https://chat.example")
    );
}
