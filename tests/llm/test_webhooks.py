"""Webhooks: signed POST on every terminal state, retried, dead-lettered, replayable,
and never sent to a private address unless allowed. A real HTTP receiver on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection
from django.utils import timezone

from llm import services
from llm.models import AITask, DeadLetter
from tests.llm.test_webhook_destinations import ScriptedResolver

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


def test_sweeper_resends_a_webhook_that_was_never_enqueued(
    receiver, finished, broker, django_capture_on_commit_callbacks
) -> None:
    task_id = finished()
    broker.clear("priority")  # the message sent on commit is lost (the broker was down at that moment)
    AITask.objects.filter(id=task_id).update(completed_at=timezone.now() - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        assert services.tasks_sweep().webhooks_requeued == 1
    assert broker.calls("priority") == [("llm.deliver_webhook", [task_id])]
    with django_capture_on_commit_callbacks(execute=True):
        assert services.tasks_sweep().webhooks_requeued == 0  # re-sent at most once per grace period
    [(_, args)] = broker.calls("priority")
    # The message the sweeper sent delivers the webhook (what the worker does with it).
    assert services.webhook_deliver(task_id=uuid.UUID(args[0])).kind == "delivered"
    assert len(receiver.requests) == 1 and json.loads(receiver.requests[0][1])["id"] == task_id


def test_sweeper_resends_a_lost_retry_after_its_backoff_only(receiver, finished) -> None:
    receiver.statuses = [500]
    task_id = uuid.UUID(finished())
    AITask.objects.filter(id=task_id).update(completed_at=timezone.now() - timedelta(minutes=5))
    assert services.webhook_deliver(task_id=task_id).kind == "retry"
    AITask.objects.filter(id=task_id).update(webhook_next_at=timezone.now() + timedelta(minutes=10))
    assert services.tasks_sweep().webhooks_requeued == 0  # in its backoff: the retry message is on its way
    AITask.objects.filter(id=task_id).update(webhook_next_at=timezone.now() - timedelta(minutes=5))
    assert services.tasks_sweep().webhooks_requeued == 1  # due long ago: its retry message was lost
    assert services.tasks_sweep().webhooks_requeued == 0
    assert services.webhook_deliver(task_id=task_id).kind == "delivered"
    assert AITask.objects.get(id=task_id).webhook_attempts == 2


def test_sweeper_leaves_a_webhook_being_delivered_alone(receiver, finished) -> None:
    task_id = finished()
    old = timezone.now() - timedelta(minutes=5)
    AITask.objects.filter(id=task_id).update(
        completed_at=old, webhook_next_at=old, webhook_claimed_until=timezone.now() + timedelta(seconds=30)
    )
    assert services.tasks_sweep().webhooks_requeued == 0


def test_a_retry_message_arriving_before_its_backoff_does_not_post(receiver, finished, settings) -> None:
    settings.WEBHOOK_RETRY_BACKOFF_S, settings.WEBHOOK_RETRY_BACKOFF_MAX_S = 10.0, 3600.0  # the defaults
    receiver.statuses = [500]
    task_id = uuid.UUID(finished())
    outcome = services.webhook_deliver(task_id=task_id)
    assert outcome.kind == "retry" and outcome.countdown is not None and outcome.countdown >= 5
    assert services.webhook_deliver(task_id=task_id).kind == "skipped"  # a duplicate of the first message
    assert len(receiver.requests) == 1
    assert AITask.objects.get(id=task_id).webhook_attempts == 1


# -- one delivery at a time -------------------------------------------------------------------


class SlowReceiver(Receiver):
    """Answers after a pause, so two deliveries overlap."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        handler = self.server.RequestHandlerClass
        original = handler.do_POST  # type: ignore[attr-defined]

        def slow(handler_self: BaseHTTPRequestHandler) -> None:
            time.sleep(self.delay)
            original(handler_self)

        handler.do_POST = slow  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_deliveries_post_once(make_tenant, settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    server = SlowReceiver(delay=1.0)
    try:
        tenant = make_tenant()
        task_id = tenant.client.post(
            "/api/v1/ai-tasks/", {"prompt": "Twice? #fake:tokens=1,1", "callback_url": server.url}, format="json"
        ).json()["id"]
        services.task_execute(task_id=uuid.UUID(task_id))
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def deliver() -> None:
            barrier.wait()
            try:
                outcomes.append(services.webhook_deliver(task_id=uuid.UUID(task_id)).kind)
            finally:
                connection.close()

        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        server.server.shutdown()
    assert sorted(outcomes) == ["delivered", "skipped"]
    assert len(server.requests) == 1
    task = AITask.objects.get(id=task_id)
    assert (task.webhook_status, task.webhook_attempts, task.webhook_claimed_until) == ("delivered", 1, None)


# -- where the POST goes (SSRF) ---------------------------------------------------------------


def test_rebinding_dns_never_reaches_the_second_answer(receiver, finished, settings) -> None:
    """The name is vetted on a public answer; a second lookup would answer loopback,
    where the receiver listens. The POST goes to the vetted address, so loopback never
    sees it (the public address is unreachable from here: a connection error, retried)."""
    task_id = uuid.UUID(finished())
    port = receiver.server.server_address[1]
    AITask.objects.filter(id=task_id).update(callback_url=f"http://rebind.example.com:{port}/hooks")
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_TIMEOUT_S = 0.5
    resolver = ScriptedResolver(["192.0.43.10"], ["127.0.0.1"])
    assert services.webhook_deliver(task_id=task_id, resolve=resolver).kind == "retry"
    assert receiver.requests == []
    assert resolver.calls == ["rebind.example.com"]  # resolved once, by us


def test_the_request_goes_to_the_resolved_address_with_the_name_as_host(receiver, finished) -> None:
    task_id = uuid.UUID(finished())
    port = receiver.server.server_address[1]
    AITask.objects.filter(id=task_id).update(callback_url=f"http://hooks.customer.test:{port}/in?x=1")
    resolver = ScriptedResolver(["127.0.0.1"], ["192.0.2.1"])
    assert services.webhook_deliver(task_id=task_id, resolve=resolver).kind == "delivered"
    ((headers, _),) = receiver.requests
    assert headers["Host"] == f"hooks.customer.test:{port}"


# -- signing secrets and rotation ----------------------------------------------------------


def parse_signature(header: str) -> tuple[str, list[str]]:
    parts = [part.split("=", 1) for part in header.split(",")]
    (t_key, timestamp), *signatures = parts
    assert t_key == "t" and all(key == "v1" for key, _ in signatures)
    return timestamp, [value for _, value in signatures]


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does (docs/webhooks.md): accept if any v1 matches."""
    timestamp, signatures = parse_signature(header)
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


def test_rotation_signs_with_both_secrets_newest_first(tenant, receiver, finished, settings) -> None:
    org = uuid.UUID(tenant.organization_id)
    old_secret = services.webhook_secret(organization_id=org)
    settings.WEBHOOK_SIGNING_SECRETS = ["a-brand-new-master-secret-of-enough-length", *settings.WEBHOOK_SIGNING_SECRETS]
    new_secret = services.webhook_secret(organization_id=org)
    assert services.webhook_secrets(organization_id=org) == [new_secret, old_secret]
    task_id = uuid.UUID(finished())
    assert services.webhook_deliver(task_id=task_id).kind == "delivered"
    ((headers, body),) = receiver.requests
    _, signatures = parse_signature(headers["Switchyard-Signature"])
    assert len(signatures) == 2
    assert verify(old_secret, headers["Switchyard-Signature"], body)  # receivers not yet updated
    assert verify(new_secret, headers["Switchyard-Signature"], body)
    assert not verify("whsec_" + "0" * 64, headers["Switchyard-Signature"], body)


def test_the_signing_secret_is_not_derived_from_secret_key(tenant, settings) -> None:
    org = uuid.UUID(tenant.organization_id)
    before = services.webhook_secret(organization_id=org)
    settings.SECRET_KEY = "a-completely-different-secret-key-for-this-test"
    assert services.webhook_secret(organization_id=org) == before


def test_webhook_secret_command_prints_every_active_secret(tenant, capsys, settings) -> None:
    from django.core.management import call_command

    settings.WEBHOOK_SIGNING_SECRETS = ["a-brand-new-master-secret-of-enough-length", *settings.WEBHOOK_SIGNING_SECRETS]
    call_command("webhook_secret", tenant.issued.organization_name, "--all")
    org = uuid.UUID(tenant.organization_id)
    assert capsys.readouterr().out.split() == services.webhook_secrets(organization_id=org)
