"""Plan migrations: moving a subscription from an older plan version to a newer one.

A migration is, per subscription, one timeline edit at the subscription's effective instant
(docs/billing-rules.md §8.1). The edit follows the new version's lineage (``PlanVersion.lineage``):

* an **edited** price ends where the subscription had it and its successor starts there, up to
  where the predecessor would have ended (an interval the subscription ended ad hoc stays ended);
* an **added** price starts; a **removed** price ends; a **kept** price is untouched;
* a price the subscription removed ad hoc (no plan interval of its key at the instant) is not
  re-added by an edit;
* a subscription-level override (``replace_prices``) of a price the new version edits or
  removes is kept and reported as a **conflict**, unless ``overrides`` is ``replace``, which
  ends the override and starts the new plan price;
* plan adjustments follow the same rules by their stable key; a subscription-level adjustment of
  the same type over the same prices as a plan adjustment the new version edits is an override.

Fixed fees are prorated across the instant as any plan change is (the intervals split there).
An instant in the past edits the timeline from there, as backdated edits do. The edit records
what it replaced (:class:`Undo`) so a migration canceled before its instant can revert it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from billing_core.adjustments import Adjustment
from billing_core.money import FieldError
from billing_core.periods import ensure_utc, months_in, period_containing
from billing_core.plans import ChangeKind, Plan, PlanVersion
from billing_core.pricing import Price
from billing_core.subscriptions import (
    AdjustmentInterval, PlanPhase, PriceInterval, Subscription, billing_period, log_edit, next_id,
)

__all__ = [
    "LIVE", "MigrationError", "EffectiveTime", "Overrides", "Outcome", "Undo", "MigrationResult",
    "parse_effective_time", "effective_instant", "migrate_subscription", "revert_migration",
]


class MigrationError(FieldError):
    """A migration request breaks a rule (unknown version, bad effective time)."""


class EffectiveTime(StrEnum):
    """The per-subscription effective instants a migration may name instead of an instant."""

    END_OF_INVOICE = "end_of_invoice"
    END_OF_TERM = "end_of_term"


class Overrides(StrEnum):
    """What a migration does with subscription-level overrides of prices the new version edits."""

    KEEP = "keep"
    REPLACE = "replace"


LIVE = ("not_started", "in_progress")  # the statuses of a migration not finished (Orb's names)


class Outcome(StrEnum):
    """One subscription's outcome in a migration."""

    MIGRATED = "migrated"
    SKIPPED = "skipped"
    CONFLICT = "conflict"      # migrated, with overrides kept that the new version edits
    REVERTED = "reverted"      # migrated, then reverted by a cancel before its instant
    KEPT = "kept"              # migrated, canceled before its instant, but its revert could not run (the reason says why)


@dataclass(frozen=True)
class Undo:
    """What one migration edit changed: enough to revert it while its instant is in the future.

    ``intervals``/``adjustments``/``phases`` are the objects as they were before the edit (each
    was ended at the instant or, when it started there, dropped); ``added_*`` the ids it created.
    """

    instant: datetime
    intervals: tuple[PriceInterval, ...] = ()
    adjustments: tuple[AdjustmentInterval, ...] = ()
    phases: tuple[PlanPhase, ...] = ()
    added_intervals: tuple[str, ...] = ()
    added_adjustments: tuple[str, ...] = ()
    added_phase: PlanPhase | None = None


@dataclass(frozen=True)
class MigrationResult:
    """The migrated subscription (None when skipped), its outcome, instant, reasons and undo."""

    subscription: Subscription | None
    outcome: Outcome
    effective_at: datetime | None
    reasons: tuple[str, ...] = ()
    undo: Undo | None = None


