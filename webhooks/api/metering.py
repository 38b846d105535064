"""``/v1/metering``: the seller's reconciliation report, and forcing a contract's sync."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import Response, current_app, request
from flask.typing import ResponseReturnValue

from webhooks.api.common import ApiError, api_blueprint
from webhooks.api.openapi import documented
from webhooks.api.schemas import MeteringReport, ReportQuery, SyncQueued
from worker import reports

bp = api_blueprint("metering", __name__)


def _runtime() -> Any:
    return current_app.extensions["marketsync"]


@bp.get("/metering/reports")
@documented(query=ReportQuery, response=MeteringReport, media_types=("application/json", "text/csv"))
def metering_reports() -> ResponseReturnValue:
    """Return per contract and day: identifiers, custom properties, units, amount, outcomes."""
    month = request.args.get("month") or datetime.now(timezone.utc).strftime("%Y-%m")
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "Request validation error", "format: use json or csv", field="format")
    try:
        rows = reports.metering_report(_runtime().engine, month)
    except ValueError as exc:
        raise ApiError(400, "Request validation error", str(exc), field="month") from None
    if fmt == "csv":
        return Response(reports.as_csv(rows), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="metering-{month}.csv"'})
    return {"month": month, "data": rows}


@bp.post("/contracts/<contract_id>/sync")
@documented(response=SyncQueued, status=202)
def force_sync(contract_id: str) -> ResponseReturnValue:
    """Enqueue a report of the contract now (under the current hour's stamp); return the job id."""
    from worker import contracts, jobs, sync
    from worker.metering import hour_floor

    runtime = _runtime()
    contract = contracts.get_contract(runtime.engine, contract_id)  # 404 when unknown
    if contract["mapping"]["status"] != "mapped":
        raise ApiError(409, "Resource conflict", f"contract {contract_id} is not mapped to a subscription")
    if contract["status"] not in sync.SYNCABLE:
        raise ApiError(409, "Resource conflict", f"contract {contract_id} is {contract['status']}: nothing to sync")
    stamp = hour_floor(datetime.now(timezone.utc))
    job_id = jobs.report_job_id(contract_id, stamp) + "-manual"
    runtime.queue("urgent").enqueue(jobs.report_contract, contract_id, stamp.isoformat(), job_id=job_id)
    return {"job_id": job_id, "contract_id": contract_id, "hour": stamp.isoformat()}, 202
