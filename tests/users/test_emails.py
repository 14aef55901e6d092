"""Welcome and key-created emails: enqueued by users.services in its transaction, sent by
a priority worker through Django's email backend, never in the request; no raw key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core import mail

from kernel import tasks_backend
from kernel.models import TaskRecord
from tests.pipeline.conftest import Worker, start_worker, wait_for
from tests.support import ROOT
from users import services

__all__ = ["start_worker"]  # the fixture


@pytest.fixture
def outbox() -> list[Any]:
    """Django's locmem outbox (with MAILERS, pytest-django's outbox may be a detached list)."""
    mail.outbox = []
    return mail.outbox


def _run_all() -> list[str]:
    return [tasks_backend.execute(str(r.id), worker_id="w").status for r in TaskRecord.objects.order_by("enqueued_at")]


# transaction=True: the task runs on a thread of its own (its deadline), with its own
# connection, which sees only committed rows, as on a worker.
@pytest.mark.django_db(transaction=True)
def test_a_new_user_gets_a_welcome_and_a_key_email_from_the_priority_pool(outbox: list[Any]) -> None:
    issued = services.api_key_create(email="Ada@Example.test", organization_name="Analytical Engines")
    assert outbox == []  # nothing is sent in the caller's process
    records = list(TaskRecord.objects.order_by("enqueued_at"))
    assert [(r.task_path, r.celery_queue) for r in records] == [
        ("users.emails.send_welcome_email", "priority"),
        ("users.emails.send_key_created_email", "priority"),
    ]
    assert issued.key not in json.dumps([r.args for r in records])

    assert _run_all() == ["SUCCESSFUL", "SUCCESSFUL"]
    welcome, key_mail = outbox
    assert (welcome.to, welcome.subject) == (["ada@example.test"], "Welcome to Switchyard")
    assert "'Analytical Engines'" in welcome.body
    assert key_mail.subject == f"New API key {issued.info.prefix}"
    assert issued.info.prefix in key_mail.body and f"revoke_api_key {issued.info.prefix}" in key_mail.body
    assert issued.key not in key_mail.body + key_mail.subject


@pytest.mark.django_db(transaction=True)
def test_a_second_key_sends_only_the_key_email(outbox: list[Any]) -> None:
    services.api_key_create(email="bob@example.test")
    TaskRecord.objects.all().delete()
    services.api_key_create(email="bob@example.test", name="ci")
    assert [r.task_path for r in TaskRecord.objects.all()] == ["users.emails.send_key_created_email"]
    _run_all()
    assert [m.subject.split()[0] for m in outbox] == ["New"]


@pytest.mark.django_db
def test_a_rolled_back_key_sends_nothing(django_capture_on_commit_callbacks: Any) -> None:
    from django.db import transaction

    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        services.api_key_create(email="carol@example.test")
        transaction.set_rollback(True)
    assert callbacks == []  # no message will leave
    assert not TaskRecord.objects.exists()


def test_the_production_default_backend_is_the_console_and_smtp_comes_from_email_url() -> None:
    code = (
        "from django.conf import settings as s; m = s.MAILERS['default']; o = m['OPTIONS'];"
        " print(m['BACKEND'], o.get('host'), o.get('port'), o.get('use_tls'), 'password' in repr(o))"
    )
    env = {k: v for k, v in os.environ.items() if k != "EMAIL_URL"}
    env.update(PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", DJANGO_SETTINGS_MODULE="config.settings", DEBUG="true")

    def backend(**extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=ROOT, env={**env, **extra}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert backend() == "django.core.mail.backends.console.EmailBackend None None None False"
    assert backend(EMAIL_URL="smtp+tls://mailer:s3cret@smtp.example.test:587") == (
        "django.core.mail.backends.smtp.EmailBackend smtp.example.test 587 True True"
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_priority_worker_sends_both_emails(start_worker: Callable[..., Worker], tmp_path: Path) -> None:
    outbox = tmp_path / "mail"
    outbox.mkdir()
    start_worker("priority", EMAIL_URL=f"filemail:///{outbox}")  # filemail:/// + an absolute path
    issued = services.api_key_create(email="dora@example.test", organization_name="Dora Org")

    def sent() -> str:
        return "".join(path.read_text() for path in sorted(outbox.iterdir()))

    wait_for(lambda: sent().count("Subject: ") == 2, timeout=30)
    text = sent()
    assert "Subject: Welcome to Switchyard" in text and f"Subject: New API key {issued.info.prefix}" in text
    assert "To: dora@example.test" in text
    assert issued.key not in text
    wait_for(lambda: set(TaskRecord.objects.values_list("status", flat=True)) == {"SUCCESSFUL"}, timeout=10)
    assert mail.outbox == []  # not this process


def test_production_without_an_smtp_url_fails_the_deploy_check() -> None:
    """The console default is for development: Django's deploy check (mail.E001) refuses it."""
    from tests.test_settings import PRODUCTION, clean_env, manage

    env = {k: v for k, v in PRODUCTION.items() if k != "EMAIL_URL"}
    result = manage("check", "--deploy", "--fail-level", "ERROR", env=clean_env(**env))
    assert result.returncode != 0
    assert "mail.E001" in result.stderr
