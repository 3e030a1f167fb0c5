#!/usr/bin/env bash
# Runs each fuzz target for a bounded time: fuzz/run.sh [SECONDS]
#   params  what a client controls in a request's parameters and body
#   parity  the lean HTTP/1.1 parser against hyper's, on the same bytes
# cargo fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain build it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
mkdir -p fuzz/corpus/params fuzz/corpus/parity
printf 'channel=room&since=oldest&timeout=5&format=json\nmessage=hi' > fuzz/corpus/params/seed1
printf 'channel=a&since=zz-1\n\xff\xfe' > fuzz/corpus/params/seed2
printf 'channel=a,b,c&since=a~zz-1,c~oldest,x~zz-2&format=json\nmessage=hi' > fuzz/corpus/params/seed3
printf 'GET /subscribe?channel=a&since=oldest HTTP/1.1\r\nHost: x\r\nLast-Event-ID: k-1\r\n\r\nGET /stats HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /stats HTTP/1.0\r\n\r\n' > fuzz/corpus/parity/seed1
printf 'POST /publish?channel=a HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nAuthorization: Bearer t\r\n\r\nhelloDELETE /publish?channel=a HTTP/1.1\r\nConnection: close\r\n\r\n' > fuzz/corpus/parity/seed2
printf 'GET /subscribe HTTP/1.1\nHost: x\nX: \xff\n\nOPTIONS /events HTTP/1.1\r\nContent-Length: 0\r\n\r\n' > fuzz/corpus/parity/seed3
# Seeds read as pieces (first byte odd; see PIECES in fuzz_targets/parity.rs).
printf '\x01\x00\x08\x1b\x00\x1b' > fuzz/corpus/parity/pieces1
printf '\x01\x02\x0d\x14\x1b\x1e\x03\x07\x1b' > fuzz/corpus/parity/pieces2
log=$(mktemp)
for target in params parity; do
  echo "fuzz target $target, ${secs}s"
  options=(-max_total_time="$secs" -rss_limit_mb=2048)
  if [ "$target" = parity ]; then options+=(-dict=fuzz/http.dict); fi
  if RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" -- "${options[@]}" >"$log" 2>&1; then
    grep -E '^Done|stat::' "$log" || tail -3 "$log"
  else
    cat "$log"
    exit 1
  fi
done
