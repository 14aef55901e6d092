"""Configuration from the environment (SPEC §3): broken or incomplete production settings
stop the process with one clear line; the database connection policy follows the role.

Start-up behaviour is tested in subprocesses (a settings module runs once per process)
with an environment built from scratch, so the test settings cannot leak into them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from config.env import Timeouts, fail_fast, validate_production, validate_timeouts

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "switchyard: configuration error:"
GOOD_SECRET = secrets.token_urlsafe(50)
# A complete production environment; each test changes one thing.
PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "DEBUG": "false",
    "SECRET_KEY": GOOD_SECRET,
    "WEBHOOK_SIGNING_SECRETS": secrets.token_urlsafe(40),
    "METRICS_TOKEN": secrets.token_urlsafe(40),
    "ALLOWED_HOSTS": "api.example.com",
    "LLM_PROVIDER": "fake",
    "LOG_FORMAT": "json",
    "EMAIL_URL": "smtp+tls://mailer:mail-password@smtp.example.com:587",  # check --deploy refuses the console
}


def clean_env(**values: str) -> dict[str, str]:
    """Only what a process needs to start; nothing from the test settings."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    env["PYTHONPATH"] = f"{ROOT / 'src'}:{ROOT}"
    env.update(values)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- validation functions ---------------------------------------------------------------

# The production defaults (config.settings): a 30 s lease renewed every 10 s.
GOOD_TIMEOUTS = Timeouts(provider_http=60, soft_limit=90, hard_limit=120, visibility=300, lease=30, heartbeat=10)


def test_nested_timeouts_are_valid() -> None:
    assert validate_timeouts(GOOD_TIMEOUTS) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"soft_limit": 200, "hard_limit": 100}, "TASK_SOFT_TIME_LIMIT (200) must be less than TASK_TIME_LIMIT (100)"),
        ({"provider_http": 90.0}, "LLM_HTTP_TIMEOUT (90.0) must be less than TASK_SOFT_TIME_LIMIT (90)"),
        ({"visibility": 120}, "TASK_TIME_LIMIT (120) must be less than CELERY_VISIBILITY_TIMEOUT (120)"),
        ({"lease": 20}, "TASK_LEASE_SECONDS (20) must be more than twice TASK_HEARTBEAT_S (10)"),
        ({"heartbeat": 0}, "TASK_HEARTBEAT_S must be positive (got 0)"),
        ({"provider_http": 0}, "LLM_HTTP_TIMEOUT must be positive (got 0)"),
    ],
)
def test_each_broken_link_of_the_timeout_chain_is_named(changes: dict[str, Any], message: str) -> None:
    assert message in validate_timeouts(replace(GOOD_TIMEOUTS, **changes))


def test_development_needs_no_secret_or_hosts() -> None:
    assert validate_production(debug=True, secret_key="", allowed_hosts=[]) == []


def test_production_requires_a_long_secret_and_hosts() -> None:
    assert validate_production(debug=False, secret_key=GOOD_SECRET, allowed_hosts=["api.example.com"]) == []
    assert validate_production(debug=False, secret_key="", allowed_hosts=["a"]) == [
        "SECRET_KEY is required when DEBUG is off"
    ]
    assert validate_production(debug=False, secret_key="too-short", allowed_hosts=[]) == [
        "SECRET_KEY must be at least 32 characters when DEBUG is off",
        "ALLOWED_HOSTS is required when DEBUG is off",
    ]


