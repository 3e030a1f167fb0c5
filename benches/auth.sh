#!/usr/bin/env bash
# What checking a JWT on every poll costs: fan-out (10,000 subscribers, every
# re-poll carrying its token) with no auth, with an HS256 secret and with an
# ES256 public key (--subscribe-auth token), server on core 0, load on core 1.
# Reports server CPU per round; the verified-token cache should keep both
# within 1.1x of no auth.
#   benches/auth.sh     (SUBSCRIBERS=10000 ROUNDS=5)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-18070}
source benches/common.sh
tune
build
BIN=target/release/comethub
SECRET=bench-secret-of-at-least-thirty-two-bytes
hs=$("$BIN" token --key "$SECRET" --subscribe fan --publish fan --ttl 3600)
es=$("$BIN" token --private-key tests/keys/ec-private.pem --subscribe fan --publish fan --ttl 3600)
run_one() {
  local name=$1 token=$2; shift 2
  PIN_SERVER=0 start_server $PORT --timeout 120 "$@"
  local pid=$SPID
  local extra=()
  [ -n "$token" ] && extra=(--token "$token")
  local result
  result=$(timeout 300 taskset -c 1 "$LOADGEN" fanout --addr 127.0.0.1:$PORT --pid $pid \
    --subscribers "$N" --rounds "$ROUNDS" --channel fan "${extra[@]}" | grep RESULT)
  kill $pid; wait $pid 2>/dev/null || true
  echo "$name $result"
}
run_one none ""
run_one hs256 "$hs" --jwt-key "$SECRET" --subscribe-auth token
run_one es256 "$es" --jwt-key tests/keys/ec-public.pem --subscribe-auth token
