#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and Chromium are available for the
# integration and browser tests. On a machine without them it installs Debian's packages (needs root and
# apt) and starts the servers; elsewhere it says what is missing.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "ensure-services: $* missing and cannot be installed here (needs root + apt); install it yourself" >&2
    return 1
  fi
  if [ ! -f /tmp/.priorforge-apt-updated ]; then apt-get update -qq && touch /tmp/.priorforge-apt-updated; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 30); do port_open 5432 && break; sleep 1; done
  # trust auth for local TCP connections and a `test` database, as the tests expect
  su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" | grep -q 1 \
    || su postgres -c "createdb test" || true
fi
if ! port_open 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 30); do port_open 6379 && break; sleep 0.5; done
fi
if ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then
  apt_install chromium chromium-driver || echo "ensure-services: browser tests will be skipped" >&2
fi
port_open 5432 || { echo "ensure-services: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
port_open 6379 || { echo "ensure-services: Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }
