//! The limits on every transport, not only the lean HTTP/1.1 path: a
//! connection that sends no request in time is closed whatever it speaks
//! (plain, after a TLS handshake, a partial HTTP/2 preface, a Unix socket);
//! an HTTP/2 connection with nothing open is closed with a GOAWAY; an HTTP/2
//! stream whose flow-control window stays shut is reset and its memory
//! freed; an HTTPS/1.1 reader that takes nothing is let go after the write
//! timeout; a subscriber over `--max-subscribers` is answered 503 and a
//! connection over `--max-connections` is turned away, whatever it speaks.
//! Meanwhile everyone else is served.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{STEP, Server, Temp, answer, wait_for_stat_of};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// A self-signed certificate for localhost in `dir`; its files, and a client
/// that trusts it and offers `alpn`.
fn tls(dir: &Temp, alpn: &[&[u8]]) -> (String, String, tokio_rustls::TlsConnector) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("t.crt"), dir.join("t.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    (
        path(cert),
        path(key),
        tokio_rustls::TlsConnector::from(Arc::new(config)),
    )
}

/// Reads until the server closes the connection (end of stream or reset);
/// panics if it is still open after `STEP`.
async fn closed_by_server(mut io: impl AsyncRead + Unpin, what: &str) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(STEP, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: still open"));
}

#[tokio::test]
async fn a_connection_that_sends_no_request_in_time_is_closed_on_every_transport() {
    let dir = Temp::dir("transports");
    let socket = dir.join("c.sock");
    let unix = format!("unix:{}", socket.display());
    let plain = Server::start(&["--header-timeout", "1", "--listen", &unix]);
    let alpns: [&[&[u8]]; 3] = [&[b"h2"], &[b"http/1.1"], &[]];

    // In the clear: silence, a partial HTTP/2 preface, a partial request line.
    let mut silent = Vec::new();
    for bytes in [&b""[..], b"PRI * HTTP/2.0\r\n", b"GET /subscr"] {
        let mut s = TcpStream::connect(plain.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        silent.push((s, String::from_utf8_lossy(bytes).into_owned()));
    }
    // A Unix socket: silence, and a partial preface.
    let mut quiet_unix = Vec::new();
    for bytes in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut s = UnixStream::connect(&socket).await.unwrap();
        s.write_all(bytes).await.unwrap();
        quiet_unix.push(s);
    }
    // Meanwhile the server serves others.
    assert_eq!(
        plain.get("/subscribe?channel=x&timeout=0").await.status,
        204
    );
    for (s, what) in silent {
        closed_by_server(s, &format!("plain {what:?}")).await;
    }
    for s in quiet_unix {
        closed_by_server(s, "unix").await;
    }

    // After a TLS handshake, whatever was agreed by ALPN.
    for alpn in alpns {
        let (server, connector) = tls_server(&dir, alpn, &["--header-timeout", "1"]);
        let mut held = Vec::new();
        for bytes in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
            let mut s = tls_connect(&server, &connector).await.unwrap();
            s.write_all(bytes).await.unwrap();
            s.flush().await.unwrap();
            held.push(s);
        }
        for s in held {
            closed_by_server(s, &format!("TLS, ALPN {alpn:?}")).await;
        }
    }
}

