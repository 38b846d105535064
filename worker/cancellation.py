"""Cancellation: the flushes of a canceled contract's final usage, its deadline, closing, unbillable usage.

On a cancellation the subscription ends and the flushes are enqueued (``queueing.schedule_flushes``)
as the marketplace's rules plan them (``flush_plan``): the final one after the usage grace but early
enough for the marketplace's deadline, and one at once unless it would take the hour stamp the final
one needs. A flush reports under the hour stamp the marketplace's rules give
(``MarketplaceRules.flush_stamp``) or, when none is free now, asks to run again at the next hour
boundary. The final flush closes the contract once nothing is pending. A watchdog flags contracts
still open near their marketplace's deadline (``deadline_for``: for AWS one hour after the
deprovisioning instant).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, select, update
from sqlmodel import Session

from billing_core import count_customer_events_since
from marketplaces import rules
from marketplaces.base import FlushPlan
from worker import hourly, ledger, notices
from worker.ledger import COST_ERROR, utc
from worker.logs import get_logger
from worker.metering import hour_floor
from worker.persistence.contracts import ContractRow
from worker.persistence.ledger import ContractSyncRow
from worker.statuses import ContractStatus

log = get_logger("marketsync.cancellation")
DEADLINE_MARGIN = timedelta(minutes=15)  # alert this long before the marketplace's deadline
DEADLINE_ALERTS = "marketsync:metrics:deadline_alerts"
DEADLINE_MISSES = "marketsync:metrics:deadline_misses"


class Counters(Protocol):
    """Where the watchdog counts its alerts (Redis)."""

    def incr(self, name: str) -> Any: ...


def next_hour(now: datetime) -> datetime:
    """Return the next UTC hour boundary."""
    return hour_floor(now) + timedelta(hours=1)


def flush_stamp(engine: Engine, contract_id: str, now: datetime) -> datetime | None:
    """Return the hour stamp a flush can use now, or None when it must wait for the next hour.

    The marketplace's rules decide: the current hour only (a second flush in the same hour
    waits for the next boundary), or the latest unused hour of a look-back window that ends at
    the cancellation (``MarketplaceRules.flush_stamp``).
    """
    used = ledger.used_hours(engine, contract_id)
    with Session(engine) as session:
        contract = session.get(ContractRow, contract_id)
    if contract is None:
        stamp = hour_floor(now)
        return None if stamp in used else stamp
    return rules(contract.marketplace).flush_stamp(used, now, utc(contract.cancel_effective_at))


def close_if_settled(engine: Engine, contract_id: str, *, now: datetime) -> bool:
    """Close a canceled contract once none of its reports is pending; return whether it closed."""
    if ledger.has_pending(engine, contract_id):
        return False
    with Session(engine) as session:
        closed = session.execute(update(ContractRow).where(
            ContractRow.id == contract_id, ContractRow.status == ContractStatus.CANCELED,
        ).values(status=ContractStatus.CLOSED.value, closed_at=now, updated_at=now)).rowcount
        if closed:
            row = session.get(ContractRow, contract_id, populate_existing=True)
            notices.contract_event(session, "contract.closed", row, now=now)
        session.commit()
    return bool(closed)


def flush(engine: Engine, adapter: Any, contract_id: str, *, now: datetime, final: bool) -> dict[str, Any]:
    """Report a canceled contract's outstanding usage now, under the stamp its marketplace allows.

    The final flush rounds the last fraction per the listing's close policy and closes the
    contract once nothing is pending. When no stamp is free now (the first flush ran in the same
    hour) the result says to run again at the next hour boundary, which is always inside AWS's
    one-hour window when the first flush ran at the cancellation.
    """
    stamp = flush_stamp(engine, contract_id, now)
    if stamp is None:
        return {"contract_id": contract_id, "outcome": "wait", "retry_at": next_hour(now).isoformat()}
    result = hourly.report_contract(engine, adapter, contract_id, stamp, now=now, final=final,
                                    kind="final" if final else "flush")
    if final:
        # A contract whose costs cannot be computed stays open: its final usage is still owed.
        result["closed"] = result["outcome"] != COST_ERROR and close_if_settled(engine, contract_id, now=now)
    return result


# --- deadlines -------------------------------------------------------------------------------------

def deadline_for(contract: ContractRow) -> datetime | None:
    """Return when the marketplace stops accepting the final usage of a canceled contract.

    Its rules decide from when the window runs: the cancellation's own instant (AWS: the
    deprovisioning) or the moment marketsync applied the cancellation (``canceled_at``).
    """
    received = utc(contract.canceled_at)
    if received is None:
        return None
    return rules(contract.marketplace).final_usage_deadline(received, utc(contract.cancel_effective_at))


def flush_plan(engine: Engine, contract_id: str, *, grace: timedelta, now: datetime) -> FlushPlan:
    """Return when a canceled contract's flushes run, as its marketplace's rules plan them."""
    with Session(engine) as session:
        contract = session.get(ContractRow, contract_id)
    received = utc(contract.canceled_at) if contract is not None else None
    if contract is None or received is None:
        # Not canceled (a test or an operator scheduling flushes by hand): at once and after the grace.
        return FlushPlan(now=now, final_at=now + grace, deadline=now + grace)
    return rules(contract.marketplace).flush_plan(received, utc(contract.cancel_effective_at), now, grace)


def overdue_contracts(engine: Engine, *, now: datetime, margin: timedelta = DEADLINE_MARGIN) -> list[dict[str, Any]]:
    """Return canceled contracts not yet closed whose deadline is within ``margin`` (or past)."""
    out = []
    with Session(engine) as session:
        for contract in session.execute(select(ContractRow).where(
                ContractRow.status == ContractStatus.CANCELED)).scalars():
            deadline = deadline_for(contract)
            if deadline is not None and now >= deadline - margin:
                out.append({"contract_id": contract.id, "marketplace": contract.marketplace,
                            "deadline": deadline, "missed": now >= deadline})
    return out


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


def at_risk(engine: Engine, item: dict[str, Any], *, now: datetime) -> None:
    """Emit ``marketplace_report.deadline_at_risk`` for a canceled contract whose final report is late."""
    with Session(engine) as session:
        row = session.get(ContractRow, item["contract_id"])
        if row is not None:
            notices.contract_event(session, "marketplace_report.deadline_at_risk", row, now=now, properties={
                "deadline": item["deadline"].isoformat(), "missed": item["missed"]})
            session.commit()


def watch_deadlines(engine: Engine, counters: Counters, *, now: datetime) -> list[dict[str, Any]]:
    """Alert once (log, counter, dashboard flag) per canceled contract close to its deadline; return them."""
    overdue = overdue_contracts(engine, now=now)
    for item in overdue:
        if flag_alert(engine, item["contract_id"], deadline=item["deadline"], now=now):
            at_risk(engine, item, now=now)
            counters.incr(DEADLINE_ALERTS)
            if item["missed"]:
                counters.incr(DEADLINE_MISSES)
            log.error("cancellation_deadline", contract=item["contract_id"], marketplace=item["marketplace"],
                      deadline=item["deadline"].isoformat(), missed=item["missed"])
    return [{**i, "deadline": i["deadline"].isoformat()} for i in overdue]


# --- usage after the end ---------------------------------------------------------------------------

def flag_unbillable(engine: Engine, *, now: datetime) -> dict[str, int]:
    """Count, per closed contract, the events that arrived for times after its cancellation.

    Such usage is kept (events are immutable) but no marketplace will take it: it is shown as
    unbillable on the contract, the dashboard and /metrics.
    """
    flagged: dict[str, int] = {}
    with Session(engine) as session:
        closed = session.execute(select(ContractRow).where(
            ContractRow.status == ContractStatus.CLOSED, ContractRow.customer_id.is_not(None),
            ContractRow.cancel_effective_at.is_not(None))).scalars().all()
        for contract in closed:
            count = count_customer_events_since(session, contract.customer_id,  # type: ignore[arg-type]
                                                utc(contract.cancel_effective_at))  # type: ignore[arg-type]
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
