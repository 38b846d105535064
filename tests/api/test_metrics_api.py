"""``/v1/metrics``: create from SQL or a definition, fetch, list, update; unsupported SQL is a 400."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from billing_core.persistence.catalog import SqlCatalog
from billing_core.plans import Item
from worker.db import session_scope

SQL = "SELECT SUM(tokens) FROM events WHERE event_name = 'api_call' AND model = 'gpt-4'"


@pytest.fixture
def item_id(app) -> str:  # type: ignore[no-untyped-def]
    """Return the id of a stored item."""
    with session_scope(app.extensions["marketsync"].engine) as session:
        SqlCatalog(session).add_item(Item(id="item_1", name="API calls",
                                          created_at=datetime(2026, 11, 1, tzinfo=timezone.utc)))
    return "item_1"


def create(client, auth_headers, item_id: str, **fields: Any):  # type: ignore[no-untyped-def]
    """Create a metric through the API."""
    body = {"name": "tokens", "description": None, "item_id": item_id, "sql": SQL, **fields}
    return client.post("/v1/metrics", json={k: v for k, v in body.items() if v is not ...}, headers=auth_headers)


def test_create_fetch_and_list(client, auth_headers, item_id: str) -> None:  # type: ignore[no-untyped-def]
    """A metric created from SQL reads back in Orb's shape, with its item, and is listed."""
    created = create(client, auth_headers, item_id, metadata={"team": "ml"}).get_json()
    assert (created["sql"], created["status"], created["item"]["id"], created["metadata"]) == (
        SQL, "active", item_id, {"team": "ml"})
    assert client.get(f"/v1/metrics/{created['id']}", headers=auth_headers).get_json() == created
    listed = client.get("/v1/metrics", headers=auth_headers).get_json()
    assert [m["id"] for m in listed["data"]] == [created["id"]]
    assert listed["pagination_metadata"] == {"has_more": False, "next_cursor": None}


def test_structured_definition_gets_derived_sql(client, auth_headers, item_id: str) -> None:  # type: ignore[no-untyped-def]
    """A metric created from a structured definition carries the equivalent SQL."""
    definition = {"event_name": "api_call", "aggregation": "unique_count", "property": "user",
                  "filters": [{"property": "model", "operator": "in", "value": ["a", "b"]}]}
    created = create(client, auth_headers, item_id, sql=None, definition=definition).get_json()
    assert created["sql"] == "SELECT COUNT(DISTINCT user) FROM events WHERE event_name = 'api_call' AND model IN ('a', 'b')"


@pytest.mark.parametrize(
    "sql, construct",
    [
        pytest.param("SELECT SUM(x) FROM events; DROP TABLE events", "multiple statements", id="stacked"),
        pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' AND m = '' OR 1=1 --", "comments", id="or-1-1"),
        pytest.param("SELECT SUM(x) FROM events WHERE event_name = 'a' UNION SELECT SUM(y) FROM events", "UNION",
                     id="union"),
        pytest.param("SELECT SUM(x) FROM users WHERE event_name = 'a'", "table 'users'", id="other-table"),
        pytest.param("SELECT SUM(x) FROM (SELECT x FROM events) t", "subquery", id="subquery"),
        pytest.param("SELECT pg_sleep(5) FROM events WHERE event_name = 'a'", "PG_SLEEP", id="function"),
    ],
)
def test_unsupported_sql_is_400_naming_the_construct(client, auth_headers, item_id: str, sql: str,
                                                      construct: str) -> None:  # type: ignore[no-untyped-def]
    """SQL outside the subset is refused with a 400 whose detail names the construct."""
    response = create(client, auth_headers, item_id, sql=sql)
    assert response.status_code == 400
    assert construct in response.get_json()["detail"]


@pytest.mark.parametrize(
    "fields, field",
    [
        pytest.param({"item_id": "nope"}, "item", id="unknown-item"),
        pytest.param({"sql": None}, "sql", id="neither-sql-nor-definition"),
        pytest.param({"definition": {"event_name": "a", "aggregation": "count"}}, "sql", id="both"),
        pytest.param({"sql": None, "definition": {"event_name": "a", "aggregation": "avg"}}, "definition",
                     id="bad-definition"),
        pytest.param({"colour": "red"}, "colour", id="unknown-field"),
    ],
)
def test_create_errors_name_the_field(client, auth_headers, item_id: str, fields: dict, field: str) -> None:  # type: ignore[no-untyped-def]
    """Bad metric requests get a 4xx naming the offending field."""
    body = {"name": "tokens", "item_id": item_id, "sql": SQL, **fields}
    response = client.post("/v1/metrics", json={k: v for k, v in body.items() if v is not None}, headers=auth_headers)
    assert 400 <= response.status_code < 500
    assert field in str(response.get_json())


def test_update_changes_metadata_not_the_definition(client, auth_headers, item_id: str) -> None:  # type: ignore[no-untyped-def]
    """PUT changes name and metadata; trying to change the SQL is a 400."""
    created = create(client, auth_headers, item_id, metadata={"a": "1"}).get_json()
    updated = client.put(f"/v1/metrics/{created['id']}", json={"name": "t2", "metadata": {"a": None, "b": "2"}},
                         headers=auth_headers).get_json()
    assert (updated["name"], updated["metadata"], updated["sql"]) == ("t2", {"b": "2"}, SQL)
    refused = client.put(f"/v1/metrics/{created['id']}", json={"sql": "SELECT COUNT(*) FROM events"},
                         headers=auth_headers)
    assert refused.status_code == 400


def test_unknown_metric_is_404(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """Fetching a metric that does not exist is a 404 in Orb's error shape."""
    response = client.get("/v1/metrics/missing", headers=auth_headers)
    assert (response.status_code, response.get_json()["status"]) == (404, 404)


def test_archive_and_unarchive_filter_the_list(client, auth_headers, item_id: str) -> None:  # type: ignore[no-untyped-def]
    """An archived metric is listed under status=archived until it is unarchived."""
    created = create(client, auth_headers, item_id).get_json()
    archived = client.post(f"/v1/metrics/{created['id']}/archive", headers=auth_headers).get_json()
    assert archived["status"] == "archived"
    listed = client.get("/v1/metrics?status=archived", headers=auth_headers).get_json()["data"]
    assert [m["id"] for m in listed] == [created["id"]]
    assert client.get("/v1/metrics?status=active", headers=auth_headers).get_json()["data"] == []
    assert client.post(f"/v1/metrics/{created['id']}/unarchive", headers=auth_headers).get_json()["status"] == "active"
