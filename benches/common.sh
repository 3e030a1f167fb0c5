# Sourced by the benchmark scripts: kernel tuning, the release build and the load
# generator, and the helpers that print a ratio table. Every script's servers
# listen on 127.0.0.1:18000-18099, which is reserved so client sockets never take
# those ports.

# Kernel tuning for 10,000 loopback connections (bounded, reversible); run as root.
tune() {
  sysctl -qw net.core.somaxconn=8192 net.ipv4.tcp_max_syn_backlog=8192 \
    net.ipv4.ip_local_port_range="15000 64000" \
    net.ipv4.ip_local_reserved_ports="18000-18099" || echo "note: sysctl not applied" >&2
  ulimit -n 20000
}

# Builds comethub and the load generator; sets LOADGEN.
build() {
  cargo build --release -q
  cargo bench --bench loadgen --no-run -q 2>/dev/null
  LOADGEN=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
}

# val "RESULT k=v ..." k: the value of k.
val() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }
# The median of the numbers given.
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
row() { printf "| %-46s | %12s | %12s | %6s |\n" "$1" "$2" "$3" "$(ratio "$2" "$3")"; }
# The three fan-out rows for two loadgen RESULT lines (ours, theirs).
fanout_rows() {
  row "fan-out: server CPU per round, ms" "$(val "$1" cpu_ms_median)" "$(val "$2" cpu_ms_median)"
  row "fan-out: RSS per waiting subscriber, bytes" "$(val "$1" rss_bytes_per_subscriber)" "$(val "$2" rss_bytes_per_subscriber)"
  row "fan-out: time until all have it, ms" "$(val "$1" all_ms_median)" "$(val "$2" all_ms_median)"
}
# Messages lost plus duplicated in a cycle RESULT line.
lost() { echo $(( $(val "$1" lost) + $(val "$1" duplicates) )); }

# start_server PORT [comethub flags...]: starts $BIN (default: the release
# build) on 127.0.0.1:PORT pinned as $PIN_SERVER (if set), sets SPID, and
# waits until it answers; fails if it does not start.
start_server() {
  local port=$1; shift
  local bin=${BIN:-target/release/comethub}
  if [ -n "${PIN_SERVER:-}" ]; then
    taskset -c "$PIN_SERVER" "$bin" --listen 127.0.0.1:$port "$@" 2>/dev/null &
  else
    "$bin" --listen 127.0.0.1:$port "$@" 2>/dev/null &
  fi
  SPID=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  kill -0 $SPID 2>/dev/null || { echo "comethub did not start on port $port" >&2; exit 1; }
}

# fanout_run NAME MODE [loadgen args...] [-- comethub flags...]: one fan-out
# (loadgen MODE, $N subscribers, $ROUNDS rounds) against a fresh server on
# 127.0.0.1:$PORT pinned to core 0, the load on core 1; prints NAME and the
# RESULT line.
fanout_run() {
  local name=$1 mode=$2; shift 2
  local load=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do load+=("$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  PIN_SERVER=0 start_server "$PORT" --timeout 120 "$@"
  local pid=$SPID result
  result=$(timeout 300 taskset -c 1 "$LOADGEN" "$mode" --addr 127.0.0.1:"$PORT" --pid $pid \
    --subscribers "$N" --rounds "$ROUNDS" ${load[@]+"${load[@]}"} | grep RESULT)
  kill $pid; wait $pid 2>/dev/null || true
  echo "$name $result"
}
