"""``/v1/metering``: the seller's reconciliation report, and forcing a contract's sync."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import Response, current_app, request
from flask.typing import ResponseReturnValue

from webhooks.api.common import api_blueprint, bad
from webhooks.api.openapi import documented
from webhooks.api.schemas import MeteringReport, ReportQuery, SyncQueued
from worker import reporting, reports

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
        raise bad("format", "use json or csv")
    try:
        rows = reports.metering_report(_runtime().engine, month)
    except ValueError as exc:
        raise bad("month", str(exc)) from None
    if fmt == "csv":
        return Response(reports.as_csv(rows), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="metering-{month}.csv"'})
    return {"month": month, "data": rows}


@bp.post("/contracts/<contract_id>/sync")
@documented(response=SyncQueued, status=202)
def force_sync(contract_id: str) -> ResponseReturnValue:
    """Enqueue a report of the contract: under the current hour's stamp when it is unused, otherwise
    under the next hour's, run at its start (``hour`` says which); return the job id."""
    queued = reporting.request_report(_runtime(), contract_id, reason="manual", now=datetime.now(timezone.utc))
    return {"job_id": queued.job_id, "contract_id": contract_id, "hour": queued.stamp.isoformat()}, 202
