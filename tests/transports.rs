//! The limits on every transport, not only the lean HTTP/1.1 path: a
//! connection that sends no request in time is closed whatever it speaks
//! (plain, after a TLS handshake, a partial HTTP/2 preface, a Unix socket);
//! an HTTP/2 connection with nothing open is closed with a GOAWAY; an HTTP/2
//! stream whose flow-control window stays shut is reset and its memory
//! freed. Meanwhile everyone else is served.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{STEP, Server, Temp};
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
        let (cert, key, connector) = tls(&dir, alpn);
        let server = Server::start(&[
            "--header-timeout",
            "1",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut held = Vec::new();
        for bytes in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
            let tcp = TcpStream::connect(server.addr).await.unwrap();
            let mut s = connector.connect(name.clone(), tcp).await.unwrap();
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
