"""The fragment-backed ``UsageSource``: whole buckets from stored fragments, edges from raw events.

``FragmentUsageSource`` answers like ``SqlUsageSource`` — the same quantities, counts, skipped
events, groups and out-of-range errors — and reads raw events only where it must: the last
minutes (under five) at a window's edges, and the buckets that are missing or stale.

A read of one metric over a window, at each level (5 minutes to 8 days):

1. takes the newest change-log position ``Q`` and loads the asked customers' stored spans
   (``usage_fragment_coverage``) that overlap the window;
2. finds what is stale: a change after a span's position, naming the customer (or its external
   id, or anyone) and the metric's event name (or any), makes the buckets it overlaps stale;
3. recomputes stale and missing buckets from the events, one grouped query per distinct span
   (the hour that just ended is one query for every customer), and stores them with every span
   it checked, now current as of ``Q`` (compare-and-set per customer: a customer whose spans
   another reader changed meanwhile is left alone and answered from raw events);
4. adds the window's fragments up inside the database (``count`` and ``sum``: two integer
   ``SUM``s per group; ``max`` and ``latest`` merge in Python).

A steady hourly run therefore reads the hour that just ended and the buckets changes touched,
never the rest of the period. ``unique_count`` metrics, definitions asked without a metric id,
and a window whose sum the database can give only as a float are answered by the raw source.
Fragments are a cache: ``delete_fragments`` (or dropping the tables) loses nothing.
"""

from __future__ import annotations

import json
import weakref
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from billing_core.errors import UsageOutOfRange
from billing_core.events import from_micros, to_micros
from billing_core.fragments import (
    DAY, LEVEL_NAMES, LEVELS, MERGEABLE, Partial, Span, cover, effective, overlap, subtract, union,
)
from billing_core.metric_definition import MetricDefinition
from billing_core.metrics import MetricNotFound
from billing_core.persistence.customers import customers_table
from billing_core.persistence.fragments import (
    EVERY, Segment, changes_since, coverage_table, load_coverage, load_fragments, load_levels, newest_change,
    save_fragments, sum_fragments,
)
from billing_core.sql_usage import _BULK_FILTER_LIMIT, _checked, is_overflow, sum_of
from billing_core.sql_usage_batch import BatchSqlUsageSource
from billing_core.usage import MetricsByDefinition, MetricUsage, UsageRequest, UsageResult

__all__ = [
    "FragmentStats", "FragmentUsageSource", "use_fragments", "usage_source", "verify_fragments",
]

_MANY_SPANS = 16  # beyond this many distinct spans to recompute at one level, read their envelope once


_choices: "weakref.WeakKeyDictionary[sa.Engine, bool]" = weakref.WeakKeyDictionary()


def use_fragments(engine: sa.Engine, enabled: bool) -> None:
    """Choose whether ``usage_source(engine)`` reads fragments (the composition root sets it from settings)."""
    _choices[engine] = enabled


def usage_source(engine: sa.Engine) -> "FragmentUsageSource | BatchSqlUsageSource":
    """Return the usage source of ``engine``'s database: fragments when turned on (``use_fragments``), else raw."""
    return FragmentUsageSource(engine) if _choices.get(engine, True) else BatchSqlUsageSource(engine)


@dataclass
class FragmentStats:
    """What answered the reads of one source.

    ``fragments``: stored fragments added up; ``recomputed``: buckets computed from events (stale
    or missing); ``raw_events``: events read at the windows' edges. Per customer and metric, the
    same two counts travel with each ``MetricUsage`` (the invoice trace shows them).
    """

    fragments: int = 0
    recomputed: int = 0
    raw_events: int = 0


_ZERO = Decimal(0)


def _group_key(values: tuple[str, ...]) -> str:
    return json.dumps(list(values)) if values else ""


