"""Rows and repository for items, prices, plans and plan versions (Alembic branch ``billing_plans``).

A plan version is written once and never updated (its prices and adjustments are a JSON snapshot
with decimal strings); the plan row only moves its ``default_version``. Every price is also
stored on its own so it can be named by id (``add_prices``, price intervals).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.codec import price_from_dict, price_to_dict, version_from_dict, version_to_dict
from billing_core.errors import Conflict
from billing_core.persistence.rows import utc
from billing_core.persistence.writes import begin_write
from billing_core.plans import Item, ItemNotFound, Plan, PlanNotFound, PriceNotFound, fill_lineage
from billing_core.pricing import Price

__all__ = ["ItemRow", "PriceRow", "PlanRow", "PlanVersionRow", "SqlCatalog", "page_rows"]


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class ItemRow(SQLModel, table=True):
    """An item."""

    __tablename__ = "items"

    id: str = Field(primary_key=True, max_length=64)
    name: str
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> Item:
        return Item(id=self.id, name=self.name, created_at=utc(self.created_at))

    @classmethod
    def from_domain(cls, item: Item) -> "ItemRow":
        return cls(id=item.id, name=item.name, created_at=item.created_at)


class PriceRow(SQLModel, table=True):
    """A price, immutable once written; ``body`` is its exact JSON encoding."""

    __tablename__ = "prices"

    id: str = Field(primary_key=True, max_length=64)
    key: str = Field(max_length=128)
    plan_id: str | None = Field(default=None, max_length=64, index=True)
    item_id: str = Field(max_length=64)
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> Price:
        return price_from_dict(json.loads(self.body))

    @classmethod
    def from_domain(cls, price: Price, *, plan_id: str | None, now: datetime) -> "PriceRow":
        return cls(id=price.id, key=price.key, plan_id=plan_id, item_id=price.item_id,
                   body=_dump(price_to_dict(price)), created_at=now)


class PlanRow(SQLModel, table=True):
    """A plan's identity and default version."""

    __tablename__ = "plans"
    __table_args__ = (sa.UniqueConstraint("external_plan_id", name="uq_plans_external_plan_id"),)

    id: str = Field(primary_key=True, max_length=64)
    external_plan_id: str | None = Field(default=None, max_length=255)
    name: str
    currency: str = Field(max_length=8)
    description: str = ""
    status: str = Field(default="active", max_length=16)
    default_version: int
    metadata_json: str = Field(default="{}", sa_column=sa.Column("metadata", sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))


class PlanVersionRow(SQLModel, table=True):
    """One immutable plan version."""

    __tablename__ = "plan_versions"

    plan_id: str = Field(primary_key=True, max_length=64, foreign_key="plans.id")
    version: int = Field(primary_key=True)
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


def page_rows(session: Session, query: Any, table: Any, row_type: Any, limit: int,
              cursor: str | None) -> tuple[list[Any], str | None]:
    """Return one page of rows newest first (by created_at, id) and the next cursor."""
    query = query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit + 1)
    if cursor:
        anchor = session.get(row_type, cursor)
        if anchor is not None:
            query = query.where(sa.or_(
                table.c.created_at < anchor.created_at,
                sa.and_(table.c.created_at == anchor.created_at, table.c.id < anchor.id)))
    rows = list(session.execute(query).scalars())
    has_more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if has_more and rows else None)


