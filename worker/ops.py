"""The ops dashboard's read model and actions: what an operator sees and may do, per contract.

Queries only read; the actions (map, retry a report, sync now) go through the same use cases
and job functions as the API and the cron, so the dashboard never has rules of its own.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping

from sqlalchemy import Engine, String, and_, cast, func, or_, select
from sqlmodel import Session

from billing_core import SqlAlerts, SqlOutbox
from billing_core.money import exact
from marketplaces.base import Marketplace
from worker import cancellation, hourly, ledger
from worker.ledger import utc
from worker.logs import get_logger
from worker.metering import hour_floor
from worker.persistence.contracts import ContractRow, ListingRow
from worker.persistence.ledger import ContractSyncRow, LedgerRow
from worker.statuses import ContractStatus, LedgerStatus, MappingStatus

log = get_logger("marketsync.ops")
MARKETPLACES = tuple(m.value for m in Marketplace)
STATUSES = tuple(ContractStatus)
MAPPING_STATUSES = tuple(MappingStatus)
LEDGER_STATUSES = (LedgerStatus.ACCEPTED, LedgerStatus.DUPLICATE, LedgerStatus.PENDING, LedgerStatus.REJECTED,
                   LedgerStatus.FAILED, LedgerStatus.EXPIRED)
ATTENTION = (LedgerStatus.FAILED, LedgerStatus.REJECTED)
FAILED_JOB_LIMIT = 200
# Sort keys of the contracts table -> column (a leading "-" sorts descending).
SORTS = {
    "created": ContractRow.created_at, "marketplace": ContractRow.marketplace, "buyer": ContractRow.buyer_name,
    "status": ContractRow.status, "mapping": ContractRow.mapping_status, "listing": ContractRow.listing_id,
    "units": ContractSyncRow.units_reported, "last_run": ContractSyncRow.last_run_at,
}


@dataclass(frozen=True)
class ContractQuery:
    """The contracts table's filters, search, sort and page (all from the query string)."""

    marketplace: str = ""
    status: str = ""
    mapping_status: str = ""
    listing_id: str = ""
    q: str = ""
    sort: str = "-created"
    page: int = 1
    page_size: int = 25

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> "ContractQuery":
        """Read the query from request arguments, ignoring unknown or invalid values."""
        def pick(name: str, allowed: tuple[str, ...]) -> str:
            value = (args.get(name) or "").strip()
            return value if value in allowed else ""

        sort = (args.get("sort") or "-created").strip()
        if sort.lstrip("-") not in SORTS:
            sort = "-created"
        try:
            page = max(1, int(args.get("page") or 1))
        except ValueError:
            page = 1
        try:
            size = min(100, max(5, int(args.get("page_size") or 25)))
        except ValueError:
            size = 25
        return cls(marketplace=pick("marketplace", MARKETPLACES), status=pick("status", STATUSES),
                   mapping_status=pick("mapping_status", MAPPING_STATUSES),
                   listing_id=(args.get("listing_id") or "").strip()[:40], q=(args.get("q") or "").strip()[:200],
                   sort=sort, page=page, page_size=size)

    def args(self, **changes: Any) -> dict[str, Any]:
        """Return the query-string arguments of this query with ``changes`` (defaults left out)."""
        values = {"marketplace": self.marketplace, "status": self.status, "mapping_status": self.mapping_status,
                  "listing_id": self.listing_id, "q": self.q, "sort": self.sort, "page": self.page,
                  "page_size": self.page_size}
        values.update(changes)
        defaults = {"sort": "-created", "page": 1, "page_size": 25}
        return {k: v for k, v in values.items() if v not in ("", None) and defaults.get(k) != v}


def _search(term: str) -> Any:
    """Match a term against every identifier, custom property, the buyer and the ids."""
    like = f"%{term.lower()}%"
    columns = [ContractRow.id, ContractRow.external_id, ContractRow.buyer_name, ContractRow.buyer_email,
               ContractRow.subscription_id, ContractRow.customer_id,
               cast(ContractRow.cloud_identifiers, String), cast(ContractRow.custom_properties, String)]
    return or_(*(func.lower(column).like(like) for column in columns))


