#!/usr/bin/env bash
# What checking a JWT on every poll costs: fan-out (10,000 subscribers, every
# re-poll carrying its token) with no auth, with an HS256 secret and with an
# ES256 public key (--subscribe-auth token), server on core 0, load on core 1.
# Reports server CPU per delivery (parking the re-poll with its token, then
# answering it) summed over every round after the first; the verified-token
# cache should keep both within 1.1x of no auth. No auth runs first and last,
# so the table shows how far the machine drifted during the run.
#   benches/auth.sh     (SUBSCRIBERS=10000 ROUNDS=20)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-20}
PORT=${PORT:-18070}
source benches/common.sh
tune
build
BIN=target/release/comethub
SECRET=bench-secret-of-at-least-thirty-two-bytes
hs=$("$BIN" token --key "$SECRET" --subscribe fan --publish fan --ttl 3600)
es=$("$BIN" token --private-key tests/keys/ec-private.pem --subscribe fan --publish fan --ttl 3600)
none=$(fanout_run none fanout --channel fan)
hs=$(fanout_run hs256 fanout --channel fan --token "$hs" -- --jwt-key "$SECRET" --subscribe-auth token)
es=$(fanout_run es256 fanout --channel fan --token "$es" -- --jwt-key tests/keys/ec-public.pem --subscribe-auth token)
again=$(fanout_run none-again fanout --channel fan)
printf '%s\n' "$none" "$hs" "$es" "$again"
base=$(awk -v a="$(val "$none" cpu_us_per_delivery)" -v b="$(val "$again" cpu_us_per_delivery)" 'BEGIN { print (a + b) / 2 }')
echo
echo "| run | server CPU per delivery, us | vs no auth (mean of both runs) |"
echo "|---|---:|---:|"
for r in "$none" "$hs" "$es" "$again"; do
  echo "| ${r%% *} | $(val "$r" cpu_us_per_delivery) | $(ratio "$(val "$r" cpu_us_per_delivery)" "$base") |"
done