class SqlCatalog:
    """Items, prices and plans through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    # items
    def add_item(self, item: Item) -> Item:
        self.session.add(ItemRow.from_domain(item))
        self.session.flush()
        return item

    def get_item(self, item_id: str) -> Item:
        row = self.session.get(ItemRow, item_id)
        if row is None:
            raise ItemNotFound(f"item {item_id} not found", field="item_id")
        return row.to_domain()

    def rename_item(self, item_id: str, name: str) -> Item:
        row = self.session.get(ItemRow, item_id)
        if row is None:
            raise ItemNotFound(f"item {item_id} not found", field="item_id")
        row.name = name
        self.session.flush()
        return row.to_domain()

    def item_names(self) -> dict[str, str]:
        """Return every item's name by id (prices show their item's name)."""
        return dict(self.session.execute(sa.select(ItemRow.id, ItemRow.name)).all())  # type: ignore[arg-type]

    def list_items(self, *, limit: int, cursor: str | None = None) -> tuple[list[Item], str | None]:
        rows, nxt = page_rows(self.session, sa.select(ItemRow), ItemRow.__table__, ItemRow, limit, cursor)
        return [r.to_domain() for r in rows], nxt

    # prices
    def add_price(self, price: Price, *, plan_id: str | None, now: datetime) -> Price:
        existing = self.session.get(PriceRow, price.id)
        if existing is not None:
            if existing.to_domain() != price:
                raise Conflict(f"price {price.id} exists with another definition", field="price_id")
            return price
        self.session.add(PriceRow.from_domain(price, plan_id=plan_id, now=now))
        self.session.flush()
        return price

    def get_price(self, price_id: str) -> Price:
        row = self.session.get(PriceRow, price_id)
        if row is None:
            row = self.session.execute(
                sa.select(PriceRow).where(PriceRow.body.contains(f'"external_price_id":{json.dumps(price_id)}'))  # type: ignore[attr-defined]
            ).scalars().first()
        if row is None:
            raise PriceNotFound(f"price {price_id} not found", field="price_id")
        return row.to_domain()

    # plans
    def save_plan(self, plan: Plan) -> Plan:
        """Insert a new plan, or store its new versions and default; versions are never rewritten."""
        row = self.session.get(PlanRow, plan.id)
        if plan.created_at is None:
            raise ValueError(f"plan {plan.id} has no created_at")
        now = plan.created_at
        if row is None:
            if plan.external_plan_id and self.session.execute(
                    sa.select(PlanRow.id).where(PlanRow.external_plan_id == plan.external_plan_id)).first():
                raise Conflict(f"a plan with external_plan_id {plan.external_plan_id} exists",
                               field="external_plan_id")
            row = PlanRow(id=plan.id, external_plan_id=plan.external_plan_id, name=plan.name,
                          currency=plan.currency, description=plan.description, status=plan.status,
                          default_version=plan.default_version,
                          metadata_json=_dump(dict(plan.metadata)), created_at=now)
            self.session.add(row)
            self.session.flush()
        else:
            row.default_version = plan.default_version
        stored = set(self.session.execute(
            sa.select(PlanVersionRow.version).where(PlanVersionRow.plan_id == plan.id)).scalars())
        for version in plan.versions:
            if version.version in stored:
                continue
            for price in version.prices:
                self.add_price(price, plan_id=plan.id, now=version.created_at or now)
            self.session.add(PlanVersionRow(plan_id=plan.id, version=version.version,
                                            body=_dump(version_to_dict(version)),
                                            created_at=version.created_at or now))
        self.session.flush()
        return plan

    def _plan(self, row: PlanRow) -> Plan:
        versions = self.session.execute(
            sa.select(PlanVersionRow).where(PlanVersionRow.plan_id == row.id).order_by(PlanVersionRow.version)
        ).scalars()
        return Plan(id=row.id, name=row.name, currency=row.currency,
                    versions=fill_lineage(version_from_dict(json.loads(v.body)) for v in versions),
                    default_version=row.default_version, external_plan_id=row.external_plan_id,
                    description=row.description, status=row.status,
                    metadata=json.loads(row.metadata_json), created_at=utc(row.created_at))

    def get_plan(self, plan_id: str, *, for_update: bool = False) -> Plan:
        """Return the plan (``for_update``: its row locked until commit, see ``writes``)."""
        if for_update:
            begin_write(self.session)
        row = self.session.get(PlanRow, plan_id, with_for_update=for_update, populate_existing=for_update)
        if row is None:
            raise PlanNotFound(f"plan {plan_id} not found", field="plan_id")
        return self._plan(row)

    def get_plan_by_external_id(self, external_plan_id: str) -> Plan:
        row = self.session.execute(
            sa.select(PlanRow).where(PlanRow.external_plan_id == external_plan_id)).scalars().first()
        if row is None:
            raise PlanNotFound(f"plan with external_plan_id {external_plan_id} not found", field="external_plan_id")
        return self._plan(row)

    def list_plans(self, *, limit: int, cursor: str | None = None,
                   status: str | None = None) -> tuple[list[Plan], str | None]:
        query = sa.select(PlanRow)
        if status:
            query = query.where(PlanRow.status == status)
        rows, nxt = page_rows(self.session, query, PlanRow.__table__, PlanRow, limit, cursor)
        return [self._plan(r) for r in rows], nxt


