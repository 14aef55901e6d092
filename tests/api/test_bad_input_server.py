"""Hostile input sent to a real gunicorn (gthread, as bin/switchyard runs the web role).

Chunked request bodies (``Transfer-Encoding: chunked``, no ``Content-Length``) exist only
through a real server: Django's test client always sends a length. Before the fix the
body of a chunked request was read as empty ("prompt required") whatever it held.
Raw sockets send what an HTTP client library would refuse to (control bytes in headers).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings

from llm.models import AITask
from tests.support import ROOT, free_port, server_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PROMPT = "Explain queues to a five year old."


def serve(command: Callable[[int], list[str]]) -> Iterator[str]:
    """Start ``python -m <command(port)>`` with the test environment; yield its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", *command(port)],
        cwd=ROOT,
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {process.stderr.read().decode() if process.stderr else ''}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def gunicorn(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """One gthread server for the module, on the test database."""
    with django_db_blocker.unblock():
        yield from serve(
            lambda port: [
                *("gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}"),
                *("--worker-class", "gthread", "--workers", "1", "--threads", "4"),
            ]
        )


@pytest.fixture(scope="module")
def uvicorn(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """The stream role's server: the same URLconf over ASGI."""
    with django_db_blocker.unblock():
        yield from serve(lambda port: ["uvicorn", "config.asgi:application", "--lifespan", "off", "--port", str(port)])


@pytest.fixture
def key(make_tenant: Callable[..., Any]) -> str:
    return str(make_tenant().issued.key)


def chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    """An iterator body: httpx sends it with Transfer-Encoding: chunked and no length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def post_chunked(base: str, key: str, data: bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(f"{base}/api/v1/ai-tasks/", content=chunks(data), headers=headers, timeout=30)


def raw_request(base: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; return the status code and the response bytes."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    assert received.startswith(b"HTTP/1."), received
    return int(received.split(b" ", 2)[1]), received


def test_a_chunked_body_is_read(gunicorn: str, key: str) -> None:
    body = json.dumps({"prompt": PROMPT, "metadata": {"via": "chunked"}}).encode()
    response = post_chunked(gunicorn, key, body)
    assert response.status_code == 202, response.text
    assert response.json()["metadata"] == {"via": "chunked"}
    assert AITask.objects.filter(prompt=PROMPT).count() == 1


def test_a_chunked_body_at_the_limit_is_read(gunicorn: str, key: str) -> None:
    empty = json.dumps({"prompt": PROMPT, "metadata": {}, "pad": ""})
    body = json.dumps({"prompt": PROMPT, "metadata": {}, "pad": "y" * (settings.API_MAX_BODY_BYTES - len(empty))})
    assert len(body) == settings.API_MAX_BODY_BYTES
    response = post_chunked(gunicorn, key, body.encode())
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("size", [64 * 1024 + 1, 10 * 1024 * 1024], ids=["one byte over", "10 MB"])
def test_a_chunked_body_over_the_limit_is_413(gunicorn: str, key: str, size: int) -> None:
    prompt = "x" * (size - len('{"prompt": ""}'))
    body = json.dumps({"prompt": prompt}).encode()
    assert len(body) == size and size > settings.API_MAX_BODY_BYTES
    response = post_chunked(gunicorn, key, body)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "body_too_large"
    assert AITask.objects.count() == 0


def test_a_ten_megabyte_prompt_with_a_length_is_413(gunicorn: str, key: str) -> None:
    body = json.dumps({"prompt": "x" * 10 * 1024 * 1024})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    response = httpx.post(f"{gunicorn}/api/v1/ai-tasks/", content=body, headers=headers, timeout=30)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "body_too_large"


@pytest.mark.parametrize(
    "body",
    [
        f'{{"prompt": "{PROMPT}", "metadata": {{"a": "\\u0000"}}}}',
        f'{{"prompt": "{PROMPT}", "metadata": {{"\\ud800": 1}}}}',
        "[" * 20_000 + "]" * 20_000,
    ],
    ids=["nul", "surrogate", "deep"],
)
def test_bad_json_is_400_chunked_or_not(gunicorn: str, key: str, body: str) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    sized = httpx.post(f"{gunicorn}/api/v1/ai-tasks/", content=body, headers=headers, timeout=30)
    assert sized.status_code == 400, sized.text
    assert sized.json()["type"] == "client_error"
    assert sized.json()["code"] == "parse_error"
    chunked = post_chunked(gunicorn, key, body.encode())
    assert chunked.status_code == 400, chunked.text
    assert chunked.json()["code"] == "parse_error"  # read, not taken as an empty body
    assert AITask.objects.count() == 0


@pytest.mark.parametrize(
    "header",
    [b"Idempotency-Key: a\x00b", b"X-Request-ID: a\rSet-Cookie: owned=1", b"Idempotency-Key: a\x7fb"],
    ids=["nul", "bare cr", "del"],
)
def test_control_bytes_in_a_header_are_4xx_and_never_reflected(gunicorn: str, key: str, header: bytes) -> None:
    body = json.dumps({"prompt": PROMPT}).encode()
    port = gunicorn.rsplit(":", 1)[1]
    request = (
        b"POST /api/v1/ai-tasks/ HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\n" + header + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )
    status, response = raw_request(gunicorn, request)
    assert 400 <= status < 500, response
    assert b"owned=1" not in response
    assert AITask.objects.count() == 0


def test_a_chunked_body_is_read_by_the_stream_role_too(uvicorn: str, key: str) -> None:
    body = json.dumps({"prompt": PROMPT, "metadata": {"via": "asgi"}}).encode()
    response = post_chunked(uvicorn, key, body)
    assert response.status_code == 202, response.text
    assert response.json()["metadata"] == {"via": "asgi"}
    over = json.dumps({"prompt": "x" * settings.API_MAX_BODY_BYTES}).encode()
    assert post_chunked(uvicorn, key, over).status_code == 413
