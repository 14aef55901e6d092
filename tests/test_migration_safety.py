"""Migration safety in CI: ``makemigrations --check`` and ``manage.py lint_migrations``
(kernel.migration_safety) pass on the tree and fail on an unsafe migration added to a copy.
The worked expand example of docs/migrations.md (llm 0005, database defaults) lets an
older release's INSERT, which does not name the new columns, succeed."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection

from kernel.migration_safety import REVIEWED
from tests.conftest import Tenant
from tests.support import server_env
from tests.test_boundaries import ROOT, copy_repo

MIGRATION = """\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("kernel", "0004_task_record_open_index")]
    operations = [{operation}]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("migrations") / "repo")


def manage(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server_env(), "PYTHONPATH": f"{repo / 'src'}:{repo}"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.django_db
def test_the_tree_passes_both_checks(repo: Path) -> None:
    lint = manage(repo, "lint_migrations")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Erroneous migrations: 0/" in lint.stdout
    check = manage(repo, "makemigrations", "--check", "--dry-run")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("operation", "message"),
    [
        pytest.param(
            "migrations.AddField('outboxevent', 'shard', models.IntegerField(default=0))",
            "NOT NULL constraint on columns", id="not-null-without-db-default",
        ),
        pytest.param(
            "migrations.AddIndex('outboxevent', models.Index(fields=['event_type'], name='outbox_type'))",
            "CREATE INDEX locks table", id="index-without-concurrently",
        ),
        pytest.param(
            "migrations.RenameField('outboxevent', 'last_error', 'error')", "RENAMING columns", id="rename-column",
        ),
        pytest.param("migrations.RemoveField('outboxevent', 'last_error')", "DROPPING columns", id="drop-column"),
        pytest.param("migrations.RenameModel('OutboxEvent', 'Outbox')", "RENAMING tables", id="rename-table"),
    ],
)  # fmt: skip
def test_an_unsafe_migration_fails_the_linter(repo: Path, operation: str, message: str) -> None:
    path = repo / "src" / "kernel" / "migrations" / "0005_unsafe.py"
    path.write_text(MIGRATION.format(operation=operation))
    try:
        lint = manage(repo, "lint_migrations")
    finally:
        path.unlink()
    assert lint.returncode != 0
    assert "(kernel, 0005_unsafe)... ERR" in lint.stdout
    assert message in lint.stdout
    assert "unsafe migrations" in lint.stderr


@pytest.mark.django_db
def test_a_model_change_without_its_migration_fails_makemigrations_check(repo: Path) -> None:
    models = repo / "src" / "kernel" / "models.py"
    original = models.read_text()
    models.write_text(
        original.replace(
            "    last_error = models.TextField(",
            "    note = models.TextField(default='')\n    last_error = models.TextField(",
            1,
        )
    )
    try:
        check = manage(repo, "makemigrations", "--check", "--dry-run")
    finally:
        models.write_text(original)
    assert check.returncode != 0
    assert "Add field note to outboxevent" in check.stdout


def test_every_reviewed_migration_exists_and_says_why() -> None:
    for (app, name), reason in REVIEWED.items():
        assert (ROOT / "src" / app / "migrations" / f"{name}.py").is_file(), (app, name)
        assert len(reason) > 40


@pytest.mark.django_db
def test_an_older_release_insert_without_the_new_columns_succeeds(make_tenant: Callable[[], Tenant]) -> None:
    """What llm 0002/0003 broke during a rolling deploy (NOT NULL without a database
    default) and 0005 repaired: the INSERT of a release that predates the columns."""
    tenant = make_tenant()
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "hello"}, format="json")
    assert response.status_code == 202
    task_id = response.json()["id"]
    new = {"webhook_status", "webhook_attempts", "webhook_last_error", "dispatch_count"}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'llm_aitask' AND column_name <> 'id'"
        )
        columns = [row[0] for row in cursor.fetchall() if row[0] not in new]
        names = ", ".join(f'"{c}"' for c in columns)
        clone = uuid.uuid4()
        cursor.execute(
            f"INSERT INTO llm_aitask (id, {names}) SELECT %s, {names} FROM llm_aitask WHERE id = %s", [clone, task_id]
        )
        cursor.execute(
            "INSERT INTO llm_deadletter (task_id, reason, attempts, created_at) VALUES (%s, 'old', 1, now())", [clone]
        )
        cursor.execute(
            "SELECT webhook_status, webhook_attempts, webhook_last_error, dispatch_count FROM llm_aitask WHERE id = %s",
            [clone],
        )
        assert cursor.fetchone() == ("none", 0, "", 0)
        cursor.execute("SELECT kind FROM llm_deadletter WHERE task_id = %s", [clone])
        assert cursor.fetchone() == ("task",)
