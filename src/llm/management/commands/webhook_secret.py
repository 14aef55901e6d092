"""``manage.py webhook_secret <org> [--all]``: print the organization's webhook signing
secret (``--all``: every active one during a rotation, newest first)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from kernel.errors import NotFoundError
from llm import services
from users import services as users


class Command(BaseCommand):
    help = "Print the secret that signs an organization's webhooks (Switchyard-Signature)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("org", help="Organization name or id.")
        parser.add_argument(
            "--all",
            action="store_true",
            help="During a rotation: every active secret, newest first, one a line.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            org = users.organization_find(name_or_id=options["org"])
        except NotFoundError as exc:
            raise CommandError(exc.detail) from exc
        if options["all"]:
            for secret in services.webhook_secrets(organization_id=org.id):
                self.stdout.write(secret)
        else:
            self.stdout.write(services.webhook_secret(organization_id=org.id))
