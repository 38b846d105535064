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


@dataclass(frozen=True)
class PlanVersion:
    """An immutable set of prices and adjustments; ``version`` counts from 1."""

    version: int
    prices: tuple[Price, ...]
    adjustments: tuple[Adjustment, ...] = ()
    created_at: datetime | None = None

    def price_by_key(self, key: str) -> Price | None:
        """Return this version's price with the given stable key, if any."""
        return next((p for p in self.prices if p.key == key), None)


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
    return Plan(id=id, name=name, currency=currency, versions=(v1,), default_version=1,
                external_plan_id=external_plan_id, description=description,
                metadata=dict(metadata or {}), created_at=now)


def add_version(plan: Plan, *, prices: Iterable[Price], adjustments: Iterable[Adjustment] = (),
                now: datetime, make_default: bool = False) -> Plan:
    """Return the plan with a new version n+1 holding the given prices and adjustments."""
    prices = _check_prices(plan.currency, prices)
    old_ids = {p.id: p for v in plan.versions for p in v.prices}
    for p in prices:
        if p.id in old_ids and old_ids[p.id] != p:
            raise PlanError(f"prices: price {p.id} exists with another definition; an edit needs a new id")
    number = plan.latest_version + 1
    new = PlanVersion(number, prices, tuple(adjustments), now)
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
