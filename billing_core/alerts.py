"""Alerts (Orb's model): thresholds on a subscription's usage of one metric (``usage_exceeded``) or
on its current billing period's amount (``cost_exceeded``), for one subscription, every
subscription of a plan (or of one plan version), or a customer (credit balance types, stored and
listed; this service keeps no credit balance, so they never fire).

Each threshold fires once per billing period per subscription: a firing is stored keyed by
(alert, subscription, period start, threshold) before its event is emitted, so an evaluation that
runs twice, or an alert disabled and enabled again, never fires it twice. A threshold crossed
while its alert is disabled is stored as crossed without an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Sequence

from billing_core.errors import InvalidInput, NotFound

__all__ = [
    "Alert", "AlertNotFound", "CREDIT_TYPES", "SUBSCRIPTION_TYPES", "crossed", "parse_thresholds",
]

SUBSCRIPTION_TYPES = ("usage_exceeded", "cost_exceeded")
CREDIT_TYPES = ("credit_balance_depleted", "credit_balance_dropped", "credit_balance_recovered")


class AlertNotFound(NotFound):
    """No alert has this id."""


@dataclass(frozen=True)
class Alert:
    """An alert configuration: its scope (one of subscription, plan, customer), type and thresholds."""

    id: str
    type: str
    thresholds: tuple[Decimal, ...]
    enabled: bool
    created_at: datetime
    subscription_id: str | None = None
    plan_id: str | None = None
    plan_version: int | None = None
    customer_id: str | None = None
    metric_id: str | None = None
    currency: str | None = None


def parse_thresholds(value: Any, *, required: bool = True) -> tuple[Decimal, ...]:
    """Return thresholds ``[{"value": n}, ...]`` as Decimals (InvalidInput naming ``thresholds``)."""
    if value is None and not required:
        return ()
    if not isinstance(value, list) or (required and not value):
        raise InvalidInput("thresholds: must be a non-empty list of {\"value\": number}", field="thresholds")
    out: list[Decimal] = []
    for i, item in enumerate(value):
        raw = item.get("value") if isinstance(item, dict) else None
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str, Decimal)):
            raise InvalidInput(f"thresholds[{i}].value: must be a number", field="thresholds")
        try:
            number = Decimal(str(raw))
        except InvalidOperation:
            raise InvalidInput(f"thresholds[{i}].value: must be a number", field="thresholds") from None
        if not number.is_finite() or number < 0 or number > Decimal("1e15"):
            raise InvalidInput(f"thresholds[{i}].value: must be between 0 and 10^15", field="thresholds")
        out.append(number)
    return tuple(sorted(set(out)))


def crossed(thresholds: Iterable[Decimal], value: Decimal, already: Sequence[Decimal]) -> list[Decimal]:
    """Return the thresholds ``value`` has reached (at or above) that have not fired yet, lowest first."""
    done = set(already)
    return [t for t in sorted(thresholds) if value >= t and t not in done]
