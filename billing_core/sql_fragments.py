"""The fragment-backed ``UsageSource``: whole hours and days from stored fragments, edges from raw events.

``FragmentUsageSource`` answers like ``SqlUsageSource`` — the same quantities, counts, skipped
events, groups and out-of-range errors — and reads raw events only where it must: the partial
hours at a window's edges, and the buckets that are missing or stale. A bucket is stale when the
usage change log (``billing_core.persistence.fragments``) holds a change after the position the
bucket was computed at that names its customer (or the customer's external id, or anyone) and
event name (or any) and overlaps its instants. Stale and missing buckets are recomputed in one
grouped query per level and stored, just in time, for the next read.

``unique_count`` metrics, definitions asked without a metric id, and a window with a sum the
database can give only as a float are answered by ``SqlUsageSource`` directly. Fragments are a
cache: dropping the three tables loses nothing.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from billing_core.errors import UsageOutOfRange
from billing_core.events import from_micros, to_micros
from billing_core.fragments import DAY, HOUR, MERGEABLE, Partial, cover
from billing_core.metric_definition import MetricDefinition
from billing_core.metrics import MetricNotFound
from billing_core.persistence.fragments import (
    buckets_table, changes_since, load_fragments, newest_change, save_fragments,
)
from billing_core.sql_usage import SqlUsageSource, _checked
from billing_core.usage import MetricsByDefinition, MetricUsage, UsageRequest, UsageResult

__all__ = [
    "FragmentStats", "FragmentUsageSource", "stale_buckets", "use_fragments", "usage_source", "verify_fragments",
]


_choices: "weakref.WeakKeyDictionary[sa.Engine, bool]" = weakref.WeakKeyDictionary()


def use_fragments(engine: sa.Engine, enabled: bool) -> None:
    """Choose whether ``usage_source(engine)`` reads fragments (the composition root sets it from settings)."""
    _choices[engine] = enabled


def usage_source(engine: sa.Engine) -> "FragmentUsageSource | SqlUsageSource":
    """Return the usage source of ``engine``'s database: fragments when turned on (``use_fragments``), else raw."""
    return FragmentUsageSource(engine) if _choices.get(engine, False) else SqlUsageSource(engine)


@dataclass
class FragmentStats:
    """What answered the reads of one source: fragments reused, buckets recomputed, raw edge reads."""

    reused: int = 0
    recomputed: int = 0
    raw_reads: int = 0


def _group_key(values: tuple[str, ...]) -> str:
    return json.dumps(list(values)) if values else ""


