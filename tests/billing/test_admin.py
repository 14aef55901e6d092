"""Billing admin: every screen renders; prices in force are read-only; budget edits
write the limit and nothing else."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import pytest
from django.contrib import admin
from django.test import Client, RequestFactory

from billing import services as billing
from billing.admin import BudgetAdmin
from billing.models import Budget, Price
from tests.billing.helpers import ESTIMATE, reserve, settle

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", ["price", "budget", "reservation", "usageentry"])
def test_changelists_render(admin_client: Client, org_id: UUID, model: str) -> None:
    settle(reserve(org_id))
    reserve(org_id)
    assert admin_client.get(f"/admin/billing/{model}/").status_code == 200


def test_prices_in_force_are_read_only_and_new_rows_can_be_added(admin_client: Client) -> None:
    seeded = Price.objects.filter(model="fake-small").earliest("valid_from")
    page = admin_client.get(f"/admin/billing/price/{seeded.pk}/change/").content.decode()
    assert 'name="input_usd_per_mtok"' not in page
    assert 'name="input_usd_per_mtok"' in admin_client.get("/admin/billing/price/add/").content.decode()


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
