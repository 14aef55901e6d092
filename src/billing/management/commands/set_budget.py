"""``manage.py set_budget <org> <usd> [--key PREFIX]``: set a monthly limit.

``0`` blocks all paid work. With ``--key`` the limit applies to one API key of the
organization, on top of the organization's own.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import services
from kernel.errors import DomainError
from users import services as users


def money_str(amount: Decimal) -> str:
    """Cents for people; the exact amount when it has more."""
    cents = amount.quantize(Decimal("0.01"))
    return f"{cents:f}" if cents == amount else f"{amount.normalize():f}"


class Command(BaseCommand):
    help = "Set an organization's (or one API key's) monthly budget in USD; 0 blocks all paid work."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("org", help="Organization name or id.")
        parser.add_argument("usd", help="Monthly limit in USD, e.g. 250 or 12.50.")
        parser.add_argument("--key", dest="key", default=None, help="API key prefix (sy_xxxxxxxx) for a per-key limit.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            limit = Decimal(options["usd"])
        except InvalidOperation as exc:
            raise CommandError(f"{options['usd']!r} is not an amount in USD.") from exc
        try:
            org = users.organization_find(name_or_id=options["org"])
            api_key_id = None
            if options["key"]:
                keys = [k for k in users.api_key_list(organization_id=org.id) if k.prefix == options["key"]]
                if not keys:
                    raise CommandError(f"Organization {org.name!r} has no API key with prefix {options['key']!r}.")
                api_key_id = keys[0].id
            status = services.budget_set(organization_id=org.id, limit_usd=limit, api_key_id=api_key_id)
        except DomainError as exc:
            raise CommandError(exc.detail) from exc
        scope = f"API key {options['key']} of {org.name!r}" if api_key_id else repr(org.name)
        self.stdout.write(
            f"Monthly budget of {scope} set to {money_str(status.limit_usd)} USD "
            f"({status.period}: spent {money_str(status.spent_usd)}, reserved {money_str(status.reserved_usd)}, "
            f"remaining {money_str(status.remaining_usd)})."
        )
