// comethub.js: a small client for comethub, with no dependencies. Every
// comethub serves it at /comethub.js; import it from there or copy it.
//
//   import { subscribe, publish } from "/comethub.js";
//   const sub = subscribe(["room.7", "user.42"], (m) => console.log(m.channel, m.data), {
//     since: "oldest",                  // where to start the first time (default: now)
//     onGap: (channels) => console.warn("missed messages on", channels),
//   });
//   await publish("room.7", { text: "hi" });
//   sub.close();
//   const who = presence("room.7", (p) => console.log(p.members.map((m) => m.id)));
//
// What it does for you: long-polls (or streams, with transport: "sse") every
// channel in one request; resumes from the cursor each answer gives, kept in
// sessionStorage so a reload goes on where the page was; hands each message
// over once (by channel and id); says which channels missed messages; backs
// off and retries when the server is away; and lets every tab of the same
// channels share one connection (a Web Lock picks the tab that talks to the
// server, a BroadcastChannel passes its messages on to the others).
// presence() follows who is on a channel that keeps presence (--presence),
// and up to which message each member has received.

const RETRY_MIN = 500;
const RETRY_MAX = 15000;
const SEEN = 2000;

// Query values as comethub reads them fastest: commas and tildes left as they are.
const enc = (v) => encodeURIComponent(String(v)).replace(/%2C/gi, ",");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const jitter = (ms) => Math.round(ms * (0.75 + Math.random() / 2));

function session() {
  try { return window.sessionStorage; } catch (_) { return null; }
}

async function tokenOf(option) {
  return typeof option === "function" ? await option() : option;
}

/**
 * Subscribes to `channels` (an array or a comma-separated string) and calls
 * `onMessage({id, channel, data, type, encoding?})` once per message, in
 * publish order within each channel. Data that is not UTF-8 comes in base64
 * with encoding "base64" (see `bytes`).
 *
 * options:
 *   server     base URL of comethub (default: this page's origin)
 *   transport  "poll" (default) or "sse"
 *   since      where to start when there is no saved cursor: "oldest", a
 *              cursor, or nothing (from now)
 *   token      a JWT, or a function returning one (called for every request,
 *              so it can hand out a fresh one)
 *   timeout    seconds a long-poll waits (default 25)
 *   client     who this subscriber is, for presence on a server without
 *              auth (unverified; with tokens the token's sub counts)
 *   resume     false: do not keep the cursor in sessionStorage
 *   share      false: do not share one connection between tabs
 *   onGap(channels)          messages on these channels were missed
 *   onState(state, detail)   "connecting", "live", "reconnecting", "denied"
 *                            (detail.status 401 or 403), "gone" (a channel
 *                            was deleted); detail.shared when another tab
 *                            holds the connection
 * Returns { close(), cursor }.
 */
