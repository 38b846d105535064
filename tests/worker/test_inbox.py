"""The inbox on SQLite and PostgreSQL: one row per (source, delivery id), even under concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from worker import inbox

NOW = datetime(2026, 11, 21, 10, tzinfo=UTC)


def _store(engine: Engine, delivery_id: str = "d1", source: str = "contracts") -> inbox.StoredDelivery:
    return inbox.store_delivery(engine, source=source, delivery_id=delivery_id, event_type="contract.created",
                                body=b"{}", headers={"Authorization": "secret", "webhook-id": delivery_id},
                                normalized={}, status="received", contract_key="ctr_1", now=NOW)


def test_store_once(any_engine: Engine) -> None:
    """A repeated delivery finds the stored row; another source with the same id is its own row."""
    first = _store(any_engine)
    again = _store(any_engine)
    other = _store(any_engine, source="azure")
    assert first.created and not again.created and first.id == again.id
    assert other.created and other.id != first.id


def test_concurrent_stores_create_one_row(any_engine: Engine) -> None:
    """Eight simultaneous deliveries of one id create exactly one row."""
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _store(any_engine, "race"), range(8)))
    assert sum(r.created for r in results) == 1
    assert len({r.id for r in results}) == 1


def test_claim_finish_and_sweep(any_engine: Engine) -> None:
    """A row is claimed once finished it cannot be claimed again; stale rows are swept."""
    stored = _store(any_engine, "d2")
    assert inbox.stale_received(any_engine, now=NOW + timedelta(minutes=5)) == [stored.id]
    row = inbox.claim(any_engine, stored.id, now=NOW)
    assert row is not None and row.attempts == 1
    inbox.finish(any_engine, stored.id, "done", now=NOW)
    assert inbox.claim(any_engine, stored.id, now=NOW) is None
    assert inbox.stale_received(any_engine, now=NOW + timedelta(minutes=5)) == []


def test_authorization_headers_are_not_kept() -> None:
    """Signatures and tokens are never stored with a delivery."""
    kept = inbox.kept_headers({"Authorization": "Bearer x", "webhook-signature": "v1,abc", "webhook-id": "m"})
    assert kept == {"webhook-id": "m"}


def test_a_drain_claims_only_received_rows(any_engine: Engine) -> None:
    """Two drains listing the same received row: the first claim moves it to processing, the
    second (drains claim only ``received``) gets nothing; a retry may still take it over."""
    stored = _store(any_engine, "d3")
    assert inbox.claim(any_engine, stored.id, now=NOW, statuses=("received",)) is not None
    assert inbox.claim(any_engine, stored.id, now=NOW, statuses=("received",)) is None
    assert inbox.claim(any_engine, stored.id, now=NOW) is not None  # a retry of a stuck row


def test_deliveries_stored_together_share_a_commit_and_keep_their_own_answers(any_engine: Engine) -> None:
    """Concurrent stores of distinct and repeated ids (group commit): one row per id, each
    caller told whether it created it."""
    ids = [f"g{i % 12}" for i in range(48)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda d: (d, _store(any_engine, d)), ids))
    created = {d for d, r in results if r.created}
    assert created == set(ids)
    assert sum(r.created for _, r in results) == 12
    by_id: dict[str, set[int]] = {}
    for d, r in results:
        by_id.setdefault(d, set()).add(r.id)
    assert all(len(v) == 1 for v in by_id.values())


def test_a_final_failure_is_not_swept_again(any_engine: Engine) -> None:
    """A delivery failed for good (a permanent error) stays failed: the sweeper never re-enqueues it."""
    retried, final = _store(any_engine, "f1"), _store(any_engine, "f2")
    for stored in (retried, final):
        inbox.claim(any_engine, stored.id, now=NOW)
    inbox.finish(any_engine, retried.id, "failed", now=NOW, error="TransientMarketplaceError: later")
    inbox.finish(any_engine, final.id, "failed", now=NOW, error="PermanentMarketplaceError: never", final=True)
    assert inbox.stale_received(any_engine, now=NOW + timedelta(hours=1)) == [retried.id]
