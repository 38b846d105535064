"""Running plan migrations on SQLite and PostgreSQL: a worker process killed mid-chunk (SIGKILL,
before its commit) leaves nothing half-applied and the migration resumes, and so do a cancel's
reverts; chunk runs report progress; concurrent cancels cancel once; the ``marketsync migrate``
command (dry run and real) with its progress bar."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from billing_core import SqlMetricRepository, SqlSubscriptions, create_metric
from billing_core.plan_migrations import EffectiveTime, Overrides, migrate_subscription
from billing_core.service_migrations import MigrationRequest
from billing_core.subscriptions import create_subscription
from tests.billing_core.helpers import t
from tests.billing_core.test_service_migrations import NOW, PLAN, engine  # noqa: F401 - the fixture
from worker import plan_migrations
from worker.cli import main
from worker.db import session_scope

ROOT = Path(__file__).resolve().parents[2]
MANY = [f"m{n:03d}" for n in range(30)]


@pytest.fixture
def many(engine: Engine) -> Engine:  # noqa: F811
    with session_scope(engine) as s:
        for n, sid in enumerate(MANY):
            SqlSubscriptions(s).add(create_subscription(id=sid, customer_id="c1", plan=PLAN, version=1,
                                                        start=t(2025, 1, 1 + n % 20), now=t(2025, 1, 1)))
    return engine


def _all(engine: Engine) -> dict:
    with session_scope(engine) as s:
        return SqlSubscriptions(s).get_many(MANY + ["s1", "s2", "s3", "s4", "s5"])


_KILLED_WORKER = textwrap.dedent("""
    import sys, time
    from datetime import datetime, timezone
    from billing_core import service_migrations
    from worker.db import build_engine, session_scope
    engine = build_engine(sys.argv[1])
    now = datetime.fromisoformat(sys.argv[3])
    step = getattr(service_migrations, sys.argv[4] if len(sys.argv) > 4 else "migrate_chunk")
    with session_scope(engine) as session:
        step(session, sys.argv[2], limit=1000, now=now)
        session.flush()
        print("applied, not committed", flush=True)
        time.sleep(60)
