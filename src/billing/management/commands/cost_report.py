"""``manage.py cost_report [--date YYYY-MM-DD] [--org NAME]``: one UTC day's spend per
organization and model, as a table (today by default)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import money, services
from kernel.errors import DomainError
from users import services as users

COLUMNS = ("organization", "model", "tasks", "input tokens", "output tokens", "cost (USD)")


class Command(BaseCommand):
    help = "Print one UTC day's spend per organization and model."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--date", dest="day", default=None, help="UTC day, YYYY-MM-DD (default: today).")
        parser.add_argument("--org", dest="org", default=None, help="Only this organization (name or id).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            day = date.fromisoformat(options["day"]) if options["day"] else money.today_utc()
        except ValueError as exc:
            raise CommandError(f"--date must be YYYY-MM-DD (got {options['day']!r}).") from exc
        try:
            org_id = users.organization_find(name_or_id=options["org"]).id if options["org"] else None
        except DomainError as exc:
            raise CommandError(exc.detail) from exc
        rows = services.cost_report(day=day, organization_id=org_id)
        self.stdout.write(f"Cost report for {day:%Y-%m-%d} (UTC)")
        if not rows:
            self.stdout.write("No usage.")
            return
        table = [
            (
                r.organization_name,
                r.model,
                str(r.tasks),
                f"{r.input_tokens:,}",
                f"{r.output_tokens:,}",
                _usd(r.cost_usd),
            )
            for r in rows
        ]
        total = sum((r.cost_usd for r in rows), Decimal(0))
        footer = ("total", "", str(sum(r.tasks for r in rows)), "", "", _usd(total))
        widths = [max(len(row[i]) for row in (COLUMNS, *table, footer)) for i in range(len(COLUMNS))]

        def line(cells: tuple[str, ...]) -> str:
            # Text columns left-aligned, numbers right-aligned.
            return "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        rule = "  ".join("-" * w for w in widths)
        self.stdout.write("\n".join([line(COLUMNS), rule, *(line(row) for row in table), rule, line(footer)]))


def _usd(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.000001')):f}"
