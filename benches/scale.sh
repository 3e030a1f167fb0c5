#!/usr/bin/env bash
# 100,000 waiting subscribers on one machine: INSTANCES comethub instances on
# one Redis, each holding SUBSCRIBERS long-polls from its own load-generator
# process (each from its own loopback source address, 127.0.0.2, ...), since
# one process may hold at most 20,000 open files here. One publish reaches
# them all through Redis. Reports how many got it, the time until the last
# did, the CPU every instance and Redis spent delivering it, and the memory
# each waiting subscriber holds.
#   benches/scale.sh     (INSTANCES=6 SUBSCRIBERS=16667: 100,002 in all)
set -euo pipefail
cd "$(dirname "$0")/.."
INSTANCES=${INSTANCES:-6}
PER=${SUBSCRIBERS:-16667}
REDIS_PORT=18090
source benches/common.sh
tune
build
command -v redis-server >/dev/null || { echo "needs redis-server (apt install redis-server)" >&2; exit 1; }
BIN=target/release/comethub
WORK=$(mktemp -d /tmp/comethub-scale.XXXX)
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
RPID=$!; PIDS+=($RPID)
until redis-cli -p $REDIS_PORT ping >/dev/null 2>&1; do sleep 0.1; done

SERVERS=()
for i in $(seq 1 "$INSTANCES"); do
  port=$((REDIS_PORT + i))
  "$BIN" --listen 127.0.0.1:$port --redis redis://127.0.0.1:$REDIS_PORT \
    --timeout 600 --max-connections 19900 2>/dev/null &
  SERVERS+=($!); PIDS+=($!)
  until curl -sf -o /dev/null http://127.0.0.1:$port/health; do sleep 0.1; done
done

# Sums over processes, from /proc: RssAnon in KiB, user+system CPU in ms.
tick=$(getconf CLK_TCK)
rss() { local t=0; for p in "$@"; do t=$((t + $(awk '/^RssAnon/ {print $2}' /proc/$p/status))); done; echo $t; }
cpu() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $((t * 1000 / tick)); }

rss0=$(rss "${SERVERS[@]}")
for i in $(seq 1 "$INSTANCES"); do
  "$LOADGEN" watch --addr 127.0.0.1:$((REDIS_PORT + i)) --bind 127.0.0.$((i + 1)) \
    --subscribers "$PER" --channel wide > "$WORK/watch$i" 2>&1 &
  PIDS+=($!)
done
for i in $(seq 1 "$INSTANCES"); do
  until grep -q READY "$WORK/watch$i"; do
    grep -q panicked "$WORK/watch$i" && { cat "$WORK/watch$i"; exit 1; }
    sleep 0.2
  done
done
waiting=0
for i in $(seq 1 "$INSTANCES"); do
  n=$(curl -s http://127.0.0.1:$((REDIS_PORT + i))/stats | grep -o '"waiting":[0-9]*' | cut -d: -f2)
  waiting=$((waiting + n))
done
rss1=$(rss "${SERVERS[@]}")
cpu0=$(cpu "${SERVERS[@]}" $RPID)

curl -s -o /dev/null "http://127.0.0.1:$((REDIS_PORT + 1))/publish?channel=wide&message=$(date +%s%6N)"
for i in $(seq 1 "$INSTANCES"); do
  until grep -q RESULT "$WORK/watch$i"; do sleep 0.2; done
done
cpu1=$(cpu "${SERVERS[@]}" $RPID)

received=0; last=0
for i in $(seq 1 "$INSTANCES"); do
  r=$(grep RESULT "$WORK/watch$i")
  echo "instance $i: $r"
  received=$((received + $(val "$r" received)))
  last=$(awk -v a="$last" -v b="$(val "$r" last_ms)" 'BEGIN { print (b > a) ? b : a }')
done
total=$((INSTANCES * PER))
echo
echo "| measure | value |"
echo "|---|---:|"
echo "| subscribers connected | $total |"
echo "| waiting on the instances (/stats) | $waiting |"
echo "| received the one publish | $received |"
echo "| time from the publish until the last had it, ms | $last |"
echo "| CPU of the instances and Redis for that delivery, ms | $((cpu1 - cpu0)) |"
echo "| CPU per delivery, us | $(awk -v c=$((cpu1 - cpu0)) -v n="$received" 'BEGIN { printf "%.2f", c * 1000 / n }') |"
echo "| instances' RSS (anonymous) per waiting subscriber, bytes | $(( (rss1 - rss0) * 1024 / total )) |"
