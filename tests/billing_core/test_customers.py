"""Customers: create, fetch by id or alias, update rules, list newest first."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine

from billing_core.customers import (
    CustomerNotFound,
    DuplicateCustomer,
    InvalidCustomer,
    create_customer,
    update_customer,
)
from billing_core.persistence.customers import SqlCustomerRepository
from worker.db import session_scope

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def new(engine: Engine, customer_id: str = "c1", now: datetime = NOW, **fields: Any):  # type: ignore[no-untyped-def]
    """Create a customer in its own transaction."""
    values = {"name": "Acme", "email": "ops@acme.test", **fields}
    with session_scope(engine) as session:
        return create_customer(SqlCustomerRepository(session), customer_id=customer_id, now=now, **values)


def test_create_defaults_and_fetch_by_either_id(engine: Engine) -> None:
    """A new customer defaults to UTC and is found by id and by external id."""
    created = new(engine, external_customer_id="acme", currency="usd")
    with session_scope(engine) as session:
        repo = SqlCustomerRepository(session)
        assert repo.get("c1") == created == repo.get_by_external_id("acme")
    assert (created.timezone, created.currency, created.created_at) == ("UTC", "USD", NOW)


@pytest.mark.parametrize(
    "fields, field",
    [
        pytest.param({"currency": "dollars"}, "currency", id="bad-currency"),
        pytest.param({"timezone": "Mars/Olympus"}, "timezone", id="bad-timezone"),
        pytest.param({"email": "nope"}, "email", id="bad-email"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"external_customer_id": ""}, "external_customer_id", id="empty-alias"),
        pytest.param({"metadata": {"a": 1}}, "metadata.a", id="metadata-not-string"),
    ],
)
def test_invalid_fields_are_named(engine: Engine, fields: dict, field: str) -> None:
    """Creating a customer with an invalid field fails naming that field."""
    with pytest.raises(InvalidCustomer) as info:
        new(engine, **fields)
    assert info.value.field == field


def test_external_id_is_unique(engine: Engine) -> None:
    """Two customers cannot share an external_customer_id."""
    new(engine, "c1", external_customer_id="acme")
    with pytest.raises(DuplicateCustomer, match="acme"):
        new(engine, "c2", external_customer_id="acme")


@pytest.mark.parametrize(
    "changes, expected",
    [
        pytest.param({"name": "Acme Ltd"}, {"name": "Acme Ltd"}, id="rename"),
        pytest.param({"external_customer_id": "acme"}, {"external_customer_id": "acme"}, id="set-alias-when-empty"),
        pytest.param({"currency": "EUR"}, {"currency": "EUR"}, id="set-currency-when-empty"),
        pytest.param({"metadata": {"a": None, "b": "2"}}, {"metadata": {"b": "2", "keep": "1"}}, id="metadata-merge"),
        pytest.param({"metadata": None}, {"metadata": {}}, id="metadata-cleared"),
    ],
)
def test_updates_apply_only_given_fields(engine: Engine, changes: dict, expected: dict) -> None:
    """An update changes only the fields it names, with Orb's metadata rule."""
    new(engine, metadata={"a": "1", "keep": "1"})
    with session_scope(engine) as session:
        repo = SqlCustomerRepository(session)
        updated = update_customer(repo, repo.get("c1"), changes)
    with session_scope(engine) as session:
        stored = SqlCustomerRepository(session).get("c1")
    assert stored == updated
    for name, value in expected.items():
        assert getattr(stored, name) == value


@pytest.mark.parametrize(
    "changes, field",
    [
        pytest.param({"timezone": "Europe/Paris"}, "timezone", id="timezone-fixed"),
        pytest.param({"external_customer_id": "other"}, "external_customer_id", id="alias-fixed-once-set"),
        pytest.param({"currency": "EUR"}, "currency", id="currency-fixed-once-set"),
        pytest.param({"id": "c9"}, "id", id="id-not-updatable"),
    ],
)
def test_fixed_fields_cannot_change(engine: Engine, changes: dict, field: str) -> None:
    """Timezone, a set alias, a set currency and the id cannot be changed."""
    new(engine, external_customer_id="acme", currency="USD")
    with pytest.raises(InvalidCustomer) as info:
        with session_scope(engine) as session:
            repo = SqlCustomerRepository(session)
            update_customer(repo, repo.get("c1"), changes)
    assert info.value.field == field


def test_missing_customers_are_not_found(engine: Engine) -> None:
    """Fetching an unknown id or alias raises CustomerNotFound."""
    with session_scope(engine) as session:
        repo = SqlCustomerRepository(session)
        with pytest.raises(CustomerNotFound):
            repo.get("nope")
        with pytest.raises(CustomerNotFound):
            repo.get_by_external_id("nope")


def test_list_pages_newest_first(engine: Engine) -> None:
    """Listing returns customers newest first, page by page, with a cursor until the end."""
    for i in range(5):
        new(engine, f"c{i}", now=NOW + timedelta(minutes=i))
    seen: list[str] = []
    cursor = None
    with session_scope(engine) as session:
        repo = SqlCustomerRepository(session)
        while True:
            page, cursor = repo.list(limit=2, cursor=cursor)
            seen += [c.id for c in page]
            if cursor is None:
                break
    assert seen == ["c4", "c3", "c2", "c1", "c0"]
