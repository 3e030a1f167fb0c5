"use strict";
// The chat page: long-polls /subscribe with format=json and since (or streams
// /events), never shows a message twice, and says so when messages were missed.
// Tabs of one room share one connection: the tab holding the room's Web Lock
// talks to the server and relays to the others over a BroadcastChannel, so many
// tabs never exhaust the browser's six connections per host.
(() => {
  const params = new URLSearchParams(location.search);
  const server = (params.get("server") || "").replace(/\/$/, "");
  const validRoom = (r) => /^[A-Za-z0-9_.:@-]{1,128}$/.test(r);
  const room = validRoom(params.get("room") || "") ? params.get("room") : "lobby";
  const $ = (id) => document.getElementById(id);
  const log = $("log"), scroller = $("scroller"), stateEl = $("state");

  const me = localStorage.getItem("comethub.name") || "guest-" + Math.floor(1000 + Math.random() * 9000);
  $("name").value = me;
  $("room").value = room;
  $("transport").value = params.get("transport") === "sse" ? "sse" : (localStorage.getItem("comethub.transport") || "poll");
  if (params.get("room") !== room) {
    params.set("room", room);
    history.replaceState(null, "", "?" + params);
  }
  document.title = room + " · comethub";

  const seen = new Set();
  let lastId = null;          // the id to resume from
  let generation = 0;         // bumps when the transport changes, stopping the old loop
  let isLeader = false;

  function setState(kind, text) {
    stateEl.className = kind;
    stateEl.textContent = text;
  }

  function atBottom() { return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40; }

  function append(li) {
    const stick = atBottom();
    log.appendChild(li);
    $("empty").hidden = true;
    while (log.children.length > 500) log.removeChild(log.firstChild);
    if (stick) scroller.scrollTop = scroller.scrollHeight;
  }

  function notice(text) {
    const li = document.createElement("li");
    li.className = "notice";
    li.textContent = text;
    append(li);
  }

  // A message from the server: {id, data, type}. JSON from this page carries
  // {name, text}; anything else (the seed's curl) is shown as plain text.
  function show(m) {
    if (seen.has(m.id)) return;
    seen.add(m.id);
    lastId = m.id;
    let who = "anonymous", text = m.data, when = null;
    if (m.encoding === "base64") text = "[binary message]";
    const json = !m.type || m.type.startsWith("application/json");
    if (json && m.encoding !== "base64") {
      try {
        const doc = JSON.parse(m.data);
        if (doc && typeof doc.text === "string") {
          text = doc.text;
          if (typeof doc.name === "string" && doc.name.trim()) who = doc.name.slice(0, 40);
          if (typeof doc.at === "number") when = new Date(doc.at);
        }
      } catch (_) { /* plain text that is not JSON */ }
    }
    const li = document.createElement("li");
    if (who === $("name").value) li.classList.add("mine");
    const whoEl = document.createElement("span");
    whoEl.className = "who";
    whoEl.textContent = who;
    const textEl = document.createElement("span");
    textEl.className = "text";
    textEl.textContent = text;
    li.append(whoEl, textEl);
    if (when && !isNaN(when)) {
      const t = document.createElement("span");
      t.className = "when";
      t.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      li.prepend(t);
    }
    li.dataset.id = m.id;
    append(li);
  }

  // ---- sharing one connection between tabs ----
  const bus = "BroadcastChannel" in window ? new BroadcastChannel("comethub:" + server + ":" + room) : null;
  function relay(kind, payload) { if (bus && isLeader) bus.postMessage({ kind, ...payload }); }
  if (bus) {
    bus.onmessage = (e) => {
      const msg = e.data || {};
      if (isLeader) return;
      if (msg.kind === "messages") { msg.messages.forEach(show); if (msg.lastId) lastId = msg.lastId; }
      else if (msg.kind === "notice") notice(msg.text);
      else if (msg.kind === "state") setState(msg.state, msg.text + " (shared)");
    };
  }
  function deliver(messages, newLast, gap) {
    if (gap) {
      const text = "Some messages were missed (the server restarted or they are too old).";
      notice(text);
      relay("notice", { text });
    }
    messages.forEach(show);
    if (newLast) lastId = newLast;
    relay("messages", { messages, lastId });
  }
  function state(kind, text) { setState(kind, text); relay("state", { state: kind, text }); }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  // A token in the page's own address (a shared link to a private room) goes
  // with every request, as ?token= (the one way an EventSource can send it).
  const token = params.get("token");
  const url = (path, q) => server + path + "?" + new URLSearchParams(token ? { ...q, token } : q);

  // ---- long-poll ----
  async function pollLoop(gen) {
    let backoff = 500;
    while (gen === generation) {
      // The last poll worked (or boot just reached the server): this one is waiting live.
      if (backoff === 500) state("live", "live · long-poll");
      try {
        // After a failure, a quick poll (timeout=0) shows at once that the server is back.
        const timeout = backoff === 500 ? 25 : 0;
        const r = await fetch(url("/subscribe", { channel: room, format: "json", since: lastId || "oldest", timeout }), { cache: "no-store" });
        if (gen !== generation) return;
        if (r.status === 200) {
          const body = await r.json();
          deliver(body.messages, body.last_id, body.gap);
        } else if (r.status === 204) {
          deliver([], r.headers.get("X-Message-Id"), r.headers.get("X-Gap") === "1");
        } else if (r.status === 410) {
          notice("This room was cleared.");
          lastId = null;
        } else {
          throw new Error("HTTP " + r.status);
        }
        backoff = 500;
      } catch (err) {
        if (gen !== generation) return;
        const wait = Math.round(backoff * (0.75 + Math.random() / 2));
        state("reconnecting", "reconnecting in " + Math.ceil(wait / 1000) + " s");
        await sleep(wait);
        backoff = Math.min(backoff * 2, 15000);
      }
    }
  }

  // ---- Server-Sent Events ----
  function streamLoop(gen) {
    let backoff = 500;
    const open = () => {
      if (gen !== generation) return;
      const es = new EventSource(url("/events", { channel: room, since: lastId || "oldest" }));
      es.onopen = () => { backoff = 500; state("live", "live · SSE"); };
      es.onmessage = (e) => deliver([{ id: e.lastEventId, data: e.data, type: "" }], e.lastEventId, false);
      es.addEventListener("gap", () => deliver([], null, true));
      es.onerror = () => {
        es.close();
        if (gen !== generation) return;
        const wait = Math.round(backoff * (0.75 + Math.random() / 2));
        state("reconnecting", "reconnecting in " + Math.ceil(wait / 1000) + " s");
        backoff = Math.min(backoff * 2, 15000);
        setTimeout(open, wait);
      };
      stopStream = () => es.close();
    };
    open();
  }
  let stopStream = () => {};

  function start() {
    generation += 1;
    stopStream();
    if ($("transport").value === "sse") streamLoop(generation); else pollLoop(generation);
  }

  async function lead() {
    isLeader = true;
    start();
    await new Promise(() => {}); // hold the lock until this tab closes
  }

  // Every tab loads the room's history itself, then one tab talks to the server.
  async function boot() {
    setState("connecting", "connecting…");
    for (let backoff = 500; ; backoff = Math.min(backoff * 2, 15000)) {
      try {
        const r = await fetch(url("/subscribe", { channel: room, format: "json", since: "oldest", timeout: 0 }), { cache: "no-store" });
        if (r.status === 200) { const body = await r.json(); body.messages.forEach(show); lastId = body.last_id; }
        else if (r.status === 204) lastId = r.headers.get("X-Message-Id");
        else if (r.status === 401 || r.status === 403) {
          setState("denied", r.status === 401
            ? "this room needs a token: open it from a link that has one"
            : "this link's token does not open this room");
          await sleep(backoff);
          continue;
        } else throw new Error("HTTP " + r.status);
        break;
      } catch (_) {
        setState("reconnecting", "server unreachable, retrying");
        await sleep(backoff);
      }
    }
    if (navigator.locks && bus) {
      setState("connecting", "shared with another tab");
      navigator.locks.request("comethub:" + server + ":" + room, lead);
    } else {
      lead();
    }
  }

  // ---- sending ----
  $("send").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("text");
    const text = input.value.trim();
    if (!text) return;
    const name = $("name").value.trim() || me;
    $("sendButton").disabled = true;
    try {
      const r = await fetch(url("/publish", { channel: room }), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name, text, at: Date.now() }),
      });
      if (!r.ok) {
        const why = await r.json().catch(() => ({}));
        throw new Error(why.error || "HTTP " + r.status);
      }
      input.value = "";
    } catch (err) {
      notice("Not sent: " + err.message);
    } finally {
      $("sendButton").disabled = false;
      input.focus();
    }
  });

  $("name").addEventListener("change", () => localStorage.setItem("comethub.name", $("name").value.trim()));
  $("room").addEventListener("change", () => {
    const r = $("room").value.trim();
    if (!validRoom(r)) { $("room").value = room; return; }
    params.set("room", r);
    location.search = "?" + params;
  });
  $("transport").addEventListener("change", () => {
    localStorage.setItem("comethub.transport", $("transport").value);
    if (isLeader) start();
  });

  $("text").focus();
  boot();
})();
