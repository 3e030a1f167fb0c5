#!/usr/bin/env bash
# Two builds of comethub on the same fan-out, alternately, K times each: the
# server's CPU per delivery and the time until all have the message, each
# run's and their medians. For a change's before and after on a noisy machine.
#   benches/ab.sh BEFORE AFTER          (K=8 N=4000 ROUNDS=6, plain long-poll)
#   K=6 benches/ab.sh /tmp/comethub-before target/release/comethub --sse
# Loadgen flags after the two builds; comethub flags after `--`.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
[ $# -ge 2 ] || { echo "usage: benches/ab.sh BEFORE AFTER [loadgen flags] [-- comethub flags]" >&2; exit 1; }
before=$1 after=$2; shift 2
load=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do load+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
K=${K:-8}
N=${N:-4000}
ROUNDS=${ROUNDS:-6}
PORT=${PORT:-18095}
build
tune
declare -A cpu all
for i in $(seq "$K"); do
  for bin in "$before" "$after"; do
    r=$(BIN=$bin fanout_run "$bin" fanout --channel fan ${load[@]+"${load[@]}"} -- --ping 600 "$@")
    c=$(val "$r" cpu_us_per_delivery) a=$(val "$r" all_ms_median)
    echo "run $i $bin: CPU per delivery $c µs, all had it in $a ms"
    cpu[$bin]="${cpu[$bin]:-} $c"
    all[$bin]="${all[$bin]:-} $a"
  done
done
for bin in "$before" "$after"; do
  # shellcheck disable=SC2086
  echo "$bin: CPU per delivery median $(median ${cpu[$bin]}) µs, time until all median $(median ${all[$bin]}) ms"
done
