"""Outbound webhooks: send the outbox's due deliveries, signed as Orb signs them, at least once.

Events and their deliveries are written by ``billing_core.service_outbox.emit`` in the
transaction of the change; this module only sends. A round (``send_due``) takes every enabled
endpoint with a delivery due and gives each its own thread, so a slow or dead endpoint never holds
another's deliveries back; an endpoint is sent by one round at a time across workers (a Redis lock).

- **Style**: an expanded endpoint gets the full objects stored with an Orb event (the subscription,
  the invoice, as of the change), a standard one its references (``OutboxEvent.payload_body``).
- **Signature**: headers ``X-Orb-Timestamp`` (ISO instant, taken at each attempt: the client refuses
  one older than five minutes) and ``X-Orb-Signature: v1=<hex HMAC-SHA256 of "v1:{timestamp}:{body}">``
  with the endpoint's secret — what the official client's ``webhooks.verify_signature`` checks.
- **Order**: deliveries of one ordering key (a subscription, a contract) go out in event order; one
  that is waiting for its retry holds back the later ones of its key, never those of other keys.
  An endpoint's deliveries go in waves of up to ``WAVE``, one after another, no two of one key in a
  wave (a failure holds back the key's later ones), each wave's answers recorded in one transaction.
- **Retries**: a non-2xx answer or a transport error is retried after ``BACKOFF`` (10 s doubling
  up to two hours) until the event is ``RETRY_WINDOW`` (26 h) old; then the delivery is ``failed``.
- **Auto-disable**: an endpoint that has failed without a single success for ``DISABLE_AFTER``
  (24 h) is disabled and ``webhook_endpoint.disabled`` is emitted (to the other endpoints); enabling
  it again sends what is pending. A manual replay makes a delivery pending and due now.
- **Signals during a round**: a round that finds an endpoint locked leaves a mark for it; the round
  holding the lock reads the due deliveries again when it sees the mark and, after letting go,
  signals a new round if a mark is left — a delivery committed mid-round never waits for the sweep.
- **Crash safety**: every attempt is recorded after its answer (a wave's in one transaction: one
  commit per wave, not per delivery); a worker killed in between sends that wave again (at least once). Redis lost: the cron sweep
  (``sweep_webhooks``) finds due deliveries in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Callable

import requests
from redis.exceptions import LockError
from sqlalchemy import event as sa_event

from billing_core import (
    OUTBOX_FLAG, Delivery, Endpoint, NotFound, OutboxEvent, SqlAlerts, SqlOutbox, emit, exact_json, from_micros, iso,
    service_migrations, service_outbox, to_micros, write_lock,
)
from worker import queueing
from worker.db import session_scope
from worker.logs import get_logger

log = get_logger("marketsync.outbound")

BACKOFF = (10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 7200)
RETRY_WINDOW = timedelta(hours=26)
DISABLE_AFTER = timedelta(hours=24)
TIMEOUT = (3.05, 5.0)  # connect, read: a slow endpoint costs its own thread at most this per attempt
BATCH = 500  # deliveries per endpoint per round
MAX_THREADS = 16
WAVE = 50  # deliveries of distinct ordering keys sent one after another, then recorded in one transaction
_LOCK = "marketsync:webhooks:endpoint:"
_AGAIN = "marketsync:webhooks:again:"  # a round found the endpoint locked: its holder looks again
# An endpoint's lock lives this long, so a killed worker holds its endpoint back for seconds, not for
# a whole batch. It is renewed before an attempt once RENEW_AFTER has passed since the last renewal:
# an attempt takes at most about 8 s (TIMEOUT), so the lock always outlives the attempt under way,
# and a fast endpoint's hundreds of attempts a second do not each wait on Redis.
LOCK_SECONDS = 15
RENEW_AFTER = LOCK_SECONDS - sum(TIMEOUT) - 2
ENDED_LOOKBACK = timedelta(hours=1)  # the first sweep looks this far back
_ENDED = "subscription_ended"


def backoff(attempts: int) -> timedelta:
    """Return the wait after the ``attempts``-th failed attempt (10 s doubling, at most 2 h)."""
    return timedelta(seconds=BACKOFF[min(attempts, len(BACKOFF)) - 1])


def payload(endpoint: Endpoint, event: OutboxEvent) -> str:
    """Return the JSON body sent to ``endpoint`` for ``event``, in the endpoint's payload style."""
    return exact_json(event.payload_body(endpoint.payload_style), separators=(",", ":"))


