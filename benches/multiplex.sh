#!/usr/bin/env bash
# What several channels per request cost: fan-out to 10,000 subscribers each
# waiting on one channel, then each waiting on four channels in one request
# (publishes spread over the four), server on core 0, load on core 1.
# Every round delivers one message to every subscriber in both, so CPU per
# round divided by the subscribers is CPU per delivery; "park" is the CPU of
# taking the subscribers' re-polls before the round. Target: within 1.2x.
# CPU per delivery is summed over every round after the first (loadgen's
# cpu_us_per_delivery). The machine drifts by several percent between runs,
# so one channel and four alternate, REPEAT times, one channel first and
# last: each four-channel run is compared with the mean of the one-channel
# runs either side of it, and the mean of those ratios is the result.
#   benches/multiplex.sh     (SUBSCRIBERS=10000 ROUNDS=20 REPEAT=3)
#   BIN=old/comethub benches/multiplex.sh    (another build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-20}
REPEAT=${REPEAT:-3}
PORT=${PORT:-18075}
source benches/common.sh
tune
build
runs=("$(fanout_run one-channel fanout --channel fan)")
for _ in $(seq "$REPEAT"); do
  runs+=("$(fanout_run four-channels fanout --channel fan0,fan1,fan2,fan3)")
  runs+=("$(fanout_run one-channel fanout --channel fan)")
done
printf '%s\n' "${runs[@]}"
cpu() { val "$1" cpu_us_per_delivery; }
echo
echo "| run | server CPU per delivery, us | vs one channel (runs either side) | RSS per waiting subscriber, B |"
echo "|---|---:|---:|---:|"
ratios=()
for i in "${!runs[@]}"; do
  r=${runs[$i]} vs=""
  if [ $((i % 2)) = 1 ]; then
    base=$(awk -v a="$(cpu "${runs[$((i - 1))]}")" -v b="$(cpu "${runs[$((i + 1))]}")" 'BEGIN { print (a + b) / 2 }')
    vs=$(ratio "$(cpu "$r")" "$base")
    ratios+=("$vs")
  fi
  echo "| ${r%% *} | $(cpu "$r") | $vs | $(val "$r" rss_bytes_per_subscriber) |"
done
echo
echo "four channels vs one, per delivery: $(printf '%s\n' "${ratios[@]}" | awk '{ s += $1; if (NR == 1 || $1 < lo) lo = $1; if ($1 > hi) hi = $1 } END { printf "mean %.2fx (runs %.2f to %.2f)", s / NR, lo, hi }')"
