#!/usr/bin/env bash
# What an idle subscriber costs on every transport a user deploys, comethub
# against nginx + Nchan (one worker, the same transport configured in nginx),
# in one run: N subscribers held open on each of
#   longpoll       plain HTTP/1.1 long-poll, a connection each
#   sse            plain HTTP/1.1 event stream (Nchan: eventsource), a connection each
#   longpoll-tls   HTTPS/1.1 long-poll (ALPN http/1.1), a connection each
#   sse-tls        HTTPS/1.1 event stream
#   h2-tls         HTTPS/2 long-poll, 50 streams per connection (h2load)
#   h2c            HTTP/2 in the clear (prior knowledge) long-poll, 50 streams per connection
# and the server's RssAnon growth divided by N (nginx: its worker's). Both
# servers run on core 0, the clients on core 1.
#   benches/transports.sh            (N=4000 TRANSPORTS="longpoll sse longpoll-tls sse-tls h2-tls h2c"
#                                     BIN=target/release/comethub)
# Then, on each transport, the fan-out (benches/loadgen.rs, FAN subscribers,
# ROUNDS rounds, one 32-byte message a round): the server's CPU per delivery
# (a long-poll's re-poll included), the time until all have the message, and
# what a subscriber keeps after deliveries: the RSS per subscriber waiting
# again after the earlier rounds, less what it was waiting the first time.
#   FANOUT=0 benches/transports.sh   (memory only)
#   N=10000 HOLD=60 FANOUT=0 TRANSPORTS=longpoll-tls benches/transports.sh
#     (also the server's CPU over HOLD seconds while the N are held idle)
#   FAN=4000 ROUNDS=6 benches/transports.sh
#   PAIRS=5 FANOUT=0 TRANSPORTS="longpoll h2c" benches/transports.sh
#     (the fan-out alone, comethub then Nchan, 5 times over on each transport:
#     each pair's CPU ratio and their median; one pair moves by ±20% here)
# Needs nginx, libnginx-mod-nchan, openssl and nghttp2-client (h2load).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
N=${N:-4000}
TRANSPORTS=${TRANSPORTS:-longpoll sse longpoll-tls sse-tls h2-tls h2c}
BIN=${BIN:-target/release/comethub}
CPORT=${COMETHUB_PORT:-18090}
NPLAIN=${NCHAN_PORT:-18091}
NTLS=$((NPLAIN + 1))
NH2=$((NPLAIN + 2))
NH2C=$((NPLAIN + 3))
for tool in nginx openssl h2load taskset python3; do
  command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y nginx libnginx-mod-nchan nghttp2-client" >&2; exit 1; }
done
FANOUT=${FANOUT:-1}
PAIRS=${PAIRS:-0}
HOLD=${HOLD:-0}
FAN=${FAN:-4000}
ROUNDS=${ROUNDS:-6}
build
tune
work=$(mktemp -d /tmp/comethub-transports.XXXXXX)
# A leaf certificate for localhost, which the load generator verifies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -addext basicConstraints=critical,CA:FALSE \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
mkdir -p "$work/body"
cat > "$work/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 19000; }
http {
    access_log off;
    keepalive_timeout 600s;
    client_body_temp_path $work/body;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    http2_max_concurrent_streams 128;
    server {
        listen 127.0.0.1:$NPLAIN backlog=4096;
        listen 127.0.0.1:$NTLS ssl backlog=4096;
        listen 127.0.0.1:$NH2 ssl http2 backlog=4096;
        listen 127.0.0.1:$NH2C http2 backlog=4096;
        location = /status { nchan_stub_status; }
        location ~ ^/pub/(\w+)$ { nchan_publisher; nchan_channel_id \$1; }
        location ~ ^/sub/(\w+)$ {
            nchan_subscriber longpoll;
            nchan_channel_id \$1;
            nchan_subscriber_timeout 600s;
        }
        location ~ ^/ev/(\w+)$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
            nchan_subscriber_timeout 600s;
        }
    }
}
EOF