def parse_effective_time(value: object, field: str = "effective_time") -> datetime | EffectiveTime:
    """Return an instant or one of the named effective times; anything else is refused naming the field."""
    if isinstance(value, datetime):
        try:
            return ensure_utc(value)
        except ValueError:
            raise MigrationError(f"{field}: must be an instant with a time zone") from None
    if isinstance(value, str):
        if value in {e.value for e in EffectiveTime}:
            return EffectiveTime(value)
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return ensure_utc(parsed)
    raise MigrationError(f"{field}: an ISO instant with a time zone, end_of_invoice or end_of_term is required")


def effective_instant(sub: Subscription, effective_time: datetime | EffectiveTime, now: datetime) -> datetime:
    """Return the instant a migration takes effect for one subscription.

    ``end_of_invoice``: the subscription's next billing-period boundary; ``end_of_term``: the end
    of its current term, the period of its longest recurring cadence (equal to the billing
    period when every price bills on one cadence); an instant before the subscription's start
    is its start.
    """
    if isinstance(effective_time, datetime):
        return max(ensure_utc(effective_time), sub.start)
    at = max(now, sub.start)
    if effective_time is EffectiveTime.END_OF_INVOICE:
        return billing_period(sub, at).end
    cadences = [i.price.cadence for i in sub.intervals if i.overlaps(at, at + _TICK) and _recurring(i.price)]
    if not cadences:
        return billing_period(sub, at).end
    longest = max(cadences, key=months_in)
    end = period_containing(at, longest, sub.anchor).end
    return end if sub.end is None else min(end, sub.end)


_TICK = datetime.resolution


def _recurring(price: Price) -> bool:
    try:
        months_in(price.cadence)
    except ValueError:
        return False
    return True


def _live(start: datetime, end: datetime | None, at: datetime) -> bool:
    return start <= at and (end is None or at < end)


def _same_prices(a: Adjustment, b: Adjustment, keys: dict[str, str]) -> bool:
    def norm(adj: Adjustment) -> set[str]:
        return {keys.get(name, name) for name in adj.applies_to_price_ids}
    return a.adjustment_type == b.adjustment_type and norm(a) == norm(b)


def migrate_subscription(sub: Subscription, plan: Plan, to_version: int, *, from_versions: Collection[int],
                         effective_time: datetime | EffectiveTime, overrides: Overrides | str,
                         now: datetime, migration_id: str, as_of: datetime | None = None) -> MigrationResult:
    """Return one subscription moved to ``to_version`` at its effective instant (or why it is skipped).

    ``as_of`` (default ``now``) is the instant ``end_of_invoice`` / ``end_of_term`` are resolved
    from: the migration's creation, so a run that spans a period boundary moves every subscription
    as of the same instant; ``now`` stamps the edit.
    """
    overrides = Overrides(overrides)
    target = plan.version(to_version)
    at = effective_instant(sub, effective_time, now if as_of is None else as_of)
    if sub.end is not None and at >= sub.end:
        return MigrationResult(None, Outcome.SKIPPED, at, ("the subscription ends before the effective instant",))
    if any(p.start > at for p in sub.phases):
        return MigrationResult(None, Outcome.SKIPPED, at, ("a plan change is scheduled after the effective instant",))
    phase = sub.phase_at(at)
    if phase.plan_id != plan.id:
        return MigrationResult(None, Outcome.SKIPPED, at, (f"on plan {phase.plan_id} at the effective instant",))
    if phase.plan_version == target.version:
        return MigrationResult(None, Outcome.SKIPPED, at, (f"already on version {target.version}",))
    if phase.plan_version not in from_versions:
        return MigrationResult(None, Outcome.SKIPPED, at, (f"on version {phase.plan_version}, not migrated from",))
    source = plan.version(phase.plan_version)
    return _apply(sub, plan, source, target, at, overrides, now, migration_id)


