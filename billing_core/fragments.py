"""Usage fragments: exact partial aggregates of a metric over a time bucket, and how they merge.

A fragment is what one metric's events of one customer (and group value) add up to over one
aligned bucket of a level: 5, 15 or 30 minutes, 1, 3, 6 or 12 hours, or 1, 2, 4 or 8 days. Any
window — a billing period, a price interval starting at 10:17, a costs timeframe running to
now — is answered by ``cover``: the largest whole buckets that fit, and the partial edges (under
five minutes on each side) from raw events.

``Partial`` is the merge algebra. ``count``, ``sum``, ``max`` and ``latest`` merge exactly:

- ``count``: matching events; ``with_value``: of those, events carrying a number (the rest are
  ``skipped``);
- ``total``: the exact ``Decimal`` sum of the values;
- ``maximum``: the largest value (None when no event carries one);
- ``latest``: ``(ts, seq, value)`` of the newest event carrying a value, newest by timestamp,
  then by ingest sequence — the order the SQL source uses.

``unique_count`` does not merge from totals (a value seen in two buckets counts once), so it is
read from raw events over the whole window (``MERGEABLE``).

Merging is associative and commutative with ``EMPTY`` as identity, so a window's answer does not
depend on how it is cut: ``tests/billing_core/test_fragments.py`` proves it with hypothesis
against a direct aggregation over the same events. Fragments are a cache: raw events stay the
only truth (docs/architecture.md §6).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

__all__ = [
    "BLOCK", "DAY", "EMPTY", "FINEST", "HOUR", "LEVELS", "LEVEL_NAMES", "MERGEABLE", "MINUTE", "QUARTER", "Partial", "Piece", "Span", "bucket_start", "cover", "merge_groups",
    "effective", "overlap", "subtract", "union",
]

MINUTE = 60_000_000  # microseconds, like events.ts
FINEST = 5 * MINUTE
HOUR = 60 * MINUTE
QUARTER = 6 * HOUR
DAY = 24 * HOUR
BLOCK = 8 * DAY
# Bucket sizes, finest first; each divides the next (5, 15, 30 minutes; 1, 3, 6, 12 hours; 1, 2, 4,
# 8 days), all aligned on the UTC epoch, so any window is a few buckets of each size at most (see
# ``cover``). The minutes serve windows that end inside an hour (costs to now, a report of the
# current hour): without them, every read re-reads the current hour's events.
LEVELS = (FINEST, 15 * MINUTE, 30 * MINUTE, HOUR, 3 * HOUR, QUARTER, 12 * HOUR, DAY, 2 * DAY, 4 * DAY, BLOCK)
LEVEL_NAMES = {FINEST: "5m", 15 * MINUTE: "15m", 30 * MINUTE: "30m", HOUR: "1h", 3 * HOUR: "3h", QUARTER: "6h",
               12 * HOUR: "12h", DAY: "1d", 2 * DAY: "2d", 4 * DAY: "4d", BLOCK: "8d"}
MERGEABLE = frozenset({"count", "sum", "max", "latest"})

PieceKind = Literal["raw", "5m", "15m", "30m", "1h", "3h", "6h", "12h", "1d", "2d", "4d", "8d"]


@dataclass(frozen=True)
class Piece:
    """One part of a window: raw events over ``[start, end)``, or one whole bucket of a level."""

    kind: PieceKind
    start: int
    end: int

    @property
    def size(self) -> int:
        """The bucket size of this piece (0: raw events)."""
        return 0 if self.kind == "raw" else self.end - self.start


def bucket_start(ts: int, size: int = HOUR) -> int:
    """Return the start of the aligned bucket of ``size`` microseconds holding ``ts`` (UTC epoch)."""
    return ts - ts % size


def cover(start: int, end: int) -> list[Piece]:
    """Cut ``[start, end)`` into raw edges and whole aligned buckets, in order, with no gap or overlap.

    From the left, each step takes the largest bucket that starts there and fits, so sizes rise
    then fall: at most one raw piece on each side (each shorter than five minutes), and on each
    side of the largest bucket at most two of the 5-minute and of the 1-hour buckets and one of
    each other size (a month costs about 10 fragments, not 720 hours).
    """
    if end <= start:
        return []
    pieces: list[Piece] = []
    pos = start
    first = -(-start // FINEST) * FINEST
    if first + FINEST > end:  # no whole bucket inside: all raw
        return [Piece("raw", start, end)]
    if start < first:
        pieces.append(Piece("raw", start, first))
        pos = first
    while pos + FINEST <= end:
        size = next(s for s in reversed(LEVELS) if pos % s == 0 and pos + s <= end)
        pieces.append(Piece(LEVEL_NAMES[size], pos, pos + size))  # type: ignore[arg-type]
        pos += size
    if pos < end:
        pieces.append(Piece("raw", pos, end))
    return pieces


Span = tuple[int, int]  # [lo, hi) in microseconds


def union(spans: Iterable[Span]) -> list[Span]:
    """Return ``spans`` sorted and merged where they overlap or touch."""
    out: list[Span] = []
    for lo, hi in sorted(spans):
        if hi <= lo:
            continue
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def subtract(spans: Iterable[Span], minus: Iterable[Span]) -> list[Span]:
    """Return the parts of ``spans`` that no span of ``minus`` holds (sorted, merged)."""
    cuts = union(minus)
    out: list[Span] = []
    for lo, hi in union(spans):
        for cut_lo, cut_hi in cuts:
            if cut_hi <= lo or hi <= cut_lo:
                continue
            if cut_lo > lo:
                out.append((lo, cut_lo))
            lo = max(lo, cut_hi)
            if lo >= hi:
                break
        if lo < hi:
            out.append((lo, hi))
    return out


def overlap(spans: Iterable[Span], other: Iterable[Span]) -> list[Span]:
    """Return the parts of ``spans`` that ``other`` also holds."""
    mine = union(spans)
    return subtract(mine, subtract(mine, other))


def effective(*layers: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Merge layers of ``(lo, hi, position)`` segments: where several hold an instant, the highest position wins."""
    listed = [list(layer) for layer in layers]
    points = sorted({p for layer in listed for lo, hi, _ in layer for p in (lo, hi)})
    out: list[tuple[int, int, int]] = []
    for a, b in zip(points, points[1:]):
        best = max((pos for layer in listed for lo, hi, pos in layer if lo <= a and b <= hi), default=None)
        if best is None:
            continue
        if out and out[-1][1] == a and out[-1][2] == best:
            out[-1] = (out[-1][0], b, best)
        else:
            out.append((a, b, best))
    return out


