"""Public surface of the billing context: prices, budgets, reservations, the usage ledger
and reports. The llm context calls these on every submit, completion, failure and cancel.

Every function is keyword-only (but ``budget_reserve``, which takes its request model),
takes and returns ``contracts.billing`` models, and lets no ORM object out. Other
contexts import this package, never its modules' internals or ``billing.models``.
"""

from billing.services._common import BudgetExceeded, InvalidBillingRequest, ReservationNotFound, UnknownModel
from billing.services.budgets import budget_reserve, budget_set, budget_status, budget_transaction
from billing.services.ledger import (
    reservation_release,
    reservation_settle,
    reservations_held,
    usage_record_cache_hit,
)
from billing.services.prices import estimate_cost, price_catalog_seed, price_current, price_list
from billing.services.reports import MAX_REPORT_DAYS, cost_report, usage_report

__all__ = [
    "MAX_REPORT_DAYS",
    "BudgetExceeded",
    "InvalidBillingRequest",
    "ReservationNotFound",
    "UnknownModel",
    "budget_reserve",
    "budget_set",
    "budget_status",
    "budget_transaction",
    "cost_report",
    "estimate_cost",
    "price_catalog_seed",
    "price_current",
    "price_list",
    "reservation_release",
    "reservation_settle",
    "reservations_held",
    "usage_record_cache_hit",
    "usage_report",
]
