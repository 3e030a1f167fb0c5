// What every browser test needs: chromium, a real comethub on a free port, a publish.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const BIN = process.env.COMETHUB_BIN || join(repo, "target", "release", "comethub");
export const STEP = 15_000;

/** Debian's chromium, headless. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** Starts comethub; resolves to {url, port, stop()} once it logs its address
 * (an https:// url for "localhost" when `extra` turns TLS on). */
export function startServer(listen = "127.0.0.1:0", extra = []) {
  const scheme = extra.includes("--tls-cert") ? "https" : "http";
  const host = scheme === "https" ? "localhost" : "127.0.0.1";
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ["--listen", listen, ...extra], { env: { ...process.env, RUST_LOG: "info" } });
    let buf = "";
    const timer = setTimeout(() => reject(new Error("server did not start: " + buf)), STEP);
    child.stderr.on("data", (d) => {
      buf += d;
      const m = buf.match(/addr=(\S+)/);
      if (m && timer) {
        clearTimeout(timer);
        const port = Number(m[1].split(":").pop());
        resolve({
          url: `${scheme}://${host}:${port}`,
          port,
          stop: () => new Promise((done) => {
            if (child.exitCode !== null) return done();
            child.once("exit", done);
            child.kill("SIGTERM");
          }),
        });
      }
    });
    child.once("error", reject);
  });
}

/** Publishes `text` on `room`; resolves to its id. */
export async function publish(server, room, text, type = "text/plain") {
  const r = await fetch(`${server.url}/publish?channel=${room}`, {
    method: "POST", headers: { "content-type": type }, body: text,
  });
  assert.equal(r.status, 200);
  return (await r.json()).id;
}