def test_fail_fast_writes_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    fail_fast([])  # nothing wrong: returns
    with pytest.raises(SystemExit) as exit_info:
        fail_fast(["A is wrong", "B is wrong"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"{PREFIX} A is wrong; B is wrong\n"


# -- start-up ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"SECRET_KEY": ""}, "SECRET_KEY is required when DEBUG is off", id="no-secret-key"),
        pytest.param({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS is required when DEBUG is off", id="no-hosts"),
        pytest.param(
            {"TASK_SOFT_TIME_LIMIT": "200", "TASK_TIME_LIMIT": "100"},
            "TASK_SOFT_TIME_LIMIT (200) must be less than TASK_TIME_LIMIT (100)",
            id="timeouts-out-of-order",
        ),
        pytest.param(
            {"CELERY_VISIBILITY_TIMEOUT": "60"},
            "TASK_TIME_LIMIT (120) must be less than CELERY_VISIBILITY_TIMEOUT (60)",
            id="visibility-below-hard-limit",
        ),
        pytest.param(
            {"LLM_HTTP_TIMEOUT": "2", "TASK_SOFT_TIME_LIMIT": "4", "TASK_TIME_LIMIT": "6", "LLM_SLOT_WAIT_S": "5"},
            "LLM_SLOT_WAIT_S (5.0) must be less than TASK_SOFT_TIME_LIMIT (4)",
            id="slot-wait-outlasts-soft-limit",
        ),
        pytest.param({"LLM_PROVIDER": "bogus"}, "LLM_PROVIDER must be fake, anthropic, openai", id="unknown-provider"),
        pytest.param(
            {"LLM_PROVIDER": "anthropic"}, "ANTHROPIC_API_KEY is required when LLM_PROVIDER=anthropic", id="no-anth-key"
        ),
        pytest.param({"LLM_PROVIDER": "openai"}, "OPENAI_API_KEY is required", id="no-openai-key"),
        pytest.param({"LLM_PROVIDER": "openai_compatible"}, "LLM_BASE_URL is required", id="no-base-url"),
        pytest.param({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be json or console", id="bad-log-format"),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL",
            id="otlp-endpoint-without-scheme",
        ),
        pytest.param(
            {"OTEL_TRACES_SAMPLE_RATE": "2"}, "OTEL_TRACES_SAMPLE_RATE must be between 0 and 1", id="trace-rate"
        ),
        pytest.param(
            {"WEBHOOK_SIGNING_SECRETS": ""}, "WEBHOOK_SIGNING_SECRETS is required when DEBUG is off", id="no-webhook"
        ),
        pytest.param(
            {"WEBHOOK_SIGNING_SECRETS": GOOD_SECRET},
            "WEBHOOK_SIGNING_SECRETS must differ from SECRET_KEY",
            id="webhook-secret-is-secret-key",
        ),
        pytest.param(
            {"WEBHOOK_SIGNING_SECRETS": f"{secrets.token_urlsafe(40)},short"},
            "each WEBHOOK_SIGNING_SECRETS entry must be at least 32 characters",
            id="short-previous-webhook-secret",
        ),
        pytest.param({"METRICS_TOKEN": ""}, "METRICS_TOKEN is required when DEBUG is off", id="no-metrics-token"),
        pytest.param(
            {"METRICS_TOKEN": "scrape-me"}, "METRICS_TOKEN must be at least 32 characters", id="short-metrics-token"
        ),
    ],
)
def test_broken_configuration_stops_with_one_line(changes: dict[str, str], expected: str) -> None:
    result = manage("check", env=clean_env(**{**PRODUCTION, **changes}))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX)
    assert expected in lines[0]
    assert result.stdout == ""


def test_every_problem_is_named_on_the_same_line_and_no_secret_is_echoed() -> None:
    short_secret = "s3cr3t-but-short"
    env = clean_env(**{**PRODUCTION, "SECRET_KEY": short_secret, "LLM_PROVIDER": "bogus", "TASK_TIME_LIMIT": "10"})
    result = manage("check", env=env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "SECRET_KEY must be at least 32 characters" in line
    assert "LLM_PROVIDER must be" in line
    assert "TASK_SOFT_TIME_LIMIT (90) must be less than TASK_TIME_LIMIT (10)" in line
    assert short_secret not in line


def test_secrets_are_not_echoed_when_refused() -> None:
    short_webhook, short_token = "webhook-s3cr3t", "metrics-s3cr3t"
    env = clean_env(**{**PRODUCTION, "WEBHOOK_SIGNING_SECRETS": short_webhook, "METRICS_TOKEN": short_token})
    result = manage("check", env=env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "WEBHOOK_SIGNING_SECRETS" in line and "METRICS_TOKEN" in line
    assert short_webhook not in line and short_token not in line


def test_a_single_webhook_secret_is_still_read() -> None:
    single = secrets.token_urlsafe(40)
    env = clean_env(**{**PRODUCTION, "WEBHOOK_SIGNING_SECRETS": "", "WEBHOOK_SIGNING_SECRET": single})
    assert manage("check", env=env).returncode == 0
    code = "from django.conf import settings as s; print(s.WEBHOOK_SIGNING_SECRETS)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == repr([single]), result.stderr


def test_complete_production_environment_passes_the_deploy_checks() -> None:
    result = manage("check", "--deploy", "--fail-level", "ERROR", env=clean_env(**PRODUCTION))
    assert result.returncode == 0, result.stderr
    assert PREFIX not in result.stderr
    # The key is long and random; what remains are choices made at the proxy (TLS, HSTS).
    assert "security.W009" not in result.stderr


def test_debug_runs_without_production_settings() -> None:
    result = manage("check", env=clean_env(DJANGO_SETTINGS_MODULE="config.settings", DEBUG="true"))
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_providers_with_their_keys_are_accepted() -> None:
    env = clean_env(**{**PRODUCTION, "LLM_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "sk-ant-test"})
    assert manage("check", env=env).returncode == 0


# -- database connection policy ---------------------------------------------------------


def database_settings(env: dict[str, str] | None = None, **values: str) -> dict[str, Any]:
    """``DATABASES`` (and a few neighbours) as a fresh process computes them; by default
    under the test settings."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k not in {"SWITCHYARD_ASGI", "DATABASE_POOLED"}}
        env.update(PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", DJANGO_SETTINGS_MODULE="config.settings_test")
    env = {**env, **values}
    code = (
        "import json\n"
        "from django.conf import settings as s\n"
        "print(json.dumps({'DATABASES': s.DATABASES, 'REPLICAS': s.DATABASE_REPLICAS,"
        " 'BROKER': s.CELERY_BROKER_URL, 'REDIS': s.REDIS_URL}, default=str))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.django_db
def test_every_connection_carries_a_statement_timeout() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT setting, unit FROM pg_settings WHERE name = 'statement_timeout'")
        value, unit = cursor.fetchone()
    assert (int(value), unit) == (settings.STATEMENT_TIMEOUT_MS, "ms")
    assert settings.STATEMENT_TIMEOUT_MS > 0


def test_worker_pools_share_a_small_pool_of_connections() -> None:
    """bin/switchyard starts every worker with SWITCHYARD_DB_POOL=1: hundreds of threads
    share a few connections (the default pool holds at most 8)."""
    default = database_settings(SWITCHYARD_DB_POOL="1")["DATABASES"]["default"]
    assert default["CONN_MAX_AGE"] == 0
    assert default["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 8, "timeout": 10}
    assert "statement_timeout=" in default["OPTIONS"]["options"]


def test_production_defaults_give_a_short_renewed_lease_inside_the_timeout_chain() -> None:
    """The defaults a user gets start (the chain is checked at start-up) and make a dead
    worker's task free again within 30 s: the SIGKILL scenario relies on it."""
    code = (
        "import json\nfrom django.conf import settings as s\n"
        "print(json.dumps([s.LLM_HTTP_TIMEOUT, s.TASK_SOFT_TIME_LIMIT, s.TASK_TIME_LIMIT,"
        " s.CELERY_VISIBILITY_TIMEOUT, s.TASK_LEASE_SECONDS, s.TASK_HEARTBEAT_S, s.SWEEPER_INTERVAL_S]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(**PRODUCTION),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    http, soft, hard, visibility, lease, heartbeat, sweep = json.loads(result.stdout.strip().splitlines()[-1])
    assert http < soft < hard < visibility
    assert (lease, heartbeat) == (30, 10.0) and lease > 2 * heartbeat
    assert lease + sweep <= 60  # lease expiry plus one sweep: well inside SPEC's 90 s


def test_wsgi_and_prefork_processes_keep_persistent_connections() -> None:
    default = database_settings()["DATABASES"]["default"]
    assert default["CONN_MAX_AGE"] == 600
    assert default["CONN_HEALTH_CHECKS"] is True
    assert "pool" not in default["OPTIONS"]
    assert "statement_timeout=" in default["OPTIONS"]["options"]


def test_pgbouncer_mode_drops_persistent_connections_and_server_side_cursors() -> None:
    default = database_settings(DATABASE_POOLED="true")["DATABASES"]["default"]
    assert default["CONN_MAX_AGE"] == 0
    assert default["DISABLE_SERVER_SIDE_CURSORS"] is True
    # Connection options do not survive transaction pooling; the role carries the timeout.
    assert "options" not in default["OPTIONS"]
    assert "pool" not in default["OPTIONS"]


def test_asgi_takes_connections_from_a_pool() -> None:
    default = database_settings(SWITCHYARD_ASGI="1", DATABASE_POOL_MAX="4")["DATABASES"]["default"]
    assert default["CONN_MAX_AGE"] == 0
    assert default["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 4, "timeout": 10}
    assert "statement_timeout=" in default["OPTIONS"]["options"]


def test_replicas_are_extra_aliases_mirroring_default_in_tests() -> None:
    loaded = database_settings(DATABASE_REPLICA_URLS="postgres:///switchyard,postgres:///switchyard")
    assert loaded["REPLICAS"] == ["replica_0", "replica_1"]
    assert loaded["DATABASES"]["replica_1"]["TEST"] == {"MIRROR": "default"}


def test_redis_and_broker_defaults() -> None:
    development = clean_env(DJANGO_SETTINGS_MODULE="config.settings", DEBUG="true")
    loaded = database_settings(development)
    assert loaded["REDIS"] == loaded["BROKER"] == "redis://127.0.0.1:6379/0"
    assert loaded["DATABASES"]["default"]["NAME"] == "switchyard"
    loaded = database_settings(development, REDIS_URL="redis://cache:6379/3")
    assert loaded["BROKER"] == "redis://cache:6379/3"
