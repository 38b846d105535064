"""Contracts with consumption (docs/billing-rules.md §12.6): what a contract includes, per dimension, over time.

A contract's entitlements are a history of snapshots, each the included quantity of every
dimension from an instant on (``Entitlement``); a dimension a snapshot does not name includes
nothing. The marketplaces' lifecycle hooks read them (AWS GetEntitlements, Azure's plan with
included base quantities, Google's commitments) and put them on the contract event; applying
the event adds a snapshot effective at the event's instant (``with_change``). The hourly report
asks for the quantities in effect at the end of the usage it measures (``included_at``), and
``metering.plan_report`` reports only what lies above them.

Stored on the contract row (``contracts.entitlements``, JSON): ``[{"effective_at": ISO, "included":
{dimension: units}, "source": ...}]``, oldest first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

MAX_INCLUDED = 10**15  # units; larger is a typo, not a contract


class InvalidEntitlement(ValueError):
    """An included quantity is not a whole number of units in range; ``field`` names it."""

    def __init__(self, message: str, field: str = "entitlements"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Entitlement:
    """The included units of each dimension from ``effective_at`` on (until the next snapshot)."""

    effective_at: datetime
    included: Mapping[str, int] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the stored shape."""
        return {"effective_at": self.effective_at.isoformat(), "included": dict(sorted(self.included.items())),
                "source": self.source}


def included_quantities(values: Mapping[str, Any], field_name: str = "entitlements") -> dict[str, int]:
    """Return ``values`` as whole included units per dimension (raise ``InvalidEntitlement``).

    Booleans and fractions are refused: a marketplace's entitlement that is not a count of units
    (AWS's boolean or string entitlements) includes nothing and is left out by the caller.
    """
    out: dict[str, int] = {}
    for name, value in values.items():
        where = f"{field_name}.{name}"
        if not isinstance(name, str) or not name or len(name) > 255:
            raise InvalidEntitlement(f"{field_name}: dimension names are 1 to 255 characters", field_name)
        if isinstance(value, bool):
            raise InvalidEntitlement(f"{where}: must be a whole number of units", where)
        try:
            units = int(str(value).strip())
        except (TypeError, ValueError):
            raise InvalidEntitlement(f"{where}: must be a whole number of units", where) from None
        if not 0 <= units <= MAX_INCLUDED:
            raise InvalidEntitlement(f"{where}: must be between 0 and {MAX_INCLUDED}", where)
        out[name] = units
    return out


def history(stored: Sequence[Mapping[str, Any]] | None) -> tuple[Entitlement, ...]:
    """Return the stored snapshots, oldest first."""
    out = []
    for item in stored or ():
        moment = datetime.fromisoformat(str(item["effective_at"]))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        out.append(Entitlement(moment.astimezone(timezone.utc), {str(k): int(v) for k, v in item["included"].items()},
                               str(item.get("source") or "")))
    return tuple(sorted(out, key=lambda e: e.effective_at))


def included_at(snapshots: Sequence[Entitlement], at: datetime) -> dict[str, int]:
    """Return the included units per dimension in effect at ``at`` (the latest snapshot not after it)."""
    current: Mapping[str, int] = {}
    for snapshot in snapshots:
        if snapshot.effective_at > at:
            break
        current = snapshot.included
    return dict(current)


def with_change(snapshots: Sequence[Entitlement], included: Mapping[str, int], at: datetime,
                source: str = "") -> tuple[Entitlement, ...]:
    """Return the history with ``included`` in effect from ``at``; the same history when nothing changes.

    A snapshot at the same instant is replaced (a notification read again); one equal to what is
    already in effect at ``at`` adds nothing, so applying an event twice changes nothing.
    """
    at = at.astimezone(timezone.utc)
    if included_at(snapshots, at) == dict(included) and any(s.effective_at <= at for s in snapshots):
        return tuple(snapshots)
    if not included and not any(s.effective_at <= at for s in snapshots):
        return tuple(snapshots)  # nothing included before, nothing now
    kept = [s for s in snapshots if s.effective_at != at]
    kept.append(Entitlement(at, dict(included), source))
    return tuple(sorted(kept, key=lambda e: e.effective_at))


def as_json(snapshots: Sequence[Entitlement]) -> list[dict[str, Any]]:
    """Return the history in its stored shape."""
    return [s.to_json() for s in snapshots]
