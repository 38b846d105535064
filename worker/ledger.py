"""The usage ledger: writing reports, claiming them to send, settling the answers, listing them.

Every outbound report is a ledger row keyed (contract, dimension, hour stamp), written
``pending`` in the same transaction as a compare-and-swap on the contract's sync state
(``record``, the only write path), so no two runs ever count the same units. A sender claims
pending rows (``claim``), and either ``settle``s the marketplace's answers, ``fail``s them
(a permanent error) or ``release``s them (a transient one). The rows themselves are
``worker.persistence.ledger``.
"""

from __future__ import annotations

import secrets
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any, Mapping, Sequence

from sqlalchemy import Engine, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from billing_core.errors import OutOfRange
from billing_core.money import exact
from marketplaces.base import OutcomeStatus
from worker import notices
from worker.errors import Contention
from worker.logs import get_logger
from worker.metering import (
    UNTAGGED, AllocationPlan, ReportPlan, UnmappedPrice, combination_key, combination_tags, ledger_key, plan_allocations,
    plan_report,
)
from worker.persistence.contracts import ContractRow
from worker.persistence.ledger import ContractSyncRow, DimensionSyncRow, LedgerRow
from worker.statuses import ContractStatus, LedgerStatus

log = get_logger("marketsync.ledger")
CLAIM_TIMEOUT = timedelta(minutes=2)  # a claim older than this belongs to a dead worker
# Units that count as reported: sent or to be sent, and expired ones (no later hour carries them).
COUNTED = (LedgerStatus.PENDING, LedgerStatus.ACCEPTED, LedgerStatus.DUPLICATE, LedgerStatus.EXPIRED)
HOLD_RETRY = timedelta(minutes=30)  # a report answered "not active" is tried again after this, if nothing released it
COST_ERROR = "cost_error"  # last_outcome of a contract whose costs cannot be computed
RECORD_ATTEMPTS = 10  # compare-and-swap passes per contract before giving up (Contention)
TRUEUP = "trueup"  # the kind of a manual true-up's row (worker/trueups.py): outside the reported counts


def utc(value: datetime | None) -> datetime | None:
    """Return ``value`` as an aware UTC datetime (SQLite hands back naive ones)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@dataclass(frozen=True)
class Part:
    """One dimension's share of a contract's cost to date, and its unit price."""

    dimension: str
    unit_price: Decimal
    cost: Decimal
    _: KW_ONLY
    # Each tag combination's exact cost when the listing allocates usage (worker/allocations.py); None: off.
    allocations: tuple[tuple[str, Fraction], ...] | None = None
    included: int = 0  # units the contract includes in this dimension and period (reported: only the rest)


@dataclass(frozen=True)
class Due:
    """One contract's cost to date for a period, per dimension, to be written under an hour stamp."""

    contract_id: str
    marketplace: str
    product: str
    parts: tuple[Part, ...]
    close_rounding: str
    period_start: datetime
    zero_record: bool = False  # write a zero-quantity row when nothing is due (AWS's hourly heartbeat)

    @property
    def cost(self) -> Decimal:
        """Return the contract's whole cost to date (all dimensions)."""
        with exact():
            return sum((part.cost for part in self.parts), Decimal(0))


@dataclass(frozen=True)
class Prepared:
    """What preparing one contract's report under one hour stamp did (all its dimensions)."""

    outcome: str  # queued, zero, nothing, stamp_used, skipped, cost_error
    detail: str = ""
    ledger_id: int | None = None  # the first row written
    cost: Decimal = Decimal(0)
    units_total: int = 0
    quantity: int = 0
    dimensions: tuple[tuple[str, int], ...] = ()  # (dimension, units written) for each dimension with units


# --- writing ---------------------------------------------------------------------------------------

class _Moved(Exception):
    """A compare-and-swap found a state that changed since it was read."""


def record(engine: Engine, dues: Sequence[Due], stamp: datetime, *, now: datetime, kind: str,
           final: bool = False) -> dict[str, Prepared | Contention]:
    """Write the units of each cost not yet reported as pending ledger rows; return what each got.

    All contracts go in one transaction (one read of their states and stamps, one batched
    compare-and-swap, one multi-row insert). When any state moved meanwhile (another run, a
    flush) nothing is written and each contract is recorded alone, again from its new state,
    until its swap holds; one that keeps losing maps to ``Contention``.
    """
    written = _swap(engine, dues, stamp, now=now, kind=kind, final=final)
    if written is not None:
        return dict(written)
    out: dict[str, Prepared | Contention] = {}
    for due in dues:
        for _attempt in range(RECORD_ATTEMPTS):
            one = _swap(engine, [due], stamp, now=now, kind=kind, final=final)
            if one is not None:
                out.update(one)
                break
        else:
            out[due.contract_id] = Contention(f"contract {due.contract_id}: sync state kept changing; retry")
    return out


