"""Webhooks: signed POST on every terminal state, retried, dead-lettered, replayable,
and never sent to a private address unless allowed. A real HTTP receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm import services
from llm.models import AITask, DeadLetter

pytestmark = pytest.mark.django_db


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                if 300 <= status < 400:  # a redirect to a second, equally valid address
                    self.send_header("Location", receiver.url + "?redirected=1")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/switchyard"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the receiver lives on loopback
    server = Receiver()
    yield server
    server.server.shutdown()


@pytest.fixture
def finished(tenant, receiver, django_capture_on_commit_callbacks):
    def run(prompt: str = "Notify me when done #fake:tokens=3,4", **body) -> str:
        response = tenant.client.post(
            "/api/v1/ai-tasks/", {"prompt": prompt, "callback_url": receiver.url, **body}, format="json"
        )
        task_id = response.json()["id"]
        with django_capture_on_commit_callbacks(execute=True):
            services.task_execute(task_id=uuid.UUID(task_id))
        return task_id

    return run


def test_done_task_is_posted_signed_with_the_organization_secret(tenant, receiver, finished) -> None:
    task_id = finished()
    assert AITask.objects.get(id=task_id).webhook_status == "pending"
    assert services.webhook_deliver(task_id=uuid.UUID(task_id)).kind == "delivered"
    ((headers, body),) = receiver.requests
    payload = json.loads(body)
    assert (payload["id"], payload["status"], payload["output_tokens"]) == (task_id, "done", 4)
    assert "prompt" not in payload
    timestamp, signature = (part.split("=", 1)[1] for part in headers["Switchyard-Signature"].split(","))
    secret = services.webhook_secret(organization_id=uuid.UUID(tenant.organization_id))
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected)
    task = AITask.objects.get(id=task_id)
    assert task.webhook_status == "delivered" and task.webhook_delivered_at is not None
    assert services.webhook_deliver(task_id=uuid.UUID(task_id)).kind == "skipped"  # never twice
    assert len(receiver.requests) == 1


def test_secrets_differ_per_organization(make_tenant) -> None:
    a, b = make_tenant(), make_tenant()
    secret_a = services.webhook_secret(organization_id=uuid.UUID(a.organization_id))
    assert secret_a != services.webhook_secret(organization_id=uuid.UUID(b.organization_id))
    assert secret_a == services.webhook_secret(organization_id=uuid.UUID(a.organization_id))


def test_failed_tasks_notify_too(receiver, finished) -> None:
    task_id = finished("Refused by the provider #fake:error=400")
    assert services.webhook_deliver(task_id=uuid.UUID(task_id)).kind == "delivered"
    assert json.loads(receiver.requests[0][1])["status"] == "failed"


def test_server_errors_retry_then_dead_letter_then_replay(receiver, finished, settings) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    receiver.statuses = [500, 503]
    task_id = uuid.UUID(finished())
    first = services.webhook_deliver(task_id=task_id)
    assert first.kind == "retry" and first.countdown is not None and first.countdown > 0
    assert services.webhook_deliver(task_id=task_id).kind == "failed"
    task = AITask.objects.get(id=task_id)
    assert (task.webhook_status, task.webhook_attempts, task.webhook_last_error) == ("failed", 2, "HTTP 503")
    letter = DeadLetter.objects.get(task_id=task_id, kind="webhook")
    assert task.status == "done"  # the task itself is untouched
    services.dead_letter_replay(dead_letter_id=letter.id)
    assert services.webhook_deliver(task_id=task_id).kind == "delivered"
    assert len(receiver.requests) == 3


def test_private_destination_is_refused_at_delivery(receiver, finished, settings) -> None:
    task_id = uuid.UUID(finished())
    settings.WEBHOOK_ALLOW_PRIVATE = False
    assert services.webhook_deliver(task_id=task_id).kind == "failed"
    assert receiver.requests == []
    assert "refused" in DeadLetter.objects.get(task_id=task_id, kind="webhook").reason


def test_cancelled_task_notifies_and_tasks_without_callback_do_not(tenant, receiver) -> None:
    pending = tenant.client.post(
        "/api/v1/ai-tasks/", {"prompt": "Cancel me soon", "callback_url": receiver.url}, format="json"
    ).json()["id"]
    tenant.client.post(f"/api/v1/ai-tasks/{pending}/cancel/")
    assert AITask.objects.get(id=pending).webhook_status == "pending"
    plain = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "No callback here"}, format="json").json()["id"]
    tenant.client.post(f"/api/v1/ai-tasks/{plain}/cancel/")
    assert AITask.objects.get(id=plain).webhook_status == "none"
    assert services.webhook_deliver(task_id=uuid.UUID(plain)).kind == "skipped"


def test_webhook_secret_command(tenant, capsys) -> None:
    from django.core.management import call_command

    call_command("webhook_secret", tenant.issued.organization_name)
    assert capsys.readouterr().out.strip() == services.webhook_secret(organization_id=uuid.UUID(tenant.organization_id))


def test_redirects_are_not_followed(receiver, finished) -> None:
    receiver.statuses = [302]
    task_id = uuid.UUID(finished())
    assert services.webhook_deliver(task_id=task_id).kind == "retry"
    assert AITask.objects.get(id=task_id).webhook_last_error == "HTTP 302"
    assert len(receiver.requests) == 1


def test_sweeper_resends_a_webhook_that_was_never_enqueued(receiver, finished, settings) -> None:
    from datetime import timedelta

    from django.utils import timezone

    task_id = finished()  # enqueued on commit; pretend the broker was down at that moment
    AITask.objects.filter(id=task_id).update(completed_at=timezone.now() - timedelta(minutes=5))
    assert services.tasks_sweep().webhooks_requeued == 1
    AITask.objects.filter(id=task_id).update(webhook_attempts=1)  # tried once: in its retry back-off
    assert services.tasks_sweep().webhooks_requeued == 0
