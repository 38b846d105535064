"""The dashboard in a real headless chromium (Debian's, driven by Playwright) against a live server.

Screenshots of every page land in ``test-artifacts/``. One browser serves the whole session;
each test gets a fresh context (its own cookies).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any, Iterator

import pytest
from playwright.sync_api import expect

from tests.conftest import TEST_API_KEY, run_jobs
from tests.dashboard.conftest import ARTIFACTS, Seeded
from worker import ops

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
# The machine's network is closed: these keep chromium from reaching out.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _ensure_chromium() -> str | None:
    """Return why chromium is unavailable after trying to install it, or None when it is there."""
    if os.path.exists(CHROMIUM):
        return None
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, timeout=900, check=False)
        if os.path.exists(CHROMIUM):
            return None
        return "`apt-get install -y chromium` did not install it"
    return "not root or no apt-get, so it cannot be installed here"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Launch one headless chromium for the session (skipped, loudly, only when none can be had)."""
    reason = _ensure_chromium()
    if reason:
        pytest.skip(f"BROWSER TESTS NOT RUN: {CHROMIUM} is missing and {reason}; "
                    "run `apt-get update && apt-get install -y chromium` (bash .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    """Return a page in a fresh 1280x800 context whose base URL is the live server."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    tab = context.new_page()
    yield tab
    context.close()


def shot(page: Any, name: str, *, full: bool = True) -> None:
    """Write a screenshot of the page to test-artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


def login(page: Any, path: str = "/ops/") -> None:
    """Log in through the form, starting from ``path``."""
    page.goto(path)
    page.get_by_label("API key").fill(TEST_API_KEY)
    page.get_by_role("button", name="Log in").click()


def test_a_page_without_a_session_redirects_to_login(page: Any, seeded: Seeded) -> None:
    """Opening a contract without a session lands on the login page, then back on the contract after login."""
    page.goto(f"/ops/contracts/{seeded.acme}")
    assert "/ops/login?next=" in page.url
    shot(page, "login")
    page.get_by_label("API key").fill("wrong-key")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text() == "That API key is not valid."
    page.get_by_label("API key").fill(TEST_API_KEY)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(rf".*/ops/contracts/{seeded.acme}$"))
    assert page.get_by_role("heading", level=1).inner_text().startswith("Acme Corp")


def test_did_acmes_usage_reach_aws_in_two_steps(page: Any, seeded: Seeded) -> None:
    """Search from the overview opens Acme's contract, whose ledger shows AWS's answers."""
    login(page)
    shot(page, "overview")
    page.get_by_label("Find a contract").fill("Acme")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(rf".*/ops/contracts/{seeded.acme}$"))
    page.wait_for_load_state()
    ledger = page.locator("#ledger table")
    expect(ledger.locator("text=accepted")).to_have_count(2)
    expect(ledger.locator("text=failed")).to_have_count(1)
    expect(page.locator("figure.chart svg rect.bar")).to_have_count(3)
    shot(page, "contract")


def test_filter_and_search_contracts(page: Any, seeded: Seeded) -> None:
    """Filters and search go into the query string and narrow the table; sorting by buyer orders it."""
    login(page, "/ops/contracts")
    page.get_by_label("Status").select_option("canceled")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r".*status=canceled.*"))
    page.wait_for_load_state()
    rows = page.locator("table.contracts tbody tr")
    expect(rows).to_have_count(1)  # waits for the filtered page (a loaded machine is slow to render it)
    assert "Globex Ltd" in rows.first.inner_text()
    page.get_by_role("link", name="Clear").click()
    page.wait_for_url(re.compile(r".*/ops/contracts$"))
    page.get_by_label("Search").fill("210987654321")
    page.get_by_label("Search").press("Enter")
    page.wait_for_url(re.compile(r".*q=210987654321.*"))
    page.wait_for_load_state()
    expect(rows).to_have_count(1)
    assert "Initech" in rows.first.inner_text()
    page.goto("/ops/contracts")
    page.get_by_role("link", name="Buyer").click()
    assert "sort=buyer" in page.url
    names = [t.split("\n")[0] for t in page.locator("table.contracts tbody tr td:first-child").all_inner_texts()]
    assert names == ["Acme Corp", "Globex Ltd", "Initech"]
    shot(page, "contracts")


def test_map_an_unmapped_contract_after_a_validation_error(page: Any, seeded: Seeded) -> None:
    """An unknown subscription shows an inline error on the field; a free one maps the contract."""
    login(page, f"/ops/contracts/{seeded.unmapped}")
    field = page.get_by_label("Subscription id")
    field.fill("sub_does_not_exist")
    page.get_by_role("button", name="Map to subscription").click()
    error = page.locator("#subscription-error")
    assert "No subscription 'sub_does_not_exist'" in error.inner_text()
    assert page.get_by_label("Subscription id").get_attribute("aria-invalid") == "true"
    shot(page, "contract-mapping-error")
    page.get_by_label("Subscription id").fill(seeded.spare_subscription)
    page.get_by_role("button", name="Map to subscription").click()
    assert f"Mapped to subscription {seeded.spare_subscription}." in page.locator(".flashes").inner_text()
    assert "mapped" in page.locator(".badges").inner_text()


def test_retry_a_failed_report(page: Any, seeded: Seeded, app: Any) -> None:
    """Retry on the failed row queues a report under an unused hour; after the worker runs it is accepted."""
    login(page, f"/ops/contracts/{seeded.acme}")
    page.locator("#ledger tr.row-bad").get_by_role("button", name=re.compile("Retry")).click()
    message = page.locator(".flashes").inner_text()
    assert "Retry queued" in message and "already has its one report" in message
    run_jobs(app)
    page.reload()
    last = page.locator("#ledger tbody tr").last
    assert "accepted" in last.inner_text() and "300" in last.inner_text()
    assert ops.attention(app.extensions["marketsync"].engine) == []
    shot(page, "contract-after-retry")


def test_cancellation_countdown_ticks(page: Any, seeded: Seeded) -> None:
    """The overview counts down to the canceled contract's deadline, printed as text as well."""
    login(page)
    countdown = page.locator(".countdown").first
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", countdown.locator("time").inner_text())
    first = countdown.locator(".remaining").inner_text()
    assert re.match(r"in (4[0-9]|50) min \d\d s", first), first
    page.wait_for_function("t => document.querySelector('.countdown .remaining').textContent !== t", arg=first,
                           timeout=5000)
    assert countdown.locator(".remaining").inner_text() != first


def test_listings_and_failed_jobs_pages(page: Any, seeded: Seeded, app: Any) -> None:
    """Listings and failed jobs render; a failed job is put back on its queue from the page."""
    from worker import jobs

    app.extensions["marketsync"].queue("sync").enqueue(jobs.report_contract, "ctr_missing",
                                                       "2026-01-01T00:00:00+00:00", job_id="report-ctr_missing-ui")
    run_jobs(app)
    login(page, "/ops/listings")
    assert page.locator("table tbody tr").count() >= 2
    shot(page, "listings")
    page.get_by_role("link", name="Failed jobs").click()
    assert "report-ctr_missing-ui" in page.locator("table").inner_text()
    shot(page, "failed-jobs")
    page.get_by_role("button", name="Retry job report-ctr_missing-ui").click()
    assert "back on the sync queue" in page.locator(".flashes").inner_text()


def test_keyboard_and_phone_width(page: Any, seeded: Seeded) -> None:
    """Tab reaches the skip link first; at phone width nothing overflows the page sideways."""
    login(page)
    page.goto("/ops/contracts")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/ops/", "/ops/contracts", f"/ops/contracts/{seeded.acme}"):
        page.goto(path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    shot(page, "contract-phone")


def test_upload_preview_and_confirm_a_trueup_file(page: Any, seeded: Seeded, app: Any, tmp_path: Any) -> None:
    """In a real browser: upload a CSV, read its preview, confirm it (the browser sends the file back with CRLF line
    breaks: the same digest), and see it applied once."""
    from worker import ledger

    path = tmp_path / "trueups.csv"
    path.write_text(f"contract,dimension,units,reason\n{seeded.acme},usage_cost,7,browser credit\n")
    login(page, "/ops/trueups")
    page.get_by_label("CSV file").set_input_files(str(path))
    page.get_by_role("button", name="Preview").click()
    assert "browser credit" in page.locator('table[aria-label="Adjustments"]').inner_text()
    page.get_by_role("button", name=re.compile("Confirm: report 1 adjustment")).click()
    assert "Applied 1 adjustment(s)" in page.locator(".flashes").inner_text()
    rows = [r for r in ledger.ledger_rows(app.extensions["marketsync"].engine, seeded.acme) if r["kind"] == "trueup"]
    assert [(r["quantity"], r["status"]) for r in rows] == [(7, "pending")]
    shot(page, "trueups-applied")
