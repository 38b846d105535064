"""Price evaluation: what prices would charge a customer for its usage, or for preview events.

Orb's ``/v1/prices/evaluate`` and ``/v1/prices/evaluate_preview_events``: each asked price (an
existing one, or an inline definition) is rated over the usage of its billable metric in a
timeframe, narrowed by an optional ``filter`` and split by optional ``grouping_keys``; every group
gets its quantity and the price's amount for it (rated by ``pricing.rate``, rounded once to the
currency by ``money.round_money``). Nothing is written: usage is read by the engine's SQL source
(``SqlUsageSource``) over the stored events, or over preview events held in a private in-memory
SQLite database, so the two answer with the same metric semantics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from billing_core.errors import InvalidInput
from billing_core.events import EventValidationFailed, Record, validate_batch
from billing_core.metric_definition import MAX_GROUP_BY, Filter, MetricDefinition
from billing_core.money import exact, round_money
from billing_core.persistence.customers import customers_table
from billing_core.persistence.events import events_table
from billing_core.pricing import Price, rate
from billing_core.sql_usage import SqlUsageSource
from billing_core.usage import MetricUsage, UsageOutOfRange

__all__ = [
    "MAX_PREVIEW_EVENTS", "MAX_PRICE_EVALUATIONS", "PriceEvaluation", "PriceGroup", "EvaluatedPrice",
    "evaluate_prices", "preview_usage_source",
]

MAX_PRICE_EVALUATIONS = 100
MAX_PREVIEW_EVENTS = 500


@dataclass(frozen=True)
class PriceEvaluation:
    """One price to evaluate, with its optional filter and grouping keys (event properties)."""

    price: Price
    filters: tuple[Filter, ...] = ()
    grouping_keys: tuple[str, ...] = ()
    inline_index: int | None = None      # the position of an inline price in the request


@dataclass(frozen=True)
class PriceGroup:
    """The price's output for one group: its values (in ``grouping_keys`` order), quantity, amount."""

    grouping_values: tuple[str, ...]
    quantity: Decimal
    amount: Decimal


@dataclass(frozen=True)
class EvaluatedPrice:
    evaluation: PriceEvaluation
    groups: tuple[PriceGroup, ...]


def _check(evaluation: PriceEvaluation, field: str) -> None:
    price = evaluation.price
    if price.is_fixed:
        raise InvalidInput(f"{field}: price {price.id} is a fixed fee; only usage prices are evaluated over events",
                           field=field)
    if len(evaluation.grouping_keys) > MAX_GROUP_BY:
        raise InvalidInput(f"{field}.grouping_keys: at most {MAX_GROUP_BY} grouping keys",
                           field=f"{field}.grouping_keys")
    if len(set(evaluation.grouping_keys)) != len(evaluation.grouping_keys):
        raise InvalidInput(f"{field}.grouping_keys: a key is repeated", field=f"{field}.grouping_keys")


def _usage(source: SqlUsageSource, definition: MetricDefinition, metric_id: str, customer_id: str,
           start: datetime, end: datetime, group_by: tuple[str, ...]) -> MetricUsage:
    found = source.evaluate(definition, [customer_id], start, end, group_by, metric_id=metric_id)[customer_id]
    if isinstance(found, UsageOutOfRange):
        raise found
    return found


@exact()
def _rate_groups(price: Price, keys: tuple[str, ...], by_key: Mapping[tuple[str, ...], Decimal],
                 dimensional: Mapping[tuple[str, ...], Decimal] | None, currency: str) -> tuple[PriceGroup, ...]:
    width = len(keys)
    groups = []
    for values in sorted(by_key):
        quantity = by_key[values]
        matrix = None
        if dimensional is not None:  # a matrix price rates its own dimensions inside each group
            matrix = {k[width:]: q for k, q in dimensional.items() if k[:width] == values}
        amount = rate(price, quantity, matrix).amount
        groups.append(PriceGroup(values, quantity, round_money(amount, currency)))
    return tuple(groups)


def evaluate_prices(evaluations: Sequence[PriceEvaluation], source: SqlUsageSource, *, customer_id: str,
                    start: datetime, end: datetime) -> list[EvaluatedPrice]:
    """Rate each price over the customer's usage of its metric in ``[start, end)`` (nothing written).

    Raises ``InvalidInput`` naming ``price_evaluations[i]`` for a fixed fee or bad grouping keys,
    ``MetricNotFound`` for a price whose metric does not exist and ``UsageOutOfRange`` for usage
    beyond the supported range.
    """
    if end <= start:
        raise InvalidInput("timeframe_end: must be after timeframe_start", field="timeframe_end")
    for i, evaluation in enumerate(evaluations):
        _check(evaluation, f"price_evaluations[{i}]")
    out = []
    for evaluation in evaluations:
        price = evaluation.price
        metric_id = price.metric_id or ""
        base = source.definition(metric_id)
        definition = replace(base, filters=base.filters + evaluation.filters)
        keys = evaluation.grouping_keys
        usage = _usage(source, definition, metric_id, customer_id, start, end, keys)
        by_key = dict(usage.groups or {}) if keys else {(): usage.quantity}
        dimensional = None
        if price.group_by:
            grouped = _usage(source, definition, metric_id, customer_id, start, end, keys + price.group_by)
            dimensional = dict(grouped.groups or {})
        out.append(EvaluatedPrice(evaluation, _rate_groups(price, keys, by_key, dimensional, price.currency)))
    return out


def preview_usage_source(events: Sequence[Any], *, customer_id: str, external_customer_id: str | None,
                         definitions: Mapping[str, MetricDefinition], now: datetime) -> SqlUsageSource:
    """Return a usage source over preview events only, held in a private in-memory database.

    Events are validated as at ingest (``idempotency_key`` is not asked: each gets its position);
    an event naming no customer is the customer's, one naming another customer is left out.
    ``EventValidationFailed`` names ``events[i]``.
    """
    if len(events) > MAX_PREVIEW_EVENTS:
        raise InvalidInput(f"events: {len(events)} preview events; the limit is {MAX_PREVIEW_EVENTS}",
                           field="events")
    keyed = []
    for i, raw in enumerate(events):
        if type(raw) is not dict:
            raise EventValidationFailed([(f"events[{i}]", ["event: must be an object"])])
        if "idempotency_key" in raw:
            raise EventValidationFailed([(f"events[{i}]", ["idempotency_key: unknown field"])])
        event = {"idempotency_key": f"events[{i}]", **raw}
        if event.get("customer_id") is None and event.get("external_customer_id") is None:
            event["customer_id"] = customer_id
        keyed.append(event)
    records: list[Record] = validate_batch(keyed, now=now)
    mine = [(key, name, customer_id, None, ts, props) for key, name, cid, ext, ts, props in records
            if cid == customer_id or (ext is not None and ext == external_customer_id)]
    # A private database per request: the engine's SQL (typed JSON access, exact sums) runs unchanged.
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    events_table.create(engine)
    customers_table.create(engine)
    with engine.begin() as conn:
        if mine:
            conn.execute(events_table.insert(), [
                {"idempotency_key": k, "version": 0, "event_name": n, "customer_id": c,
                 "external_customer_id": e, "ts": ts, "properties": p, "state": 0}
                for k, n, c, e, ts, p in mine])
    return SqlUsageSource(engine, definitions)

