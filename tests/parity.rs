//! The memory store and the Redis store behind one interface answer the same
//! requests the same way. One script of publishes, polls (one channel and
//! several, raw and JSON, from the history and waiting), gaps, deletes and
//! retried publishes runs against a server of each; what a client sees
//! (statuses, bodies, `X-Message-Id`, `X-Gap`, `X-Channel`, the refusals'
//! reasons) must be the same, ids read as "the n-th id seen" since the two
//! stores spell them differently.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{Events, Redis, Resp, Server, join, spawn_get};
use hyper::Method;

/// What a client saw, with every id replaced by its place among those seen
/// on its channel (a Redis stream id is per channel: two channels may have
/// the same one).
#[derive(Default)]
struct Transcript {
    lines: Vec<String>,
    ids: HashMap<(String, String), usize>,
}

impl Transcript {
    /// The id `token` of `channel` as `#n`, numbered in the order ids were
    /// first seen.
    fn symbol(&mut self, channel: &str, token: &str) -> String {
        let next = self.ids.len() + 1;
        let key = (channel.to_owned(), token.to_owned());
        format!("#{}", self.ids.entry(key).or_insert(next))
    }

    /// A plain id of `channel`, or a cursor (`CHANNEL~ID,...`).
    fn position(&mut self, channel: &str, position: &str) -> String {
        if !position.contains('~') {
            return self.symbol(channel, position);
        }
        let entries: Vec<String> = position
            .split(',')
            .map(|entry| match entry.split_once('~') {
                Some((ch, "oldest")) => format!("{ch}~oldest"),
                Some((ch, id)) => format!("{ch}~{}", self.symbol(ch, id)),
                None => entry.to_owned(),
            })
            .collect();
        entries.join(",")
    }

    /// Records an event of a stream on `channel`: its id a symbol, a
    /// JSON item's too; a `retry` hint or a ping is not an event.
    fn event(&mut self, channel: &str, block: &str) {
        let mut line = format!("event on {channel}:");
        for field in block.lines() {
            let (name, value) = field.split_once(": ").unwrap_or((field, ""));
            let value = match name {
                "id" => self.position(channel, value),
                "data" if value.starts_with('{') => {
                    let mut item: serde_json::Value = serde_json::from_str(value).unwrap();
                    if let (Some(ch), Some(id)) = (item["channel"].as_str(), item["id"].as_str()) {
                        let (ch, id) = (ch.to_owned(), id.to_owned());
                        item["id"] = self.symbol(&ch, &id).into();
                    }
                    item.to_string()
                }
                _ => value.to_owned(),
            };
            line += &format!(" {name}={value}");
        }
        self.lines.push(line);
    }

    /// Records what a request on `channel` answered.
    fn record(&mut self, step: &str, channel: &str, resp: &Resp) {
        let step = match step.split_once("since=") {
            Some((head, rest)) => {
                let (since, tail) = rest.split_once('&').map_or((rest, ""), |(s, t)| (s, t));
                let since = match since {
                    "oldest" | "zzz" => since.to_owned(),
                    _ => self.position(channel, since),
                };
                match tail {
                    "" => format!("{head}since={since}"),
                    _ => format!("{head}since={since}&{tail}"),
                }
            }
            None => step.to_owned(),
        };
        let channel = resp.header("x-channel").unwrap_or(channel).to_owned();
        let mut line = format!("{step} → {}", resp.status.as_u16());
        for h in ["x-message-id", "x-gap", "x-channel", "idempotent-replayed"] {
            if let Some(v) = resp.header(h) {
                let v = match h {
                    "x-message-id" => self.position(&channel, v),
                    _ => v.to_owned(),
                };
                line += &format!(" {h}: {v}");
            }
        }
        if resp.header("content-type") != Some("application/json") {
            line += &format!(" {}", resp.text());
            self.lines.push(line);
            return;
        }
        // Refusals and batches as JSON, so key order is not compared, with
        // the ids of messages and publishes made symbols. `subscribers` of a
        // publish depends on timing the script sets, not on the store.
        let mut json = resp.json();
        if let Some(messages) = json.get_mut("messages").and_then(|m| m.as_array_mut()) {
            for message in messages.iter_mut() {
                let ch = message["channel"].as_str().unwrap().to_owned();
                let id = message["id"].as_str().unwrap().to_owned();
                message["id"] = self.symbol(&ch, &id).into();
            }
            // Across channels a batch is in publish order in memory and in
            // stream-id order on Redis (docs/protocol.md); within a channel
            // both keep publish order.
            messages.sort_by(|a, b| a["channel"].as_str().cmp(&b["channel"].as_str()));
        }
        if let Some(last) = json["last_id"].as_str().map(str::to_owned) {
            json["last_id"] = self.position(&channel, &last).into();
        }
        if let Some(id) = json["id"].as_str().map(str::to_owned) {
            json["id"] = self.symbol(&channel, &id).into();
        }
        if let Some(ids) = json.get_mut("ids").and_then(|m| m.as_object_mut()) {
            for (ch, id) in ids.iter_mut() {
                let given = id.as_str().unwrap().to_owned();
                *id = self.symbol(ch, &given).into();
            }
        }
        if let Some(o) = json.as_object_mut() {
            o.remove("subscribers");
        }
        line += &format!(" {json}");
        self.lines.push(line);
    }
}

