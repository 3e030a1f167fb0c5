#!/usr/bin/env bash
# comethub vs Nchan, same workloads, one run: both servers pinned to core 0, the
# load generator and wrk to core 1. Loopback only; every step is bounded.
#   benches/compare.sh            (SUBSCRIBERS=10000 ROUNDS=5 CYCLE_SUBSCRIBERS=100 CYCLE_MESSAGES=20000
#                                  STORM_PUBLISHERS=8 COMETHUB_BIN=target/release/comethub)
# COMETHUB_BIN runs another build of comethub (an older one, for a before/after
# table) against the same Nchan and load generator.
# Needs nginx, libnginx-mod-nchan and wrk (Debian packages); run as root for sysctl.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-5}
K=${CYCLE_SUBSCRIBERS:-100}
M=${CYCLE_MESSAGES:-20000}
P=${STORM_PUBLISHERS:-8}
CPORT=${COMETHUB_PORT:-18000}
NPORT=${NCHAN_PORT:-18001}
work=$(mktemp -d /tmp/comethub-bench.XXXXXX)

for tool in nginx wrk taskset; do
  command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y nginx libnginx-mod-nchan wrk" >&2; exit 1; }
done
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || { echo "missing libnginx-mod-nchan" >&2; exit 1; }

source benches/common.sh
tune

build

cleanup() {
  [ -n "${CPID:-}" ] && kill "$CPID" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

BIN=${COMETHUB_BIN:-target/release/comethub}
taskset -c 0 "$BIN" --listen 127.0.0.1:$CPORT --history 30000 --timeout 120 \
  --max-message 1024 2>"$work/comethub.log" &
CPID=$!
sed -e "s#__DIR__#$work#g" -e "s#__PORT__#$NPORT#g" benches/nchan.conf > "$work/nginx.conf"
mkdir -p "$work/body"
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" 2>>"$work/error.log" &
for _ in $(seq 50); do
  [ -f "$work/nginx.pid" ] && curl -s -o /dev/null "http://127.0.0.1:$CPORT/stats" && break
  sleep 0.1
done
NMASTER=$(cat "$work/nginx.pid")
NPID=$(pgrep -P "$NMASTER" | head -1)
echo "comethub pid $CPID, nchan worker pid $NPID, results in $work/out.txt"

run() { timeout 300 taskset -c 1 "$LOADGEN" "$@" | tee -a "$work/out.txt" | grep RESULT; }
publish_rps() {
  timeout 60 taskset -c 1 wrk -t1 -c32 -d10s -s benches/publish.lua "$1" | tee -a "$work/out.txt" |
    awk '/Requests\/sec/ {print $2}'
}

echo "== fan-out ($N subscribers, $ROUNDS rounds)"
c_fan=$(run fanout --addr 127.0.0.1:$CPORT --pid $CPID --subscribers "$N" --rounds "$ROUNDS" --channel fan)
n_fan=$(run fanout --addr 127.0.0.1:$NPORT --pid "$NPID" --subscribers "$N" --rounds "$ROUNDS" --channel fan --server nchan)
echo "== cycle ($K subscribers re-polling, $M messages)"
c_cyc=$(run cycle --addr 127.0.0.1:$CPORT --pid $CPID --subscribers "$K" --messages "$M" --channel cyc)
c_cycj=$(run cycle --addr 127.0.0.1:$CPORT --pid $CPID --subscribers "$K" --messages "$M" --channel cycj --json)
n_cyc=$(run cycle --addr 127.0.0.1:$NPORT --pid "$NPID" --subscribers "$K" --messages "$M" --channel cyc --server nchan)
echo "== publish storm ($K subscribers re-polling, $M messages from $P publisher connections)"
c_storm=$(run cycle --addr 127.0.0.1:$CPORT --pid $CPID --subscribers "$K" --messages "$M" --publishers "$P" --channel storm --json)
n_storm=$(run cycle --addr 127.0.0.1:$NPORT --pid "$NPID" --subscribers "$K" --messages "$M" --publishers "$P" --channel storm --server nchan-multipart)
echo "== publish throughput, no subscribers (wrk)"
c_pub=$(publish_rps "http://127.0.0.1:$CPORT/publish?channel=wrk")
n_pub=$(publish_rps "http://127.0.0.1:$NPORT/pub/wrk")

echo
echo "| workload | comethub | Nchan | ratio |"
echo "|---|---:|---:|---:|"
fanout_rows "$c_fan" "$n_fan"
row "cycle raw: deliveries/s" "$(val "$c_cyc" deliveries_per_s)" "$(val "$n_cyc" deliveries_per_s)"
row "cycle json: deliveries/s (vs Nchan raw)" "$(val "$c_cycj" deliveries_per_s)" "$(val "$n_cyc" deliveries_per_s)"
row "cycle: lost + duplicated (raw)" "$(lost "$c_cyc")" "$(lost "$n_cyc")"
row "cycle: lost + duplicated (json)" "$(lost "$c_cycj")" "-"
row "storm json vs Nchan multipart: deliveries/s" "$(val "$c_storm" deliveries_per_s)" "$(val "$n_storm" deliveries_per_s)"
row "storm: lost + duplicated + disordered" "$(( $(lost "$c_storm") + $(val "$c_storm" disordered) ))" "$(( $(lost "$n_storm") + $(val "$n_storm" disordered) ))"
row "publish, no subscribers: requests/s (wrk)" "$c_pub" "$n_pub"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