@dataclass
class _Planned:
    """One contract's plans per dimension under the stamp, as ``_swap`` works them out."""

    due: Due
    plans: dict[str, Any]  # dimension -> ReportPlan, for the dimensions whose stamp is free
    taken: list[Any]  # ledger rows already using the stamp
    reported: dict[str, int]  # dimension -> units counted after this write
    allocations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # dimension -> row allocations


def _swap(engine: Engine, dues: Sequence[Due], stamp: datetime, *, now: datetime, kind: str,
          final: bool) -> dict[str, Prepared] | None:
    """One compare-and-swap transaction for ``dues``; None, having written nothing, when a state moved.

    Each (contract, dimension) gets its own plan from its own count: a sub-unit remainder of
    one dimension never lends to another (docs/billing-rules.md §12).
    """
    if not dues:
        return {}
    sync_t, dim_t, ledger_t = ContractSyncRow.__table__, DimensionSyncRow.__table__, LedgerRow.__table__
    ids = [due.contract_id for due in dues]
    try:
        with Session(engine) as session:
            known = set(session.execute(select(sync_t.c.contract_id).where(sync_t.c.contract_id.in_(ids))).scalars())
            if len(known) < len(ids):
                session.add_all([ContractSyncRow(contract_id=i) for i in ids if i not in known])
                session.flush()
            states = {r.contract_id: r for r in session.execute(select(
                sync_t.c.contract_id, sync_t.c.version,
            ).where(sync_t.c.contract_id.in_(ids)))}
            counts = {(r.contract_id, r.dimension): r for r in session.execute(select(
                dim_t.c.contract_id, dim_t.c.dimension, dim_t.c.period_start, dim_t.c.units_reported,
                dim_t.c.allocated,
            ).where(dim_t.c.contract_id.in_(ids)))}
            used = {(r.contract_id, r.dimension): r for r in session.execute(select(
                ledger_t.c.contract_id, ledger_t.c.dimension, ledger_t.c.id, ledger_t.c.status,
            ).where(ledger_t.c.contract_id.in_(ids), ledger_t.c.hour == stamp))}
            out: dict[str, Prepared] = {}
            planned: dict[str, _Planned] = {}
            swaps: list[dict[str, Any]] = []
            dim_updates: list[dict[str, Any]] = []
            dim_inserts: list[dict[str, Any]] = []
            rows: list[dict[str, Any]] = []
            for due in dues:
                one = planned[due.contract_id] = _Planned(due, {}, [], {})
                for part in due.parts:
                    count = counts.get((due.contract_id, part.dimension))
                    reported = (count.units_reported if count is not None
                                and utc(count.period_start) == due.period_start else 0)
                    taken = used.get((due.contract_id, part.dimension))
                    if taken is not None:
                        one.taken.append(taken)
                        one.reported[part.dimension] = reported
                        continue
                    prior = allocated_before(count and utc(count.period_start), count and count.allocated,
                                             due.period_start, reported)
                    plan, split = plan_part(part, prior, reported, final=final, close_policy=due.close_rounding)
                    allocated = None if split is None else split.reported
                    if split is not None:
                        one.allocations[part.dimension] = [
                            {"tags": [list(t) for t in combination_tags(combo)], "quantity": units}
                            for combo, units in sorted(split.deltas.items())]
                    one.plans[part.dimension] = plan
                    one.reported[part.dimension] = reported + plan.delta
                    values = {"period_start": due.period_start, "units_reported": reported + plan.delta,
                              "over_reported": plan.over_reported, "last_cost": str(part.cost),
                              "last_units_total": plan.units_total, "allocated": allocated}
                    if count is None:
                        dim_inserts.append({"contract_id": due.contract_id, "dimension": part.dimension, **values})
                    else:
                        dim_updates.append({"b_id": due.contract_id, "b_dimension": part.dimension,
                                            **{f"b_{k}": v for k, v in values.items()}})
                if not one.plans:
                    detail = "; ".join(f"hour {stamp.isoformat()} already has a {t.status} report" for t in one.taken)
                    out[due.contract_id] = Prepared("stamp_used", detail, ledger_id=one.taken[0].id, cost=due.cost)
                    continue
                delta = sum(plan.delta for plan in one.plans.values())
                state = states[due.contract_id]
                swaps.append({
                    "b_id": due.contract_id, "b_version": state.version, "b_new_version": state.version + 1,
                    "b_period_start": due.period_start, "b_units_reported": sum(one.reported.values()),
                    "b_over_reported": sum(plan.over_reported for plan in one.plans.values()),
                    "b_last_cost": str(due.cost),
                    "b_last_units_total": sum(plan.units_total for plan in one.plans.values()),
                    "b_last_run_at": now, "b_last_outcome": "queued" if delta else "nothing to report",
                })
                # AWS's hourly heartbeat: a zero record for each dimension with nothing to report
                # (docs/marketplaces.md §2.4: one record per customer and dimension every hour).
                send_zero = due.zero_record and kind == "hourly"
                for dimension, plan in one.plans.items():
                    if plan.delta > 0 or send_zero:
                        rows.append({
                            "key": ledger_key(due.contract_id, dimension, stamp), "contract_id": due.contract_id,
                            "marketplace": due.marketplace, "product": due.product, "dimension": dimension,
                            "hour": stamp, "period_start": due.period_start, "quantity": plan.delta,
                            "kind": "zero" if plan.delta == 0 else kind,
                            "cost_to_date": str(next(p.cost for p in due.parts if p.dimension == dimension)),
                            "units_total": plan.units_total, "status": LedgerStatus.PENDING.value, "detail": "",
                            "unit_price": str(next(p.unit_price for p in due.parts if p.dimension == dimension)),
                            # A record is all allocated or not at all: a zero record carries none.
                            "allocations": one.allocations.get(dimension) or None,
                            "attempts": 0, "created_at": now,
                        })
            if swaps:
                # The contract's version first: every writer of a count locks it before the count.
                swapped = session.execute(update(sync_t).where(
                    sync_t.c.contract_id == bindparam("b_id"), sync_t.c.version == bindparam("b_version"),
                ).values(
                    version=bindparam("b_new_version"), period_start=bindparam("b_period_start"),
                    units_reported=bindparam("b_units_reported"), over_reported=bindparam("b_over_reported"),
                    last_cost=bindparam("b_last_cost"), last_units_total=bindparam("b_last_units_total"),
                    last_run_at=bindparam("b_last_run_at"), last_outcome=bindparam("b_last_outcome"),
                ).execution_options(synchronize_session=False), swaps).rowcount
                if swapped != len(swaps):
                    raise _Moved
            if dim_updates:
                session.execute(update(dim_t).where(
                    dim_t.c.contract_id == bindparam("b_id"), dim_t.c.dimension == bindparam("b_dimension"),
                ).values(
                    period_start=bindparam("b_period_start"), units_reported=bindparam("b_units_reported"),
                    over_reported=bindparam("b_over_reported"), last_cost=bindparam("b_last_cost"),
                    last_units_total=bindparam("b_last_units_total"), allocated=bindparam("b_allocated"),
                ).execution_options(synchronize_session=False), dim_updates)
            if dim_inserts:
                session.execute(insert(dim_t), dim_inserts)
            written: dict[str, list[tuple[int, str, int]]] = {}
            if rows:
                inserted = session.execute(insert(ledger_t).returning(
                    ledger_t.c.id, ledger_t.c.contract_id, ledger_t.c.dimension, ledger_t.c.quantity), rows)
                for row_id, contract_id, dimension, quantity in inserted:
                    written.setdefault(contract_id, []).append((row_id, dimension, quantity))
            session.commit()
    except (_Moved, IntegrityError):
        return None  # another run moved a state or took a stamp: the next pass reads the new one
    for contract_id, one in planned.items():
        if contract_id in out:
            continue
        total = sum(plan.units_total for plan in one.plans.values())
        mine = sorted(written.get(contract_id, []))
        if mine:
            quantity = sum(q for _, _, q in mine)
            out[contract_id] = Prepared("queued" if quantity else "zero", ledger_id=mine[0][0], cost=one.due.cost,
                                        units_total=total, quantity=quantity,
                                        dimensions=tuple((d, q) for _, d, q in mine if q))
        elif one.taken:
            out[contract_id] = Prepared("stamp_used", f"hour {stamp.isoformat()} already has a "
                                        f"{one.taken[0].status} report", ledger_id=one.taken[0].id,
                                        cost=one.due.cost, units_total=total)
        else:
            out[contract_id] = Prepared("nothing", "no whole unit to report", cost=one.due.cost, units_total=total)
        for dimension, plan in one.plans.items():
            if plan.over_reported:
                log.warning("over_reported", contract=contract_id, dimension=dimension, units=plan.over_reported,
                            cost=str(next(p.cost for p in one.due.parts if p.dimension == dimension)))
    return out