def _chain(source: PlanVersion, target: PlanVersion) -> dict[str, dict[str, ChangeKind]]:
    """Return, per kind and stable key, what ``target`` did relative to ``source`` (over every version between)."""
    result: dict[str, dict[str, ChangeKind]] = {"price": {}, "adjustment": {}}
    for kind in ("price", "adjustment"):
        target_ids = {e.key: e.id for e in target.lineage if e.kind == kind and e.id is not None}
        source_ids = {e.key: e.id for e in source.lineage if e.kind == kind and e.id is not None}
        for key in set(source_ids) | set(target_ids):
            if key not in source_ids:
                result[kind][key] = ChangeKind.ADDED
            elif key not in target_ids:
                result[kind][key] = ChangeKind.REMOVED
            else:
                result[kind][key] = ChangeKind.KEPT if source_ids[key] == target_ids[key] else ChangeKind.EDITED
    return result


class _Timeline:
    """One kind of interval (price or adjustment intervals) being edited at the instant: what the
    edit ended or dropped (as it was) and the ids it added, for the undo."""

    def __init__(self, items: tuple, at: datetime, prefix: str, sub_id: str, make: Callable[..., Any]):
        self.items, self.original = list(items), items
        self.at, self.prefix, self.sub_id, self.make = at, prefix, sub_id, make
        self.before: list = []
        self.added: list[str] = []

    def end(self, item: Any) -> None:
        self.before.append(item)
        index = self.items.index(item)
        if item.start < self.at:
            self.items[index] = replace(item, end=self.at)
        else:  # it starts at the instant: the successor takes its place
            del self.items[index]

    def start(self, definition: Any, end: datetime | None) -> None:
        new_id = next_id(self.sub_id, self.prefix, [i.id for i in self.items] + [i.id for i in self.original])
        self.items.append(self.make(new_id, definition, end))
        self.added.append(new_id)

    def follow(self, kind: str, key: str, change: ChangeKind, planned: Any, override: Any, successor: Any,
               overrides: Overrides, sub_end: datetime | None, version: int) -> str | None:
        """Apply one lineage entry; return the conflict it leaves, if any."""
        if change is ChangeKind.ADDED:
            self.start(successor, sub_end)
        elif change is ChangeKind.KEPT:
            pass  # the same definition carries on uninterrupted (no split, no proration)
        elif override is not None:
            if overrides is not Overrides.REPLACE:
                return (f"{kind} {key}: the subscription's override {override.definition_id} is kept; "
                        f"version {version} {change.value} it")
            self.end(override.interval)
            if change is ChangeKind.EDITED:
                self.start(successor, override.interval.end)
        elif planned is not None:
            self.end(planned)
            if change is ChangeKind.EDITED:
                self.start(successor, planned.end)
        # else: removed ad hoc by the subscription; an edit does not bring it back.
        return None


@dataclass(frozen=True)
class _Override:
    interval: Any
    definition_id: str