def list_contracts(engine: Engine, query: ContractQuery, *, now: datetime) -> dict[str, Any]:
    """Return one page of the contracts table with its totals."""
    conditions = []
    for name in ("marketplace", "status", "mapping_status", "listing_id"):
        value = getattr(query, name)
        if value:
            conditions.append(getattr(ContractRow, name) == value)
    if query.q:
        conditions.append(_search(query.q))
    where = and_(*conditions) if conditions else None
    column = SORTS[query.sort.lstrip("-")]
    order = column.desc() if query.sort.startswith("-") else column.asc()
    base = select(ContractRow, ContractSyncRow).outerjoin(
        ContractSyncRow, ContractSyncRow.contract_id == ContractRow.id)
    count = select(func.count()).select_from(ContractRow)
    if where is not None:
        base, count = base.where(where), count.where(where)
    with Session(engine) as session:
        total = int(session.execute(count).scalar_one())
        pages = max(1, math.ceil(total / query.page_size))
        page = min(query.page, pages)
        found = session.execute(base.order_by(order, ContractRow.id)
                                .offset((page - 1) * query.page_size).limit(query.page_size)).all()
        ids = [c.id for c, _ in found]
        last = _last_reports(session, ids)
        session.expunge_all()
    rows = [_contract_line(contract, state, last.get(contract.id), now=now) for contract, state in found]
    return {"rows": rows, "total": total, "page": page, "pages": pages}


def _last_reports(session: Session, contract_ids: list[str]) -> dict[str, LedgerRow]:
    if not contract_ids:
        return {}
    latest = (select(LedgerRow.contract_id, func.max(LedgerRow.id).label("id"))
              .where(LedgerRow.contract_id.in_(contract_ids)).group_by(LedgerRow.contract_id).subquery())
    rows = session.execute(select(LedgerRow).join(latest, LedgerRow.id == latest.c.id)).scalars().all()
    return {r.contract_id: r for r in rows}


def _contract_line(contract: ContractRow, state: ContractSyncRow | None, last: LedgerRow | None, *,
                   now: datetime) -> dict[str, Any]:
    deadline = cancellation.deadline_for(contract) if contract.status == ContractStatus.CANCELED else None
    return {
        "id": contract.id, "marketplace": contract.marketplace, "buyer": contract.buyer_name or contract.external_id,
        "email": contract.buyer_email, "listing_id": contract.listing_id, "status": contract.status,
        "mapping_status": contract.mapping_status, "mapping_reason": contract.mapping_reason,
        "subscription_id": contract.subscription_id,
        "cost": state.last_cost if state else None, "units_reported": state.units_reported if state else 0,
        "cost_error": cost_error(state),
        "last_report": ({"status": last.status, "hour": utc(last.hour), "at": utc(last.settled_at or last.created_at)}
                        if last else None),
        "deadline": deadline, "overdue": bool(deadline and now >= deadline),
    }


def cost_error(state: ContractSyncRow | None) -> str:
    """Return why the contract's costs cannot be computed (its ``cost_error`` state), or ""."""
    if state is None or state.last_outcome != ledger.COST_ERROR:
        return ""
    return state.last_error or "its costs cannot be computed"


# --- overview --------------------------------------------------------------------------------------

