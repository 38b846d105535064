"""``/v1/plans/{plan_id}/migrations`` through the Flask test client, run by a real RQ worker:
start, list, fetch with outcomes, cancel (answered at once, reverted by chained jobs or the cron's
sweep), dry run, replace_adjustments, and bad input as 400s."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing_core.customers import create_customer
from billing_core.events import ingest_events
from billing_core.metrics import create_metric
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.events import SqlEventStore
from billing_core.persistence.metrics import SqlMetricRepository
from billing_core import MigrationRequest
from tests.conftest import run_jobs
from worker.db import session_scope

NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)


@pytest.fixture
def plan(app, client, auth_headers):  # type: ignore[no-untyped-def]
    """A customer, a metric, plan v1 (calls 0.10, fee 30.00, 10% off the fee) and v2 (calls 0.20, fee
    edited to 60.00, the discount edited to 20%), three subscriptions on v1; returns the plan JSON."""
    app.extensions["billing_clock"] = lambda: NOW
    engine = app.extensions["marketsync"].engine
    with session_scope(engine) as s:
        create_customer(SqlCustomerRepository(s), customer_id="cus_1", name="Acme", email="ops@acme.test",
                        currency="USD", now=datetime(2026, 1, 1, tzinfo=UTC))
        create_metric(SqlMetricRepository(s), metric_id="m_calls", name="Calls", now=datetime(2026, 1, 1, tzinfo=UTC),
                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
        ingest_events(SqlEventStore(s), [
            {"idempotency_key": f"e{i}", "customer_id": "cus_1", "event_name": "api_call",
             "timestamp": datetime(2026, 3, 10, tzinfo=UTC).isoformat(), "properties": {}} for i in range(10)], now=NOW)
    item = client.post("/v1/items", json={"name": "API"}, headers=auth_headers).json["id"]
    body = {"name": "Pro", "currency": "USD", "prices": [
        {"price": {"name": "Calls", "item_id": item, "model_type": "unit", "cadence": "monthly",
                   "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "0.10"}}},
        {"price": {"name": "Fee", "item_id": item, "model_type": "unit", "cadence": "monthly",
                   "billed_in_advance": True, "fixed_price_quantity": 1, "unit_config": {"unit_amount": "30.00"}}}],
        "adjustments": [{"adjustment": {"adjustment_type": "percentage_discount", "percentage_discount": 0.1,
                                        "applies_to_price_ids": []}}]}
    v1 = client.post("/v1/plans", json=body, headers=auth_headers).json
    calls, fee = v1["prices"]
    v2 = client.post(f"/v1/plans/{v1['id']}/versions", headers=auth_headers, json={
        "version": 2,
        "replace_prices": [
            {"replaces_price_id": calls["id"], "price": {"name": "Calls", "item_id": item, "model_type": "unit",
                                                          "cadence": "monthly", "billable_metric_id": "m_calls",
                                                          "unit_config": {"unit_amount": "0.20"}}},
            {"replaces_price_id": fee["id"], "price": {"name": "Fee", "item_id": item, "model_type": "unit",
                                                        "cadence": "monthly", "billed_in_advance": True,
                                                        "fixed_price_quantity": 1, "unit_config": {"unit_amount": "60.00"}}}],
        "replace_adjustments": [{"replaces_adjustment_id": v1["adjustments"][0]["id"], "adjustment": {
            "adjustment_type": "percentage_discount", "percentage_discount": 0.2, "applies_to_price_ids": []}}]})
    assert v2.status_code == 201, v2.json
    for start in ("2026-03-01T00:00:00Z", "2026-03-05T00:00:00Z", "2026-03-01T00:00:00Z"):
        created = client.post("/v1/subscriptions", headers=auth_headers, json={
            "customer_id": "cus_1", "plan_id": v1["id"], "plan_version_number": 1, "start_date": start})
        assert created.status_code == 201, created.json
    return v1


def test_version_lineage_is_in_the_version_json(client, auth_headers, plan):  # type: ignore[no-untyped-def]
    """The version JSON carries the lineage and the replaced price and adjustment ids."""
    v2 = client.get(f"/v1/plans/{plan['id']}/versions/2", headers=auth_headers).json
    assert sorted((e["kind"], e["change"]) for e in v2["lineage"]) == [
        ("adjustment", "edited"), ("price", "edited"), ("price", "edited")]
    assert {p["replaces_price_id"] for p in v2["prices"]} == {p["id"] for p in plan["prices"]}
    assert v2["adjustments"][0]["replaces_adjustment_id"] == plan["adjustments"][0]["id"]


def test_dry_run_prices_the_current_period_and_writes_nothing(client, auth_headers, plan):  # type: ignore[no-untyped-def]
    """POST with dry_run answers 200 with per-subscription totals old vs new and their sums, and stores no migration."""
    answer = client.post(f"/v1/plans/{plan['id']}/migrations", headers=auth_headers, json={
        "to_version": 2, "effective_time": "2026-03-01T00:00:00Z", "dry_run": True})
    assert answer.status_code == 200, answer.json
    lines = {line["subscription_id"]: line for line in answer.json["subscriptions"]}
    assert len(lines) == 3
    # The customer's 10 calls count on each subscription: 0.90 × (1.00 + 30.00) → 0.80 × (2.00 + 60.00).
    first = next(line for line in lines.values() if line["effective_time"] == "2026-03-01T00:00:00Z")
    assert (first["old_total"], first["new_total"], first["difference"]) == ("27.90", "49.60", "21.70")
    assert answer.json["totals"]["difference"] == format(sum(
        __import__("decimal").Decimal(line["difference"]) for line in lines.values()), "f")
    assert client.get(f"/v1/plans/{plan['id']}/migrations", headers=auth_headers).json["data"] == []


def test_migrate_list_fetch_and_cancel(app, client, auth_headers, plan):  # type: ignore[no-untyped-def]
    """A migration starts (201), a real RQ worker runs it, list and fetch show it with outcomes, previews show new prices, cancel reverts."""
    started = client.post(f"/v1/plans/{plan['id']}/migrations", headers=auth_headers, json={
        "to_version": 2, "effective_time": "end_of_invoice"})
    assert started.status_code == 201, started.json
    migration = started.json
    assert (migration["status"], migration["effective_time"], migration["counts"]["pending"]) == (
        "not_started", "end_of_invoice", 3)
    run_jobs(app)
    fetched = client.get(f"/v1/plans/{plan['id']}/migrations/{migration['id']}", headers=auth_headers).json
    assert fetched["status"] == "completed" and fetched["counts"]["migrated"] == 3
    assert sorted(o["effective_time"] for o in fetched["subscriptions"]) == [
        "2026-04-01T00:00:00Z", "2026-04-01T00:00:00Z", "2026-04-05T00:00:00Z"]
    listed = client.get(f"/v1/plans/{plan['id']}/migrations", headers=auth_headers).json["data"]
    assert [m["id"] for m in listed] == [migration["id"]]
    sub_id = next(o["subscription_id"] for o in fetched["subscriptions"] if o["effective_time"].startswith("2026-04-01"))
    sub = client.get(f"/v1/subscriptions/{sub_id}", headers=auth_headers).json
    assert sorted({i["plan_version"] for i in sub["price_intervals"]}) == [1, 2]
    # Previews show the new pricing ahead of the effective date: April's fee in advance at 60.00 less 20 %.
    def april_costs() -> str:
        return client.get(f"/v1/subscriptions/{sub_id}/costs?timeframe_start=2026-04-01T00:00:00Z"
                          "&timeframe_end=2026-04-02T00:00:00Z", headers=auth_headers).json["data"][0]["total"]
    assert april_costs() == "48.00"

    canceled = client.post(f"/v1/plans/{plan['id']}/migrations/{migration['id']}/cancel", headers=auth_headers)
    assert canceled.status_code == 200, canceled.json
    assert canceled.json["status"] == "canceled"
    assert (canceled.json["counts"]["reverted"], canceled.json["counts"]["to_revert"]) == (0, 3)
    run_jobs(app)  # the revert job
    fetched = client.get(f"/v1/plans/{plan['id']}/migrations/{migration['id']}", headers=auth_headers).json
    assert (fetched["counts"]["reverted"], fetched["counts"]["to_revert"], fetched["counts"]["kept"]) == (3, 0, 0)
    assert {o["outcome"] for o in fetched["subscriptions"]} == {"reverted"}
    sub = client.get(f"/v1/subscriptions/{sub_id}", headers=auth_headers).json
    assert {i["plan_version"] for i in sub["price_intervals"]} == {1}
    assert april_costs() == "27.00"
    again = client.post(f"/v1/plans/{plan['id']}/migrations/{migration['id']}/cancel", headers=auth_headers)
    assert again.status_code == 409


def test_a_migration_runs_as_a_chain_of_short_jobs_and_the_cron_resumes_a_lost_one(  # type: ignore[no-untyped-def]
        app, client, auth_headers, plan, monkeypatch):
    """A migration runs as a chain of jobs, each enqueuing the next; the cron's sweep resumes one whose job was lost."""
    from worker import jobs, plan_migrations

    # Chunks of one subscription, one chunk per job: each job enqueues the next.
    monkeypatch.setattr(plan_migrations, "CHUNK", 1)
    monkeypatch.setattr(plan_migrations, "RUN_BUDGET", 0)
    started = client.post(f"/v1/plans/{plan['id']}/migrations", headers=auth_headers, json={"to_version": 2}).json
    run_jobs(app)
    done = client.get(f"/v1/plans/{plan['id']}/migrations/{started['id']}", headers=auth_headers).json
    assert done["status"] == "completed" and done["counts"]["migrated"] == 3
    # A migration whose job never ran (Redis was down when it was started): the cron's sweep resumes it.
    engine = app.extensions["marketsync"].engine
    lost = plan_migrations.start(engine, plan["id"], MigrationRequest(to_version=1, from_versions=[2]), now=NOW,
                                 migration_id="migration_lost")
    assert lost.status == "not_started"
    app.extensions["marketsync"].queue("sync").enqueue(jobs.resume_plan_migrations)
    run_jobs(app)
    assert plan_migrations.get(engine, plan["id"], "migration_lost").status == "completed"