def plan_part(part: Part, prior: Mapping[str, int], reported: int, *, final: bool,
              close_policy: str) -> tuple[ReportPlan, AllocationPlan | None]:
    """Return one dimension's plan from the units it counted (``reported``; per tag combination: ``prior``):
    over its whole cost, or per combination when the listing allocates usage (then the split too)."""
    if part.allocations is None:
        return plan_report(part.cost, part.unit_price, reported, final=final, close_policy=close_policy,
                           included=part.included), None
    split = plan_allocations(dict(part.allocations), part.unit_price, prior, final=final, close_policy=close_policy,
                             included=part.included)
    return ReportPlan(split.units_total, split.delta, split.over_reported), split


def allocated_before(counted_period: datetime | None, allocated: Mapping[str, Any] | None, period_start: datetime,
                     reported: int) -> dict[str, int]:
    """Return the units each tag combination counted in the period; units counted before the listing
    allocated usage (no per-combination record) count as untagged."""
    if counted_period is None or counted_period != period_start:
        return {}
    if allocated is None:
        return {UNTAGGED: reported} if reported else {}
    return {str(k): int(v) for k, v in allocated.items()}


def cost_error_text(exc: OutOfRange | UnmappedPrice) -> str:
    """Return the stored ``last_error`` of a cost error: ``<reason>: <message>``."""
    return f"{exc.reason}: {exc}"[:2000]


