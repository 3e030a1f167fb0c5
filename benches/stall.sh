#!/usr/bin/env bash
# Does a big resume stall everyone else? One channel holds 128 messages of
# 64,000 bytes (7.8 MiB); four clients loop on `since=oldest&format=json` for
# it while another connection publishes on another channel and times each
# publish. Reported: publish latency (p50, p99) without and with the loopers,
# and how much the loopers got. Server on core 0, load on core 1.
#   benches/stall.sh    (COMETHUB_BIN=target/release/comethub MESSAGES=3000)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18040}
M=${MESSAGES:-3000}
source benches/common.sh
tune
build
BIN=${COMETHUB_BIN:-target/release/comethub} PIN_SERVER=0 start_server $PORT
pid=$SPID
trap 'kill $pid 2>/dev/null || true' EXIT
body=$(mktemp)
head -c 64000 /dev/zero | tr '\0' 'x' > "$body"
for _ in $(seq 128); do
  curl -s -o /dev/null -H 'content-type: text/plain' --data-binary @"$body" \
    "http://127.0.0.1:$PORT/publish?channel=big"
done
rm -f "$body"
latency() {
  timeout 120 taskset -c 1 "$LOADGEN" latency --addr 127.0.0.1:$PORT --pid $pid --messages "$M" | grep RESULT
}
echo "quiet:   $(latency)"
timeout 60 taskset -c 1 wrk -t1 -c4 -d15s \
  "http://127.0.0.1:$PORT/subscribe?channel=big&since=oldest&format=json" > /tmp/stall-wrk.txt &
wrk_pid=$!
sleep 1
echo "loaded:  $(latency)"
wait $wrk_pid || true
echo "loopers: $(awk '/Requests\/sec|Transfer\/sec/ {printf "%s %s  ", $1, $2}' /tmp/stall-wrk.txt)"
