"""Helpers shared by the row modules: UTC instants read back, newest-first pages, and ``IN`` lists."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from billing_core.errors import InvalidInput

__all__ = ["page", "utc"]


def one_of(column: Any, values: Sequence[Any]) -> Any:
    """``column IN (values)`` with the list bound as one expanding parameter.

    Same SQL as ``column.in_(values)``, without building one bound element per value: a read
    naming hundreds of customers or buckets compiles once (statement cache) and binds a list.
    """
    return column.in_(sa.bindparam(None, list(values), expanding=True, type_=column.type))


def utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC instant (SQLite hands back naive ones)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def page(session: Session, row_type: Any, limit: int, cursor: str | None,
         created_at: Mapping[str, datetime] | None, extra: Sequence[Any] = ()) -> tuple[list[Any], str | None]:
    """Return one page of domain objects newest first (by created_at, id) and the next cursor."""
    table = row_type.__table__
    query = sa.select(row_type).order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit + 1)
    for condition in extra:
        query = query.where(condition)
    ops = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}
    for op, value in (created_at or {}).items():
        query = query.where(getattr(table.c.created_at, ops[op])(value))
    if cursor:
        anchor = session.get(row_type, cursor)
        if anchor is None:
            raise InvalidInput(f"cursor: {cursor!r} is not a cursor of this list", field="cursor")
        else:
            query = query.where(
                sa.or_(
                    table.c.created_at < anchor.created_at,
                    sa.and_(table.c.created_at == anchor.created_at, table.c.id < anchor.id),
                )
            )
    rows = list(session.execute(query).scalars())
    has_more = len(rows) > limit
    rows = rows[:limit]
    return [r.to_domain() for r in rows], (rows[-1].id if has_more and rows else None)
