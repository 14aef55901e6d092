"""``manage.py revoke_api_key <prefix>``: revoke a key by its public prefix."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kernel.errors import NotFoundError
from users import services


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (the sy_xxxxxxxx part)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            info = services.api_key_revoke(prefix=options["prefix"])
        except NotFoundError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"Revoked {info.prefix} at {info.revoked_at:%Y-%m-%d %H:%M:%S}Z")