class FragmentUsageSource(MetricsByDefinition):
    """``UsageSource`` (and ``BatchUsageSource``) over fragments of the database behind ``engine``."""

    def __init__(self, engine: sa.Engine, definitions: Mapping[str, MetricDefinition] | None = None):
        self.engine = engine
        self.raw = SqlUsageSource(engine, definitions)
        self.stats = FragmentStats()

    def definition(self, metric_id: str) -> MetricDefinition:
        return self.raw.definition(metric_id)

    # UsageSource (usage, usage_bulk: MetricsByDefinition) -------------------------------------

    def usage_bulk_many(self, requests: Sequence[UsageRequest], customer_ids: Sequence[str], start: datetime,
                        end: datetime) -> Mapping[UsageRequest, Mapping[str, UsageResult]]:
        return {r: self.usage_bulk(r.metric_id, customer_ids, start, end, r.group_by) for r in requests}

    def evaluate(self, definition: MetricDefinition, customer_ids: Sequence[str], start: datetime,
                 end: datetime, group_by: tuple[str, ...] = (), *, metric_id: str | None = None
                 ) -> dict[str, UsageResult]:
        """Aggregate a definition for each customer, like ``SqlUsageSource.evaluate``."""
        ids = list(dict.fromkeys(customer_ids))
        if metric_id is None or definition.aggregation not in MERGEABLE or not ids:
            return self.raw.evaluate(definition, ids, start, end, group_by, metric_id=metric_id)
        groups = tuple(group_by) or definition.group_by
        try:
            merged = self._merged(definition, metric_id, ids, to_micros(start), to_micros(end), groups)
        except UsageOutOfRange:  # a float sum: the raw path names the customers it concerns
            return self.raw.evaluate(definition, ids, start, end, group_by, metric_id=metric_id)
        out: dict[str, UsageResult] = {}
        aggregation = definition.aggregation
        for cid in ids:
            parts = merged.get(cid, {})
            total = Partial.combine(parts.values())
            try:
                quantity = _checked(aggregation, total.quantity(aggregation), metric_id, cid)
                grouped = ({tuple(json.loads(g)): _checked(aggregation, p.quantity(aggregation), metric_id, cid,
                                                           tuple(json.loads(g)))
                            for g, p in sorted(parts.items())} if groups else None)
            except UsageOutOfRange as exc:
                out[cid] = exc
                continue
            out[cid] = MetricUsage(quantity=quantity, event_count=total.count,
                                   skipped=0 if aggregation == "count" else total.skipped, groups=grouped)
        return out

    # Fragments ---------------------------------------------------------------------------------

    def _merged(self, definition: MetricDefinition, metric_id: str, ids: list[str], start: int, end: int,
                groups: tuple[str, ...]) -> dict[str, dict[str, Partial]]:
        """Return {customer: {group key: partial}} over ``[start, end)``."""
        pieces = cover(start, end)
        merged: dict[str, dict[str, Partial]] = {}

        def add(customer: str, group: str, part: Partial) -> None:
            slot = merged.setdefault(customer, {})
            slot[group] = slot[group].merge(part) if group in slot else part

        for piece in pieces:
            if piece.kind == "raw":
                self.stats.raw_reads += 1
                for key, buckets in self.raw.partials(
                        definition, ids, from_micros(piece.start), from_micros(piece.end), bucket=HOUR,
                        group_by=groups).items():
                    for part in buckets.values():
                        add(key[0], _group_key(tuple(key[1:])), part)
        for size, kind in ((HOUR, "hour"), (DAY, "day")):
            wanted = [p.start for p in pieces if p.kind == kind]
            if wanted:
                for (customer, _), parts in self._current(definition, metric_id, ids, groups, size, wanted).items():
                    for group, part in parts.items():
                        add(customer, group, part)
        return merged

    def _current(self, definition: MetricDefinition, metric_id: str, ids: list[str], groups: tuple[str, ...],
                 size: int, buckets: list[int]) -> dict[tuple[str, int], dict[str, Partial]]:
        """Return the current partials of ``buckets`` for every customer, recomputing what is stale."""
        signature = json.dumps(list(groups)) if groups else ""
        with self.engine.connect() as conn:
            with conn.begin():
                position = newest_change(conn)
            # Only these buckets: hours of the same range may be stored, inside days read as days.
            positions, stored = load_fragments(conn, metric_id, signature, ids, size, buckets)
            stale = stale_buckets(conn, self.raw, definition.event_name, positions, size)
        needed = {(c, b) for c in ids for b in buckets if (c, b) not in positions} | stale
        self.stats.reused += len(buckets) * len(ids) - len(needed)
        self.stats.recomputed += len(needed)
        out = {key: parts for key, parts in stored.items() if key not in needed}
        if needed:
            customers = sorted({c for c, _ in needed})
            lo, hi = min(b for _, b in needed), max(b for _, b in needed) + size
            fresh = self.raw.partials(definition, customers, from_micros(lo), from_micros(hi), bucket=size,
                                      group_by=groups)
            computed: dict[tuple[str, int], dict[str, Partial]] = {key: {} for key in needed}
            for key, per_bucket in fresh.items():
                for bucket, part in per_bucket.items():
                    if (key[0], bucket) in computed:
                        computed[(key[0], bucket)][_group_key(tuple(key[1:]))] = part
            save_fragments(self.engine, metric_id, signature, size, position, computed, replaced=stale)
            out.update(computed)
        return out


