"""What a metric computes: the definition language, validated on construction.

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

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Union

from billing_core import errors

__all__ = [
    "AGGREGATIONS",
    "MAX_GROUP_BY",
    "OPERATORS",
    "RANGE_OPERATORS",
    "RESERVED_PROPERTIES",
    "AllOf",
    "AnyOf",
    "Condition",
    "Filter",
    "InvalidMetric",
    "MetricDefinition",
    "UnsupportedMetricSql",
    "to_decimal",
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
