#!/usr/bin/env bash
# `make run`: the whole platform on this machine with the fake LLM provider. Makes sure
# PostgreSQL and Redis answer (starting throw-away ones under .local/ when they do not),
# migrates, prints a demo API key with ready-to-paste curl lines, then runs web, stream,
# the three worker pools and beat under honcho. Ctrl-C (or SIGTERM) stops every process.
# The Makefile's `venv` prerequisite has created .venv before this runs.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p "${SWITCHYARD_LOCAL_DIR:-.local}"
LOCAL_DIR=$(cd "${SWITCHYARD_LOCAL_DIR:-.local}" && pwd)
export SWITCHYARD_LOCAL_DIR=$LOCAL_DIR
export PYTHONPATH=src:.
export DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-config.settings}
export DEBUG=${DEBUG:-true} LLM_PROVIDER=${LLM_PROVIDER:-fake} LOG_FORMAT=${LOG_FORMAT:-console}
export WEB_WORKERS=${WEB_WORKERS:-2}
# The web role collects static files on start (bin/switchyard): into .local, not the tree.
export STATIC_ROOT=${STATIC_ROOT:-$LOCAL_DIR/staticfiles}
export CELERY_BEAT_SCHEDULE_FILENAME=${CELERY_BEAT_SCHEDULE_FILENAME:-$LOCAL_DIR/celerybeat-schedule}
# honcho gives the n-th process it starts PORT = base + 100 * n: web gets the base, stream base + 100.
PORT=${PORT:-8000}
STREAM_PORT=$((PORT + 100))

for port in "$PORT" "$STREAM_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "switchyard: port $port is already in use; run on other ports with: PORT=9000 make run" >&2
    exit 1
  fi
done

# Secrets of this machine, made once and kept under .local/ (mode 600): the webhook
# signing secret stays the same across runs, and /metrics answers only with the token.
if [ ! -s "$LOCAL_DIR/secrets" ]; then
  (
    umask 077
    .venv/bin/python -c 'import secrets
for name in ("WEBHOOK_SIGNING_SECRETS", "METRICS_TOKEN"):
    print(f"export {name}=${{{name}:-{secrets.token_urlsafe(40)}}}")' >"$LOCAL_DIR/secrets"
  )
fi
# shellcheck source=/dev/null
. "$LOCAL_DIR/secrets"

.venv/bin/python scripts/services.py ensure --env-file "$LOCAL_DIR/env"
# shellcheck source=/dev/null
. "$LOCAL_DIR/env" # export lines: the URLs services.py made sure answer

bin/switchyard migrate
key=$(bin/switchyard manage create_api_key demo@switchyard.local --org Demo | tail -n 1)
web="http://127.0.0.1:$PORT"

cat <<EOF

Switchyard is starting: web $web, stream (SSE) http://127.0.0.1:$STREAM_PORT
  DATABASE_URL=$DATABASE_URL
  REDIS_URL=$REDIS_URL
Demo API key (organization "Demo"; shown once):
  $key
Try:
  curl -H "Authorization: Bearer $key" $web/api/v1/me/
  curl -X POST -H "Authorization: Bearer $key" -H "Content-Type: application/json" \\
       -d '{"prompt": "Write a haiku about switchyards"}' $web/api/v1/ai-tasks/
  curl -N -H "Authorization: Bearer $key" http://127.0.0.1:$STREAM_PORT/api/v1/ai-tasks/<id>/events/
  (. $LOCAL_DIR/secrets && curl -H "Authorization: Bearer \$METRICS_TOKEN" $web/metrics)
Ctrl-C stops every process.

EOF

exec .venv/bin/honcho start -f Procfile -p "$PORT" web stream worker-priority worker-default worker-low beat
