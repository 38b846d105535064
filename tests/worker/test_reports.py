"""The reconciliation report, forced sync and /metrics, on real reports sent to the AWS emulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.worker.sync_support import ingest, map_contract, start_of_test_window
from tests.worker.test_sync_jobs import aws_server, env  # noqa: F401
from webhooks import create_app
from worker import hourly
from worker.reports import metering_report, month_bounds

import pytest


def test_month_bounds() -> None:
    """Months are UTC half-open intervals; December rolls into January; junk is refused."""
    assert month_bounds("2026-12") == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_bounds("december")


def test_report_json_csv_metrics_and_force_sync(env, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """The report shows units, amount and outcomes per contract and day; CSV and /metrics agree."""
    environment, runtime = env
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    ingest(environment.engine, customer, 8000, start + timedelta(minutes=5))
    hourly.report_contract(environment.engine, environment.adapter, contract, start, now=datetime.now(UTC))
    rows = metering_report(environment.engine, start.strftime("%Y-%m"))
    assert len(rows) == 1 and rows[0]["units_reported"] == 800 and rows[0]["amount"] == "8.00"
    assert rows[0]["outcomes"] == {"accepted": 1}
    client = create_app(runtime.settings, runtime).test_client()
    body = client.get(f"/v1/metering/reports?month={start:%Y-%m}", headers=auth_headers).json
    assert body["data"][0]["contract_id"] == contract
    csv_text = client.get(f"/v1/metering/reports?month={start:%Y-%m}&format=csv", headers=auth_headers).get_data(as_text=True)
    assert csv_text.splitlines()[0].startswith("date,contract_id") and ",800,8.00," in csv_text
    assert client.get("/v1/metering/reports?month=13", headers=auth_headers).status_code == 400
    assert client.get("/v1/metering/reports").status_code == 401
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'marketsync_reports_total{marketplace="aws",status="accepted"} 1' in metrics
    assert 'marketsync_reported_units_total{marketplace="aws",status="accepted"} 800' in metrics
    assert "marketsync_queue_depth" in metrics
    forced = client.post(f"/v1/contracts/{contract}/sync", headers=auth_headers)
    assert forced.status_code == 202 and forced.json["job_id"].endswith("-manual")
    assert runtime.queue("urgent").count == 1
    assert client.post("/v1/contracts/ctr_missing/sync", headers=auth_headers).status_code == 404
