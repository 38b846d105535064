"""The sync's own webhook events, in Orb's style: ``contract.*`` and ``marketplace_report.*``.

Each is written to the billing core's outbox (``billing_core.emit``) in the transaction of the
change — a contract row's update, a ledger row's settlement — and ordered per contract. Bodies
carry the object (``contract`` or ``marketplace_report``) and ``properties``.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterator, Sequence

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from billing_core import emit, iso
from worker.persistence.contracts import ContractRow
from worker.statuses import ContractStatus, MappingStatus

__all__ = ["contract_changed", "contract_event", "report_event", "reports_settled"]


@contextmanager
def _session(db: Session | Connection) -> Iterator[Session]:
    """Use the caller's session, or a session joined to the caller's connection (its transaction)."""
    if isinstance(db, Session):
        yield db
        return
    with Session(bind=db) as session:
        yield session
        session.flush()


def contract_summary(row: ContractRow) -> dict[str, Any]:
    """Return a contract as its events carry it."""
    return {
        "id": row.id, "external_id": row.external_id, "marketplace": row.marketplace, "status": row.status,
        "listing_id": row.listing_id,
        "mapping": {"status": row.mapping_status, "reason": row.mapping_reason or None,
                    "customer_id": row.customer_id, "subscription_id": row.subscription_id},
        "started_at": iso(row.started_at), "canceled_at": iso(row.canceled_at),
        "cancel_effective_at": iso(row.cancel_effective_at), "closed_at": iso(row.closed_at),
    }


def contract_event(db: Session | Connection, event_type: str, row: ContractRow, *, now: datetime,
                   properties: dict[str, Any] | None = None) -> str:
    """Emit a ``contract.*`` event for ``row``."""
    with _session(db) as session:
        return emit(session, event_type, {"type": event_type, "contract": contract_summary(row),
                                          "properties": properties or {}},
                    now=now, ordering_key=f"contract:{row.id}")


def contract_changed(session: Session, row: ContractRow, before: tuple[str | None, str | None], *,
                     now: datetime) -> None:
    """Emit what changed on ``row`` since ``before`` (its status and mapping status then)."""
    status, mapping = before
    if row.mapping_status != mapping:
        if row.mapping_status == MappingStatus.MAPPED:
            contract_event(session, "contract.mapped", row, now=now)
        elif row.mapping_status in (MappingStatus.UNMAPPED, MappingStatus.ERROR):
            contract_event(session, "contract.unmapped", row, now=now,
                           properties={"reason": row.mapping_reason or None})
    if row.status != status and row.status == ContractStatus.CANCELED:
        contract_event(session, "contract.canceled", row, now=now)


def report_summary(row: Any, *, status: str | None = None, detail: str | None = None) -> dict[str, Any]:
    """Return a usage report (a ``LedgerRow``, or a row of its table) as its events carry it: units, and
    their amount where known."""
    amount = None
    if row.unit_price is not None:
        amount = str(Decimal(row.unit_price) * row.quantity)
    return {
        "id": row.id, "key": row.key, "contract_id": row.contract_id, "marketplace": row.marketplace,
        "dimension": row.dimension, "hour": iso(row.hour), "quantity": row.quantity,
        "status": status or row.status, "detail": (detail if detail is not None else row.detail) or None, "unit_price": row.unit_price, "amount": amount,
    }


def report_event(db: Session | Connection, event_type: str, row: Any, *, now: datetime,
                 detail: str | None = None, properties: dict[str, Any] | None = None) -> str:
    """Emit a ``marketplace_report.*`` event for one ledger row (its new status is the type's last word)."""
    summary = report_summary(row, status=event_type.rsplit(".", 1)[-1], detail=detail)
    with _session(db) as session:
        return emit(session, event_type, {"type": event_type, "marketplace_report": summary,
                                          "properties": properties or {}},
                    now=now, ordering_key=f"contract:{row.contract_id}")


def reports_settled(db: Session | Connection, rows: Sequence[tuple[Any, str]], status: str, *,
                    now: datetime) -> None:
    """Emit ``marketplace_report.<status>`` for settled rows, each with its stored detail."""
    with _session(db) as session:
        for row, detail in rows:
            report_event(session, f"marketplace_report.{status}", row, now=now, detail=detail)
