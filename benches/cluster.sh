#!/usr/bin/env bash
# Cluster mode vs one instance in memory, same workloads, one run: every server
# process (comethub instances and redis-server) pinned to core 0, the load
# generator to core 1. Loopback only; every step is bounded.
#   benches/cluster.sh     (SUBSCRIBERS=10000 ROUNDS=5 CYCLE_SUBSCRIBERS=100 CYCLE_MESSAGES=20000 PUBLISHES=5000)
# Needs redis-server (Debian package); run as root for sysctl.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-5}
K=${CYCLE_SUBSCRIBERS:-100}
M=${CYCLE_MESSAGES:-20000}
P=${PUBLISHES:-5000}
MPORT=18010 APORT=18011 BPORT=18012 RPORT=18013
work=$(mktemp -d /tmp/comethub-cluster.XXXXXX)

for tool in redis-server taskset; do
  command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y redis-server util-linux" >&2; exit 1; }
done
source benches/common.sh
tune

build

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

taskset -c 0 redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
RPID=$!; pids+=($RPID)
flags=(--history 30000 --timeout 120 --max-message 1024)
taskset -c 0 target/release/comethub --listen 127.0.0.1:$MPORT "${flags[@]}" 2>"$work/memory.log" &
MPID=$!; pids+=($MPID)
sleep 0.3
taskset -c 0 target/release/comethub --listen 127.0.0.1:$APORT "${flags[@]}" \
  --redis redis://127.0.0.1:$RPORT 2>"$work/a.log" &
APID=$!; pids+=($APID)
taskset -c 0 target/release/comethub --listen 127.0.0.1:$BPORT "${flags[@]}" \
  --redis redis://127.0.0.1:$RPORT 2>"$work/b.log" &
BPID=$!; pids+=($BPID)
for port in $MPORT $APORT $BPORT; do
  for _ in $(seq 50); do
    curl -s "http://127.0.0.1:$port/stats" | grep -qv '"up":false' && break
    sleep 0.1
  done
done
echo "memory pid $MPID; cluster pids $APID $BPID, redis $RPID; results in $work/out.txt"

run() { timeout 300 taskset -c 1 "$LOADGEN" "$@" | tee -a "$work/out.txt" | grep RESULT; }
memory=(--addr 127.0.0.1:$MPORT --pid $MPID)
cluster=(--addr 127.0.0.1:$APORT --addr 127.0.0.1:$BPORT --pid $APID --pid $BPID --pid $RPID)

echo "== fan-out ($N subscribers, $ROUNDS rounds)"
m_fan=$(run fanout "${memory[@]}" --subscribers "$N" --rounds "$ROUNDS" --channel fan)
c_fan=$(run fanout "${cluster[@]}" --subscribers "$N" --rounds "$ROUNDS" --channel fan)
echo "== publish latency ($P publishes, no subscribers)"
m_lat=$(run latency "${memory[@]}" --messages "$P" --channel lat)
c_lat=$(run latency "${cluster[@]}" --messages "$P" --channel lat)
echo "== cycle ($K subscribers re-polling, $M messages, json)"
m_cyc=$(run cycle "${memory[@]}" --subscribers "$K" --messages "$M" --channel cyc --json)
c_cyc=$(run cycle "${cluster[@]}" --subscribers "$K" --messages "$M" --channel cyc --json)

echo
echo "| workload | 2 instances + Redis | 1 instance, memory | ratio |"
echo "|---|---:|---:|---:|"
fanout_rows "$c_fan" "$m_fan"
row "publish round trip p50, us" "$(val "$c_lat" p50_us)" "$(val "$m_lat" p50_us)"
row "publish round trip p99, us" "$(val "$c_lat" p99_us)" "$(val "$m_lat" p99_us)"
row "publish: server CPU per publish, us" "$(val "$c_lat" server_cpu_us_per_publish)" "$(val "$m_lat" server_cpu_us_per_publish)"
row "cycle json: deliveries/s" "$(val "$c_cyc" deliveries_per_s)" "$(val "$m_cyc" deliveries_per_s)"
row "cycle json: lost + duplicated" "$(lost "$c_cyc")" "$(lost "$m_cyc")"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), $(redis-server --version | cut -d' ' -f3)"
