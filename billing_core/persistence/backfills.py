"""Rows and repository for backfills (Alembic branch ``billing_events``).

A backfill's events are stored at once with state 3 (pending); closing it makes them live and,
when it replaces, retires the window's live events (recorded in ``backfill_replacements`` so a
revert restores them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.backfills import Backfill, BackfillNotFound
from billing_core.events import from_micros, to_micros
from billing_core.persistence.customers import customers_table
from billing_core.persistence.fragments import log_changes
from billing_core.persistence.events import (
    STATE_BACKFILL_PENDING, STATE_LIVE, STATE_REPLACED, STATE_REVERTED, events_table,
)
from billing_core.persistence.rows import page, utc

__all__ = ["BackfillReplacementRow", "BackfillRow", "SqlBackfillStore"]


class BackfillRow(SQLModel, table=True):
    """A backfill window and its state."""

    __tablename__ = "backfills"

    id: str = Field(primary_key=True, max_length=64)
    customer_id: str | None = Field(default=None, max_length=64)
    timeframe_start: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    timeframe_end: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    replace_existing_events: bool = False
    status: str = Field(default="pending", max_length=16)
    events_ingested: int = 0
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))
    close_time: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))
    reverted_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))

    def to_domain(self) -> Backfill:
        """Return the domain backfill."""
        return Backfill(
            id=self.id,
            timeframe_start=from_micros(self.timeframe_start),
            timeframe_end=from_micros(self.timeframe_end),
            created_at=utc(self.created_at),
            customer_id=self.customer_id,
            replace_existing_events=self.replace_existing_events,
            status=self.status,  # type: ignore[arg-type]
            close_time=utc(self.close_time) if self.close_time else None,
            reverted_at=utc(self.reverted_at) if self.reverted_at else None,
            events_ingested=self.events_ingested,
        )

    @classmethod
    def from_domain(cls, backfill: Backfill) -> "BackfillRow":
        """Build a row from a domain backfill."""
        return cls(
            id=backfill.id,
            customer_id=backfill.customer_id,
            timeframe_start=to_micros(backfill.timeframe_start),
            timeframe_end=to_micros(backfill.timeframe_end),
            replace_existing_events=backfill.replace_existing_events,
            status=backfill.status,
            events_ingested=backfill.events_ingested,
            created_at=backfill.created_at,
            close_time=backfill.close_time,
            reverted_at=backfill.reverted_at,
        )


class BackfillReplacementRow(SQLModel, table=True):
    """An event a closed backfill replaced (so that reverting the backfill restores it)."""

    __tablename__ = "backfill_replacements"

    backfill_id: str = Field(primary_key=True, max_length=64)
    event_seq: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))


class SqlBackfillStore:
    """Backfills in the database, through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, backfill: Backfill) -> Backfill:
        """Insert a backfill."""
        self.session.add(BackfillRow.from_domain(backfill))
        self.session.flush()
        return backfill

    def get(self, backfill_id: str) -> Backfill:
        """Return the backfill with this id."""
        row = self.session.get(BackfillRow, backfill_id)
        if row is None:
            raise BackfillNotFound(f"no backfill with id {backfill_id!r}")
        return row.to_domain()

    def save(self, backfill: Backfill) -> Backfill:
        """Store a backfill's new state."""
        row = self.session.get(BackfillRow, backfill.id)
        if row is None:
            raise BackfillNotFound(f"no backfill with id {backfill.id!r}")
        fresh = BackfillRow.from_domain(backfill)
        for name in ("status", "events_ingested", "close_time", "reverted_at"):
            setattr(row, name, getattr(fresh, name))
        self.session.flush()
        return backfill

    def list(self, *, limit: int, cursor: str | None = None) -> tuple[list[Backfill], str | None]:
        """Return backfills newest first, and the cursor of the next page."""
        return page(self.session, BackfillRow, limit, cursor, None)

    def _window(self, backfill: Backfill) -> list[Any]:
        e = events_table
        where = [e.c.ts >= to_micros(backfill.timeframe_start), e.c.ts < to_micros(backfill.timeframe_end)]
        if backfill.customer_id is not None:
            alias = self.session.execute(
                sa.select(customers_table.c.external_customer_id).where(customers_table.c.id == backfill.customer_id)
            ).scalar_one_or_none()
            owner = e.c.customer_id == backfill.customer_id
            if alias:
                owner = sa.or_(owner, sa.and_(e.c.customer_id.is_(None), e.c.external_customer_id == alias))
            where.append(owner)
        return where

    def _log(self, backfill: Backfill) -> None:
        log_changes(self.session, [(backfill.customer_id, None, None, to_micros(backfill.timeframe_start),
                                    to_micros(backfill.timeframe_end))])

    def reflect(self, backfill: Backfill) -> None:
        """Make the backfill's events live; retire the window's live events when it replaces them."""
        e = events_table
        self._log(backfill)
        if backfill.replace_existing_events:
            replaced = sa.select(sa.literal(backfill.id), e.c.seq).where(
                *self._window(backfill), e.c.state == STATE_LIVE
            )
            r = BackfillReplacementRow.__table__  # type: ignore[attr-defined]
            self.session.execute(sa.insert(r).from_select(["backfill_id", "event_seq"], replaced))
            self.session.execute(
                sa.update(e)
                .where(e.c.seq.in_(sa.select(r.c.event_seq).where(r.c.backfill_id == backfill.id)))
                .values(state=STATE_REPLACED)
            )
        self.session.execute(
            sa.update(e)
            .where(e.c.backfill_id == backfill.id, e.c.state == STATE_BACKFILL_PENDING)
            .values(state=STATE_LIVE)
        )

    def unreflect(self, backfill: Backfill) -> None:
        """Retire the backfill's events and restore the events it replaced."""
        e = events_table
        self._log(backfill)
        r = BackfillReplacementRow.__table__  # type: ignore[attr-defined]
        self.session.execute(
            sa.update(e)
            .where(e.c.backfill_id == backfill.id, e.c.state.in_([STATE_LIVE, STATE_BACKFILL_PENDING]))
            .values(state=STATE_REVERTED)
        )
        self.session.execute(
            sa.update(e)
            .where(e.c.seq.in_(sa.select(r.c.event_seq).where(r.c.backfill_id == backfill.id)),
                   e.c.state == STATE_REPLACED)
            .values(state=STATE_LIVE)
        )

    def customer_alias(self, customer_id: str | None) -> str | None:
        """Return the external id of the backfill's customer, if any."""
        if customer_id is None:
            return None
        return self.session.execute(
            sa.select(customers_table.c.external_customer_id).where(customers_table.c.id == customer_id)
        ).scalar_one_or_none()
