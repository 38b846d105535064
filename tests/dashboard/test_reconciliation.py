"""The dashboard's reconciliation page: the month's lines, discrepancies first, linked from the nav."""

from __future__ import annotations

from typing import Any

from tests.conftest import TEST_API_KEY, TEST_WEBHOOK_SECRET
from tests.dashboard.conftest import Seeded
from worker import ledger


def test_reconciliation_page_lists_discrepancies_first(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """Acme's failed report and the units it left unreported come first, each with its cause; agreeing hours follow."""
    engine = app.extensions["marketsync"].engine
    rows = ledger.ledger_rows(engine, seeded.acme)
    failed = next(r for r in rows if r["status"] == "failed")
    month = failed["hour"][:7]
    overview = ops_client.get("/ops/").get_data(as_text=True)
    assert 'href="/ops/reconciliation"' in overview and ">Reconciliation</a>" in overview

    answer = ops_client.get(f"/ops/reconciliation?month={month}")
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert 'aria-current="page">Reconciliation' in page
    assert "aws</dt><dd>accepted units from the emulator&#39;s records" in page
    body = page[page.index("<tbody>"):page.index("</tbody>")]
    cells = body.split("<tr")[1:]
    bad = [c for c in cells if 'class="row-bad"' in c]
    good = [c for c in cells if 'class="row-bad"' not in c]
    assert bad and good and cells[:len(bad)] == bad  # discrepancies first
    assert any("reported but not accepted: failed" in c for c in bad)
    # 17,345 tokens at 0.001 give 1734 units; the failed report's 300 are not counted as reported.
    assert any("computed 1734 ≠ reported 1434: 300 unit(s) not reported" in c for c in bad)
    assert all("agrees" in c for c in good)
    assert f"{len(bad)} discrepancies" in page
    assert TEST_API_KEY not in page and TEST_WEBHOOK_SECRET not in page


def test_reconciliation_page_refuses_a_bad_month(ops_client: Any) -> None:
    """A month that is not YYYY-MM is a 400 that names the month field, and nothing is read."""
    answer = ops_client.get("/ops/reconciliation?month=2026-13")
    assert answer.status_code == 400
    page = answer.get_data(as_text=True)
    assert 'id="month-error"' in page and "month: expected YYYY-MM" in page and 'aria-invalid="true"' in page


def test_reconciliation_page_needs_a_login(client: Any) -> None:
    """Without a session the page redirects to the login."""
    answer = client.get("/ops/reconciliation")
    assert answer.status_code == 302 and "/ops/login" in answer.headers["Location"]
