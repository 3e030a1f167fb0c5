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
fanout_run none fanout --channel fan
fanout_run hs256 fanout --channel fan --token "$hs" -- --jwt-key "$SECRET" --subscribe-auth token
fanout_run es256 fanout --channel fan --token "$es" -- --jwt-key tests/keys/ec-public.pem --subscribe-auth token
