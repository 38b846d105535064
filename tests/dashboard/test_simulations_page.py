"""The dashboard's simulations page: totals, the histogram as inline SVG, the customers that move most."""

from __future__ import annotations

from typing import Any

from tests.api.test_simulations_api import world  # noqa: F401 - the shared plan, customers and usage
from tests.conftest import TEST_API_KEY


def test_simulation_page_shows_totals_chart_and_customers(ops_client: Any, world: dict) -> None:  # noqa: F811
    """February to April under v2: the page shows the API's totals, one SVG bar per bucket and the movers first."""
    plan_id = world["plan"]["id"]
    overview = ops_client.get("/ops/").get_data(as_text=True)
    assert 'href="/ops/simulations"' in overview
    answer = ops_client.get(f"/ops/simulations?plan_id={plan_id}&version=2&since=2026-02-01&until=2026-05-01")
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert 'aria-current="page">Simulations' in page
    assert "54.00 USD" in page and "63.00 USD" in page and "(16.67%)" in page
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert svg.count("<rect") == 11 and "≥ 50%" in svg
    body = page[page.index("<tbody>"):page.index("</tbody>")]
    assert body.index("cus_2") < body.index("cus_1")  # the largest change first
    assert TEST_API_KEY not in page


def test_simulation_page_refuses_bad_input(ops_client: Any, world: dict) -> None:  # noqa: F811
    """A missing version or an unknown plan is a 400 with the reason on the page, not an error page."""
    plan_id = world["plan"]["id"]
    missing = ops_client.get(f"/ops/simulations?plan_id={plan_id}&version=")
    assert missing.status_code == 400 and "version: a version number is required" in missing.get_data(as_text=True)
    unknown = ops_client.get("/ops/simulations?plan_id=plan_nope&version=1&since=2026-02-01")
    assert unknown.status_code == 400 and "plan_nope" in unknown.get_data(as_text=True)
    garbled = ops_client.get(f"/ops/simulations?plan_id={plan_id}&version=2&since=<script>")
    assert garbled.status_code == 400 and "<script>" not in garbled.get_data(as_text=True)
    assert ops_client.get("/ops/simulations").status_code == 200
