"""Items, plans and immutable plan versions.

A published plan version is never edited: a change of prices or adjustments is version n+1.
Prices keep a stable ``key`` across versions (their lineage), so a price edited in version 2
has a new id and the same key as in version 1. One version is the default for new
subscriptions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from billing_core.adjustments import Adjustment
from billing_core.errors import NotFound
from billing_core.money import FieldError
from billing_core.pricing import Price

__all__ = [
    "ItemNotFound",
    "PlanNotFound",
    "PriceNotFound",
    "Item",
    "PlanVersion",
    "Plan",
    "PlanError",
    "create_plan",
    "add_version",
    "set_default_version",
    "price_lineage",
    "Lineage",
    "ChangeKind",
    "derive_lineage",
    "fill_lineage",
]


class ItemNotFound(NotFound):
    """No item has this id."""


class PlanNotFound(NotFound):
    """No plan has this id or external id."""


class PriceNotFound(NotFound):
    """No price has this id."""


class PlanError(FieldError):
    """A plan operation breaks a rule (unknown version, duplicate key, mixed currencies)."""


@dataclass(frozen=True)
class Item:
    """A billable thing (Orb's item): prices charge for items."""

    id: str
    name: str
    created_at: datetime


class ChangeKind(StrEnum):
    """How a price or adjustment of version n+1 relates to version n."""

    ADDED = "added"
    EDITED = "edited"
    REMOVED = "removed"
    KEPT = "kept"


@dataclass(frozen=True)
class Lineage:
    """One entry of a version's lineage: a price or adjustment added, edited, removed or kept.

    ``key`` is stable across versions (a price's key; an adjustment's is the id it had when it
    was first added). ``id`` is this version's definition (None when removed), ``previous_id``
    the one of the version before (None when added).
    """

    kind: str  # "price" | "adjustment"
    key: str
    change: ChangeKind
    id: str | None
    previous_id: str | None


@dataclass(frozen=True)
class PlanVersion:
    """An immutable set of prices and adjustments; ``version`` counts from 1.

    ``lineage`` says, for every price and adjustment, what this version did to it relative to
    the version before (version 1: everything ``added``); removals are kept there explicitly.
    """

    version: int
    prices: tuple[Price, ...]
    adjustments: tuple[Adjustment, ...] = ()
    created_at: datetime | None = None
    lineage: tuple[Lineage, ...] = ()

    def price_by_key(self, key: str) -> Price | None:
        """Return this version's price with the given stable key, if any."""
        return next((p for p in self.prices if p.key == key), None)

    def changes(self, kind: str) -> dict[str, Lineage]:
        """Return this version's lineage entries of one kind by stable key."""
        return {entry.key: entry for entry in self.lineage if entry.kind == kind}

    def adjustment_key(self, adjustment_id: str) -> str:
        """Return the stable key of one of this version's adjustments."""
        for entry in self.lineage:
            if entry.kind == "adjustment" and entry.id == adjustment_id:
                return entry.key
        return adjustment_id

    def adjustments_by_key(self) -> dict[str, Adjustment]:
        """Return this version's adjustments by stable key (their lineage across versions)."""
        return {self.adjustment_key(a.id): a for a in self.adjustments}


@dataclass(frozen=True)
class Plan:
    """A plan: its identity, currency and every version it has had."""

    id: str
    name: str
    currency: str
    versions: tuple[PlanVersion, ...]
    default_version: int = 1
    external_plan_id: str | None = None
    description: str = ""
    status: str = "active"
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None

    def version(self, number: int | None = None) -> PlanVersion:
        """Return a version by number, or the default version."""
        number = self.default_version if number is None else number
        for candidate in self.versions:
            if candidate.version == number:
                return candidate
        raise PlanError(f"plan {self.id} has no version {number}")

    @property
    def latest_version(self) -> int:
        """Return the highest version number."""
        return max(v.version for v in self.versions)


def _check_prices(currency: str, prices: Iterable[Price]) -> tuple[Price, ...]:
    prices = tuple(prices)
    keys = [p.key for p in prices]
    if len(set(keys)) != len(keys):
        raise PlanError("prices: two prices share a key")
    ids = [p.id for p in prices]
    if len(set(ids)) != len(ids):
        raise PlanError("prices: two prices share an id")
    for p in prices:
        if p.currency != currency:
            raise PlanError(f"prices: price {p.id} is in {p.currency}, the plan in {currency}")
    return prices


def create_plan(*, id: str, name: str, currency: str, prices: Iterable[Price],
                adjustments: Iterable[Adjustment] = (), now: datetime,
                external_plan_id: str | None = None, description: str = "",
                metadata: Mapping[str, str] | None = None) -> Plan:
    """Create a plan with version 1 as its default."""
    v1 = PlanVersion(1, _check_prices(currency, prices), tuple(adjustments), now)
    v1 = replace(v1, lineage=derive_lineage(None, v1))
    return Plan(id=id, name=name, currency=currency, versions=(v1,), default_version=1,
                external_plan_id=external_plan_id, description=description,
                metadata=dict(metadata or {}), created_at=now)


def add_version(plan: Plan, *, prices: Iterable[Price], adjustments: Iterable[Adjustment] = (),
                now: datetime, make_default: bool = False,
                replaced_adjustments: Mapping[str, str] | None = None) -> Plan:
    """Return the plan with a new version n+1 holding the given prices and adjustments.

    A price with the key of a latest-version price edits it; ``replaced_adjustments`` maps a new
    adjustment's id to the latest-version adjustment it edits (Orb's ``replace_adjustments``).
    """
    prices = _check_prices(plan.currency, prices)
    old_ids = {p.id: p for v in plan.versions for p in v.prices}
    for p in prices:
        if p.id in old_ids and old_ids[p.id] != p:
            raise PlanError(f"prices: price {p.id} exists with another definition; an edit needs a new id")
    adjustments = tuple(adjustments)
    if len({a.id for a in adjustments}) != len(adjustments):
        raise PlanError("adjustments: two adjustments share an id")
    number = plan.latest_version + 1
    latest = plan.version(plan.latest_version)
    new = PlanVersion(number, prices, adjustments, now)
    new = replace(new, lineage=derive_lineage(latest, new, replaced_adjustments))
    return replace(plan, versions=plan.versions + (new,),
                   default_version=number if make_default else plan.default_version)


def set_default_version(plan: Plan, number: int) -> Plan:
    """Return the plan with another default version for new subscriptions."""
    plan.version(number)
    return replace(plan, default_version=number)


def price_lineage(plan: Plan, key: str) -> list[tuple[int, str, str]]:
    """Return a price key's history: (version, price id, "added" | "edited" | "kept" | "removed")."""
    history: list[tuple[int, str, str]] = []
    previous: Price | None = None
    for version in sorted(plan.versions, key=lambda v: v.version):
        current = version.price_by_key(key)
        if current is None and previous is not None:
            history.append((version.version, previous.id, "removed"))
        elif current is not None:
            status = "added" if previous is None else ("kept" if current.id == previous.id else "edited")
            history.append((version.version, current.id, status))
        previous = current
    return history


def derive_lineage(previous: PlanVersion | None, current: PlanVersion,
                   replaced_adjustments: Mapping[str, str] | None = None) -> tuple[Lineage, ...]:
    """Return what ``current`` did to every price and adjustment of ``previous``.

    Prices follow their stable key. Adjustments carry the key of the adjustment they keep (same
    id) or replace (``replaced_adjustments``: new id -> previous id); any other is added.
    """
    entries: list[Lineage] = []
    before = {p.key: p for p in previous.prices} if previous else {}
    for price in current.prices:
        old = before.pop(price.key, None)
        change = ChangeKind.ADDED if old is None else (ChangeKind.KEPT if old.id == price.id else ChangeKind.EDITED)
        entries.append(Lineage("price", price.key, change, price.id, old.id if old else None))
    entries.extend(Lineage("price", key, ChangeKind.REMOVED, None, old.id) for key, old in before.items())

    replaced = dict(replaced_adjustments or {})
    old_adjustments = {a.id: (previous.adjustment_key(a.id) if previous else a.id)
                       for a in (previous.adjustments if previous else ())}
    for adjustment in current.adjustments:
        previous_id = adjustment.id if adjustment.id in old_adjustments else replaced.get(adjustment.id)
        if previous_id is not None and previous_id not in old_adjustments:
            raise PlanError(f"replace_adjustments: {previous_id} is not an adjustment of version {previous.version if previous else 0}")
        if previous_id is None:
            entries.append(Lineage("adjustment", adjustment.id, ChangeKind.ADDED, adjustment.id, None))
            continue
        key = old_adjustments.pop(previous_id)
        change = ChangeKind.KEPT if previous_id == adjustment.id else ChangeKind.EDITED
        entries.append(Lineage("adjustment", key, change, adjustment.id, previous_id))
    entries.extend(Lineage("adjustment", key, ChangeKind.REMOVED, None, old_id)
                   for old_id, key in old_adjustments.items())
    return tuple(entries)


def fill_lineage(versions: Iterable[PlanVersion]) -> tuple[PlanVersion, ...]:
    """Return the versions (oldest first) with the lineage of any stored without one derived."""
    result: list[PlanVersion] = []
    for version in sorted(versions, key=lambda v: v.version):
        if not version.lineage:
            version = replace(version, lineage=derive_lineage(result[-1] if result else None, version))
        result.append(version)
    return tuple(result)
