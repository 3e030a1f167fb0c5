#!/usr/bin/env bash
# What presence costs on the fan-out: the same 10,000-subscriber long-poll
# fan-out (benches/loadgen.rs) on one build, one run, three ways:
#   off       no --presence
#   members   --presence 'fan*', each subscriber a member of its own (client=mN)
#   events    the same, and --events-url to a receiver that counts events
# Server on core 0, load on core 1. Reports CPU per delivery and per round, time until all,
# RSS per waiting subscriber, each as a ratio to "off", and the events the
# application received (one join per member; none per re-poll).
#   benches/presence.sh   (SUBSCRIBERS=10000 ROUNDS=5 PAIRS=1 BIN=target/release/comethub)
# CPU per delivery counts the round and the re-polls that park again (where
# presence is entered). PAIRS=K runs "off" and "members" K times more, alternately, and reports each
# pair's CPU ratio and their median: one pair's ratio moves by about ±0.1 on a
# shared machine, the median of several much less.
# Needs python3 (the receiver); run as root for sysctl.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-5}
PORT=18030
RPORT=18031
work=$(mktemp -d /tmp/comethub-presence.XXXXXX)
source benches/common.sh
tune
build

# The events receiver: counts the events of every batch; GET answers the count.
cat > "$work/receiver.py" <<'PY'
import http.server, json, sys
count = {"events": 0, "batches": 0, "types": {}}
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        count["batches"] += 1
        for e in body["events"]:
            count["events"] += 1
            count["types"][e["type"]] = count["types"].get(e["type"], 0) + 1
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        out = json.dumps(count).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(out))); self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
taskset -c 1 python3 "$work/receiver.py" $RPORT &
RECEIVER=$!
trap 'kill $RECEIVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$RPORT/" && break; sleep 0.1; done

off=$(fanout_run off fanout --channel fan)
members=$(fanout_run members fanout --channel fan --members -- --presence 'fan*')
events=$(fanout_run events fanout --channel fan --members -- --presence 'fan*' \
  --events-url "http://127.0.0.1:$RPORT/events")
received=$(curl -s "http://127.0.0.1:$RPORT/")
PAIRS=${PAIRS:-1}
ratios=()
for i in $(seq 2 "$PAIRS"); do
  a=$(fanout_run off fanout --channel fan)
  b=$(fanout_run members fanout --channel fan --members -- --presence 'fan*')
  r=$(ratio "$(val "$b" cpu_us_per_delivery)" "$(val "$a" cpu_us_per_delivery)")
  echo "pair $i: CPU per delivery $(val "$a" cpu_us_per_delivery) µs off, $(val "$b" cpu_us_per_delivery) µs members: $r" >&2
  ratios+=("$r")
done

echo
echo "| measure | presence off | members | ratio | members + events | ratio |"
echo "|---|---:|---:|---:|---:|---:|"
for k in cpu_us_per_delivery cpu_ms_median all_ms_median rss_bytes_per_subscriber; do
  a=$(val "$off" $k); b=$(val "$members" $k); c=$(val "$events" $k)
  printf "| %s | %s | %s | %s | %s | %s |\n" "$k" "$a" "$b" "$(ratio "$b" "$a")" "$c" "$(ratio "$c" "$a")"
done
if [ ${#ratios[@]} -gt 0 ]; then
  ratios+=("$(ratio "$(val "$members" cpu_us_per_delivery)" "$(val "$off" cpu_us_per_delivery)")")
  echo
  echo "CPU per delivery (the round and the re-polls), members / off, $PAIRS pairs: ${ratios[*]}; median $(median "${ratios[@]}")"
fi
echo
echo "events received during the events run ($N members, $ROUNDS rounds): $received"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
