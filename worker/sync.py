"""Hourly cost sync and cancellation flush (DESIGN §4, reference/billing.md §3).

Two steps, each safe to repeat and to run in several processes at once:

1. ``prepare``: compute the contract's unrounded cost to date for its billing period, convert
   it to whole units, and write the difference to the usage ledger as a ``pending`` row keyed
   (contract, dimension, hour stamp) — in the same transaction as a compare-and-swap on the
   contract's sync state, so no two runs ever count the same units.
2. ``send_pending``: claim up to 25 pending rows of one marketplace (across contracts), send
   them through the adapter, and record each answer. A crash before the answer is recorded
   leaves the row pending; it is sent again, identical, and the marketplace's dedupe answers.

A contract whose costs cannot be computed (``OutOfRange``: its usage is beyond the supported
range) reports nothing and is put in the ``cost_error`` state — ``last_outcome`` of its sync
state, with the reason in ``last_error`` — shown on the dashboard and counted in ``/metrics``.
It is not retried (the same data gives the same answer); the other contracts of its chunk are
reported as usual, and the next run that can compute its costs clears the state.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Sequence

from sqlalchemy import Engine, and_, bindparam, case, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from billing_core.errors import NotFound, OutOfRange
from billing_core.invoices import costs, costs_each
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.sql_usage import SqlUsageSource
from billing_core.subscriptions import Subscription, billing_period
from marketplaces import rules
from marketplaces.base import (
    Marketplace, OutcomeStatus, PermanentMarketplaceError, TransientMarketplaceError, UsageRecord,
)
from worker.logs import get_logger
from worker.metering import hour_floor, ledger_key, plan_report
from worker.persistence.contracts import ContractRow, ListingRow
from worker.persistence.ledger import ContractSyncRow, LedgerRow

log = get_logger("marketsync.sync")
# The contract columns a marketplace's record identifiers are read from.
_COLUMN_IDENTIFIERS = ("product_code", "license_arn", "customer_aws_account_id", "customer_identifier",
                       "azure_subscription_id", "plan_id", "gcp_entitlement_id")

def batch_size(marketplace: str) -> int:
    """Return how many ledger rows of ``marketplace`` go out in one send."""
    return rules(marketplace).batch_size


CLAIM_TIMEOUT = timedelta(minutes=2)  # a claim older than this belongs to a dead worker
COUNTED = ("pending", "accepted", "duplicate")  # statuses whose units count as reported
COST_ERROR = "cost_error"  # last_outcome of a contract whose costs cannot be computed
SYNCABLE = ("active", "suspended", "canceled")


class SyncError(Exception):
    """A contract cannot be reported as it is (unmapped, no listing, ...); shown, not retried."""


def cost_error_text(exc: OutOfRange) -> str:
    """Return the stored ``last_error`` of a cost error: ``<reason>: <message>``."""
    return f"{exc.reason}: {exc}"[:2000]


def mark_cost_errors(engine: Engine, errors: dict[str, OutOfRange], *, now: datetime) -> None:
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


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` did for one contract and hour stamp."""

    outcome: str  # queued, zero, nothing, stamp_used, skipped
    detail: str = ""
    ledger_id: int | None = None
    cost: Decimal = Decimal(0)
    units_total: int = 0
    quantity: int = 0


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def unit_price(contract: ContractRow, listing: ListingRow) -> Decimal:
    """Return the unit price of the listing's dimension (a contract's own pricing wins)."""
    for dimension in (contract.pricing or {}).get("dimensions", []) or []:
        if dimension.get("name") == listing.dimension and dimension.get("unit_price"):
            return Decimal(str(dimension["unit_price"]))
    return Decimal(listing.unit_price)


def _cost_window(sub: Subscription, contract: ContractRow, listing: ListingRow, *, stamp: datetime,
                 now: datetime) -> tuple[datetime, datetime, datetime]:
    """Return (start, end, period start) of the costs to read: the billing period the stamp falls in, to now."""
    ends = [now]
    for limit in (_utc(sub.end), _utc(contract.cancel_effective_at)):
        if limit is not None:
            ends.append(limit)
    end = min(ends)
    reference = min(stamp, end - timedelta(microseconds=1))
    reference = max(reference, _utc(sub.start))  # type: ignore[type-var]
    period = billing_period(sub, reference)
    start = period.start
    if listing.metering_start_date is not None:
        metering_start = datetime.combine(listing.metering_start_date, datetime.min.time(), tzinfo=timezone.utc)
        start = max(start, metering_start)
    return start, min(end, period.end), period.start


def _reported_total(result: Any, listing: ListingRow) -> Decimal:
    """Return the unrounded total of the prices the listing reports (usage, and fixed fees if included)."""
    return sum((p.total_unrounded for p in result.per_price_costs
                if listing.include_fixed_fees or p.price.metric_id is not None), Decimal(0))


