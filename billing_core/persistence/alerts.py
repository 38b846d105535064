"""Rows of alerts, their firings and the evaluator's change-log position (Alembic branch
``billing_plans``, revision ``billing_plans_0004``)."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.alerts import Alert, AlertNotFound
from billing_core.money import format_decimal
from billing_core.persistence.rows import one_of, page, utc
from billing_core.persistence.writes import begin_write

__all__ = ["AlertFiringRow", "AlertRow", "SqlAlerts"]


class AlertRow(SQLModel, table=True):
    """An alert configuration; thresholds are a JSON list of decimal strings."""

    __tablename__ = "alerts"

    id: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=40)
    thresholds: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    enabled: bool = True
    subscription_id: str | None = Field(default=None, max_length=64, index=True)
    plan_id: str | None = Field(default=None, max_length=64, index=True)
    plan_version: int | None = None
    customer_id: str | None = Field(default=None, max_length=64, index=True)
    metric_id: str | None = Field(default=None, max_length=64)
    currency: str | None = Field(default=None, max_length=8)
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> Alert:
        """Return the domain alert."""
        return Alert(
            id=self.id, type=self.type, thresholds=tuple(Decimal(t) for t in json.loads(self.thresholds)),
            enabled=self.enabled, created_at=utc(self.created_at), subscription_id=self.subscription_id,
            plan_id=self.plan_id, plan_version=self.plan_version, customer_id=self.customer_id,
            metric_id=self.metric_id, currency=self.currency)


class AlertFiringRow(SQLModel, table=True):
    """A threshold of an alert reached by a subscription in a billing period (``emitted``: an event went out)."""

    __tablename__ = "alert_firings"
    __table_args__ = (
        sa.UniqueConstraint("alert_id", "subscription_id", "period_start", "threshold", name="uq_alert_firings_once"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True))
    alert_id: str = Field(max_length=64)
    subscription_id: str = Field(max_length=64, index=True)
    period_start: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    threshold: str = Field(max_length=64)
    value: str = Field(max_length=64)
    emitted: bool = True
    fired_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


_FIRING_COLUMNS = ("alert_id", "subscription_id", "period_start", "threshold", "value", "emitted", "fired_at")
_FIRING_INSERTS: dict[str, Any] = {}


def _firing_insert(dialect: str) -> Any:
    """Return the insert-unless-stored statement for a firing, built once per dialect."""
    statement = _FIRING_INSERTS.get(dialect)
    if statement is None:
        table = AlertFiringRow.__table__  # type: ignore[attr-defined]
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
        statement = _FIRING_INSERTS[dialect] = (
            insert.values({name: sa.bindparam(name, type_=table.c[name].type) for name in _FIRING_COLUMNS})
            .on_conflict_do_nothing(index_elements=["alert_id", "subscription_id", "period_start", "threshold"])
            .returning(table.c.id))
    return statement


class AlertCursorRow(SQLModel, table=True):
    """How far in the usage change log the alert evaluator has looked."""

    __tablename__ = "alert_cursor"

    name: str = Field(primary_key=True, max_length=32)
    position: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


alerts_table: sa.Table = AlertRow.__table__  # type: ignore[attr-defined]
firings_table: sa.Table = AlertFiringRow.__table__  # type: ignore[attr-defined]


class SqlAlerts:
    """Alerts and their firings, through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, alert: Alert) -> Alert:
        """Insert an alert."""
        self.session.add(_row(alert))
        self.session.flush()
        return alert

    def get(self, alert_id: str, *, for_update: bool = False) -> Alert:
        """Return an alert (``for_update``: locked until commit)."""
        if for_update:
            begin_write(self.session)
        row = self.session.get(AlertRow, alert_id, with_for_update=for_update, populate_existing=for_update)
        if row is None:
            raise AlertNotFound(f"no alert with id {alert_id!r}", field="alert_id")
        return row.to_domain()

    def save(self, alert: Alert) -> Alert:
        """Store an alert's thresholds and enabled state."""
        row = self.session.get(AlertRow, alert.id)
        if row is None:
            raise AlertNotFound(f"no alert with id {alert.id!r}", field="alert_id")
        row.thresholds, row.enabled = _thresholds(alert.thresholds), alert.enabled
        self.session.flush()
        return alert

    def delete(self, alert_id: str) -> None:
        """Delete an alert and its firings."""
        self.get(alert_id, for_update=True)
        self.session.execute(sa.delete(firings_table).where(firings_table.c.alert_id == alert_id))
        self.session.execute(sa.delete(alerts_table).where(alerts_table.c.id == alert_id))

    def list(self, *, limit: int, cursor: str | None = None, created_at: Mapping[str, datetime] | None = None,
             subscription_id: str | None = None, customer_id: str | None = None) -> tuple[list[Alert], str | None]:
        """Return alerts newest first and the next page's cursor."""
        extra = []
        if subscription_id:
            extra.append(alerts_table.c.subscription_id == subscription_id)
        if customer_id:
            extra.append(alerts_table.c.customer_id == customer_id)
        return page(self.session, AlertRow, limit, cursor, created_at, extra)

    def for_subscriptions(self, subscription_ids: Sequence[str], plan_ids: Sequence[str]) -> list[Alert]:
        """Return the subscription-type alerts on these subscriptions or plans."""
        if not subscription_ids and not plan_ids:
            return []
        a = alerts_table
        scope = []
        if subscription_ids:
            scope.append(one_of(a.c.subscription_id, list(subscription_ids)))
        if plan_ids:
            scope.append(one_of(a.c.plan_id, list(plan_ids)))
        rows = self.session.execute(sa.select(AlertRow).where(sa.or_(*scope))).scalars()
        return [r.to_domain() for r in rows]

    def any_subscription_alerts(self) -> bool:
        """Tell whether any alert could fire (usage or cost)."""
        a = alerts_table
        return self.session.execute(sa.select(a.c.id).where(
            a.c.type.in_(["usage_exceeded", "cost_exceeded"])).limit(1)).first() is not None

    def scoped(self) -> tuple[set[str], set[str]]:
        """Return the subscription ids and plan ids that usage or cost alerts watch."""
        a = alerts_table
        rows = self.session.execute(sa.select(a.c.subscription_id, a.c.plan_id).where(
            a.c.type.in_(["usage_exceeded", "cost_exceeded"]))).all()
        return {s for s, _ in rows if s}, {p for _, p in rows if p}

    def fired(self, alert_ids: Sequence[str], subscription_ids: Sequence[str]) -> dict[tuple[str, str, datetime], list[Decimal]]:
        """Return the thresholds fired per (alert, subscription, period start)."""
        f = firings_table
        out: dict[tuple[str, str, datetime], list[Decimal]] = {}
        if not alert_ids or not subscription_ids:
            return out
        for alert_id, sub_id, start, threshold in self.session.execute(
                sa.select(f.c.alert_id, f.c.subscription_id, f.c.period_start, f.c.threshold).where(
                    one_of(f.c.alert_id, list(alert_ids)), one_of(f.c.subscription_id, list(subscription_ids)))).all():
            out.setdefault((alert_id, sub_id, utc(start)), []).append(Decimal(threshold))
        return out

    def record_firing(self, alert_id: str, subscription_id: str, period_start: datetime, threshold: Decimal,
                      value: Decimal, *, emitted: bool, now: datetime) -> bool:
        """Store a firing once; False when it was already stored (another evaluation won)."""
        # One statement (an evaluation may store a thousand): the unique constraint decides, so two
        # evaluations racing store it once and only the one that inserted emits.
        dialect = self.session.get_bind().dialect.name
        inserted = self.session.execute(_firing_insert(dialect), {
            "alert_id": alert_id, "subscription_id": subscription_id, "period_start": period_start,
            "threshold": format_decimal(threshold), "value": format_decimal(value), "emitted": emitted,
            "fired_at": now}).first()
        return inserted is not None

    def last_fired(self, alert_ids: Sequence[str]) -> dict[str, tuple[datetime, str, str]]:
        """Return, per alert, its latest firing: (when, subscription, threshold)."""
        f = firings_table
        out: dict[str, tuple[datetime, str, str]] = {}
        if not alert_ids:
            return out
        for alert_id, at, sub, threshold in self.session.execute(
                sa.select(f.c.alert_id, f.c.fired_at, f.c.subscription_id, f.c.threshold)
                .where(one_of(f.c.alert_id, list(alert_ids))).order_by(f.c.fired_at)).all():
            out[alert_id] = (utc(at), sub, threshold)
        return out

    def position(self, name: str = "usage") -> int | None:
        """Return a cursor: the evaluator's change-log position (``usage``), or another sweep's (None before its first run)."""
        row = self.session.get(AlertCursorRow, name, with_for_update=True)
        return None if row is None else int(row.position)

    def set_position(self, position: int | None, name: str = "usage") -> None:
        """Store a cursor (see ``position``); None forgets it."""
        row = self.session.get(AlertCursorRow, name)
        if position is None:
            if row is not None:
                self.session.delete(row)
                self.session.flush()
            return
        if row is None:
            self.session.add(AlertCursorRow(name=name, position=position))
        else:
            row.position = position
        self.session.flush()


def _thresholds(values: Sequence[Decimal]) -> str:
    return json.dumps([format_decimal(v) for v in values])


def _row(alert: Alert) -> AlertRow:
    return AlertRow(id=alert.id, type=alert.type, thresholds=_thresholds(alert.thresholds), enabled=alert.enabled,
                    subscription_id=alert.subscription_id, plan_id=alert.plan_id, plan_version=alert.plan_version,
                    customer_id=alert.customer_id, metric_id=alert.metric_id, currency=alert.currency,
                    created_at=alert.created_at)
