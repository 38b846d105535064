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
from fractions import Fraction
import json
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


# --- usage allocations (docs/marketplaces.md §1.12) ------------------------------------------------

UNTAGGED = "[]"  # the combination key of usage that carries none of the listing's tags


def combination_key(tags: Iterable[tuple[str, str]]) -> str:
    """Return the stable key of a tag combination: its non-empty (key, value) pairs, sorted, as JSON."""
    return json.dumps(sorted((str(k), str(v)) for k, v in tags if v != ""), separators=(",", ":"))


def combination_tags(key: str) -> tuple[tuple[str, str], ...]:
    """Return the (key, value) pairs of a combination key (empty: untagged)."""
    return tuple((str(k), str(v)) for k, v in json.loads(key))


def _units_exact(cost: Fraction, unit_price: Decimal, policy: str) -> int:
    if cost <= 0:
        return 0
    quotient = cost / Fraction(unit_price)
    if policy == "ceil":
        return -((-quotient.numerator) // quotient.denominator)
    if policy == "half_up":
        quotient += Fraction(1, 2)
    return quotient.numerator // quotient.denominator


@dataclass(frozen=True)
class AllocationPlan:
    """One dimension's plan split over tag combinations: each combination keeps its own remainder."""

    units_total: int
    delta: int  # the record's quantity: the sum of ``deltas``
    over_reported: int
    deltas: dict[str, int]  # combination key -> units to send now (> 0 only)
    reported: dict[str, int]  # combination key -> units counted after this write


def plan_allocations(costs: Mapping[str, Fraction], unit_price: Decimal, reported: Mapping[str, int], *,
                     final: bool = False, close_policy: str = "floor", included: int = 0) -> AllocationPlan:
    """Return what to send per tag combination given each one's exact cost to date and units already counted.

    Per combination, ``units = floor(cost / unit_price)`` (the close policy at the final report)
    from its exact cost, minus what it already reported: its sub-unit remainder stays its own,
    exactly, as a dimension's does. The record's quantity is the sum of the combinations' units,
    so its allocations always sum to it.
    """
    if unit_price <= 0:
        raise ValueError("unit_price must be positive")
    policy = close_policy if final else "floor"
    if included > 0:
        return _plan_allocated_overage(costs, unit_price, reported, policy, included)
    deltas: dict[str, int] = {}
    counted: dict[str, int] = {}
    total = over = 0
    for combo in sorted(set(costs) | set(reported)):
        units = _units_exact(Fraction(costs.get(combo, 0)), unit_price, policy)
        before = reported.get(combo, 0)
        total += units
        if units > before:
            deltas[combo] = units - before
        over += max(before - units, 0)
        counted[combo] = max(units, before)
    return AllocationPlan(units_total=total, delta=sum(deltas.values()), over_reported=over, deltas=deltas,
                          reported=counted)


def _plan_allocated_overage(costs: Mapping[str, Fraction], unit_price: Decimal, reported: Mapping[str, int],
                            policy: str, included: int) -> AllocationPlan:
    """A contract with consumption whose listing allocates usage: the dimension's overage (its units over
    every combination, less what the contract includes) is what the record reports, so the included
    units are drawn down across combinations first; the units to send now are split over the
    combinations in proportion to each one's units not yet reported (largest remainder, ties by key),
    so the allocations sum to the record's quantity and the dimension never reports past its overage."""
    units = {combo: _units_exact(Fraction(costs.get(combo, 0)), unit_price, policy)
             for combo in set(costs) | set(reported)}
    before = {combo: reported.get(combo, 0) for combo in units}
    target = overage(sum(units.values()), included)
    counted = sum(before.values())
    delta = max(target - counted, 0)
    weights = {combo: units[combo] - before[combo] for combo in sorted(units) if units[combo] > before[combo]}
    deltas: dict[str, int] = {}
    if delta:
        whole = sum(weights.values())  # >= delta: the overage never exceeds every combination's units
        shares = {combo: Fraction(delta * w, whole) for combo, w in weights.items()}
        deltas = {combo: int(share) for combo, share in shares.items()}
        short = delta - sum(deltas.values())
        for combo in sorted(shares, key=lambda c: (-(shares[c] - int(shares[c])), c))[:short]:
            deltas[combo] += 1
        deltas = {combo: n for combo, n in deltas.items() if n > 0}
    after = {combo: before[combo] + deltas.get(combo, 0) for combo in units}
    return AllocationPlan(units_total=target, delta=delta, over_reported=max(counted - target, 0), deltas=deltas,
                          reported=after)


def split_by_usage(cost: Decimal, shares: Mapping[str, Decimal]) -> dict[str, Fraction]:
    """Return ``cost`` split over combinations in proportion to their usage ``shares``, exactly.

    No usage (or none positive) puts the whole cost on the untagged combination.
    """
    weights = {combo: Fraction(q) for combo, q in shares.items() if q > 0}
    whole = sum(weights.values(), Fraction(0))
    if whole <= 0:
        return {UNTAGGED: Fraction(cost)}
    return {combo: Fraction(cost) * weight / whole for combo, weight in weights.items()}


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
    with exact():
        for cost, name in dimension_of_each(per_price, dimensions, include_fixed_fees=include_fixed_fees):
            out[name] += cost.total_unrounded
    return out


def dimension_of_each(per_price: Iterable[PriceCost], dimensions: Sequence[Dimension], *,
                      include_fixed_fees: bool) -> list[tuple[PriceCost, str]]:
    """Return each reported price's cost with the name of the dimension it goes to (``cost_by_dimension``'s rule)."""
    named = {ref: d.name for d in dimensions for ref in d.prices or ()}
    rest = next((d.name for d in dimensions if d.prices is None), None)
    out: list[tuple[PriceCost, str]] = []
    for cost in per_price:
        name = named.get(cost.price.key) or named.get(cost.price.item_id)
        if name is None:
            if cost.price.metric_id is None and not include_fixed_fees:
                continue
            if rest is None:
                raise UnmappedPrice(f"price {cost.price.key!r} (item {cost.price.item_id!r}) maps to no "
                                    "dimension of the listing, and no dimension takes the remaining prices")
            name = rest
        out.append((cost, name))
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
