#!/usr/bin/env bash
# What several channels per request cost: fan-out to 10,000 subscribers each
# waiting on one channel, then each waiting on four channels in one request
# (publishes spread over the four), server on core 0, load on core 1.
# Every round delivers one message to every subscriber in both, so CPU per
# round divided by the subscribers is CPU per delivery; "park" is the CPU of
# taking the subscribers' re-polls before the round. Target: within 1.2x.
# CPU per delivery is summed over every round after the first (loadgen's
# cpu_us_per_delivery); one channel runs first and last, to show the drift.
#   benches/multiplex.sh     (SUBSCRIBERS=10000 ROUNDS=20)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-20}
PORT=${PORT:-18075}
source benches/common.sh
tune
build
one=$(fanout_run one-channel fanout --channel fan)
four=$(fanout_run four-channels fanout --channel fan0,fan1,fan2,fan3)
again=$(fanout_run one-channel-again fanout --channel fan)
printf '%s\n' "$one" "$four" "$again"
base=$(awk -v a="$(val "$one" cpu_us_per_delivery)" -v b="$(val "$again" cpu_us_per_delivery)" 'BEGIN { print (a + b) / 2 }')
echo
echo "| run | server CPU per delivery, us | vs one channel (mean of both runs) | RSS per waiting subscriber, B |"
echo "|---|---:|---:|---:|"
for r in "$one" "$four" "$again"; do
  echo "| ${r%% *} | $(val "$r" cpu_us_per_delivery) | $(ratio "$(val "$r" cpu_us_per_delivery)" "$base") | $(val "$r" rss_bytes_per_subscriber) |"
done
