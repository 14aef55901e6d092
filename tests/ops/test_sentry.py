"""Sentry from SENTRY_DSN, with a local HTTP server as the DSN's endpoint (no network):
a web request's unexpected error and a failing task in a real worker both arrive, tagged
with the request id and the task id."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk
from celery import current_app
from django.conf import settings
from django.test import Client

from kernel import sentry
from tests.pipeline.conftest import Worker, wait_for


class Collector:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli  # type: ignore[import-not-found]

                    body = brotli.decompress(body)
                collector.parse(body)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.dsn = f"http://publickey@127.0.0.1:{self.server.server_address[1]}/1"

    def parse(self, envelope: bytes) -> None:
        lines = envelope.split(b"\n")
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if header.strip() and json.loads(header).get("type") == "event":
                self.events.append(json.loads(payload))

    def find(self, text: str) -> dict[str, Any] | None:
        return next((e for e in self.events if text in json.dumps(e)), None)


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector()
    yield found
    found.server.shutdown()


@pytest.fixture
def sentry_on(collector: Collector) -> Iterator[None]:
    assert sentry.init(dsn=collector.dsn, environment="test", release="t", traces_sample_rate=0.0)
    yield
    sentry_sdk.flush(timeout=5)
    sentry_sdk.init()  # no DSN: a client that sends nothing


def test_off_without_a_dsn() -> None:
    assert settings.SENTRY_DSN == ""
    assert sentry.init(dsn="", environment="test", release=None, traces_sample_rate=0.0) is False


@pytest.mark.urls("tests.ops.boom_urls")
@pytest.mark.django_db
def test_a_web_request_error_arrives_with_its_request_id(collector: Collector, sentry_on: None) -> None:
    response = Client(raise_request_exception=False).get("/boom/", headers={"X-Request-ID": "req-sentry-1"})
    assert response.status_code == 500
    sentry_sdk.flush(timeout=5)
    event = wait_for(lambda: collector.find("boom for sentry"), timeout=10)
    assert isinstance(event, dict)
    assert event["tags"]["request_id"] == "req-sentry-1"
    assert "publickey" not in json.dumps(event)


@pytest.mark.slow
def test_a_worker_task_error_arrives_with_its_task_id(
    collector: Collector, start_worker: Callable[..., Worker], transactional_db: None
) -> None:
    start_worker("default", SENTRY_DSN=collector.dsn)
    result = current_app.send_task("llm.run_ai_task", args=["not-a-task-id"], queue="default")
    event = wait_for(lambda: collector.find("not-a-task-id") or collector.find("badly formed"), timeout=30)
    assert isinstance(event, dict)
    assert event["tags"]["task_id"] == result.id
    assert event["tags"]["task_name"] == "llm.run_ai_task"
    assert event["tags"].get("request_id")  # the task's own (none was propagated)
