// The chat page in a real browser: Debian's chromium driven by playwright-core.
// Each test starts the real comethub binary (COMETHUB_BIN) on a free loopback port.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { BIN, launch, startServer, publish, STEP } from "./helpers.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..", "..");

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

async function openChat(context, base, room, extra = "") {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP);
  await page.goto(`${base}/?room=${room}${extra}`);
  await page.waitForSelector("#state.live, #state.connecting");
  return page;
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

async function waitForText(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#log li .text")].some((e) => e.textContent === t),
    text, { timeout: STEP });
}

async function texts(page) {
  return page.$$eval("#log li:not(.notice) .text", (els) => els.map((e) => e.textContent));
}

for (const transport of ["poll", "sse"]) {
  test(`two people chat both ways over ${transport}`, async () => {
    const server = await startServer();
    const ann = await browser.newContext();
    const bob = await browser.newContext();
    try {
      const a = await openChat(ann, server.url, "pair", `&transport=${transport}`);
      const b = await openChat(bob, server.url, "pair", `&transport=${transport}`);
      await a.waitForSelector("#state.live");
      await b.waitForSelector("#state.live");
      await a.fill("#name", "ann");
      await a.dispatchEvent("#name", "change");
      await b.fill("#name", "bob");
      await send(a, "hi bob");
      await waitForText(b, "hi bob");
      await send(b, "hi ann");
      await waitForText(a, "hi ann");
      const who = await b.$$eval("#log li .who", (els) => els.map((e) => e.textContent));
      assert.ok(who.includes("ann"), `sender name shown: ${who}`);
      assert.deepEqual(await texts(a), ["hi bob", "hi ann"], "each message once, in order");
      assert.deepEqual(await texts(b), ["hi bob", "hi ann"]);
      if (transport === "poll") {
        mkdirSync(join(repo, "docs"), { recursive: true });
        await publish(server, "pair", "plain text from curl works too");
        await waitForText(a, "plain text from curl works too");
        await a.setViewportSize({ width: 720, height: 420 });
        await a.screenshot({ path: join(repo, "docs", "chat.png") });
      }
    } finally {
      await ann.close();
      await bob.close();
      await server.stop();
    }
  });
}

test("a page opened later shows the room's history", async () => {
  const server = await startServer();
  const ctx = await browser.newContext();
  try {
    for (const t of ["first", "second", "third"]) await publish(server, "past", t);
    const page = await openChat(ctx, server.url, "past");
    await waitForText(page, "third");
    assert.deepEqual(await texts(page), ["first", "second", "third"]);
    await page.waitForSelector("#state.live");
    await publish(server, "past", "fourth");
    await waitForText(page, "fourth");
    assert.deepEqual(await texts(page), ["first", "second", "third", "fourth"]);
  } finally {
    await ctx.close();
    await server.stop();
  }
});

for (const transport of ["poll", "sse"]) {
  test(`the page reconnects by itself after a server restart (${transport})`, async () => {
    let server = await startServer();
    const port = server.port;
    const ctx = await browser.newContext();
    try {
      const page = await openChat(ctx, server.url, "restart", `&transport=${transport}`);
      await page.waitForSelector("#state.live");
      await publish(server, "restart", "before");
      await waitForText(page, "before");
      await server.stop();
      await page.waitForSelector("#state.reconnecting");
      server = await startServer(`127.0.0.1:${port}`);
      await page.waitForSelector("#state.live", { timeout: 30_000 });
      // The page may be between two polls: publish until it is waiting again.
      await publish(server, "restart", "after");
      await waitForText(page, "after");
      const notices = await page.$$eval("#log li.notice", (els) => els.map((e) => e.textContent));
      assert.ok(notices.some((n) => /missed/.test(n)), `restart shown as a gap notice: ${notices}`);
      assert.deepEqual(await texts(page), ["before", "after"], "nothing repeated");
    } finally {
      await ctx.close();
      await server.stop();
    }
  });
}

