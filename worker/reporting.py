"""Reports an operator asks for: the API's sync, the dashboard's "sync now" and its retry of a report.

One rule for the hour stamp (``manual_stamp``): a contract gets one report per hour stamp (the
marketplaces dedupe on it), so a manual report goes under the current hour when that stamp is
unused, and otherwise under the next hour, run at its start. A manual report therefore never
silently does nothing: the outstanding units (a failed or rejected report's units are not
counted as reported) always get a stamp of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from worker import ledger, queueing
from worker.contracts import ContractNotFound
from worker.errors import Conflict
from worker.metering import hour_floor
from worker.persistence.contracts import ContractRow
from worker.statuses import SYNCABLE, MappingStatus


class NotReportable(Conflict):
    """The contract reports nothing now: it is not mapped, or no longer reports (``status``)."""

    def __init__(self, message: str, *, mapped: bool, status: str):
        super().__init__(message)
        self.mapped = mapped
        self.status = status


@dataclass(frozen=True)
class Requested:
    """A queued manual report: its job, its hour stamp, and when it runs (None: now)."""

    job_id: str
    contract_id: str
    stamp: datetime
    run_at: datetime | None


def manual_stamp(used: set[datetime], now: datetime) -> tuple[datetime, datetime | None]:
    """Return the hour stamp a manual report uses and when it runs (None: now).

    The current hour when its stamp is unused; otherwise the next hour, at its start.
    """
    current = hour_floor(now)
    if current not in used:
        return current, None
    later = current + timedelta(hours=1)
    return later, later


def check_reportable(engine: Engine, contract_id: str) -> None:
    """Raise ``ContractNotFound`` or ``NotReportable`` unless the contract can be reported now."""
    with Session(engine) as session:
        contract = session.get(ContractRow, contract_id)
        if contract is None:
            raise ContractNotFound(f"no contract {contract_id!r}")
        status, mapped = contract.status, contract.mapping_status == MappingStatus.MAPPED
    if not mapped:
        raise NotReportable(f"contract {contract_id} is not mapped to a subscription", mapped=False, status=status)
    if status not in SYNCABLE:
        raise NotReportable(f"contract {contract_id} is {status}: nothing to sync", mapped=True, status=status)


def request_report(runtime: Any, contract_id: str, *, reason: str, now: datetime) -> Requested:
    """Queue a report of the contract's outstanding units under ``manual_stamp``; ``reason`` ends the job id."""
    check_reportable(runtime.engine, contract_id)
    used = ledger.used_hours(runtime.engine, contract_id, since=hour_floor(now))
    stamp, run_at = manual_stamp(used, now)
    job_id = queueing.enqueue_report(runtime, contract_id, stamp, suffix=reason, at=run_at)
    return Requested(job_id=job_id, contract_id=contract_id, stamp=stamp, run_at=run_at)
