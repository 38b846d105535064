"""Reports an operator asks for: one hour-stamp rule for the API's sync and the dashboard's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq.registry import ScheduledJobRegistry

from tests.worker.sync_support import ingest, map_contract, start_of_test_window
from tests.worker.test_sync_jobs import aws_server, env  # noqa: F401
from webhooks import create_app
from worker import hourly
from worker.reporting import manual_stamp

T = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
NOW = T + timedelta(minutes=20)
NEXT = T + timedelta(hours=1)


@pytest.mark.parametrize(("used", "expected"), [
    pytest.param(set(), (T, None), id="nothing-used"),
    pytest.param({T - timedelta(hours=1)}, (T, None), id="an-earlier-hour-used"),
    pytest.param({T}, (NEXT, NEXT), id="this-hour-used-goes-to-the-next-at-its-start"),
])
def test_manual_stamp(used: set[datetime], expected: tuple[datetime, datetime | None]) -> None:
    """A manual report takes the current hour when unused, otherwise the next hour, run at its start."""
    assert manual_stamp(used, NOW) == expected


def test_api_sync_moves_to_the_next_hour_when_this_one_is_used(env, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """POST /v1/contracts/{id}/sync follows the dashboard's rule: a used stamp sends it to the next hour."""
    environment, runtime = env
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    ingest(environment.engine, customer, 1000, start + timedelta(minutes=5))
    now = datetime.now(UTC)
    current = now.replace(minute=0, second=0, microsecond=0)
    hourly.report_contract(environment.engine, environment.adapter, contract, current, now=now)
    client = create_app(runtime.settings, runtime).test_client()
    forced = client.post(f"/v1/contracts/{contract}/sync", headers=auth_headers)
    assert forced.status_code == 202
    assert datetime.fromisoformat(forced.json["hour"]) == current + timedelta(hours=1)
    assert forced.json["job_id"] in ScheduledJobRegistry(queue=runtime.queue("urgent")).get_job_ids()
