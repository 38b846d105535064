"""The cron schedule: registered only when ``rq cron`` loads it, with the settings read then."""

from __future__ import annotations

import importlib

import pytest
from redis import Redis
from rq import cron

from config import Settings


def test_importing_the_schedule_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain import reads no settings and registers no job."""
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls, *a, **k: pytest.fail("settings read")))
    cron._job_data_registry.clear()
    importlib.reload(importlib.import_module("worker.schedule"))
    assert cron._job_data_registry == []


def test_rq_cron_loads_the_schedule_with_the_hourly_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rq cron worker/schedule.py`` registers the eleven periodic jobs, the hourly run at HOURLY_SYNC_MINUTE."""
    configured = Settings.from_env({"HOURLY_SYNC_MINUTE": "17"})
    monkeypatch.setattr(Settings, "from_env", classmethod(lambda cls, *a, **k: configured))
    scheduler = cron.CronScheduler(connection=Redis(host="127.0.0.1", port=1))  # never contacted
    scheduler.load_config_from_file("worker/schedule.py")
    registered = {job.func.__name__: job for job in scheduler._cron_jobs}
    assert set(registered) == {"record_cron_heartbeat", "sweep_inbox", "run_hourly_sync", "sweep_ledger",
                               "watch_deadlines", "flag_unbillable_usage", "resume_plan_migrations", "sweep_webhooks",
                               "evaluate_alerts", "note_ended_subscriptions", "prune_webhooks"}
    assert registered["run_hourly_sync"].cron == "17 * * * *"
