# syntax=docker/dockerfile:1
# One image runs every role of SPEC §2: `docker run switchyard <role>` (bin/switchyard).
#   docker build -t switchyard .
#   docker run --rm -e SECRET_KEY=... -e WEBHOOK_SIGNING_SECRETS=... -e METRICS_TOKEN=... \
#     -e ALLOWED_HOSTS=... -e DATABASE_URL=... -e REDIS_URL=... switchyard web

# Pinned to an exact patch version and Debian release (tests/test_dockerfile.py): the
# Python CI runs the suite on (3.13.0). Not pinned by digest yet: no registry was reachable
# where this was written, so the digest could not be read and checked. To pin it, run
# `docker buildx imagetools inspect python:3.13.0-slim-bookworm` and append
# `@sha256:<index digest>` (the test accepts either form; a digest also fixes the Debian
# packages, which the tag does not: it is re-pushed for Debian security updates).
ARG PYTHON_IMAGE=python:3.13.0-slim-bookworm

# --- builder: the locked dependencies in a virtualenv ---------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Only the lock: the dependency layer is rebuilt when the lock changes, not the code. Exactly
# the locked files (every dependency pinned, sha256-checked, nothing resolved), wheels only, so
# no compiler and no apt packages are needed. `make lock` writes requirements/runtime.txt.
COPY requirements/runtime.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --require-hashes --no-deps --only-binary :all: -r /tmp/requirements.txt \
    && pip check

# --- runtime: the interpreter, the virtualenv and the code; no compilers -------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=config.settings \
    PORT=8000 \
    SWITCHYARD_ROLE_FILE=/tmp/switchyard.role \
    ANALYTICS_EXPORT_ROOT=/var/lib/switchyard/exports
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --create-home --home-dir /home/switchyard \
        --shell /usr/sbin/nologin switchyard
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The code is owned by root and read-only for the app user; it writes only to /tmp and
# to /var/lib/switchyard/exports (analytics CSV exports; a volume shared by web and worker-low).
COPY manage.py ./
COPY bin ./bin
COPY contracts ./contracts
COPY src ./src
# Static files are collected at build time (WhiteNoise serves them). The settings need a
# SECRET_KEY, ALLOWED_HOSTS, WEBHOOK_SIGNING_SECRETS and METRICS_TOKEN to load with DEBUG
# off; these values exist only in this step.
RUN SECRET_KEY=collectstatic-only-build-time-key-not-used-at-run-time ALLOWED_HOSTS=localhost \
        WEBHOOK_SIGNING_SECRETS=collectstatic-only-build-time-webhook-secret \
        METRICS_TOKEN=collectstatic-only-build-time-metrics-token \
        bin/switchyard manage collectstatic --noinput --verbosity 0 \
    && python -m compileall -q src contracts \
    && install -d -o 10001 -g 10001 /var/lib/switchyard/exports
# Collected above, into the read-only app dir: the web role must not collect again at start.
ENV SWITCHYARD_COLLECTSTATIC=0
USER 10001:10001
EXPOSE 8000
# Role-aware (bin/switchyard healthcheck): /healthz on $PORT for web and stream, /healthcheck
# for flower, `manage.py worker_health --queue Q --here` for a worker (its pool's heartbeat:
# dead or stuck fails), nothing for beat.
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 CMD ["bin/switchyard", "healthcheck"]
ENTRYPOINT ["bin/switchyard"]
CMD ["web"]
