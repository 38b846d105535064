"""The sync's arithmetic (docs/billing-rules.md §12): cost to whole units, and what to report.

Pure functions over Decimal: each price's cost goes to one dimension of the listing
(``cost_by_dimension``); per dimension, ``units_total = floor(cost / unit_price)`` at hourly
runs (the remainder below one unit carries forward), the listing's close policy at the final
report, and ``delta = units_total - units_reported``: sent when positive, recorded as
over-reported when negative, never sent negative.

A contract with consumption includes some units per dimension and period
(docs/billing-rules.md §12.6): they are drawn down first, so ``units_total`` is the overage,
``max(0, units(cost) - included)``, with ``included`` the quantity in effect at the end of the
usage measured (``worker/entitlements.py``). The cost stays exact; only whole units are compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

from billing_core import PriceCost
from billing_core.money import divide_to_integral, exact

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

    units_total: int  # units owed to date: above the included units, when the contract includes some
    delta: int  # units to send now (>= 0)
    over_reported: int  # units reported beyond the current total (>= 0)


def overage(units: int, included: int) -> int:
    """Return the units above what the contract includes (the included ones are drawn down first)."""
    return max(units - included, 0)


def plan_report(cost: Decimal, unit_price: Decimal, units_reported: int, *, final: bool = False,
                close_policy: str = "floor", included: int = 0) -> ReportPlan:
    """Return the units to send given the cost to date, the units already reported and the units included."""
    total = overage(units_for(cost, unit_price, close_policy if final else "floor"), included)
    difference = total - units_reported
    return ReportPlan(units_total=total, delta=max(difference, 0), over_reported=max(-difference, 0))


REMAINING = "remaining"  # a dimension's ``prices``: every price no other dimension names


@dataclass(frozen=True)
class Dimension:
    """One marketplace dimension of a listing: its unit price and the prices whose cost it reports."""

    name: str
    unit_price: Decimal
    prices: tuple[str, ...] | None = None  # price keys or item ids; None: the remaining prices


class UnmappedPrice(ValueError):
    """A price of the subscription maps to no dimension of the listing (and none takes the rest)."""

    reason = "unmapped_price"


def dimensions_of(dimension: str, unit_price: str, dimensions: Sequence[Mapping[str, Any]] | None,
                  overrides: Mapping[str, Decimal] | None = None) -> tuple[Dimension, ...]:
    """Return a listing's dimensions: its stored ``dimensions``, else the single ``dimension`` of all prices.

    ``overrides`` (a contract's own pricing) replace unit prices by dimension name.
    """
    overrides = overrides or {}
    if not dimensions:
        return (Dimension(dimension, overrides.get(dimension, Decimal(unit_price))),)
    return tuple(Dimension(d["name"], overrides.get(d["name"], Decimal(str(d["unit_price"]))),
                           None if d["prices"] == REMAINING else tuple(d["prices"]))
                 for d in dimensions)


def cost_by_dimension(per_price: Iterable[PriceCost], dimensions: Sequence[Dimension], *,
                      include_fixed_fees: bool) -> dict[str, Decimal]:
    """Return each dimension's unrounded cost (docs/marketplaces.md §1.9).

    A price goes to the dimension that names its key, else its item; any other usage price
    (and fixed fee, with ``include_fixed_fees``) to the dimension of the remaining prices.
    A fixed fee named by a dimension is reported whatever ``include_fixed_fees`` says.
    """
    out = {d.name: Decimal(0) for d in dimensions}
    named = {ref: d.name for d in dimensions for ref in d.prices or ()}
    rest = next((d.name for d in dimensions if d.prices is None), None)
    with exact():
        for cost in per_price:
            name = named.get(cost.price.key) or named.get(cost.price.item_id)
            if name is None:
                if cost.price.metric_id is None and not include_fixed_fees:
                    continue
                if rest is None:
                    raise UnmappedPrice(f"price {cost.price.key!r} (item {cost.price.item_id!r}) maps to no "
                                        "dimension of the listing, and no dimension takes the remaining prices")
                name = rest
            out[name] += cost.total_unrounded
    return out


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
