// comethub.js, the client library, in a real browser: several channels in one
// request, shared by the tabs of an origin, resumed across a reload.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, startServer, publish, STEP } from "./helpers.mjs";

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

const CHANNELS = ["a", "b", "c"];

/** Opens a tab on the server's origin that subscribes to CHANNELS with the library. */
async function openTab(context, server, transport = "poll") {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP);
  await page.goto(`${server.url}/comethub.js`);
  await subscribeIn(page, transport);
  return page;
}

async function subscribeIn(page, transport) {
  await page.evaluate(async ([channels, transport]) => {
    window.got = [];
    window.gaps = [];
    window.states = [];
    const { subscribe } = await import("/comethub.js");
    window.sub = subscribe(channels, (m) => window.got.push(m.channel + ":" + m.data), {
      since: "oldest",
      transport,
      onGap: (g) => window.gaps.push(g),
      onState: (s, d) => window.states.push(s + (d.shared ? " shared" : "")),
    });
  }, [CHANNELS, transport]);
}

const got = (page) => page.evaluate(() => window.got);

async function until(what, check) {
  const deadline = Date.now() + STEP;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error("timed out: " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function stats(server) {
  return (await fetch(`${server.url}/stats`)).json();
}

/** Publishes n messages round-robin on CHANNELS, numbered from `from`. */
async function burst(server, from, n) {
  const sent = [];
  for (let i = from; i < from + n; i++) {
    const channel = CHANNELS[i % CHANNELS.length];
    await publish(server, channel, `m${i}`);
    sent.push(`${channel}:m${i}`);
  }
  return sent;
}

/** Each channel's messages in the order they came. */
function perChannel(list) {
  const out = {};
  for (const item of list) (out[item.split(":")[0]] ||= []).push(item);
  return out;
}

test("eight tabs on three channels share at most two waiting requests, and a reload resumes exactly", async () => {
  const server = await startServer();
  const context = await browser.newContext();
  try {
    const early = await burst(server, 0, 6);
    const tabs = [];
    for (let i = 0; i < 8; i++) tabs.push(await openTab(context, server));
    // Every tab caught up from the history, then one of them leads.
    for (const tab of tabs) await until("history in every tab", async () => (await got(tab)).length === early.length);
    await until("a leader waiting", async () => (await stats(server)).waiting >= 1);
    const later = await burst(server, 6, 30);
    const all = [...early, ...later];
    for (const tab of tabs) {
      await until("every message in every tab", async () => (await got(tab)).length >= all.length);
      assert.deepEqual(perChannel(await got(tab)), perChannel(all), "each message once, in order per channel");
    }
    const waiting = (await stats(server)).waiting;
    assert.ok(waiting >= 1 && waiting <= 2, `eight tabs share one long-poll, saw ${waiting} waiting`);
    assert.ok((await tabs[3].evaluate(() => window.states)).some((s) => s.endsWith("shared")));

    // A reload (of the tab holding the connection, and of another one) goes
    // on from the cursor kept in sessionStorage: what was published while
    // it was away, once, and nothing it already had.
    for (const tab of [tabs[0], tabs[5]]) {
      await tab.reload();
      const away = await burst(server, 100, 6);
      await subscribeIn(tab, "poll");
      await until("the messages published during the reload", async () => (await got(tab)).length >= away.length);
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(perChannel(await got(tab)), perChannel(away));
      assert.deepEqual(await tab.evaluate(() => window.gaps), []);
      await burst(server, 200, 3).then(async (more) => {
        await until("live after the reload", async () => (await got(tab)).length === away.length + more.length);
      });
    }
    await until("still one long-poll", async () => {
      const w = (await stats(server)).waiting;
      return w >= 1 && w <= 2;
    });
  } finally {
    await context.close();
    await server.stop();
  }
});

test("over SSE, the library reads every channel and names those a restart lost", async () => {
  let server = await startServer();
  const context = await browser.newContext();
  try {
    const page = await openTab(context, server, "sse");
    await until("stream open", async () => (await stats(server)).streams === 1);
    const sent = await burst(server, 0, 9);
    await until("all nine", async () => (await got(page)).length === sent.length);
    assert.deepEqual(perChannel(await got(page)), perChannel(sent));
    // A restart on the same port: the old cursor is of another run, so the
    // library is told every channel may have missed messages.
    const port = server.port;
    await server.stop();
    server = await startServer(`127.0.0.1:${port}`);
    await until("a gap on every channel", async () => {
      const gaps = await page.evaluate(() => window.gaps);
      return gaps.some((g) => [...g].sort().join() === CHANNELS.join());
    });
    await until("stream open again", async () => (await stats(server)).streams === 1);
    const after = await burst(server, 50, 3);
    await until("live again", async () => (await got(page)).length === sent.length + after.length);
  } finally {
    await context.close();
    await server.stop();
  }
});

test("over HTTPS, ten rooms in one page share one HTTP/2 connection and all stay live", async () => {
  const cert = process.env.COMETHUB_TLS_CERT, key = process.env.COMETHUB_TLS_KEY;
  assert.ok(cert && key, "tests/browser.rs passes a certificate");
  const server = await startServer("127.0.0.1:0", ["--tls-cert", cert, "--tls-key", key]);
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(STEP);
    await page.goto(`${server.url}/comethub.js`);
    // Ten separate long-polls: over HTTP/1.1 a browser would keep four of
    // them waiting for one of its six connections per host.
    await page.evaluate(async () => {
      window.got = [];
      const { subscribe } = await import("/comethub.js");
      for (let i = 0; i < 10; i++) {
        subscribe([`room${i}`], (m) => window.got.push(m.channel + ":" + m.data), { share: false });
      }
    });
    const stats = async () => (await page.evaluate(async () => (await fetch("/stats")).json()));
    await until("ten long-polls waiting", async () => (await stats()).waiting === 10);
    for (let i = 0; i < 10; i++) {
      const r = await page.evaluate(async (i) => (await fetch(`/publish?channel=room${i}&message=hi${i}`)).status, i);
      assert.equal(r, 200);
    }
    await until("every room got its message", async () => (await got(page)).length === 10);
    assert.deepEqual([...(await got(page))].sort(), [...Array(10).keys()].map((i) => `room${i}:hi${i}`).sort());
    const protocols = await page.evaluate(() =>
      performance.getEntriesByType("resource").map((e) => e.nextHopProtocol));
    assert.ok(protocols.length > 0 && protocols.every((p) => p === "h2"), `all over h2: ${protocols}`);
    assert.equal((await stats()).connections, 1, "one connection for the whole page");
    // The chat page, served over HTTPS, goes live over HTTP/2 as well.
    const chat = await context.newPage();
    chat.setDefaultTimeout(STEP);
    await chat.goto(`${server.url}/?room=secure`);
    await chat.waitForSelector("#state.live");
    await chat.fill("#text", "over h2");
    await chat.press("#text", "Enter");
    await chat.waitForFunction(() =>
      [...document.querySelectorAll("#log li .text")].some((e) => e.textContent === "over h2"));
    const chatProtocols = await chat.evaluate(() =>
      performance.getEntriesByType("resource").map((e) => e.nextHopProtocol));
    assert.ok(chatProtocols.every((p) => p === "h2"), `chat over h2: ${chatProtocols}`);
  } finally {
    await context.close();
    await server.stop();
  }
});
