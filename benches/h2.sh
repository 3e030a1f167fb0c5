#!/usr/bin/env bash
# HTTP/2 against HTTP/1.1: the fan-out to 10,000 long-polls, first as 10,000
# HTTP/1.1 connections (the lean path), then as 10,000 HTTP/2 streams on 100
# connections in the clear (hyper), server on core 0, load on core 1.
# Reports server CPU per round and per parking of the re-polls, and RSS per
# waiting subscriber.
#   benches/h2.sh     (SUBSCRIBERS=10000 CONNECTIONS=100 ROUNDS=5)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
C=${CONNECTIONS:-100}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-18076}
source benches/common.sh
tune
build
fanout_run http1 fanout --channel fan -- --max-concurrent-streams 1000
fanout_run h2c fanout-h2 --channel fan --connections "$C" -- --max-concurrent-streams 1000
