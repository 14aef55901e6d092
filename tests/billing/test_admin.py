"""Billing admin: the screens list the rows and their filters narrow them; prices in force
are read-only and new ones are added as rows; reservations and the ledger are read-only
on POST; budget edits write the limit and nothing else."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from django.contrib import admin
from django.test import Client, RequestFactory

from billing import money
from billing import services as billing
from billing.admin import BudgetAdmin
from billing.models import Budget, Price, Reservation, UsageEntry
from tests.billing.helpers import ESTIMATE, settle
from tests.factories import ReservationFactory

pytestmark = pytest.mark.django_db


def reserve(org_id: UUID) -> Any:
    return ReservationFactory.create(organization_id=org_id)


def rows(response: Any) -> list[Any]:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def sidebar(response: Any) -> set[str]:
    return {spec.field_path for spec in response.context["cl"].filter_specs}


def test_reservation_and_ledger_lists_show_the_rows_their_filters_select(admin_client: Client, org_id: UUID) -> None:
    closed = reserve(org_id)
    settled = settle(closed)
    held = reserve(org_id)
    changelist = admin_client.get("/admin/billing/reservation/")
    every = {r.id for r in rows(changelist)}
    assert sidebar(changelist) == {"status", "model"}
    assert every == {held.id, closed.id}
    assert [r.id for r in rows(admin_client.get("/admin/billing/reservation/?status__exact=held"))] == [held.id]
    assert [r.id for r in rows(admin_client.get("/admin/billing/reservation/?status__exact=settled"))] == [closed.id]
    assert [r.id for r in rows(admin_client.get(f"/admin/billing/reservation/?q={held.task_id}"))] == [held.id]
    ledger = admin_client.get("/admin/billing/usageentry/")
    [entry] = rows(ledger)
    assert sidebar(ledger) == {"cached", "model"}
    assert (entry.task_id, entry.cost_usd) == (settled.task_id, settled.cost_usd)
    assert rows(admin_client.get("/admin/billing/usageentry/?cached__exact=1")) == []
    [budget] = rows(admin_client.get(f"/admin/billing/budget/?q={org_id}"))
    assert (budget.organization_id, budget.reserved_usd) == (org_id, ESTIMATE)


def test_the_price_list_is_the_catalog_and_its_model_filter_narrows_it(admin_client: Client) -> None:
    changelist = admin_client.get("/admin/billing/price/")
    every = rows(changelist)
    assert sidebar(changelist) == {"provider", "model"}
    assert len(every) == Price.objects.count() > 1
    small = rows(admin_client.get("/admin/billing/price/?model=fake-small"))
    assert small and {price.model for price in small} == {"fake-small"}
    assert len(small) == Price.objects.filter(model="fake-small").count() < len(every)


def test_prices_in_force_are_read_only_and_new_rows_can_be_added(admin_client: Client) -> None:
    seeded = Price.objects.filter(model="fake-small").earliest("valid_from")
    url = f"/admin/billing/price/{seeded.pk}/change/"
    assert 'name="input_usd_per_mtok"' not in admin_client.get(url).content.decode()
    admin_client.post(
        url, {"model": "fake-small", "provider": "fake", "input_usd_per_mtok": "99", "valid_from": "2000-01-01"}
    )
    after = Price.objects.get(pk=seeded.pk)
    assert (after.input_usd_per_mtok, after.valid_from) == (seeded.input_usd_per_mtok, seeded.valid_from)
    # A price change is a new row from a future day; until that day the row can still be edited.
    tomorrow = money.today_utc() + timedelta(days=1)
    assert 'name="input_usd_per_mtok"' in admin_client.get("/admin/billing/price/add/").content.decode()
    form = {
        "model": "fake-small",
        "provider": "fake",
        "input_usd_per_mtok": "0.75",
        "output_usd_per_mtok": "2",
        "valid_from": tomorrow.isoformat(),
    }
    assert admin_client.post("/admin/billing/price/add/", form).status_code == 302
    added = Price.objects.get(model="fake-small", valid_from=tomorrow)
    assert added.input_usd_per_mtok == Decimal("0.75")
    edited = admin_client.post(f"/admin/billing/price/{added.pk}/change/", {**form, "input_usd_per_mtok": "0.8"})
    assert edited.status_code == 302
    assert Price.objects.get(pk=added.pk).input_usd_per_mtok == Decimal("0.8")
    assert Price.objects.get(pk=seeded.pk).input_usd_per_mtok == seeded.input_usd_per_mtok


def test_reservations_and_ledger_rows_are_read_only_on_post(admin_client: Client, org_id: UUID) -> None:
    entry = settle(reserve(org_id))
    held = reserve(org_id)
    url = f"/admin/billing/reservation/{held.id}/change/"
    assert admin_client.get(url).status_code == 200  # viewable
    assert admin_client.post(url, {"status": "released", "amount_usd": "0"}).status_code == 403
    assert Reservation.objects.get(id=held.id).status == "held"
    url = f"/admin/billing/usageentry/{UsageEntry.objects.get(task_id=entry.task_id).pk}/change/"
    assert admin_client.post(url, {"cost_usd": "0"}).status_code == 403
    assert UsageEntry.objects.get(task_id=entry.task_id).cost_usd == entry.cost_usd
    for model in ("reservation", "usageentry"):
        assert admin_client.get(f"/admin/billing/{model}/add/").status_code == 403
    delete = f"/admin/billing/reservation/{held.id}/delete/"
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Reservation.objects.filter(id=held.id).exists()


def test_the_budget_form_edits_the_limit_and_never_the_counters(admin_client: Client, org_id: UUID) -> None:
    reserve(org_id)
    budget = Budget.objects.get(organization_id=org_id)
    url = f"/admin/billing/budget/{budget.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert 'name="limit_usd"' in page
    for counter in ("spent_usd", "reserved_usd", "period", "organization_id"):
        assert f'name="{counter}"' not in page
    forged = {"limit_usd": "3", "spent_usd": "999", "reserved_usd": "0", "period": "2000-01-01"}
    assert admin_client.post(url, forged).status_code == 302
    status = billing.budget_status(organization_id=org_id)
    assert (status.limit_usd, status.spent_usd, status.reserved_usd) == (Decimal(3), Decimal(0), ESTIMATE)
    assert Budget.objects.get(pk=budget.pk).period == budget.period


def test_budget_edit_writes_only_the_limit(org_id: UUID, admin_user) -> None:
    reserve(org_id)
    stale = Budget.objects.get(organization_id=org_id)  # the form is loaded...
    reserve(org_id)  # ...a reservation moves the counters...
    stale.limit_usd = Decimal(3)  # ...and the limit is saved
    request = RequestFactory().post("/")
    request.user = admin_user
    BudgetAdmin(Budget, admin.site).save_model(request, stale, form=None, change=True)
    status = billing.budget_status(organization_id=org_id)
    assert (status.limit_usd, status.reserved_usd) == (Decimal(3), ESTIMATE * 2)
