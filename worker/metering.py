"""The sync's arithmetic (docs/billing-rules.md §12): cost to whole units, and what to report.

Pure functions over Decimal: ``units_total = floor(cost / unit_price)`` at hourly runs (the
remainder below one unit carries forward), the listing's close policy at the final report,
and ``delta = units_total - units_reported``: sent when positive, recorded as over-reported
when negative, never sent negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from billing_core.money import divide_to_integral

_ROUNDING = {"floor": ROUND_FLOOR, "half_up": ROUND_HALF_UP, "ceil": ROUND_CEILING}


def units_for(cost: Decimal, unit_price: Decimal, policy: str = "floor") -> int:
    """Return the whole units of ``unit_price`` that ``cost`` amounts to, rounded per ``policy``."""
    if unit_price <= 0:
        raise ValueError("unit_price must be positive")
    if cost <= 0:
        return 0
    return divide_to_integral(cost, unit_price, _ROUNDING[policy])  # from the exact quotient


@dataclass(frozen=True)
class ReportPlan:
    """What one run should do for one contract and dimension."""

    units_total: int
    delta: int  # units to send now (>= 0)
    over_reported: int  # units reported beyond the current total (>= 0)


def plan_report(cost: Decimal, unit_price: Decimal, units_reported: int, *, final: bool = False,
                close_policy: str = "floor") -> ReportPlan:
    """Return the units to send given the cost to date and the units already reported."""
    total = units_for(cost, unit_price, close_policy if final else "floor")
    difference = total - units_reported
    return ReportPlan(units_total=total, delta=max(difference, 0), over_reported=max(-difference, 0))


def hour_floor(instant: datetime) -> datetime:
    """Return the start of the UTC hour containing ``instant``."""
    instant = instant.astimezone(timezone.utc)
    return instant.replace(minute=0, second=0, microsecond=0)


def previous_hour(now: datetime) -> datetime:
    """Return the stamp of the hour that ended most recently (the hourly run reports under it)."""
    return hour_floor(now) - timedelta(hours=1)


def ledger_key(contract_id: str, dimension: str, hour: datetime) -> str:
    """Return the deterministic report key (contract, dimension, hour)."""
    return f"{contract_id}:{dimension}:{hour_floor(hour).strftime('%Y-%m-%dT%H')}"
