#!/usr/bin/env bash
# Publishing on one Redis against a Redis Cluster of three masters (no
# replicas): one instance, wrk publishing over 1,000 channels for DURATION
# seconds with 64 connections. Reports publishes per second and the CPU each
# Redis process spent per publish; then a fan-out to SUBSCRIBERS on one
# channel (loadgen, 10 rounds): CPU per delivery of the instance and Redis. On this 2-core machine the instance and
# wrk take most of both cores, so throughput says little about Redis; the
# CPU per publish and how it splits over the shards is the figure to scale
# from (docs/scaling.md).
#   benches/shards.sh     (DURATION=10)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
N=${SUBSCRIBERS:-10000}
source benches/common.sh
tune
build
command -v wrk >/dev/null || { echo "needs wrk (apt install wrk)" >&2; exit 1; }
BIN=target/release/comethub
WORK=$(mktemp -d /tmp/comethub-shards.XXXX)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
tick=$(getconf CLK_TCK)
cpu_ms() { echo $(( $(awk '{print $14 + $15}' /proc/$1/stat) * 1000 / tick )); }

# redis PORT [args]: a redis-server in its own directory; sets RPID.
redis() {
  local port=$1; shift
  mkdir -p "$WORK/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/$port" "$@" >/dev/null &
  RPID=$!; PIDS+=($RPID)
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
}

# run NAME URL REDIS_PIDS...: one instance on URL, wrk against it.
run() {
  local name=$1 url=$2; shift 2
  "$BIN" --listen 127.0.0.1:18080 --redis "$url" 2>/dev/null &
  local spid=$!
  until curl -sf -o /dev/null http://127.0.0.1:18080/health; do sleep 0.1; done
  local before=() p
  for p in "$@"; do before+=("$(cpu_ms "$p")"); done
  local out rate total
  out=$(wrk -t1 -c64 -d"${DURATION}s" -s benches/shards.lua http://127.0.0.1:18080)
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  local i=0 shares=() sum=0
  for p in "$@"; do
    local used=$(( $(cpu_ms "$p") - before[i] ))
    shares+=("$(awk -v c="$used" -v n="$total" 'BEGIN { printf "%.1f", c * 1000 / n }')")
    sum=$((sum + used)); i=$((i + 1))
  done
  local pids=() fan
  for p in $spid "$@"; do pids+=(--pid "$p"); done
  fan=$("$LOADGEN" fanout --addr 127.0.0.1:18080 "${pids[@]}" --subscribers "$N" --rounds 10 \
    --channel fan | grep RESULT)
  kill $spid; wait $spid 2>/dev/null || true
  echo "| $name | $rate | $(awk -v c="$sum" -v n="$total" 'BEGIN { printf "%.1f", c * 1000 / n }') | ${shares[*]} | $(val "$fan" cpu_us_per_delivery) | $(val "$fan" all_ms_median) |"
}

redis 18081
single=$RPID
nodes=(); cpids=()
for port in 18082 18083 18084; do
  redis "$port" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-port $((port + 10))
  nodes+=("127.0.0.1:$port"); cpids+=($RPID)
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
until redis-cli -p 18082 cluster info | grep -q cluster_state:ok; do sleep 0.1; done

echo "| Redis | publishes/s | Redis CPU per publish, µs (all) | per process, µs | fan-out: CPU per delivery (instance and Redis), µs | fan-out: time until all have it, ms |"
echo "|---|---:|---:|---|---:|---:|"
run "one server" redis://127.0.0.1:18081 $single
run "cluster, 3 masters" redis+cluster://127.0.0.1:18082 "${cpids[@]}"