def _ceil(ts: int, size: int) -> int:
    return -(-ts // size) * size


class FragmentUsageSource(MetricsByDefinition):
    """``UsageSource`` (and ``BatchUsageSource``) over fragments of the database behind ``engine``."""

    def __init__(self, engine: sa.Engine, definitions: Mapping[str, MetricDefinition] | None = None, *,
                 build_cold: bool = False, every_above: int = _BULK_FILTER_LIMIT):
        self.engine = engine
        self.every_above = every_above  # more customers than this: computed for everyone (EVERY spans)
        self.raw = BatchSqlUsageSource(engine, definitions)
        self.stats = FragmentStats()
        self.build_cold = build_cold
        self.pending: list[tuple[MetricDefinition, str, list[str], datetime, datetime, tuple[str, ...]]] = []

    def build_pending(self) -> int:
        """Build the fragments that cold reads answered from raw events instead (see ``_Cold``); return how many reads."""
        done = 0
        while self.pending:
            definition, metric_id, ids, start, end, groups = self.pending.pop(0)
            try:
                self._merged(definition, metric_id, ids, to_micros(start), to_micros(end), groups, build=True)
            except UsageOutOfRange:
                continue
            done += 1
        return done

    def definition(self, metric_id: str) -> MetricDefinition:
        return self.raw.definition(metric_id)

    # UsageSource (usage, usage_bulk: MetricsByDefinition) -------------------------------------

    def usage_bulk_many(self, requests: Sequence[UsageRequest], customer_ids: Sequence[str], start: datetime,
                        end: datetime) -> Mapping[UsageRequest, Mapping[str, UsageResult]]:
        with self.raw.one_read():
            return self._usage_bulk_many(requests, customer_ids, start, end)

    def _usage_bulk_many(self, requests: Sequence[UsageRequest], customer_ids: Sequence[str], start: datetime,
                         end: datetime) -> Mapping[UsageRequest, Mapping[str, UsageResult]]:
        out: dict[UsageRequest, Mapping[str, UsageResult]] = {}
        raw = []
        for request in dict.fromkeys(requests):
            definition = self.definition(request.metric_id)
            if definition.aggregation not in MERGEABLE:
                raw.append(request)
                continue
            try:
                out[request] = self.evaluate(definition, customer_ids, start, end, request.group_by,
                                             metric_id=request.metric_id, cold_raw=False)
            except _Cold:  # answered below with the others, in shared scans
                groups = tuple(request.group_by) or definition.group_by
                self.pending.append((definition, request.metric_id, list(dict.fromkeys(customer_ids)), start, end,
                                     groups))
                raw.append(request)
        if raw:
            out.update(self.raw.usage_bulk_many(raw, customer_ids, start, end))
        return out

    def evaluate(self, definition: MetricDefinition, customer_ids: Sequence[str], start: datetime,
                 end: datetime, group_by: tuple[str, ...] = (), *, metric_id: str | None = None,
                 cold_raw: bool = True) -> dict[str, UsageResult]:
        """Aggregate a definition for each customer, like ``SqlUsageSource.evaluate``.

        A cold many-customer window is answered from raw events (``cold_raw``) or raises ``_Cold``.
        """
        ids = list(dict.fromkeys(customer_ids))
        if metric_id is None or definition.aggregation not in MERGEABLE or not ids:
            return self.raw.evaluate(definition, ids, start, end, group_by, metric_id=metric_id)
        groups = tuple(group_by) or definition.group_by
        try:
            merged, used = self._merged(definition, metric_id, ids, to_micros(start), to_micros(end), groups,
                                        build=self.build_cold)
        except UsageOutOfRange:  # a float sum: the raw path names the customers it concerns
            return self.raw.evaluate(definition, ids, start, end, group_by, metric_id=metric_id)
        except _Cold:
            if not cold_raw:
                raise
            self.pending.append((definition, metric_id, ids, start, end, groups))
            return self.raw.evaluate(definition, ids, start, end, group_by, metric_id=metric_id)
        out: dict[str, UsageResult] = {}
        aggregation = definition.aggregation
        keys: dict[str, tuple[str, ...]] = {}  # group keys repeat across customers: decode each once

        def key_of(g: str) -> tuple[str, ...]:
            found = keys.get(g)
            if found is None:
                found = keys[g] = tuple(json.loads(g))
            return found

        summed = aggregation in ("count", "sum")

        def stored(p: Partial) -> Any:  # sums straight from the database are already exact and plain
            return p.total if aggregation == "sum" else Decimal(p.count)

        def merged_in(p: Partial) -> Any:
            return _exact(aggregation, p)

        counting = aggregation == "count"
        for cid in ids:
            parts = merged.get(cid, {})
            fragments, raw_events = used.get(cid, (0, 0))
            if counting and not raw_events:  # the common case, without the general path's steps
                count = sum(p.count for p in parts.values())
                grouped = {key_of(g): Decimal(p.count) for g, p in sorted(parts.items())} if groups else None
                out[cid] = MetricUsage(quantity=Decimal(count), event_count=count, skipped=0, groups=grouped,
                                       fragments=fragments, raw_events=0)
                continue
            exact = stored if summed and not raw_events else merged_in
            total = next(iter(parts.values())) if len(parts) == 1 else Partial.combine(parts.values())
            try:
                quantity = _checked(aggregation, exact(total) if len(parts) <= 1 else _exact(aggregation, total),
                                    metric_id, cid)
                grouped = ({key_of(g): _checked(aggregation, exact(p), metric_id, cid, key_of(g))
                            for g, p in sorted(parts.items())} if groups else None)
            except UsageOutOfRange as exc:
                out[cid] = exc
                continue
            out[cid] = MetricUsage(quantity=quantity, event_count=total.count,
                                   skipped=0 if aggregation == "count" else total.skipped, groups=grouped,
                                   fragments=fragments, raw_events=raw_events)
        return out

    # Fragments ---------------------------------------------------------------------------------

    def _merged(self, definition: MetricDefinition, metric_id: str, ids: list[str], start: int, end: int,
                groups: tuple[str, ...], build: bool = True) -> tuple[dict[str, dict[str, Partial]], dict[str, tuple[int, int]]]:
        """Return ({customer: {group key: partial}} over ``[start, end)``, {customer: (fragments, raw events)})."""
        pieces = cover(start, end)
        merged: dict[str, dict[str, Partial]] = {}
        from_fragments: dict[str, int] = {}
        from_raw: dict[str, int] = {}

        def add(customer: str, group: str, part: Partial) -> None:
            slot = merged.get(customer)
            if slot is None:
                merged[customer] = {group: part}
            else:
                slot[group] = slot[group].merge(part) if group in slot else part

        def add_raw(found: Mapping[tuple[str, ...], Mapping[int, Partial]]) -> None:
            for key, buckets in found.items():
                for part in buckets.values():
                    add(key[0], _group_key(tuple(key[1:])), part)
                    from_raw[key[0]] = from_raw.get(key[0], 0) + part.count
                    self.stats.raw_events += part.count

        for piece in pieces:
            if piece.kind == "raw":
                add_raw(self.raw.partials(definition, ids, from_micros(piece.start), from_micros(piece.end),
                                          bucket=DAY, group_by=groups))
        spans = {size: union((p.start, p.end) for p in pieces if p.size == size) for size in LEVELS}
        spans = {size: listed for size, listed in spans.items() if listed}
        if not spans:
            return merged, {c: (0, n) for c, n in from_raw.items()}
        signature = json.dumps(list(groups)) if groups else ""
        left: set[str] = set()
        whole = sum(hi - lo for listed in spans.values() for lo, hi in listed)
        every = len(ids) > self.every_above
        with self.engine.connect() as conn:  # one position, one coverage query, one change query per read
            with conn.begin():
                position = newest_change(conn)
            levels = load_levels(conn, metric_id, signature, None if every else ids,
                                 {size: (listed[0][0], listed[-1][1]) for size, listed in spans.items()})
            behind = [pos for loaded in levels.values() for segs in loaded.values() for _, _, pos in segs
                      if pos < position]
            # Rewriting an EVERY span concerns every customer's changes; a few customers' spans, theirs.
            changes = _changes(conn, self.raw, definition.event_name, min(behind), ids, every) if behind else []
            stale = {size: _stale(conn, levels[size], changes, size, position) for size in spans}
            # Few changes: untouched spans stay current as of their position (a steady hourly run
            # writes nothing). Many (e.g. news only in the last minutes, read raw, held by no span):
            # every loaded span moves to the newest position, so later reads do not fetch them again.
            news = set(ids) if len(changes) > 2 * len(ids) + 100 else set()
        for size, listed in sorted(spans.items(), reverse=True):  # largest first: the cold check sees most
            left |= self._refresh(definition, metric_id, ids, groups, signature, size, listed, build, whole,
                                  position, levels[size], stale[size], news)
        wanted = set(ids) - left
        asked = None if len(ids) > self.every_above else sorted(wanted)
        with self.engine.connect() as conn:
            if definition.aggregation in ("count", "sum"):
                try:
                    rows = sum_fragments(conn, metric_id, signature, asked, spans)
                except sa.exc.OperationalError as exc:
                    if not is_overflow(exc):
                        raise
                    raise UsageOutOfRange(f"metric {metric_id!r}: a sum overflows 64 bits") from None
                counting = definition.aggregation == "count"  # a count's sum is never looked at
                direct = not merged  # no raw edge: each (customer, group) comes once, straight in
                added = 0
                for customer, key, count, with_value, units, nanos, fragments in rows:
                    if customer not in wanted:
                        continue
                    part = Partial(count, with_value, _ZERO if counting else sum_of(units, nanos))  # type: ignore[arg-type]
                    if direct:
                        merged.setdefault(customer, {})[key] = part
                    else:
                        add(customer, key, part)
                    from_fragments[customer] = from_fragments.get(customer, 0) + fragments
                    added += fragments
                self.stats.fragments += added
            else:
                for (customer, _, _), parts in load_fragments(conn, metric_id, signature, asked, spans).items():
                    if customer in wanted:
                        for key, part in parts.items():
                            add(customer, key, part)
                        from_fragments[customer] = from_fragments.get(customer, 0) + 1
                        self.stats.fragments += 1
        if left:  # another reader changed their spans meanwhile: whole buckets from raw events
            lo, hi = min(s[0][0] for s in spans.values()), max(s[-1][1] for s in spans.values())
            add_raw(self.raw.partials(definition, sorted(left), from_micros(lo), from_micros(hi), bucket=DAY,
                                      group_by=groups))
        return merged, {c: (from_fragments.get(c, 0), from_raw.get(c, 0)) for c in {*from_fragments, *from_raw}}

    def _refresh(self, definition: MetricDefinition, metric_id: str, ids: list[str], groups: tuple[str, ...],
                 signature: str, size: int, spans: list[Span], build: bool, whole: int, position: int,
                 loaded: dict[str, list[Segment]], stale_of: tuple[dict[str, list[Span]], list[Span]],
                 news: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
        """Make ``spans`` of ``size`` buckets current for every customer; return the customers left alone.

        ``loaded`` holds the spans stored as the read found them at ``position``, ``stale_of``
        what later changes touch (``_stale``), and ``news`` the customers whose spans move to
        ``position`` even when nothing they hold was touched, so later reads do not
        fetch the same changes again. More than ``every_above`` customers: missing buckets
        are computed for every customer at once and held by one ``EVERY`` span (the next hour is one
        span row, not one per customer). If most of the window (``whole``: the length all levels
        cover) is missing then and not ``build``, raise ``_Cold``.
        """
        window = (spans[0][0], spans[-1][1])
        every = len(ids) > self.every_above
        star = loaded.get(EVERY, [])
        own = {c: segs for c, segs in loaded.items() if c != EVERY}
        stale, anyone = stale_of
        # Everything written stays inside the window or the spans just loaded: a span that was
        # not loaded (it does not overlap the window) is never overwritten or overlapped.
        todo: dict[str, list[Span]] = {}
        covered: dict[str, list[Span]] = {}
        star_spans = [(lo, hi) for lo, hi, _ in star]
        if every:
            inside = union(star_spans + [window])
            everyone = union(subtract(spans, star_spans) + overlap(anyone, inside))
            if not build and 2 * sum(hi - lo for lo, hi in everyone) > max(whole, sum(hi - lo for lo, hi in spans)):
                raise _Cold()
            if everyone:
                todo[EVERY] = everyone
            for cid in set(stale) | set(own):
                mine = [(lo, hi) for lo, hi, _ in own.get(cid, [])]
                need = subtract(overlap(stale.get(cid, []) + overlap(anyone, mine), union(inside + mine)), everyone)
                if need:
                    todo[cid] = need
            if todo or any(pos < position for _, _, pos in star):
                covered[EVERY] = star_spans + everyone  # what a customer's own spans do not hold, it does
                for cid in (set(own) | set(todo)) - {EVERY}:
                    mine = [(lo, hi) for lo, hi, _ in own.get(cid, [])]
                    covered[cid] = mine + overlap(todo.get(cid, []), union(mine + [window]))
        else:
            # Customers stored together have the same spans: work each distinct case out once.
            cases: dict[tuple[tuple[Segment, ...], tuple[Span, ...], bool], tuple[list[Span], list[Span] | None]] = {}
            for cid in ids:
                case = (tuple(own.get(cid, ())), tuple(stale.get(cid, ())), cid in news)
                known = cases.get(case)
                if known is None:
                    mine = [(lo, hi) for lo, hi, _ in case[0]]
                    allowed = union(mine + [window])
                    held = effective(star, case[0])
                    held_spans = [(lo, hi) for lo, hi, _ in held]
                    need = union(subtract(spans, held_spans) + overlap(list(case[1]) + anyone, allowed))
                    # Spans of a customer with no news stay as they are (still current as of their
                    # position): a read of customers with no news writes nothing.
                    behind = bool(need) or (case[2] and any(pos < position for _, _, pos in held))
                    known = cases[case] = (need, mine + overlap(held_spans, allowed) + need if behind else None)
                need, cover_of = known
                if need:
                    todo[cid] = need
                if cover_of is not None:
                    covered[cid] = cover_of
        computed = self._compute(definition, todo, size, groups)
        self.stats.recomputed += sum((hi - lo) // size for need in todo.values() for lo, hi in need)
        left = save_fragments(self.engine, metric_id, signature, size, position, window=window, expected=loaded,
                              compared=None if every else ids, covered=covered, recomputed=todo, computed=computed)
        return set(ids) if EVERY in left else left

    def _compute(self, definition: MetricDefinition, todo: Mapping[str, list[Span]], size: int,
                 groups: tuple[str, ...]) -> dict[tuple[str, int], dict[str, Partial]]:
        """Compute the ``todo`` buckets from the events: one grouped query per distinct span."""
        computed: dict[tuple[str, int], dict[str, Partial]] = {(c, b): {} for c, need in todo.items() if c != EVERY
                                                                 for lo, hi in need for b in range(lo, hi, size)}
        for lo, hi in todo.get(EVERY, []):
            found = self.raw.partials(definition, [], from_micros(lo), from_micros(hi), bucket=size, group_by=groups,
                                      every_customer=True)
            for key, per_bucket in found.items():
                for bucket, part in per_bucket.items():
                    computed.setdefault((key[0], bucket), {})[_group_key(tuple(key[1:]))] = part
        by_span: dict[Span, list[str]] = defaultdict(list)
        for cid, need in todo.items():
            if cid != EVERY:
                for span in need:
                    by_span[span].append(cid)
        if len(by_span) > _MANY_SPANS:
            lo, hi = min(s[0] for s in by_span), max(s[1] for s in by_span)
            by_span = {(lo, hi): sorted(c for c in todo if c != EVERY)}
        for (lo, hi), customers in sorted(by_span.items()):
            found = self.raw.partials(definition, customers, from_micros(lo), from_micros(hi), bucket=size,
                                      group_by=groups)
            for key, per_bucket in found.items():
                for bucket, part in per_bucket.items():
                    slot = computed.get((key[0], bucket))
                    if slot is not None:
                        slot[_group_key(tuple(key[1:]))] = part
        return computed


class _Cold(Exception):
    """Most of a many-customer window has no fragments yet: answer from raw events now (as fast as the
    raw path), and build them when the caller chooses (``build_pending``), never on the read's clock."""


def _exact(aggregation: str, part: Partial) -> Any:
    """The quantity of a merged partial, as the raw source gives it (sums without trailing zeros)."""
    if aggregation == "sum":
        units = int(part.total)
        return sum_of(units, int((part.total - units).scaleb(9)))
    return part.quantity(aggregation)


def _changes(conn: Any, raw: BatchSqlUsageSource, event_name: str, position: int, ids: Sequence[str] | None,
             everyone: bool) -> list[Any]:
    """Return the changes after ``position`` that may touch these customers' ``event_name`` usage
    (anyone's when ``everyone``, e.g. an ``EVERY`` span is involved, or for many customers)."""
    if everyone or ids is None or len(ids) > _BULK_FILTER_LIMIT:
        return changes_since(conn, position, None, None, event_name)
    return changes_since(conn, position, list(ids), sorted(raw._aliases(conn, list(ids))), event_name)


def _stale(conn: Any, loaded: Mapping[str, list[Segment]], changes: Sequence[Any], size: int,
           position: int) -> tuple[dict[str, list[Span]], list[Span]]:
    """Return the bucket spans that ``changes`` after their position touch: (per customer, for anyone).

    ``loaded`` holds the stored spans of the customers concerned and of ``EVERY``: a customer's
    buckets are held by its own spans and ``EVERY``'s, the highest position winning. A change
    that names no customer makes what it overlaps stale for anyone (second result). ``changes``
    may hold more than concern these spans (each is checked against each span's position).
    """
    star = loaded.get(EVERY, [])
    own = {c: segs for c, segs in loaded.items() if c != EVERY}
    if not any(pos < position for segs in loaded.values() for _, _, pos in segs):
        return {}, []
    externals = sorted({ch.external_customer_id for ch in changes
                        if ch.customer_id is None and ch.external_customer_id is not None})
    owners_of = _owners(conn, externals)
    held: dict[str, list[Segment]] = {}
    out: dict[str, list[Span]] = defaultdict(list)
    anyone: list[Span] = []

    def touched(segments: Sequence[Segment], change: Any) -> list[Span]:
        found = []
        for lo, hi, pos in segments:
            if change.id <= pos:
                continue
            a = lo if change.ts_start is None else max(lo, change.ts_start - change.ts_start % size)
            b = hi if change.ts_end is None else min(hi, _ceil(change.ts_end, size))
            if a < b:
                found.append((a, b))
        return found

    for change in changes:
        if change.id > position:
            continue  # committed after this read's position: the next read sees it
        if change.customer_id is None and change.external_customer_id is None:
            anyone += touched(star, change)
            for segs in own.values():
                anyone += touched(segs, change)
            continue
        cid = change.customer_id if change.customer_id is not None else owners_of.get(change.external_customer_id)
        if cid is None:
            continue
        if cid not in held:
            held[cid] = effective(star, own.get(cid, []))
        out[cid] += touched(held[cid], change)
    return {cid: union(listed) for cid, listed in out.items() if listed}, union(anyone)


def _owners(conn: Any, externals: Sequence[str]) -> dict[str, str]:
    """Map these external customer ids to the ids of the customers that have them."""
    c = customers_table
    found: dict[str, str] = {}
    for chunk in range(0, len(externals), 500):
        found.update({ext: cid for ext, cid in conn.execute(sa.select(c.c.external_customer_id, c.c.id).where(
            c.c.external_customer_id.in_(list(externals[chunk:chunk + 500])))).all()})
    return found


def verify_fragments(engine: sa.Engine, *, customer_id: str | None = None, since: datetime | None = None
                     ) -> tuple[int, int, list[str]]:
    """Recompute every current stored bucket from the events; return (checked, stale, differences).

    ``checked`` counts the (customer, bucket) pairs compared that hold events; a stale bucket is
    not a difference (the next read recomputes it); a current bucket whose stored partials differ
    from a computation from scratch is one, named by metric, customer and bucket.
    """
    raw = BatchSqlUsageSource(engine)
    c = coverage_table
    floor = to_micros(since) if since is not None else -(2**62)
    asked = None if customer_id is None else [customer_id]
    checked, stale_count, differences = 0, 0, []
    with engine.connect() as conn:
        with conn.begin():
            position = newest_change(conn)
        query = sa.select(c.c.metric_id, c.c.group_by, c.c.size).distinct()
        if customer_id is not None:
            query = query.where(c.c.customer_id.in_([customer_id, EVERY]))
        for metric_id, signature, size in sorted(conn.execute(query).all()):
            size = int(size)
            try:
                definition = raw.definition(metric_id)
            except MetricNotFound:
                differences.append(f"metric {metric_id}: fragments of a metric that does not exist")
                continue
            lo_limit = floor - floor % size
            loaded = load_coverage(conn, metric_id, signature, size, asked, lo_limit, 2**62)
            star = loaded.pop(EVERY, [])
            behind = [pos for segs in [star, *loaded.values()] for _, _, pos in segs if pos < position]
            changes = _changes(conn, raw, definition.event_name, min(behind), asked, asked is None) if behind else []
            stale, anyone = _stale(conn, {**loaded, EVERY: star}, changes, size, position)
            star_spans = overlap([(lo, hi) for lo, hi, _ in star], [(lo_limit, 2**62)])
            held = {cid: overlap([(lo, hi) for lo, hi, _ in segs], [(lo_limit, 2**62)]) for cid, segs in loaded.items()}
            stale_count += sum((hi - lo) // size for spans in stale.values() for lo, hi in spans)
            stale_count += sum((hi - lo) // size for lo, hi in anyone)
            everything = union(star_spans + [span for spans in held.values() for span in spans])
            if not everything:
                continue
            groups = tuple(json.loads(signature)) if signature else ()
            stored: dict[tuple[str, int], dict[str, Partial]] = {}
            fresh: dict[tuple[str, int], dict[str, Partial]] = {}
            for lo, hi in everything:
                for (cid, _, bucket), parts in load_fragments(conn, metric_id, signature, asked,
                                                              {size: [(lo, hi)]}).items():
                    stored[(cid, bucket)] = _decoded(parts)
                found = raw.partials(definition, asked or [], from_micros(lo), from_micros(hi), bucket=size,
                                     group_by=groups, every_customer=asked is None)
                for key, per_bucket in found.items():
                    for bucket, part in per_bucket.items():
                        fresh.setdefault((key[0], bucket), {})[tuple(key[1:])] = part

            currents: dict[str, list[Span]] = {}

            def current(cid: str, bucket: int) -> bool:
                if cid not in currents:
                    currents[cid] = subtract(star_spans + held.get(cid, []), stale.get(cid, []) + anyone)
                return any(lo <= bucket < hi for lo, hi in currents[cid])

            for cid, bucket in sorted(set(stored) | set(fresh)):
                if not current(cid, bucket):
                    continue
                checked += 1
                have, want = stored.get((cid, bucket), {}), fresh.get((cid, bucket), {})
                if have != want:
                    differences.append(
                        f"metric {metric_id} {signature or '(no grouping)'}, customer {cid}, "
                        f"{LEVEL_NAMES.get(size, size)} {from_micros(bucket).isoformat()}: "
                        f"stored {have} != from events {want}")
    return checked, stale_count, differences


def _decoded(parts: Mapping[str, Partial]) -> dict[tuple[str, ...], Partial]:
    return {tuple(json.loads(key)) if key else (): part for key, part in parts.items()}