def overview(engine: Engine, *, now: datetime) -> dict[str, Any]:
    """Return the overview's database half: contracts, reports of the last 24 h, attention, deadlines."""
    since = now - timedelta(hours=24)
    with Session(engine) as session:
        grid = session.execute(select(ContractRow.marketplace, ContractRow.status, func.count())
                               .group_by(ContractRow.marketplace, ContractRow.status)).all()
        mapping = session.execute(select(ContractRow.marketplace, ContractRow.mapping_status, func.count())
                                  .group_by(ContractRow.marketplace, ContractRow.mapping_status)).all()
        reports = session.execute(select(LedgerRow.status, func.count(), func.coalesce(func.sum(LedgerRow.quantity), 0))
                                  .where(LedgerRow.created_at >= since).group_by(LedgerRow.status)).all()
        canceled = session.execute(select(ContractRow).where(ContractRow.status == ContractStatus.CANCELED)
                                   .order_by(ContractRow.canceled_at)).scalars().all()
        session.expunge_all()
    by_status: dict[str, dict[str, int]] = {m: defaultdict(int) for m in MARKETPLACES}
    for marketplace, status, n in grid:
        by_status.setdefault(marketplace, defaultdict(int))[status] += n
    by_mapping: dict[str, dict[str, int]] = {m: defaultdict(int) for m in MARKETPLACES}
    for marketplace, status, n in mapping:
        by_mapping.setdefault(marketplace, defaultdict(int))[status] += n
    deadlines = []
    for contract in canceled:
        deadline = cancellation.deadline_for(contract)
        deadlines.append({"id": contract.id, "marketplace": contract.marketplace,
                          "buyer": contract.buyer_name or contract.external_id,
                          "canceled_at": utc(contract.canceled_at), "deadline": deadline,
                          "overdue": bool(deadline and now >= deadline)})
    return {
        "by_status": {m: dict(v) for m, v in by_status.items()},
        "by_mapping": {m: dict(v) for m, v in by_mapping.items()},
        "total": sum(n for _, _, n in grid),
        "reports": {status: {"count": n, "units": int(units)} for status, n, units in reports},
        "attention": attention(engine),
        "deadlines": deadlines,
        "expired": revenue_lost(engine),
    }


def revenue_lost(engine: Engine, *, contract_id: str | None = None, by: str = "marketplace") -> dict[str, Any]:
    """Return expired reports (too late for their marketplace, never sent) grouped ``by`` marketplace or
    dimension, and in all: reports, units, amount (units x unit price, exact) and rows not yet priced."""
    groups = ledger.expired_totals(engine, contract_id=contract_id, by=by)
    with exact():
        amount = sum((g["amount"] for g in groups.values()), Decimal(0))
    total = {"reports": sum(g["reports"] for g in groups.values()), "units": sum(g["units"] for g in groups.values()),
             "amount": amount, "unpriced": sum(g["unpriced"] for g in groups.values())}
    return {"groups": dict(sorted(groups.items())), "total": total}


def attention(engine: Engine, *, limit: int = 50) -> list[dict[str, Any]]:
    """Return failed or rejected reports that no later report of their contract settled."""
    with Session(engine) as session:
        bad = session.execute(select(LedgerRow, ContractRow.buyer_name)
                              .join(ContractRow, ContractRow.id == LedgerRow.contract_id)
                              .where(LedgerRow.status.in_(ATTENTION))
                              .order_by(LedgerRow.id.desc()).limit(500)).all()
        if not bad:
            return []
        settled = dict(session.execute(
            select(LedgerRow.contract_id, func.max(LedgerRow.id))
            .where(LedgerRow.contract_id.in_({row.contract_id for row, _ in bad}),
                   LedgerRow.status.in_((LedgerStatus.ACCEPTED, LedgerStatus.DUPLICATE)))
            .group_by(LedgerRow.contract_id)).all())
        session.expunge_all()
    out = []
    for row, buyer in bad:
        if settled.get(row.contract_id, 0) > row.id:
            continue  # a later report carried these units (a failed report's units are not counted)
        out.append({"id": row.id, "contract_id": row.contract_id, "buyer": buyer, "marketplace": row.marketplace,
                    "hour": utc(row.hour), "quantity": row.quantity, "status": row.status, "detail": row.detail,
                    "at": utc(row.settled_at or row.created_at)})
    return out[:limit]


