"""Metrics: a named, immutable definition of a quantity computed from events (Orb's billable metric).

The definition itself (``MetricDefinition``) is in ``billing_core.metric_definition``; its SQL
form in ``billing_core.metric_sql``. A metric's name, description and metadata may change; its
definition never does: a different quantity is a new metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Mapping, Protocol

from billing_core import errors
from billing_core.metric_definition import InvalidMetric, MetricDefinition
from billing_core.metric_sql import metric_from_sql, render_sql

__all__ = [
    "Metric",
    "MetricNotFound",
    "MetricRepository",
    "create_metric",
    "update_metric",
]


class MetricNotFound(errors.NotFound):
    """No metric has the requested id."""


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
