#!/usr/bin/env bash
# `make test-pgbouncer`: the API, llm and pipeline tests through a real PgBouncer in
# transaction mode (DATABASE_POOLED=true), in front of the test database.
#
# Installs Debian's pgbouncer when it is missing, starts it on a free loopback port with
# a throw-away config (pool_mode = transaction, the settings of deploy/pgbouncer/), points
# DATABASE_URL at it and runs pytest; the workers and servers the pipeline tests start
# inherit the URL (tests/support.py), so they go through PgBouncer too. Stops it after.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=.venv/bin/python

if ! command -v pgbouncer >/dev/null 2>&1; then
  echo "test-pgbouncer: installing pgbouncer (apt-get)"
  apt-get install -y -q pgbouncer >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q pgbouncer >/dev/null; }
fi

upstream=${DATABASE_URL:-postgres:///switchyard}
# host (socket directory or address), port, user of the upstream PostgreSQL
read -r pg_host pg_port pg_user <<<"$("$PYTHON" - "$upstream" <<'PY'
import getpass, sys
from urllib.parse import unquote, urlparse
url = urlparse(sys.argv[1])
print(unquote(url.hostname or "") or "/var/run/postgresql", url.port or 5432, unquote(url.username or "") or getpass.getuser())
PY
)"
database=$("$PYTHON" -c 'import sys; from urllib.parse import urlparse; print(urlparse(sys.argv[1]).path.lstrip("/") or "switchyard")' "$upstream")
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

dir=$(mktemp -d /tmp/switchyard-pgbouncer.XXXXXX)
cleanup() {
  if [ -s "$dir/pgbouncer.pid" ]; then
    kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
    for _ in $(seq 50); do [ -e "$dir/pgbouncer.pid" ] || break; sleep 0.1; done
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

# Every database name (the test database is made by pytest-django) to the same server.
cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=$pg_host port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
max_db_connections = 60
reserve_pool_size = 5
query_wait_timeout = 30
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
printf '"%s" ""\n' "$pg_user" >"$dir/userlist.txt"
# PgBouncer refuses to run as root: as root it drops to the postgres user (-u).
as_user=()
if [ "$(id -u)" = 0 ]; then
  run_as=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
  chown -R "$run_as" "$dir"
  as_user=(-u "$run_as")
fi
chmod 755 "$dir"
pgbouncer -d "${as_user[@]}" "$dir/pgbouncer.ini"
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
echo "test-pgbouncer: $(pgbouncer --version | head -1) on 127.0.0.1:$port (transaction pooling) -> $pg_host:$pg_port"

export DATABASE_URL="postgres://$pg_user@127.0.0.1:$port/$database" DATABASE_POOLED=true
# The reliability tests (outages, kills) are about Redis and workers, not the pooler:
# left out once that marker exists (pytest refuses an unknown marker in -m).
select=()
! grep -q '"reliability' pyproject.toml || select=(-m "not reliability")
status=0
.venv/bin/pytest --ds=config.settings_test -p no:cacheprovider tests/api tests/llm tests/pipeline \
  "${select[@]}" "$@" || status=$?
if [ "$status" != 0 ]; then
  echo "test-pgbouncer: pytest failed ($status); PgBouncer's log:" >&2
  tail -n 30 "$dir/pgbouncer.log" >&2 || true
fi
exit "$status"
