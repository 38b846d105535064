"""Revenue lost on the dashboard: an expired report on the overview and on its contract's page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.dashboard.conftest import Seeded, csrf_of
from worker import hourly, ledger, ops
from worker.metering import hour_floor


def _expire_acme(app: Any, seeded: Seeded) -> dict[str, Any]:
    """Write Acme's outstanding units (the failed report's 300) under the current hour, then let AWS's six hours
    pass without sending it; return the expired row."""
    engine = app.extensions["marketsync"].engine
    stamp = hour_floor(datetime.now(UTC))
    assert hourly.prepare(engine, seeded.acme, stamp, now=datetime.now(UTC)).quantity == 300
    adapter = app.extensions["marketsync"].adapter("aws")
    assert hourly.send_pending(engine, adapter, "aws", now=stamp + timedelta(hours=6)) == {"expired": 1}
    [row] = [r for r in ledger.ledger_rows(engine, seeded.acme) if r["status"] == "expired"]
    return row


def test_overview_and_contract_page_show_the_expired_units_and_amount(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """The overview's revenue-lost card shows aws: 1 report, 300 units, 3.00; the contract page says the same,
    marks the ledger row expired with its amount, and offers no Retry for it."""
    row = _expire_acme(app, seeded)
    assert (row["quantity"], row["unit_price"], row["amount"]) == (300, "0.01", "3.00")

    overview = ops_client.get("/ops/").get_data(as_text=True)
    card = overview[overview.index('id="revenue-lost"'):overview.index('id="h-deadlines"')]
    assert "Revenue lost: expired reports" in card
    assert '<th scope="row">aws</th><td class="num">1</td><td class="num">300</td>' in card and "3.00" in card

    page = ops_client.get(f"/ops/contracts/{seeded.acme}").get_data(as_text=True)
    assert "Revenue lost: 1 expired report(s), 300 units" in page and "amount 3.00" in page
    assert "lost: 300 × 0.01 = 3.00" in page
    assert f'aria-label="Retry the report of {row["hour"]}"' not in page
    # Asked anyway, the retry is refused: an expired report is never sent again.
    path = f"/ops/contracts/{seeded.acme}"
    ops_client.post(f"{path}/ledger/{row['id']}/retry", data={"csrf_token": csrf_of(page)})
    assert "That report is expired: only failed or rejected reports are retried." in ops_client.get(path).get_data(
        as_text=True)


def test_nothing_expired_says_so(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """Without expired reports the card says none were lost and the read model's totals are zero."""
    overview = ops_client.get("/ops/").get_data(as_text=True)
    assert "None: every report reached its marketplace in time." in overview
    lost = ops.revenue_lost(app.extensions["marketsync"].engine)
    assert lost["total"] == {"reports": 0, "units": 0, "amount": 0, "unpriced": 0}
