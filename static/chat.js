// The chat page: comethub.js does the talking (long-poll with format=json and
// a cursor, or SSE; one connection shared by every tab of a room; messages
// handed over once; gaps named); this file shows the room.
import { subscribe, publish, presence } from "./comethub.js";

const params = new URLSearchParams(location.search);
const server = (params.get("server") || "").replace(/\/$/, "");
const validRoom = (r) => /^[A-Za-z0-9_.:@-]{1,128}$/.test(r);
const room = validRoom(params.get("room") || "") ? params.get("room") : "lobby";
const $ = (id) => document.getElementById(id);
const log = $("log"), scroller = $("scroller"), stateEl = $("state");
// A token in the page's own address (a shared link to a private room) goes
// with every request, as ?token= (the one way an EventSource can send it).
const token = params.get("token") || undefined;

const me = localStorage.getItem("comethub.name") || "guest-" + Math.floor(1000 + Math.random() * 9000);
$("name").value = me;
$("room").value = room;
$("transport").value = params.get("transport") === "sse" ? "sse" : (localStorage.getItem("comethub.transport") || "poll");
if (params.get("room") !== room) {
  params.set("room", room);
  history.replaceState(null, "", "?" + params);
}
document.title = room + " · comethub";

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

// A message: {id, channel, data, type}. JSON from this page carries
// {name, text}; anything else (the seed's curl) is shown as plain text.
function show(m) {
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

function onState(kind, detail) {
  const shared = detail.shared ? " (shared)" : "";
  if (kind === "live") setState("live", "live · " + (detail.transport === "sse" ? "SSE" : "long-poll") + shared);
  else if (kind === "reconnecting") setState("reconnecting", "reconnecting in " + Math.ceil((detail.retryIn || 0) / 1000) + " s" + shared);
  else if (kind === "denied") setState("denied", detail.status === 401
    ? "this room needs a token: open it from a link that has one"
    : "this link's token does not open this room");
  else if (kind === "gone") notice("This room was cleared.");
  else if (kind === "connecting") setState("connecting", detail.shared ? "shared with another tab" : "connecting…");
}

// Who is here, and under each message who has seen it last: on a server
// that keeps presence for the room (--presence); hidden otherwise.
let people = null;
function showPresence(p) {
  people = p;
  const bar = $("people");
  bar.hidden = !p;
  if (!p) return;
  const names = p.members.map((m) => m.id);
  $("here").textContent = names.length ? names.join(", ") : "nobody named";
  $("anonymous").textContent = p.anonymous ? ` and ${p.anonymous} more` : "";
  showSeen();
}

function showSeen() {
  for (const el of log.querySelectorAll(".seen")) el.remove();
  if (!people) return;
  const mine = $("name").value.trim() || me;
  const by = new Map();
  for (const m of people.members) {
    if (!m.seen || m.id === mine) continue;
    if (!by.has(m.seen)) by.set(m.seen, []);
    by.get(m.seen).push(m.id);
  }
  for (const li of log.querySelectorAll("li[data-id]")) {
    const who = by.get(li.dataset.id);
    if (!who) continue;
    const el = document.createElement("span");
    el.className = "seen";
    el.textContent = "seen by " + who.join(", ");
    li.append(el);
  }
}

// Every load shows the room's history; switching transport goes on from
// where the last one was.
let sub = null;
let here = null;
function start(since) {
  sub?.close();
  here?.close();
  here = presence(room, showPresence, { server, token });
  sub = subscribe([room], (m) => { show(m); showSeen(); }, {
    server,
    token,
    client: $("name").value.trim() || me,
    transport: $("transport").value,
    since,
    resume: false,
    onState,
    onGap: () => notice("Some messages were missed (the server restarted or they are too old)."),
  });
}

$("send").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text) return;
  const name = $("name").value.trim() || me;
  $("sendButton").disabled = true;
  try {
    await publish(room, { name, text, at: Date.now() }, { server, token });
    input.value = "";
  } catch (err) {
    notice("Not sent: " + err.message);
  } finally {
    $("sendButton").disabled = false;
    input.focus();
  }
});

$("name").addEventListener("change", () => {
  localStorage.setItem("comethub.name", $("name").value.trim());
  // A new name is a new member: subscribe again under it.
  start(sub?.cursor || "oldest");
});
$("room").addEventListener("change", () => {
  const r = $("room").value.trim();
  if (!validRoom(r)) { $("room").value = room; return; }
  params.set("room", r);
  location.search = "?" + params;
});
$("transport").addEventListener("change", () => {
  localStorage.setItem("comethub.transport", $("transport").value);
  start(sub?.cursor || "oldest");
});

$("text").focus();
start("oldest");
