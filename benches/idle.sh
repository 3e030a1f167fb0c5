#!/usr/bin/env bash
# What an idle subscriber costs, per transport in the clear: N long-polls and
# N event streams (plain HTTP/1.1), each on its own connection, held open;
# the server's anonymous resident memory growth divided by N.
#   benches/idle.sh                 (N=4000 BIN=target/release/comethub)
#   BIN=/tmp/old/comethub benches/idle.sh   (another build, for before/after)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-4000}
PORT=${PORT:-18060}
BIN=${BIN:-target/release/comethub}
[ -x "$BIN" ] || cargo build --release -q
rss() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }

for transport in longpoll sse; do
  "$BIN" --listen "127.0.0.1:$PORT" --timeout 600 --ping 600 2>/dev/null &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/live" && break
    sleep 0.1
  done
  before=$(rss $pid)
  # Opens N connections, sends one request on each, waits until the server
  # counts them all, prints the growth, then hangs up.
  python3 - "$PORT" "$N" "$transport" "$pid" "$before" <<'PY'
import asyncio, json, sys, urllib.request
port, n, transport, pid, before = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
path = "/subscribe?channel=idle" if transport == "longpoll" else "/events?channel=idle"
field = "waiting" if transport == "longpoll" else "streams"
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
def stat():
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as r:
        return json.load(r)[field]
async def main():
    held = []
    for i in range(n):
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        held.append(w)
        if i % 500 == 499:
            await asyncio.sleep(0)
    for _ in range(600):
        if stat() >= n:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    grown = rss() - before
    print(f"{transport:8} {n} idle subscribers: +{grown} KiB, {grown * 1024 / n:.0f} B each")
    for w in held:
        w.close()
asyncio.run(main())
PY
  kill $pid; wait $pid 2>/dev/null || true
done