def mark_cost_errors(engine: Engine, errors: Mapping[str, OutOfRange | UnmappedPrice], *, now: datetime) -> None:
    """Put contracts in the ``cost_error`` state, with the reason (one transaction)."""
    if not errors:
        return
    sync_t = ContractSyncRow.__table__
    with Session(engine) as session:
        known = set(session.execute(select(sync_t.c.contract_id).where(
            sync_t.c.contract_id.in_(list(errors)))).scalars())
        session.add_all([ContractSyncRow(contract_id=i) for i in errors if i not in known])
        session.flush()
        session.execute(update(sync_t).where(sync_t.c.contract_id == bindparam("b_id")).values(
            last_outcome=COST_ERROR, last_error=bindparam("b_error"), last_run_at=now,
        ).execution_options(synchronize_session=False),
            [{"b_id": i, "b_error": cost_error_text(exc)} for i, exc in errors.items()])
        session.commit()
    for contract_id, exc in errors.items():
        log.error("cost_error", contract=contract_id, reason=exc.reason, error=str(exc))


# --- sending: claim, then settle, fail or release ---------------------------------------------------

def claim(engine: Engine, marketplace: str, *, now: datetime, first: str | None, limit: int,
          window: timedelta | None = None, hold_suspended: bool = False) -> tuple[str, list[LedgerRow]]:
    """Take up to ``limit`` pending rows of ``marketplace`` for sending (``first``'s rows ahead).

    Rows held after a "not active" answer wait until their ``held_until``; with
    ``hold_suspended`` the rows of a suspended contract wait for its reinstatement; rows whose
    hour is ``window`` or more in the past are left to ``expire`` (never sent).
    """
    token = secrets.token_hex(8)
    table = LedgerRow.__table__
    conditions = [table.c.status == LedgerStatus.PENDING, table.c.marketplace == marketplace,
                  or_(table.c.claim_token.is_(None), table.c.claimed_at < now - CLAIM_TIMEOUT),
                  or_(table.c.held_until.is_(None), table.c.held_until <= now)]
    if window is not None:
        conditions.append(table.c.hour > now - window)
    if hold_suspended:
        # A suspended subscription takes no usage (docs/marketplaces.md §3.2): hold, do not send.
        contracts = ContractRow.__table__
        conditions.append(table.c.contract_id.not_in(select(contracts.c.id).where(
            contracts.c.status == ContractStatus.SUSPENDED, contracts.c.marketplace == marketplace)))
    claimable = and_(*conditions)
    # Usage before zero-quantity heartbeats (AWS's are paced at 10 calls/s and may trail the run).
    order = [case((table.c.quantity > 0, 0), else_=1), table.c.id]
    if first:
        order.insert(0, case((table.c.contract_id == first, 0), else_=1))
    with engine.begin() as conn:
        ids = [r.id for r in conn.execute(select(table.c.id).where(claimable).order_by(*order).limit(limit))]
        if not ids:
            return token, []
        # The claimable condition is repeated so that a concurrent claimer skips taken rows.
        conn.execute(update(table).where(table.c.id.in_(ids), claimable)
                     .values(claim_token=token, claimed_at=now, attempts=table.c.attempts + 1))
    with Session(engine, expire_on_commit=False) as session:
        rows = list(session.execute(select(LedgerRow).where(LedgerRow.claim_token == token)
                                    .order_by(LedgerRow.id)).scalars())
    return token, rows


