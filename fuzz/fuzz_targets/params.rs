//! Fuzzes what a client controls in a request: the query string (channel, since,
//! timeout, format, message), a form body, and message data, through the same
//! parsing and hub calls the server makes. Input: `QUERY\nBODY`.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use comethub::hub::{Hub, HubConfig, Poll};
use comethub::protocol::{self, Format, JsonMessage, PublishForm, Query};
use hyper::header::HeaderValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (query, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());

    let form: Result<PublishForm, _> = serde_urlencoded::from_bytes(body);
    let json = serde_json::to_string(&JsonMessage::new("a-1", body, "text/plain")).expect("json");
    if let Ok(text) = std::str::from_utf8(body) {
        let back: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(back["data"].as_str(), Some(text), "UTF-8 data round-trips");
    }

    let Ok(query) = std::str::from_utf8(query) else { return };
    let Ok(q) = Query::parse(Some(query)) else { return };
    let hub = Hub::new(HubConfig {
        history: 4,
        history_age: Duration::from_secs(300),
        max_channels: 8,
        max_subscribers: 8,
    });
    let _ = protocol::timeout(q.timeout.as_deref(), Duration::from_secs(30));
    let _ = Format::parse(q.format.as_deref());
    let Ok(channel) = protocol::channel_name(q.channel.as_deref()) else { return };
    let Ok(since) = hub.ids().parse_since(q.since.as_deref()) else { return };
    let message = form.ok().and_then(|f| f.message).map(Bytes::from).unwrap_or_else(|| Bytes::copy_from_slice(body));
    for _ in 0..3 {
        hub.publish(channel, message.clone(), HeaderValue::from_static("text/plain")).expect("publish");
    }
    match hub.poll(channel, since, usize::MAX).expect("poll") {
        Poll::Ready { messages, .. } => {
            assert!(!messages.is_empty());
            assert!(messages.windows(2).all(|w| w[0].seq < w[1].seq), "ordered");
        }
        Poll::Wait(waiter) => {
            assert_eq!(hub.snapshot().waiting, 1);
            drop(waiter);
        }
    }
    assert_eq!(hub.snapshot().waiting, 0, "no waiter leaked");
    assert!(hub.delete(channel));
    assert_eq!(hub.snapshot().channels, 0);
});
