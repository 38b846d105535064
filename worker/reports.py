"""The seller's reconciliation report: per contract, dimension and day, what was reported and how it went."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select
from sqlmodel import Session

from billing_core.money import exact
from worker import hourly
from worker.persistence.contracts import ContractRow, InboxRow, ListingRow
from worker.persistence.ledger import LedgerRow

CSV_COLUMNS = ("date", "contract_id", "marketplace", "status", "listing_id", "dimension", "unit_price",
               "units_reported", "amount", "accepted", "duplicate", "rejected", "failed", "pending",
               "identifiers", "custom_properties", "expired")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """Return [start, end) of ``YYYY-MM`` in UTC; ValueError naming the problem otherwise."""
    try:
        year, mon = (int(part) for part in month.split("-"))
        start = datetime(year, mon, 1, tzinfo=timezone.utc)
    except (ValueError, TypeError):
        raise ValueError("expected YYYY-MM, e.g. 2026-11") from None
    end = datetime(year + (mon == 12), 1 if mon == 12 else mon + 1, 1, tzinfo=timezone.utc)
    return start, end


def metering_report(engine: Engine, month: str) -> list[dict[str, Any]]:
    """Return one row per contract, dimension and day of ``month`` with units, amount and outcomes."""
    start, end = month_bounds(month)
    with Session(engine) as session:
        rows = session.execute(select(LedgerRow).where(LedgerRow.hour >= start, LedgerRow.hour < end)
                               .order_by(LedgerRow.hour)).scalars().all()
        contracts = {c.id: c for c in session.execute(
            select(ContractRow).where(ContractRow.id.in_({r.contract_id for r in rows}))).scalars()}
        listings = {l.id: l for l in session.execute(
            select(ListingRow).where(ListingRow.id.in_({c.listing_id for c in contracts.values() if c.listing_id}))
        ).scalars()}
    grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        hour = row.hour if row.hour.tzinfo else row.hour.replace(tzinfo=timezone.utc)
        day = hour.date().isoformat()
        contract = contracts.get(row.contract_id)
        listing = listings.get(contract.listing_id) if contract and contract.listing_id else None
        # Each dimension is priced at its own unit price (a contract's own pricing wins, as in the sync).
        price = (next((d.unit_price for d in hourly.dimensions(contract, listing) if d.name == row.dimension), None)
                 if contract is not None and listing is not None else None)
        item = grouped.setdefault((day, row.contract_id, row.dimension), {
            "date": day, "contract_id": row.contract_id,
            "marketplace": contract.marketplace if contract else row.marketplace,
            "status": contract.status if contract else "", "listing_id": contract.listing_id if contract else None,
            "dimension": row.dimension, "unit_price": str(price) if price is not None else None,
            "units_reported": 0, "amount": Decimal(0),
            "outcomes": defaultdict(int),
            "identifiers": dict(contract.cloud_identifiers or {}) if contract else {},
            "custom_properties": dict(contract.custom_properties or {}) if contract else {},
        })
        item["outcomes"][row.status] += 1
        if row.status in ("accepted", "duplicate"):
            item["units_reported"] += row.quantity
            if price is not None:
                with exact():
                    item["amount"] += price * row.quantity
    out = []
    for item in grouped.values():
        item["amount"] = str(item["amount"])
        item["outcomes"] = dict(item["outcomes"])
        out.append(item)
    return sorted(out, key=lambda i: (i["date"], i["contract_id"], i["dimension"]))


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """Return a text cell a spreadsheet shows as text: a leading formula character gets a ``'`` before it."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def as_csv(rows: list[dict[str, Any]]) -> str:
    """Return the report as CSV (identifiers and custom properties as key=value lists).

    Text that comes from outside (cloud identifiers, custom properties, listing fields) is
    neutralised with ``safe_cell``; the numbers are ours and written as they are.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([
            r["date"], safe_cell(r["contract_id"]), safe_cell(r["marketplace"]), safe_cell(r["status"]),
            safe_cell(r["listing_id"] or ""), safe_cell(r["dimension"]),
            r["unit_price"] or "", r["units_reported"], r["amount"],
            *(r["outcomes"].get(s, 0) for s in ("accepted", "duplicate", "rejected", "failed", "pending")),
            safe_cell(";".join(f"{k}={v}" for k, v in sorted(r["identifiers"].items()))),
            safe_cell(";".join(f"{k}={v}" for k, v in sorted(r["custom_properties"].items()))),
            r["outcomes"].get("expired", 0),  # too late for the marketplace, never sent (revenue lost)
        ])
    return buffer.getvalue()


def metrics_snapshot(engine: Engine) -> dict[str, Any]:
    """Return counts for /metrics: reports by marketplace and status, inbox by source and status."""
    with Session(engine) as session:
        reports = session.execute(select(LedgerRow.marketplace, LedgerRow.status, func.count(), func.sum(LedgerRow.quantity))
                                  .group_by(LedgerRow.marketplace, LedgerRow.status)).all()
        inbox = session.execute(select(InboxRow.source, InboxRow.status, func.count())
                                .group_by(InboxRow.source, InboxRow.status)).all()
        contracts = session.execute(select(ContractRow.marketplace, ContractRow.status, ContractRow.mapping_status,
                                           func.count())
                                    .group_by(ContractRow.marketplace, ContractRow.status, ContractRow.mapping_status)).all()
        flushes = session.execute(select(ContractRow.canceled_at, func.min(LedgerRow.sent_at))
                                  .join(LedgerRow, LedgerRow.contract_id == ContractRow.id)
                                  .where(ContractRow.canceled_at.is_not(None), LedgerRow.kind.in_(("flush", "final")),
                                         LedgerRow.sent_at.is_not(None))
                                  .group_by(ContractRow.id, ContractRow.canceled_at)).all()
    latencies = []
    for canceled_at, sent_at in flushes:
        if canceled_at and sent_at:
            a = canceled_at if canceled_at.tzinfo else canceled_at.replace(tzinfo=timezone.utc)
            b = sent_at if sent_at.tzinfo else sent_at.replace(tzinfo=timezone.utc)
            latencies.append(max((b - a).total_seconds(), 0.0))
    return {"reports": [tuple(r) for r in reports], "inbox": [tuple(r) for r in inbox],
            "contracts": [tuple(r) for r in contracts], "flush_latencies": sorted(latencies)}
