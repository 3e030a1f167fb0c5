#!/usr/bin/env bash
# The memory bound against a flood: 64,000-byte publishes over 300 channels
# (300 x 128 x 64 KB would be 2.4 GiB without a bound) for 20 s, then JSON
# reads of every channel, with --max-memory 256M. Reports the resident size
# against the bound, and what /stats counts.
#   benches/memory.sh    (MAX_MEMORY=256M COMETHUB_BIN=target/release/comethub)
# The flood is a fixed time, so the load generator's share of the two cores
# decides how much is published; /stats says how much was.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18050}
MAX=${MAX_MEMORY-256M}   # MAX_MEMORY= (empty) runs without the flag, as an older build must
source benches/common.sh
tune
build
BIN=${COMETHUB_BIN:-target/release/comethub} start_server $PORT ${MAX:+--max-memory "$MAX"}
pid=$SPID
trap 'kill $pid 2>/dev/null || true' EXIT
rss() { awk '/VmRSS/ {print $2}' /proc/$pid/status; }
start=$(rss)
timeout 60 wrk -t1 -c8 -d20s -s benches/flood.lua "http://127.0.0.1:$PORT" | grep -E "requests in|Requests/sec"
for i in $(seq 0 299); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/subscribe?channel=flood$i&since=oldest&format=json&timeout=0"
done
end=$(rss)
stats=$(curl -s "http://127.0.0.1:$PORT/stats")
echo "max_memory=$MAX rss_start_kib=$start rss_end_kib=$end rss_growth_kib=$((end - start))"
echo "stats: $(echo "$stats" | tr ',' '\n' | grep -E 'published|history_bytes|memory_bytes|messages|evicted|max_memory' | tr '\n' ' ')"
