//! Fuzzes what a client controls in a request: the query string (channel, since,
//! timeout, format, message), a publish body, and message data, through the same
//! parsing, encoding and hub calls the server makes. Input: `QUERY\nBODY`.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use comethub::hub::{Hub, Limits, Mode, Since, Start};
use comethub::protocol::{self, Content, Ids, Meter, Query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (query, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let Ok(query) = std::str::from_utf8(query) else { return };
    // The in-place split and serde_urlencoded agree wherever the split is used.
    if !query.contains(['%', '+']) {
        match (Query::split(query), Query::decode(query)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "split and decode differ on {query:?}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("split {a:?} but decode {b:?} on {query:?}"),
        }
    }
    let Ok(q) = Query::parse(Some(query)) else { return };

    // The message a POST with this body would publish, as a form and as raw bytes.
    let ids = Ids::Epoch("fuzz01".into());
    let meter = Meter::default();
    let body = Bytes::copy_from_slice(body);
    let form = Some(Bytes::from_static(b"application/x-www-form-urlencoded"));
    let _ = protocol::published_message(q.message.clone().map(|m| m.into_owned()), form, body.clone(), 1 << 16);
    let raw = Some(Bytes::from_static(b"application/octet-stream"));
    let Ok((message, content_type)) = protocol::published_message(None, raw, body, 1 << 16) else {
        return;
    };

    // Its encodings: JSON that parses and gives the text back, SSE lines only.
    let content = Content::new(ids.id(1), message.clone(), content_type.clone(), &meter);
    let item: serde_json::Value = serde_json::from_slice(&content.json("c")).expect("valid json");
    if let Ok(text) = std::str::from_utf8(&message) {
        assert_eq!(item["data"].as_str(), Some(text), "UTF-8 data round-trips");
    }
    let sse = content.sse();
    let frame = std::str::from_utf8(&sse).expect("SSE frames are text");
    let lines = frame.strip_suffix("\n\n").expect("a frame ends with a blank line");
    assert!(lines.split('\n').all(|l| l.starts_with("id: ") || l.starts_with("data: ")
        || l == "event: binary"));
    if std::str::from_utf8(&message).is_err() {
        let data = lines.rsplit_once("data: ").map(|(_, d)| d).unwrap_or_default();
        assert_eq!(data, protocol::base64(&message), "binary data goes in base64");
    }
    drop(content);
    assert_eq!(meter.bytes(), 0, "encodings given back");

    let Ok(params) = q.subscribe(None, &ids, Duration::from_secs(30), 8) else { return };
    let hub = Hub::new(Limits {
        history: 4,
        history_age: Duration::from_secs(300),
        max_channels: 8,
        max_subscribers: 8,
        max_bytes: 0,
        idempotency_window: Duration::from_secs(300),
    }, Mode::Source);
    let channels: &[(smol_str::SmolStr, Since)] = params.channels.list();
    for (channel, _) in channels {
        hub.publish(&[channel], |seq| {
            Content::new(ids.id(seq), message.clone(), content_type.clone(), &meter)
        })
        .expect("publish");
    }
    let mut starts = Vec::new();
    let waiter = hub
        .poll(channels, params.limit(), |_, start| starts.push(start))
        .expect("poll");
    let mut read = 0;
    for start in &starts {
        match start {
            Start::Read { messages, .. } => {
                assert!(messages.len() <= params.limit());
                assert!(messages.windows(2).all(|w| w[0].seq < w[1].seq), "ordered");
                read += messages.len();
            }
            Start::Miss => panic!("a source hub never misses"),
        }
    }
    if read == 0 {
        assert!(waiter.is_some());
        for (channel, _) in channels {
            assert_eq!(hub.info(channel).subscribers, 1, "waits on each");
        }
        assert_eq!(hub.snapshot().waiting, 1, "counted once");
    } else {
        assert!(waiter.is_none());
    }
    drop(waiter);
    assert_eq!(hub.snapshot().waiting, 0, "no waiter leaked");
    for (channel, _) in channels {
        assert!(hub.delete(channel));
    }
    assert_eq!(hub.snapshot().channels, 0);
});
