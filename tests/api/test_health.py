"""Operations endpoints (SPEC §4): /healthz, /readyz with a check per dependency, /metrics.

The outage tests start a real server (gunicorn for the web role, uvicorn for the stream
role) whose Redis or PostgreSQL address points at a closed port, and require /readyz to
answer 503 naming the failed check within a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client

from tests.support import ROOT, free_port, server_env


def test_healthz_answers_without_touching_dependencies(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_each_dependency(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "cache", "broker"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert isinstance(check["ms"], float | int)


def test_probes_are_get_only(client: Client) -> None:
    assert client.post("/readyz").status_code == 405
    assert client.post("/healthz").status_code == 405


def scrape(client: Client, token: str | None = None) -> Any:
    return client.get("/metrics", headers={"Authorization": f"Bearer {token or django_settings.METRICS_TOKEN}"})


def test_metrics_are_prometheus_text_counting_requests(client: Client) -> None:
    client.get("/healthz")
    response = scrape(client)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "# TYPE switchyard_http_requests_total counter" in text
    assert 'switchyard_http_requests_total{method="GET",route="healthz",status="200"}' in text
    assert "switchyard_http_request_seconds_bucket" in text


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer \u00e9t\u00e9", "bearer  "],
)
def test_metrics_without_the_token_are_401(client: Client, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert django_settings.METRICS_TOKEN not in response.content.decode()
    assert b"switchyard_http_requests_total" not in response.content


def test_metrics_token_is_a_bearer_token_of_its_own(client: Client, settings: Any) -> None:
    assert scrape(client).status_code == 200
    settings.METRICS_TOKEN = "another-token-of-at-least-thirty-two-characters"
    assert scrape(client, "another-token-of-at-least-thirty-two-characters").status_code == 200
    assert scrape(client, "test-metrics-token-long-enough-for-production-checks").status_code == 401


def test_metrics_are_open_only_without_a_token(client: Client, settings: Any) -> None:
    settings.METRICS_TOKEN = ""  # only DEBUG may start like this (tests/test_settings.py)
    assert client.get("/metrics").status_code == 200


# -- real servers with a dependency down ------------------------------------------------


def get(url: str, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_server(kind: str, **env_values: str) -> Iterator[str]:
    port = free_port()
    env = server_env(**env_values)
    if kind == "wsgi":
        command = ["-m", "gunicorn", "config.wsgi:application", "--workers", "1", "--bind", f"127.0.0.1:{port}"]
    else:
        command = ["-m", "uvicorn", "config.asgi:application", "--lifespan", "off", "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, *command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"{kind} server exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            try:
                if get(f"{base}/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} server did not start")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(params=["wsgi", "asgi"])
def server_without_redis(request: pytest.FixtureRequest, db: None) -> Iterator[str]:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    yield from start_server(request.param, REDIS_URL=closed, CELERY_BROKER_URL=closed)


@pytest.fixture
def server_without_database(db: None) -> Iterator[str]:
    yield from start_server("wsgi", DATABASE_URL=f"postgres://127.0.0.1:{free_port()}/switchyard")


@pytest.mark.slow
def test_readyz_is_503_within_seconds_when_redis_is_down(server_without_redis: str) -> None:
    started = time.monotonic()
    status, body = get(f"{server_without_redis}/readyz")
    elapsed = time.monotonic() - started
    assert status == 503, body
    assert body["status"] == "unavailable"
    checks = body["checks"]
    assert checks["database"]["ok"] is True
    assert checks["cache"]["ok"] is False
    assert checks["broker"]["ok"] is False
    assert elapsed < 5, f"/readyz took {elapsed:.1f}s"
    assert "redis://" not in json.dumps(body)  # names the failure, never the address
    # Liveness does not depend on Redis: the process is up, only not ready.
    assert get(f"{server_without_redis}/healthz")[0] == 200


@pytest.mark.slow
def test_readyz_is_503_when_the_database_is_down(server_without_database: str) -> None:
    started = time.monotonic()
    status, body = get(f"{server_without_database}/readyz")
    assert status == 503, body
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["cache"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    assert time.monotonic() - started < 5


@pytest.mark.django_db
def test_probes_answer_whatever_the_host_header(client: Client) -> None:
    """Orchestrators probe the pod address, which is not in ALLOWED_HOSTS."""
    assert client.get("/healthz", HTTP_HOST="10.1.2.3:8000").status_code == 200
    assert client.get("/readyz", HTTP_HOST="10.1.2.3:8000").status_code == 200
    assert client.get("/api/v1/me/", HTTP_HOST="10.1.2.3:8000").status_code == 400  # everything else is checked
