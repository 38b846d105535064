"""Usage allocations (docs/marketplaces.md §1.12): each dimension's cost split over tag combinations.

A listing names tag keys and the event properties that give their values
(``usage_allocations``). Each usage price's cost is split over the combinations of those
properties' values in proportion to the combination's share of the price's metric in the cost
window — one grouped read from the billing core per metric (``group_by`` the properties) —
exactly, as fractions; fixed fees and usage without any of the properties go to the untagged
combination. ``metering.plan_allocations`` then turns each combination's cost into whole units
with its own remainder, and the record's quantity is their sum.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from fractions import Fraction
from typing import Any, Sequence

from billing_core import Subscription, costs
from worker.metering import Dimension, combination_key, dimension_of_each, split_by_usage
from worker.persistence.contracts import ListingRow

Split = dict[str, tuple[tuple[str, Fraction], ...]]  # dimension -> ((combination key, exact cost), ...)


def enabled(listing: ListingRow) -> bool:
    """Tell whether the listing splits its records over tag combinations."""
    return bool(listing.usage_allocations)


def split_costs(sub: Subscription, listing: ListingRow, dimensions: Sequence[Dimension], start: datetime,
                end: datetime, source: Any) -> Split:
    """Return, per dimension, each tag combination's exact share of the cost of ``[start, end)``.

    Raises the billing core's ``OutOfRange`` and ``metering.UnmappedPrice`` as the cost does.
    """
    entries = listing.usage_allocations or []
    tags = tuple(e["tag"] for e in entries)
    properties = tuple(e["property"] for e in entries)
    out: dict[str, dict[str, Fraction]] = {d.name: {} for d in dimensions}
    if end <= start:
        return {name: () for name in out}
    result = costs(sub, start, end, source)
    shares: dict[str, dict[str, Any]] = {}
    for cost, name in dimension_of_each(result.per_price_costs, dimensions,
                                        include_fixed_fees=listing.include_fixed_fees):
        metric = cost.price.metric_id
        if metric is not None and metric not in shares:
            groups = source.usage(metric, sub.customer_id, start, end, group_by=properties).groups or {}
            by_combo: dict[str, Any] = defaultdict(int)
            for values, quantity in groups.items():
                by_combo[combination_key(zip(tags, values))] += quantity
            shares[metric] = by_combo
        for combo, part in split_by_usage(cost.total_unrounded, shares.get(metric, {}) if metric else {}).items():
            out[name][combo] = out[name].get(combo, Fraction(0)) + part
    return {name: tuple(sorted(parts.items())) for name, parts in out.items()}