def contract_cost(engine: Engine, sub: Subscription, contract: ContractRow, listing: ListingRow, *,
                  stamp: datetime, now: datetime) -> tuple[Decimal, datetime]:
    """Return the unrounded cost to date of the billing period the stamp falls in, and its start."""
    start, end, period_start = _cost_window(sub, contract, listing, stamp=stamp, now=now)
    if end <= start:
        return Decimal(0), period_start
    return _reported_total(costs(sub, start, end, SqlUsageSource(engine)), listing), period_start


def _load(engine: Engine, contract_id: str) -> tuple[ContractRow, ListingRow, Subscription]:
    with Session(engine) as session:
        contract = session.get(ContractRow, contract_id)
        if contract is None:
            raise SyncError(f"no contract {contract_id!r}")
        if contract.mapping_status != "mapped" or not contract.subscription_id:
            raise SyncError(f"contract {contract_id} is not mapped to a subscription")
        if not contract.listing_id or (listing := session.get(ListingRow, contract.listing_id)) is None:
            raise SyncError(f"contract {contract_id} has no listing")
        try:
            sub = SqlSubscriptions(session).get(contract.subscription_id)
        except NotFound:
            raise SyncError(f"subscription {contract.subscription_id} of contract {contract_id} does not exist") from None
        session.expunge_all()
    return contract, listing, sub


def _load_many(engine: Engine, contract_ids: Sequence[str]) -> dict[str, tuple[ContractRow, ListingRow, Subscription] | SyncError]:
    """Load many contracts with their listings and subscriptions in three queries (``_load`` per id)."""
    from billing_core.persistence.subscriptions import SubscriptionRow

    out: dict[str, tuple[ContractRow, ListingRow, Subscription] | SyncError] = {}
    with Session(engine) as session:
        contracts = {c.id: c for c in session.execute(
            select(ContractRow).where(ContractRow.id.in_(list(contract_ids)))).scalars()}
        listings = {row.id: row for row in session.execute(select(ListingRow).where(
            ListingRow.id.in_({c.listing_id for c in contracts.values() if c.listing_id}))).scalars()}
        sub_rows = {row.id: row for row in session.execute(select(SubscriptionRow).where(
            SubscriptionRow.id.in_({c.subscription_id for c in contracts.values() if c.subscription_id}))).scalars()}
        for contract_id in contract_ids:
            contract = contracts.get(contract_id)
            if contract is None:
                out[contract_id] = SyncError(f"no contract {contract_id!r}")
            elif contract.mapping_status != "mapped" or not contract.subscription_id:
                out[contract_id] = SyncError(f"contract {contract_id} is not mapped to a subscription")
            elif not contract.listing_id or contract.listing_id not in listings:
                out[contract_id] = SyncError(f"contract {contract_id} has no listing")
            elif contract.subscription_id not in sub_rows:
                out[contract_id] = SyncError(f"subscription {contract.subscription_id} of contract {contract_id} "
                                             "does not exist")
            else:
                out[contract_id] = (contract, listings[contract.listing_id],
                                    sub_rows[contract.subscription_id].to_domain())
        session.expunge_all()
    return out


def _unreportable(contract: ContractRow, listing: ListingRow, sub: Subscription, stamp: datetime) -> Prepared | None:
    """Return why the contract reports nothing under ``stamp`` (skipped), or None when it may report."""
    if contract.status not in SYNCABLE:
        return Prepared("skipped", f"contract is {contract.status}")
    first_hour = hour_floor(_utc(sub.start))  # type: ignore[arg-type]
    if listing.metering_start_date is not None:
        first_hour = max(first_hour, datetime.combine(listing.metering_start_date, datetime.min.time(),
                                                      tzinfo=timezone.utc))
    if stamp < first_hour:
        # No marketplace accepts usage stamped before the buyer's use began.
        return Prepared("skipped", f"hour {stamp.isoformat()} is before the contract's first billable hour")
    return None


def prepare(engine: Engine, contract_id: str, stamp: datetime, *, now: datetime, final: bool = False,
            kind: str = "hourly") -> Prepared:
    """Write the contract's outstanding units under ``stamp`` to the ledger (pending)."""
    stamp = hour_floor(stamp)
    contract, listing, sub = _load(engine, contract_id)
    skipped = _unreportable(contract, listing, sub, stamp)
    if skipped is not None:
        return skipped
    try:
        cost, period_start = contract_cost(engine, sub, contract, listing, stamp=stamp, now=now)
    except OutOfRange as exc:
        mark_cost_errors(engine, {contract_id: exc}, now=now)
        return Prepared(COST_ERROR, cost_error_text(exc))
    return _record(engine, contract, listing, cost, period_start, stamp, now=now, final=final, kind=kind)


