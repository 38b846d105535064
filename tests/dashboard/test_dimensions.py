"""The dashboard shows a two-dimension listing and its contract's reports per dimension."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import (
    TWO_DIMENSIONS, SyncEnv, ingest, map_contract, setup_billing, setup_two_dimension_billing,
)
from worker import hourly
from worker.metering import hour_floor


def test_contract_page_and_listings_show_each_dimension(app: Any, ops_client: Any,
                                                        aws_emulator: EmulatorServer) -> None:
    """A two-dimension contract's page has one chart and one counts row per dimension, and a ledger naming them."""
    runtime = app.extensions["marketsync"]
    env = SyncEnv("aws", runtime.engine, aws_emulator, runtime.adapter("aws"), runtime.settings)
    env.control("POST", "reset")
    setup_billing(runtime.engine)
    setup_two_dimension_billing(runtime.engine)
    now = datetime.now(UTC)
    start = hour_floor(now) - timedelta(hours=2)
    contract, customer = map_contract(env, start=start, plan_id="plan_dims", dimensions=TWO_DIMENSIONS)
    for n in range(3):
        ingest(runtime.engine, customer, 415, start + timedelta(minutes=5 + n))  # 3 calls, 1245 tokens
    result = hourly.report_contract(runtime.engine, env.adapter, contract, start, now=now)
    assert result["dimensions"] == {"api_calls": 2, "usage_fee": 124}, result

    html = ops_client.get(f"/ops/contracts/{contract}").get_data(as_text=True)
    assert "2 dimensions (below)" in html and "Per dimension, this period" in html
    assert html.count('<figure class="chart">') == 2
    for title in ("per hour: api_calls", "per hour: usage_fee"):
        assert title in html, title
    rows = re.findall(r'<tr><td class="mono">(\w+)</td><td class="num">([\d.]+)</td><td class="mono">([\w, ]+)</td>'
                      r'<td class="num">([\d.]+)</td><td class="num">(\d+)', html)
    assert rows == [("api_calls", "0.001", "calls", "0.0021", "2"), ("usage_fee", "0.01", "remaining", "1.245", "124")]
    assert '<td class="mono">api_calls</td><td>hourly</td>' in html
    assert '<td class="mono">usage_fee</td><td>hourly</td>' in html

    listings = ops_client.get("/ops/listings").get_data(as_text=True)
    assert "api_calls <small>(calls)</small>" in listings and "usage_fee <small>(remaining)</small>" in listings
