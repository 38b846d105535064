"""Rows and repository for subscriptions, their timeline edits and issued invoices.

A subscription row holds the current timeline as an exact JSON snapshot and a ``revision``;
every edit also appends an immutable ``subscription_edits`` row with the timeline after it, so
the history of a subscription can be replayed. Issued invoices are immutable snapshots, unique
per (subscription, period start).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.codec import invoice_from_dict, invoice_to_dict, subscription_from_dict, subscription_to_dict
from billing_core.errors import Conflict
from billing_core.invoices import Invoice, InvoiceNotFound
from billing_core.persistence.catalog import page_rows
from billing_core.persistence.rows import one_of, utc
from billing_core.persistence.writes import begin_write
from billing_core.subscriptions import Subscription, SubscriptionNotFound

__all__ = ["SubscriptionRow", "SubscriptionEditRow", "InvoiceRow", "SqlSubscriptions"]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _dump(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class SubscriptionRow(SQLModel, table=True):
    """A subscription and its current timeline."""

    __tablename__ = "subscriptions"

    id: str = Field(primary_key=True, max_length=64)
    customer_id: str = Field(max_length=64, foreign_key="customers.id", index=True)
    plan_id: str = Field(max_length=64, index=True)
    start_date: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    end_date: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))
    external_marketplace: str | None = Field(default=None, max_length=32)
    external_marketplace_reporting_id: str | None = Field(default=None, max_length=255)
    revision: int = 1
    timeline: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self, price_cache: dict | None = None) -> Subscription:
        return from_snapshot(self.timeline, price_cache)


_SNAPSHOTS: dict[str, Subscription] = {}  # timeline snapshot text -> its (immutable) subscription
_SNAPSHOTS_KEPT = 20_000


def from_snapshot(timeline: str, price_cache: dict | None = None) -> Subscription:
    """Return the subscription a stored timeline snapshot describes, parsing each distinct text once.

    Keyed by the exact text, so a changed timeline is never answered from an older one; the
    hourly run reads the same unchanged timelines every hour (domain objects are frozen).
    """
    found = _SNAPSHOTS.get(timeline)
    if found is None:
        if len(_SNAPSHOTS) >= _SNAPSHOTS_KEPT:
            _SNAPSHOTS.clear()
        found = _SNAPSHOTS[timeline] = subscription_from_dict(json.loads(timeline), price_cache)
    return found


class SubscriptionEditRow(SQLModel, table=True):
    """One timeline edit, with the timeline after it; never updated."""

    __tablename__ = "subscription_edits"

    subscription_id: str = Field(primary_key=True, max_length=64, foreign_key="subscriptions.id")
    sequence: int = Field(primary_key=True)
    kind: str = Field(max_length=32)
    effective_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    recorded_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    timeline: str = Field(sa_column=sa.Column(sa.Text, nullable=False))


class InvoiceRow(SQLModel, table=True):
    """An issued invoice snapshot."""

    __tablename__ = "invoices"
    __table_args__ = (sa.UniqueConstraint("subscription_id", "period_start", name="uq_invoices_subscription_period"),)

    id: str = Field(primary_key=True, max_length=64)
    subscription_id: str = Field(max_length=64, foreign_key="subscriptions.id", index=True)
    customer_id: str = Field(max_length=64, index=True)
    period_start: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    period_end: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    status: str = Field(max_length=16)
    total: str = Field(max_length=64)
    currency: str = Field(max_length=8)
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> Invoice:
        return invoice_from_dict(json.loads(self.body))


class SqlSubscriptions:
    """Subscriptions, their edit log and issued invoices through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def _write_edits(self, sub: Subscription, after: int) -> None:
        snapshot = _dump(subscription_to_dict(sub))
        for edit in sub.edits:
            if edit.sequence > after:
                self.session.add(SubscriptionEditRow(
                    subscription_id=sub.id, sequence=edit.sequence, kind=edit.kind,
                    effective_at=edit.effective_at, recorded_at=edit.recorded_at, timeline=snapshot))

    def add(self, sub: Subscription) -> Subscription:
        if self.session.get(SubscriptionRow, sub.id) is not None:
            raise Conflict(f"subscription {sub.id} exists", field="id")
        assert sub.created_at is not None
        self.session.add(SubscriptionRow(
            id=sub.id, customer_id=sub.customer_id, plan_id=sub.phases[-1].plan_id, start_date=sub.start,
            end_date=sub.end, external_marketplace=sub.external_marketplace,
            external_marketplace_reporting_id=sub.external_marketplace_reporting_id,
            revision=len(sub.edits), timeline=_dump(subscription_to_dict(sub)), created_at=sub.created_at))
        self.session.flush()
        self._write_edits(sub, 0)
        self.session.flush()
        return sub

    def save(self, sub: Subscription, *, expected_revision: int) -> Subscription:
        """Store an edited timeline; refuse if someone else edited it since it was read.

        A compare-and-swap on ``revision`` in the UPDATE itself, so two edits read at the same
        revision cannot both be stored, whatever the database's isolation.
        """
        table = SubscriptionRow.__table__
        values = {"revision": len(sub.edits), "end_date": sub.end, "timeline": _dump(subscription_to_dict(sub))}
        if sub.phases:
            values["plan_id"] = sub.phases[-1].plan_id
        result = self.session.execute(
            sa.update(table).where(table.c.id == sub.id, table.c.revision == expected_revision).values(**values))
        if result.rowcount != 1:
            if self.session.get(SubscriptionRow, sub.id) is None:
                raise SubscriptionNotFound(f"subscription {sub.id} not found", field="subscription_id")
            raise Conflict(f"subscription {sub.id} changed meanwhile; retry", field="subscription_id")
        self._write_edits(sub, expected_revision)
        self.session.flush()
        loaded = self.session.identity_map.get(self.session.identity_key(SubscriptionRow, sub.id))
        if loaded is not None:
            self.session.expire(loaded)  # it holds the row as it was before the UPDATE
        return sub

    def get(self, subscription_id: str, *, for_update: bool = False) -> Subscription:
        """Return the subscription (``for_update``: locked until commit, see ``locks``)."""
        if for_update:
            begin_write(self.session)
        row = self.session.get(SubscriptionRow, subscription_id, with_for_update=for_update,
                               populate_existing=for_update)
        if row is None:
            raise SubscriptionNotFound(f"subscription {subscription_id} not found", field="subscription_id")
        return row.to_domain()

    def list(self, *, limit: int, cursor: str | None = None,
             customer_id: str | None = None) -> tuple[list[Subscription], str | None]:
        query = sa.select(SubscriptionRow)
        if customer_id is not None:
            query = query.where(SubscriptionRow.customer_id == customer_id)
        rows, nxt = page_rows(self.session, query, SubscriptionRow.__table__, SubscriptionRow, limit, cursor)
        return [r.to_domain() for r in rows], nxt

    def get_many(self, subscription_ids: Collection[str], *, for_update: bool = False) -> dict[str, Subscription]:
        """Return the named subscriptions that exist, by id, in one query (``for_update``: locked, as ``get``)."""
        query = sa.select(SubscriptionRow).where(one_of(SubscriptionRow.id, sorted(set(subscription_ids))))
        if for_update:
            begin_write(self.session)
            query = query.order_by(SubscriptionRow.id).with_for_update().execution_options(populate_existing=True)
        rows = self.session.execute(query).scalars()
        cache: dict = {}
        return {row.id: row.to_domain(cache) for row in rows}

    def for_customer(self, customer_id: str) -> list[Subscription]:
        rows = self.session.execute(sa.select(SubscriptionRow).where(SubscriptionRow.customer_id == customer_id)
                                    .order_by(SubscriptionRow.created_at, SubscriptionRow.id)).scalars()
        cache: dict = {}
        return [r.to_domain(cache) for r in rows]

    def ids_on_plan(self, plan_id: str, *, active_after: datetime) -> list[str]:
        """Return the ids of subscriptions currently on a plan that have not ended by an instant."""
        t = SubscriptionRow.__table__
        return list(self.session.execute(sa.select(t.c.id).where(
            t.c.plan_id == plan_id, sa.or_(t.c.end_date.is_(None), t.c.end_date > active_after)).order_by(t.c.id)).scalars())

    def active_of_customers(self, customer_ids: Collection[str], at: datetime) -> list[Subscription]:
        """Return the subscriptions of these customers whose window contains the instant (500 customers a query)."""
        t = SubscriptionRow.__table__
        ids = sorted(set(customer_ids))
        cache: dict = {}
        out: list[Subscription] = []
        for chunk in range(0, len(ids), 500):
            out += [from_snapshot(timeline, cache) for timeline in self.session.execute(sa.select(t.c.timeline).where(
                one_of(t.c.customer_id, ids[chunk:chunk + 500]), t.c.start_date <= at,
                sa.or_(t.c.end_date.is_(None), t.c.end_date > at)).order_by(t.c.id)).scalars()]
        return out

    def ended_between(self, since: datetime, until: datetime) -> list[Subscription]:
        """Return the subscriptions whose end falls in ``(since, until]``."""
        t = SubscriptionRow.__table__
        timelines = self.session.execute(sa.select(t.c.timeline).where(
            t.c.end_date > since, t.c.end_date <= until).order_by(t.c.end_date, t.c.id)).scalars()
        cache: dict = {}
        return [from_snapshot(timeline, cache) for timeline in timelines]

    def all_active(self, at: datetime) -> list[Subscription]:
        """Return every subscription whose window contains the instant."""
        t = SubscriptionRow.__table__
        # Only the timeline column, without ORM objects: this reads every active subscription.
        timelines = self.session.execute(sa.select(t.c.timeline).where(
            t.c.start_date <= at, sa.or_(t.c.end_date.is_(None), t.c.end_date > at),
        ).order_by(t.c.id)).scalars()
        cache: dict = {}
        return [from_snapshot(timeline, cache) for timeline in timelines]

    def overlapping(self, start: datetime, end: datetime, *,
                    customer_ids: Collection[str] | None = None) -> list[Subscription]:
        """Return every subscription whose window shares time with ``[start, end)`` (of some customers)."""
        t = SubscriptionRow.__table__
        query = sa.select(t.c.timeline).where(t.c.start_date < end, sa.or_(t.c.end_date.is_(None), t.c.end_date > start))
        if customer_ids is not None:
            if not customer_ids:
                return []
            query = query.where(one_of(t.c.customer_id, sorted(set(customer_ids))))
        cache: dict = {}
        return [from_snapshot(timeline, cache) for timeline in self.session.execute(query.order_by(t.c.id)).scalars()]

    # invoices
    def add_invoice(self, invoice: Invoice) -> Invoice:
        if invoice.status != "issued" or invoice.id is None or invoice.issued_at is None:
            raise ValueError("only issued invoices are stored")
        clash = self.session.execute(sa.select(InvoiceRow).where(
            InvoiceRow.subscription_id == invoice.subscription_id,
            InvoiceRow.period_start == invoice.period_start)).scalars().first()
        if clash is not None:
            raise Conflict(f"the invoice for this period is already issued ({clash.id})", field="subscription_id")
        self.session.add(InvoiceRow(
            id=invoice.id, subscription_id=invoice.subscription_id, customer_id=invoice.customer_id,
            period_start=invoice.period_start, period_end=invoice.period_end, status=invoice.status,
            total=str(invoice.total), currency=invoice.currency, body=_dump(invoice_to_dict(invoice)),
            created_at=invoice.issued_at))
        self.session.flush()
        return invoice

    def get_invoice(self, invoice_id: str) -> Invoice:
        row = self.session.get(InvoiceRow, invoice_id)
        if row is None:
            raise InvoiceNotFound(f"invoice {invoice_id} not found", field="invoice_id")
        return row.to_domain()

    def issued_for(self, subscription_id: str) -> list[Invoice]:
        rows = self.session.execute(sa.select(InvoiceRow).where(InvoiceRow.subscription_id == subscription_id)
                                    .order_by(InvoiceRow.period_start)).scalars()
        return [r.to_domain() for r in rows]

    def billed_through(self, subscription_ids: Collection[str]) -> dict[str, tuple[str, datetime]]:
        """Return, per subscription with an issued invoice, the id and period end of its latest one (one query)."""
        t = InvoiceRow.__table__
        rows = self.session.execute(sa.select(t.c.subscription_id, t.c.id, t.c.period_end).where(
            one_of(t.c.subscription_id, sorted(set(subscription_ids)))).order_by(t.c.period_end)).all()
        return {sub_id: (invoice_id, utc(end)) for sub_id, invoice_id, end in rows}  # the latest wins

    def list_invoices(self, *, limit: int, cursor: str | None = None, customer_id: str | None = None,
                      subscription_id: str | None = None) -> tuple[list[Invoice], str | None]:
        query = sa.select(InvoiceRow)
        if customer_id is not None:
            query = query.where(InvoiceRow.customer_id == customer_id)
        if subscription_id is not None:
            query = query.where(InvoiceRow.subscription_id == subscription_id)
        rows, nxt = page_rows(self.session, query, InvoiceRow.__table__, InvoiceRow, limit, cursor)
        return [r.to_domain() for r in rows], nxt