rss() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }
# The CPU time of every thread of a process, in nanoseconds.
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%d", s }'; }
cleanup() {
  [ -n "${CPID:-}" ] && kill "$CPID" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Holds N subscribers on `url` (HTTP/1.1, one connection each, TLS for
# https) until told to let go.
hold_http1() {
  taskset -c 1 python3 - "$1" "$N" >/dev/null <<'PY' &
import asyncio, ssl, sys, urllib.parse
url, n = sys.argv[1], int(sys.argv[2])
u = urllib.parse.urlsplit(url)
tls = None
if u.scheme == "https":
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    tls.set_alpn_protocols(["http/1.1"])
async def main():
    held = []
    accept = "text/event-stream" if "/ev/" in u.path or "/events" in u.path else "*/*"
    for i in range(n):
        _, w = await asyncio.open_connection(u.hostname, u.port, ssl=tls)
        w.write(f"GET {u.path}?{u.query} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n".encode())
        held.append(w)
        if i % 200 == 199:
            await asyncio.sleep(0)
    await asyncio.sleep(3600)
asyncio.run(main())
PY
  HOLDER=$!
}

# Holds N long-polls as HTTP/2 streams, 50 per connection.
hold_h2() {
  taskset -c 1 h2load -n "$N" -c $((N / 50)) -m 50 -T 600 -N 600 "$1" >/dev/null 2>&1 &
  HOLDER=$!
}

# How many subscribers `server` counts now.
count() {
  case $1 in
    comethub) curl -sk "$2/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["waiting"] + s["streams"])' ;;
    nchan) curl -s "http://127.0.0.1:$NPLAIN/status" | awk '/^subscribers:/ {print $2}' ;;
  esac
}

# One measurement: server, its pid, transport, subscribe URL, stats URL.
measure() {
  local server=$1 pid=$2 transport=$3 url=$4 stats=$5
  local before after
  before=$(rss "$pid")
  case $transport in h2*) hold_h2 "$url" ;; *) hold_http1 "$url" ;; esac
  for _ in $(seq 600); do
    [ "$(count "$server" "$stats" 2>/dev/null || echo 0)" -ge "$N" ] && break
    sleep 0.1
  done
  sleep 1
  local held
  held=$(count "$server" "$stats" 2>/dev/null || echo 0)
  after=$(rss "$pid")
  if [ "$HOLD" -gt 0 ]; then
    local cpu0
    cpu0=$(cpu_ns "$pid")
    sleep "$HOLD"
    echo "$server $transport: $held idle for ${HOLD} s: $(( ($(cpu_ns "$pid") - cpu0) / 1000 )) µs of CPU" >&2
  fi
  kill "$HOLDER" 2>/dev/null || true
  wait "$HOLDER" 2>/dev/null || true
  echo "$(( (after - before) * 1024 / N )) $held"
}

# The fan-out on `transport` against a server: its pid, port, and any flags.
fan() {
  local transport=$1 pid=$2 port=$3; shift 3
  local mode=fanout flags=()
  case $transport in
    h2*) mode=fanout-h2; flags+=(--connections $((FAN / 50))) ;;
  esac
  case $transport in sse*) flags+=(--sse) ;; esac
  case $transport in *-tls) flags+=(--tls "$work/cert.pem") ;; esac
  taskset -c 1 "$LOADGEN" "$mode" --addr "127.0.0.1:$port" --pid "$pid" \
    --subscribers "$FAN" --rounds "$ROUNDS" --channel fan "${flags[@]}" "$@" 2>&1 |
    grep '^RESULT' || echo "RESULT failed"
}

# Starts comethub for `transport` on core 0: sets CPID and base.
start_comethub() {
  local tls=()
  case $1 in *-tls) tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem") ;; esac
  taskset -c 0 "$BIN" --listen "127.0.0.1:$CPORT" --timeout 600 --ping 600 \
    --max-concurrent-streams 128 "${tls[@]}" 2>/dev/null &
  CPID=$!
  local scheme=http
  [ ${#tls[@]} -gt 0 ] && scheme=https
  base="$scheme://127.0.0.1:$CPORT"
  for _ in $(seq 50); do curl -sk -o /dev/null "$base/live" && break; sleep 0.1; done
}
stop_comethub() { kill "$CPID"; wait "$CPID" 2>/dev/null || true; CPID=; }

# Starts nginx + Nchan on core 0: sets npid, and nurl and nport for `transport`.
start_nchan() {
  taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" 2>>"$work/error.log" &
  for _ in $(seq 50); do [ -f "$work/nginx.pid" ] && curl -s -o /dev/null "http://127.0.0.1:$NPLAIN/status" && break; sleep 0.1; done
  npid=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
  case $1 in
    longpoll) nurl="http://127.0.0.1:$NPLAIN/sub/idle" ;;
    sse) nurl="http://127.0.0.1:$NPLAIN/ev/idle" ;;
    longpoll-tls) nurl="https://127.0.0.1:$NTLS/sub/idle" ;;
    sse-tls) nurl="https://127.0.0.1:$NTLS/ev/idle" ;;
    h2-tls) nurl="https://127.0.0.1:$NH2/sub/idle" ;;
    h2c) nurl="http://127.0.0.1:$NH2C/sub/idle" ;;
  esac
  nport=${nurl#*127.0.0.1:}; nport=${nport%%/*}
}
stop_nchan() { kill "$(cat "$work/nginx.pid")"; wait 2>/dev/null || true; rm -f "$work/nginx.pid"; }
nchan_fan() { fan "$1" "$npid" "$nport" --server nchan --publish-addr "127.0.0.1:$NPLAIN"; }

