"""Switchyard settings: one module, everything from the environment (django-environ).

Grouped in headed blocks. Anything unusual links to the documentation that explains it.
Invalid or contradictory values stop the process with one line (see ``config.env``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import django_stubs_ext
import environ

from config.env import Timeouts, fail_fast, validate_production, validate_secrets, validate_timeouts

django_stubs_ext.monkeypatch()  # lets admin.ModelAdmin[Model] etc. be subscripted at run time

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

# ---------------------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"] if DEBUG else [])
_config_errors = validate_production(debug=DEBUG, secret_key=SECRET_KEY, allowed_hosts=ALLOWED_HOSTS)
if DEBUG and not SECRET_KEY:
    SECRET_KEY = "django-insecure-development-only-key-never-used-in-production"  # noqa: S105 - DEBUG only

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"
AUTH_USER_MODEL = "users.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",  # BRIN indexes on the analytics partitions
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from the image (/api/docs/)
    "waffle",  # feature switches (kernel.flags)
    "kernel",
    "users",
    "billing",
    "llm",
    "analytics",
    "chat",
    # startcontext: contexts above
]

MIDDLEWARE = [
    "kernel.middleware.RequestIdMiddleware",
    "kernel.middleware.HealthProbeMiddleware",  # before anything reads the Host header
    "kernel.middleware.HeaderCheckMiddleware",
    "kernel.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "kernel.middleware.StaticFilesMiddleware",  # WhiteNoise, async-capable (an SSE stream holds no thread)
    "kernel.middleware.QueryBudgetMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# ---------------------------------------------------------------------------------------
# Security: safe by default, relaxed only by DEBUG.
# https://docs.djangoproject.com/en/6.1/howto/deployment/checklist/
# ---------------------------------------------------------------------------------------
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 3600)
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "kernel.errors.csrf_failure"  # JSON under /api/, Django's page in the admin

# ---------------------------------------------------------------------------------------
# Database
# Under ASGI every request may run on a new thread, so persistent per-thread
# connections leak: the ASGI entry point sets SWITCHYARD_ASGI=1 and we take
# connections from psycopg's pool instead (CONN_MAX_AGE=0). Worker pools do the same.
# https://docs.djangoproject.com/en/6.1/ref/databases/#connection-pool
# Behind PgBouncer in transaction mode (DATABASE_POOLED=true) server-side cursors and
# connection-level options do not survive, so both are switched off; set
# statement_timeout on the database role instead (docs/operations.md).
# ---------------------------------------------------------------------------------------
DATABASE_POOLED = env.bool("DATABASE_POOLED", default=False)
STATEMENT_TIMEOUT_MS = env.int("DATABASE_STATEMENT_TIMEOUT_MS", default=30_000)
_ASGI = os.environ.get("SWITCHYARD_ASGI") == "1"
# Worker pools run hundreds of calls on threads of one process (bin/switchyard sets
# SWITCHYARD_DB_POOL=1): a persistent connection per thread would be hundreds of
# connections, so they share a small pool too and hand it back while a provider answers.
_POOLED_PROCESS = _ASGI or os.environ.get("SWITCHYARD_DB_POOL") == "1"


def _database(url: str) -> dict[str, object]:
    db: dict[str, object] = env.db_url_config(url)
    options: dict[str, object] = dict(db.get("OPTIONS", {}))  # type: ignore[call-overload]
    if DATABASE_POOLED:
        db["CONN_MAX_AGE"] = 0
        db["DISABLE_SERVER_SIDE_CURSORS"] = True
    else:
        options["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        if _POOLED_PROCESS:
            db["CONN_MAX_AGE"] = 0
            options["pool"] = {
                "min_size": env.int("DATABASE_POOL_MIN", default=1),
                "max_size": env.int("DATABASE_POOL_MAX", default=8),
                "timeout": env.int("DATABASE_POOL_TIMEOUT", default=10),
            }
        else:
            db["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=600)
            db["CONN_HEALTH_CHECKS"] = True
    # The role on every connection (bin/switchyard exports it): /metrics counts them per role.
    options["application_name"] = f"switchyard-{os.environ.get('SWITCHYARD_ROLE') or 'app'}"[:63]
    db["OPTIONS"] = options
    return db


DATABASES = {"default": _database(env.str("DATABASE_URL", default="postgres:///switchyard"))}
DATABASE_REPLICAS: list[str] = []
for _index, _url in enumerate(env.list("DATABASE_REPLICA_URLS", default=[])):
    _alias = f"replica_{_index}"
    DATABASES[_alias] = _database(_url)
    DATABASES[_alias]["TEST"] = {"MIRROR": "default"}
    DATABASE_REPLICAS.append(_alias)
DATABASE_ROUTERS = ["kernel.db.ReplicaRouter"]

# ---------------------------------------------------------------------------------------
# Redis: cache, throttles, SSE streams, conversation context. Never the source of truth.
# ---------------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="sy"),
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": 1,
            "SOCKET_TIMEOUT": 1,
            # One pool per process, shared by its threads: 300 in worker-default. redis-py 8
            # caps a pool at 100 connections and fails the 101st command at once ("Too many
            # connections"); a blocking pool makes it wait for a free one instead, at most
            # REDIS_POOL_TIMEOUT_S: short, like the socket timeout, so the keeper's steps
            # and /readyz still fail fast when Redis is slow (docs/decisions/stream-deltas.md).
            "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
            "CONNECTION_POOL_KWARGS": {
                "max_connections": env.int("REDIS_POOL_MAX", default=100),
                "timeout": env.float("REDIS_POOL_TIMEOUT_S", default=1.0),
            },
        },
    }
}

# ---------------------------------------------------------------------------------------
# Celery. Worker policy of SPEC §2; queues and routes in config.celery.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
# ---------------------------------------------------------------------------------------
LLM_HTTP_TIMEOUT = env.float("LLM_HTTP_TIMEOUT", default=60.0)
TASK_SOFT_TIME_LIMIT = env.int("TASK_SOFT_TIME_LIMIT", default=90)
TASK_TIME_LIMIT = env.int("TASK_TIME_LIMIT", default=120)
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=300)
# A short lease renewed by the worker's keeper thread while the call runs: a dead
# worker's task is free again within a lease, and the sweeper requeues it (SPEC §5).
TASK_LEASE_SECONDS = env.int("TASK_LEASE_SECONDS", default=30)
TASK_HEARTBEAT_S = env.float("TASK_HEARTBEAT_S", default=10.0)
TASK_MAX_ATTEMPTS = env.int("TASK_MAX_ATTEMPTS", default=5)
TASK_RETRY_BACKOFF_S = env.float("TASK_RETRY_BACKOFF_S", default=2.0)
TASK_RETRY_BACKOFF_MAX_S = env.float("TASK_RETRY_BACKOFF_MAX_S", default=300.0)
# A pending task older than this fails as expired (no consumer, or a backlog that never
# drains): no task, and no budget reservation, stays open forever.
TASK_PENDING_EXPIRY_S = env.int("TASK_PENDING_EXPIRY_S", default=6 * 3600)
_config_errors += validate_timeouts(
    Timeouts(
        provider_http=LLM_HTTP_TIMEOUT,
        soft_limit=TASK_SOFT_TIME_LIMIT,
        hard_limit=TASK_TIME_LIMIT,
        visibility=CELERY_VISIBILITY_TIMEOUT,
        lease=TASK_LEASE_SECONDS,
        heartbeat=TASK_HEARTBEAT_S,
    )
)
# A call that outlives the hard limit is failed and its thread abandoned; this many
# abandoned threads and the worker exits for its supervisor to restart it.
WORKER_MAX_ABANDONED_CALLS = env.int("WORKER_MAX_ABANDONED_CALLS", default=8)

# The dispatch gate (llm.services.dispatch, docs/decisions/llm-scale.md): the broker
# holds at most the live workers' slots (+ headroom) per queue; the rest wait in
# PostgreSQL and are handed out by fair share across organizations.
DISPATCH_HEADROOM = env.int("DISPATCH_HEADROOM", default=2)
DISPATCH_FALLBACK_WINDOW = env.int("DISPATCH_FALLBACK_WINDOW", default=64)  # Redis unreachable
DISPATCH_TICK_S = env.float("DISPATCH_TICK_S", default=1.0)
# Calls in flight per organization and queue while other organizations wait (0: none,
# fair share only). Per-organization overrides: DispatchPolicy in the admin.
DISPATCH_ORG_MAX_IN_FLIGHT = env.int("DISPATCH_ORG_MAX_IN_FLIGHT", default=0)

# ---------------------------------------------------------------------------------------
# Email (users.emails: sent from the priority pool, never in a request). EMAIL_URL picks
# the backend: consolemail:// (default: printed by the worker), smtp+tls://user:pass@host:587,
# memorymail:// (tests). https://django-environ.readthedocs.io/en/latest/types.html#environ-env-email-url
# ---------------------------------------------------------------------------------------
_email = env.email_url("EMAIL_URL", default="consolemail://")
_mailer_options: dict[str, object] = {}
if _email["EMAIL_BACKEND"].endswith(".smtp.EmailBackend"):
    _mailer_options = {
        "host": _email.get("EMAIL_HOST", "localhost"),
        "port": _email.get("EMAIL_PORT", 25),
        "username": _email.get("EMAIL_HOST_USER", ""),
        "password": _email.get("EMAIL_HOST_PASSWORD", ""),
        "use_tls": _email.get("EMAIL_USE_TLS", False),
        "use_ssl": _email.get("EMAIL_USE_SSL", False),
        "timeout": env.int("EMAIL_TIMEOUT", default=10),  # well inside TASK_TIME_LIMIT
    }
elif "EMAIL_FILE_PATH" in _email:
    _mailer_options = {"file_path": _email["EMAIL_FILE_PATH"]}
MAILERS = {"default": {"BACKEND": _email["EMAIL_BACKEND"], "OPTIONS": _mailer_options}}
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Switchyard <no-reply@switchyard.invalid>")

# Shadow reads (kernel.shadow): the share of calls that also run a read's new query path.
SHADOW_READ_RATE = env.float("SHADOW_READ_RATE", default=0.01)
if not 0 <= SHADOW_READ_RATE <= 1:
    _config_errors.append(f"SHADOW_READ_RATE must be between 0 and 1 (got {SHADOW_READ_RATE})")

# django.tasks (@task / .enqueue()) on the Celery pools, results in PostgreSQL
# (kernel.tasks_backend, docs/decisions/django-tasks.md).
TASKS = {"default": {"BACKEND": "kernel.tasks_backend.CeleryPoolBackend", "QUEUES": ["priority", "default", "low"]}}
TASK_RESULT_RETENTION_DAYS = env.int("TASK_RESULT_RETENTION_DAYS", default=7)

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = TASK_SOFT_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = TASK_TIME_LIMIT
CELERY_WORKER_MAX_TASKS_PER_CHILD = env.int("CELERY_WORKER_MAX_TASKS_PER_CHILD", default=200)
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env.int("CELERY_WORKER_MAX_MEMORY_PER_CHILD", default=512_000)  # KiB
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "socket_timeout": 2,
    "socket_connect_timeout": 2,
    # Publishing (from a request) gives up after one quick retry instead of the default
    # back-off of several seconds; the sweeper and the outbox relay retry later.
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A publish during a broker outage must fail fast (the sweeper re-dispatches later)
# instead of blocking the request that tried it.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's task events (task-sent, -received, -started, -succeeded) feed Flower and nothing
# else here. Each is one more publish to the broker per task and state (about a fifth of a
# worker's CPU per task, and a second publish per submit in web: docs/decisions/submit-path.md),
# so they are off unless asked for. Flower turns the workers' events on by itself while
# it runs (its enable_events broadcast); CELERY_TASK_EVENTS=true sends them always.
TASK_EVENTS = env.bool("CELERY_TASK_EVENTS", default=False)
CELERY_WORKER_SEND_TASK_EVENTS = TASK_EVENTS
CELERY_TASK_SEND_SENT_EVENT = TASK_EVENTS
CELERY_BEAT_SCHEDULE_FILENAME = env.str("CELERY_BEAT_SCHEDULE_FILENAME", default="/tmp/celerybeat-schedule")  # noqa: S108
FLOWER_BASIC_AUTH = env.str("FLOWER_BASIC_AUTH", default="")

# ---------------------------------------------------------------------------------------
# LLM providers (SPEC §6)
# ---------------------------------------------------------------------------------------
LLM_PROVIDER = env.str("LLM_PROVIDER", default="fake")
LLM_BASE_URL = env.str("LLM_BASE_URL", default="")
LLM_DEFAULT_MODEL = env.str("LLM_DEFAULT_MODEL", default="fake-small")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
FAKE_LLM_LATENCY_MS = env.int("FAKE_LLM_LATENCY_MS", default=800)
if LLM_PROVIDER not in {"fake", "anthropic", "openai", "openai_compatible"}:
    _config_errors.append(f"LLM_PROVIDER must be fake, anthropic, openai or openai_compatible (got {LLM_PROVIDER!r})")
if LLM_PROVIDER == "anthropic" and not ANTHROPIC_API_KEY:
    _config_errors.append("ANTHROPIC_API_KEY is required when LLM_PROVIDER=anthropic")
if LLM_PROVIDER == "openai" and not OPENAI_API_KEY:
    _config_errors.append("OPENAI_API_KEY is required when LLM_PROVIDER=openai")
if LLM_PROVIDER == "openai_compatible" and not LLM_BASE_URL:
    _config_errors.append("LLM_BASE_URL is required when LLM_PROVIDER=openai_compatible")

RESPONSE_CACHE_TTL_S = env.int("RESPONSE_CACHE_TTL_S", default=24 * 3600)
SSE_HEARTBEAT_S = env.float("SSE_HEARTBEAT_S", default=15.0)
SSE_STREAM_TTL_S = env.int("SSE_STREAM_TTL_S", default=3600)
# A streamed answer's chunks after the first wait this long at most, then go out joined
# (one XADD per task per interval, not per chunk; 0: each at once). llm.deltas.
SSE_DELTA_FLUSH_S = env.float("SSE_DELTA_FLUSH_S", default=0.05)
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=False)
# Newest first: sign with the first, also with the second during a rotation (docs/webhooks.md).
# WEBHOOK_SIGNING_SECRET (one secret) is still read when the list is not set.
WEBHOOK_SIGNING_SECRETS: list[str] = env.list("WEBHOOK_SIGNING_SECRETS", default=[]) or [
    secret for secret in [env.str("WEBHOOK_SIGNING_SECRET", default="")] if secret
]
WEBHOOK_TIMEOUT_S = env.float("WEBHOOK_TIMEOUT_S", default=10.0)
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=6)
WEBHOOK_RETRY_BACKOFF_S = env.float("WEBHOOK_RETRY_BACKOFF_S", default=10.0)
WEBHOOK_RETRY_BACKOFF_MAX_S = env.float("WEBHOOK_RETRY_BACKOFF_MAX_S", default=3600.0)
# /metrics answers only `Authorization: Bearer $METRICS_TOKEN`; required when DEBUG is off.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
_config_errors += validate_secrets(
    debug=DEBUG, secret_key=SECRET_KEY, webhook_secrets=WEBHOOK_SIGNING_SECRETS, metrics_token=METRICS_TOKEN
)
if DEBUG and not WEBHOOK_SIGNING_SECRETS:
    WEBHOOK_SIGNING_SECRETS = [f"webhook:{SECRET_KEY}"]  # development only: DEBUG is on
# An event delivery (one subscriber's message) not confirmed by its handler within this is
# sent again, each one less often (a broker restarted empty loses messages, not events).
OUTBOX_REDELIVER_AFTER_S = env.float("OUTBOX_REDELIVER_AFTER_S", default=300.0)
# The relay task waits this long before it selects, so the events of that moment go out
# as one batch (kernel.services.outbox_relay_drain): subscribers see an event this much later.
OUTBOX_RELAY_GATHER_S = env.float("OUTBOX_RELAY_GATHER_S", default=0.2)
SWEEPER_BATCH_SIZE = env.int("SWEEPER_BATCH_SIZE", default=500)
SWEEPER_INTERVAL_S = env.float("SWEEPER_INTERVAL_S", default=30.0)
# A message sent but not started within this is sent again (each task less often): with the
# gate the broker holds about one pool's worth, so half a minute is long enough.
SWEEPER_PENDING_GRACE_S = env.int("SWEEPER_PENDING_GRACE_S", default=30)

# ---------------------------------------------------------------------------------------
# Billing
# ---------------------------------------------------------------------------------------
DEFAULT_MONTHLY_BUDGET_USD = env.str("DEFAULT_MONTHLY_BUDGET_USD", default="100")

# ---------------------------------------------------------------------------------------
# Analytics (docs/decisions/analytics.md): monthly partitions kept by beat, summaries
# cached per organization, CSV exports written into the "analytics_exports" storage.
# ---------------------------------------------------------------------------------------
ANALYTICS_RETENTION_MONTHS = env.int("ANALYTICS_RETENTION_MONTHS", default=13)
ANALYTICS_PARTITIONS_AHEAD = env.int("ANALYTICS_PARTITIONS_AHEAD", default=3)
ANALYTICS_SUMMARY_TTL_S = env.int("ANALYTICS_SUMMARY_TTL_S", default=300)
ANALYTICS_EXPORT_TTL_S = env.int("ANALYTICS_EXPORT_TTL_S", default=7 * 24 * 3600)
ANALYTICS_EXPORT_CHUNK_ROWS = env.int("ANALYTICS_EXPORT_CHUNK_ROWS", default=2000)
# Any Django storage: FileSystemStorage by default; an S3-compatible bucket with
# ANALYTICS_EXPORT_STORAGE=storages.backends.s3.S3Storage (install django-storages[s3]
# and set its AWS_* settings). https://django-storages.readthedocs.io/en/latest/backends/amazon-S3.html
_export_storage = env.str("ANALYTICS_EXPORT_STORAGE", default="django.core.files.storage.FileSystemStorage")
STORAGES["analytics_exports"] = {
    "BACKEND": _export_storage,
    "OPTIONS": {"location": env.str("ANALYTICS_EXPORT_ROOT", default=str(BASE_DIR / "var" / "exports"))}
    if _export_storage.endswith("FileSystemStorage")
    else {},
}
if ANALYTICS_RETENTION_MONTHS < 1:
    _config_errors.append("ANALYTICS_RETENTION_MONTHS must be at least 1")
LOGIN_URL = "dashboard-login"  # the dashboard's session login (staff and members)
LOGIN_REDIRECT_URL = "dashboard"

# ---------------------------------------------------------------------------------------
# HTTP API
# ---------------------------------------------------------------------------------------
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=64 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
# Rate limits (docs/decisions/rate-limits.md): per RATE_LIMIT_WINDOW_S (a minute), 0 = unlimited;
# an organization's or a key's override in the admin replaces the default.
# API_THROTTLE_RATE ("600/min"), the per-key rate of before, still sets the key default.


def _per_minute(rate: str, default: int) -> int:
    count, _, period = rate.partition("/")
    seconds = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}.get(period)
    return max(1, int(count) * 60 // seconds) if count.isdigit() and int(count) > 0 and seconds else default


RATE_LIMIT_WINDOW_S = env.int("RATE_LIMIT_WINDOW_S", default=60)
_legacy_key_rate = _per_minute(env.str("API_THROTTLE_RATE", default=""), 600)
KEY_REQUESTS_PER_MINUTE = env.int("KEY_REQUESTS_PER_MINUTE", default=_legacy_key_rate)
ORG_REQUESTS_PER_MINUTE = env.int("ORG_REQUESTS_PER_MINUTE", default=3000)
KEY_TOKENS_PER_MINUTE = env.int("KEY_TOKENS_PER_MINUTE", default=1_000_000)
ORG_TOKENS_PER_MINUTE = env.int("ORG_TOKENS_PER_MINUTE", default=2_000_000)
AUTH_FAILURES_PER_MINUTE = env.int("AUTH_FAILURES_PER_MINUTE", default=60)  # per client address
API_TRUSTED_PROXIES = env.int("API_TRUSTED_PROXIES", default=0)  # X-Forwarded-For hops to trust
# Per provider model: "model=calls_in_flight:tokens_per_minute,..." (0 or absent = unlimited).
LLM_MODEL_LIMITS = env.str("LLM_MODEL_LIMITS", default="")
LLM_SLOT_TTL_S = env.float("LLM_SLOT_TTL_S", default=30.0)  # a dead holder's slot frees after this
# How long a worker thread waits for a model's slot (or a 429 back-off) before the task
# goes back to the gate, its attempt not spent.
LLM_SLOT_WAIT_S = env.float("LLM_SLOT_WAIT_S", default=5.0)
# Circuit breaker per provider model (llm.breaker): open after this many outages in the
# window, for the cool-down; then one probe call decides.
LLM_BREAKER_FAILURES = env.int("LLM_BREAKER_FAILURES", default=5)
LLM_BREAKER_WINDOW_S = env.int("LLM_BREAKER_WINDOW_S", default=60)
LLM_BREAKER_COOLDOWN_S = env.int("LLM_BREAKER_COOLDOWN_S", default=30)
# Conversations (chat): the context of the next turn is cached this long, refreshed on use.
CHAT_CONTEXT_TTL_S = env.int("CHAT_CONTEXT_TTL_S", default=30 * 60)
CHAT_DEFAULT_CONTEXT_TOKENS = env.int("CHAT_DEFAULT_CONTEXT_TOKENS", default=8000)
for _name in ("KEY_REQUESTS_PER_MINUTE", "ORG_REQUESTS_PER_MINUTE", "KEY_TOKENS_PER_MINUTE", "ORG_TOKENS_PER_MINUTE"):
    if globals()[_name] < 0:
        _config_errors.append(f"{_name} must be 0 (unlimited) or positive")
if RATE_LIMIT_WINDOW_S < 1:
    _config_errors.append("RATE_LIMIT_WINDOW_S must be at least 1")
if not re.fullmatch(r"\s*([^=,\s]+\s*=\s*\d+(:\d+)?\s*(,\s*|$))*", LLM_MODEL_LIMITS):
    _config_errors.append(f"LLM_MODEL_LIMITS must read model=calls[:tokens_per_minute],... (got {LLM_MODEL_LIMITS!r})")
if LLM_BREAKER_FAILURES < 1 or LLM_BREAKER_WINDOW_S < 1 or LLM_BREAKER_COOLDOWN_S < 1:
    _config_errors.append("LLM_BREAKER_FAILURES, LLM_BREAKER_WINDOW_S and LLM_BREAKER_COOLDOWN_S must be at least 1")
# The wait runs inside the call's deadlines: a wait that outlasts the soft limit would
# time the task out instead of handing it back to the gate, and past the hard limit the
# call is abandoned (and enough of them stop the worker).
if LLM_SLOT_WAIT_S >= TASK_SOFT_TIME_LIMIT:
    _config_errors.append(
        f"LLM_SLOT_WAIT_S ({LLM_SLOT_WAIT_S}) must be less than TASK_SOFT_TIME_LIMIT ({TASK_SOFT_TIME_LIMIT})"
    )
if LLM_SLOT_TTL_S < 3:
    _config_errors.append("LLM_SLOT_TTL_S must be at least 3 (holders renew every third of it)")
QUERY_BUDGET_DEFAULT = env.int("QUERY_BUDGET_DEFAULT", default=25)
# Benchmark-only baseline views under /bench/ (config.bench_views); never on in production.
BENCH_VIEWS = env.bool("BENCH_VIEWS", default=False)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["users.api.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["users.api.throttling.ApiKeyRateThrottle"],
    "DEFAULT_PARSER_CLASSES": ["kernel.parsers.JSONParser"],  # NUL, surrogates, depth
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "kernel.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Switchyard API",
    "DESCRIPTION": "Accept LLM work in milliseconds, run it on worker pools, meter every token.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "APPEND_COMPONENTS": {
        "securitySchemes": {"ApiKey": {"type": "http", "scheme": "bearer", "description": "Switchyard API key"}}
    },
    "SECURITY": [{"ApiKey": []}],
    "ENUM_NAME_OVERRIDES": {
        "PriorityEnum": ["high", "normal", "low"],  # tasks, assistants and conversations share it
        "StatusEnum": ["pending", "processing", "done", "failed", "cancelled"],  # an AI task's
        "TurnStatusEnum": ["running", "done", "failed", "cancelled"],
    },
    # Swagger UI and its favicon from drf-spectacular-sidecar's static files, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "llm.api.schema.add_event_stream_path",  # the SSE view is not a DRF view
    ],
}

# ---------------------------------------------------------------------------------------
# Logging: structlog over the standard library; JSON in production.
# ---------------------------------------------------------------------------------------
LOG_FORMAT = env.str("LOG_FORMAT", default="console" if DEBUG else "json")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
if LOG_FORMAT not in {"json", "console"}:
    _config_errors.append(f"LOG_FORMAT must be json or console (got {LOG_FORMAT!r})")
LOGGING_CONFIG = None  # kernel.logging configures logging once, below.
# Errors to Sentry when SENTRY_DSN is set, in every role, tagged with request and task ids
# (kernel.sentry). Off otherwise.
SENTRY_DSN = env.str("SENTRY_DSN", default="")
SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", default="development" if DEBUG else "production")
SENTRY_RELEASE = env.str("SENTRY_RELEASE", default="")
SENTRY_TRACES_SAMPLE_RATE = env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0)
if not 0.0 <= SENTRY_TRACES_SAMPLE_RATE <= 1.0:
    _config_errors.append("SENTRY_TRACES_SAMPLE_RATE must be between 0 and 1")

# Traces by OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (a collector's base URL; spans go to
# <endpoint>/v1/traces) is set, in every role (kernel.tracing, started by KernelConfig.ready;
# docs/operations.md#traces). Off otherwise: no instrumentation at all. The sample rate is
# that of traces begun here (a request, a beat message); a task continues its sender's choice.
OTEL_EXPORTER_OTLP_ENDPOINT = env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
OTEL_SERVICE_NAME = env.str("OTEL_SERVICE_NAME", default="switchyard")
OTEL_TRACES_SAMPLE_RATE = env.float("OTEL_TRACES_SAMPLE_RATE", default=1.0)
if not 0.0 <= OTEL_TRACES_SAMPLE_RATE <= 1.0:
    _config_errors.append("OTEL_TRACES_SAMPLE_RATE must be between 0 and 1")
if OTEL_EXPORTER_OTLP_ENDPOINT and not OTEL_EXPORTER_OTLP_ENDPOINT.startswith(("http://", "https://")):
    _config_errors.append("OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL (OTLP/HTTP)")

fail_fast(_config_errors)

from kernel.logging import configure_logging

configure_logging(fmt=LOG_FORMAT, level=LOG_LEVEL)

from kernel import sentry

sentry.init(
    dsn=SENTRY_DSN,
    environment=SENTRY_ENVIRONMENT,
    release=SENTRY_RELEASE,
    traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
)
