"""Alert evaluation as usage arrives: the subscriptions whose customers' usage changed since the
last evaluation, their current period read through the incremental usage source, thresholds fired.

After an ingest the API signals an evaluation (``queueing.alert_signal``); the cron sweeps every
minute for changes that came another way (amendments, backfills) or whose signal was lost. One
evaluation at a time (a Redis lock). Each takes the change-log position *before* it reads usage
(``billing_core.changed_customers``), so a change committed during the read is seen by the next
one, and stores that position with the firings in one transaction: a crash before the commit
evaluates the same changes again, and a firing is stored once per threshold and period whatever
runs twice. The usage read is the fragments' (``billing_core.usage_source``): the buckets that
changed since they were last computed and the raw edge — never the whole period from events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billing_core import (
    OutOfRange, SqlAlerts, SqlSubscriptions, billing_period, changed_customers, costs_each, service_alerts,
    usage_source, watermark, write_lock,
)
from worker import queueing
from worker.db import session_scope
from worker.logs import get_logger

log = get_logger("marketsync.alerting")

_LOCK = "marketsync:alerts:evaluate"


def evaluate(runtime: Any, *, now: datetime) -> dict[str, int]:
    """Evaluate the alerts of every subscription whose usage changed since the last evaluation."""
    queueing.clear_signal(runtime, queueing.ALERTS_FLAG)
    lock = runtime.redis.lock(_LOCK, timeout=300, blocking_timeout=60)
    if not lock.acquire():
        queueing.signal_alerts(runtime)
        return {"evaluated": 0, "fired": 0}
    try:
        return evaluate_changes(runtime.engine, now=now)
    finally:
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - the lock expired: nothing to release
            pass


def evaluate_changes(engine: Any, *, now: datetime) -> dict[str, int]:
    """The evaluation itself (callers hold the evaluator's lock)."""
    with session_scope(engine) as session:
        alerts_repo = SqlAlerts(session)
        position = alerts_repo.position()
        sub_ids, plan_ids = alerts_repo.scoped()
    if not sub_ids and not plan_ids:
        # Nothing watches usage: no read, and no write under ingest's feet. The position is
        # forgotten (once), so the first evaluation after an alert appears looks at every watched
        # subscription rather than at every change since.
        if position is not None:
            with session_scope(engine) as session:
                SqlAlerts(session).set_position(None)
        return {"evaluated": 0, "fired": 0}
    changed: set[str] | None
    if position is None:  # the first evaluation looks at every watched subscription
        newest, changed = watermark(engine), None
    else:
        newest, changed = changed_customers(engine, position)
    subs: list[Any] = []
    if changed != set():
        with session_scope(engine) as session:
            repo = SqlSubscriptions(session)
            if changed is None:
                candidates = list(repo.get_many(sub_ids).values()) + (repo.all_active(now) if plan_ids else [])
            else:  # only the changed customers' subscriptions are read
                candidates = repo.active_of_customers(changed, now)
        subs = list({s.id: s for s in candidates if s.status(now) == "active"
                     and (s.id in sub_ids or s.phase_at(now).plan_id in plan_ids)}.values())
    costs = {}
    if subs:
        results = costs_each([(s, billing_period(s, now).start, now) for s in subs], usage_source(engine))
        for sub, result in zip(subs, results):
            if isinstance(result, OutOfRange):
                log.warning("alert_cost_error", subscription=sub.id, error=str(result))
            else:
                costs[sub.id] = result
    with write_lock(engine), session_scope(engine) as session:
        repo = SqlAlerts(session)
        fired: list[str] = []
        if costs:
            alerts = repo.for_subscriptions(sorted(sub_ids), sorted(plan_ids))
            fired = service_alerts.evaluate(session, alerts, subs, costs, now=now)
        repo.set_position(max(newest, position or 0))
    if fired:
        log.info("alerts_fired", events=len(fired), subscriptions=len(costs))
    return {"evaluated": len(costs), "fired": len(fired)}
