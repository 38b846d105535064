"""Rows of outbound webhooks: endpoints, the event outbox and each endpoint's deliveries
(Alembic branch ``billing_plans``, revision ``billing_plans_0003``).

An event is written to ``webhook_events`` in the transaction of the change that caused it, with
one ``webhook_deliveries`` row per enabled endpoint that wants its type: the worker sends those
(``worker/outbound.py``) and records every attempt on the row. An endpoint's signing secret is
stored to sign with and never rendered again after its creation. An event's ``body`` text holds its
standard body and, under ``EXPANDED``, the resources of its expanded payload; numbers keep their
exact text both ways (``ExactNumber``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.errors import NotFound
from billing_core.money import ExactNumber, exact_json
from billing_core.outbox import Delivery, Endpoint, OutboxEvent
from billing_core.persistence.rows import one_of, page, utc
from billing_core.persistence.writes import begin_write

__all__ = ["SqlOutbox", "WebhookDeliveryRow", "WebhookEndpointRow", "WebhookEventRow"]

EXPANDED = "_expanded"  # the key of an event's expanded resources in its stored body


class WebhookEndpointNotFound(NotFound):
    """No webhook endpoint has this id."""


class WebhookEndpointRow(SQLModel, table=True):
    """A webhook endpoint: where events go, which ones, in which style, and the secret they are signed with."""

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=64)
    url: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    secret: str = Field(max_length=128)
    enabled: bool = True
    enabled_event_types: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    payload_style: str = Field(default="expanded", max_length=16)
    failing_since: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    disabled_reason: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> Endpoint:
        """Return the domain endpoint (with its secret: callers never render it)."""
        return Endpoint(
            id=self.id, url=self.url, secret=self.secret, enabled=self.enabled,
            enabled_event_types=None if self.enabled_event_types is None else tuple(json.loads(self.enabled_event_types)),
            payload_style=self.payload_style, created_at=utc(self.created_at),
            failing_since=utc(self.failing_since) if self.failing_since else None,
            disabled_reason=self.disabled_reason,
        )


class WebhookEventRow(SQLModel, table=True):
    """One event in the outbox: its type, the resources and properties of its body, its ordering key."""

    __tablename__ = "webhook_events"
    __table_args__ = (sa.Index("ix_webhook_events_key_type", "ordering_key", "type"),)

    seq: int | None = Field(default=None, sa_column=sa.Column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True))
    id: str = Field(max_length=64, sa_column_kwargs={"unique": True})
    type: str = Field(max_length=64)
    ordering_key: str | None = Field(default=None, max_length=128)
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> OutboxEvent:
        """Return the domain event."""
        return _event(self)


class WebhookDeliveryRow(SQLModel, table=True):
    """One event to one endpoint: pending until delivered, or failed after the retry window; every attempt counted."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("endpoint_id", "event_seq", name="uq_webhook_deliveries_endpoint_event"),
        sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        sa.Index("ix_webhook_deliveries_key", "endpoint_id", "ordering_key", "event_seq"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True))
    endpoint_id: str = Field(max_length=64)
    event_seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    ordering_key: str | None = Field(default=None, max_length=128)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    last_attempt_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    delivered_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True)))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))

    def to_domain(self) -> Delivery:
        """Return the domain delivery."""
        return _delivery(self)


endpoints_table: sa.Table = WebhookEndpointRow.__table__  # type: ignore[attr-defined]
events_table: sa.Table = WebhookEventRow.__table__  # type: ignore[attr-defined]
deliveries_table: sa.Table = WebhookDeliveryRow.__table__  # type: ignore[attr-defined]


# The sender reads hundreds of events and deliveries a round: as plain rows (the ORM's model
# objects cost more than the rest of a delivery's bookkeeping), turned into domain objects here,
# as the models' ``to_domain`` turn theirs.

def _event(row: Any) -> OutboxEvent:
    body = json.loads(row.body, parse_float=ExactNumber)
    expanded = body.pop(EXPANDED, None)
    return OutboxEvent(seq=int(row.seq or 0), id=row.id, type=row.type, ordering_key=row.ordering_key,
                       body=body, created_at=utc(row.created_at), expanded=expanded)


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=int(row.id or 0), endpoint_id=row.endpoint_id, event_seq=row.event_seq,
        ordering_key=row.ordering_key, status=row.status, attempts=row.attempts,
        next_attempt_at=utc(row.next_attempt_at),
        last_attempt_at=utc(row.last_attempt_at) if row.last_attempt_at else None,
        last_status_code=row.last_status_code, last_error=row.last_error,
        delivered_at=utc(row.delivered_at) if row.delivered_at else None, created_at=utc(row.created_at),
    )