def prepare_many(engine: Engine, contract_ids: Sequence[str], stamp: datetime, *, now: datetime,
                 kind: str = "hourly") -> dict[str, Prepared | Exception]:
    """``prepare`` many contracts under ``stamp``, reading their costs in bulk (one grouped query per metric).

    Each contract still gets its own short transaction (compare-and-swap and ledger row), with
    the cost read here, during this run. A contract that cannot be reported maps to its
    ``SyncError``; one whose costs cannot be computed to ``Prepared("cost_error")`` (and that
    state); one whose state kept changing maps to a ``TransientMarketplaceError``.
    """
    stamp = hour_floor(stamp)
    out: dict[str, Prepared | Exception] = {}
    todo: list[tuple[str, ContractRow, ListingRow, Subscription, datetime, datetime, datetime]] = []
    for contract_id, loaded in _load_many(engine, contract_ids).items():
        if isinstance(loaded, SyncError):
            out[contract_id] = loaded
            continue
        contract, listing, sub = loaded
        skipped = _unreportable(contract, listing, sub, stamp)
        if skipped is not None:
            out[contract_id] = skipped
            continue
        todo.append((contract_id, contract, listing, sub,
                     *_cost_window(sub, contract, listing, stamp=stamp, now=now)))
    priced = [t for t in todo if t[5] > t[4]]
    results = costs_each([(sub, start, end) for _, _, _, sub, start, end, _ in priced], SqlUsageSource(engine))
    failed = {t[0]: result for t, result in zip(priced, results) if isinstance(result, OutOfRange)}
    totals = {t[0]: _reported_total(result, t[2]) for t, result in zip(priced, results)
              if not isinstance(result, OutOfRange)}
    mark_cost_errors(engine, failed, now=now)
    out.update({contract_id: Prepared(COST_ERROR, cost_error_text(exc)) for contract_id, exc in failed.items()})
    items = [(contract, listing, totals.get(contract_id, Decimal(0)), period_start)
             for contract_id, contract, listing, _sub, _start, _end, period_start in todo if contract_id not in failed]
    recorded = _record_many(engine, items, stamp, now=now, kind=kind)
    if recorded is not None:
        out.update(recorded)
        return out
    # Another run touched one of these contracts meanwhile: one compare-and-swap each.
    for contract, listing, cost, period_start in items:
        try:
            out[contract.id] = _record(engine, contract, listing, cost, period_start, stamp, now=now,
                                       final=False, kind=kind)
        except TransientMarketplaceError as exc:
            out[contract.id] = exc
    return out


class _Moved(Exception):
    """A bulk compare-and-swap found a state that changed since it was read."""