def expire(engine: Engine, marketplace: str, *, now: datetime, window: timedelta) -> list[int]:
    """Mark the pending rows of ``marketplace`` whose hour is ``window`` or more in the past ``expired``.

    The marketplace can no longer accept them, so they are never sent; their units stay counted
    (no later hour carries them) and are shown as revenue lost. A row claimed by a live sender is
    left to that sender's answer. Returns the ids it expired.
    """
    table = LedgerRow.__table__
    cutoff = now - window
    overdue = and_(table.c.status == LedgerStatus.PENDING, table.c.marketplace == marketplace,
                   table.c.hour <= cutoff,
                   or_(table.c.claim_token.is_(None), table.c.claimed_at < now - CLAIM_TIMEOUT))
    hours = window.total_seconds() / 3600
    detail = (f"expired: not accepted in time; {marketplace} takes a report up to "
              f"{hours:g} h after its hour, so it is never sent")
    with engine.begin() as conn:
        ids = list(conn.execute(select(table.c.id).where(overdue)).scalars())
        if not ids:
            return []
        # The condition is repeated: a row a sender claimed (or another process expired) meanwhile is not ours.
        done = conn.execute(update(table).where(table.c.id.in_(ids), overdue).values(
            status=LedgerStatus.EXPIRED, settled_at=now, claim_token=None,
            detail=case((table.c.held_until.is_not(None), detail + " (it was held: the subscription was not active)"),
                        else_=detail),
        ).returning(*table.c)).all()
        notices.reports_settled(conn, [(row, row.detail) for row in done], "expired", now=now)
        contracts = sorted({r.contract_id for r in done})
        if contracts:
            conn.execute(update(ContractSyncRow.__table__).where(
                ContractSyncRow.__table__.c.contract_id.in_(contracts)).values(
                last_outcome=LedgerStatus.EXPIRED.value, last_error=detail))
    for row in done:
        log.warning("report_expired", contract=row.contract_id, ledger_id=row.id, units=row.quantity,
                    marketplace=marketplace)
    return [r.id for r in done]


def unpriced_expired(engine: Engine) -> list[tuple[int, str, str]]:
    """Return (id, contract, dimension) of expired rows without a unit price (written before sync_0006)."""
    with Session(engine) as session:
        return [tuple(r) for r in session.execute(select(LedgerRow.id, LedgerRow.contract_id, LedgerRow.dimension)
                                                  .where(LedgerRow.status == LedgerStatus.EXPIRED,
                                                         LedgerRow.unit_price.is_(None)))]  # type: ignore[misc]


def set_unit_prices(engine: Engine, prices: Mapping[int, Decimal]) -> None:
    """Record the unit price of rows that lack one (never changes a price already recorded)."""
    if not prices:
        return
    table = LedgerRow.__table__
    with engine.begin() as conn:
        conn.execute(update(table).where(table.c.id == bindparam("b_id"), table.c.unit_price.is_(None))
                     .values(unit_price=bindparam("b_price")).execution_options(synchronize_session=False),
                     [{"b_id": i, "b_price": str(p)} for i, p in prices.items()])


def pin_record_ids(engine: Engine, rows: Sequence[LedgerRow], ids: Mapping[int, str]) -> dict[int, str]:
    """Store each row's wire id unless it has one (compare-and-set); return the id every row carries.

    A resend of a row then carries the id of its first send, whatever changed since in the
    contract's identifiers (Google dedupes on the operationId, docs/marketplaces.md §4.3).
    """
    table = LedgerRow.__table__
    fresh = [{"b_id": row.id, "b_record": ids[row.id]} for row in rows
             if not row.marketplace_record_id and row.id in ids]
    with engine.begin() as conn:
        if fresh:
            conn.execute(update(table).where(table.c.id == bindparam("b_id"), table.c.marketplace_record_id.is_(None))
                         .values(marketplace_record_id=bindparam("b_record"))
                         .execution_options(synchronize_session=False), fresh)
        stored = dict(conn.execute(select(table.c.id, table.c.marketplace_record_id).where(
            table.c.id.in_([row.id for row in rows]))).all())
    return {row_id: record for row_id, record in stored.items() if record}


