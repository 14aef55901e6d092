"""Migration safety for CI (``manage.py lint_migrations``, docs/migrations.md).

django-migration-linter reads the SQL of every migration of the project's apps
(``sqlmigrate``, PostgreSQL analyser) and fails on what locks or breaks a rolling deploy:
a NOT NULL column without a database default, ``CREATE INDEX`` without ``CONCURRENTLY``
on an existing table, renames and drops in one step, a unique constraint on an existing
table, irreversible data migrations. Warnings are errors here.

``REVIEWED`` lists migrations written before the linter, each with why it is accepted;
it is keyed by (app label, name) so that an ignore never covers another app's migration
of the same name. Add to it only with a reason a reviewer can check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django_migration_linter import MigrationLinter

REVIEWED: dict[tuple[str, str], str] = {
    ("llm", "0002_webhooks"): (
        "NOT NULL columns with Python-only defaults on llm_aitask/llm_deadletter (before the linter); the "
        "database defaults were added by llm 0006_db_defaults (docs/migrations.md, the worked example)"
    ),
    ("llm", "0003_dispatch_gate"): (
        "aitask.dispatch_count NOT NULL (db default since llm 0006) and two partial indexes built in the "
        "transaction; shipped before the linter, the table was small then"
    ),
    ("analytics", "0002_partition_outcomes_by_month"): (
        "the expand-copy-swap of issue 11: the new partitioned table is built beside the old one and the "
        "names are swapped under one short write lock on an append-only table (docs/decisions/analytics.md)"
    ),
    ("analytics", "0003_drop_unpartitioned_outcomes"): (
        "the contract step of that swap: drops the renamed, unpartitioned copy that no code reads any more"
    ),
    ("llm", "0004_webhook_claim"): (
        "partial index aitask_webhook_pending built without CONCURRENTLY; shipped before the linter"
    ),
}


class ReviewedMigrationLinter(MigrationLinter):
    def should_ignore_migration(
        self, app_label: str, migration_name: str, operations: Any = (), is_initial: bool = False
    ) -> bool:
        if (app_label, migration_name) in REVIEWED:
            return True
        return bool(super().should_ignore_migration(app_label, migration_name, operations, is_initial))


def third_party_apps() -> list[str]:
    """Apps outside ``src/`` (Django's own, django-waffle, ...): their migrations are
    their maintainers' (and their tables small); the linter checks ours."""
    src = Path(settings.BASE_DIR) / "src"
    return [config.label for config in apps.get_app_configs() if not Path(config.path).is_relative_to(src)]


def lint(*, verbose: bool = True) -> MigrationLinter:
    linter = ReviewedMigrationLinter(
        str(settings.BASE_DIR),
        no_cache=True,
        exclude_apps=third_party_apps(),
        all_warnings_as_errors=True,
        analyser_string="postgresql",
        no_output=not verbose,
    )
    linter.lint_all_migrations()
    if verbose:
        linter.print_summary()
    return linter