def _record_many(engine: Engine, items: Sequence[tuple[ContractRow, ListingRow, Decimal, datetime]],
                 stamp: datetime, *, now: datetime, kind: str) -> dict[str, Prepared] | None:
    """``_record`` for many contracts in one transaction: one read of their sync states and
    stamps, one batched compare-and-swap, one multi-row ledger insert.

    Return None, having written nothing, when any state moved meanwhile (another run, a
    flush): the caller then records each contract on its own.
    """
    if not items:
        return {}
    sync_t, ledger_t = ContractSyncRow.__table__, LedgerRow.__table__
    ids = [contract.id for contract, *_ in items]
    costs_by_id = {contract.id: cost for contract, _listing, cost, _start in items}
    try:
        with Session(engine) as session:
            known = set(session.execute(select(sync_t.c.contract_id).where(sync_t.c.contract_id.in_(ids))).scalars())
            if len(known) < len(ids):
                session.add_all([ContractSyncRow(contract_id=i) for i in ids if i not in known])
                session.flush()
            states = {r.contract_id: r for r in session.execute(select(
                sync_t.c.contract_id, sync_t.c.version, sync_t.c.period_start, sync_t.c.units_reported,
            ).where(sync_t.c.contract_id.in_(ids)))}
            used = {(r.contract_id, r.dimension): r for r in session.execute(select(
                ledger_t.c.contract_id, ledger_t.c.dimension, ledger_t.c.id, ledger_t.c.status,
            ).where(ledger_t.c.contract_id.in_(ids), ledger_t.c.hour == stamp))}
            out: dict[str, Prepared] = {}
            swaps: list[dict[str, Any]] = []
            rows: list[dict[str, Any]] = []
            plans: dict[str, Any] = {}
            for contract, listing, cost, period_start in items:
                taken = used.get((contract.id, listing.dimension))
                if taken is not None:
                    out[contract.id] = Prepared("stamp_used",
                                                f"hour {stamp.isoformat()} already has a {taken.status} report",
                                                ledger_id=taken.id, cost=cost)
                    continue
                state = states[contract.id]
                reported = state.units_reported if _utc(state.period_start) == period_start else 0
                plan = plan_report(cost, unit_price(contract, listing), reported, final=False,
                                   close_policy=listing.close_rounding)
                plans[contract.id] = plan
                send_zero = plan.delta == 0 and rules(contract.marketplace).hourly_zero_record and kind == "hourly"
                swaps.append({
                    "b_id": contract.id, "b_version": state.version, "b_new_version": state.version + 1,
                    "b_period_start": period_start, "b_units_reported": reported + plan.delta,
                    "b_over_reported": plan.over_reported, "b_last_cost": str(cost),
                    "b_last_units_total": plan.units_total, "b_last_run_at": now,
                    "b_last_outcome": "queued" if plan.delta else "nothing to report",
                })
                if plan.delta > 0 or send_zero:
                    rows.append({
                        "key": ledger_key(contract.id, listing.dimension, stamp), "contract_id": contract.id,
                        "marketplace": contract.marketplace, "product": _product(contract),
                        "dimension": listing.dimension, "hour": stamp, "period_start": period_start,
                        "quantity": plan.delta, "kind": "zero" if plan.delta == 0 else kind,
                        "cost_to_date": str(cost), "units_total": plan.units_total, "status": "pending",
                        "detail": "", "attempts": 0, "created_at": now,
                    })
                else:
                    out[contract.id] = Prepared("nothing", "no whole unit to report", cost=cost,
                                                units_total=plan.units_total)
            if swaps:
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
            if rows:
                inserted = session.execute(insert(ledger_t).returning(ledger_t.c.id, ledger_t.c.contract_id), rows)
                for row_id, contract_id in inserted:
                    plan = plans[contract_id]
                    out[contract_id] = Prepared("zero" if plan.delta == 0 else "queued", ledger_id=row_id,
                                                cost=costs_by_id[contract_id], units_total=plan.units_total,
                                                quantity=plan.delta)
            session.commit()
    except (_Moved, IntegrityError):
        return None
    for contract_id, plan in plans.items():
        if plan.over_reported:
            log.warning("over_reported", contract=contract_id, units=plan.over_reported,
                        cost=str(costs_by_id[contract_id]))
    return out


def _product(contract: ContractRow) -> str:
    return contract.product_code or contract.offer_id or str((contract.cloud_identifiers or {}).get("product_id", ""))


def _record(engine: Engine, contract: ContractRow, listing: ListingRow, cost: Decimal, period_start: datetime,
            stamp: datetime, *, now: datetime, final: bool, kind: str) -> Prepared:
    """Write the units of ``cost`` not yet reported as a pending ledger row (compare-and-swap on the sync state)."""
    contract_id = contract.id
    price = unit_price(contract, listing)
    product = _product(contract)
    for _attempt in range(10):
        with Session(engine, expire_on_commit=False) as session:
            state = session.get(ContractSyncRow, contract_id)
            if state is None:
                session.add(ContractSyncRow(contract_id=contract_id))
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()
                continue
            existing = session.execute(select(LedgerRow).where(
                LedgerRow.contract_id == contract_id, LedgerRow.dimension == listing.dimension,
                LedgerRow.hour == stamp)).scalars().first()
            if existing is not None:
                return Prepared("stamp_used", f"hour {stamp.isoformat()} already has a {existing.status} report",
                                ledger_id=existing.id, cost=cost)
            same_period = _utc(state.period_start) == period_start
            reported = state.units_reported if same_period else 0
            plan = plan_report(cost, price, reported, final=final, close_policy=listing.close_rounding)
            send_zero = plan.delta == 0 and rules(contract.marketplace).hourly_zero_record and kind == "hourly"
            values: dict[str, Any] = {
                "version": state.version + 1, "period_start": period_start,
                "units_reported": reported + plan.delta, "over_reported": plan.over_reported,
                "last_cost": str(cost), "last_units_total": plan.units_total, "last_run_at": now,
                "last_outcome": "queued" if plan.delta else "nothing to report",
            }
            swapped = session.execute(update(ContractSyncRow).where(
                ContractSyncRow.contract_id == contract_id, ContractSyncRow.version == state.version,
            ).values(**values)).rowcount
            if swapped != 1:
                session.rollback()
                continue  # another run moved the state: compute again from the new one
            row = None
            if plan.delta > 0 or send_zero:
                row = LedgerRow(
                    key=ledger_key(contract_id, listing.dimension, stamp), contract_id=contract_id,
                    marketplace=contract.marketplace, product=product, dimension=listing.dimension,
                    hour=stamp, period_start=period_start, quantity=plan.delta,
                    kind="zero" if plan.delta == 0 else kind, cost_to_date=str(cost),
                    units_total=plan.units_total, created_at=now,
                )
                session.add(row)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                continue  # the stamp was taken meanwhile: the next pass says so
        if plan.over_reported:
            log.warning("over_reported", contract=contract_id, units=plan.over_reported, cost=str(cost))
        if row is None:
            return Prepared("nothing", "no whole unit to report", cost=cost, units_total=plan.units_total)
        return Prepared("zero" if plan.delta == 0 else "queued", ledger_id=row.id, cost=cost,
                        units_total=plan.units_total, quantity=plan.delta)
    raise TransientMarketplaceError(f"contract {contract_id}: sync state kept changing; retry")


