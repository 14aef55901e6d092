# syntax=docker/dockerfile:1
# One image runs every role of SPEC §2: `docker run switchyard <role>` (bin/switchyard).
#   docker build -t switchyard .
#   docker run --rm -e SECRET_KEY=... -e ALLOWED_HOSTS=... -e DATABASE_URL=... -e REDIS_URL=... switchyard web

ARG PYTHON_IMAGE=python:3.13-slim

# --- builder: compilers and the pinned dependencies in a virtualenv ------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# Build tools only for a dependency that ships no wheel for this platform; they stay here.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Only pyproject.toml: the dependency layer is rebuilt when the pins change, not the code.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# --- runtime: the interpreter, the virtualenv and the code; no compilers -------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=config.settings \
    PORT=8000 \
    SWITCHYARD_ROLE_FILE=/tmp/switchyard.role
RUN groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --create-home --home-dir /home/switchyard \
        --shell /usr/sbin/nologin switchyard
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The code is owned by root and read-only for the app user; it writes only to /tmp.
COPY manage.py ./
COPY bin ./bin
COPY contracts ./contracts
COPY src ./src
# Static files are collected at build time (WhiteNoise serves them). The settings need a
# SECRET_KEY and ALLOWED_HOSTS to load with DEBUG off; these values exist only in this step.
RUN SECRET_KEY=collectstatic-only-build-time-key-not-used-at-run-time ALLOWED_HOSTS=localhost \
        bin/switchyard manage collectstatic --noinput --verbosity 0 \
    && python -m compileall -q src contracts
# Collected above, into the read-only app dir: the web role must not collect again at start.
ENV SWITCHYARD_COLLECTSTATIC=0
USER 10001:10001
EXPOSE 8000
# Role-aware (bin/switchyard healthcheck): /healthz on $PORT for web and stream, /healthcheck
# for flower, `celery inspect ping` for a worker, nothing for beat.
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 CMD ["bin/switchyard", "healthcheck"]
ENTRYPOINT ["bin/switchyard"]
CMD ["web"]