def test_cancel_answers_before_reverting_and_chained_jobs_revert_every_edit_once(  # type: ignore[no-untyped-def]
        app, client, auth_headers, plan, monkeypatch):
    """Canceling a 50-subscription migration answers at once with every edit still owed a revert (none
    reverted in the request); revert jobs of 7 subscriptions each, one chunk per job, then revert all, once."""
    from billing_core import SqlCatalog, SqlSubscriptions
    from billing_core.subscriptions import create_subscription
    from worker import plan_migrations

    engine = app.extensions["marketsync"].engine
    with session_scope(engine) as s:
        v1 = SqlCatalog(s).get_plan(plan["id"])
        for n in range(47):
            SqlSubscriptions(s).add(create_subscription(
                id=f"sub_many_{n:02d}", customer_id="cus_1", plan=v1, version=1,
                start=datetime(2026, 3, 1 + n % 20, tzinfo=UTC), now=NOW))
    started = client.post(f"/v1/plans/{plan['id']}/migrations", headers=auth_headers, json={"to_version": 2}).json
    run_jobs(app)
    migrated = plan_migrations.get(engine, plan["id"], started["id"])
    assert (migrated.status, migrated.counts) == ("completed", {"migrated": 50})
    monkeypatch.setattr(plan_migrations, "CHUNK", 7)
    monkeypatch.setattr(plan_migrations, "RUN_BUDGET", 0)

    answer = client.post(f"/v1/plans/{plan['id']}/migrations/{started['id']}/cancel", headers=auth_headers)
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "canceled"
    assert {k: answer.json["counts"][k] for k in ("migrated", "reverted", "to_revert", "kept")} == {
        "migrated": 50, "reverted": 0, "to_revert": 50, "kept": 0}
    with session_scope(engine) as s:  # nothing reverted yet: every timeline still has the new version
        subs = SqlSubscriptions(s).get_many([f"sub_many_{n:02d}" for n in range(47)])
    assert all(sub.phases[-1].plan_version == 2 for sub in subs.values())

    run_jobs(app)
    done = client.get(f"/v1/plans/{plan['id']}/migrations/{started['id']}", headers=auth_headers).json
    assert {k: done["counts"][k] for k in ("migrated", "reverted", "to_revert", "kept")} == {
        "migrated": 0, "reverted": 50, "to_revert": 0, "kept": 0}
    with session_scope(engine) as s:
        subs = SqlSubscriptions(s).get_many([o["subscription_id"] for o in done["subscriptions"]])
    for sub in subs.values():
        assert {p.plan_version for p in sub.phases} == {1}
        assert [e.kind for e in sub.edits].count("plan_migration_reverted") == 1
    finished = app.extensions["marketsync"].queue("sync").finished_job_registry.get_job_ids()
    reverts = sorted(j for j in finished if j.startswith(f"plan-migration-revert-{started['id']}-"))
    assert len(reverts) == 8  # ceil(50 / 7) chunks, one per job, each enqueuing the next