def release_holds(session: Any, contract_id: str) -> int:
    """Let the contract's held reports go out at the next send (it was reinstated); return how many."""
    table = LedgerRow.__table__
    return session.execute(update(table).where(
        table.c.contract_id == contract_id, table.c.status == LedgerStatus.PENDING,
        table.c.held_until.is_not(None)).values(held_until=None)).rowcount or 0


def release(engine: Engine, token: str, detail: str) -> None:
    """Give claimed rows back, still pending, noting why (a transient failure)."""
    with engine.begin() as conn:
        conn.execute(update(LedgerRow).where(LedgerRow.claim_token == token, LedgerRow.status == LedgerStatus.PENDING)
                     .values(claim_token=None, detail=detail[:2000]))


def _uncount(conn: Any, row: LedgerRow) -> None:
    """Take a row's units out of the reported counts (they did not reach the marketplace)."""
    if row.kind == TRUEUP:
        return  # a true-up's units were never in the counts the hourly run subtracts from
    # The contract's version first, then its dimension's count: the order _swap locks them in.
    conn.execute(update(ContractSyncRow).where(
        ContractSyncRow.contract_id == row.contract_id, ContractSyncRow.period_start == row.period_start,
    ).values(units_reported=ContractSyncRow.units_reported - row.quantity, version=ContractSyncRow.version + 1))
    conn.execute(update(DimensionSyncRow).where(
        DimensionSyncRow.contract_id == row.contract_id, DimensionSyncRow.dimension == row.dimension,
        DimensionSyncRow.period_start == row.period_start,
    ).values(units_reported=DimensionSyncRow.units_reported - row.quantity))
    if row.allocations:
        # Each combination's units too (read after the version bump above: no writer is between).
        dim_t = DimensionSyncRow.__table__
        where = and_(dim_t.c.contract_id == row.contract_id, dim_t.c.dimension == row.dimension,
                     dim_t.c.period_start == row.period_start)
        counted = conn.execute(select(dim_t.c.allocated).where(where)).scalar()
        if counted:
            left = dict(counted)
            for item in row.allocations:
                combo = combination_key(tuple(t) for t in item["tags"])
                left[combo] = int(left.get(combo, 0)) - int(item["quantity"])
            conn.execute(update(dim_t).where(where).values(allocated=left))


def fail(engine: Engine, rows: Sequence[LedgerRow], detail: str, *, now: datetime) -> None:
    """Mark claimed rows failed (a permanent error): their units no longer count, the contract shows it."""
    with Session(engine) as session:
        for row in rows:
            session.execute(update(LedgerRow).where(LedgerRow.id == row.id).values(
                status=LedgerStatus.FAILED, detail=detail[:2000], settled_at=now, claim_token=None))
            _uncount(session, row)
            session.execute(update(ContractSyncRow).where(ContractSyncRow.contract_id == row.contract_id)
                            .values(last_outcome=LedgerStatus.FAILED.value, last_error=detail[:2000]))
        notices.reports_settled(session, [(row, detail[:2000]) for row in rows], "failed", now=now)
        session.commit()


