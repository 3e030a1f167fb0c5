#!/usr/bin/env bash
# Runs the request-parameter fuzzer for a bounded time: fuzz/run.sh [SECONDS]
# cargo fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain build it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
mkdir -p fuzz/corpus/params
printf 'channel=room&since=oldest&timeout=5&format=json\nmessage=hi' > fuzz/corpus/params/seed1
printf 'channel=a&since=zz-1\n\xff\xfe' > fuzz/corpus/params/seed2
log=$(mktemp)
if RUSTC_BOOTSTRAP=1 cargo fuzz run params fuzz/corpus/params -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
  grep -E '^Done|stat::' "$log" || tail -3 "$log"
else
  cat "$log"
  exit 1
fi
