"""Costs carried forward: an hourly run reuses a contract's cost when nothing it depends on changed.

A contract's cost to date over ``[start, end)`` depends on its subscription's timeline, its
listing (dimensions, fixed fees, metering start), the window, and the usage of its metrics.
When a run computes a cost, it stores it with what it rested on (``CostMemoRow``):

- ``basis``: a digest of the subscription revision, the listing and contract versions (and the
  listing's price-to-dimension mapping and fixed-fee choice, and the contract's entitlements —
  what it includes per dimension, with their instants), the window's start and billing
  period, and the *structure* of the charges (each price interval's
  service and cadence periods; a fixed fee's accrued window when the listing reports it);
- ``position``: the billing core's change-log watermark, read before the usage was;
- ``window_end`` and the event names its usage reads.

The next run reuses the cost for ``[start, end')`` only when the basis is the same (so the
charges differ at most in where their usage windows end) and the billing core says the usage
is unchanged (``billing_core.changes.unchanged_usage``: no change after the watermark, no event
stamped in ``[window_end, end')``). Then every charge reads the same usage and rates the same,
so the cost is the one a computation from scratch gives — ``tests/worker/test_cost_memo.py``
checks exactly that over random histories. Anything else computes the contract as before, and
the final flush and the dashboard's previews always compute from scratch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from billing_core import Mark, Subscription, charges_for_timeframe, unchanged_usage
from worker.ledger import utc
from worker.metering import dimensions_of
from worker.persistence.contracts import ContractRow, ListingRow
from worker.persistence.cost_memo import cost_memo_table

__all__ = ["Computed", "Window", "basis", "reuse", "store"]

# (contract, listing, subscription, window start, window end, period start)
Window = tuple[ContractRow, ListingRow, Subscription, datetime, datetime, datetime]
# (window, basis, event names, cost per dimension)
Computed = tuple[Window, str, frozenset[str], Mapping[str, Decimal]]


def _period(p: Any) -> list[str]:
    return [p.start.isoformat(), p.end.isoformat()]


def basis(window: Window) -> tuple[str, frozenset[str]]:
    """Return the digest of what the window's cost depends on besides usage and where its usage
    windows end, and the metric ids whose usage it reads."""
    contract, listing, sub, start, end, period_start = window
    dimensions = dimensions_of(listing.dimension, listing.unit_price, listing.dimensions)
    named = {ref for d in dimensions for ref in d.prices or ()}
    charges = []
    metrics = set()
    for charge in charges_for_timeframe(sub, start, end):
        price = charge.interval.price
        if price.is_fixed:
            if not listing.include_fixed_fees and price.key not in named and price.item_id not in named:
                continue  # reported nowhere: it cannot change a dimension's cost
            # Accrued by days elapsed: the window it accrued over is part of the cost.
            charges.append([charge.interval.id, "fixed", _period(charge.service), _period(charge.full),
                            _period(charge.usage_window), charge.prorate])
        else:
            metrics.add(str(price.metric_id))
            charges.append([charge.interval.id, "usage", _period(charge.service), _period(charge.full),
                            charge.usage_window.start.isoformat()])
    mapping = [[d.name, sorted(d.prices) if d.prices is not None else None] for d in dimensions]
    # A changed entitlement never carries a cost stored before it (docs/billing-rules.md §12.6).
    included = contract.entitlements or []
    listed = [sub.id, len(sub.edits), contract.id, _stamp(contract.updated_at), listing.id,
              _stamp(listing.updated_at), mapping, bool(listing.include_fixed_fees), start.isoformat(),
              period_start.isoformat(), charges, included]
    return hashlib.sha256(json.dumps(listed, separators=(",", ":")).encode()).hexdigest(), frozenset(metrics)


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def reuse(engine: Engine, windows: Sequence[Window], *, position: int, until: datetime) -> dict[str, dict[str, Decimal]]:
    """Return the stored cost of each window that it still equals (by contract id).

    ``position`` is the watermark just read: a stored one beyond it means the change log was
    emptied since (its positions start again), so nothing stored can be trusted.
    """
    if not windows:
        return {}
    t = cost_memo_table
    ids = [w[0].id for w in windows]
    with engine.connect() as conn:
        rows = {r.contract_id: r for r in conn.execute(select(t).where(t.c.contract_id.in_(ids)))}
    candidates: dict[str, tuple[Window, Any]] = {}
    for window in windows:
        row = rows.get(window[0].id)
        if (row is None or int(row.position) > position or utc(row.window_end) > window[4]
                or row.basis != basis(window)[0]):
            continue
        candidates[window[0].id] = (window, row)
    if not candidates:
        return {}
    marks: dict[str, Mark] = {}
    customers: dict[str, list[str]] = {}
    for contract_id, (window, row) in candidates.items():
        customer = window[2].customer_id
        mark = Mark(int(row.position), utc(row.window_end), frozenset(json.loads(row.event_names)))
        known = marks.get(customer)
        if known is not None:  # two contracts of one customer: one mark that holds for both
            mark = Mark(min(mark.position, known.position), min(mark.since, known.since),
                        mark.event_names | known.event_names)
        marks[customer] = mark
        customers.setdefault(customer, []).append(contract_id)
    still = unchanged_usage(engine, marks, until)
    return {contract_id: {k: Decimal(v) for k, v in json.loads(candidates[contract_id][1].costs).items()}
            for customer in still for contract_id in customers[customer]}


def store(engine: Engine, computed: Sequence[Computed], *, position: int, now: datetime) -> None:
    """Store the costs just computed (from usage read after ``position``), replacing older ones."""
    if not computed:
        return
    t = cost_memo_table
    rows = [{"contract_id": window[0].id, "basis": digest, "position": position, "window_end": window[4],
             "event_names": json.dumps(sorted(names)), "costs": json.dumps({k: str(v) for k, v in sorted(cost.items())}),
             "computed_at": now} for window, digest, names, cost in computed]
    try:
        with engine.begin() as conn:
            conn.execute(delete(t).where(t.c.contract_id.in_([r["contract_id"] for r in rows])))
            conn.execute(insert(t), rows)
    except IntegrityError:  # another run stored some of them meanwhile: theirs stand (a cache)
        pass
