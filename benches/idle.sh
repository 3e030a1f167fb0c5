#!/usr/bin/env bash
# What an idle subscriber costs, per HTTP/1.1 transport: N long-polls and N
# event streams, in the clear and over TLS (a self-signed certificate, ALPN
# http/1.1), each on its own connection, held open; the server's anonymous
# resident memory growth divided by N.
#   benches/idle.sh                 (N=4000 BIN=target/release/comethub)
#   BIN=/tmp/old/comethub benches/idle.sh   (another build, for before/after)
#   TRANSPORTS="longpoll sse" benches/idle.sh   (some of longpoll sse longpoll-tls sse-tls)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-4000}
PORT=${PORT:-18060}
BIN=${BIN:-target/release/comethub}
[ -x "$BIN" ] || cargo build --release -q
rss() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }

work=$(mktemp -d /tmp/comethub-idle.XXXXXX)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

for transport in ${TRANSPORTS:-longpoll sse longpoll-tls sse-tls}; do
  tls=()
  case $transport in *-tls) tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem") ;; esac
  "$BIN" --listen "127.0.0.1:$PORT" --timeout 600 --ping 600 "${tls[@]}" 2>/dev/null &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 50); do
    curl -sk -o /dev/null "http://127.0.0.1:$PORT/live" && break
    curl -sk -o /dev/null "https://127.0.0.1:$PORT/live" && break
    sleep 0.1
  done
  before=$(rss $pid)
  # Opens N connections, sends one request on each, waits until the server
  # counts them all, prints the growth, then hangs up.
  python3 - "$PORT" "$N" "$transport" "$pid" "$before" <<'PY'
import asyncio, json, ssl, sys, urllib.request
port, n, transport, pid, before = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
longpoll = transport.startswith("longpoll")
path = "/subscribe?channel=idle" if longpoll else "/events?channel=idle"
field = "waiting" if longpoll else "streams"
tls = None
if transport.endswith("-tls"):
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    tls.set_alpn_protocols(["http/1.1"])
scheme = "https" if tls else "http"
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
def stat():
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/stats", context=tls) as r:
        return json.load(r)[field]
async def main():
    held = []
    for i in range(n):
        _, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
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
    print(f"{transport:12} {n} idle subscribers: +{grown} KiB, {grown * 1024 / n:.0f} B each")
    for w in held:
        w.close()
asyncio.run(main())
PY
  kill $pid; wait $pid 2>/dev/null || true
done
rm -rf "$work"