#[tokio::test]
async fn an_http2_connection_with_nothing_open_is_closed_with_a_goaway() {
    let server = Server::start(&["--header-timeout", "1"]);
    let (mut sender, ended) = common::h2c(&server, None).await;
    let resp = sender.send_request(common::h2_get("/stats")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // A connection with a stream open stays, however long it waits.
    let (mut busy, mut busy_ended) = common::h2c(&server, None).await;
    let waiting = tokio::spawn(async move {
        busy.send_request(common::h2_get("/subscribe?channel=w&timeout=3"))
            .await
            .unwrap()
            .status()
    });
    // The client's connection ends (the server said GOAWAY and closed) while
    // it still answers PINGs.
    tokio::time::timeout(STEP, ended)
        .await
        .expect("idle connection closed")
        .unwrap();
    assert!(busy_ended.try_recv().is_err(), "the busy one is still open");
    assert_eq!(waiting.await.unwrap(), 204);
}

#[tokio::test]
async fn an_http2_stream_whose_window_stays_shut_is_reset_and_freed() {
    let server = Server::start(&["--write-timeout", "2"]);
    let (sender, _ended) = common::h2c(&server, Some(0)).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut sender = sender.clone();
        let resp = tokio::time::timeout(
            STEP,
            sender.send_request(common::h2_get("/events?channel=wa,wb")),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(resp.into_body());
    }
    server.wait_for_stat("streams", 50).await;
    let before = server.rss_kib();
    // A reader that reads, on its own connection, is served throughout.
    let mut reader = common::Events::open(&server, "/events?channel=wa", None).await;
    let mut c = server.client().await;
    let big = "m".repeat(60_000);
    for i in 0..40 {
        let id = c
            .request(
                hyper::Method::POST,
                "/publish?channel=wa",
                &[("content-type", "text/plain")],
                format!("{i}{big}"),
            )
            .await
            .id();
        let (got, data) = reader.message().await;
        assert_eq!(got, id);
        assert!(data.starts_with(&i.to_string()));
    }
    // Every stuck stream is reset, and what it held is freed.
    for mut body in streams {
        let frame = tokio::time::timeout(STEP, body.frame())
            .await
            .expect("reset in time");
        assert!(
            matches!(frame, Some(Err(_)) | None),
            "a shut window took data"
        );
    }
    server.wait_for_stat("streams", 1).await;
    // 50 streams each holding its queue of 60 KB frames are 48 MiB; once
    // they are reset that is handed back (the history itself is 2.4 MB).
    let left = server.wait_for_rss_below(before + 16 * 1024).await;
    assert!(left < before + 16 * 1024, "grew by {} KiB", left - before);
}

/// A raw HTTP/1.1 publish of `data` on `channel`.
fn publish_request(channel: &str, data: &str) -> String {
    format!(
        "POST /publish?channel={channel} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{data}",
        data.len()
    )
}

/// Reads from `io` until `text` has come.
async fn read_until(io: &mut (impl AsyncRead + Unpin), seen: &mut String, text: &str) {
    let mut buf = [0u8; 1024];
    while !seen.contains(text) {
        let n = tokio::time::timeout(STEP, io.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before {text:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn http11_over_tls_is_served_as_in_the_clear() {
    let dir = Temp::dir("tls-http11");
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let (server, connector) = tls_server(&dir, alpn, &[]);
        let connect = || async { tls_connect(&server, &connector).await.unwrap() };
        let publish = |data: &str| publish_request("c", data);

        // One connection kept alive: a publish, then a read of the history.
        let mut a = connect().await;
        a.write_all(publish("first").as_bytes()).await.unwrap();
        let (head, body) = answer(&mut a).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{alpn:?}: {head}");
        let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        a.write_all(b"GET /subscribe?channel=c&since=oldest HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(answer(&mut a).await.1, "first");

        // A long-poll and an event stream after that id, then what is published.
        let mut b = connect().await;
        let poll = format!("GET /subscribe?channel=c&since={id} HTTP/1.1\r\nHost: x\r\n\r\n");
        b.write_all(poll.as_bytes()).await.unwrap();
        let mut events = connect().await;
        let open = format!("GET /events?channel=c&since={id} HTTP/1.1\r\nHost: x\r\n\r\n");
        events.write_all(open.as_bytes()).await.unwrap();
        a.write_all(publish("second").as_bytes()).await.unwrap();
        answer(&mut a).await;
        let (head, body) = answer(&mut b).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "second");
        let mut seen = String::new();
        read_until(&mut events, &mut seen, "data: second").await;
        a.write_all(publish("third").as_bytes()).await.unwrap();
        answer(&mut a).await;
        read_until(&mut events, &mut seen, "data: third").await;
        assert!(
            seen.to_ascii_lowercase()
                .contains("content-type: text/event-stream")
        );

        // A chunked body is hyper's: the connection is handed over and goes on.
        a.write_all(
            b"POST /publish?channel=c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              6\r\nfourth\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(answer(&mut a).await.0.starts_with("HTTP/1.1 200"));
        a.write_all(
            b"GET /subscribe?channel=c&since=oldest&format=json HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
        let (_, batch) = answer(&mut a).await;
        assert!(batch.contains("\"fourth\""), "{batch}");
    }
}

/// A server's `/stats`, asked over a Unix socket in the clear (its TCP
/// listener speaks only TLS).
async fn stats_over(socket: &std::path::Path) -> serde_json::Value {
    let mut s = UnixStream::connect(socket).await.unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    serde_json::from_str(&answer(&mut s).await.1).unwrap()
}

#[tokio::test]
async fn an_https_event_stream_whose_reader_takes_nothing_is_let_go_after_the_write_timeout() {
    let dir = Temp::dir("tls-stall");
    let socket = dir.join("s.sock");
    let unix = format!("unix:{}", socket.display());
    let flags = ["--write-timeout", "1", "--listen", &unix];
    let (server, connector) = tls_server(&dir, &[b"http/1.1"], &flags);
    // A TLS client that never reads: its receive window fills, then stays shut.
    let tcp = common::connect_with_receive_buffer(server.addr, 4096).await;
    let mut stalled = handshake(tcp, &connector).await.unwrap();
    stalled
        .write_all(b"GET /events?channel=shut HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    stalled.flush().await.unwrap();
    wait_for_stat_of(|| stats_over(&socket), "streams", 1).await;

    // More than the kernel's buffers on both sides hold, over another HTTPS
    // connection, each publish answered.
    let mut publisher = tls_connect(&server, &connector).await.unwrap();
    let big = "z".repeat(60_000);
    let publish = publish_request("shut", &big);
    for _ in 0..200 {
        publisher.write_all(publish.as_bytes()).await.unwrap();
        publisher.flush().await.unwrap();
        let (head, _) = answer(&mut publisher).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }

    // Given up on and forgotten, while the publisher was served throughout.
    wait_for_stat_of(|| stats_over(&socket), "streams", 0).await;
    closed_by_server(stalled, "the stalled HTTPS stream").await;
}

/// `connector`'s client, offering `alpn` instead.
fn offering(connector: &tokio_rustls::TlsConnector, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut config = (**connector.config()).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A GET for `path` on a raw HTTP/1.1 connection: the answer's status and body.
async fn get_over(io: &mut (impl AsyncRead + AsyncWriteExt + Unpin), path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    io.write_all(request.as_bytes()).await.unwrap();
    io.flush().await.unwrap();
    let (head, body) = answer(io).await;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status.unwrap_or_else(|| panic!("{head}")), body)
}

type H2 = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// A request on an HTTP/2 connection: the answer's status and body.
async fn h2_send(
    h2: &mut H2,
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> (u16, String) {
    let resp = tokio::time::timeout(STEP, h2.send_request(request))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// A publish of `data` on `channel` over HTTP/2: how many it reached.
async fn h2_publish(h2: &mut H2, channel: &str, data: &str) -> u64 {
    let request = hyper::Request::post(format!("http://localhost/publish?channel={channel}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            data.to_owned(),
        )))
        .unwrap();
    let (status, body) = h2_send(h2, request).await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["subscribers"].as_u64().unwrap()
}

/// Asserts a one-line JSON refusal with this status and reason.
fn assert_refused(what: &str, (status, body): (u16, String), want: u16, reason: &str) {
    assert_eq!(status, want, "{what}: {body}");
    assert_eq!(body.trim_end().lines().count(), 1, "{what}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["reason"], reason, "{what}: {body}");
}

/// `/stats`, asked over an HTTP/2 connection.
async fn h2_stats(mut h2: H2) -> serde_json::Value {
    serde_json::from_str(&h2_send(&mut h2, common::h2_get("/stats")).await.1).unwrap()
}

/// A server speaking only TLS, with `flags`, and a client of it that offers
/// `alpn`.
fn tls_server(dir: &Temp, alpn: &[&[u8]], flags: &[&str]) -> (Server, tokio_rustls::TlsConnector) {
    let (cert, key, connector) = tls(dir, alpn);
    let mut args = flags.to_vec();
    args.extend(["--tls-cert", &cert, "--tls-key", &key]);
    (Server::start(&args), connector)
}

/// A TLS handshake for `localhost` over `tcp`, or why not.
async fn handshake(
    tcp: TcpStream,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// A TLS connection to `server` through `connector`, or why not.
async fn tls_connect(
    server: &Server,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    handshake(TcpStream::connect(server.addr).await?, connector).await
}

/// Sends `hold` (a long-poll) over HTTPS/1.1 and opens an HTTPS/2
/// connection; returns both once the long-poll waits.
async fn waiting_over_tls(
    server: &Server,
    connector: &tokio_rustls::TlsConnector,
    hold: &[u8],
) -> (tokio_rustls::client::TlsStream<TcpStream>, H2) {
    let mut held = tls_connect(server, connector).await.unwrap();
    held.write_all(hold).await.unwrap();
    held.flush().await.unwrap();
    let h2 = tls_connect(server, &offering(connector, b"h2"))
        .await
        .unwrap();
    let (h2, _) = common::h2_over(h2, None).await;
    wait_for_stat_of(|| h2_stats(h2.clone()), "waiting", 1).await;
    (held, h2)
}

#[tokio::test]
async fn the_subscriber_limit_answers_503_on_every_transport() {
    let dir = Temp::dir("transports-subscribers");
    let socket = dir.join("s.sock");
    let unix = format!("unix:{}", socket.display());
    let hold = b"GET /subscribe?channel=l HTTP/1.1\r\nHost: x\r\n\r\n";

    // In the clear: HTTP/1.1, h2c and a Unix socket.
    let server = Server::start(&["--max-subscribers", "1", "--listen", &unix]);
    let mut held = TcpStream::connect(server.addr).await.unwrap();
    held.write_all(hold).await.unwrap();
    server.wait_for_stat("waiting", 1).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut local = UnixStream::connect(&socket).await.unwrap();
    let (mut h2, _ended) = common::h2c(&server, None).await;
    for path in [
        "/subscribe?channel=l",
        "/events?channel=l",
        "/subscribe?channel=other",
    ] {
        let busy = |how: &str| format!("{how} {path}");
        assert_refused(&busy("plain"), get_over(&mut tcp, path).await, 503, "busy");
        assert_refused(&busy("unix"), get_over(&mut local, path).await, 503, "busy");
        let refused = h2_send(&mut h2, common::h2_get(path)).await;
        assert_refused(&busy("h2c"), refused, 503, "busy");
    }
    // The one waiting is served, and so is every refused client's connection.
    assert_eq!(h2_publish(&mut h2, "l", "m").await, 1);
    assert_eq!(answer(&mut held).await.1, "m");
    assert_eq!(
        get_over(&mut tcp, "/subscribe?channel=l&since=oldest")
            .await
            .1,
        "m"
    );
    assert_eq!(
        get_over(&mut local, "/subscribe?channel=l&since=oldest")
            .await
            .1,
        "m"
    );

    // Over TLS: HTTP/1.1 and HTTP/2.
    let (server, connector) = tls_server(&dir, &[b"http/1.1"], &["--max-subscribers", "1"]);
    let (mut held, mut h2) = waiting_over_tls(&server, &connector, hold).await;
    let mut https = tls_connect(&server, &connector).await.unwrap();
    for path in ["/subscribe?channel=l", "/events?channel=l"] {
        assert_refused(
            &format!("HTTPS/1.1 {path}"),
            get_over(&mut https, path).await,
            503,
            "busy",
        );
        let refused = h2_send(&mut h2, common::h2_get(path)).await;
        assert_refused(&format!("HTTPS/2 {path}"), refused, 503, "busy");
    }
    assert_eq!(h2_publish(&mut h2, "l", "m").await, 1);
    assert_eq!(answer(&mut held).await.1, "m");
    assert_eq!(
        get_over(&mut https, "/subscribe?channel=l&since=oldest")
            .await
            .1,
        "m"
    );
}

#[tokio::test]
async fn the_connection_limit_turns_away_connections_on_every_transport() {
    let dir = Temp::dir("transports-connections");
    let socket = dir.join("c.sock");
    let unix = format!("unix:{}", socket.display());
    let hold = b"GET /subscribe?channel=k HTTP/1.1\r\nHost: x\r\n\r\n";

    // In the clear: a long-poll and an h2c connection take both places.
    let server = Server::start(&["--max-connections", "2", "--listen", &unix]);
    let mut held = TcpStream::connect(server.addr).await.unwrap();
    held.write_all(hold).await.unwrap();
    let (mut h2, _ended) = common::h2c(&server, None).await;
    wait_for_stat_of(|| h2_stats(h2.clone()), "waiting", 1).await;
    // An HTTP/1.1 client is told why, then closed; an h2c client (its preface
    // sent) and a Unix socket client are closed.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let refused = get_over(&mut tcp, "/stats").await;
    assert_refused("plain", refused, 503, "connection_limit");
    closed_by_server(tcp, "plain, over the limit").await;
    let mut prior = TcpStream::connect(server.addr).await.unwrap();
    prior
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(prior, "h2c, over the limit").await;
    let local = UnixStream::connect(&socket).await.unwrap();
    closed_by_server(local, "unix, over the limit").await;
    // Those already in are served.
    assert_eq!(h2_publish(&mut h2, "k", "m").await, 1);
    assert_eq!(answer(&mut held).await.1, "m");

    // Over TLS: no handshake for a connection over the limit.
    let (server, connector) = tls_server(&dir, &[b"http/1.1"], &["--max-connections", "2"]);
    let (mut held, mut h2) = waiting_over_tls(&server, &connector, hold).await;
    let h2_connector = offering(&connector, b"h2");
    for (what, connector) in [("HTTPS/1.1", connector), ("HTTPS/2", h2_connector)] {
        let refused = tokio::time::timeout(STEP, tls_connect(&server, &connector))
            .await
            .unwrap();
        assert!(refused.is_err(), "{what}: a handshake over the limit");
    }
    assert_eq!(h2_publish(&mut h2, "k", "m").await, 1);
    assert_eq!(answer(&mut held).await.1, "m");
}
