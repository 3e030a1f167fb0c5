#!/usr/bin/env bash
# What several channels per request cost: fan-out to 10,000 subscribers each
# waiting on one channel, then each waiting on four channels in one request
# (publishes spread over the four), server on core 0, load on core 1.
# Every round delivers one message to every subscriber in both, so CPU per
# round divided by the subscribers is CPU per delivery; "park" is the CPU of
# taking the subscribers' re-polls before the round. Target: within 1.2x.
#   benches/multiplex.sh     (SUBSCRIBERS=10000 ROUNDS=5)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-18075}
source benches/common.sh
tune
build
run_one() {
  local name=$1 channels=$2
  PIN_SERVER=0 start_server $PORT --timeout 120
  local pid=$SPID
  local result
  result=$(timeout 300 taskset -c 1 "$LOADGEN" fanout --addr 127.0.0.1:$PORT --pid $pid \
    --subscribers "$N" --rounds "$ROUNDS" --channel "$channels" | grep RESULT)
  kill $pid; wait $pid 2>/dev/null || true
  echo "$name $result"
}
run_one one-channel fan
run_one four-channels fan0,fan1,fan2,fan3
