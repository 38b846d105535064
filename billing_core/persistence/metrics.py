"""Rows and repository for metrics (Alembic branch ``billing_events``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.codec import definition_from_dict, definition_to_dict
from billing_core.metrics import Metric, MetricNotFound
from billing_core.persistence.rows import page, utc
from billing_core.persistence.writes import begin_write

__all__ = ["MetricRow", "SqlMetricRepository"]


class MetricRow(SQLModel, table=True):
    """A metric row: the definition is stored as JSON next to its SQL text."""

    __tablename__ = "metrics"

    id: str = Field(primary_key=True, max_length=64)
    name: str
    description: str | None = None
    item_id: str | None = Field(default=None, max_length=64)
    sql: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    definition_json: str = Field(sa_column=sa.Column("definition", sa.Text, nullable=False))
    metadata_json: str = Field(default="{}", sa_column=sa.Column("metadata", sa.Text, nullable=False))
    status: str = Field(default="active", max_length=16)
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> Metric:
        """Return the domain metric."""
        return Metric(
            id=self.id,
            name=self.name,
            definition=definition_from_dict(json.loads(self.definition_json)),
            sql=self.sql,
            created_at=utc(self.created_at),
            item_id=self.item_id,
            description=self.description,
            metadata=json.loads(self.metadata_json or "{}"),
            status=self.status,  # type: ignore[arg-type]
        )

    @classmethod
    def from_domain(cls, metric: Metric) -> "MetricRow":
        """Build a row from a domain metric."""
        return cls(
            id=metric.id,
            name=metric.name,
            description=metric.description,
            item_id=metric.item_id,
            sql=metric.sql,
            definition_json=json.dumps(definition_to_dict(metric.definition), sort_keys=True),
            metadata_json=json.dumps(dict(metric.metadata), sort_keys=True),
            status=metric.status,
            created_at=metric.created_at,
        )


class SqlMetricRepository:
    """Metrics in the database, through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, metric: Metric) -> Metric:
        """Insert a metric."""
        self.session.add(MetricRow.from_domain(metric))
        self.session.flush()
        return metric

    def get(self, metric_id: str, *, for_update: bool = False) -> Metric:
        """Return the metric with this id (``for_update``: locked until commit, see ``writes``)."""
        if for_update:
            begin_write(self.session)
        row = self.session.get(MetricRow, metric_id, with_for_update=for_update, populate_existing=for_update)
        if row is None:
            raise MetricNotFound(f"no metric with id {metric_id!r}")
        return row.to_domain()

    def save(self, metric: Metric) -> Metric:
        """Store a metric's name, description, metadata or status (its definition never changes)."""
        row = self.session.get(MetricRow, metric.id)
        if row is None:
            raise MetricNotFound(f"no metric with id {metric.id!r}")
        fresh = MetricRow.from_domain(metric)
        for name in ("name", "description", "metadata_json", "status"):
            setattr(row, name, getattr(fresh, name))
        self.session.flush()
        return metric

    def list(
        self, *, limit: int, cursor: str | None = None, created_at: Mapping[str, datetime] | None = None,
        status: str | None = None,
    ) -> tuple[list[Metric], str | None]:
        """Return metrics newest first, and the cursor of the next page (None at the end)."""
        extra = [MetricRow.__table__.c.status == status] if status else []  # type: ignore[attr-defined]
        return page(self.session, MetricRow, limit, cursor, created_at, extra)
