"""Invoices: a deterministic function of the timeline, the usage and the billing period.

An invoice for a billing period holds one rated line (``lines``) per charge that bills in it;
the invoice total is the sum of rounded lines. Issued invoices are snapshots: recomputing an
issued period later yields correction lines on the next invoice, never edits.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, DecimalException
from typing import Any

from billing_core.errors import NotFound, OutOfRange
from billing_core.lines import (
    LineItem, charges_for_period, decimal_text, fetch_usage, iso, line_order, rate_all, usage_key,
)
from billing_core.money import ZERO, exact, inexact, round_money
from billing_core.periods import Period
from billing_core.subscriptions import Subscription, billing_period
from billing_core.usage import UsageSource

__all__ = ["InvoiceNotFound", "Invoice", "compute_invoice", "compute_invoices", "upcoming_invoice", "issue_invoice"]


# --- invoices ---------------------------------------------------------------------------------

class InvoiceNotFound(NotFound):
    """No invoice (issued or computable) has this id."""


@dataclass(frozen=True)
class Invoice:
    """An invoice for one subscription and billing period (computed, or an issued snapshot)."""

    subscription_id: str
    customer_id: str
    currency: str
    period_start: datetime
    period_end: datetime
    line_items: tuple[LineItem, ...]
    status: str = "draft"            # "upcoming" | "draft" | "issued"
    id: str | None = None
    issued_at: datetime | None = None
    invoice_number: str | None = None

    @property
    def total(self) -> Decimal:
        """Return the sum of the rounded lines."""
        with exact():
            return sum((line.amount for line in self.line_items), round_money(ZERO, self.currency))

    @property
    def subtotal(self) -> Decimal:
        """Return the sum of rounded lines (adjustments here are per line, so equal to total)."""
        return self.total

    @property
    def period(self) -> Period:
        return Period(self.period_start, self.period_end)

    def to_dict(self) -> dict[str, Any]:
        """Return the invoice as JSON-ready data, lines in a stable order, decimal strings."""
        return {
            "id": self.id, "invoice_number": self.invoice_number, "status": self.status,
            "subscription_id": self.subscription_id, "customer_id": self.customer_id,
            "currency": self.currency,
            "period_start": iso(self.period_start), "period_end": iso(self.period_end),
            "issued_at": iso(self.issued_at),
            "subtotal": decimal_text(self.subtotal), "total": decimal_text(self.total),
            "line_items": [line.to_dict() for line in sorted(self.line_items, key=line_order)],
        }

    def to_json(self) -> str:
        """Return the canonical serialization: same invoice, byte-identical text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _charge_lines(sub: Subscription, period: Period, source: UsageSource) -> list[LineItem]:
    charges = charges_for_period(sub, period)
    usage = fetch_usage([k for k in (usage_key(sub, c) for c in charges) if k is not None], source)
    return rate_all(sub, charges, usage)


def _corrections(sub: Subscription, before: Period, issued: Sequence[Invoice],
                 source: UsageSource) -> list[LineItem]:
    """Return correction lines for every issued period before ``before`` (billing.md example 12)."""
    prior = sorted({(inv.period_start, inv.period_end) for inv in issued
                    if inv.status == "issued" and inv.period_end <= before.start
                    and inv.subscription_id == sub.id})
    corrections: list[LineItem] = []
    for start, end in prior:
        originals = [inv for inv in issued if (inv.period_start, inv.period_end) == (start, end)]
        invoice_id = originals[0].id if originals else None
        base: dict[str, list[LineItem]] = defaultdict(list)
        for inv in issued:
            for line in inv.line_items:
                if line.kind == "charge" and (inv.period_start, inv.period_end) == (start, end):
                    base[line.id].append(line)
                elif line.kind == "correction" and line.corrects_period_start == start:
                    base[line.corrects_line_id or ""].append(line)
        fresh = {line.id: line for line in _charge_lines(sub, Period(start, end), source)}
        for line_id in sorted(set(base) | set(fresh)):
            was = base.get(line_id, [])
            now_line = fresh.get(line_id)
            was_q = sum((l.quantity for l in was), ZERO)
            was_amount = sum((l.amount for l in was), ZERO)
            was_unrounded = sum((l.amount_unrounded for l in was), ZERO)
            new_q = now_line.quantity if now_line else ZERO
            new_amount = now_line.amount if now_line else ZERO
            new_unrounded = now_line.amount_unrounded if now_line else ZERO
            if new_amount == was_amount and new_q == was_q:
                continue
            model = now_line or was[0]
            corrections.append(replace(
                model, id=f"correction:{start.strftime('%Y%m%d')}:{line_id}", kind="correction",
                name=f"Correction: {model.name}", quantity=new_q - was_q,
                subtotal_unrounded=new_unrounded - was_unrounded, amount_unrounded=new_unrounded - was_unrounded,
                amount=round_money(new_amount - was_amount, sub.currency), sub_lines=(), adjustments=(),
                proration=None, corrects_invoice_id=invoice_id, corrects_line_id=line_id,
                corrects_period_start=start,
            ))
    return corrections


@exact()
def compute_invoice(sub: Subscription, period: Period, usage_source: UsageSource, *, now: datetime,
                    issued: Sequence[Invoice] = ()) -> Invoice:
    """Compute the invoice of a billing period, with corrections of earlier issued invoices."""
    lines = _charge_lines(sub, period, usage_source)
    lines += _corrections(sub, period, issued, usage_source)
    return _invoice(sub, period, lines, now)


def _invoice(sub: Subscription, period: Period, lines: Sequence[LineItem], now: datetime) -> Invoice:
    return Invoice(
        subscription_id=sub.id, customer_id=sub.customer_id, currency=sub.currency,
        period_start=period.start, period_end=period.end,
        line_items=tuple(sorted(lines, key=line_order)),
        status="upcoming" if now < period.end else "draft",
    )


@exact()
def compute_invoices(requests: Sequence[tuple[Subscription, Period]], usage_source: UsageSource, *,
                     now: datetime) -> list[Invoice | OutOfRange]:
    """Compute many invoices from scratch (no corrections), reading usage in bulk.

    Each invoice equals ``compute_invoice(sub, period, source, now=now)`` without issued invoices;
    usage is read once for all of them (one batch per usage window, ``lines.fetch_usage``), and a
    subscription whose usage is beyond the range gets its ``OutOfRange`` in place of its invoice.
    """
    planned = [(sub, period, charges_for_period(sub, period)) for sub, period in requests]
    keys = [k for sub, _, charges in planned for k in (usage_key(sub, c) for c in charges) if k is not None]
    usage = fetch_usage(keys, usage_source)
    out: list[Invoice | OutOfRange] = []
    for sub, period, charges in planned:
        try:
            lines = rate_all(sub, charges, usage)
        except OutOfRange as exc:
            out.append(exc)
            continue
        except DecimalException as exc:
            out.append(inexact(exc))
            continue
        out.append(_invoice(sub, period, lines, now))
    return out


def upcoming_invoice(sub: Subscription, usage_source: UsageSource, *, now: datetime,
                     issued: Sequence[Invoice] = ()) -> Invoice:
    """Compute the invoice of the billing period containing ``now``."""
    return compute_invoice(sub, billing_period(sub, now), usage_source, now=now, issued=issued)


def issue_invoice(invoice: Invoice, *, id: str, now: datetime, invoice_number: str | None = None) -> Invoice:
    """Return the immutable issued snapshot of a computed invoice."""
    if invoice.status == "issued":
        raise ValueError(f"invoice {invoice.id} is already issued")
    return replace(invoice, id=id, status="issued", issued_at=now, invoice_number=invoice_number or id)


