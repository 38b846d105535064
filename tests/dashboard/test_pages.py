"""The dashboard over the Flask test client: login, CSRF, redirects, every page, the actions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from tests.conftest import TEST_API_KEY, TEST_WEBHOOK_SECRET, run_jobs
from tests.dashboard.conftest import Seeded, csrf_of
from worker import ledger, ops
from worker.persistence.contracts import ContractRow

PAGES = ["/ops/", "/ops/contracts", "/ops/listings", "/ops/migrations", "/ops/jobs/failed", "/ops/trueups",
         "/ops/webhooks", "/ops/alerts"]


def _html(response: Any) -> str:
    return response.get_data(as_text=True)


def test_pages_without_a_session_redirect_to_login(client: Any) -> None:
    """Every page answers 302 to /ops/login?next=<the page> without a session."""
    for path in [*PAGES, "/ops/contracts/ctr_x?q=1"]:
        answer = client.get(path)
        assert answer.status_code == 302, path
        assert answer.headers["Location"].startswith("/ops/login?next="), answer.headers["Location"]
    answer = client.get("/ops/contracts?status=active")
    assert "next=/ops/contracts?status%3Dactive" in answer.headers["Location"]


def test_login_page_renders_with_a_labelled_field(client: Any) -> None:
    """The login page has a labelled key field and a CSRF token, and needs no session."""
    html = _html(client.get("/ops/login"))
    assert '<label for="api_key">API key</label>' in html
    assert 'name="csrf_token"' in html


def test_login_with_a_wrong_key_is_refused(client: Any) -> None:
    """A wrong key gets 401 with a message and no session."""
    token = csrf_of(_html(client.get("/ops/login")))
    answer = client.post("/ops/login", data={"api_key": "nope", "csrf_token": token})
    assert answer.status_code == 401
    assert "not valid" in _html(answer)
    assert client.get("/ops/").status_code == 302


def test_login_without_csrf_token_is_400(client: Any) -> None:
    """A POST without the session's CSRF token is refused with 400, even with a valid key."""
    client.get("/ops/login")
    answer = client.post("/ops/login", data={"api_key": TEST_API_KEY, "csrf_token": "forged"})
    assert answer.status_code == 400
    assert client.get("/ops/").status_code == 302


def test_login_redirects_to_next_but_never_off_site(client: Any) -> None:
    """After login the browser goes to ``next`` when it is a dashboard path, else to the overview."""
    for target, expected in (("/ops/listings", "/ops/listings"), ("https://evil.test/", "/ops/"),
                             ("//evil.test/ops", "/ops/"), ("/v1/contracts", "/ops/")):
        with client.session_transaction() as session:
            session.clear()
        token = csrf_of(_html(client.get("/ops/login")))
        answer = client.post("/ops/login", data={"api_key": TEST_API_KEY, "csrf_token": token, "next": target})
        assert answer.status_code == 302
        assert answer.headers["Location"] == expected, target


def test_every_page_renders_and_no_secret_appears(ops_client: Any, seeded: Seeded) -> None:
    """Overview, contracts, each contract, listings and failed jobs render; no key or secret is shown."""
    paths = [*PAGES, f"/ops/contracts/{seeded.acme}", f"/ops/contracts/{seeded.unmapped}",
             f"/ops/contracts/{seeded.canceled}"]
    for path in paths:
        answer = ops_client.get(path)
        assert answer.status_code == 200, path
        html = _html(answer)
        assert TEST_API_KEY not in html and TEST_WEBHOOK_SECRET not in html, path
        assert answer.headers["Cache-Control"] == "no-store"


def test_post_without_csrf_is_400_when_logged_in(ops_client: Any, seeded: Seeded) -> None:
    """Every dashboard POST checks the CSRF token."""
    for path in (f"/ops/contracts/{seeded.unmapped}/map", f"/ops/contracts/{seeded.acme}/sync",
                 f"/ops/contracts/{seeded.acme}/properties", "/ops/logout",
                 f"/ops/contracts/{seeded.acme}/ledger/{seeded.failed_ledger_id}/retry"):
        assert ops_client.post(path, data={"subscription_id": "x"}).status_code == 400, path
    with ops_client.session_transaction() as session:
        session["csrf"] = "expected"
    assert ops_client.post("/ops/logout", data={"csrf_token": "other"}).status_code == 400


