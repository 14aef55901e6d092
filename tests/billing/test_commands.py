"""manage.py set_budget and cost_report."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from billing import services as billing
from contracts.billing import UsageEntry
from tests.billing.helpers import reserve

pytestmark = pytest.mark.django_db


def test_set_budget_zero_blocks_reservations(tenant, capsys) -> None:
    call_command("set_budget", tenant.issued.organization_name, "0")
    assert "set to 0.00 USD" in capsys.readouterr().out
    with pytest.raises(billing.BudgetExceeded):
        reserve(UUID(tenant.organization_id))


def test_set_budget_by_id_and_per_key(tenant, capsys) -> None:
    call_command("set_budget", tenant.organization_id, "12.5")
    call_command("set_budget", tenant.issued.organization_name.upper(), "1.25", "--key", tenant.issued.info.prefix)
    out = capsys.readouterr().out
    assert "set to 12.50 USD" in out
    assert f"API key {tenant.issued.info.prefix}" in out
    org_id, key_id = UUID(tenant.organization_id), UUID(tenant.api_key_id)
    assert billing.budget_status(organization_id=org_id).limit_usd == Decimal("12.5")
    assert billing.budget_status(organization_id=org_id, api_key_id=key_id).limit_usd == Decimal("1.25")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["No Such Org", "5"], "No organization"),
        (["{org}", "five"], "not an amount"),
        (["{org}", "-5"], "between 0"),
        (["{org}", "5", "--key", "sy_nope"], "no API key"),
    ],
)
def test_set_budget_refuses_bad_input(tenant, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("set_budget", *[a.format(org=tenant.issued.organization_name) for a in args])


def test_cost_report_prints_the_days_spend_per_organization_and_model(
    make_tenant, charge: Callable[..., UsageEntry], capsys
) -> None:
    acme, globex = make_tenant("Acme"), make_tenant("Globex")
    day = datetime(2026, 3, 14, 9, tzinfo=UTC)
    charge(UUID(acme.organization_id), at=day)
    charge(UUID(acme.organization_id), at=day, model="fake-large")
    charge(UUID(acme.organization_id), at=day + timedelta(hours=3), model="fake-large")
    charge(UUID(globex.organization_id), at=day)
    charge(UUID(globex.organization_id), at=day + timedelta(days=1))  # another day

    call_command("cost_report", "--date", "2026-03-14")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Cost report for 2026-03-14 (UTC)"
    body = [line.split() for line in lines[3:-2]]
    assert [(row[0], row[1], row[2]) for row in body] == [
        ("Acme", "fake-large", "2"),
        ("Acme", "fake-small", "1"),
        ("Globex", "fake-small", "1"),
    ]
    assert lines[-1].split()[:2] == ["total", "4"]
    # fake-large: 2 x (400 x $3/M + 600 x $15/M); fake-small: 2 x $0.0011
    assert lines[-1].split()[-1] == f"{Decimal('0.0204') + Decimal('0.0022'):.6f}"

    rows = billing.cost_report(day=day.date(), organization_id=UUID(globex.organization_id))
    assert [(r.organization_name, r.model, r.tasks) for r in rows] == [("Globex", "fake-small", 1)]


def test_cost_report_filters_by_org_and_says_when_there_is_no_usage(
    make_tenant, charge: Callable[..., UsageEntry], capsys
) -> None:
    acme = make_tenant("Acme")
    make_tenant("Initech")
    charge(UUID(acme.organization_id), at=datetime(2026, 3, 14, 9, tzinfo=UTC))
    call_command("cost_report", "--date", "2026-03-14", "--org", "initech")
    assert capsys.readouterr().out.splitlines()[-1] == "No usage."
    call_command("cost_report", "--date", "2026-03-14", "--org", "Acme")
    assert "Acme" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [(["--date", "14/03/2026"], "YYYY-MM-DD"), (["--org", "Nope"], "No org")])
def test_cost_report_refuses_bad_input(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("cost_report", *args)