def next_hourly_run(now: datetime, minute: int) -> datetime:
    """Return the next time the hourly sync fans out (every hour at ``minute``)."""
    candidate = now.replace(minute=minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(hours=1)


def last_run(engine: Engine, fanout: datetime | None) -> dict[str, Any] | None:
    """Return the last hourly run: its fan-out time and how long until its last report settled."""
    if fanout is None:
        return None
    with Session(engine) as session:
        count, last = session.execute(select(func.count(), func.max(LedgerRow.settled_at))
                                      .where(LedgerRow.created_at >= fanout,
                                             LedgerRow.kind.in_(("hourly", "zero")))).one()
    last = utc(last)
    duration = (last - fanout).total_seconds() if last and last >= fanout else None
    return {"at": fanout, "reports": int(count), "duration_seconds": duration}


# --- one contract ----------------------------------------------------------------------------------

def invoice_failure(exc: BaseException) -> str:
    """Return the sentence the contract page shows when the upcoming invoice fails (no SQL, no parameters)."""
    from sqlalchemy.exc import SQLAlchemyError

    from billing_core import BillingError

    if isinstance(exc, BillingError):  # a domain error names the input at fault in plain words
        return f"the upcoming invoice could not be computed: {public_error(exc.message)}"
    if isinstance(exc, SQLAlchemyError):
        return ("the upcoming invoice could not be computed: the database could not carry out the calculation "
                "(the details are in the log)")
    return "the upcoming invoice could not be computed (the details are in the log)"


_SQL_TAIL = re.compile(r"\s*(\[SQL: |\[parameters: |\(Background on this error at: )")
_DRIVER_PREFIX = re.compile(r"\((?:sqlite3|psycopg[\w.]*|sqlalchemy[\w.]*)\.\w+\)\s*")


def public_error(text: str | None, limit: int = 300) -> str:
    """Return a stored error text fit for the dashboard: without the SQL, parameters and links SQLAlchemy adds."""
    if not text:
        return ""
    head = _SQL_TAIL.split(text, maxsplit=1)[0]
    head = _DRIVER_PREFIX.sub("", head).strip()
    return head if len(head) <= limit else head[:limit] + "..."

def contract_detail(engine: Engine, contract_id: str, *, now: datetime) -> dict[str, Any]:
    """Return everything the contract page shows (ContractNotFound when there is no such contract)."""
    from billing_core import NotFound, SqlSubscriptions, usage_source
    from billing_core.service_plans import upcoming
    from worker import contracts

    view = contracts.get_contract(engine, contract_id)
    with Session(engine) as session:
        row = session.get(ContractRow, contract_id)
        state = session.get(ContractSyncRow, contract_id)
        listing = session.get(ListingRow, row.listing_id) if row and row.listing_id else None
        session.expunge_all()
    assert row is not None
    subscription = invoice = None
    billing_error = ""
    if row.subscription_id:
        with Session(engine) as session:
            try:
                subscription = SqlSubscriptions(session).get(row.subscription_id)
                invoice = upcoming(session, subscription, usage_source(engine), now=now)
            except NotFound:
                billing_error = f"the billing core has no subscription {row.subscription_id}"
            except Exception as exc:  # noqa: BLE001 - the page still shows the rest, and says why
                # The page gets a sentence; SQL and its parameters go to the log only.
                log.exception("upcoming_invoice_failed", contract_id=contract_id,
                              subscription_id=row.subscription_id, error_type=type(exc).__name__)
                billing_error = invoice_failure(exc)
    price = hourly.unit_price(row, listing) if listing else None
    reports = ledger.ledger_rows(engine, contract_id)
    used = {entry["hour"] for entry in reports}
    dimensions = dimension_rows(row, listing, state, ledger.dimension_counts(engine, contract_id))
    # One chart per dimension: units of different unit prices are not added up.
    charts = [{"dimension": d["name"], "unit_price": d["unit_price"],
               "chart": chart([e for e in reports if e["dimension"] == d["name"]], d["unit_price"],
                              included=lambda at, name=d["name"]: hourly.included(row, at).get(name, 0))}
              for d in dimensions]
    current = hour_floor(now)
    deadline = cancellation.deadline_for(row) if row.status == ContractStatus.CANCELED else None
    return {
        "contract": view, "listing": listing, "state": state, "subscription": subscription,
        "cost_error": cost_error(state),
        "invoice": invoice, "billing_error": billing_error, "unit_price": price,
        "ledger": reports, "chart": charts[0]["chart"] if charts else chart([], None), "charts": charts,
        "dimensions": dimensions,
        # A contract with consumption: what it includes now, per dimension (only usage above is reported).
        "included": hourly.included(row, now),
        "expired": revenue_lost(engine, contract_id=contract_id, by="dimension"),
        "held": sum(1 for e in reports if e["status"] == LedgerStatus.PENDING and e["held_until"] is not None),
        "deadline": deadline, "overdue": bool(deadline and now >= deadline),
        "migrations": version_history(engine, subscription.id) if subscription is not None else [],
        "current_stamp_used": current.isoformat() in used, "current_stamp": current,
        "next_stamp": current + timedelta(hours=1),
    }


def migration_rows(engine: Engine, *, limit: int = 50) -> list[dict[str, Any]]:
    """Return the newest plan migrations with progress and the subscriptions needing attention
    (conflicts, skips and edits a cancel kept, each with its reasons)."""
    from billing_core import SqlPlanMigrations

    with Session(engine) as session:
        repo = SqlPlanMigrations(session)
        migrations, _ = repo.list(plan_id=None, limit=limit)
        rows = []
        for m in migrations:
            attention = repo.outcomes(m.id, outcomes={"conflict", "skipped", "kept"}, limit=200)
            rows.append({"migration": m, "progress": 100 if not m.total else math.floor(100 * m.done / m.total),
                         "attention": attention, "cancelable": m.status != "canceled"})
        return rows


def version_history(engine: Engine, subscription_id: str) -> list[dict[str, Any]]:
    """Return a subscription's plan-migration outcomes, oldest first (its phases show the versions)."""
    from billing_core import SqlPlanMigrations

    with Session(engine) as session:
        return [{"migration_id": mid, "outcome": o.outcome, "effective_at": o.effective_at, "reasons": o.reasons}
                for mid, o in SqlPlanMigrations(session).for_subscription(subscription_id)]


def dimension_rows(contract: ContractRow, listing: ListingRow | None, state: ContractSyncRow | None,
                   counts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return each dimension of the contract's listing with its unit price, prices and this period's counts."""
    if listing is None:
        return []
    by_name = {c["dimension"]: c for c in counts
               if state is not None and c["period_start"] == ledger.utc(state.period_start)}
    return [{"name": d.name, "unit_price": d.unit_price,
             "prices": "remaining" if d.prices is None else ", ".join(d.prices),
             "units_reported": by_name.get(d.name, {}).get("units_reported", 0),
             "over_reported": by_name.get(d.name, {}).get("over_reported", 0),
             "cost": by_name.get(d.name, {}).get("last_cost")}
            for d in hourly.dimensions(contract, listing)]


def chart(entries: list[dict[str, Any]], unit_price: Decimal | None, *, width: int = 720,
          height: int = 220, included: Callable[[datetime], int] | None = None) -> dict[str, Any]:
    """Return an SVG-ready chart: units reported per hour (bars) vs computed cost in units (line).

    The computed cost is the period's cost to date each report was made from, divided by the
    unit price, less what a contract with consumption included when the report was written
    (``included``; never below 0): where the line stays above the bars' running total, units are
    still to come.
    """
    points = []
    cumulative = 0
    for entry in entries:
        counted = entry["status"] in ledger.COUNTED
        reported = entry["quantity"]  # a failed or rejected report's bar is drawn, not counted
        cumulative += reported if counted else 0
        try:
            cost = Decimal(entry["cost_to_date"])
        except (InvalidOperation, TypeError):
            cost = Decimal(0)
        computed = float(cost / unit_price) if unit_price else 0.0
        if included is not None and entry.get("created_at") is not None:
            computed = max(computed - included(entry["created_at"]), 0.0)
        points.append({"hour": entry["hour"], "reported": reported, "cumulative": cumulative,
                       "computed": computed, "cost": str(cost), "status": entry["status"]})
    if not points:
        return {"points": [], "width": width, "height": height}
    pad_l, pad_r, pad_t, pad_b = 48, 12, 12, 28
    top = _nice_ceiling(max(max(p["computed"] for p in points), max(p["cumulative"] for p in points),
                            max(p["reported"] for p in points)))
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b
    step = inner_w / len(points)
    bar_w = max(2.0, step * 0.6)

    def y(value: float) -> float:
        return round(pad_t + inner_h - (value / top) * inner_h, 1)

    for i, p in enumerate(points):
        x = pad_l + step * i + (step - bar_w) / 2
        p.update(x=round(x, 1), bar_w=round(bar_w, 1), bar_y=y(p["reported"]),
                 bar_h=round(pad_t + inner_h - y(p["reported"]), 1), cx=round(x + bar_w / 2, 1),
                 cy=y(p["computed"]), ry=y(p["cumulative"]), label=p["hour"][5:13].replace("T", " "))
    return {
        "points": points, "width": width, "height": height, "top": top, "half": top // 2 if top % 2 == 0 else top / 2,
        "left": pad_l, "bottom": pad_t + inner_h, "right": width - pad_r, "mid": y(top / 2),
        "computed_path": " ".join(f"{p['cx']},{p['cy']}" for p in points),
        "reported_path": " ".join(f"{p['cx']},{p['ry']}" for p in points),
        "label_every": max(1, math.ceil(len(points) / 8)),
    }


def _nice_ceiling(value: float) -> int:
    """Return the smallest of 2, 5, 10, 20, 50, ... that is at least ``value`` (an even axis top)."""
    top = 2
    while top < value:
        top = top * 5 // 2 if str(top).startswith("2") else top * 2
    return top


def listing_rows(engine: Engine) -> list[dict[str, Any]]:
    """Return every listing with the number of contracts on it."""
    with Session(engine) as session:
        counts = dict(session.execute(select(ContractRow.listing_id, func.count())
                                      .group_by(ContractRow.listing_id)).all())
        rows = session.execute(select(ListingRow).order_by(ListingRow.marketplace, ListingRow.product_id,
                                                           ListingRow.plan_id)).scalars().all()
        return [{"row": r, "contracts": counts.get(r.id, 0)} for r in rows]


# --- outbound webhooks and alerts ------------------------------------------------------------------

def webhook_endpoints(engine: Engine) -> list[dict[str, Any]]:
    """Every webhook endpoint (never its secret) with its deliveries counted by status."""
    with Session(engine) as session:
        outbox = SqlOutbox(session)
        endpoints = outbox.endpoints()
        counts = outbox.counts([e.id for e in endpoints])
    return [{"endpoint": e, "counts": counts.get(e.id, {})} for e in reversed(endpoints)]


def webhook_endpoint_detail(engine: Engine, endpoint_id: str, *, limit: int = 100) -> dict[str, Any]:
    """One endpoint and its latest deliveries, each with its event (NotFound when there is none)."""
    with Session(engine) as session:
        outbox = SqlOutbox(session)
        endpoint = outbox.get_endpoint(endpoint_id)
        rows = outbox.deliveries(endpoint_id, limit=limit)
        counts = outbox.counts([endpoint_id]).get(endpoint_id, {})
    return {"endpoint": endpoint, "counts": counts,
            "deliveries": [{"delivery": d, "event": e, "error": public_error(d.last_error)} for d, e in rows]}


def replay_delivery(engine: Engine, endpoint_id: str, delivery_id: int, *, now: datetime) -> None:
    """Make one delivery pending again, due now (the caller signals the sender)."""
    with Session(engine) as session:
        SqlOutbox(session).replay(endpoint_id, delivery_id, now)
        session.commit()


def alerts_by_subscription(engine: Engine) -> list[dict[str, Any]]:
    """Usage and cost alerts grouped by what they watch (a subscription, or a plan), with when each last fired."""
    with Session(engine) as session:
        repo = SqlAlerts(session)
        alerts, _ = repo.list(limit=1000)
        fired = repo.last_fired([a.id for a in alerts])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alert in alerts:
        scope = (f"subscription {alert.subscription_id}" if alert.subscription_id
                 else f"plan {alert.plan_id}" + (f" v{alert.plan_version}" if alert.plan_version else "")
                 if alert.plan_id else f"customer {alert.customer_id}")
        last = fired.get(alert.id)
        groups[scope].append({"alert": alert, "last_fired_at": last[0] if last else None,
                              "last_fired_subscription": last[1] if last else None,
                              "last_fired_threshold": last[2] if last else None})
    return [{"scope": scope, "alerts": items} for scope, items in sorted(groups.items())]
