"""What changed since a watermark: the question an incremental reader asks before reading usage.

Every write that can change usage appends to the change log (``persistence/fragments.py``):
ingest, amendments and deprecations (the 5-minute buckets of the old and the new event), a
backfill's close or revert, a customer created with an external id that events already carry.
A reader takes ``watermark`` *before* it reads; what it read then holds every change up to that
position. Later, ``unchanged_usage`` tells, for many customers at once and in two indexed
queries, whose usage is still what that read saw — so an hourly run can carry a contract's cost
forward instead of reading its usage again (``worker/cost_memo.py``).

Usage over ``[s, e)`` read at a mark ``(position, since)`` with ``e == since`` equals usage over
``[s, e')`` for any ``e'`` in ``[since, until]`` when:

- no change after ``position`` names the customer, one of its external ids, or anyone, for one
  of the event names (or for any name);
- no event of those names, in any state, is stamped in ``[since, until)`` for the customer (by
  id or by external id). Ingest accepts events up to 5 minutes ahead of its clock, so an event
  logged before the mark may still fall after ``since``: the second query catches it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from billing_core.events import to_micros
from billing_core.persistence.customers import customers_table, external_ids
from billing_core.persistence.events import events_table
from billing_core.persistence.fragments import changes_table, newest_change
from billing_core.persistence.rows import one_of

__all__ = ["Mark", "changed_customers", "unchanged_usage", "watermark"]

_CHUNK = 500


def watermark(engine: sa.Engine) -> int:
    """Return the change-log position a read taken after this call sees in full."""
    with engine.connect() as conn:
        with conn.begin():
            return newest_change(conn)


@dataclass(frozen=True)
class Mark:
    """A customer's usage of ``event_names`` as read at change-log ``position`` over windows ending at ``since``."""

    position: int
    since: datetime
    event_names: frozenset[str]


def unchanged_usage(engine: sa.Engine, marks: Mapping[str, Mark], until: datetime) -> set[str]:
    """Return the customers of ``marks`` whose usage over windows ending in ``[since, until]`` is
    what it was at their mark (see the module docstring); every other customer may have changed."""
    if not marks:
        return set()
    names = sorted({name for mark in marks.values() for name in mark.event_names})
    ids = sorted(marks)
    oldest = min(mark.position for mark in marks.values())
    earliest = to_micros(min(mark.since for mark in marks.values()))
    end = to_micros(until)
    changed: set[str] = set()
    c, e = changes_table, events_table

    def relevant(cid: str, name: str | None) -> bool:
        return name is None or name in marks[cid].event_names

    with engine.connect() as conn:
        owners = {ext: cid for cid, ext in external_ids(conn, ids).items()}
        externals = sorted(owners)
        named = sa.or_(c.c.event_name.is_(None), one_of(c.c.event_name, names))
        # Changes after the oldest mark, the newest per (owner, name): naming no one (anyone may
        # have changed), or these customers by id or by external id.
        logged: list[tuple[str | None, str | None, int]] = [
            (None, name, position) for position, name in conn.execute(
                sa.select(sa.func.max(c.c.id), c.c.event_name).where(
                    c.c.id > oldest, c.c.customer_id.is_(None), c.c.external_customer_id.is_(None), named,
                ).group_by(c.c.event_name)).all()]
        for chunk in _chunks(ids):
            logged += conn.execute(sa.select(c.c.customer_id, c.c.event_name, sa.func.max(c.c.id)).where(
                c.c.id > oldest, one_of(c.c.customer_id, chunk), named,
            ).group_by(c.c.customer_id, c.c.event_name)).all()
        for chunk in _chunks(externals):
            logged += [(owners[ext], name, position) for ext, name, position in conn.execute(
                sa.select(c.c.external_customer_id, c.c.event_name, sa.func.max(c.c.id)).where(
                    c.c.id > oldest, c.c.customer_id.is_(None), one_of(c.c.external_customer_id, chunk), named,
                ).group_by(c.c.external_customer_id, c.c.event_name)).all()]
        for owner, name, position in logged:
            for cid in ids if owner is None else [owner]:
                if position > marks[cid].position and relevant(cid, name):
                    changed.add(cid)
        # Events stamped in [a mark's end, until), whenever they were ingested: the newest per (owner, name).
        stamped: list[tuple[str, str, int]] = []
        if end > earliest:
            for chunk in _chunks(ids):
                stamped += conn.execute(sa.select(e.c.customer_id, e.c.event_name, sa.func.max(e.c.ts)).where(
                    one_of(e.c.customer_id, chunk), one_of(e.c.event_name, names), e.c.ts >= earliest, e.c.ts < end,
                ).group_by(e.c.customer_id, e.c.event_name)).all()
            for chunk in _chunks(externals):
                stamped += [(owners[ext], name, ts) for ext, name, ts in conn.execute(
                    sa.select(e.c.external_customer_id, e.c.event_name, sa.func.max(e.c.ts)).where(
                        e.c.customer_id.is_(None), one_of(e.c.external_customer_id, chunk),
                        one_of(e.c.event_name, names), e.c.ts >= earliest, e.c.ts < end,
                    ).group_by(e.c.external_customer_id, e.c.event_name)).all()]
        for cid, name, ts in stamped:
            if ts >= to_micros(marks[cid].since) and relevant(cid, name):
                changed.add(cid)
    return set(ids) - changed


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i:i + _CHUNK] for i in range(0, len(values), _CHUNK)]


def changed_customers(engine: sa.Engine, after: int) -> tuple[int, set[str] | None]:
    """Return the newest change-log position and the customers whose usage changed after ``after``
    up to it (None: a change named no one, so anyone's may have). Two indexed reads."""
    c = changes_table
    with engine.connect() as conn:
        with conn.begin():
            newest = newest_change(conn)
            if newest <= after:
                return newest, set()
            rows = conn.execute(sa.select(c.c.customer_id, c.c.external_customer_id).distinct().where(
                c.c.id > after, c.c.id <= newest)).all()
            if any(cid is None and ext is None for cid, ext in rows):
                return newest, None
            found = {cid for cid, _ in rows if cid is not None}
            aliases = sorted({ext for cid, ext in rows if cid is None and ext is not None})
            for chunk in _chunks(aliases):
                found.update(conn.execute(sa.select(customers_table.c.id).where(
                    one_of(customers_table.c.external_customer_id, chunk))).scalars())
    return newest, found
