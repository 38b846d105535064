"""The usage port: how pricing asks for a metric's aggregated quantity.

``UsageSource`` is the one interface between metering (events and metrics) and rating
(prices, invoices, costs). The SQL-backed implementation evaluates metrics as grouped
aggregations in the database; :class:`InMemoryUsageSource` is the hand-written fake used by
the pure pricing tests.

``usage_bulk`` exists so that costs for many subscriptions cost one grouped query per metric,
not one query per subscription.

**The numeric range** (the same on SQLite and PostgreSQL). A usage value is accepted at ingest
when it is finite, ``|v| < 10^15``, with at most 9 digits after the point and at most 15
significant digits (so SQLite's double holds each one exactly). A metric's total for one
customer, window and group must stay below ``10^18`` in magnitude, as must a ``max`` or
``latest`` below ``10^15``; beyond, the source gives that customer a ``UsageOutOfRange``
instead of a number (never a clamped or float value), and every other customer its usage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, Union, runtime_checkable

from billing_core.errors import UsageOutOfRange
from billing_core.money import decimal_shape

__all__ = [
    "VALUE_LIMIT",
    "VALUE_DIGITS",
    "VALUE_PLACES",
    "TOTAL_LIMIT",
    "UsageOutOfRange",
    "UsageResult",
    "value_problem",
    "checked_total",
    "checked_value",
    "MetricUsage",
    "UsageSource",
    "UsageRequest",
    "MetricsByDefinition",
    "BatchUsageSource",
    "InMemoryMetric",
    "InMemoryUsageSource",
    "EMPTY_USAGE",
]


@dataclass(frozen=True)
class MetricUsage:
    quantity: Decimal                      # aggregated value over [start, end)
    event_count: int = 0                   # events that matched the metric's event name and filters
    skipped: int = 0                       # matching events missing the aggregated property
    groups: Mapping[tuple[str, ...], Decimal] | None = None   # per group-by values, when grouped (matrix)
    # What answered it (audit only, not part of the value): stored fragments added up (None: the
    # source reads events only) and events read raw (None: all of event_count).
    fragments: int | None = field(default=None, compare=False)
    raw_events: int | None = field(default=None, compare=False)


EMPTY_USAGE = MetricUsage(quantity=Decimal(0))

# What a bulk source gives each customer: its usage, or why it has none.
UsageResult = Union[MetricUsage, UsageOutOfRange]

VALUE_LIMIT = 10**15
VALUE_DIGITS = 15
VALUE_PLACES = 9
TOTAL_LIMIT = 10**18
_VALUE_LIMIT = Decimal(VALUE_LIMIT)
_TOTAL_LIMIT = Decimal(TOTAL_LIMIT)
RANGE_TEXT = "|value| < 10^15, at most 9 digits after the point and 15 significant digits"


def value_problem(value: Decimal) -> str | None:
    """Return why a (finite) usage value is outside the accepted range, or None."""
    if not value.is_finite():
        return "not a finite number"
    if not value.is_zero() and value.adjusted() >= VALUE_DIGITS:
        return f"{value} is outside the accepted range ({RANGE_TEXT})"
    _, digits, exponent = value.as_tuple()
    if len(digits) > VALUE_DIGITS or exponent < -VALUE_PLACES:  # type: ignore[operator]
        significant, places = decimal_shape(value)
        if significant > VALUE_DIGITS or places > VALUE_PLACES:
            return f"{value} is outside the accepted range ({RANGE_TEXT})"
    return None


def _out_of_range(what: str, value: object, metric_id: str | None, customer_id: str | None,
                  group: tuple[str, ...] | None) -> UsageOutOfRange:
    where = f" (group {', '.join(group)})" if group else ""
    return UsageOutOfRange(
        f"metric {metric_id!r}, customer {customer_id!r}{where}: {what} {value} is beyond the supported range",
        metric_id=metric_id, customer_id=customer_id,
    )


def checked_total(total: Decimal, metric_id: str | None, customer_id: str | None,
                  group: tuple[str, ...] | None = None) -> Decimal:
    """Return a sum when ``|total| < 10^18``; raise ``UsageOutOfRange`` naming the customer otherwise."""
    if -_TOTAL_LIMIT < total < _TOTAL_LIMIT:
        return total
    raise _out_of_range("the total", total, metric_id, customer_id, group)


def checked_value(value: Decimal, metric_id: str | None, customer_id: str | None,
                  group: tuple[str, ...] | None = None) -> Decimal:
    """Return a max or latest value when ``|value| < 10^15``; raise ``UsageOutOfRange`` otherwise."""
    if -_VALUE_LIMIT < value < _VALUE_LIMIT:
        return value
    raise _out_of_range("the value", value, metric_id, customer_id, group)


@runtime_checkable
class UsageSource(Protocol):
    def usage(self, metric_id: str, customer_id: str, start: datetime, end: datetime,
              group_by: tuple[str, ...] = ()) -> MetricUsage: ...

    def usage_bulk(self, metric_id: str, customer_ids: Sequence[str], start: datetime, end: datetime,
                   group_by: tuple[str, ...] = ()) -> Mapping[str, MetricUsage]: ...


class MetricsByDefinition:
    """``usage`` and ``usage_bulk`` for a source that has ``definition(metric_id)`` and ``evaluate``."""

    def definition(self, metric_id: str) -> Any:
        raise NotImplementedError

    def evaluate(self, definition: Any, customer_ids: Sequence[str], start: datetime, end: datetime,
                 group_by: tuple[str, ...] = (), *, metric_id: str | None = None) -> Mapping[str, UsageResult]:
        raise NotImplementedError

    def usage(self, metric_id: str, customer_id: str, start: datetime, end: datetime,
              group_by: tuple[str, ...] = ()) -> MetricUsage:
        """Aggregate one metric for one customer over ``[start, end)`` (``UsageOutOfRange`` beyond the range)."""
        found = self.usage_bulk(metric_id, [customer_id], start, end, group_by)[customer_id]
        if isinstance(found, UsageOutOfRange):
            raise found
        return found

    def usage_bulk(self, metric_id: str, customer_ids: Sequence[str], start: datetime, end: datetime,
                   group_by: tuple[str, ...] = ()) -> Mapping[str, UsageResult]:
        """Aggregate one metric for many customers over ``[start, end)``."""
        return self.evaluate(self.definition(metric_id), customer_ids, start, end, group_by, metric_id=metric_id)


@dataclass(frozen=True, order=True)
class UsageRequest:
    """One metric (and its grouping) asked of a batch."""

    metric_id: str
    group_by: tuple[str, ...] = ()


@runtime_checkable
class BatchUsageSource(Protocol):
    """Optional extension of ``UsageSource``: many metrics over one window in as few scans as possible.

    Costs for many subscriptions use it when the source has it (metrics over the same events
    then share one grouped query); a plain ``UsageSource`` is asked metric by metric.
    Every asked customer id gets an entry for every request.
    """

    def usage_bulk_many(self, requests: Sequence[UsageRequest], customer_ids: Sequence[str], start: datetime,
                        end: datetime) -> Mapping[UsageRequest, Mapping[str, MetricUsage]]: ...


# --- in-memory fake -------------------------------------------------------------------------

Event = Mapping[str, Any]


@dataclass(frozen=True)
class InMemoryMetric:
    """A metric for the fake: an event name, a filter, and an aggregation over one property.

    ``aggregation`` is one of ``count``, ``sum``, ``max``, ``unique_count``, ``latest``;
    ``where`` is a predicate on the event's properties.
    """

    event_name: str
    aggregation: str = "count"
    property: str | None = None
    where: Callable[[Mapping[str, Any]], bool] | None = None


def _number(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            result = Decimal(value)
        except ArithmeticError:
            return None
        return result if result.is_finite() else None
    return None


def _aggregate(metric: InMemoryMetric, events: Sequence[Event]) -> tuple[Decimal, int]:
    """Return (quantity, skipped) for events already matched and sorted by (timestamp, key)."""
    if metric.aggregation == "count":
        return Decimal(len(events)), 0
    values: list[Any] = []
    skipped = 0
    for event in events:
        raw = event.get("properties", {}).get(metric.property)
        if metric.aggregation == "unique_count":
            if raw is None:
                skipped += 1
            else:
                values.append(raw)
            continue
        number = _number(raw)
        if number is None:
            skipped += 1
        else:
            values.append(number)
    if metric.aggregation == "sum":
        return sum(values, Decimal(0)), skipped
    if metric.aggregation == "max":
        return (max(values) if values else Decimal(0)), skipped
    if metric.aggregation == "latest":
        return (values[-1] if values else Decimal(0)), skipped
    if metric.aggregation == "unique_count":
        return Decimal(len({str(v) for v in values})), skipped
    raise ValueError(f"unknown aggregation {metric.aggregation!r}")


class InMemoryUsageSource:
    """A ``UsageSource`` over events held as plain dicts, for pure tests.

    Events are dicts with ``idempotency_key``, ``customer_id``, ``event_name``, ``timestamp``
    (an aware UTC datetime) and ``properties``. Like the real store, a repeated
    ``idempotency_key`` is ignored (the first event wins), and results never depend on the
    order events were added.
    """

    def __init__(self, metrics: Mapping[str, InMemoryMetric], events: Iterable[Event] = ()) -> None:
        self.metrics = dict(metrics)
        self.events = []
        self._keys = set()
        self.add(events)

    def add(self, events: Iterable[Event]) -> None:
        """Add events, ignoring any whose idempotency key was already seen."""
        for event in events:
            key = event.get("idempotency_key")
            if key is not None:
                if key in self._keys:
                    continue
                self._keys.add(key)
            self.events.append(event)

    def _matching(self, metric: InMemoryMetric, customer_ids: set[str], start: datetime,
                  end: datetime) -> list[Event]:
        matched = [
            e for e in self.events
            if e["customer_id"] in customer_ids
            and e["event_name"] == metric.event_name
            and start <= e["timestamp"] < end
            and (metric.where is None or metric.where(e.get("properties", {})))
        ]
        matched.sort(key=lambda e: (e["timestamp"], str(e.get("idempotency_key", ""))))
        return matched

    def _usage_of(self, metric: InMemoryMetric, events: Sequence[Event],
                  group_by: tuple[str, ...]) -> MetricUsage:
        quantity, skipped = _aggregate(metric, events)
        groups: dict[tuple[str, ...], Decimal] | None = None
        if group_by:
            buckets: dict[tuple[str, ...], list[Event]] = {}
            for event in events:
                props = event.get("properties", {})
                values = tuple("" if props.get(g) is None else str(props.get(g)) for g in group_by)
                buckets.setdefault(values, []).append(event)
            groups = {k: _aggregate(metric, v)[0] for k, v in sorted(buckets.items())}
        return MetricUsage(quantity=quantity, event_count=len(events), skipped=skipped, groups=groups)

    def usage(self, metric_id: str, customer_id: str, start: datetime, end: datetime,
              group_by: tuple[str, ...] = ()) -> MetricUsage:
        """Aggregate one metric for one customer over ``[start, end)``."""
        metric = self.metrics[metric_id]
        return self._usage_of(metric, self._matching(metric, {customer_id}, start, end), group_by)

    def usage_bulk(self, metric_id: str, customer_ids: Sequence[str], start: datetime, end: datetime,
                   group_by: tuple[str, ...] = ()) -> Mapping[str, MetricUsage]:
        """Aggregate one metric for many customers over ``[start, end)``; every id gets an entry."""
        metric = self.metrics[metric_id]
        matched = self._matching(metric, set(customer_ids), start, end)
        by_customer: dict[str, list[Event]] = {cid: [] for cid in customer_ids}
        for event in matched:
            by_customer[event["customer_id"]].append(event)
        return {cid: self._usage_of(metric, evs, group_by) for cid, evs in by_customer.items()}
