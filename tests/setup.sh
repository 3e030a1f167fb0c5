#!/usr/bin/env bash
# Installs what the tests need when it is absent: Debian's redis-server (the
# cluster tests start their own on a free port), nginx, curl, then the browser tools
# (tests/browser/setup.sh). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v redis-server >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  # The package starts a system-wide server on 6379; the tests do not use it.
  $sudo systemctl disable --now redis-server >/dev/null 2>&1 || $sudo service redis-server stop >/dev/null 2>&1 || true
fi
echo "cluster tests ready: $(redis-server --version | cut -d' ' -f1-3)"
# nginx: the chaos test puts two instances behind it, configured as the README says.
if ! command -v nginx >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx >/dev/null
  # The package may start a system-wide server on port 80; the test runs its own.
  $sudo systemctl disable --now nginx >/dev/null 2>&1 || $sudo service nginx stop >/dev/null 2>&1 || true
fi
echo "chaos test ready: $(nginx -v 2>&1)"
# curl (with HTTP/2) drives the HTTPS, HTTP/2 and Unix socket tests.
if ! command -v curl >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq curl >/dev/null
fi
curl --version | grep -q HTTP2 || { echo "curl has no HTTP/2: the TLS tests need it" >&2; exit 1; }
echo "TLS and socket tests ready: $(curl --version | head -1 | cut -d' ' -f1-2)"
browser/setup.sh