# --- sending ---------------------------------------------------------------------------------------

def usage_record(row: LedgerRow, contract: ContractRow) -> UsageRecord:
    """Build the adapter's record for a ledger row from the contract's cloud identifiers."""
    columns = {name: getattr(contract, name) for name in _COLUMN_IDENTIFIERS}
    identifiers = rules(contract.marketplace).record_identifiers(columns, dict(contract.cloud_identifiers or {}))
    return UsageRecord(key=row.key, marketplace=Marketplace(contract.marketplace), identifiers=identifiers,
                       dimension=row.dimension, hour=_utc(row.hour),  # type: ignore[arg-type]
                       quantity=row.quantity)


def _claim(engine: Engine, marketplace: str, *, now: datetime, first: str | None, limit: int) -> tuple[str, list[LedgerRow]]:
    token = secrets.token_hex(8)
    table = LedgerRow.__table__
    claimable = and_(table.c.status == "pending", table.c.marketplace == marketplace,
                     or_(table.c.claim_token.is_(None), table.c.claimed_at < now - CLAIM_TIMEOUT))
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


def _release(engine: Engine, token: str, detail: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(LedgerRow).where(LedgerRow.claim_token == token, LedgerRow.status == "pending")
                     .values(claim_token=None, detail=detail[:2000]))


def _uncount(session: Any, row: LedgerRow) -> None:
    """Take a row's units out of the reported count (they did not reach the marketplace)."""
    session.execute(update(ContractSyncRow).where(
        ContractSyncRow.contract_id == row.contract_id, ContractSyncRow.period_start == row.period_start,
    ).values(units_reported=ContractSyncRow.units_reported - row.quantity, version=ContractSyncRow.version + 1))


def _settle(engine: Engine, rows: Sequence[LedgerRow], outcomes: dict[str, Any], *, now: datetime) -> dict[str, int]:
    """Record the marketplace's answer for each sent row, in one transaction of batched updates."""
    ledger_t, sync_t = LedgerRow.__table__, ContractSyncRow.__table__
    counts: dict[str, int] = {}
    unanswered: list[dict[str, Any]] = []
    settled: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}  # contract -> its sync state's last outcome (the batch's last row wins)
    rejected: list[LedgerRow] = []
    for row in rows:
        outcome = outcomes.get(row.key)
        if outcome is None or outcome.status == OutcomeStatus.FAILED:
            status, detail = "pending", (outcome.detail if outcome else "no answer for this record")
        elif outcome.status == OutcomeStatus.ACCEPTED:
            status, detail = "accepted", outcome.detail
        elif outcome.status == OutcomeStatus.DUPLICATE:
            status = "duplicate"
            kept = outcome.accepted_quantity
            detail = ("the marketplace already had this hour" if kept in (None, row.quantity)
                      else f"the marketplace keeps {kept} units for this hour, not {row.quantity}")
        else:
            status, detail = "rejected", f"{outcome.status.value}: {outcome.detail}".strip(": ")
        if status == "pending":
            unanswered.append({"b_id": row.id, "b_detail": detail[:2000]})
        else:
            settled.append({"b_id": row.id, "b_status": status, "b_detail": detail[:2000],
                            "b_record_id": getattr(outcome, "marketplace_record_id", None)})
            last[row.contract_id] = {"b_contract": row.contract_id, "b_outcome": status,
                                     "b_error": detail[:2000] if status == "rejected" else ""}
            if status == "rejected":
                rejected.append(row)
        counts[status] = counts.get(status, 0) + 1
    with engine.begin() as conn:
        if unanswered:
            conn.execute(update(ledger_t).where(ledger_t.c.id == bindparam("b_id")).values(
                detail=bindparam("b_detail"), sent_at=now, claim_token=None), unanswered)
        if settled:
            conn.execute(update(ledger_t).where(ledger_t.c.id == bindparam("b_id")).values(
                status=bindparam("b_status"), detail=bindparam("b_detail"), sent_at=now, settled_at=now,
                claim_token=None, marketplace_record_id=bindparam("b_record_id")), settled)
        for row in rejected:
            _uncount(conn, row)
        if last:
            conn.execute(update(sync_t).where(sync_t.c.contract_id == bindparam("b_contract")).values(
                last_outcome=bindparam("b_outcome"), last_error=bindparam("b_error")), list(last.values()))
    return counts


