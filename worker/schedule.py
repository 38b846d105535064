"""The ``rq cron`` schedule (``rq cron worker/schedule.py``): periodic jobs of the cron process."""

from __future__ import annotations

from rq import cron

from config import Settings
from worker import jobs

settings = Settings.from_env()

# Liveness of the cron process (shown on the dashboard).
cron.register(jobs.record_cron_heartbeat, queue_name="urgent", interval=60)
# Deliveries stored while Redis was down, or whose worker died, are enqueued again.
cron.register(jobs.sweep_inbox, queue_name="contracts", interval=60)
# Every hour at HOURLY_SYNC_MINUTE: one report job per active mapped contract.
cron.register(jobs.run_hourly_sync, queue_name="sync", cron=f"{settings.HOURLY_SYNC_MINUTE} * * * *")
# Reports whose worker died between the ledger write and the answer are sent again.
cron.register(jobs.sweep_ledger, queue_name="urgent", interval=120)
# Canceled contracts not closed 15 minutes before the marketplace's deadline raise an alert.
cron.register(jobs.watch_deadlines, queue_name="urgent", interval=60)
# Usage that arrives for closed contracts is kept and flagged as unbillable.
cron.register(jobs.flag_unbillable_usage, queue_name="sync", interval=300)
