"""Metrics: immutable definitions of a quantity computed from events.

A metric is a *query*, not a counter: it aggregates one property of the events of one
``event_name`` over a timeframe, so a metric created today computes over all history.

Definition (``MetricDefinition``)
    ``aggregation``  one of ``count``, ``sum``, ``max``, ``unique_count``, ``latest``
    ``property``     the property read by every aggregation but ``count``
    ``filters``      conditions on properties, all of which must hold (``AnyOf`` expresses OR)
    ``group_by``     zero, one or two properties; each group is a separate quantity

Filters compare a property with a literal: ``=``, ``!=``, ``in``, ``not in`` (strings, numbers,
booleans; typed, so ``'4'`` never equals ``4``) and ``<``, ``<=``, ``>``, ``>=`` (numbers only).
An event missing the property fails every comparison, ``!=`` and ``not in`` included, as in SQL.

SQL form: ``billing_core.metric_sql`` parses Orb's metric SQL into a definition and renders one
back; ``billing_core.codec`` holds the dict form (storage and the structured HTTP form).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Mapping, Protocol, Union

from billing_core import errors

__all__ = [
    "AGGREGATIONS",
    "OPERATORS",
    "AllOf",
    "AnyOf",
    "Condition",
    "InvalidMetric",
    "Metric",
    "MetricDefinition",
    "MetricNotFound",
    "MetricRepository",
    "UnsupportedMetricSql",
    "create_metric",
    "update_metric",
]

Aggregation = Literal["count", "sum", "max", "unique_count", "latest"]
Operator = Literal["=", "!=", "in", "not in", "<", "<=", ">", ">="]
Scalar = Union[str, Decimal, bool]

AGGREGATIONS: tuple[str, ...] = ("count", "sum", "max", "unique_count", "latest")
OPERATORS: tuple[str, ...] = ("=", "!=", "in", "not in", "<", "<=", ">", ">=")
RANGE_OPERATORS = ("<", "<=", ">", ">=")
RESERVED_PROPERTIES = ("timestamp", "customer_id", "external_customer_id", "idempotency_key")
MAX_GROUP_BY = 2


class InvalidMetric(errors.InvalidInput):
    """The metric definition is invalid; the message says which part and why."""

    def __init__(self, message: str, *, field: str | None = "sql"):
        super().__init__(message, field=field)


class UnsupportedMetricSql(errors.UnsupportedMetricSql, InvalidMetric):
    """The SQL text uses a construct outside the supported subset (named in ``construct``)."""

    def __init__(self, construct: str, detail: str = ""):
        self.construct = construct
        InvalidMetric.__init__(
            self, f"unsupported in metric SQL: {construct}" + (f" ({detail})" if detail else "")
        )


class MetricNotFound(errors.NotFound):
    """No metric has the requested id."""


# Definition ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One comparison of a property with a literal (a tuple of literals for in / not in)."""

    property: str
    operator: Operator
    value: Scalar | tuple[Scalar, ...]

    def __post_init__(self) -> None:
        _check_property(self.property)
        if self.operator not in OPERATORS:
            raise InvalidMetric(f"unknown operator {self.operator!r}; use one of {', '.join(OPERATORS)}")
        if self.operator in ("in", "not in"):
            if not isinstance(self.value, tuple) or not self.value:
                raise InvalidMetric(f"{self.operator} on {self.property!r} needs a non-empty list")
            for item in self.value:
                _check_scalar(self.property, item)
        else:
            if isinstance(self.value, tuple):
                raise InvalidMetric(f"{self.operator} on {self.property!r} needs a single value")
            _check_scalar(self.property, self.value)
            if self.operator in RANGE_OPERATORS and (
                isinstance(self.value, bool) or not isinstance(self.value, Decimal)
            ):
                raise InvalidMetric(f"{self.operator} on {self.property!r} needs a number")


@dataclass(frozen=True)
class AllOf:
    """Every part holds (AND)."""

    parts: tuple["Filter", ...]


@dataclass(frozen=True)
class AnyOf:
    """At least one part holds (OR)."""

    parts: tuple["Filter", ...]


Filter = Union[Condition, AllOf, AnyOf]