class SqlOutbox:
    """Endpoints, outbox events and deliveries, through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    # --- endpoints ---------------------------------------------------------------------------------

    def add_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """Insert an endpoint."""
        self.session.add(WebhookEndpointRow(
            id=endpoint.id, url=endpoint.url, secret=endpoint.secret, enabled=endpoint.enabled,
            enabled_event_types=_types_json(endpoint.enabled_event_types), payload_style=endpoint.payload_style,
            created_at=endpoint.created_at))
        self.session.flush()
        return endpoint

    def get_endpoint(self, endpoint_id: str, *, for_update: bool = False) -> Endpoint:
        """Return an endpoint (``for_update``: locked until commit)."""
        return self._endpoint_row(endpoint_id, for_update=for_update).to_domain()

    def _endpoint_row(self, endpoint_id: str, *, for_update: bool = False) -> WebhookEndpointRow:
        if for_update:
            begin_write(self.session)
        row = self.session.get(WebhookEndpointRow, endpoint_id, with_for_update=for_update,
                               populate_existing=for_update)
        if row is None:
            raise WebhookEndpointNotFound(f"no webhook endpoint with id {endpoint_id!r}", field="webhook_endpoint_id")
        return row

    def save_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """Store an endpoint's url, event types, style, state (never its secret)."""
        row = self._endpoint_row(endpoint.id)
        row.url, row.enabled, row.payload_style = endpoint.url, endpoint.enabled, endpoint.payload_style
        row.enabled_event_types = _types_json(endpoint.enabled_event_types)
        row.failing_since, row.disabled_reason = endpoint.failing_since, endpoint.disabled_reason
        self.session.flush()
        return endpoint

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Delete an endpoint and its deliveries."""
        row = self._endpoint_row(endpoint_id, for_update=True)
        self.session.execute(sa.delete(deliveries_table).where(deliveries_table.c.endpoint_id == endpoint_id))
        self.session.delete(row)
        self.session.flush()

    def list_endpoints(self, *, limit: int, cursor: str | None = None) -> tuple[list[Endpoint], str | None]:
        """Return endpoints newest first and the next page's cursor."""
        return page(self.session, WebhookEndpointRow, limit, cursor, None)

    def endpoints(self) -> list[Endpoint]:
        """Return every endpoint."""
        rows = self.session.execute(sa.select(WebhookEndpointRow).order_by(endpoints_table.c.created_at)).scalars()
        return [r.to_domain() for r in rows]

    # --- events and deliveries ------------------------------------------------------------------------

    def append(self, event: OutboxEvent, endpoint_ids: Sequence[str]) -> int:
        """Insert an event and one pending delivery per endpoint; return the event's position."""
        seq = self.session.execute(sa.insert(events_table).values(
            id=event.id, type=event.type, ordering_key=event.ordering_key,
            body=_body_json(event), created_at=event.created_at,
        ).returning(events_table.c.seq)).scalar_one()
        if endpoint_ids:
            self.session.execute(sa.insert(deliveries_table), [
                {"endpoint_id": e, "event_seq": seq, "ordering_key": event.ordering_key, "status": "pending",
                 "attempts": 0, "next_attempt_at": event.created_at, "created_at": event.created_at}
                for e in endpoint_ids])
        return int(seq)

    def prune(self, before: datetime, *, limit: int) -> tuple[int, int]:
        """Delete up to ``limit`` finished deliveries (delivered or failed) whose last attempt was before
        ``before``, then the events created before it that no delivery refers to any more; return
        (deliveries, events). A pending delivery, and so its event, is never deleted, however old.
        """
        d, e = deliveries_table, events_table
        finished = (d.c.status.in_(["delivered", "failed"]), d.c.last_attempt_at < before)
        orphan = (e.c.created_at < before, ~sa.exists().where(d.c.event_seq == e.c.seq))
        ids = list(self.session.execute(sa.select(d.c.id).where(*finished).order_by(d.c.id).limit(limit)).scalars())
        # Each delete repeats its condition: a delivery replayed (pending again) since the select stays.
        deleted = self.session.execute(sa.delete(d).where(one_of(d.c.id, ids), *finished)).rowcount if ids else 0
        seqs = list(self.session.execute(sa.select(e.c.seq).where(*orphan).order_by(e.c.seq).limit(limit)).scalars())
        dropped = self.session.execute(sa.delete(e).where(one_of(e.c.seq, seqs), *orphan)).rowcount if seqs else 0
        return int(deleted), int(dropped)

    def has_event(self, event_type: str, ordering_key: str) -> bool:
        """Tell whether an event of this type was written under this ordering key."""
        e = events_table
        return self.session.execute(sa.select(e.c.seq).where(
            e.c.ordering_key == ordering_key, e.c.type == event_type).limit(1)).first() is not None

    def events(self, seqs: Sequence[int]) -> dict[int, OutboxEvent]:
        """Return the events at these positions."""
        if not seqs:
            return {}
        rows = self.session.execute(sa.select(events_table).where(one_of(events_table.c.seq, list(seqs))))
        return {int(r.seq or 0): _event(r) for r in rows}

    def due_endpoints(self, now: datetime) -> list[str]:
        """Return the enabled endpoints with a pending delivery due by ``now``."""
        d, e = deliveries_table, endpoints_table
        return list(self.session.execute(
            sa.select(d.c.endpoint_id).distinct().join(e, e.c.id == d.c.endpoint_id)
            .where(d.c.status == "pending", d.c.next_attempt_at <= now, e.c.enabled.is_(True))).scalars())

    def pending(self, endpoint_id: str, *, now: datetime, limit: int) -> list[Delivery]:
        """Return an endpoint's pending deliveries in event order, leaving out those held back: a
        delivery waiting for its retry holds back the later ones of its ordering key, so a key stuck
        on a failing event never crowds the others out of a batch."""
        d, held = deliveries_table, deliveries_table.alias("held")
        waiting = sa.exists().where(
            held.c.endpoint_id == d.c.endpoint_id, held.c.ordering_key == d.c.ordering_key,
            held.c.status == "pending", held.c.event_seq <= d.c.event_seq, held.c.next_attempt_at > now)
        rows = self.session.execute(
            sa.select(d).where(d.c.endpoint_id == endpoint_id, d.c.status == "pending",
                               d.c.next_attempt_at <= now, ~waiting)
            .order_by(d.c.event_seq).limit(limit))
        return [_delivery(r) for r in rows]

    def record_attempt(self, delivery_id: int, **values: Any) -> None:
        """Store one attempt's outcome on a delivery (status, counts, codes, next attempt)."""
        self.record_attempts([(delivery_id, values)])

    def record_attempts(self, attempts: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
        """Store many attempts' outcomes: one statement per set of columns, each run for all its rows."""
        d = deliveries_table
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for delivery_id, values in attempts:
            groups.setdefault(tuple(sorted(values)), []).append({"delivery_id": delivery_id, **values})
        for columns, rows in groups.items():
            statement = sa.update(d).where(d.c.id == sa.bindparam("delivery_id")).values(
                attempts=d.c.attempts + 1, **{c: sa.bindparam(c, type_=d.c[c].type) for c in columns})
            self.session.connection().execute(statement, rows)

    def get_delivery(self, endpoint_id: str, delivery_id: int) -> Delivery:
        """Return one delivery of an endpoint."""
        row = self.session.get(WebhookDeliveryRow, delivery_id)
        if row is None or row.endpoint_id != endpoint_id:
            raise NotFound(f"no delivery {delivery_id} for webhook endpoint {endpoint_id!r}", field="delivery_id")
        return row.to_domain()

    def replay(self, endpoint_id: str, delivery_id: int, now: datetime) -> Delivery:
        """Make a delivery pending again, due now (a manual replay)."""
        self.get_delivery(endpoint_id, delivery_id)
        d = deliveries_table
        self.session.execute(sa.update(d).where(d.c.id == delivery_id).values(
            status="pending", next_attempt_at=now, delivered_at=None))
        self.session.flush()
        self.session.expire_all()
        return self.get_delivery(endpoint_id, delivery_id)

    def deliveries(self, endpoint_id: str, *, limit: int, before: int | None = None) -> list[tuple[Delivery, OutboxEvent]]:
        """Return an endpoint's delivery log, newest first, each with its event."""
        d = deliveries_table
        query = sa.select(WebhookDeliveryRow).where(d.c.endpoint_id == endpoint_id).order_by(d.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(d.c.id < before)
        rows = [r.to_domain() for r in self.session.execute(query).scalars()]
        events = self.events([r.event_seq for r in rows])
        return [(r, events[r.event_seq]) for r in rows]

    def counts(self, endpoint_ids: Sequence[str]) -> Mapping[str, dict[str, int]]:
        """Return, per endpoint, how many deliveries are in each status."""
        if not endpoint_ids:
            return {}
        d = deliveries_table
        out: dict[str, dict[str, int]] = {e: {} for e in endpoint_ids}
        for endpoint_id, status, n in self.session.execute(
                sa.select(d.c.endpoint_id, d.c.status, sa.func.count()).where(one_of(d.c.endpoint_id, list(endpoint_ids)))
                .group_by(d.c.endpoint_id, d.c.status)).all():
            out[endpoint_id][status] = int(n)
        return out


def _body_json(event: OutboxEvent) -> str:
    body = dict(event.body) if event.expanded is None else {**event.body, EXPANDED: event.expanded}
    return exact_json(body, sort_keys=True, separators=(",", ":"))


def _types_json(types: Sequence[str] | None) -> str | None:
    return None if types is None else json.dumps(list(types))