export function subscribe(channels, onMessage, options = {}) {
  const list = (Array.isArray(channels) ? channels : String(channels).split(","))
    .map((c) => String(c).trim())
    .filter(Boolean);
  if (!list.length) throw new Error("comethub: name at least one channel");
  const names = list.join(",");
  const server = (options.server || "").replace(/\/$/, "");
  const transport = options.transport === "sse" ? "sse" : "poll";
  const timeout = options.timeout ?? 25;
  const onGap = options.onGap || (() => {});
  const onState = options.onState || (() => {});
  const key = "comethub:" + (server || location.origin) + ":" + names;
  const storage = options.resume === false ? null : session();

  let cursor = storage?.getItem(key) ?? null;
  let closed = false;
  let stop = () => {};
  let release = () => {};
  let leading = false;
  const abort = new AbortController();
  const seen = new Set();

  const bus = options.share !== false && typeof BroadcastChannel === "function" && navigator.locks
    ? new BroadcastChannel(key) : null;

  function setCursor(c) {
    if (!c) return;
    cursor = c;
    try { storage?.setItem(key, c); } catch (_) { /* storage full or denied */ }
  }

  function deliver(m) {
    const id = m.channel + "\n" + m.id;
    if (seen.has(id)) return;
    seen.add(id);
    if (seen.size > SEEN) seen.delete(seen.values().next().value);
    try { onMessage(m); } catch (err) { setTimeout(() => { throw err; }); }
  }

  // What an answer brought: the messages, the cursor after them, the channels with a gap.
  function take(messages, next, gap, relayed = false) {
    if (closed) return;
    if (gap.length) onGap(gap);
    messages.forEach(deliver);
    setCursor(next);
    if (leading && bus && !relayed) bus.postMessage({ kind: "batch", messages, cursor: next, gap });
  }

  let current = null;
  function state(s, detail = {}) {
    if (closed || (s === "live" && current === "live")) return;
    current = s;
    onState(s, detail);
    if (leading && bus) bus.postMessage({ kind: "state", state: s, detail });
  }

  function gapOf(value) {
    if (value === true || value === "1") return list.slice();
    if (Array.isArray(value)) return value;
    if (typeof value === "string" && value) return value.split(",");
    return [];
  }

  async function url(path, query) {
    const q = { channel: names, client: options.client, ...query };
    const token = await tokenOf(options.token);
    if (token) q.token = token;
    return server + path + "?" + Object.entries(q)
      .filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => k + "=" + enc(v)).join("&");
  }

  // One long-poll (or a quick look, wait = 0). Resolves to "ok", "denied" or "gone".
  async function poll(wait) {
    const r = await fetch(await url("/subscribe", { format: "json", since: cursor ?? options.since, timeout: wait }),
      { cache: "no-store", signal: abort.signal });
    if (r.status === 200) {
      const body = await r.json();
      take(body.messages, body.last_id, gapOf(body.gap));
    } else if (r.status === 204) {
      take([], r.headers.get("X-Message-Id"), gapOf(r.headers.get("X-Gap")));
    } else if (r.status === 401 || r.status === 403) {
      state("denied", { status: r.status });
      return "denied";
    } else if (r.status === 410) {
      state("gone", {});
      return "gone";
    } else {
      throw new Error("HTTP " + r.status);
    }
    return "ok";
  }

  async function pollLoop() {
    let backoff = 0;
    while (!closed) {
      if (!backoff) state("live", { transport });
      try {
        const got = await poll(backoff ? 0 : timeout);
        if (got === "ok") { backoff = 0; continue; }
      } catch (err) {
        if (closed) return;
      }
      backoff = Math.min(Math.max(backoff * 2, RETRY_MIN), RETRY_MAX);
      const wait = jitter(backoff);
      state("reconnecting", { retryIn: wait });
      await sleep(wait);
    }
  }

  function streamLoop() {
    let backoff = 0;
    const single = list.length === 1;
    const open = async () => {
      if (closed) return;
      const es = new EventSource(await url("/events", { since: cursor ?? options.since }));
      if (closed) { es.close(); return; }
      stop = () => es.close();
      const one = (e, extra) => (single
        ? { id: e.lastEventId, channel: list[0], data: e.data, type: "", ...extra }
        : JSON.parse(e.data));
      es.onopen = () => { backoff = 0; state("live", { transport }); };
      es.onmessage = (e) => take([one(e)], e.lastEventId, []);
      es.addEventListener("binary", (e) => take([one(e, { encoding: "base64" })], e.lastEventId, []));
      es.addEventListener("gap", (e) => {
        let gap = list;
        if (!single) { try { gap = JSON.parse(e.data).channels; } catch (_) { /* keep all */ } }
        take([], null, gap.slice());
      });
      // The token ran out: open again, with a fresh one if `token` is a function.
      es.addEventListener("expired", () => { es.close(); open(); });
      es.onerror = () => {
        es.close();
        if (closed) return;
        backoff = Math.min(Math.max(backoff * 2, RETRY_MIN), RETRY_MAX);
        const wait = jitter(backoff);
        state("reconnecting", { retryIn: wait });
        setTimeout(open, wait);
      };
    };
    open();
  }

  async function lead() {
    leading = true;
    if (transport === "sse") streamLoop(); else pollLoop();
    await new Promise((resolve) => { release = resolve; });
  }

  // Every tab first catches up by itself from its own cursor (relays that
  // come meanwhile wait, so each channel stays in order); then one tab talks
  // to the server and the others follow it.
  async function boot() {
    const held = [];
    let booting = true;
    if (bus) {
      bus.onmessage = (e) => {
        const msg = e.data || {};
        if (leading || closed) return;
        if (booting) { held.push(msg); return; }
        if (msg.kind === "batch") take(msg.messages, msg.cursor, msg.gap, true);
        else if (msg.kind === "state") onState(msg.state, { ...msg.detail, shared: true });
      };
    }
    state("connecting", {});
    for (let backoff = RETRY_MIN; !closed; backoff = Math.min(backoff * 2, RETRY_MAX)) {
      try {
        if (await poll(0) === "ok") break;
      } catch (_) {
        if (closed) return;
        state("reconnecting", { retryIn: backoff });
      }
      await sleep(jitter(backoff));
    }
    booting = false;
    for (const msg of held) if (msg.kind === "batch") take(msg.messages, msg.cursor, msg.gap, true);
    if (closed) return;
    if (bus) {
      onState("connecting", { shared: true });
      navigator.locks.request(key, { signal: abort.signal }, lead).catch(() => {});
    } else {
      lead();
    }
  }

  boot();
  return {
    close() {
      if (closed) return;
      closed = true;
      stop();
      abort.abort();
      release();
      bus?.close();
    },
    get cursor() { return cursor; },
  };
}

