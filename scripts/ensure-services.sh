#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer at DATABASE_URL / REDIS_URL and that the
# database exists. When they do not answer and the server binaries are installed, it
# starts throw-away local servers under .local/ (git-ignored) and writes the URLs to use
# to .local/env (`. .local/env` to use them in your shell). Otherwise it says exactly
# what to install, or to use `docker compose up`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/services.py ensure --env-file "${SWITCHYARD_LOCAL_DIR:-.local}/env" "$@"
