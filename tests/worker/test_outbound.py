"""The webhook sender: order per subscription, one endpoint never slowing another, backoff past a
day, an endpoint disabled (with an event saying so) after a day of failures, and each endpoint's
payload style."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from billing_core import ExactNumber, SqlOutbox, emit, service_outbox
from billing_core.persistence.outbox import WebhookDeliveryRow, WebhookEventRow
from tests.receiver import Receiver, receiver  # noqa: F401 - the fixture
from worker import outbound
from worker.db import session_scope

DEAD_URL = "http://127.0.0.1:9/hooks"  # the discard port: connection refused


def _endpoint(runtime: Any, url: str, endpoint_id: str) -> None:
    with session_scope(runtime.engine) as session:
        service_outbox.create_endpoint(session, url=url, now=datetime.now(UTC), endpoint_id=endpoint_id,
                                       payload_style="standard")


def _emit(runtime: Any, key: str, n: int, at: datetime) -> None:
    with session_scope(runtime.engine) as session:
        emit(session, "contract.mapped", {"type": "contract.mapped", "contract": {"id": key}, "properties": {"n": n}},
             now=at, ordering_key=f"contract:{key}")


def _sent(receiver: Receiver) -> list[tuple[str, int]]:
    return [(json.loads(b)["contract"]["id"], json.loads(b)["properties"]["n"]) for _, b in receiver.received]


def test_a_failed_delivery_holds_back_its_key_only(app, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """While the first event of a contract waits for its retry, that contract's later events wait; others go."""
    runtime, now = app.extensions["marketsync"], datetime.now(UTC)
    _endpoint(runtime, receiver.url, "we_a")
    for n in (1, 2, 3):
        _emit(runtime, "A", n, now)
    _emit(runtime, "B", 1, now)
    receiver.failures = 1
    outbound.send_endpoint(runtime, "we_a", now_fn=lambda: now)
    assert _sent(receiver) == [("B", 1)]
    outbound.send_endpoint(runtime, "we_a", now_fn=lambda: now + timedelta(seconds=11))
    assert _sent(receiver) == [("B", 1), ("A", 1), ("A", 2), ("A", 3)]


