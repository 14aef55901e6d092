"""Settings for the test suite: the same module as production, with a test environment.

Each pytest-xdist worker gets its own Redis database so parallel runs never share
throttle counters, caches or broker queues.
"""

import os

_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or "0"
_redis_db = 15 - int(_worker) % 8

os.environ.setdefault("SECRET_KEY", "test-secret-key-that-is-long-enough-for-production-checks")
os.environ.setdefault("WEBHOOK_SIGNING_SECRETS", "test-webhook-signing-secret-long-enough-for-production")
os.environ.setdefault("METRICS_TOKEN", "test-metrics-token-long-enough-for-production-checks")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("DATABASE_URL", "postgres:///switchyard")
os.environ.setdefault("REDIS_URL", f"redis://127.0.0.1:6379/{_redis_db}")
# The broker gets its own database: tests flush the cache database between tests, and
# flushing the broker's would drop the queue bindings of running workers.
os.environ.setdefault("CELERY_BROKER_URL", f"redis://127.0.0.1:6379/{_redis_db - 8}")
os.environ.setdefault("CACHE_KEY_PREFIX", f"sytest{_worker}")
os.environ.setdefault("LOG_FORMAT", "console")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("FAKE_LLM_LATENCY_MS", "20")
os.environ.setdefault("API_THROTTLE_RATE", "10000/min")
os.environ.setdefault("LLM_PROVIDER", "fake")
# Short, still correctly nested time limits so failure paths finish in seconds.
os.environ.setdefault("LLM_HTTP_TIMEOUT", "2")
os.environ.setdefault("TASK_SOFT_TIME_LIMIT", "4")
os.environ.setdefault("TASK_TIME_LIMIT", "6")
os.environ.setdefault("CELERY_VISIBILITY_TIMEOUT", "10")
os.environ.setdefault("LLM_SLOT_WAIT_S", "3")  # inside the soft limit, as 5 s is inside 90 s
os.environ.setdefault("TASK_LEASE_SECONDS", "6")
os.environ.setdefault("TASK_HEARTBEAT_S", "2")
os.environ.setdefault("TASK_RETRY_BACKOFF_S", "0.2")
os.environ.setdefault("TASK_RETRY_BACKOFF_MAX_S", "2")
os.environ.setdefault("SWEEPER_PENDING_GRACE_S", "2")
os.environ.setdefault("WEBHOOK_RETRY_BACKOFF_S", "0.2")
os.environ.setdefault("WEBHOOK_RETRY_BACKOFF_MAX_S", "1")
os.environ.setdefault("EMAIL_URL", "memorymail://")  # workers too; pytest's mailoutbox is locmem
os.environ.setdefault("SHADOW_READ_RATE", "0")  # tests that shadow a read set their own rate

from config.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405