def send_pending(engine: Engine, adapter: Any, marketplace: str, *, now: datetime, first: str | None = None,
                 max_batches: int = 4) -> dict[str, int]:
    """Send pending ledger rows of ``marketplace`` in batches (``batch_size``); return counts by outcome.

    ``first`` puts one contract's rows at the head of the first batch. Transient failures
    release the claim and propagate (the job retries); permanent ones mark the rows failed.
    """
    totals: dict[str, int] = {}
    for _ in range(max_batches):
        token, rows = _claim(engine, marketplace, now=now, first=first, limit=batch_size(marketplace))
        if not rows:
            break
        with Session(engine) as session:
            contracts = {c.id: c for c in session.execute(
                select(ContractRow).where(ContractRow.id.in_({r.contract_id for r in rows}))).scalars()}
            session.expunge_all()
        records = [usage_record(r, contracts[r.contract_id]) for r in rows]
        try:
            outcomes = adapter.report(records)
        except TransientMarketplaceError as exc:
            _release(engine, token, f"transient: {exc}")
            raise
        except PermanentMarketplaceError as exc:
            detail = f"permanent: {exc}"
            with Session(engine) as session:
                for row in rows:
                    session.execute(update(LedgerRow).where(LedgerRow.id == row.id).values(
                        status="failed", detail=detail[:2000], settled_at=now, claim_token=None))
                    _uncount(session, row)
                    session.execute(update(ContractSyncRow).where(ContractSyncRow.contract_id == row.contract_id)
                                    .values(last_outcome="failed", last_error=detail[:2000]))
                session.commit()
            log.error("report_failed", marketplace=marketplace, rows=len(rows), error=str(exc))
            totals["failed"] = totals.get("failed", 0) + len(rows)
            continue
        counts = _settle(engine, rows, {o.key: o for o in outcomes}, now=now)
        for status, n in counts.items():
            totals[status] = totals.get(status, 0) + n
        log.info("reported", marketplace=marketplace, records=len(rows), **counts)
        if counts.get("pending"):
            break  # the marketplace left some unprocessed: leave them for the retry
    return totals


def pending_count(engine: Engine, marketplace: str, *, usage_only: bool = False) -> int:
    """Return how many reports of ``marketplace`` wait to be sent (only those with units: ``usage_only``)."""
    from sqlalchemy import func

    query = select(func.count()).select_from(LedgerRow).where(
        LedgerRow.status == "pending", LedgerRow.marketplace == marketplace)
    if usage_only:
        query = query.where(LedgerRow.quantity > 0)
    with Session(engine) as session:
        return int(session.execute(query).scalar_one())


def report_contract(engine: Engine, adapter: Any, contract_id: str, stamp: datetime, *, now: datetime,
                    final: bool = False, kind: str = "hourly", batch: bool = False) -> dict[str, Any]:
    """Prepare one contract's report under ``stamp`` and send it (with others' pending rows).

    With ``batch`` (the hourly fan-out) rows are sent only once a full batch waits, so
    thousands of contracts make hundreds of calls, not thousands; the fan-out's drain job
    sends the rest. Flushes and manual runs send at once.
    """
    prepared = prepare(engine, contract_id, stamp, now=now, final=final, kind=kind)
    marketplace = marketplace_of(engine, contract_id)
    sent: dict[str, int] = {}
    if not batch or pending_count(engine, marketplace) >= batch_size(marketplace):
        sent = send_pending(engine, adapter, marketplace, now=now, first=contract_id,
                            max_batches=1 if batch else 4)
    return {"contract_id": contract_id, "hour": stamp.isoformat(), "outcome": prepared.outcome,
            "detail": prepared.detail, "quantity": prepared.quantity, "cost": str(prepared.cost), "sent": sent}