def sign(secret: str, body: str, timestamp: str) -> str:
    """Return the ``X-Orb-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"v1:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v1={digest}"


def session_for(url: str) -> requests.Session:
    """Return a round's HTTP session for an endpoint: its connections kept alive, and the environment's
    proxy and CA settings (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``...) read once for the
    round rather than at every request (that read took a fifth of each delivery)."""
    http = requests.Session()
    settings = http.merge_environment_settings(url, {}, None, None, None)
    http.trust_env = False
    http.proxies.update(settings.get("proxies") or {})
    http.verify = settings.get("verify", True)
    if settings.get("cert"):
        http.cert = settings["cert"]
    return http


def post(endpoint: Endpoint, body: str, *, now: datetime,
         http: requests.Session | None = None) -> tuple[int | None, str | None]:
    """POST ``body`` to the endpoint, signed; return (status code, error) — error None on a 2xx.
    ``http``: a round's session (``session_for``), so an endpoint that keeps connections alive is not
    reconnected each time."""
    timestamp = now.isoformat()
    headers = {"Content-Type": "application/json", "User-Agent": "marketsync-webhooks",
               "X-Orb-Timestamp": timestamp, "X-Orb-Signature": sign(endpoint.secret, body, timestamp)}
    try:
        answer = (http or requests).post(endpoint.url, data=body.encode(), headers=headers, timeout=TIMEOUT,
                                         allow_redirects=False)
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"
    if 200 <= answer.status_code < 300:
        return answer.status_code, None
    return answer.status_code, f"HTTP {answer.status_code}: {answer.text[:300]}"


def send_due(runtime: Any, *, now_fn: Callable[[], datetime]) -> dict[str, int]:
    """Send every due delivery of every enabled endpoint, one thread per endpoint."""
    queueing.clear_signal(runtime, queueing.WEBHOOKS_FLAG)
    with session_scope(runtime.engine) as session:
        endpoint_ids = SqlOutbox(session).due_endpoints(now_fn())
    totals = {"endpoints": len(endpoint_ids), "delivered": 0, "failed": 0, "more": 0}
    if not endpoint_ids:
        return totals
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(endpoint_ids)),
                            thread_name_prefix="marketsync-webhooks") as pool:
        for result in pool.map(lambda e: send_endpoint(runtime, e, now_fn=now_fn), endpoint_ids):
            for key in ("delivered", "failed", "more"):
                totals[key] += result[key]
    if totals["more"]:
        queueing.signal_webhooks(runtime)  # a full batch went out: the rest in the next round
    return totals


def send_endpoint(runtime: Any, endpoint_id: str, *, now_fn: Callable[[], datetime]) -> dict[str, int]:
    """Send one endpoint's due deliveries in order (under its lock); return counts.

    A round that finds the endpoint locked leaves a mark (``_AGAIN``) before it gives up; the
    round holding the lock reads the due deliveries again when it sees the mark, and after it lets
    the lock go signals a new round if a mark is left, so deliveries committed while a round is
    under way never wait for the cron's sweep.
    """
    counts = {"delivered": 0, "failed": 0, "more": 0}
    again = _AGAIN + endpoint_id
    runtime.redis.set(again, "1", ex=3600)  # before the lock: a holder sees it (above); outlives any round
    lock = runtime.redis.lock(_LOCK + endpoint_id, timeout=LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        return counts  # another round sends this endpoint now, and will look again
    renewed = time.monotonic()
    http: requests.Session | None = None
    try:
        sent = 0
        while sent < BATCH and runtime.redis.delete(again):  # this read sees what is due now
            with session_scope(runtime.engine) as session:
                outbox = SqlOutbox(session)
                try:
                    endpoint = outbox.get_endpoint(endpoint_id)
                except NotFound:
                    return counts  # deleted since the round listed it
                pending = outbox.pending(endpoint_id, now=now_fn(), limit=BATCH - sent)
                events = outbox.events([d.event_seq for d in pending])
            if not endpoint.enabled or not pending:
                break
            sent += len(pending)
            counts["more"] = int(sent >= BATCH)
            held: set[str] = set()
            queue = list(pending)
            http = http or session_for(endpoint.url)  # closed in ``finally``
            stop = False
            while queue:
                wave, queue = _next_wave(queue, held, now_fn())
                if not wave:
                    break
                attempts, lapsed = [], False
                for delivery in wave:
                    if time.monotonic() - renewed > RENEW_AFTER:
                        try:
                            lock.reacquire()  # the lock outlives the attempt about to start
                        except LockError:
                            lapsed = True  # another round has the endpoint now
                            break
                        renewed = time.monotonic()
                    event = events[delivery.event_seq]
                    code, error = post(endpoint, payload(endpoint, event), now=now_fn(), http=http)
                    attempts.append((delivery, event, code, error))
                    if code is None:
                        break  # unreachable: the rest of the wave waits with the round's remainder
                if attempts:
                    _record(runtime, endpoint, attempts, now=now_fn())
                if lapsed:
                    return counts  # the lock is another round's now, and so is the mark
                failed = [d for d, _, _, error in attempts if error is not None]
                counts["delivered"] += len(attempts) - len(failed)
                counts["failed"] += len(failed)
                held.update(d.ordering_key for d in failed if d.ordering_key is not None)
                if not failed:
                    endpoint = replace(endpoint, failing_since=None)
                    continue
                endpoint = _failed(runtime, endpoint, now=now_fn())
                if attempts[-1][2] is None or not endpoint.enabled:
                    stop = True  # unreachable or disabled: the rest waits for the next round
                    break
            if stop:
                break
    finally:
        if http is not None:
            http.close()
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - the lock expired: nothing to release
            pass
    if counts["more"] or runtime.redis.exists(again):
        queueing.signal_webhooks(runtime)  # marked while the lock was held, or a full batch went: go again
    return counts


def _next_wave(queue: list[Delivery], held: set[str], now: datetime) -> tuple[list[Delivery], list[Delivery]]:
    """Split the queue (event order) into the next wave and the rest: at most ``WAVE`` due deliveries,
    no two of one ordering key, none of a held key (a key whose delivery failed or waits for its
    retry this round: its later deliveries are dropped until the next round). A key's later
    deliveries stay in the rest, behind the one in the wave, so each key keeps its order."""
    wave: list[Delivery] = []
    rest: list[Delivery] = []
    taken: set[str] = set()
    for delivery in queue:
        key = delivery.ordering_key
        if key is not None and key in held:
            continue
        if delivery.next_attempt_at > now:
            if key is not None:
                held.add(key)
            continue
        if len(wave) < WAVE and (key is None or key not in taken):
            wave.append(delivery)
        else:
            rest.append(delivery)
        if key is not None:
            taken.add(key)
    return wave, rest


def _record(runtime: Any, endpoint: Endpoint, attempts: list[tuple[Delivery, OutboxEvent, int | None, str | None]],
            *, now: datetime) -> None:
    """Record a wave's attempts in one transaction, after their answers (a worker killed before the
    commit sends that wave again: at least once)."""
    with session_scope(runtime.engine) as session:
        outbox = SqlOutbox(session)
        outcomes = []
        for delivery, event, code, error in attempts:
            values: dict[str, Any] = {"last_attempt_at": now, "last_status_code": code, "last_error": error}
            if error is None:
                values.update(status="delivered", delivered_at=now)
            elif now - event.created_at >= RETRY_WINDOW:
                values.update(status="failed")
            else:
                values.update(next_attempt_at=now + backoff(delivery.attempts + 1))
            outcomes.append((delivery.id, values))
        outbox.record_attempts(outcomes)
        if endpoint.failing_since is not None and any(error is None for *_, error in attempts):
            stored = outbox.get_endpoint(endpoint.id, for_update=True)
            outbox.save_endpoint(replace(stored, failing_since=None))
    for _, event, code, error in attempts:
        log.info("webhook_attempt", endpoint=endpoint.id, event_id=event.id, type=event.type, status_code=code,
                 delivered=error is None)


def _failed(runtime: Any, endpoint: Endpoint, *, now: datetime) -> Endpoint:
    """Note a failure on the endpoint; disable it (and say so) after ``DISABLE_AFTER`` without a success."""
    with session_scope(runtime.engine) as session:
        outbox = SqlOutbox(session)
        stored = outbox.get_endpoint(endpoint.id, for_update=True)
        if stored.failing_since is None:
            return outbox.save_endpoint(replace(stored, failing_since=now))
        if not stored.enabled or now - stored.failing_since < DISABLE_AFTER:
            return stored
        disabled = outbox.save_endpoint(replace(stored, enabled=False, disabled_reason="sustained_failure"))
        emit(session, "webhook_endpoint.disabled", {
            "type": "webhook_endpoint.disabled",
            "webhook_endpoint": {"id": stored.id, "url": stored.url},
            "properties": {"reason": "sustained_failure", "failing_since": iso(stored.failing_since)},
        }, now=now, skip_endpoint=stored.id)
    log.warning("webhook_endpoint_disabled", endpoint=endpoint.id, failing_since=iso(stored.failing_since))
    return disabled


PRUNE_CHUNK = 5000  # rows per transaction: a long prune never holds the write lock for long


def prune(runtime: Any, *, now: datetime) -> dict[str, int]:
    """Delete the deliveries finished more than ``WEBHOOK_RETENTION_DAYS`` ago and their events (never a
    pending one), a chunk per transaction; return the counts."""
    before = now - timedelta(days=runtime.settings.WEBHOOK_RETENTION_DAYS)
    totals = {"deliveries": 0, "events": 0}
    while True:
        with write_lock(runtime.engine), session_scope(runtime.engine) as session:
            deliveries, events = SqlOutbox(session).prune(before, limit=PRUNE_CHUNK)
        totals["deliveries"] += deliveries
        totals["events"] += events
        if deliveries < PRUNE_CHUNK and events < PRUNE_CHUNK:
            break
    if totals["deliveries"] or totals["events"]:
        log.info("webhooks_pruned", before=iso(before), **totals)
    return totals


def sweep(runtime: Any, *, now: datetime) -> int:
    """Signal a send when any delivery is due (the cron's second line after Redis or a worker was lost)."""
    with session_scope(runtime.engine) as session:
        due = SqlOutbox(session).due_endpoints(now)
    if due:
        queueing.signal_webhooks(runtime)
    return len(due)


def note_ended(runtime: Any, *, now: datetime) -> int:
    """Emit ``subscription.ended`` for subscriptions whose scheduled end has passed since the last sweep, and
    ``subscription.plan_version_changed`` for scheduled migration edits whose instant has."""
    with write_lock(runtime.engine), session_scope(runtime.engine) as session:
        cursors = SqlAlerts(session)
        since = cursors.position(_ENDED)
        start = from_micros(since) if since is not None else now - ENDED_LOOKBACK
        emitted = service_outbox.emit_ended(session, since=start, now=now)
        emitted += service_migrations.note_effective(session, since=start, now=now)
        cursors.set_position(to_micros(now), _ENDED)
    return emitted


# --- signalling the sender after a commit that emitted ---------------------------------------------------

def watch_commits(engine: Any, runtime: Any) -> None:
    """Signal ``runtime``'s sender at every commit on ``engine`` of a transaction that emitted an event.

    ``emit`` marks its connection; the commit hands the signal to the runtime's background thread
    (``queueing.webhook_signal``), which sends it a moment later, so no request or job waits on
    Redis for it. A signal lost anyway (Redis down) is the cron sweep's.
    """
    ref = weakref.ref(runtime)

    def committed(conn: Any) -> None:
        if conn.info.pop(OUTBOX_FLAG, False):
            live = ref()
            if live is not None:
                queueing.webhook_signal(live).request()

    def rolled_back(conn: Any) -> None:
        conn.info.pop(OUTBOX_FLAG, None)

    sa_event.listen(engine, "commit", committed)
    sa_event.listen(engine, "rollback", rolled_back)


__all__ = ["backoff", "payload", "post", "prune", "send_due", "send_endpoint", "session_for", "sign", "sweep",
           "watch_commits"]