@dataclass(frozen=True)
class Partial:
    """What some events of one metric, customer and group add up to (see the module docstring)."""

    count: int = 0
    with_value: int = 0
    total: Decimal = Decimal(0)
    maximum: Decimal | None = None
    latest: tuple[int, int, Decimal] | None = None

    @staticmethod
    def of(ts: int, seq: int, value: Decimal | None) -> "Partial":
        """Return the partial of one matching event (``value`` None: it carries no number)."""
        if value is None:
            return Partial(count=1)
        return Partial(count=1, with_value=1, total=value, maximum=value, latest=(ts, seq, value))

    @property
    def skipped(self) -> int:
        return self.count - self.with_value

    def merge(self, other: "Partial") -> "Partial":
        """Return the partial of both sets of events (exact; the sets must not overlap)."""
        if not other.count:
            return self
        if not self.count:
            return other
        maximum = self.maximum if other.maximum is None else (
            other.maximum if self.maximum is None else max(self.maximum, other.maximum))
        latest = self.latest if other.latest is None else (
            other.latest if self.latest is None else max(self.latest, other.latest, key=lambda x: (x[0], x[1])))
        return Partial(self.count + other.count, self.with_value + other.with_value, self.total + other.total,
                       maximum, latest)

    def quantity(self, aggregation: str) -> Decimal:
        """Return the metric's quantity for these events (``count``, ``sum``, ``max`` or ``latest``)."""
        if aggregation == "count":
            return Decimal(self.count)
        if aggregation == "sum":
            return self.total
        if aggregation == "max":
            return self.maximum if self.maximum is not None else Decimal(0)
        if aggregation == "latest":
            return self.latest[2] if self.latest is not None else Decimal(0)
        raise ValueError(f"{aggregation!r} does not merge from fragments (read it raw)")

    @staticmethod
    def combine(parts: Iterable["Partial"]) -> "Partial":
        out = EMPTY
        for part in parts:
            out = out.merge(part)
        return out


EMPTY = Partial()


def merge_groups(*groups: Mapping[tuple[str, ...], Partial]) -> dict[tuple[str, ...], Partial]:
    """Merge per-group partials (a matrix price's group-by values) key by key."""
    out: dict[tuple[str, ...], Partial] = {}
    for group in groups:
        for key, part in group.items():
            out[key] = out.get(key, EMPTY).merge(part)
    return out