def report_many(engine: Engine, adapter_for: Callable[[str], Any], contract_ids: Sequence[str], stamp: datetime, *,
                now: datetime) -> dict[str, Any]:
    """The hourly report of many contracts: prepare each (costs read in bulk), then send full
    batches of usage.

    Rows below a full batch, and zero-quantity heartbeats, wait for the fan-out's drain jobs. A contract that cannot be
    reported is counted and skipped; a transient failure (sending, or a sync state that kept
    changing) propagates after the others are done, so the job retries.
    """
    prepared = prepare_many(engine, contract_ids, stamp, now=now)
    outcomes: dict[str, int] = {}
    errors: dict[str, str] = {}
    transient: TransientMarketplaceError | None = None
    for contract_id, result in prepared.items():
        if isinstance(result, Prepared):
            outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
            if result.outcome == COST_ERROR:
                errors[contract_id] = result.detail
            continue
        errors[contract_id] = str(result)
        if isinstance(result, TransientMarketplaceError):
            transient = transient or result
        else:
            log.error("sync_error", contract=contract_id, error=str(result))
    with Session(engine) as session:
        marketplaces = sorted(set(session.execute(select(ContractRow.marketplace).where(
            ContractRow.id.in_([c for c, r in prepared.items() if isinstance(r, Prepared) and r.ledger_id]))).scalars()))
    sent: dict[str, dict[str, int]] = {}
    for marketplace in marketplaces:
        # Full batches of usage go out now; zero-quantity heartbeats (AWS, paced at 10 calls/s)
        # wait for the fan-out's drain jobs, so they never hold up the other chunks' reports.
        full = pending_count(engine, marketplace, usage_only=True) // batch_size(marketplace)
        if full:
            sent[marketplace] = send_pending(engine, adapter_for(marketplace), marketplace, now=now, max_batches=full)
    if transient is not None:
        raise transient
    return {"hour": hour_floor(stamp).isoformat(), "contracts": len(contract_ids), "outcomes": outcomes,
            "errors": errors, "sent": sent}

# --- the hourly fan-out and the cancellation flush -----------------------------------------------

def syncable_contracts(engine: Engine) -> list[str]:
    """Return ids of mapped contracts that still report (active, suspended, canceled-not-closed)."""
    with Session(engine) as session:
        return list(session.execute(select(ContractRow.id).where(
            ContractRow.mapping_status == "mapped", ContractRow.status.in_(SYNCABLE),
        ).order_by(ContractRow.id)).scalars())


def flush_stamp(engine: Engine, contract_id: str, now: datetime) -> datetime | None:
    """Return the hour stamp a flush can use now, or None when it must wait for the next hour.

    The marketplace's rules decide: the current hour only (a second flush in the same hour
    waits for the next boundary), or the latest unused hour of a look-back window that ends at
    the cancellation (``MarketplaceRules.flush_stamp``).
    """
    with Session(engine) as session:
        contract = session.get(ContractRow, contract_id)
        used = set(session.execute(select(LedgerRow.hour).where(LedgerRow.contract_id == contract_id)).scalars())
    if contract is None:
        stamp = hour_floor(now)
        return None if stamp in used else stamp
    return rules(contract.marketplace).flush_stamp({_utc(h) for h in used}, now, _utc(contract.cancel_effective_at))


def deadline_for(contract: ContractRow) -> datetime | None:
    """Return when the marketplace stops accepting the final usage of a canceled contract."""
    received = _utc(contract.canceled_at)
    if received is None:
        return None
    return received + rules(contract.marketplace).final_usage_window


def overdue_contracts(engine: Engine, *, now: datetime, margin: timedelta = timedelta(minutes=15)) -> list[dict[str, Any]]:
    """Return canceled contracts not yet closed whose deadline is within ``margin`` (or past)."""
    out = []
    with Session(engine) as session:
        for contract in session.execute(select(ContractRow).where(ContractRow.status == "canceled")).scalars():
            deadline = deadline_for(contract)
            if deadline is not None and now >= deadline - margin:
                out.append({"contract_id": contract.id, "marketplace": contract.marketplace,
                            "deadline": deadline, "missed": now >= deadline})
    return out


def next_hour(now: datetime) -> datetime:
    """Return the next UTC hour boundary."""
    return hour_floor(now) + timedelta(hours=1)


def close_if_settled(engine: Engine, contract_id: str, *, now: datetime) -> bool:
    """Close a canceled contract once none of its reports is pending; return whether it closed."""
    with Session(engine) as session:
        pending = session.execute(select(LedgerRow.id).where(
            LedgerRow.contract_id == contract_id, LedgerRow.status == "pending")).first()
        if pending is not None:
            return False
        closed = session.execute(update(ContractRow).where(
            ContractRow.id == contract_id, ContractRow.status == "canceled",
        ).values(status="closed", closed_at=now, updated_at=now)).rowcount
        session.commit()
    return bool(closed)


def flush(engine: Engine, adapter: Any, contract_id: str, *, now: datetime, final: bool) -> dict[str, Any]:
    """Report a canceled contract's outstanding usage now, under the current hour's stamp.

    The final flush rounds the last fraction per the listing's close policy and closes the
    contract once nothing is pending. When this hour's stamp is already used (the first flush
    ran in the same hour) the result says to run again at the next hour boundary, which is
    always inside AWS's one-hour window when the first flush ran at the cancellation.
    """
    stamp = flush_stamp(engine, contract_id, now)
    if stamp is None:
        return {"contract_id": contract_id, "outcome": "wait", "retry_at": next_hour(now).isoformat()}
    result = report_contract(engine, adapter, contract_id, stamp, now=now, final=final,
                             kind="final" if final else "flush")
    if final:
        # A contract whose costs cannot be computed stays open: its final usage is still owed.
        result["closed"] = result["outcome"] != COST_ERROR and close_if_settled(engine, contract_id, now=now)
    return result


