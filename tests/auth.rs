//! Who may subscribe and publish: JWTs with channel patterns, checked with the
//! same crate the tests mint them with, from every place a token may come.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::Server;
use hyper::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-of-more-than-32-bytes";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token signed with `secret` for these claims.
fn hs256(secret: &str, claims: Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

/// Claims allowing these subscribe and publish patterns for a minute.
fn claims(subscribe: &[&str], publish: &[&str]) -> Value {
    json!({"exp": now() + 60, "comethub": {"subscribe": subscribe, "publish": publish}})
}

fn keys(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn a_token_may_come_in_the_header_a_cookie_or_the_query() {
    let server = Server::start(&[
        "--jwt-key",
        SECRET,
        "--subscribe-auth",
        "token",
        "--jwt-cookie",
        "ch",
    ]);
    let token = hs256(SECRET, claims(&["room.*"], &[]));
    let mut c = server.client().await;
    let poll = "/subscribe?channel=room.a&timeout=0";
    let resp = c.get(poll).await;
    resp.assert_refused(401);
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let bearer = format!("Bearer {token}");
    let resp = c
        .request(Method::GET, poll, &[("authorization", &bearer)], "")
        .await;
    assert_eq!(resp.status, 204);
    let cookie = format!("theme=dark; ch={token}");
    let resp = c
        .request(Method::GET, poll, &[("cookie", &cookie)], "")
        .await;
    assert_eq!(resp.status, 204);
    let resp = c.get(&format!("{poll}&token={token}")).await;
    assert_eq!(resp.status, 204);
    // An EventSource can only use the query.
    let events = common::Events::open(
        &server,
        &format!("/events?channel=room.a&token={token}"),
        None,
    )
    .await;
    drop(events);
    c.get("/events?channel=room.a").await.assert_refused(401);
}

#[tokio::test]
async fn expired_early_misdirected_forged_and_unsigned_tokens_get_401() {
    let server = Server::start(&[
        "--jwt-key",
        SECRET,
        "--subscribe-auth",
        "token",
        "--jwt-audience",
        "chat",
        "--jwt-issuer",
        "app",
    ]);
    let good = |extra: Value| {
        let mut c = json!({"exp": now() + 60, "aud": "chat", "iss": "app",
                           "comethub": {"subscribe": ["*"]}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let mut c = server.client().await;
    let poll = |token: &str| format!("/subscribe?channel=x&timeout=0&token={token}");
    assert_eq!(
        c.get(&poll(&hs256(SECRET, good(json!({}))))).await.status,
        204
    );
    let unsigned = {
        use base64_url as b64;
        let header = b64::encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64::encode(good(json!({})).to_string().as_bytes());
        format!("{header}.{body}.")
    };
    for (why, token) in [
        ("expired", hs256(SECRET, good(json!({"exp": now() - 60})))),
        (
            "not yet valid",
            hs256(SECRET, good(json!({"nbf": now() + 60}))),
        ),
        (
            "another audience",
            hs256(SECRET, good(json!({"aud": "other"}))),
        ),
        (
            "another issuer",
            hs256(SECRET, good(json!({"iss": "evil"}))),
        ),
        ("no aud, though one is set", {
            let mut claims = good(json!({}));
            claims.as_object_mut().unwrap().remove("aud");
            hs256(SECRET, claims)
        }),
        ("no iss, though one is set", {
            let mut claims = good(json!({}));
            claims.as_object_mut().unwrap().remove("iss");
            hs256(SECRET, claims)
        }),
        ("no exp", {
            let mut claims = good(json!({}));
            claims.as_object_mut().unwrap().remove("exp");
            hs256(SECRET, claims)
        }),
        (
            "another key",
            hs256("another-secret-of-more-than-32-bytes!", good(json!({}))),
        ),
        ("alg none", unsigned),
        ("not a token", "garbage".to_owned()),
    ] {
        let resp = c.get(&poll(&token)).await;
        assert_eq!(resp.status, 401, "{why}");
    }
}

/// Base64url without padding, for the unsigned token only: the server's own
/// standard base64 with the two URL-safe letters.
mod base64_url {
    pub fn encode(data: &[u8]) -> String {
        comethub::protocol::base64(data)
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    }
}

#[tokio::test]
async fn a_public_key_verifies_its_own_tokens_and_refuses_hmac_ones_made_with_it() {
    let public = keys("ec-public.pem");
    let server = Server::start(&["--jwt-key", &public, "--subscribe-auth", "token"]);
    let private = std::fs::read(keys("ec-private.pem")).unwrap();
    let es256 = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims(&["*"], &[]),
        &EncodingKey::from_ec_pem(&private).unwrap(),
    )
    .unwrap();
    let mut c = server.client().await;
    let poll = |token: &str| format!("/subscribe?channel=x&timeout=0&token={token}");
    assert_eq!(c.get(&poll(&es256)).await.status, 204);
    // Algorithm confusion: the public key, which anyone has, used as an HMAC secret.
    let pem = std::fs::read_to_string(&public).unwrap();
    let confused = hs256(&pem, claims(&["*"], &[]));
    c.get(&poll(&confused)).await.assert_refused(401);
}

#[tokio::test]
async fn a_valid_token_without_the_channel_gets_403() {
    let server = Server::start(&[
        "--jwt-key",
        SECRET,
        "--subscribe-auth",
        "token",
        "--public-channels",
        "lobby,news.*",
    ]);
    let token = hs256(SECRET, claims(&["room.*", "user.42"], &[]));
    let mut c = server.client().await;
    for (channel, status) in [
        ("room.a", 204),
        ("room.a.b", 204),
        ("user.42", 204),
        ("user.421", 403),
        ("rooms", 403),
        ("admin", 403),
    ] {
        let resp = c
            .get(&format!(
                "/subscribe?channel={channel}&timeout=0&token={token}"
            ))
            .await;
        assert_eq!(resp.status, status, "{channel}");
    }
    // Several channels need every one allowed (the public ones need nothing).
    for (channels, token, status) in [
        ("room.a,user.42", Some(&token), 204),
        ("room.a,lobby", Some(&token), 204),
        ("room.a,admin", Some(&token), 403),
        ("lobby,news.today", None, 204),
        ("lobby,room.a", None, 401),
    ] {
        let token = token.map(|t| format!("&token={t}")).unwrap_or_default();
        let resp = c
            .get(&format!("/subscribe?channel={channels}&timeout=0{token}"))
            .await;
        assert_eq!(resp.status, status, "{channels}");
        if status != 204 {
            let resp = c.get(&format!("/events?channel={channels}{token}")).await;
            assert_eq!(resp.status, status, "/events {channels}");
        }
    }
    assert_eq!(server.stats().await["waiting"], 0);
    // Public channels need no token at all.
    for channel in ["lobby", "news.today"] {
        let resp = c
            .get(&format!("/subscribe?channel={channel}&timeout=0"))
            .await;
        assert_eq!(resp.status, 204, "{channel}");
    }
    c.get("/subscribe?channel=lobby2&timeout=0")
        .await
        .assert_refused(401);
}

#[tokio::test]
async fn with_a_jwt_key_publishing_needs_publish_rights_or_the_publish_token() {
    let server = Server::start(&["--jwt-key", SECRET, "--publish-token", "pub-token"]);
    let reader = hs256(SECRET, claims(&["*"], &[]));
    let writer = hs256(SECRET, claims(&[], &["room.*"]));
    let mut c = server.client().await;
    let publish = |channel: &str, token: Option<&str>| {
        let token = token.map_or(String::new(), |t| format!("&token={t}"));
        format!("/publish?channel={channel}&message=hi{token}")
    };
    c.get(&publish("room.a", None)).await.assert_refused(401);
    c.get(&publish("room.a", Some(&reader)))
        .await
        .assert_refused(403);
    c.get(&publish("other", Some(&writer)))
        .await
        .assert_refused(403);
    assert_eq!(c.get(&publish("room.a", Some(&writer))).await.status, 200);
    let bearer = format!("Bearer {writer}");
    let resp = c
        .request(
            Method::POST,
            "/publish?channel=room.b",
            &[("authorization", &bearer), ("content-type", "text/plain")],
            "hello",
        )
        .await;
    assert_eq!(resp.status, 200);
    // The publish token still publishes anywhere.
    let resp = c
        .request(
            Method::GET,
            &publish("other", None),
            &[("authorization", "Bearer pub-token")],
            "",
        )
        .await;
    assert_eq!(resp.status, 200);
    // Subscribing stays open without --subscribe-auth token.
    let got = c.get("/subscribe?channel=room.a&since=oldest").await;
    assert_eq!(got.text(), "hi");
    let stats = server.stats().await;
    assert_eq!(stats["refused"]["invalid_token"], 1);
    assert_eq!(stats["refused"]["forbidden"], 2);
}

#[tokio::test]
async fn a_stream_ends_when_its_token_does_and_resumes_with_a_new_one() {
    let server = Server::start(&["--jwt-key", SECRET, "--subscribe-auth", "token"]);
    // Expired 3 s ago: still inside the 5 s leeway, so the stream opens and
    // ends about 2 s later.
    let short = hs256(
        SECRET,
        json!({"exp": now() - 3, "comethub": {"subscribe": ["s"]}}),
    );
    let mut events =
        common::Events::open(&server, &format!("/events?channel=s&token={short}"), None).await;
    let mut c = server.client().await;
    let writer = hs256(SECRET, claims(&[], &["s"]));
    let publish = format!("/publish?channel=s&token={writer}&message=");
    let first = c.get(&format!("{publish}one")).await.id();
    assert_eq!(events.message().await, (first.clone(), "one".to_owned()));
    let last = loop {
        match events.next().await {
            Some(block) if block.starts_with("event: expired") => {
                break events.next().await;
            }
            Some(_) => continue,
            None => panic!("ended without saying why"),
        }
    };
    assert_eq!(last, None, "the stream ends after its expired event");
    // Published while the client had no stream: not lost.
    assert_eq!(c.get(&format!("{publish}two")).await.status, 200);
    let fresh = hs256(SECRET, claims(&["s"], &[]));
    let mut events = common::Events::open(
        &server,
        &format!("/events?channel=s&token={fresh}"),
        Some(&first),
    )
    .await;
    assert_eq!(events.message().await.1, "two");
    // The old token no longer opens anything.
    c.get(&format!("/subscribe?channel=s&timeout=0&token={short}"))
        .await
        .assert_refused(401);
}

#[tokio::test]
async fn the_token_command_mints_what_the_server_accepts() {
    let mint = |args: &[&str]| common::mint_token(&[&["--key", SECRET], args].concat());
    let server = Server::start(&["--jwt-key", SECRET, "--subscribe-auth", "token"]);
    let reader = mint(&["--subscribe", "room.*,user.42", "--ttl", "60"]);
    let writer = mint(&["--publish", "room.*"]);
    let mut c = server.client().await;
    let resp = c
        .get(&format!(
            "/publish?channel=room.a&message=hi&token={writer}"
        ))
        .await;
    assert_eq!(resp.status, 200);
    let resp = c
        .get(&format!(
            "/subscribe?channel=room.a&since=oldest&token={reader}"
        ))
        .await;
    assert_eq!(resp.text(), "hi");
    let resp = c
        .get(&format!(
            "/subscribe?channel=user.42&timeout=0&token={reader}"
        ))
        .await;
    assert_eq!(resp.status, 204);
    let resp = c
        .get(&format!(
            "/subscribe?channel=room.a&timeout=0&token={writer}"
        ))
        .await;
    assert_eq!(resp.status, 403, "the writer may not read");
    // Signed with a private key, checked with its public half.
    let es256 = common::mint_token(&["--private-key", &keys("ec-private.pem"), "--subscribe", "*"]);
    let server = Server::start(&[
        "--jwt-key",
        &keys("ec-public.pem"),
        "--subscribe-auth",
        "token",
    ]);
    let resp = server
        .get(&format!("/subscribe?channel=any&timeout=0&token={es256}"))
        .await;
    assert_eq!(resp.status, 204);
}

/// A stand-in for the application's auth endpoint on port 0: `session=good`
/// may read `room` and `room.*`, `session=bad` may not (403), anything else
/// is 401. Counts its calls.
/// Over TLS with `tls`.
async fn auth_app(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let calls = counted.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        calls.fetch_add(1, SeqCst);
                        let cookie = req.headers().get("cookie").map(|v| v.as_bytes().to_vec());
                        // One question names every channel: `room` and `room.*` may be read.
                        let channel_named = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("channel="))
                            .is_some_and(|list| {
                                list.split(',')
                                    .all(|c| c == "room" || c.starts_with("room."))
                            });
                        let status = match cookie.as_deref() {
                            Some(b"session=good") if channel_named => 200,
                            Some(b"session=bad") => 403,
                            _ => 401,
                        };
                        async move {
                            let mut resp =
                                hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = builder.serve_connection(io, service).await;
                    }
                    Some(tls) => {
                        let Ok(stream) = tls.accept(stream).await else {
                            return;
                        };
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = builder.serve_connection(io, service).await;
                    }
                }
            });
        }
    });
    (addr, calls, task)
}