/**
 * Publishes `data` on `channel`: a string as text, a Blob, ArrayBuffer or
 * typed array as bytes, anything else as JSON. Resolves to comethub's answer
 * ({id, channel, subscribers}); rejects with the server's error otherwise.
 * options: server, token (a JWT or the publish token, or a function giving
 * one), type (the Content-Type).
 */
export async function publish(channel, data, options = {}) {
  const server = (options.server || "").replace(/\/$/, "");
  let body = data;
  let type = options.type;
  if (typeof data === "string") {
    type ??= "text/plain; charset=utf-8";
  } else if (data instanceof Blob || data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    type ??= "application/octet-stream";
  } else {
    body = JSON.stringify(data);
    type ??= "application/json";
  }
  const headers = { "Content-Type": type };
  const token = await tokenOf(options.token);
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(server + "/publish?channel=" + enc(channel), { method: "POST", headers, body });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(answer.error || "HTTP " + r.status);
    err.status = r.status;
    throw err;
  }
  return answer;
}

/**
 * Follows who is on `channel` (a channel the server keeps presence for):
 * calls `onChange({channel, members: [{id, connections, since, seen}],
 * anonymous})` now and whenever someone joins or leaves or a member's
 * receipt moves (`seen`: the newest message id that member has received),
 * or `onChange(null)` when the channel keeps no presence.
 * options: server, token (as for subscribe). Returns { close(), refresh() }.
 */
export function presence(channel, onChange, options = {}) {
  const server = (options.server || "").replace(/\/$/, "");
  let closed = false;
  let pending = null;
  let running = false;
  let again = false;
  async function refresh() {
    if (closed) return;
    if (running) { again = true; return; }
    running = true;
    try {
      const token = await tokenOf(options.token);
      const r = await fetch(server + "/channels/" + enc(channel) + "/presence"
        + (token ? "?token=" + enc(token) : ""), { cache: "no-store" });
      if (closed) return;
      if (r.ok) onChange(await r.json());
      else if (r.status === 404) onChange(null);
    } catch (_) {
      /* the subscription below retries, and brings a refresh when it is back */
    } finally {
      running = false;
      if (again) { again = false; refresh(); }
    }
  }
  // Changes come on $presence:C; each one asks for the whole picture, at
  // most a few times a second.
  const schedule = () => {
    if (pending || closed) return;
    pending = setTimeout(() => { pending = null; refresh(); }, 100);
  };
  const sub = subscribe(["$presence:" + channel], schedule, {
    server: options.server,
    token: options.token,
    resume: false,
    onState: (s) => { if (s === "live") schedule(); },
  });
  refresh();
  return {
    close() { closed = true; clearTimeout(pending); sub.close(); },
    refresh,
  };
}

/** A message's data as bytes (base64 decoded when it came so). */
export function bytes(message) {
  if (message.encoding === "base64") return Uint8Array.from(atob(message.data), (c) => c.charCodeAt(0));
  return new TextEncoder().encode(message.data);
}