def test_logout_ends_the_session(ops_client: Any) -> None:
    """Logging out clears the session: pages redirect to login again."""
    token = csrf_of(_html(ops_client.get("/ops/")))
    assert ops_client.post("/ops/logout", data={"csrf_token": token}).status_code == 302
    assert ops_client.get("/ops/").status_code == 302


def test_a_removed_api_key_ends_its_sessions(ops_client: Any, app: Any) -> None:
    """The session holds a fingerprint of its key: once the key is no longer configured, it is refused."""
    runtime = app.extensions["marketsync"]
    runtime.settings = runtime.settings.model_copy(update={"API_KEYS": ("another-key-0123456789",)})
    assert ops_client.get("/ops/").status_code == 302


def test_overview_shows_counts_attention_deadlines_and_queues(ops_client: Any, seeded: Seeded) -> None:
    """The overview lists the failed report, the canceled contract's deadline, queues and the next run."""
    html = _html(ops_client.get("/ops/"))
    assert "Reports needing attention" in html and "UnrecognizedClientException" in html
    assert "Globex Ltd" in html and "data-deadline=" in html
    assert "Queue urgent" in html and "Next hourly run" in html and "Workers alive" in html
    assert 'href="/ops/contracts?marketplace=aws&amp;status=active"' in html


def test_search_finds_a_contract_by_identifier_and_custom_property(ops_client: Any, seeded: Seeded) -> None:
    """Search matches cloud identifiers and custom properties; the overview's search opens a single match."""
    html = _html(ops_client.get("/ops/contracts?q=acme-001"))
    assert "Acme Corp" in html and "Initech" not in html
    html = _html(ops_client.get("/ops/contracts?q=210987654321"))
    assert "Initech" in html and "Acme Corp" not in html
    answer = ops_client.get("/ops/contracts?q=ACME-001&go=1")
    assert answer.status_code == 302 and answer.headers["Location"] == f"/ops/contracts/{seeded.acme}"


def test_filters_sorting_and_pages(ops_client: Any, seeded: Seeded) -> None:
    """Filters narrow the table, sorting orders it, pages split it, all in the query string."""
    html = _html(ops_client.get("/ops/contracts?mapping_status=unmapped"))
    assert "Initech" in html and "Acme Corp" not in html
    html = _html(ops_client.get("/ops/contracts?status=canceled"))
    assert "Globex Ltd" in html and "Acme Corp" not in html
    html = _html(ops_client.get("/ops/contracts?sort=buyer"))
    assert html.index("Acme Corp") < html.index("Globex Ltd") < html.index("Initech")
    html = _html(ops_client.get("/ops/contracts?sort=-buyer"))
    assert html.index("Initech") < html.index("Globex Ltd") < html.index("Acme Corp")
    html = _html(ops_client.get("/ops/contracts?sort=buyer&page_size=5&page=1"))
    assert "Page 1 of 1" in html
    page = ops.list_contracts(ops_client.application.extensions["marketsync"].engine,
                              ops.ContractQuery(sort="buyer", page_size=1, page=2), now=datetime.now(UTC))
    assert page["pages"] == 3 and [r["buyer"] for r in page["rows"]] == ["Globex Ltd"]
    query = ops.ContractQuery.from_args({"sort": "buyer", "page_size": "5", "page": "1"})
    assert query.args() == {"sort": "buyer", "page_size": 5}
    assert query.args(page=2) == {"sort": "buyer", "page_size": 5, "page": 2}
    html = _html(ops_client.get("/ops/contracts?marketplace=nope&sort=drop+table&page=x"))
    assert "Acme Corp" in html  # invalid values are ignored, never an error