def test_the_cron_sweep_resumes_a_cancel_whose_revert_job_was_lost(app, client, auth_headers, plan):  # type: ignore[no-untyped-def]
    """A cancel whose revert job never ran (Redis was down) is reverted by the cron's resume sweep."""
    from worker import jobs, plan_migrations

    started = client.post(f"/v1/plans/{plan['id']}/migrations", headers=auth_headers, json={"to_version": 2}).json
    run_jobs(app)
    engine = app.extensions["marketsync"].engine
    lost = plan_migrations.cancel(engine, plan["id"], started["id"], now=NOW)  # no job enqueued
    assert lost.to_revert == 3
    run_jobs(app)
    assert plan_migrations.get(engine, plan["id"], started["id"]).to_revert == 3
    app.extensions["marketsync"].queue("sync").enqueue(jobs.resume_plan_migrations)
    run_jobs(app)
    done = plan_migrations.get(engine, plan["id"], started["id"])
    assert (done.counts, done.to_revert) == ({"reverted": 3}, 0)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "to_version"),
    ({"to_version": 9}, "to_version"),
    ({"to_version": 2, "effective_time": "soon"}, "effective_time"),
    ({"to_version": 2, "overrides": "merge"}, "overrides"),
    ({"to_version": 2, "from_versions": ["1"]}, "from_versions[0]"),
    ({"to_version": 2, "subscription_ids": ["sub_nope"]}, "subscription_ids"),
    ({"to_version": 2, "dry_run": "yes"}, "dry_run"),
    ({"to_version": 2, "colour": "red"}, "colour"),
])
def test_bad_requests_are_400_naming_the_field(client, auth_headers, plan, body, field):  # type: ignore[no-untyped-def]
    """Malformed migration requests are 400s naming the field and store nothing."""
    answer = client.post(f"/v1/plans/{plan['id']}/migrations", headers=auth_headers, json=body)
    assert answer.status_code == 400, answer.json
    assert field in answer.json["detail"] if "detail" in answer.json else field in str(answer.json)
    assert client.get(f"/v1/plans/{plan['id']}/migrations", headers=auth_headers).json["data"] == []


def test_unknown_plan_and_migration_are_404(client, auth_headers, plan):  # type: ignore[no-untyped-def]
    """An unknown plan or migration is a 404 on list, fetch and cancel."""
    assert client.get("/v1/plans/plan_nope/migrations", headers=auth_headers).status_code == 404
    assert client.get(f"/v1/plans/{plan['id']}/migrations/nope", headers=auth_headers).status_code == 404
    assert client.post(f"/v1/plans/{plan['id']}/migrations/nope/cancel", headers=auth_headers).status_code == 404
