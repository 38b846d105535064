"""``/v1/invoices``: the upcoming invoice, list, fetch and issue.

Invoices are computed on demand from the timeline and the events; a draft's id names its
subscription and period (``inv_YYYYMMDD_<subscription>``), so fetching it recomputes it.
Issuing stores an immutable snapshot; later changes appear as correction lines on the next
invoice.
"""

from __future__ import annotations

from flask import request

from billing_core import (
    BatchSqlUsageSource, Invoice, OutOfRange, SqlCustomerRepository, SqlSubscriptions, service_plans, usage_source,
)
from billing_core.orb_json import invoice_json
from webhooks.api.common import (
    api_blueprint, bad, decode_cursor, encode_cursor, engine, now, page_limit, paginated,
)
from webhooks.api.openapi import documented
from webhooks.api.schemas import Invoice as InvoiceShape, InvoiceQuery, Page, UpcomingInvoiceQuery
from worker.db import session_scope
from worker.logs import get_logger

bp = api_blueprint("billing_invoices", __name__)
log = get_logger("marketsync.api")
# Subscriptions whose draft invoices could not be computed (usage beyond the supported range);
# GET /v1/invoices/upcoming?subscription_id=... answers 422 with the reason.
UNAVAILABLE_HEADER = "X-Marketsync-Unavailable-Subscriptions"


def _json(session, invoice: Invoice, at, upcoming: bool = False):  # type: ignore[no-untyped-def]
    customer = SqlCustomerRepository(session).get(invoice.customer_id)
    return invoice_json(invoice, customer=customer, at=at, upcoming=upcoming)


@bp.get("/invoices/upcoming")
@documented(query=UpcomingInvoiceQuery, response=InvoiceShape)
def upcoming():
    """Return the invoice of the subscription's current period (with corrections)."""
    subscription_id = request.args.get("subscription_id")
    if not subscription_id:
        raise bad("subscription_id", "is required")
    at = now()
    with session_scope(engine()) as session:
        sub = SqlSubscriptions(session).get(subscription_id)
        invoice = service_plans.upcoming(session, sub, usage_source(engine()), now=at)
        return _json(session, invoice, at, upcoming=True)


@bp.get("/invoices/<invoice_id>")
@documented(response=InvoiceShape)
def fetch(invoice_id: str):
    """Return an issued snapshot, or the recomputed draft the id names."""
    at = now()
    with session_scope(engine()) as session:
        invoice = service_plans.draft_or_issued_invoice(session, invoice_id, usage_source(engine()), now=at)
        return _json(session, invoice, at)


@bp.post("/invoices/<invoice_id>/issue")
@documented(response=InvoiceShape)
def issue(invoice_id: str):
    """Issue a draft invoice: store its snapshot (idempotent)."""
    at = now()
    with session_scope(engine()) as session:
        invoice = service_plans.issue(session, invoice_id, BatchSqlUsageSource(session), now=at)
        return _json(session, invoice, at)


@bp.get("/invoices")
@documented(query=InvoiceQuery, response=Page[InvoiceShape])
def list_invoices():
    """List invoices (issued snapshots and drafts of started periods), newest period first."""
    limit = page_limit()
    cursor = decode_cursor(request.args.get("cursor"))
    offset = int(cursor.get("offset", 0)) if cursor else 0
    statuses = set(request.args.getlist("status") or request.args.getlist("status[]"))
    at = now()
    with session_scope(engine()) as session:
        subs_repo = SqlSubscriptions(session)
        customer_id = request.args.get("customer_id")
        if request.args.get("external_customer_id"):
            customer_id = SqlCustomerRepository(session).get_by_external_id(request.args["external_customer_id"]).id
        if request.args.get("subscription_id"):
            subs = [subs_repo.get(request.args["subscription_id"])]
        elif customer_id:
            subs = subs_repo.for_customer(customer_id)
        else:
            subs, _ = subs_repo.list(limit=1000)
        usage = usage_source(engine())
        invoices, unavailable = [], []
        for sub in subs:
            try:
                invoices += service_plans.period_invoices(session, sub, usage, now=at)
            except OutOfRange as exc:
                # One customer's usage beyond the range must not hide everyone else's invoices:
                # its issued snapshots are still listed, its drafts are named as unavailable.
                log.warning("invoices_unavailable", subscription=sub.id, reason=exc.reason, error=str(exc))
                unavailable.append(sub.id)
                invoices += subs_repo.issued_for(sub.id)
        invoices = [inv for inv in invoices if not statuses or
                    ("issued" if inv.status == "issued" else "draft") in statuses]
        invoices.sort(key=lambda inv: (inv.period_start, inv.id or ""), reverse=True)
        page = invoices[offset:offset + limit]
        has_more = len(invoices) > offset + limit
        body = paginated([_json(session, inv, at) for inv in page], has_more=has_more,
                         next_cursor=encode_cursor({"offset": offset + limit}) if has_more else None)
        headers = {UNAVAILABLE_HEADER: ", ".join(unavailable)} if unavailable else {}
        return body, 200, headers
