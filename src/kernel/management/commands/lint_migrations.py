"""``manage.py lint_migrations``: fail (exit 1) on a migration that locks or breaks a
rolling deploy (kernel.migration_safety, docs/migrations.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from kernel import migration_safety


class Command(BaseCommand):
    help = "Lint every migration of the project for locking or backward-incompatible operations."

    def handle(self, *args: Any, **options: Any) -> None:
        linter = migration_safety.lint(verbose=options["verbosity"] > 0)
        if linter.has_errors:
            raise CommandError("unsafe migrations: see docs/migrations.md (expand, then contract)")
