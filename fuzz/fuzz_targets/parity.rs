//! Parser agreement: the lean HTTP/1.1 path and hyper must read the same bytes
//! the same way. Two parsers that disagree on where a request ends, or on what
//! it says, is how request smuggling starts. Each input is a connection's
//! bytes: every request the lean path would answer itself (see
//! `lean::readings`) must be exactly what hyper, configured as the server
//! configures it, reads from the same bytes, in the same order. What the lean
//! path leaves to hyper is hyper's alone, so it is not compared.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use comethub::http::lean::{self, Reading};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server's default `--max-header-bytes`.
const MAX_HEAD: usize = 16 * 1024;

thread_local! {
    // Paused time: a timeout fires only once nothing else can make progress,
    // that is, once hyper has read every request it can from the bytes.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
}

/// What a request looks like to the routes, as hyper read it.
async fn reading(req: hyper::Request<Incoming>) -> Option<Reading> {
    let (parts, body) = req.into_parts();
    // Only requests whose body was all there count, as with the lean path.
    let body = body.collect().await.ok()?.to_bytes().to_vec();
    let first = |name: &str| parts.headers.get(name).map(|v| v.as_bytes().to_vec());
    Some(Reading {
        method: parts.method.clone(),
        target: parts.uri.path_and_query().map_or_else(String::new, |pq| pq.as_str().to_owned()),
        content_length: parts
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok()),
        last_event_id: first("last-event-id"),
        content_type: first("content-type"),
        authorization: first("authorization"),
        body,
    })
}

/// The requests hyper reads from `bytes` on one connection.
fn hyper_readings(bytes: &[u8]) -> Vec<Reading> {
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (mut client, server) = tokio::io::duplex(256 * 1024);
            let kept = seen.clone();
            let service = service_fn(move |req| {
                let kept = kept.clone();
                async move {
                    if let Some(r) = reading(req).await {
                        kept.lock().expect("lock").push(r);
                    }
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                }
            });
            let mut builder = http1::Builder::new();
            builder.timer(TokioTimer::new()).max_buf_size(MAX_HEAD);
            let conn = builder.serve_connection(TokioIo::new(server), service);
            // The connection stays open: hyper drops what follows an end of
            // input, where the lean path, reading ahead, would not see one.
            let talk = async {
                let _ = client.write_all(bytes).await;
                let mut answers = Vec::new();
                let _ = client.read_to_end(&mut answers).await;
            };
            let both = async { tokio::join!(conn, talk) };
            let _ = tokio::time::timeout(Duration::from_secs(1), both).await;
            std::mem::take(&mut *seen.lock().expect("lock"))
        })
    })
}

/// Pieces of requests. An input whose first byte is odd is read as a list of
/// them, one per byte, so that combinations of lines (two `Connection` lines,
/// a length and a chunked encoding, a second request after a close) come up
/// far sooner than byte by byte.
const PIECES: &[&[u8]] = &[
    b"GET /stats HTTP/1.0\r\n",
    b"GET /subscribe?channel=a&since=oldest HTTP/1.1\r\n",
    b"POST /publish?channel=a HTTP/1.1\r\n",
    b"DELETE /publish?channel=a HTTP/1.1\r\n",
    b"OPTIONS /events HTTP/1.1\r\n",
    b"HEAD /stats HTTP/1.1\r\n",
    b"GET http://x/stats HTTP/1.1\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Connection: keep-alive, close\r\n",
    b"Connection: Upgrade\r\n",
    b"Upgrade: websocket\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 05\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Content-Length:5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Expect: 100-continue\r\n",
    b"Content-Type: text/plain\r\n",
    b"Last-Event-ID: a-1\r\n",
    b"Authorization: Bearer t\r\n",
    b"Host: x\r\n",
    b"X: \xff\r\n",
    b"X : y\r\n",
    b" folded\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"hello",
    b"5\r\nhello\r\n0\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b",",
    b"\x00",
];

fn connection_bytes(input: &[u8]) -> Vec<u8> {
    match input.split_first() {
        Some((first, rest)) if first & 1 == 1 => rest
            .iter()
            .flat_map(|&b| PIECES[usize::from(b) % PIECES.len()].iter().copied())
            .collect(),
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    }
}

fuzz_target!(|input: &[u8]| {
    let bytes = &connection_bytes(input)[..];
    let lean = lean::readings(bytes, MAX_HEAD);
    if lean.is_empty() {
        return;
    }
    let hyper = hyper_readings(bytes);
    assert!(
        hyper.len() >= lean.len() && hyper[..lean.len()] == lean[..],
        "the parsers disagree on {:?}\nlean:  {lean:?}\nhyper: {hyper:?}",
        String::from_utf8_lossy(bytes)
    );
});
