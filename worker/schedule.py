"""The ``rq cron`` schedule (``rq cron worker/schedule.py``): periodic jobs of the cron process.

``register_jobs(settings)`` registers them. ``rq cron`` loads this file by importing it and then
takes what the import registered (``CronScheduler.load_config_from_file``), so the module calls
``register_jobs`` with the settings read then — but only when that loader is the importer: any
other import (the worker, the tests) reads no settings and registers nothing.
"""

from __future__ import annotations

import sys

from rq import cron

from config import Settings
from worker import jobs


def register_jobs(settings: Settings) -> None:
    """Register every periodic job with ``rq.cron`` (the hourly run at ``HOURLY_SYNC_MINUTE``)."""
    # Liveness of the cron process (shown on the dashboard).
    cron.register(jobs.record_cron_heartbeat, queue_name="urgent", interval=60)
    # Deliveries stored while Redis was down, or whose worker died, are enqueued again.
    cron.register(jobs.sweep_inbox, queue_name="contracts", interval=60)
    # Every hour at HOURLY_SYNC_MINUTE: the hourly report of every active mapped contract.
    cron.register(jobs.run_hourly_sync, queue_name="sync", cron=f"{settings.HOURLY_SYNC_MINUTE} * * * *")
    # Reports whose worker died between the ledger write and the answer are sent again.
    cron.register(jobs.sweep_ledger, queue_name="urgent", interval=120)
    # Canceled contracts not closed 15 minutes before the marketplace's deadline raise an alert.
    cron.register(jobs.watch_deadlines, queue_name="urgent", interval=60)
    # Plan migrations whose job was lost (Redis down, a worker killed) resume.
    cron.register(jobs.resume_plan_migrations, queue_name="sync", interval=300)
    # Outbound webhooks whose retry came due, or whose signal was lost with Redis or a worker.
    cron.register(jobs.sweep_webhooks, queue_name="webhooks", interval=30)
    # Outbound deliveries finished more than WEBHOOK_RETENTION_DAYS ago, and their events, are deleted.
    cron.register(jobs.prune_webhooks, queue_name="webhooks", interval=3600)
    # Subscriptions whose scheduled end has passed: subscription.ended.
    cron.register(jobs.note_ended_subscriptions, queue_name="webhooks", interval=60)
    # Alerts over usage that changed another way than ingest (amendments, backfills), or whose signal was lost.
    cron.register(jobs.evaluate_alerts, queue_name="webhooks", interval=60)
    # Usage that arrives for closed contracts is kept and flagged as unbillable.
    cron.register(jobs.flag_unbillable_usage, queue_name="sync", interval=300)


def loaded_by_rq_cron() -> bool:
    """Tell whether ``rq cron``'s config loader is importing this module right now."""
    loader = cron.CronScheduler.load_config_from_file.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is loader:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


if loaded_by_rq_cron():
    register_jobs(Settings.from_env())