def test_a_stuck_key_never_crowds_others_out_of_a_batch(app, receiver: Receiver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With more held deliveries of one contract than a batch takes, another contract's events still go."""
    runtime, now = app.extensions["marketsync"], datetime.now(UTC)
    monkeypatch.setattr(outbound, "BATCH", 2)
    _endpoint(runtime, receiver.url, "we_k")
    for n in (1, 2, 3):
        _emit(runtime, "A", n, now)
    _emit(runtime, "B", 1, now)
    receiver.failures = 1
    assert outbound.send_endpoint(runtime, "we_k", now_fn=lambda: now)["more"] == 1  # A1 failed: A is held
    outbound.send_endpoint(runtime, "we_k", now_fn=lambda: now)
    assert _sent(receiver) == [("B", 1)]


def test_waves_keep_each_keys_order_and_send_each_once(app, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """An endpoint's deliveries go out in waves (distinct keys each, recorded in one transaction): every
    event once, each contract's in event order, and a failure in a wave holds back only its own key."""
    runtime, now = app.extensions["marketsync"], datetime.now(UTC)
    _endpoint(runtime, receiver.url, "we_w")
    for n in range(1, 6):
        for key in "ABCDEFGHIJKL":
            _emit(runtime, key, n, now)
    receiver.failures = 1  # one delivery of the first wave fails: its key waits for its retry
    first = outbound.send_endpoint(runtime, "we_w", now_fn=lambda: now)
    assert first["failed"] == 1 and first["delivered"] == 55
    outbound.send_endpoint(runtime, "we_w", now_fn=lambda: now + timedelta(seconds=11))
    sent = _sent(receiver)
    assert sorted(sent) == sorted((key, n) for key in "ABCDEFGHIJKL" for n in range(1, 6))
    for key in "ABCDEFGHIJKL":
        assert [n for k, n in sent if k == key] == [1, 2, 3, 4, 5]


def test_an_event_committed_during_a_round_goes_in_that_round(app, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """A round that finds the endpoint locked by a round under way leaves a mark; the round under way
    reads the due deliveries again and sends the new one too (it never waits for the cron's sweep)."""
    import threading

    runtime, now = app.extensions["marketsync"], datetime.now(UTC)
    _endpoint(runtime, receiver.url, "we_r")
    _emit(runtime, "A", 1, now)
    receiver.delay = 0.5
    first: dict[str, int] = {}
    holder = threading.Thread(target=lambda: first.update(outbound.send_endpoint(runtime, "we_r", now_fn=lambda: now)))
    holder.start()
    time.sleep(0.2)  # the holder is in its first attempt
    _emit(runtime, "B", 1, now)
    assert outbound.send_endpoint(runtime, "we_r", now_fn=lambda: now)["delivered"] == 0  # locked: marked
    holder.join(timeout=10)
    assert first["delivered"] == 2
    assert _sent(receiver) == [("A", 1), ("B", 1)]


def test_a_slow_endpoint_does_not_delay_another(app, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """Each endpoint is sent on its own thread: a fast one gets its events while a slow one still answers."""
    runtime, now = app.extensions["marketsync"], datetime.now(UTC)
    slow = Receiver()
    try:
        slow.delay = 2.0
        _endpoint(runtime, slow.url, "we_slow")
        _endpoint(runtime, receiver.url, "we_fast")
        for n in range(3):
            _emit(runtime, f"K{n}", n, now)
        arrivals: list[float] = []
        started = time.monotonic()
        original = receiver.server.RequestHandlerClass.do_POST

        def timed(handler: Any) -> None:
            original(handler)
            arrivals.append(time.monotonic() - started)

        receiver.server.RequestHandlerClass.do_POST = timed  # type: ignore[method-assign]
        result = outbound.send_due(runtime, now_fn=lambda: now)
        assert result["delivered"] == 6 and len(arrivals) == 3
        assert max(arrivals) < 1.5  # the slow endpoint takes 2 s per event, 6 s in all
    finally:
        slow.stop()


def test_retries_for_a_day_then_the_endpoint_is_disabled(app, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """A dead endpoint is retried with growing waits for 24 hours, then disabled, and another endpoint is told."""
    runtime, start = app.extensions["marketsync"], datetime.now(UTC)
    _endpoint(runtime, DEAD_URL, "we_dead")
    _emit(runtime, "A", 1, start)
    _endpoint(runtime, receiver.url, "we_ops")  # created after the event: it gets only what follows
    attempts: list[datetime] = []
    with Session(runtime.engine) as session:
        for _ in range(60):
            delivery = session.execute(select(WebhookDeliveryRow).where(
                WebhookDeliveryRow.endpoint_id == "we_dead")).scalar_one()
            session.refresh(delivery)
            if not SqlOutbox(session).get_endpoint("we_dead").enabled:
                break
            at = delivery.next_attempt_at.replace(tzinfo=UTC)
            attempts.append(at)
            outbound.send_endpoint(runtime, "we_dead", now_fn=lambda at=at: at)
            session.expire_all()
    waits = [(b - a).total_seconds() for a, b in zip(attempts, attempts[1:])]
    assert waits[:4] == [10, 20, 40, 80] and max(waits) == 7200
    assert attempts[-1] - attempts[0] >= timedelta(hours=24)
    with Session(runtime.engine) as session:
        endpoint = SqlOutbox(session).get_endpoint("we_dead")
        delivery = session.execute(select(WebhookDeliveryRow).where(
            WebhookDeliveryRow.endpoint_id == "we_dead")).scalar_one()
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "sustained_failure")
    assert delivery.status == "pending" and delivery.last_error.startswith("ConnectionError")  # kept for later
    outbound.send_due(runtime, now_fn=lambda: attempts[-1] + timedelta(minutes=1))
    assert receiver.types() == ["webhook_endpoint.disabled"]
    assert json.loads(receiver.received[0][1])["webhook_endpoint"]["id"] == "we_dead"


def test_scheduled_end_is_told_once(app) -> None:  # type: ignore[no-untyped-def]
    """A subscription canceled for a later date gets subscription.ended when that date passes, once; one
    ended at once by its edit is not told twice."""
    from billing_core import service_plans
    from billing_core.persistence.outbox import WebhookEventRow
    from tests.worker.sync_support import setup_billing
    from worker.billing_gateway import CoreBillingGateway

    runtime, now = app.extensions["marketsync"], datetime.now(UTC)
    setup_billing(runtime.engine)
    _endpoint(runtime, "https://hooks.example.test/in", "we_end")
    gateway = CoreBillingGateway(runtime.engine)
    customer = gateway.ensure_customer(external_customer_id="end-c", name="C", email="c@x.test", currency="USD")
    later, at_once = (gateway.create_subscription(idempotency_key=key, customer_id=customer, plan_id="plan_sync",
                                                  start=now - timedelta(days=1), external_marketplace="aws",
                                                  reporting_id=key) for key in ("end-later", "end-now"))
    with session_scope(runtime.engine) as session:
        service_plans.cancel_subscription(session, later, option="requested_date",
                                          cancellation_date=now + timedelta(minutes=1), now=now)
        service_plans.cancel_subscription(session, at_once, option="immediate", cancellation_date=None, now=now)

    def ended() -> list[str]:
        with Session(runtime.engine) as session:
            return sorted(r.ordering_key for r in session.execute(select(WebhookEventRow).where(
                WebhookEventRow.type == "subscription.ended")).scalars())

    assert ended() == [f"subscription:{at_once}"]
    assert outbound.note_ended(runtime, now=now + timedelta(seconds=30)) == 0
    assert outbound.note_ended(runtime, now=now + timedelta(minutes=2)) == 1
    assert outbound.note_ended(runtime, now=now + timedelta(minutes=3)) == 0
    assert ended() == sorted([f"subscription:{at_once}", f"subscription:{later}"])


def test_cli_lists_logs_replays_and_sends(app, receiver: Receiver, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``marketsync webhooks list|log|replay|send`` over the same database and Redis (no secret printed)."""
    from click.testing import CliRunner

    from worker.cli import main

    runtime, now = app.extensions["marketsync"], datetime.now(UTC)
    monkeypatch.setenv("DATABASE_URL", runtime.settings.database_url)
    monkeypatch.setenv("REDIS_URL", runtime.settings.REDIS_URL)
    with session_scope(runtime.engine) as session:
        secret = service_outbox.create_endpoint(session, url=receiver.url, now=now, endpoint_id="we_cli").secret
    _emit(runtime, "A", 1, now)
    runner = CliRunner()
    sent = runner.invoke(main, ["webhooks", "send"])
    assert sent.exit_code == 0 and "'delivered': 1" in sent.output, sent.output
    listed = runner.invoke(main, ["webhooks", "list"]).output
    assert "we_cli" in listed and "delivered 1" in listed and secret not in listed
    log = runner.invoke(main, ["webhooks", "log", "we_cli"]).output
    delivery_id = log.split()[0]
    assert "contract.mapped" in log and "delivered" in log
    assert runner.invoke(main, ["webhooks", "replay", "we_cli", delivery_id]).exit_code == 0
    runner.invoke(main, ["webhooks", "send"])
    assert receiver.types() == ["contract.mapped", "contract.mapped"]
    assert runner.invoke(main, ["webhooks", "log", "we_missing"]).exit_code == 1


def test_each_endpoint_gets_the_event_in_its_style_with_exact_numbers(app, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """An expanded endpoint gets the event's expanded resources, a standard one its body; numbers keep their
    exact text through the outbox; the style at the send counts; with no endpoint nothing is rendered."""
    runtime, now = app.extensions["marketsync"], datetime.now(UTC)

    def never() -> dict[str, Any]:
        raise AssertionError("rendered for no endpoint")

    body = {"type": "subscription.edited", "subscription": {"id": "sub_1"}, "properties": {"previous_attributes": {}}}
    with session_scope(runtime.engine) as session:
        emit(session, "subscription.edited", body, now=now, ordering_key="subscription:sub_1", expanded=never)
        for endpoint_id in ("we_expanded", "we_switched"):
            service_outbox.create_endpoint(session, url=receiver.url, now=now, endpoint_id=endpoint_id,
                                           payload_style="standard")
        service_outbox.create_endpoint(session, url=receiver.url, now=now, endpoint_id="we_standard",
                                       payload_style="standard")
        emit(session, "subscription.edited", body, now=now, ordering_key="subscription:sub_1",
             expanded=lambda: {"subscription": {"id": "sub_1", "units": ExactNumber("12345678901234567891.25")}})
    with session_scope(runtime.engine) as session:
        service_outbox.update_endpoint(session, "we_expanded", payload_style="expanded")
        service_outbox.update_endpoint(session, "we_switched", payload_style="expanded")
    with session_scope(runtime.engine) as session:
        service_outbox.update_endpoint(session, "we_switched", payload_style="standard")
    outbound.send_due(runtime, now_fn=lambda: now)
    bodies = sorted((json.loads(b)["payload_style"], b) for _, b in receiver.received)
    assert [style for style, _ in bodies] == ["expanded", "standard", "standard"]
    expanded = bodies[0][1].decode()
    assert '"subscription":{"id":"sub_1","units":12345678901234567891.25}' in expanded
    assert all(json.loads(b)["subscription"] == {"id": "sub_1"} for _, b in bodies[1:])
    assert json.loads(expanded)["properties"] == json.loads(bodies[1][1])["properties"]


def test_finished_deliveries_are_pruned_after_the_retention_never_a_pending_one(app, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """Deliveries whose last attempt was more than WEBHOOK_RETENTION_DAYS ago go, with their events; a
    pending one (and its event) stays however old; recent ones stay."""
    runtime, now = app.extensions["marketsync"], datetime.now(UTC)
    old = now - timedelta(days=runtime.settings.WEBHOOK_RETENTION_DAYS + 1)
    _endpoint(runtime, receiver.url, "we_p")
    _emit(runtime, "A", 1, old)
    _emit(runtime, "B", 1, old)
    outbound.send_endpoint(runtime, "we_p", now_fn=lambda: old)  # both delivered, long ago
    _emit(runtime, "D", 1, now)
    outbound.send_endpoint(runtime, "we_p", now_fn=lambda: now)
    _emit(runtime, "C", 1, old)  # an old event never attempted yet (its endpoint was unreachable, say): pending
    assert outbound.prune(runtime, now=now) == {"deliveries": 2, "events": 2}
    with session_scope(runtime.engine) as session:
        left = {(json.loads(e.body)["contract"]["id"], d.status) for d, e in session.execute(
            select(WebhookDeliveryRow, WebhookEventRow).join(
                WebhookEventRow, WebhookEventRow.seq == WebhookDeliveryRow.event_seq)).all()}  # type: ignore[arg-type]
    assert left == {("C", "pending"), ("D", "delivered")}
    assert outbound.prune(runtime, now=now) == {"deliveries": 0, "events": 0}
