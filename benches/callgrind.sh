#!/usr/bin/env bash
# Exact server instructions per delivery, free of the machine's noise: the
# fan-out (1,000 subscribers) under callgrind for 2 rounds and for 4; the
# difference divided by 2,000 deliveries is what one more round costs per
# delivery: taking a re-poll, parking it, the publish's share, the wake and
# the answer.
#   benches/callgrind.sh CHANNELS [--token JWT] [-- comethub flags...]
#   benches/callgrind.sh fan
#   benches/callgrind.sh fan0,fan1,fan2,fan3
#   COMETHUB_BIN=old/comethub benches/callgrind.sh fan    (another build)
#   MODE=fanout-h2 benches/callgrind.sh fan    (HTTP/2 streams in the clear, 50 a connection)
#   MODE=cycle benches/callgrind.sh cyc [--json]    (100 re-polling subscribers, one
#     publisher: 2,000 messages minus 1,000, per delivery; batches follow callgrind's pace)
set -euo pipefail
cd "$(dirname "$0")/.."
CHANNELS=${1:-fan}; shift || true
LOAD=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do LOAD+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
source benches/common.sh
build
PORT=${PORT:-18061}
BIN=${COMETHUB_BIN:-target/release/comethub}
MODE=${MODE:-fanout}
[ "$MODE" = fanout-h2 ] && LOAD+=(--connections 20)
SERVER=(); DELIVERIES=2000
[ "$MODE" = cycle ] && SERVER=(--history 30000) && DELIVERIES=100000
command -v valgrind >/dev/null || { echo "needs valgrind (apt install valgrind)" >&2; exit 1; }
total() {
  local rounds=$1 out; shift
  out=$(mktemp /tmp/callgrind.XXXX)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" \
    --listen 127.0.0.1:$PORT --timeout 120 ${SERVER[@]+"${SERVER[@]}"} "$@" 2>/dev/null &
  local vpid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.2; done
  if [ "$MODE" = cycle ]; then
    "$LOADGEN" cycle --addr 127.0.0.1:$PORT --subscribers 100 --messages $((rounds * 500)) \
      --channel "$CHANNELS" ${LOAD[@]+"${LOAD[@]}"} >/dev/null
  else
    "$LOADGEN" "$MODE" --addr 127.0.0.1:$PORT --subscribers 1000 --rounds "$rounds" \
      --channel "$CHANNELS" ${LOAD[@]+"${LOAD[@]}"} >/dev/null
  fi
  kill -TERM $vpid; wait $vpid 2>/dev/null || true
  grep -E "^(summary|totals):" "$out" | awk '{print $2}' | head -1
  cp "$out" /tmp/callgrind-last.out; cp "$out" /tmp/callgrind-$rounds.out; rm -f "$out"
}
two=$(total 2 "$@")
four=$(total 4 "$@")
echo "RESULT callgrind mode=$MODE channels=$CHANNELS instructions_per_delivery=$(( (four - two) / DELIVERIES ))"
