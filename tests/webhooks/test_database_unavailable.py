"""A database that is unavailable is a 503 with Retry-After, never a 500: the sender retries.

Both outages are real: a PostgreSQL URL whose port refuses connections, and a SQLite file whose
write lock another connection holds past the app's busy timeout (lowered here to 200 ms so the
test does not wait the 30 s of the default). And what an outage leaves behind: a creation
processed again (its outcome was never recorded) does not undo a later modification.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Iterator

import pytest
from flask import Flask
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from billing_core.persistence.events import EventRow
from config import Settings
from tests.conftest import TEST_API_KEY, TEST_WEBHOOK_SECRET
from tests.webhooks.test_receivers import _add_listing, _event, _post, _run_queue, billing  # noqa: F401
from webhooks.errors import database_unavailable
from worker import delivery
from worker.persistence.contracts import ContractRow, InboxRow
from worker.standard_webhooks import signed_headers


def _delivery() -> tuple[bytes, dict[str, str]]:
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    body = json.dumps({
        "id": "evt_outage", "type": "contract.created", "occurred_at": at,
        "data": {"contract_id": "ctr_outage", "marketplace": "aws",
                 "cloud_identifiers": {"product_code": "prod-abc", "customer_aws_account_id": "123456789012",
                                       "license_arn": "arn:aws:license-manager::123456789012:license:l-0a1b"},
                 "buyer": {"name": "Acme Corp", "email": "ops@acme.test"},
                 "pricing": {"currency": "USD", "dimensions": [{"name": "usage_cost", "unit_price": "0.01"}]},
                 "previous_pricing": None, "effective_at": at}}).encode()
    headers = signed_headers(TEST_WEBHOOK_SECRET, "msg_outage", int(time.time()), body)
    return body, {**headers, "Content-Type": "application/json"}


def _ingest_body() -> dict:
    at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return {"events": [{"idempotency_key": "outage-1", "event_name": "api_call", "external_customer_id": "acme",
                        "timestamp": at, "properties": {"tokens": 10}}]}


def _assert_unavailable(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 503, response.get_json()
    assert response.headers["Retry-After"] == "5"
    body = response.get_json()
    assert body["status"] == 503 and body["title"] == "Service unavailable"
    assert "database is unavailable" in body["detail"]


@pytest.fixture
def build_app(redis_conn) -> Iterator:  # type: ignore[no-untyped-def]
    apps: list[Flask] = []

    def build(settings: Settings) -> Flask:
        from webhooks import create_app

        app = create_app(settings)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["marketsync"].close()


def test_unreachable_postgresql_is_503(settings: Settings, build_app) -> None:  # type: ignore[no-untyped-def]
    """With PostgreSQL refusing connections, a webhook and an ingest batch get 503 + Retry-After, not 500."""
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(settings.model_copy(update={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/down"}))
    client = app.test_client()
    body, headers = _delivery()
    _assert_unavailable(client.post("/webhooks/contracts", data=body, headers=headers))
    _assert_unavailable(client.post("/v1/ingest", json=_ingest_body(),
                                    headers={"Authorization": f"Bearer {TEST_API_KEY}"}))


def test_locked_sqlite_is_503_then_accepted(settings: Settings, sqlite_url: str, build_app) -> None:  # type: ignore[no-untyped-def]
    """SQLite locked past the busy timeout: 503 + Retry-After; the retry after the lock is stored once."""
    app = build_app(settings.model_copy(update={"DATABASE_URL": sqlite_url}))
    engine = app.extensions["marketsync"].engine

    @event.listens_for(engine, "connect")
    def _short_busy_timeout(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.execute("PRAGMA busy_timeout=200")

    client = app.test_client()
    auth = {"Authorization": f"Bearer {TEST_API_KEY}"}
    body, headers = _delivery()
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # as a backup or a migration holding the write lock would
    try:
        _assert_unavailable(client.post("/webhooks/contracts", data=body, headers=headers))
        _assert_unavailable(client.post("/v1/ingest", json=_ingest_body(), headers=auth))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    retried = client.post("/webhooks/contracts", data=body, headers=headers)
    assert retried.status_code == 202 and retried.get_json()["duplicate"] is False
    assert client.post("/v1/ingest", json=_ingest_body(), headers=auth).status_code == 200
    with Session(engine) as session:
        assert session.execute(select(func.count()).select_from(InboxRow)).scalar_one() == 1
        assert session.execute(select(func.count()).select_from(EventRow)).scalar_one() == 1


def test_only_unavailability_is_mapped() -> None:
    """A constraint violation is not an outage (it stays a 500); a dropped connection is, even when wrapped."""
    integrity = IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed"))
    assert not database_unavailable(integrity)
    assert not database_unavailable(ValueError("boom"))
    dropped = sqlite3.OperationalError("database is locked")
    try:
        try:
            raise dropped
        except sqlite3.OperationalError as exc:
            raise RuntimeError("while storing the delivery") from exc
    except RuntimeError as wrapped:
        assert database_unavailable(wrapped)


def test_creation_processed_again_keeps_the_later_modification(app, client, billing) -> None:  # type: ignore[no-untyped-def]
    """A creation applied again after a modification (its 'done' was lost with the database) changes nothing."""
    runtime = app.extensions["marketsync"]
    _add_listing(runtime.engine)
    assert _post(client, _event(), delivery_id="m_created").status_code == 202
    _run_queue(app)
    modified = _event("contract.modified", pricing={"currency": "USD",
                                                    "dimensions": [{"name": "usage_cost", "unit_price": "0.02"}]})
    assert _post(client, modified, delivery_id="m_modified").status_code == 202
    _run_queue(app)
    with Session(runtime.engine) as session:
        created = session.execute(select(InboxRow).where(InboxRow.delivery_id == "m_created")).scalars().one()
        created.status = "processing"  # as a worker leaves it when recording the outcome fails
        session.add(created)
        session.commit()
        created_id = created.id
    assert delivery.process(runtime, created_id, now=datetime.now(UTC)) == "done"
    with Session(runtime.engine) as session:
        contract = session.execute(select(ContractRow)).scalars().one()
    assert contract.pricing["dimensions"][0]["unit_price"] == "0.02"
    assert contract.subscription_id == "sub_1" and len(billing.subscriptions) == 1



def test_integer_overflow_is_not_an_outage() -> None:
    """SQLite's "integer overflow" (alone or wrapped by SQLAlchemy) is an arithmetic error, never a 503."""
    import sqlite3

    from sqlalchemy import exc as sa_exc

    from webhooks.errors import database_unavailable

    overflow = sqlite3.OperationalError("integer overflow")
    assert not database_unavailable(overflow)
    assert not database_unavailable(sa_exc.OperationalError("SELECT sum(x)", {}, overflow))
    assert database_unavailable(sqlite3.OperationalError("database is locked"))