@dataclass(frozen=True)
class MetricDefinition:
    """What a metric computes: an aggregation of one property over one event name."""

    event_name: str
    aggregation: Aggregation
    property: str | None = None
    filters: tuple[Filter, ...] = ()
    group_by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.event_name, str) or not self.event_name:
            raise InvalidMetric("event_name must be a non-empty string")
        if self.aggregation not in AGGREGATIONS:
            raise InvalidMetric(
                f"unknown aggregation {self.aggregation!r}; use one of {', '.join(AGGREGATIONS)}"
            )
        if self.aggregation == "count":
            if self.property is not None:
                raise InvalidMetric("count takes no property")
        else:
            if not self.property:
                raise InvalidMetric(f"{self.aggregation} needs a property")
            _check_property(self.property)
        if len(self.group_by) > MAX_GROUP_BY:
            raise InvalidMetric(f"group_by takes at most {MAX_GROUP_BY} properties")
        if len(set(self.group_by)) != len(self.group_by):
            raise InvalidMetric("group_by repeats a property")
        for name in self.group_by:
            _check_property(name)


@dataclass(frozen=True)
class Metric:
    """A named, immutable metric definition (Orb's billable metric)."""

    id: str
    name: str
    definition: MetricDefinition
    sql: str
    created_at: datetime
    item_id: str | None = None
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    status: Literal["active", "draft", "archived"] = "active"


class MetricRepository(Protocol):
    """Where metrics are kept (``billing_core.persistence.metrics.SqlMetricRepository``)."""

    def add(self, metric: Metric) -> Metric: ...

    def get(self, metric_id: str) -> Metric: ...

    def save(self, metric: Metric) -> Metric: ...

    def list(self, *, limit: int, cursor: str | None = None) -> tuple[list[Metric], str | None]: ...


def create_metric(
    repository: MetricRepository,
    *,
    metric_id: str,
    name: str,
    now: datetime,
    sql: str | None = None,
    definition: MetricDefinition | None = None,
    item_id: str | None = None,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Metric:
    """Validate and store a new metric given as SQL text or as a structured definition."""
    if (sql is None) == (definition is None):
        raise InvalidMetric("give exactly one of sql or definition")
    if not name or not isinstance(name, str):
        raise InvalidMetric("name must be a non-empty string")
    # metric_sql builds this module's types, so it is imported here, when first needed.
    from billing_core.metric_sql import metric_from_sql, render_sql

    if definition is None:
        definition = metric_from_sql(sql or "")
    metric = Metric(
        id=metric_id,
        name=name,
        definition=definition,
        sql=sql if sql is not None else render_sql(definition),
        created_at=now,
        item_id=item_id,
        description=description,
        metadata=dict(metadata or {}),
    )
    return repository.add(metric)


def update_metric(repository: MetricRepository, metric: Metric, changes: Mapping[str, Any]) -> Metric:
    """Change a metric's name, description or metadata (``None`` values remove metadata keys).

    The definition is immutable: a different quantity is a new metric.
    """
    unknown = set(changes) - {"name", "description", "metadata"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidMetric(f"{name}: cannot be updated (a metric's definition is immutable)", field=name)
    updated = metric
    if "name" in changes:
        if not isinstance(changes["name"], str) or not changes["name"]:
            raise InvalidMetric("name must be a non-empty string", field="name")
        updated = replace(updated, name=changes["name"])
    if "description" in changes:
        updated = replace(updated, description=changes["description"])
    if "metadata" in changes:
        raw = changes["metadata"]
        merged = {} if raw is None else dict(metric.metadata)
        for key, value in (raw or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = str(value)
        updated = replace(updated, metadata=merged)
    return metric if updated == metric else repository.save(updated)


# Validation helpers --------------------------------------------------------------------------


def _check_property(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidMetric("a property name must be a non-empty string")
    if len(name) > 256:
        raise InvalidMetric(f"property name too long: {name[:40]!r}...")
    if '"' in name or any(ord(ch) < 32 for ch in name):
        raise InvalidMetric(f"property name {name!r}: double quotes and control characters are not supported")
    if name == "event_name" or name in RESERVED_PROPERTIES:
        raise InvalidMetric(f"{name!r} is not an event property")


def _check_scalar(prop: str, value: object) -> None:
    if isinstance(value, bool) or isinstance(value, str):
        return
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidMetric(f"value for {prop!r} must be a finite number")
        return
    raise InvalidMetric(f"value for {prop!r} must be a string, a number or a boolean")


def to_decimal(text: Any) -> Decimal:
    """Return ``text`` as a finite Decimal, or raise ``InvalidMetric``."""
    try:
        number = Decimal(str(text))
    except InvalidOperation as exc:
        raise InvalidMetric(f"not a number: {text!r}") from exc
    if not number.is_finite():
        raise InvalidMetric(f"not a finite number: {text!r}")
    return number
