"""The dashboard's migrations page (status, progress, conflicts with reasons, cancel and the revert's
progress) and a contract's subscription version history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from billing_core import SqlCatalog, SqlSubscriptions
from billing_core.plans import add_version
from billing_core.service_migrations import MigrationRequest
from billing_core.subscriptions import ReplacePrice, create_subscription
from tests.billing_core.helpers import unit
from tests.conftest import run_jobs
from tests.dashboard.conftest import Seeded, csrf_of
from worker import plan_migrations


def _html(response: Any) -> str:
    return response.get_data(as_text=True)


def _migrate(app: Any, seeded: Seeded) -> str:
    engine = app.extensions["marketsync"].engine
    now = datetime.now(UTC)
    with Session(engine) as session:
        catalog = SqlCatalog(session)
        plan = catalog.get_plan("plan_sync", for_update=True)
        catalog.save_plan(add_version(plan, prices=[unit("0.002", id="plan_sync_p2", key="plan_sync_p",
                                                         metric="m_tokens")], now=now))
        customer = SqlSubscriptions(session).get(seeded.spare_subscription).customer_id
        SqlSubscriptions(session).add(create_subscription(
            id="sub_override", customer_id=customer, plan=plan, start=now, now=now,
            replace_prices=[ReplacePrice("plan_sync_p", unit("0.0005", id="negotiated", key="plan_sync_p",
                                                             metric="m_tokens"))]))
        session.commit()
    migration = plan_migrations.start(engine, "plan_sync", MigrationRequest(to_version=2), now=now,
                                      migration_id="migration_dash")
    plan_migrations.run(engine, migration.id, now_fn=lambda: now, budget=None)
    return migration.id


def test_migrations_page_shows_progress_conflicts_and_cancels(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """The migrations page shows status, progress and each conflict's reason; its CSRF-protected button
    cancels at once and the page shows "reverting N of M" until the revert job has run."""
    migration_id = _migrate(app, seeded)
    html = _html(ops_client.get("/ops/migrations"))
    for text in (migration_id, "plan_sync", "action_needed", "end_of_invoice", "<progress",
                 "sub_override", "the subscription&#39;s override negotiated is kept", "Cancel"):
        assert text in html, text
    assert ops_client.post(f"/ops/migrations/{migration_id}/cancel", data={}).status_code == 400  # no CSRF
    answer = ops_client.post(f"/ops/migrations/{migration_id}/cancel", data={"csrf_token": csrf_of(html)},
                             follow_redirects=True)
    assert answer.status_code == 200
    html = _html(answer)
    assert f"Migration {migration_id} canceled" in html and "canceled" in html
    owed = plan_migrations.get(app.extensions["marketsync"].engine, None, migration_id)
    assert owed.to_revert > 0 and f"reverting 0 of {owed.reverts}" in html  # the revert runs as a job
    run_jobs(app)
    reverted = _html(ops_client.get("/ops/migrations"))
    assert "reverting" not in reverted and f'<td class="num">{owed.reverts}</td>' in reverted
    again = ops_client.post(f"/ops/migrations/{migration_id}/cancel", data={"csrf_token": csrf_of(html)},
                            follow_redirects=True)
    assert "already canceled" in _html(again)
    missing = ops_client.post("/ops/migrations/nope/cancel", data={"csrf_token": csrf_of(html)})
    assert missing.status_code == 404


def test_a_contract_shows_its_subscription_version_history(ops_client: Any, seeded: Seeded, app: Any) -> None:
    """A contract's page lists its subscription's plan versions and migration outcomes."""
    migration_id = _migrate(app, seeded)
    html = _html(ops_client.get(f"/ops/contracts/{seeded.acme}"))
    assert "Version history" in html and "version 1" in html and "version 2" in html
    assert migration_id in html and "migrated" in html