if [ "$PAIRS" -gt 0 ]; then
  for transport in $TRANSPORTS; do
    ratios=() times=()
    for i in $(seq "$PAIRS"); do
      start_comethub "$transport"; cf=$(fan "$transport" "$CPID" "$CPORT"); stop_comethub
      start_nchan "$transport"; nf=$(nchan_fan "$transport"); stop_nchan
      a=$(val "$cf" cpu_us_per_delivery); b=$(val "$nf" cpu_us_per_delivery)
      r=$(ratio "${a:-0}" "${b:-0}")
      ratios+=("$r")
      times+=("$(ratio "$(val "$cf" all_ms_median)" "$(val "$nf" all_ms_median)")")
      echo "$transport pair $i: CPU per delivery $a / $b µs = $r; time until all $(val "$cf" all_ms_median) / $(val "$nf" all_ms_median) ms"
    done
    echo "$transport: comethub / Nchan, $PAIRS pairs: CPU per delivery ${ratios[*]}, median $(median "${ratios[@]}"); time until all ${times[*]}, median $(median "${times[@]}")"
  done
  [ "$FANOUT" = 1 ] || exit 0
fi

declare -A result fanned
for transport in $TRANSPORTS; do
  start_comethub "$transport"
  case $transport in
    sse*) path="/events?channel=idle" ;;
    *) path="/subscribe?channel=idle" ;;
  esac
  c=$(measure comethub "$CPID" "$transport" "$base$path" "$base")
  cf=
  [ "$FANOUT" = 1 ] && cf=$(fan "$transport" "$CPID" "$CPORT")
  stop_comethub

  start_nchan "$transport"
  n=$(measure nchan "$npid" "$transport" "$nurl" "")
  nf=
  [ "$FANOUT" = 1 ] && nf=$(nchan_fan "$transport")
  stop_nchan
  result[$transport]="$c|$n"
  fanned[$transport]="$cf|$nf"
  echo "$transport: comethub ${c% *} B (held ${c#* }), Nchan ${n% *} B (held ${n#* })"
  [ "$FANOUT" = 1 ] && echo "  comethub $cf" && echo "  Nchan    $nf"
done

echo
echo "| transport ($N idle subscribers) | comethub | Nchan | ratio |"
echo "|---|---:|---:|---:|"
for transport in $TRANSPORTS; do
  IFS='|' read -r c n <<<"${result[$transport]}"
  cb=${c% *}; nb=${n% *}
  ratio=$(awk -v a="$cb" -v b="$nb" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
  printf '| %s | %s B | %s B | %s |\n' "$transport" "$cb" "$nb" "$ratio"
done

[ "$FANOUT" = 1 ] || exit 0
echo
echo "| transport ($FAN subscribers, fan-out) | CPU per delivery, µs | ratio | time until all, ms | ratio | RSS kept after deliveries, B | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for transport in $TRANSPORTS; do
  IFS='|' read -r c n <<<"${fanned[$transport]}"
  line="| $transport"
  for k in cpu_us_per_delivery all_ms_median rss_kept_after_deliveries_bytes_per_subscriber; do
    a=$(val "$c" $k); b=$(val "$n" $k)
    line="$line | ${a:-n/a} / ${b:-n/a} | $(ratio "${a:-0}" "${b:-0}")"
  done
  echo "$line |"
done