def _apply(sub: Subscription, plan: Plan, source: PlanVersion, target: PlanVersion, at: datetime,
           overrides: Overrides, now: datetime, migration_id: str) -> MigrationResult:
    changes = _chain(source, target)
    reasons: list[str | None] = []
    prices = _Timeline(sub.intervals, at, "pi", sub.id, lambda id, price, end: PriceInterval(
        id=id, price=price, start=at, end=end, plan_id=plan.id, plan_version=target.version, source="plan"))
    live = [i for i in sub.intervals if _live(i.start, i.end, at)]
    for key, change in sorted(changes["price"].items()):
        planned = next((i for i in live if i.source == "plan" and i.plan_id == plan.id and i.price.key == key), None)
        override = next((_Override(i, i.price.id) for i in live if i.source == "replace_prices" and i.price.key == key),
                        None)
        reasons.append(prices.follow("price", key, change, planned, override, target.price_by_key(key), overrides,
                                     sub.end, target.version))

    adjustments = _Timeline(sub.adjustment_intervals, at, "ai", sub.id, lambda id, adjustment, end: AdjustmentInterval(
        id=id, adjustment=adjustment, start=at, end=end, plan_version=target.version))
    price_keys = {p.id: p.key for v in plan.versions for p in v.prices}
    live_adjustments = [a for a in sub.adjustment_intervals if _live(a.start, a.end, at)]
    target_adjustments = target.adjustments_by_key()
    source_adjustments = source.adjustments_by_key()
    for key, change in sorted(changes["adjustment"].items()):
        old = source_adjustments.get(key)
        planned = next((a for a in live_adjustments if a.plan_version is not None
                        and old is not None and a.adjustment.id == old.id), None)
        override = None
        if old is not None and planned is None:
            override = next((_Override(a, a.adjustment.id) for a in live_adjustments if a.plan_version is None
                             and _same_prices(a.adjustment, old, price_keys)), None)
        reasons.append(adjustments.follow("adjustment", key, change, planned, override, target_adjustments.get(key),
                                          overrides, sub.end, target.version))
    conflicts = tuple(r for r in reasons if r)

    phases = list(sub.phases)
    current = sub.phase_at(at)
    phases.remove(current)
    if current.start < at:
        phases.append(replace(current, end=at))
    new_phase = PlanPhase(plan.id, target.version, at, current.end)
    phases.append(new_phase)
    phases.sort(key=lambda p: p.start)

    undo = Undo(instant=at, intervals=tuple(prices.before), adjustments=tuple(adjustments.before),
                phases=(current,), added_intervals=tuple(prices.added), added_adjustments=tuple(adjustments.added),
                added_phase=new_phase)
    migrated = replace(sub, intervals=tuple(prices.items), adjustment_intervals=tuple(adjustments.items),
                       phases=tuple(phases),
                       edits=log_edit(sub, "plan_migration", at, now, migration_id=migration_id, plan_id=plan.id,
                                  from_version=source.version, plan_version=target.version,
                                  conflicts=len(conflicts) or None))
    outcome = Outcome.CONFLICT if conflicts else Outcome.MIGRATED
    return MigrationResult(migrated, outcome, at, conflicts, undo)


def revert_migration(sub: Subscription, undo: Undo, *, now: datetime, migration_id: str,
                     as_of: datetime | None = None) -> Subscription:
    """Return the subscription with a not-yet-effective migration edit reverted.

    What the edit added is removed, what it ended or dropped is restored as it was; edits made
    since to other intervals stay. ``as_of`` (default ``now``) is the instant that decides "not yet
    effective": a canceled migration's cancel, so a revert that runs after the edit's instant
    passed is a backdated edit; ``now`` stamps it. Refused when the instant is not after ``as_of``.
    """
    if undo.instant <= (now if as_of is None else as_of):
        raise MigrationError(f"migration {migration_id}: already effective for subscription {sub.id}")
    intervals = _restore(sub.intervals, undo.intervals, set(undo.added_intervals), undo.instant)
    adjustments = _restore(sub.adjustment_intervals, undo.adjustments, set(undo.added_adjustments), undo.instant)
    phases = [p for p in sub.phases if p != undo.added_phase]
    for old in undo.phases:
        match = next((p for p in phases if (p.plan_id, p.plan_version, p.start) == (old.plan_id, old.plan_version, old.start)), None)
        if match is None:
            phases.append(old)
        elif match.end == undo.instant:
            phases[phases.index(match)] = old
    phases.sort(key=lambda p: p.start)
    return replace(sub, intervals=tuple(sorted(intervals, key=_order)),
                   adjustment_intervals=tuple(sorted(adjustments, key=_order)),
                   phases=tuple(phases),
                   edits=log_edit(sub, "plan_migration_reverted", undo.instant, now, migration_id=migration_id))


def _restore(current: tuple, before: tuple, added: set[str], instant: datetime) -> list:
    """Drop what the edit added; put back what it ended at ``instant`` or dropped, unless edited since."""
    restored = {item.id: item for item in before}
    result = []
    for item in current:
        if item.id in added:
            continue
        original = restored.pop(item.id, None)
        result.append(original if original is not None and item.end == instant else item)
    result.extend(restored.values())  # dropped because they started at the instant
    return result


def _order(interval: PriceInterval | AdjustmentInterval) -> tuple[int, str]:
    return (len(interval.id), interval.id)