def test_contract_detail_shows_ledger_invoice_chart_and_history(ops_client: Any, seeded: Seeded) -> None:
    """The contract page shows identifiers, properties, pricing, ledger with answers, chart, invoice, timeline."""
    html = _html(ops_client.get(f"/ops/contracts/{seeded.acme}"))
    for text in ("Acme Corp", "ACME-001", "prod-sync", "accepted", "failed", "UnrecognizedClientException",
                 "<svg", "Units reported vs computed cost per hour", "Upcoming invoice", "Subscription timeline",
                 "plan_sync", "events", "Retry", "Sync now", "0.01"):
        assert text in html, text


def test_map_an_unmapped_contract_and_see_errors_inline(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """Mapping follows the PATCH rules: unknown (404) and taken (409) subscriptions show inline; a free one maps."""
    path = f"/ops/contracts/{seeded.unmapped}"
    token = csrf_of(_html(ops_client.get(path)))
    answer = ops_client.post(f"{path}/map", data={"csrf_token": token, "subscription_id": ""})
    assert answer.status_code == 400 and "Enter a subscription id." in _html(answer)
    answer = ops_client.post(f"{path}/map", data={"csrf_token": token, "subscription_id": "sub_nope"})
    assert answer.status_code == 404 and "No subscription &#39;sub_nope&#39;" in _html(answer)
    answer = ops_client.post(f"{path}/map", data={"csrf_token": token, "subscription_id": seeded.taken_subscription})
    assert answer.status_code == 409 and "already mapped to contract" in _html(answer)
    answer = ops_client.post(f"{path}/map", data={"csrf_token": token, "subscription_id": seeded.spare_subscription})
    assert answer.status_code == 302
    html = _html(ops_client.get(path))
    assert f"Mapped to subscription {seeded.spare_subscription}" in html
    with Session(app.extensions["marketsync"].engine) as session:
        row = session.get(ContractRow, seeded.unmapped)
        assert row.mapping_status == "mapped" and row.subscription_id == seeded.spare_subscription


def test_edit_custom_properties(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """Custom properties are changed, removed and added; an unnamed new property is refused inline."""
    path = f"/ops/contracts/{seeded.acme}"
    token = csrf_of(_html(ops_client.get(path)))
    answer = ops_client.post(f"{path}/properties", data={"csrf_token": token, "new_key": "", "new_value": "x"})
    assert answer.status_code == 400 and "Enter a name for the new property." in _html(answer)
    answer = ops_client.post(f"{path}/properties", data={
        "csrf_token": token, "key": ["crm_id", "region"], "value:crm_id": "ACME-002", "value:region": "emea",
        "remove:region": "1", "new_key": "owner", "new_value": "finance"})
    assert answer.status_code == 302
    with Session(app.extensions["marketsync"].engine) as session:
        assert session.get(ContractRow, seeded.acme).custom_properties == {"crm_id": "ACME-002", "owner": "finance"}


def test_retry_a_failed_report_sends_its_units_under_an_unused_hour(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """Retry enqueues report_contract under the current hour; once run, the failed units are accepted."""
    engine = app.extensions["marketsync"].engine
    path = f"/ops/contracts/{seeded.acme}"
    token = csrf_of(_html(ops_client.get(path)))
    answer = ops_client.post(f"{path}/ledger/{seeded.failed_ledger_id}/retry", data={"csrf_token": token})
    assert answer.status_code == 302
    html = _html(ops_client.get(path))
    assert "Retry queued" in html and "already has its one report" in html
    run_jobs(app)
    rows = ledger.ledger_rows(engine, seeded.acme)
    failed = next(r for r in rows if r["id"] == seeded.failed_ledger_id)
    assert rows[-1]["status"] == "accepted" and rows[-1]["quantity"] == failed["quantity"] == 300
    assert ops.attention(engine) == []
    answer = ops_client.post(f"{path}/ledger/{rows[0]['id']}/retry", data={"csrf_token": token})
    assert "only failed or rejected reports are retried" in _html(ops_client.get(path))


def test_sync_now_enqueues_a_report_and_refuses_unmapped_contracts(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """Sync now reports the contract under the current hour; an unmapped contract says to map it first."""
    token = csrf_of(_html(ops_client.get(f"/ops/contracts/{seeded.unmapped}")))
    ops_client.post(f"/ops/contracts/{seeded.unmapped}/sync", data={"csrf_token": token})
    assert "map it first" in _html(ops_client.get(f"/ops/contracts/{seeded.unmapped}"))
    ops_client.post(f"/ops/contracts/{seeded.acme}/sync", data={"csrf_token": token})
    assert "Sync queued" in _html(ops_client.get(f"/ops/contracts/{seeded.acme}"))
    assert app.extensions["marketsync"].queue("urgent").count == 1


def test_failed_jobs_page_lists_and_retries(ops_client: Any, app: Any) -> None:
    """A job that failed in a real worker is listed with its error and can be put back on its queue."""
    from worker import jobs

    runtime = app.extensions["marketsync"]
    runtime.queue("sync").enqueue(jobs.report_contract, "ctr_missing", "2026-01-01T00:00:00+00:00",
                                  job_id="report-ctr_missing-test")
    run_jobs(app)
    html = _html(ops_client.get("/ops/jobs/failed"))
    assert "report-ctr_missing-test" in html and "SyncError" in html
    token = csrf_of(html)
    answer = ops_client.post("/ops/jobs/failed/sync/report-ctr_missing-test/retry", data={"csrf_token": token})
    assert answer.status_code == 302
    assert "back on the sync queue" in _html(ops_client.get("/ops/jobs/failed"))
    assert runtime.queue("sync").count == 1


def test_unknown_contract_is_a_404_page(ops_client: Any) -> None:
    """An unknown contract id answers an HTML 404."""
    answer = ops_client.get("/ops/contracts/ctr_nope")
    assert answer.status_code == 404 and "There is no contract ctr_nope." in _html(answer)


def test_static_css_is_served_without_a_session(client: Any) -> None:
    """The stylesheet loads on the login page (no session needed)."""
    answer = client.get("/ops/static/ops.css")
    assert answer.status_code == 200 and "--accent" in answer.get_data(as_text=True)


def test_cost_error_state_on_the_list_the_page_and_metrics(ops_client: Any, app: Any, seeded: Seeded) -> None:
    """A contract whose costs cannot be computed shows its reason on the list and its page, and counts in /metrics."""
    from billing_core.errors import UsageOutOfRange

    runtime = app.extensions["marketsync"]
    error = UsageOutOfRange("metric 'm_tokens', customer 'c9': the total 1.0E+18 is beyond the supported range")
    ledger.mark_cost_errors(runtime.engine, {seeded.acme: error}, now=datetime.now(UTC))
    html = _html(ops_client.get("/ops/contracts"))
    assert "cost error" in html and "usage_out_of_range: metric &#39;m_tokens&#39;" in html
    page = _html(ops_client.get(f"/ops/contracts/{seeded.acme}"))
    assert "Costs cannot be computed" in page and "the total 1.0E+18 is beyond the supported range" in page
    metrics = ops_client.get("/metrics").get_data(as_text=True)
    assert 'marketsync_contract_cost_errors{reason="usage_out_of_range"} 1' in metrics
    assert 'marketsync_contract_cost_errors{reason="inexact_amount"} 0' in metrics


def test_contract_page_shows_what_a_contract_with_consumption_includes(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """The contract page lists each entitlement snapshot, its dimensions and units, and what holds now;
    a pay-as-you-go contract says it includes nothing."""
    engine = app.extensions["marketsync"].engine
    with Session(engine) as session:
        row = session.get(ContractRow, seeded.canceled)
        row.entitlements = [{"effective_at": "2026-01-01T00:00:00+00:00", "included": {"usage_cost": 1000},
                             "source": "aws"},
                            {"effective_at": "2026-02-01T00:00:00+00:00", "included": {"usage_cost": 1500},
                             "source": "aws"}]
        session.add(row)
        session.commit()
    html = _html(ops_client.get(f"/ops/contracts/{seeded.canceled}"))
    assert "Included usage" in html and "<td class=\"num\">1000</td>" in html
    assert "Now: <span class=\"mono\">usage_cost</span> 1500" in html
    assert "Pay-as-you-go" in _html(ops_client.get(f"/ops/contracts/{seeded.acme}"))