""")


def _kill_mid_chunk(engine: Engine, migration_id: str, step: str = "migrate_chunk") -> None:
    """Run one chunk of ``step`` in a worker process and SIGKILL it after its writes, before its commit."""
    worker = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, str(engine.url.render_as_string(hide_password=False)),
                               migration_id, NOW.isoformat(), step], cwd=ROOT, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert worker.stdout is not None and worker.stdout.readline().strip() == b"applied, not committed"
    worker.send_signal(signal.SIGKILL)
    worker.wait()


@pytest.mark.postgres
def test_a_worker_killed_mid_chunk_leaves_nothing_and_the_migration_resumes(many: Engine) -> None:
    """A worker SIGKILLed holding an applied, uncommitted chunk leaves nothing of it; the migration resumes to the pure edits."""
    before = _all(many)
    migration = plan_migrations.start(many, "plan1", MigrationRequest(to_version=2), now=NOW, migration_id="mig1")
    # One chunk commits, then a worker dies holding the next one.
    progress = []
    plan_migrations.run(many, "mig1", now_fn=lambda: NOW, chunk=10, budget=0, on_progress=progress.append)
    assert [m.done for m in progress] == [10]
    _kill_mid_chunk(many, "mig1")
    assert plan_migrations.get(many, "plan1", "mig1").done == 10
    # Resume: every subscription moves exactly once, to the timeline a from-scratch edit gives.
    done = plan_migrations.run(many, "mig1", now_fn=lambda: NOW, chunk=7, budget=None)
    assert done.total == migration.total == 35 and done.counts.get("pending", 0) == 0
    after = _all(many)
    for sid, sub in before.items():
        expected = migrate_subscription(sub, PLAN, 2, from_versions={1}, effective_time=EffectiveTime.END_OF_INVOICE,
                                        overrides=Overrides.KEEP, now=NOW, migration_id="mig1").subscription
        assert after[sid].intervals == (expected or sub).intervals
        assert [e.kind for e in after[sid].edits].count("plan_migration") <= 1


@pytest.mark.postgres
def test_marketsync_migrate_dry_run_then_real(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """marketsync migrate prints a dry run without writing, then migrates with a progress bar and lists conflicts."""
    monkeypatch.setenv("DATABASE_URL", engine.url.render_as_string(hide_password=False))
    with session_scope(engine) as s:
        create_metric(SqlMetricRepository(s), metric_id="m1", name="Calls", now=t(2024, 12, 1),
                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
    runner = CliRunner()
    dry = runner.invoke(main, ["migrate", "plan1", "--to", "2", "--effective", "2025-01-01T00:00:00Z", "--dry-run",
                               "--subscription", "s1", "--subscription", "s2"])
    assert dry.exit_code == 0, dry.output
    assert "s1  migrated" in dry.output and "2 subscription(s)" in dry.output
    with session_scope(engine) as s:
        assert SqlSubscriptions(s).get("s1").phases[-1].plan_version == 1
    real = runner.invoke(main, ["migrate", "plan1", "--to", "2", "--effective", "end_of_invoice"])
    assert real.exit_code == 0, real.output
    # s4 ended in 2025: not targeted by default; s5 is on version 2 already.
    assert "action_needed; 4 subscription(s), 2 migrated, 1 conflict(s), 1 skipped" in real.output
    assert "s3  conflict" in real.output
    bad = runner.invoke(main, ["migrate", "plan1", "--to", "2", "--effective", "soon"])
    assert bad.exit_code != 0 and "--effective" in bad.output
    missing = runner.invoke(main, ["migrate", "plan1", "--to", "7"])
    assert missing.exit_code == 1 and "to_version" in missing.output


@pytest.mark.postgres
def test_two_runs_of_one_migration_at_once_move_each_subscription_once(many: Engine) -> None:
    """Two workers running the same migration (a resume racing the original job) serialize on it."""
    from concurrent.futures import ThreadPoolExecutor

    before = _all(many)
    plan_migrations.start(many, "plan1", MigrationRequest(to_version=2), now=NOW, migration_id="mig1")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: plan_migrations.run(many, "mig1", now_fn=lambda: NOW, chunk=4,
                                                              budget=None), range(2)))
    assert {r.status for r in results} == {"action_needed"}
    after = _all(many)
    for sid in before:
        assert [e.kind for e in after[sid].edits].count("plan_migration") <= 1
    assert plan_migrations.get(many, "plan1", "mig1").counts == {"migrated": 32, "conflict": 1, "skipped": 2}


@pytest.mark.postgres
def test_a_cancel_during_a_run_stops_it_and_the_revert_undoes_what_ran(many: Engine) -> None:
    """A cancel between two chunks of a running worker: the worker's next chunk sees the migration
    canceled and stops; the revert run then undoes what ran; no scheduled edit is left behind."""
    import threading

    before = _all(many)
    plan_migrations.start(many, "plan1", MigrationRequest(to_version=2), now=NOW, migration_id="mig1")
    first_chunk, canceled_event = threading.Event(), threading.Event()
    result: list = []

    def between_chunks(_migration) -> None:  # type: ignore[no-untyped-def]
        first_chunk.set()
        canceled_event.wait(30)

    def worker() -> None:
        result.append(plan_migrations.run(many, "mig1", now_fn=lambda: NOW, chunk=3, budget=None,
                                          on_progress=between_chunks))
    thread = threading.Thread(target=worker)
    thread.start()
    assert first_chunk.wait(30)
    canceled = plan_migrations.cancel(many, "plan1", "mig1", now=NOW)
    canceled_event.set()
    thread.join(30)
    assert result[0].status == "canceled"
    assert (canceled.counts, canceled.to_revert) == ({"migrated": 3, "canceled": 32}, 3)
    reverted = plan_migrations.revert(many, "mig1", now_fn=lambda: NOW, budget=None)
    assert (reverted.counts, reverted.to_revert) == ({"reverted": 3, "canceled": 32}, 0)
    after = _all(many)
    for sid, sub in before.items():
        assert (after[sid].intervals, after[sid].phases) == (sub.intervals, sub.phases)


def _migrated(engine: Engine) -> dict:
    """Start and run a migration of every subscription (each instant after NOW); return the timelines before."""
    before = _all(engine)
    plan_migrations.start(engine, "plan1", MigrationRequest(to_version=2), now=NOW, migration_id="mig1")
    plan_migrations.run(engine, "mig1", now_fn=lambda: NOW, budget=None)
    return before


def _reverted_once(engine: Engine, before: dict) -> None:
    after = _all(engine)
    for sid, sub in before.items():
        assert (after[sid].intervals, after[sid].phases) == (sub.intervals, sub.phases)
        kinds = [e.kind for e in after[sid].edits]
        assert kinds.count("plan_migration_reverted") == kinds.count("plan_migration") <= 1


@pytest.mark.postgres
def test_a_revert_worker_killed_between_and_mid_chunk_resumes_and_reverts_each_once(many: Engine) -> None:
    """A revert run stopped by its budget after one chunk, then a worker SIGKILLed holding an applied,
    uncommitted revert chunk: nothing of that chunk stays, and the resumed run reverts each edit once."""
    before = _migrated(many)
    canceled = plan_migrations.cancel(many, "plan1", "mig1", now=NOW)
    assert (canceled.to_revert, canceled.reverts) == (33, 33)
    progress: list = []
    first = plan_migrations.revert(many, "mig1", now_fn=lambda: NOW, chunk=10, budget=0, on_progress=progress.append)
    assert [m.to_revert for m in progress] == [23] and first.counts["reverted"] == 10
    _kill_mid_chunk(many, "mig1", "revert_chunk")
    assert plan_migrations.get(many, "plan1", "mig1").to_revert == 23
    assert plan_migrations.reverting_migrations(many) == ["mig1"]  # what the cron sweep resumes
    done = plan_migrations.revert(many, "mig1", now_fn=lambda: NOW, chunk=7, budget=None)
    assert (done.counts, done.to_revert) == ({"reverted": 33, "skipped": 2}, 0)
    assert plan_migrations.reverting_migrations(many) == []
    _reverted_once(many, before)


@pytest.mark.postgres
def test_two_cancels_at_once_cancel_once_and_each_edit_is_reverted_once(many: Engine) -> None:
    """Two cancel requests racing (each followed by its revert run): one cancels, the other is refused
    as already canceled; the two revert runs together revert every edit exactly once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from billing_core.errors import Conflict

    before = _migrated(many)
    ready = threading.Barrier(2)

    def request(_: int) -> str:
        ready.wait(10)
        try:
            plan_migrations.cancel(many, "plan1", "mig1", now=NOW)
            answer = "canceled"
        except Conflict:
            answer = "conflict"
        plan_migrations.revert(many, "mig1", now_fn=lambda: NOW, chunk=4, budget=None)
        return answer

    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(request, range(2)))
    assert answers == ["canceled", "conflict"]
    done = plan_migrations.get(many, "plan1", "mig1")
    assert (done.status, done.counts, done.to_revert) == ("canceled", {"reverted": 33, "skipped": 2}, 0)
    _reverted_once(many, before)


@pytest.mark.postgres
def test_a_revert_run_racing_the_per_subscription_safety_check_reverts_each_edit_once(many: Engine) -> None:
    """A revert run and the per-subscription check invoices run (``revert_owed``, which locks only the
    subscription) racing over the same edits revert each exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    from billing_core import service_migrations

    before = _migrated(many)
    plan_migrations.cancel(many, "plan1", "mig1", now=NOW)

    def check_each(_: int) -> int:
        reverted = 0
        for sid in reversed(sorted(before)):
            with session_scope(many) as session:
                reverted += service_migrations.revert_owed(session, [sid], now=NOW)
        return reverted

    with ThreadPoolExecutor(2) as pool:
        run = pool.submit(plan_migrations.revert, many, "mig1", now_fn=lambda: NOW, chunk=3, budget=None)
        checked = pool.submit(check_each, 0)
        run.result(60)
        by_check = checked.result(60)
    done = plan_migrations.get(many, "plan1", "mig1")
    assert (done.counts, done.to_revert) == ({"reverted": 33, "skipped": 2}, 0) and 0 <= by_check <= 33
    _reverted_once(many, before)