def settle(engine: Engine, rows: Sequence[LedgerRow], outcomes: dict[str, Any], *, now: datetime) -> dict[str, int]:
    """Record the marketplace's answer for each sent row, in one transaction of batched updates."""
    ledger_t, sync_t = LedgerRow.__table__, ContractSyncRow.__table__
    counts: dict[str, int] = {}
    unanswered: list[dict[str, Any]] = []
    settled: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}  # contract -> its sync state's last outcome (the batch's last row wins)
    rejected: list[LedgerRow] = []
    lost: dict[str, list[tuple[LedgerRow, str]]] = {}  # rejected and expired rows: their events
    held: list[dict[str, Any]] = []
    for row in rows:
        outcome = outcomes.get(row.key)
        if outcome is not None and outcome.status == OutcomeStatus.NOT_ACTIVE:
            # Not failed, not rejected: the units stay counted and the row is sent again, identical,
            # once the subscription is active (reinstated) or after HOLD_RETRY, until its window ends.
            detail = f"held: {outcome.detail}".strip(": ")
            held.append({"b_id": row.id, "b_detail": detail[:2000], "b_until": now + HOLD_RETRY})
            last[row.contract_id] = {"b_contract": row.contract_id, "b_outcome": "held", "b_error": detail[:2000]}
            counts["held"] = counts.get("held", 0) + 1
            continue
        if outcome is None or outcome.status == OutcomeStatus.FAILED:
            status, detail = LedgerStatus.PENDING, (outcome.detail if outcome else "no answer for this record")
        elif outcome.status == OutcomeStatus.EXPIRED:
            # Too old for the marketplace: never sent again; the units are revenue lost.
            status, detail = LedgerStatus.EXPIRED, f"expired: {outcome.detail}".strip(": ")
        elif outcome.status == OutcomeStatus.ACCEPTED:
            status, detail = LedgerStatus.ACCEPTED, outcome.detail
        elif outcome.status == OutcomeStatus.DUPLICATE:
            status = LedgerStatus.DUPLICATE
            kept = outcome.accepted_quantity
            detail = ("the marketplace already had this hour" if kept in (None, row.quantity)
                      else f"the marketplace keeps {kept} units for this hour, not {row.quantity}")
        else:
            status, detail = LedgerStatus.REJECTED, f"{outcome.status.value}: {outcome.detail}".strip(": ")
        if status == LedgerStatus.PENDING:
            unanswered.append({"b_id": row.id, "b_detail": detail[:2000]})
        else:
            settled.append({"b_id": row.id, "b_status": status.value, "b_detail": detail[:2000],
                            "b_record_id": getattr(outcome, "marketplace_record_id", None)})
            last[row.contract_id] = {"b_contract": row.contract_id, "b_outcome": status.value,
                                     "b_error": detail[:2000] if status in (LedgerStatus.REJECTED,
                                                                            LedgerStatus.EXPIRED) else ""}
            if status == LedgerStatus.REJECTED:
                rejected.append(row)
            if status in (LedgerStatus.REJECTED, LedgerStatus.EXPIRED):
                lost.setdefault(status.value, []).append((row, detail[:2000]))
        counts[status.value] = counts.get(status.value, 0) + 1
    with engine.begin() as conn:
        if unanswered:
            conn.execute(update(ledger_t).where(ledger_t.c.id == bindparam("b_id")).values(
                detail=bindparam("b_detail"), sent_at=now, claim_token=None), unanswered)
        if held:
            conn.execute(update(ledger_t).where(ledger_t.c.id == bindparam("b_id")).values(
                detail=bindparam("b_detail"), sent_at=now, claim_token=None, held_until=bindparam("b_until")), held)
        if settled:
            conn.execute(update(ledger_t).where(ledger_t.c.id == bindparam("b_id")).values(
                status=bindparam("b_status"), detail=bindparam("b_detail"), sent_at=now, settled_at=now,
                claim_token=None, marketplace_record_id=bindparam("b_record_id")), settled)
        for row in rejected:
            _uncount(conn, row)
        for status_name, items in lost.items():
            notices.reports_settled(conn, items, status_name, now=now)
        if last:
            conn.execute(update(sync_t).where(sync_t.c.contract_id == bindparam("b_contract")).values(
                last_outcome=bindparam("b_outcome"), last_error=bindparam("b_error")), list(last.values()))
    return counts


# --- reading ---------------------------------------------------------------------------------------

def pending_count(engine: Engine, marketplace: str, *, usage_only: bool = False) -> int:
    """Return how many reports of ``marketplace`` wait to be sent (only those with units: ``usage_only``)."""
    query = select(func.count()).select_from(LedgerRow).where(
        LedgerRow.status == LedgerStatus.PENDING, LedgerRow.marketplace == marketplace)
    if usage_only:
        query = query.where(LedgerRow.quantity > 0)
    with Session(engine) as session:
        return int(session.execute(query).scalar_one())


def has_pending(engine: Engine, contract_id: str) -> bool:
    """Tell whether any report of the contract waits to be sent."""
    with Session(engine) as session:
        return session.execute(select(LedgerRow.id).where(
            LedgerRow.contract_id == contract_id, LedgerRow.status == LedgerStatus.PENDING)).first() is not None


def marketplaces_with_pending(engine: Engine) -> list[str]:
    """Return the marketplaces that have pending reports."""
    with Session(engine) as session:
        return sorted(set(session.execute(select(LedgerRow.marketplace).where(
            LedgerRow.status == LedgerStatus.PENDING)).scalars()))


