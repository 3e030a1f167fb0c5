#!/usr/bin/env bash
# What several channels per request cost: fan-out to 10,000 subscribers each
# waiting on one channel, then each waiting on four channels in one request
# (publishes spread over the four), server on core 0, load on core 1.
# Every round delivers one message to every subscriber in both, so CPU per
# round divided by the subscribers is CPU per delivery; "park" is the CPU of
# taking the subscribers' re-polls before the round. Target: within 1.2x.
#   benches/multiplex.sh     (SUBSCRIBERS=10000 ROUNDS=5)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SUBSCRIBERS:-10000}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-18075}
source benches/common.sh
tune
build
fanout_run one-channel fanout --channel fan
fanout_run four-channels fanout --channel fan0,fan1,fan2,fan3