test("HTML in a message is shown as text and runs nothing", async () => {
  const server = await startServer();
  const ctx = await browser.newContext();
  try {
    const page = await openChat(ctx, server.url, "xss");
    let dialogs = 0;
    page.on("dialog", (d) => { dialogs += 1; d.dismiss(); });
    await page.waitForSelector("#state.live");
    const evil = "<img src=x onerror=alert(1)>";
    await send(page, evil);
    await publish(server, "xss", evil);
    await publish(server, "xss", JSON.stringify({ name: "<b>mallory</b>", text: evil }), "application/json");
    await page.waitForFunction(() => document.querySelectorAll("#log li").length >= 3);
    assert.deepEqual(await texts(page), [evil, evil, evil]);
    assert.equal(await page.$$eval("#log img, #log b", (els) => els.length), 0, "no element made from a message");
    const who = await page.$$eval("#log li .who", (els) => els.map((e) => e.textContent));
    assert.ok(who.includes("<b>mallory</b>"));
    await page.waitForTimeout(300);
    assert.equal(dialogs, 0, "no script ran");
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("the page runs only its own script and style (strict CSP)", async () => {
  const server = await startServer();
  const ctx = await browser.newContext();
  try {
    const page = await ctx.newPage();
    page.setDefaultTimeout(STEP);
    await page.addInitScript(() => {
      window.__violations = [];
      document.addEventListener("securitypolicyviolation",
        (e) => window.__violations.push(e.violatedDirective));
    });
    const resp = await page.goto(`${server.url}/?room=csp`);
    const policy = resp.headers()["content-security-policy"];
    assert.match(policy, /default-src 'none'/);
    assert.match(policy, /script-src 'self'/);
    // The page works under its policy, and breaks none of it.
    await page.waitForSelector("#state.live");
    await send(page, "hello under a policy");
    await waitForText(page, "hello under a policy");
    assert.deepEqual(await page.evaluate(() => window.__violations), []);
    // Script that finds its way into the page does not run.
    const ran = await page.evaluate(() => {
      const s = document.createElement("script");
      s.textContent = "window.__ran = true";
      document.head.append(s);
      const img = document.createElement("img");
      img.setAttribute("onerror", "window.__ran = true");
      img.src = "data:,x";
      document.body.append(img);
      return window.__ran === true;
    });
    assert.equal(ran, false, "inline script ran");
    await page.waitForFunction(() => window.__violations.includes("script-src-elem"));
    assert.equal(await page.evaluate(() => window.__ran === true), false);
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("a private room shared as a link with its token works, and not without it", async () => {
  const key = "browser-test-secret-of-at-least-32-bytes";
  const server = await startServer("127.0.0.1:0", ["--jwt-key", key, "--subscribe-auth", "token"]);
  const token = execFileSync(BIN, ["token", "--key", key, "--subscribe", "private.*",
    "--publish", "private.*", "--ttl", "600"]).toString().trim();
  const ctx = await browser.newContext();
  try {
    const alice = await openChat(ctx, server.url, "private.a", `&token=${token}`);
    const bob = await openChat(ctx, server.url, "private.a", `&token=${token}`);
    // One tab of the two talks to the server for both (a Web Lock).
    await alice.waitForSelector("#state.live");
    await send(alice, "only for us");
    await waitForText(bob, "only for us");
    // The same room without the token never goes live.
    const eve = await ctx.newPage();
    eve.setDefaultTimeout(STEP);
    await eve.goto(`${server.url}/?room=private.a`);
    await eve.waitForSelector("#state.denied");
    assert.match(await eve.textContent("#state"), /needs a token/);
    assert.equal(await eve.$$eval("#log li .text", (els) => els.length), 0);
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("a published page opened on the server's origin runs nothing", async () => {
  const server = await startServer();
  const ctx = await browser.newContext({ acceptDownloads: false });
  try {
    const page = await ctx.newPage();
    page.setDefaultTimeout(STEP);
    let dialogs = 0;
    page.on("dialog", (d) => { dialogs += 1; d.dismiss(); });
    const script = "<script>fetch('/publish?channel=ran&message=1');alert(1)</script>";
    for (const type of ["text/html", "image/svg+xml", "application/xhtml+xml"]) {
      const room = "page" + type.replace(/\W/g, "");
      await publish(server, room, type === "text/html" ? script
        : `<svg xmlns="http://www.w3.org/2000/svg"><script>fetch('/publish?channel=ran&message=1')</script></svg>`, type);
      // Served as an attachment: the browser does not render it (goto reports
      // the aborted navigation or the download).
      await page.goto(`${server.url}/subscribe?channel=${room}&since=oldest`).catch(() => {});
    }
    // Back on a page of the origin: nothing published from the documents above.
    await page.goto(`${server.url}/channels/ran`);
    await page.waitForTimeout(300);
    const ran = await (await fetch(`${server.url}/channels/ran`)).json();
    assert.equal(ran.messages, 0, "no published script ran");
    assert.equal(dialogs, 0, "no dialog");
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("a page on another origin long-polls comethub (CORS)", async () => {
  const server = await startServer();
  // The page, its two files and the library, copied to another origin.
  const files = {};
  for (const path of ["/", "/chat.js", "/chat.css", "/comethub.js"]) {
    const r = await fetch(`${server.url}${path}`);
    files[path] = { type: r.headers.get("content-type"), body: await r.text() };
  }
  const other = createServer((req, res) => {
    const file = files[new URL(req.url, "http://x").pathname] || files["/"];
    res.writeHead(200, { "content-type": file.type });
    res.end(file.body);
  });
  await new Promise((r) => other.listen(0, "127.0.0.1", r));
  const otherUrl = `http://127.0.0.1:${other.address().port}`;
  const ctx = await browser.newContext();
  try {
    const page = await openChat(ctx, otherUrl, "cors", `&server=${encodeURIComponent(server.url)}`);
    await page.waitForSelector("#state.live");
    await publish(server, "cors", "from the server");
    await waitForText(page, "from the server");
    await send(page, "from the other origin");
    await waitForText(page, "from the other origin");
    const r = await fetch(`${server.url}/subscribe?channel=cors&since=oldest&format=json`);
    const body = await r.json();
    assert.equal(body.messages.length, 2, "the cross-origin POST (with preflight) was published");
  } finally {
    await ctx.close();
    other.close();
    await server.stop();
  }
});

test("seven tabs of one origin stay live at once", async () => {
  const server = await startServer();
  const ctx = await browser.newContext();
  try {
    const pages = [];
    for (let i = 0; i < 7; i++) pages.push(await openChat(ctx, server.url, "tabs"));
    await pages[0].waitForSelector("#state.live");
    await publish(server, "tabs", "to every tab");
    for (const p of pages) await waitForText(p, "to every tab");
    // Every tab can still send: no request is stuck behind the per-host limit.
    for (let i = 0; i < pages.length; i++) await send(pages[i], `from tab ${i}`);
    for (const p of pages) await waitForText(p, "from tab 6");
    for (const p of pages) {
      const got = await texts(p);
      assert.equal(got.length, 8, `each message once in every tab: ${got}`);
    }
    const stats = await (await fetch(`${server.url}/stats`)).json();
    assert.ok(stats.waiting <= 2, `tabs share one long-poll, saw ${stats.waiting} waiting`);
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("the page fits a phone-width screen", async () => {
  const server = await startServer();
  const ctx = await browser.newContext({ viewport: { width: 360, height: 640 }, isMobile: true });
  try {
    const page = await openChat(ctx, server.url, "phone");
    await page.waitForSelector("#state.live");
    await send(page, "small screen");
    await waitForText(page, "small screen");
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no horizontal scrolling (overflow ${overflow}px)`);
    const box = await page.locator("#sendButton").boundingBox();
    assert.ok(box && box.x + box.width <= 360, "send button on screen");
    assert.ok(new URL(page.url()).searchParams.get("room") === "phone", "room is in the URL");
  } finally {
    await ctx.close();
    await server.stop();
  }
});

test("the page shows who is here, who left, and who has seen a message", async () => {
  const server = await startServer("127.0.0.1:0", ["--presence", "*", "--presence-grace", "1"]);
  const named = async (name) => {
    const ctx = await browser.newContext();
    await ctx.addInitScript((n) => localStorage.setItem("comethub.name", n), name);
    return ctx;
  };
  const ann = await named("ann");
  const bob = await named("bob");
  const here = (page, text) => page.waitForFunction(
    (t) => document.querySelector("#here")?.textContent === t, text, { timeout: STEP });
  try {
    const a = await openChat(ann, server.url, "seen");
    await a.waitForSelector("#state.live");
    await here(a, "ann");
    const b = await openChat(bob, server.url, "seen");
    await b.waitForSelector("#state.live");
    await here(a, "ann, bob");
    await here(b, "ann, bob");
    await send(a, "did you read this?");
    await waitForText(b, "did you read this?");
    // Bob's next poll acknowledges it: Ann sees it under her message.
    await a.waitForFunction(
      () => [...document.querySelectorAll("#log li")].some((li) =>
        li.querySelector(".text")?.textContent === "did you read this?"
        && li.querySelector(".seen")?.textContent === "seen by bob"),
      null, { timeout: STEP });
    await b.close();
    // After the grace period Bob has left.
    await here(a, "ann");
  } finally {
    await ann.close();
    await bob.close();
    await server.stop();
  }
});