def used_hours(engine: Engine, contract_id: str, *, since: datetime | None = None) -> set[datetime]:
    """Return the hour stamps the contract's reports already use (from ``since`` on)."""
    query = select(LedgerRow.hour).where(LedgerRow.contract_id == contract_id)
    if since is not None:
        query = query.where(LedgerRow.hour >= since)
    with Session(engine) as session:
        return {utc(h) for h in session.execute(query).scalars()}  # type: ignore[misc]


def stamp_taken(engine: Engine, contract_id: str, stamp: datetime) -> bool:
    """Tell whether a report of the contract already uses the hour ``stamp``."""
    with Session(engine) as session:
        return session.execute(select(LedgerRow.id).where(
            LedgerRow.contract_id == contract_id, LedgerRow.hour == stamp)).first() is not None


def ledger_rows(engine: Engine, contract_id: str) -> list[dict[str, Any]]:
    """Return a contract's reports hour by hour, with their ids (the retry action names one)."""
    with Session(engine) as session:
        rows = session.execute(select(LedgerRow).where(LedgerRow.contract_id == contract_id)
                               .order_by(LedgerRow.hour, LedgerRow.id)).scalars().all()
        return [{"id": r.id, "key": r.key, "hour": utc(r.hour).isoformat(),  # type: ignore[union-attr]
                 "dimension": r.dimension, "kind": r.kind, "quantity": r.quantity, "units_total": r.units_total,
                 "cost_to_date": r.cost_to_date, "status": r.status, "detail": r.detail,
                 "marketplace_record_id": r.marketplace_record_id, "attempts": r.attempts,
                 "sent_at": utc(r.sent_at), "unit_price": r.unit_price,
                 "amount": amount_of(r.quantity, r.unit_price), "held_until": utc(r.held_until),
                 "allocations": r.allocations or [], "created_at": utc(r.created_at)} for r in rows]


def amount_of(quantity: int, unit_price: str | None) -> str | None:
    """Return quantity x unit price, exactly, as text (None when the unit price is unknown)."""
    if unit_price is None:
        return None
    with exact():
        return str(Decimal(unit_price) * quantity)


def expired_totals(engine: Engine, *, contract_id: str | None = None,
                   by: str = "marketplace") -> dict[str, dict[str, Any]]:
    """Return expired reports (revenue lost) grouped ``by`` marketplace or dimension: reports, units, amount.

    ``amount`` is the exact sum of quantity x unit price; ``unpriced`` counts rows whose unit
    price is not known yet (written before sync_0006, until the sender fills it).
    """
    column = LedgerRow.marketplace if by == "marketplace" else LedgerRow.dimension
    query = select(column, LedgerRow.quantity, LedgerRow.unit_price).where(LedgerRow.status == LedgerStatus.EXPIRED)
    if contract_id is not None:
        query = query.where(LedgerRow.contract_id == contract_id)
    out: dict[str, dict[str, Any]] = {}
    with Session(engine) as session:
        rows = session.execute(query).all()
    with exact():
        for group, quantity, unit_price in rows:
            item = out.setdefault(str(group), {"reports": 0, "units": 0, "amount": Decimal(0), "unpriced": 0})
            item["reports"] += 1
            item["units"] += quantity
            if unit_price is None:
                item["unpriced"] += 1
            else:
                item["amount"] += Decimal(unit_price) * quantity
    return out


def dimension_counts(engine: Engine, contract_id: str) -> list[dict[str, Any]]:
    """Return the contract's units reported per dimension in the period each was last counted in."""
    with Session(engine) as session:
        rows = session.execute(select(DimensionSyncRow).where(DimensionSyncRow.contract_id == contract_id)
                               .order_by(DimensionSyncRow.dimension)).scalars().all()
        return [{"dimension": r.dimension, "period_start": utc(r.period_start), "units_reported": r.units_reported,
                 "over_reported": r.over_reported, "last_cost": r.last_cost, "last_units_total": r.last_units_total,
                 "allocated": r.allocated} for r in rows]


def ledger_entry(engine: Engine, contract_id: str, ledger_id: int) -> LedgerRow | None:
    """Return one ledger row of a contract (None when it is not this contract's)."""
    with Session(engine) as session:
        row = session.get(LedgerRow, ledger_id)
        if row is None or row.contract_id != contract_id:
            return None
        session.expunge(row)
        return row
