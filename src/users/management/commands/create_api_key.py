"""``manage.py create_api_key <email> [--org NAME] [--name NAME]``.

Creates the user and organization when missing and prints the key alone on the last
line, so scripts can take it with ``tail -n1``. The key is shown only this once.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email

from users import services


class Command(BaseCommand):
    help = "Create an API key (and the user and organization when missing); prints the key last."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--org", dest="org", default=None, help="Organization name (created if missing).")
        parser.add_argument("--name", dest="name", default="default", help="A label for the key.")

    def handle(self, *args: Any, **options: Any) -> None:
        email: str = options["email"]
        try:
            validate_email(email)
        except ValidationError as exc:
            raise CommandError(f"{email!r} is not a valid email address.") from exc
        issued = services.api_key_create(email=email, organization_name=options["org"], name=options["name"])
        self.stderr.write(
            f"Created API key {issued.info.prefix}… for {issued.user_email} "
            f"in organization {issued.organization_name!r}. It will not be shown again."
        )
        self.stdout.write(issued.key)
