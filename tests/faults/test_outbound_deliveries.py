"""Outbound webhooks across a worker SIGKILL and a Redis restart: every event reaches the endpoint
(at least once), in order per contract, and every delivery ends ``delivered``."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlmodel import Session

from billing_core import emit, service_outbox
from billing_core.persistence.outbox import WebhookDeliveryRow
from tests.faults.conftest import BOTH_DATABASES
from tests.receiver import Receiver, receiver  # noqa: F401 - the fixture
from worker import jobs
from worker.db import session_scope

EVENTS = 120
CONTRACTS = 6


def _emit_all(bed) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for n in range(EVENTS):
        with session_scope(bed.engine) as session:  # one transaction each, as changes commit
            ids.append(emit(session, "contract.mapped", {
                "type": "contract.mapped", "contract": {"id": f"ctr_{n % CONTRACTS}"}, "properties": {"n": n}},
                now=datetime.now(UTC), ordering_key=f"contract:ctr_{n % CONTRACTS}"))
    return ids


def _start_sending(bed, receiver: Receiver) -> list[str]:  # type: ignore[no-untyped-def]
    """Point a slow endpoint at ``receiver``, emit every event, and wait until the sending is under way."""
    receiver.delay = 0.02
    with session_scope(bed.engine) as session:
        service_outbox.create_endpoint(session, url=receiver.url, now=datetime.now(UTC), endpoint_id="we_faults")
    ids = _emit_all(bed)
    deadline = time.monotonic() + 30
    while len(receiver.received) < 10:
        assert time.monotonic() < deadline, bed.fleet.logs()
        time.sleep(0.02)
    return ids


def _undelivered(bed) -> int:  # type: ignore[no-untyped-def]
    with Session(bed.engine) as session:
        return int(session.execute(select(func.count()).select_from(WebhookDeliveryRow).where(
            WebhookDeliveryRow.status != "delivered")).scalar_one())


def _settle(bed, receiver: Receiver, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
    """Run the cron's sweep (and requeue what dead workers left) until every delivery is delivered."""
    from rq import Queue

    from tests.faults.harness import requeue_abandoned

    deadline = time.monotonic() + timeout
    n = 0
    while _undelivered(bed):
        assert time.monotonic() < deadline, f"{_undelivered(bed)} undelivered\n" + bed.fleet.logs()
        requeue_abandoned(bed.redis)
        Queue("webhooks", connection=bed.redis).enqueue(jobs.sweep_webhooks, job_id=f"faults-hooks-{n}")
        n += 1
        time.sleep(1.0)


def _assert_all_received(receiver: Receiver, ids: list[str]) -> int:
    bodies = [json.loads(body) for _, body in receiver.received]
    assert {b["id"] for b in bodies} == set(ids), "an event never reached the endpoint"
    for contract in range(CONTRACTS):
        seen = [b["properties"]["n"] for b in bodies if b["contract"]["id"] == f"ctr_{contract}"]
        firsts = list(dict.fromkeys(seen))
        assert firsts == sorted(firsts), f"ctr_{contract} out of order: {seen}"
    return len(bodies) - len(ids)  # duplicates (at least once)


@BOTH_DATABASES
def test_worker_killed_while_sending(bed, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """A worker SIGKILLed in the middle of a send loses no event; a replacement finishes it."""
    ids = _start_sending(bed, receiver)
    for name in bed.fleet.live:
        bed.fleet.kill(name)  # whichever held the send
    bed.fleet.start(2)
    _settle(bed, receiver)
    duplicates = _assert_all_received(receiver, ids)
    print(f"worker kill: {len(receiver.received)} received for {len(ids)} events, {duplicates} duplicates")


def test_redis_restarted_while_sending(bed, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """Redis stopped mid-send and started again empty: the sweep finds what is due; nothing is lost."""
    ids = _start_sending(bed, receiver)
    bed.redis_server.stop()
    time.sleep(1.0)
    bed.redis_server.start()
    _settle(bed, receiver)
    _assert_all_received(receiver, ids)
