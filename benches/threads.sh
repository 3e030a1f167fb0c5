#!/usr/bin/env bash
# Fan-out with 1 and with 2 reactors (--threads), same load, one run. On a 2-core
# machine the load generator shares the cores with the server, so this shows
# what a second reactor buys when nothing else is free, not ideal scaling.
#   benches/threads.sh     (SUBSCRIBERS=10000 ROUNDS=5)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-18030}
source benches/common.sh
tune
build
for threads in 1 2; do
  start_server $PORT --timeout 120 --threads $threads
  pid=$SPID
  result=$(timeout 300 "$LOADGEN" fanout --addr 127.0.0.1:$PORT --pid $pid --subscribers "$N" \
    --rounds "$ROUNDS" --channel fan | grep RESULT)
  kill $pid; wait $pid 2>/dev/null || true
  echo "threads=$threads $result"
done