def stale_buckets(conn: Any, raw: SqlUsageSource, event_name: str, positions: Mapping[tuple[str, int], int],
                  size: int) -> set[tuple[str, int]]:
    """Return the (customer, bucket) of ``positions`` that a later change touches."""
    stale: set[tuple[str, int]] = set()
    if not positions:
        return stale
    ids = sorted({customer for customer, _ in positions})
    by_customer: dict[str, list[int]] = {}
    for customer, bucket in positions:
        by_customer.setdefault(customer, []).append(bucket)
    aliases = raw._aliases(conn, ids)  # external id -> customer id
    for change in changes_since(conn, min(positions.values()), ids, sorted(aliases), event_name):
        if change.customer_id is not None:
            owners = [change.customer_id]
        elif change.external_customer_id is not None:
            owners = [aliases[change.external_customer_id]] if change.external_customer_id in aliases else []
        else:
            owners = ids
        for customer in owners:
            for bucket in by_customer.get(customer, ()):
                if change.id <= positions[(customer, bucket)]:
                    continue
                lo = change.ts_start if change.ts_start is not None else bucket
                hi = change.ts_end if change.ts_end is not None else bucket + size
                if lo < bucket + size and bucket < hi:
                    stale.add((customer, bucket))
    return stale


def verify_fragments(engine: sa.Engine, *, customer_id: str | None = None, since: datetime | None = None
                     ) -> tuple[int, int, list[str]]:
    """Recompute every current fragment from the events; return (checked, stale, differences).

    A stale bucket is not a difference (the next read recomputes it); a current bucket whose stored
    partials differ from a computation from scratch is one, named by metric, customer and bucket.
    """
    raw = SqlUsageSource(engine)
    b = buckets_table
    query = sa.select(b.c.metric_id, b.c.group_by, b.c.size, b.c.customer_id, b.c.bucket)
    if customer_id is not None:
        query = query.where(b.c.customer_id == customer_id)
    if since is not None:
        query = query.where(b.c.bucket + b.c.size > to_micros(since))
    checked, stale_count, differences = 0, 0, []
    with engine.connect() as conn:
        groups: dict[tuple[str, str, int], set[tuple[str, int]]] = {}
        for row in conn.execute(query):
            groups.setdefault((row.metric_id, row.group_by, int(row.size)), set()).add((row.customer_id, int(row.bucket)))
        for (metric_id, signature, size), keys in sorted(groups.items()):
            try:
                definition = raw.definition(metric_id)
            except MetricNotFound:
                differences.append(f"metric {metric_id}: fragments of a metric that does not exist")
                continue
            ids = sorted({c for c, _ in keys})
            positions, stored = load_fragments(conn, metric_id, signature, ids, size, {t for _, t in keys})
            stale = stale_buckets(conn, raw, definition.event_name, positions, size)
            stale_count += len(stale & keys)
            current = sorted(keys - stale)
            if not current:
                continue
            groups_by = tuple(json.loads(signature)) if signature else ()
            fresh = raw.partials(definition, sorted({c for c, _ in current}), from_micros(current[0][1]),
                                 from_micros(max(t for _, t in current) + size), bucket=size, group_by=groups_by)
            computed: dict[tuple[str, int], dict[str, Partial]] = {}
            for key, per_bucket in fresh.items():
                for bucket, part in per_bucket.items():
                    computed.setdefault((key[0], bucket), {})[_group_key(tuple(key[1:]))] = part
            for customer, bucket in current:
                checked += 1
                if stored.get((customer, bucket), {}) != computed.get((customer, bucket), {}):
                    differences.append(f"metric {metric_id} {signature or '(no grouping)'}, customer {customer}, "
                                       f"{'hour' if size == HOUR else 'day'} {from_micros(bucket).isoformat()}: "
                                       f"stored {stored.get((customer, bucket), {})} != from events "
                                       f"{computed.get((customer, bucket), {})}")
    return checked, stale_count, differences
