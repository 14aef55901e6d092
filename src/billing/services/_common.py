"""What every billing service module shares: the domain errors, the mappers (the one
place where billing rows become contract objects) and the catalog lookup."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from billing import money, selectors
from billing.models import Price as PriceModel
from billing.models import Reservation as ReservationModel
from billing.models import UsageEntry as UsageEntryModel
from contracts.billing import BudgetStatus, Price, Reservation, TokenUsage, UsageEntry
from kernel.errors import DomainError, NotFoundError


class UnknownModel(DomainError):
    code = "unknown_model"
    default_detail = "This model is not in the price catalog."


class BudgetExceeded(DomainError):
    status_code = 402
    code = "budget_exhausted"
    default_detail = "The monthly budget does not cover this request."


class ReservationNotFound(NotFoundError):
    default_detail = "Reservation not found."


class InvalidBillingRequest(DomainError):
    code = "invalid"


# -- mappers ----------------------------------------------------------------------------


def to_price(row: PriceModel) -> Price:
    return Price(
        model=row.model,
        provider=row.provider,
        input_usd_per_mtok=row.input_usd_per_mtok,
        output_usd_per_mtok=row.output_usd_per_mtok,
        valid_from=row.valid_from,
    )


def to_reservation(row: ReservationModel) -> Reservation:
    return Reservation(
        id=row.id,
        organization_id=row.organization_id,
        api_key_id=row.api_key_id,
        task_id=row.task_id,
        model=row.model,
        amount_usd=row.amount_usd,
        input_usd_per_mtok=row.input_usd_per_mtok,
        output_usd_per_mtok=row.output_usd_per_mtok,
        status=row.status,
        created_at=row.created_at,
    )


def to_entry(row: UsageEntryModel) -> UsageEntry:
    return UsageEntry(
        id=row.id,
        organization_id=row.organization_id,
        api_key_id=row.api_key_id,
        task_id=row.task_id,
        model=row.model,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        input_usd_per_mtok=row.input_usd_per_mtok,
        output_usd_per_mtok=row.output_usd_per_mtok,
        cost_usd=row.cost_usd,
        saved_usd=row.saved_usd,
        cached=row.cached,
        created_at=row.created_at,
    )


def to_status(*, period: date, limit: Decimal, spent: Decimal, reserved: Decimal) -> BudgetStatus:
    return BudgetStatus(
        period=money.period_label(period),
        limit_usd=money.quantize(limit),
        spent_usd=money.quantize(spent),
        reserved_usd=money.quantize(reserved),
        remaining_usd=money.quantize(max(limit - spent - reserved, money.ZERO)),
    )


# -- shared lookups ---------------------------------------------------------------------


def price_row(model: str, on: date | None = None) -> PriceModel:
    """The catalog row in force for ``model`` on ``on`` (today, UTC), or ``UnknownModel``."""
    row = selectors.price_find(model=model, on=on or money.today_utc())
    if row is None:
        raise UnknownModel(f"Model {model!r} is not in the price catalog.", model=model)
    return row


def check_usage(usage: TokenUsage) -> None:
    if usage.input_tokens < 0 or usage.output_tokens < 0:
        raise InvalidBillingRequest("Token counts must not be negative.")
