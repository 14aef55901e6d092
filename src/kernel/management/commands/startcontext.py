"""``manage.py startcontext NAME``: scaffold a new bounded context and wire it in.

Creates ``src/NAME/`` (apps, models, selectors, services, tasks, admin, api/, migrations/,
tests/) and ``contracts/NAME.py``, adds NAME to INSTALLED_APPS and the API v1 routes, and
extends importlinter.ini (root package, top context layer, services-only independence,
a protected contract for NAME.models, inner layers). Refuses, writing nothing, if the
name is invalid or any target already exists. See docs/adding-a-context.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from kernel.management.scaffold import ScaffoldError, plan_context


class Command(BaseCommand):
    help = "Create a bounded context src/NAME with contracts/NAME.py and wire it into settings, urls and import rules."
    # Scaffolding must work while the project has unrelated check errors.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Lowercase identifier, e.g. 'notifications'.")
        parser.add_argument(
            "--root",
            type=Path,
            default=None,
            help="Repository root to write into (default: the checkout this manage.py belongs to).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Print what would change and write nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"]
        root: Path = (options["root"] or Path(settings.BASE_DIR)).resolve()
        labels = [config.label for config in apps.get_app_configs()]
        try:
            plan = plan_context(name, root=root, app_labels=labels)
            if not options["dry_run"]:
                plan.apply()
        except (ScaffoldError, FileExistsError) as exc:
            raise CommandError(str(exc)) from exc
        verb = "Would create" if options["dry_run"] else "Created"
        for path in plan.created:
            self.stdout.write(f"{verb} {path.relative_to(root)}")
        verb = "Would update" if options["dry_run"] else "Updated"
        for path in plan.updated:
            self.stdout.write(f"{verb} {path.relative_to(root)}")
        if not options["dry_run"]:
            self.stdout.write(
                self.style.SUCCESS(f"Context {name!r} created.")
                + " Next: make openapi (a new endpoint changes the schema), then make test."
            )
