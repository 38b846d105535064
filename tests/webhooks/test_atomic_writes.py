"""Nothing answered 200 is lost: concurrent read-modify-writes over real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from sqlmodel import Session

from config import Settings
from tests.conftest import TEST_API_KEY, TEST_WEBHOOK_SECRET, LiveServer
from worker.persistence.contracts import ContractRow, ListingRow

PARALLEL = 20
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
HEADERS = {"Authorization": f"Bearer {TEST_API_KEY}"}


@pytest.fixture
def server(any_url: str, redis_url: str, redis_conn: Any, tmp_path: Path) -> Iterator[LiveServer]:
    """Serve the app on SQLite, then on PostgreSQL, over real HTTP (threaded)."""
    from webhooks import create_app

    settings = Settings.from_env({
        "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": any_url, "REDIS_URL": redis_url,
        "API_KEYS": TEST_API_KEY, "WEBHOOK_SECRETS": TEST_WEBHOOK_SECRET, "LOG_LEVEL": "WARNING",
    })
    app = create_app(settings)
    live = LiveServer(app)
    yield live
    live.stop()
    app.extensions["marketsync"].close()


def _engine(server: LiveServer) -> Any:
    return server.app.extensions["marketsync"].engine


def _add_contract(server: LiveServer) -> str:
    with Session(_engine(server)) as session:
        session.add(ContractRow(id="ctr_1", source="contracts", external_id="c-1", marketplace="aws",
                                custom_properties={"kept": "yes"}, created_at=NOW, updated_at=NOW))
        session.commit()
    return "ctr_1"


def _parallel(calls: list[Any]) -> list[requests.Response]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_parallel_property_patches_all_survive(server: LiveServer) -> None:
    """Twenty parallel PATCHes of different custom property keys all answer 200 and all keys are stored."""
    contract_id = _add_contract(server)
    url = f"{server.url}/v1/contracts/{contract_id}"
    answers = _parallel([
        (lambda i=i: requests.patch(url, json={"custom_properties": {f"key{i}": i}}, headers=HEADERS, timeout=60))
        for i in range(PARALLEL)
    ])
    assert [a.status_code for a in answers] == [200] * PARALLEL, [a.text for a in answers if a.status_code != 200]
    stored = requests.get(url, headers=HEADERS, timeout=10).json()["custom_properties"]
    assert stored == {"kept": "yes", **{f"key{i}": i for i in range(PARALLEL)}}


def test_parallel_property_removals_and_additions_all_apply(server: LiveServer) -> None:
    """Parallel PATCHes that remove some keys and add others leave exactly the expected keys."""
    contract_id = _add_contract(server)
    url = f"{server.url}/v1/contracts/{contract_id}"
    seed = {f"old{i}": "x" for i in range(10)}
    assert requests.patch(url, json={"custom_properties": seed}, headers=HEADERS, timeout=10).status_code == 200
    calls = [(lambda i=i: requests.patch(url, json={"custom_properties": {f"old{i}": None}}, headers=HEADERS,
                                         timeout=60)) for i in range(10)]
    calls += [(lambda i=i: requests.patch(url, json={"custom_properties": {f"new{i}": "y"}}, headers=HEADERS,
                                          timeout=60)) for i in range(10)]
    assert {a.status_code for a in _parallel(calls)} == {200}
    stored = requests.get(url, headers=HEADERS, timeout=10).json()["custom_properties"]
    assert stored == {"kept": "yes", **{f"new{i}": "y" for i in range(10)}}


def test_parallel_customer_metadata_updates_all_survive(server: LiveServer) -> None:
    """Twenty parallel customer metadata updates of different keys all answer 200 and all keys are stored."""
    created = requests.post(f"{server.url}/v1/customers", json={"name": "Acme", "email": "a@example.com",
                                                                "metadata": {"kept": "yes"}},
                            headers=HEADERS, timeout=10)
    assert created.status_code in (200, 201), created.text
    url = f"{server.url}/v1/customers/{created.json()['id']}"
    answers = _parallel([
        (lambda i=i: requests.put(url, json={"metadata": {f"key{i}": str(i)}}, headers=HEADERS, timeout=60))
        for i in range(PARALLEL)
    ])
    assert [a.status_code for a in answers] == [200] * PARALLEL, [a.text for a in answers if a.status_code != 200]
    stored = requests.get(url, headers=HEADERS, timeout=10).json()["metadata"]
    assert stored == {"kept": "yes", **{f"key{i}": str(i) for i in range(PARALLEL)}}


def test_parallel_metric_metadata_updates_all_survive(server: LiveServer) -> None:
    """Parallel metric metadata updates of different keys all answer 200 and all keys are stored."""
    created = requests.post(f"{server.url}/v1/metrics", json={
        "name": "calls", "description": "", "item_id": _item(server),
        "sql": "SELECT COUNT(*) FROM events WHERE event_name = 'call'", "metadata": {"kept": "yes"},
    }, headers=HEADERS, timeout=10)
    assert created.status_code in (200, 201), created.text
    url = f"{server.url}/v1/metrics/{created.json()['id']}"
    answers = _parallel([
        (lambda i=i: requests.put(url, json={"metadata": {f"key{i}": str(i)}}, headers=HEADERS, timeout=60))
        for i in range(PARALLEL)
    ])
    assert [a.status_code for a in answers] == [200] * PARALLEL, [a.text for a in answers if a.status_code != 200]
    stored = requests.get(url, headers=HEADERS, timeout=10).json()["metadata"]
    assert stored == {"kept": "yes", **{f"key{i}": str(i) for i in range(PARALLEL)}}


def _item(server: LiveServer) -> str:
    answer = requests.post(f"{server.url}/v1/items", json={"name": "API calls"}, headers=HEADERS, timeout=10)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["id"]


def test_parallel_listing_patches_all_apply(server: LiveServer) -> None:
    """Parallel listing PATCHes of different fields all answer 200 and every field keeps its new value."""
    with Session(_engine(server)) as session:
        session.add(ListingRow(id="lst_1", marketplace="aws", product_id="prod-abc", billing_plan_id="plan_1",
                               dimension="usage_cost", unit_price="0.01", created_at=NOW, updated_at=NOW))
        session.commit()
    url = f"{server.url}/v1/listings/lst_1"
    changes = [{"name": "Pro"}, {"dimension": "calls"}, {"unit_price": "0.02"}, {"close_rounding": "ceil"},
               {"include_fixed_fees": True}, {"approve_entitlements": False}, {"billing_plan_id": "plan_2"}]
    answers = _parallel([(lambda c=c: requests.patch(url, json=c, headers=HEADERS, timeout=60)) for c in changes])
    assert {a.status_code for a in answers} == {200}
    stored = requests.get(url, headers=HEADERS, timeout=10).json()
    for change in changes:
        assert {k: stored[k] for k in change} == change


def test_parallel_plan_versions_get_one_winner(server: LiveServer) -> None:
    """Parallel requests for the same next plan version: exactly one is created, the others are 409, none 500."""
    base = server.url
    item = requests.post(f"{base}/v1/items", json={"name": "API"}, headers=HEADERS, timeout=10).json()["id"]
    price = {"name": "Fee", "item_id": item, "model_type": "unit", "cadence": "monthly",
             "fixed_price_quantity": 1, "unit_config": {"unit_amount": "10.00"}}
    plan = requests.post(f"{base}/v1/plans", json={"name": "Pro", "currency": "USD", "prices": [{"price": price}]},
                         headers=HEADERS, timeout=10).json()
    url = f"{base}/v1/plans/{plan['id']}/versions"
    calls = [(lambda i=i: requests.post(url, json={"version": 2, "add_prices": [{"price": {**price, "name": f"Fee {i}"}}]},
                                        headers=HEADERS, timeout=60)) for i in range(8)]
    statuses = sorted(a.status_code for a in _parallel(calls))
    assert statuses == [201] + [409] * 7, statuses
    versions = requests.get(url, headers=HEADERS, timeout=10).json()["data"]
    assert [v["version"] for v in versions] == [1, 2]


def test_parallel_entitlement_patches_all_survive(server: LiveServer) -> None:
    """Twenty parallel PATCHes of what a contract includes, each from its own instant, all answer 200
    and every snapshot is stored, oldest first."""
    contract_id = _add_contract(server)
    url = f"{server.url}/v1/contracts/{contract_id}"
    answers = _parallel([
        (lambda i=i: requests.patch(url, json={"entitlements": {
            "included": {"api_calls": 1000 + i}, "effective_at": f"2026-11-{i + 1:02d}T00:00:00Z"}},
            headers=HEADERS, timeout=30))
        for i in range(PARALLEL)])
    assert [a.status_code for a in answers] == [200] * PARALLEL, [a.text for a in answers if a.status_code != 200]
    stored = requests.get(url, headers=HEADERS, timeout=10).json()["entitlements"]
    assert [e["included"]["api_calls"] for e in stored] == [1000 + i for i in range(PARALLEL)]
