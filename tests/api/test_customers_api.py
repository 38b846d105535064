"""``/v1/customers``: Orb's customer endpoints and their errors."""

from __future__ import annotations

from typing import Any

import pytest


def create(client, auth_headers, **fields: Any):  # type: ignore[no-untyped-def]
    """Create a customer through the API."""
    body = {"name": "Acme", "email": "ops@acme.test", **fields}
    return client.post("/v1/customers", json=body, headers=auth_headers)


def test_create_fetch_and_fetch_by_external_id(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """A created customer is returned in Orb's shape and found by id and by external id."""
    created = create(client, auth_headers, external_customer_id="acme", currency="USD").get_json()
    assert created["timezone"] == "UTC" and created["created_at"].endswith("Z")
    assert created["hierarchy"] == {"children": [], "parent": None} and created["balance"] == "0.00"
    by_id = client.get(f"/v1/customers/{created['id']}", headers=auth_headers).get_json()
    by_alias = client.get("/v1/customers/external_customer_id/acme", headers=auth_headers).get_json()
    assert by_id == by_alias == created


@pytest.mark.parametrize(
    "fields, status, field",
    [
        pytest.param({"email": None}, 400, "email", id="missing-email"),
        pytest.param({"currency": "dollars"}, 400, "currency", id="bad-currency"),
        pytest.param({"timezone": "Nowhere/Land"}, 400, "timezone", id="bad-timezone"),
        pytest.param({"favourite_colour": "red"}, 400, "favourite_colour", id="unknown-field"),
        pytest.param({"payment_provider": "stripe_charge"}, 400, "payment_provider", id="unsupported-orb-field"),
    ],
)
def test_create_errors_name_the_field(client, auth_headers, fields: dict, status: int, field: str) -> None:  # type: ignore[no-untyped-def]
    """Invalid, unknown and unsupported fields get a 400 naming the field."""
    body = {"name": "Acme", "email": "ops@acme.test", **fields}
    response = client.post("/v1/customers", json={k: v for k, v in body.items() if v is not None},
                           headers=auth_headers)
    assert response.status_code == status
    assert field in response.get_json()["detail"] or field in str(response.get_json().get("validation_errors"))


def test_duplicate_external_id_is_409(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """A second customer with the same external id is a conflict."""
    create(client, auth_headers, external_customer_id="acme")
    assert create(client, auth_headers, external_customer_id="acme").status_code == 409


def test_update_by_id_and_by_external_id(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """PUT changes only the given fields, by id or by external id."""
    created = create(client, auth_headers, metadata={"a": "1"}).get_json()
    updated = client.put(f"/v1/customers/{created['id']}", json={"external_customer_id": "acme",
                                                                 "metadata": {"b": "2"}}, headers=auth_headers)
    assert updated.get_json()["metadata"] == {"a": "1", "b": "2"}
    renamed = client.put("/v1/customers/external_customer_id/acme", json={"name": "Acme Ltd"}, headers=auth_headers)
    assert (renamed.get_json()["name"], renamed.get_json()["email"]) == ("Acme Ltd", "ops@acme.test")
    fixed = client.put(f"/v1/customers/{created['id']}", json={"timezone": "Europe/Paris"}, headers=auth_headers)
    assert fixed.status_code == 400


def test_list_uses_cursor_pagination(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """Listing pages newest first with Orb's pagination_metadata and cursor."""
    ids = [create(client, auth_headers, name=f"c{i}").get_json()["id"] for i in range(3)]
    first = client.get("/v1/customers?limit=2", headers=auth_headers).get_json()
    assert first["pagination_metadata"]["has_more"] is True
    cursor = first["pagination_metadata"]["next_cursor"]
    second = client.get(f"/v1/customers?limit=2&cursor={cursor}", headers=auth_headers).get_json()
    assert second["pagination_metadata"] == {"has_more": False, "next_cursor": None}
    assert sorted(c["id"] for c in first["data"] + second["data"]) == sorted(ids)


@pytest.mark.parametrize(
    "path, status",
    [
        pytest.param("/v1/customers/missing", 404, id="unknown-id"),
        pytest.param("/v1/customers/external_customer_id/missing", 404, id="unknown-alias"),
        pytest.param("/v1/customers?limit=1000", 400, id="limit-too-big"),
        pytest.param("/v1/customers?colour=red", 400, id="unknown-query-parameter"),
        pytest.param("/v1/customers?created_at[gt]=yesterday", 400, id="bad-created-at"),
        pytest.param("/v1/customers?cursor=zzz", 400, id="unknown-cursor"),
    ],
)
def test_read_errors_are_clear(client, auth_headers, path: str, status: int) -> None:  # type: ignore[no-untyped-def]
    """Unknown customers and bad list parameters get JSON 4xx answers."""
    response = client.get(path, headers=auth_headers)
    assert (response.status_code, response.get_json()["status"]) == (status, status)