def marketplace_of(engine: Engine, contract_id: str) -> str:
    """Return the contract's marketplace (SyncError if there is no such contract)."""
    with Session(engine) as session:
        contract = session.get(ContractRow, contract_id)
        if contract is None:
            raise SyncError(f"no contract {contract_id!r}")
        return contract.marketplace


def marketplaces_with_pending(engine: Engine) -> list[str]:
    """Return the marketplaces that have pending reports."""
    with Session(engine) as session:
        return sorted(set(session.execute(select(LedgerRow.marketplace).where(LedgerRow.status == "pending")).scalars()))


def flag_alert(engine: Engine, contract_id: str, *, deadline: datetime, now: datetime) -> bool:
    """Mark a contract's deadline alert once; return True when it was not flagged before."""
    with Session(engine) as session:
        state = session.get(ContractSyncRow, contract_id)
        if state is None:
            session.add(ContractSyncRow(contract_id=contract_id, deadline_at=deadline, alerted_at=now))
            session.commit()
            return True
        if state.alerted_at is not None:
            return False
        state.deadline_at, state.alerted_at = deadline, now
        session.add(state)
        session.commit()
        return True


def preview(engine: Engine, contract_id: str, stamp: datetime, *, now: datetime, final: bool = False) -> dict[str, Any]:
    """Return what ``prepare`` would write for the contract, without writing anything."""
    stamp = hour_floor(stamp)
    contract, listing, sub = _load(engine, contract_id)
    cost, period_start = contract_cost(engine, sub, contract, listing, stamp=stamp, now=now)
    price = unit_price(contract, listing)
    with Session(engine) as session:
        state = session.get(ContractSyncRow, contract_id)
        taken = session.execute(select(LedgerRow.id).where(
            LedgerRow.contract_id == contract_id, LedgerRow.hour == stamp)).first()
    reported = state.units_reported if state and _utc(state.period_start) == period_start else 0
    plan = plan_report(cost, price, reported, final=final, close_policy=listing.close_rounding)
    return {"contract_id": contract_id, "marketplace": contract.marketplace, "hour": stamp.isoformat(),
            "period_start": period_start.isoformat(), "cost": str(cost), "unit_price": str(price),
            "units_total": plan.units_total, "units_reported": reported, "would_send": 0 if taken else plan.delta,
            "over_reported": plan.over_reported, "stamp_used": bool(taken), "status": contract.status}


def ledger_rows(engine: Engine, contract_id: str) -> list[dict[str, Any]]:
    """Return a contract's ledger, hour by hour."""
    with Session(engine) as session:
        rows = session.execute(select(LedgerRow).where(LedgerRow.contract_id == contract_id)
                               .order_by(LedgerRow.hour, LedgerRow.id)).scalars().all()
        return [{"hour": _utc(r.hour).isoformat(), "key": r.key, "kind": r.kind, "quantity": r.quantity,
                 "units_total": r.units_total, "cost_to_date": r.cost_to_date, "status": r.status,
                 "detail": r.detail, "marketplace_record_id": r.marketplace_record_id, "attempts": r.attempts,
                 "sent_at": _utc(r.sent_at).isoformat() if r.sent_at else None} for r in rows]


def flag_unbillable(engine: Engine, *, now: datetime) -> dict[str, int]:
    """Count, per closed contract, the events that arrived for times after its cancellation.

    Such usage is kept (events are immutable) but no marketplace will take it: it is shown as
    unbillable on the contract, the dashboard and /metrics.
    """
    from sqlalchemy import func

    from billing_core.events import to_micros
    from billing_core.persistence.events import EventRow

    flagged: dict[str, int] = {}
    with Session(engine) as session:
        closed = session.execute(select(ContractRow).where(
            ContractRow.status == "closed", ContractRow.customer_id.is_not(None),
            ContractRow.cancel_effective_at.is_not(None))).scalars().all()
        for contract in closed:
            count = session.execute(select(func.count(func.distinct(EventRow.idempotency_key))).where(
                EventRow.customer_id == contract.customer_id,
                EventRow.ts >= to_micros(_utc(contract.cancel_effective_at)))).scalar_one()  # type: ignore[arg-type]
            state = session.get(ContractSyncRow, contract.id)
            if state is None:
                state = ContractSyncRow(contract_id=contract.id)
            if count and count != state.unbillable_events:
                log.warning("unbillable_usage", contract=contract.id, events=count)
            state.unbillable_events, state.unbillable_checked_at = int(count), now
            session.add(state)
            if count:
                flagged[contract.id] = int(count)
        session.commit()
    return flagged