#[tokio::test]
async fn the_auth_webhook_decides_once_per_credentials_and_fails_closed() {
    use std::sync::atomic::Ordering::SeqCst;
    let (addr, calls, app) = auth_app(None).await;
    let url = format!("http://{addr}/auth");
    let server = Server::start(&["--subscribe-auth", "webhook", "--auth-url", &url]);
    let mut c = server.client().await;
    let poll = "/subscribe?channel=room&timeout=0";
    let good = [("cookie", "session=good")];
    for _ in 0..1_000 {
        let resp = c.request(Method::GET, poll, &good, "").await;
        assert_eq!(resp.status, 204);
    }
    assert_eq!(calls.load(SeqCst), 1, "1,000 re-polls, one question");
    let bad = [("cookie", "session=bad")];
    c.request(Method::GET, poll, &bad, "")
        .await
        .assert_refused(403);
    c.get(poll).await.assert_refused(401);
    let events = c
        .request(Method::GET, "/events?channel=room", &bad, "")
        .await;
    events.assert_refused(403);
    // The application goes away: a subscriber it has not answered for gets
    // 503 with Retry-After, and no channel is opened for it.
    app.abort();
    let _ = app.await;
    let other = [("cookie", "session=other")];
    let resp = c
        .request(Method::GET, "/subscribe?channel=never", &other, "")
        .await;
    resp.assert_refused(503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    let stats = server.stats().await;
    assert_eq!(stats["waiting"], 0);
    assert_eq!(stats["refused"]["auth_unavailable"], 1);
    let never = c.get("/channels/never").await.json();
    assert_eq!(never["subscribers"], 0);
}

#[tokio::test]
async fn an_https_auth_webhook_is_asked_over_tls_and_an_untrusted_one_fails_closed() {
    use std::sync::atomic::Ordering::SeqCst;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = common::Temp::dir("webhook");
    let ca = dir.join("app.crt");
    std::fs::write(&ca, made.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(made.key_pair.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let (addr, calls, _app) = auth_app(Some(acceptor)).await;
    let url = format!("https://localhost:{}/auth", addr.port());
    let poll = "/subscribe?channel=room&timeout=0";
    let good = [("cookie", "session=good")];
    let bad = [("cookie", "session=bad")];

    let trusting = Server::start(&[
        "--subscribe-auth",
        "webhook",
        "--auth-url",
        &url,
        "--auth-ca",
        ca.to_str().unwrap(),
    ]);
    let mut c = trusting.client().await;
    assert_eq!(c.request(Method::GET, poll, &good, "").await.status, 204);
    assert_eq!(c.request(Method::GET, poll, &bad, "").await.status, 403);
    assert_eq!(calls.load(SeqCst), 2);

    // Without the app's CA the certificate is not trusted: nobody gets in.
    let wary = Server::start(&["--subscribe-auth", "webhook", "--auth-url", &url]);
    let resp = wary
        .client()
        .await
        .request(Method::GET, poll, &good, "")
        .await;
    resp.assert_refused(503);
    assert_eq!(
        calls.load(SeqCst),
        2,
        "no request went out over an untrusted connection"
    );
}

#[tokio::test]
async fn a_request_for_many_channels_asks_the_webhook_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let (addr, calls, _app) = auth_app(None).await;
    let url = format!("http://{addr}/auth");
    let server = Server::start(&["--subscribe-auth", "webhook", "--auth-url", &url]);
    let mut c = server.client().await;
    let good = [("cookie", "session=good")];
    let channels: Vec<String> = (0..64).map(|i| format!("room.{i}")).collect();
    let poll = format!("/subscribe?channel={}&timeout=0", channels.join(","));
    for _ in 0..3 {
        assert_eq!(c.request(Method::GET, &poll, &good, "").await.status, 204);
    }
    assert_eq!(
        calls.load(SeqCst),
        1,
        "64 channels, three polls, one question"
    );
    // A request with one channel the app refuses is refused whole, in one
    // question for what it had not answered yet; a repeat asks nothing.
    let mixed = "/subscribe?channel=room.1,room.2,secret,other&timeout=0";
    c.request(Method::GET, mixed, &good, "")
        .await
        .assert_refused(401);
    c.request(Method::GET, mixed, &good, "")
        .await
        .assert_refused(401);
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(server.stats().await["waiting"], 0);
}

#[tokio::test]
async fn the_bearer_scheme_may_be_written_in_any_case() {
    let server = Server::start(&[
        "--jwt-key",
        SECRET,
        "--subscribe-auth",
        "token",
        "--publish-token",
        "pub-token",
        "--admin-token",
        "admin-token",
    ]);
    let mut c = server.client().await;
    let publish = "/publish?channel=x&message=hi";
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} pub-token");
        let resp = c
            .request(Method::GET, publish, &[("authorization", &auth)], "")
            .await;
        assert_eq!(resp.status, 200, "{scheme}");
        let auth = format!("{scheme} admin-token");
        let resp = c
            .request(Method::GET, "/stats", &[("authorization", &auth)], "")
            .await;
        assert_eq!(resp.status, 200, "{scheme}");
    }
    let token = hs256(SECRET, claims(&["x"], &[]));
    let auth = format!("bearer {token}");
    let resp = c
        .request(
            Method::GET,
            "/subscribe?channel=x&since=oldest",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(resp.text(), "hi");
    // Another scheme is still no token.
    let resp = c
        .request(
            Method::GET,
            publish,
            &[("authorization", "Basic pub-token")],
            "",
        )
        .await;
    resp.assert_refused(401);
}

#[tokio::test]
async fn the_token_command_signs_with_sec1_ec_and_pkcs1_rsa_keys() {
    for (private, public) in [
        ("ec-private-sec1.pem", "ec-public.pem"),
        ("rsa-private-pkcs1.pem", "rsa-public.pem"),
    ] {
        let token = common::mint_token(&["--private-key", &keys(private), "--subscribe", "*"]);
        let server = Server::start(&["--jwt-key", &keys(public), "--subscribe-auth", "token"]);
        let resp = server
            .get(&format!("/subscribe?channel=any&timeout=0&token={token}"))
            .await;
        assert_eq!(resp.status, 204, "{private}");
    }
}

/// The resident growth, in KiB, that the caches may cause at the most under
/// the floods below: what a 4 MiB memory bound allows them, with room for
/// the allocator and the connections.
const FLOOD_RSS_KIB: u64 = 16 * 1024;

#[tokio::test]
async fn a_flood_of_distinct_cookies_stays_within_the_cache_budget() {
    let (addr, _calls, _app) = auth_app(None).await;
    let url = format!("http://{addr}/auth");
    let server = Server::start(&[
        "--subscribe-auth",
        "webhook",
        "--auth-url",
        &url,
        "--max-memory",
        "4M",
    ]);
    let budget = comethub::auth::cache_budget(4 << 20) as u64;
    let mut c = server.client().await;
    c.get("/stats").await;
    let before = server.rss_kib();
    let filler = "x".repeat(15_000);
    for i in 0..3_000 {
        let cookie = format!("session=anon{i}; pad={filler}");
        let resp = c
            .request(
                Method::GET,
                "/subscribe?channel=room&timeout=0",
                &[("cookie", &cookie)],
                "",
            )
            .await;
        resp.assert_refused(401);
    }
    let stats = server.stats().await;
    let cached = stats["auth_cache_bytes"].as_u64().unwrap();
    assert!(
        cached > 0 && cached <= budget,
        "{cached} of {budget}: {stats}"
    );
    assert!(stats["memory_bytes"].as_u64().unwrap() >= cached, "{stats}");
    let grown = server.rss_kib().saturating_sub(before);
    assert!(grown < FLOOD_RSS_KIB, "grew by {grown} KiB");
}

#[tokio::test]
async fn a_flood_of_distinct_large_tokens_stays_within_the_cache_budget() {
    let server = Server::start(&[
        "--jwt-key",
        SECRET,
        "--subscribe-auth",
        "token",
        "--max-memory",
        "4M",
        "--max-header-bytes",
        "65536",
    ]);
    let budget = comethub::auth::cache_budget(4 << 20) as u64;
    let mut c = server.client().await;
    c.get("/stats").await;
    let before = server.rss_kib();
    let patterns: Vec<String> = (0..1_000).map(|i| format!("room.{i:09}")).collect();
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    for i in 0..2_000 {
        let mut claims = claims(&patterns, &[]);
        claims["n"] = json!(i);
        let auth = format!("Bearer {}", hs256(SECRET, claims));
        let resp = c
            .request(
                Method::GET,
                "/subscribe?channel=room.000000007&timeout=0",
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(resp.status, 204);
    }
    let stats = server.stats().await;
    let cached = stats["auth_cache_bytes"].as_u64().unwrap();
    assert!(
        cached > 0 && cached <= budget,
        "{cached} of {budget}: {stats}"
    );
    let grown = server.rss_kib().saturating_sub(before);
    assert!(grown < FLOOD_RSS_KIB, "grew by {grown} KiB");
}