/// Runs the script against `server` (started with `--history 3`).
async fn script(server: &Server) -> Transcript {
    let mut t = Transcript::default();
    let mut c = server.client().await;
    let addr = server.addr;

    macro_rules! get {
        ($path:expr) => {{
            let path: String = $path;
            let resp = c.get(&path).await;
            let channel = path
                .split("channel=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap();
            t.record(&path, channel, &resp);
            resp
        }};
    }
    macro_rules! publish {
        ($channel:expr, $data:expr) => {{
            let path = format!("/publish?channel={}&message={}", $channel, $data);
            let resp = c.request(Method::POST, &path, &[], "").await;
            t.record(&path, $channel, &resp);
            resp
        }};
    }

    // Nothing yet: where an empty channel stands, alone and with others.
    get!("/subscribe?channel=a&timeout=0".to_owned());
    get!("/subscribe?channel=a,b&since=oldest&timeout=0".to_owned());
    let one = publish!("a", "one").id();
    publish!("a", "two");
    publish!("b", "uno");

    // From the history: raw, from an id, JSON, several channels.
    get!("/subscribe?channel=a&since=oldest".to_owned());
    get!(format!("/subscribe?channel=a&since={one}"));
    get!("/subscribe?channel=a&since=oldest&format=json".to_owned());
    let batch = get!("/subscribe?channel=a,b&since=oldest&format=json".to_owned());
    let cursor = batch.json()["last_id"].as_str().unwrap().to_owned();
    get!(format!("/subscribe?channel=a,b&since={cursor}&timeout=0"));

    // Waiting: one channel, then several, woken by a publish.
    let waiter = spawn_get(addr, "/subscribe?channel=b");
    server.wait_for_stat("waiting", 1).await;
    publish!("b", "dos");
    t.record("waiting on b", "b", &join(waiter).await);
    let path = format!("/subscribe?channel=a,b&since={cursor}");
    let waiter = spawn_get(addr, &path);
    let waited = join(waiter).await;
    t.record("several, from the cursor", "a,b", &waited);
    let cursor = waited.id();
    let waiter = spawn_get(addr, &format!("/subscribe?channel=a,b&since={cursor}"));
    server.wait_for_stat("waiting", 1).await;
    publish!("a", "three");
    t.record("waiting on a,b", "a,b", &join(waiter).await);

    // Past the history: gaps, alone and among several.
    for data in ["four", "five", "six"] {
        publish!("a", data);
    }
    get!(format!("/subscribe?channel=a&since={one}"));
    get!(format!("/subscribe?channel=a&since={one}&format=json"));
    get!(format!(
        "/subscribe?channel=a,b&since=a~{one},b~oldest&format=json"
    ));

    // Event streams: from before the history (a gap event first), then live;
    // several channels, live.
    let mut events = Events::open(server, &format!("/events?channel=a&since={one}"), None).await;
    let mut several = Events::open(server, "/events?channel=b,d", None).await;
    server.wait_for_stat("streams", 2).await;
    publish!("d", "live-d");
    publish!("a", "live-a");
    publish!("b", "live-b");
    for _ in 0..6 {
        let block = events.next().await.unwrap();
        t.event("a", &block);
    }
    for _ in 0..3 {
        let block = several.next().await.unwrap();
        t.event("b,d", &block);
    }
    drop((events, several));
    server.wait_for_stat("streams", 0).await;

    // Retried publishes.
    for _ in 0..2 {
        let headers = [("idempotency-key", "k1"), ("content-type", "text/plain")];
        let resp = c
            .request(Method::POST, "/publish?channel=c", &headers, "once")
            .await;
        t.record("keyed publish", "c", &resp);
    }
    get!("/subscribe?channel=c&since=oldest&format=json".to_owned());

    // One publish on several channels: each keeps it, a subscriber of
    // several gets it once and resumes past it on each, from the history,
    // waiting and on a stream; a retry under one key publishes nothing.
    let cursor = get!("/subscribe?channel=e,f,g&timeout=0".to_owned()).id();
    publish!("e,f", "both");
    get!("/subscribe?channel=f&since=oldest&format=json".to_owned());
    get!(format!(
        "/subscribe?channel=e,f,g&since={cursor}&format=json"
    ));
    let once = get!(format!("/subscribe?channel=e,f,g&since={cursor}"));
    get!(format!(
        "/subscribe?channel=e,f,g&since={}&timeout=0",
        once.id()
    ));
    let waiter = spawn_get(
        addr,
        &format!("/subscribe?channel=e,f,g&since={}", once.id()),
    );
    server.wait_for_stat("waiting", 1).await;
    publish!("f,g", "again");
    let waited = join(waiter).await;
    t.record("waiting on e,f,g", "e,f,g", &waited);
    get!(format!(
        "/subscribe?channel=e,f,g&since={}&timeout=0",
        waited.id()
    ));
    let mut both = Events::open(server, "/events?channel=e,g", None).await;
    server.wait_for_stat("streams", 1).await;
    publish!("e,g", "streamed");
    publish!("g", "after");
    // The retry hint, then the two events.
    for _ in 0..3 {
        let block = both.next().await.unwrap();
        t.event("e,g", &block);
    }
    drop(both);
    server.wait_for_stat("streams", 0).await;
    for _ in 0..2 {
        let headers = [("idempotency-key", "k2"), ("content-type", "text/plain")];
        let resp = c
            .request(Method::POST, "/publish?channel=e,f", &headers, "keyed")
            .await;
        t.record("keyed publish on e,f", "e,f", &resp);
    }
    let headers = [("idempotency-key", "k2"), ("content-type", "text/plain")];
    let resp = c
        .request(Method::POST, "/publish?channel=e,g", &headers, "keyed")
        .await;
    t.record("the key for other channels", "e,g", &resp);

    // Deleting: a waiter is told, the history is gone.
    let waiter = spawn_get(addr, "/subscribe?channel=a");
    server.wait_for_stat("waiting", 1).await;
    let resp = c
        .request(Method::DELETE, "/publish?channel=a", &[], "")
        .await;
    t.record("delete a", "a", &resp);
    t.record("waiting on deleted a", "a", &join(waiter).await);
    get!("/subscribe?channel=a&since=oldest&timeout=0".to_owned());

    // Refusals.
    get!("/subscribe?channel=a,a".to_owned());
    get!("/subscribe?channel=a,b&since=zzz".to_owned());
    t
}

#[tokio::test]
async fn memory_and_redis_answer_the_same_script_the_same_way() {
    let memory = Server::start(&["--history", "3"]);
    let memory = script(&memory).await;
    let redis = Redis::start();
    let on_redis = Server::on_redis(&redis.url(), &["--history", "3"]).await;
    let on_redis = script(&on_redis).await;
    if std::env::var_os("PARITY_SHOW").is_some() {
        for (m, r) in memory.lines.iter().zip(&on_redis.lines) {
            eprintln!("M {m}\nR {r}");
        }
    }
    assert_eq!(memory.lines.len(), on_redis.lines.len());
    for (m, r) in memory.lines.iter().zip(&on_redis.lines) {
        assert_eq!(m, r, "memory (left) and Redis (right) differ");
    }
    // The script saw gaps, events, a delete and a replay: it tests what it
    // says.
    let all = memory.lines.join("\n");
    for seen in [
        "x-gap: 1",
        "410",
        "idempotent-replayed: true",
        "x-channel: b",
        "event=gap",
        "data=live-a",
        "\"data\":\"live-d\"",
    ] {
        assert!(all.contains(seen), "{seen} in\n{all}");
    }
}
