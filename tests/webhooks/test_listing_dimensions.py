"""Listings with several dimensions: created, shown, changed, and refused with a 400 naming the field."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from billing_core.persistence.catalog import SqlCatalog
from tests.billing_core.helpers import plan_of, unit
from worker.persistence.contracts import ListingRow

BASE = {"marketplace": "aws", "product_id": "prod-dims", "billing_plan_id": "plan_dims"}
TWO = [{"name": "api_calls", "unit_price": "0.001", "prices": ["calls"]},
       {"name": "usage_fee", "unit_price": "0.01", "prices": "remaining"}]


@pytest.fixture
def plan(app: Any) -> None:
    """Store a plan with two usage prices (keys calls, tokens) and a fixed fee (key platform)."""
    with Session(app.extensions["marketsync"].engine) as session:
        SqlCatalog(session).save_plan(plan_of(
            unit("0.002", id="p_calls", key="calls", item_id="item_calls", metric="m1"),
            unit("0.0001", id="p_tokens", key="tokens", item_id="item_tokens", metric="tokens"),
            unit("10", id="p_fee", key="platform", item_id="item_platform", metric=None,
                 fixed_price_quantity=Decimal(1)),
            id="plan_dims"))
        session.commit()


def _listings(app: Any) -> int:
    with Session(app.extensions["marketsync"].engine) as session:
        return int(session.execute(select(func.count()).select_from(ListingRow)).scalar_one())


def test_two_dimension_listing_is_created_and_shown(client: Any, auth_headers: dict[str, str], plan: None) -> None:
    """A listing with two dimensions answers them as given, with dimension and unit_price null."""
    created = client.post("/v1/listings", json={**BASE, "dimensions": TWO}, headers=auth_headers)
    assert created.status_code == 201, created.json
    body = created.json
    assert body["dimensions"] == TWO and body["dimension"] is None and body["unit_price"] is None
    assert client.get(f"/v1/listings/{body['id']}", headers=auth_headers).json == body


def test_single_dimension_listing_shows_one_dimension_of_every_price(client: Any, auth_headers: dict[str, str]) -> None:
    """A listing made with dimension and unit_price shows them, and one dimension taking the remaining prices."""
    body = client.post("/v1/listings", json={**BASE, "dimension": "usage_cost", "unit_price": "0.01"},
                       headers=auth_headers).json
    assert (body["dimension"], body["unit_price"]) == ("usage_cost", "0.01")
    assert body["dimensions"] == [{"name": "usage_cost", "unit_price": "0.01", "prices": "remaining"}]


def _with(index: int, **changes: Any) -> list[dict[str, Any]]:
    out = [dict(d) for d in TWO]
    out[index].update(changes)
    return out


@pytest.mark.parametrize(("body", "field"), [
    pytest.param({"dimensions": _with(0, prices=["calls", "nope"])}, "dimensions.0.prices.1", id="unknown-price-key"),
    pytest.param({"dimensions": _with(1, prices=["calls"])}, "dimensions.1.prices.0", id="price-mapped-twice"),
    pytest.param({"dimensions": _with(0, prices=["calls", "item_calls"])}, "dimensions.0.prices.1",
                 id="price-mapped-twice-by-key-and-item"),
    pytest.param({"dimensions": _with(1, prices=["tokens"]) + [{"name": "c", "unit_price": "1", "prices": ["calls"]}]},
                 "dimensions.2.prices.0", id="price-mapped-twice-across-dimensions"),
    pytest.param({"dimensions": TWO[:1]}, "dimensions", id="no-dimension-for-remaining-prices"),
    pytest.param({"dimensions": _with(1, name="api_calls")}, "dimensions.1.name", id="duplicate-name"),
    pytest.param({"dimensions": _with(0, prices="remaining")}, "dimensions.1.prices", id="two-remaining"),
    pytest.param({"dimensions": _with(0, unit_price=0.001)}, "dimensions.0.unit_price", id="float-unit-price"),
    pytest.param({"dimensions": _with(0, unit_price="0")}, "dimensions.0.unit_price", id="zero-unit-price"),
    pytest.param({"dimensions": _with(0, unit_price="-0.1")}, "dimensions.0.unit_price", id="negative-unit-price"),
    pytest.param({"dimensions": _with(0, unit_price="1e-400")}, "dimensions.0.unit_price", id="inexact-unit-price"),
    pytest.param({"dimensions": _with(0, unit_price="abc")}, "dimensions.0.unit_price", id="not-a-number"),
    pytest.param({"dimensions": _with(0, prices=[])}, "dimensions.0.prices", id="no-prices"),
    pytest.param({"dimensions": _with(0, prices="rest")}, "dimensions.0.prices", id="prices-not-remaining"),
    pytest.param({"dimensions": _with(0, extra=1)}, "dimensions.0.extra", id="unknown-field"),
    pytest.param({"dimensions": []}, "dimensions", id="empty"),
    pytest.param({"dimensions": TWO, "dimension": "usage_cost"}, "dimension", id="both-forms"),
    pytest.param({"dimensions": TWO, "billing_plan_id": "plan_none"}, "billing_plan_id", id="no-such-plan"),
    pytest.param({"dimensions": [{"name": "a", "unit_price": "1", "prices": ["calls", "tokens"]}],
                  "include_fixed_fees": True}, "dimensions", id="fixed-fee-left-out"),
    pytest.param({}, "dimension", id="neither-form"),
])
def test_bad_dimensions_are_refused_naming_the_field(app: Any, client: Any, auth_headers: dict[str, str],
                                                     plan: None, body: dict[str, Any], field: str) -> None:
    """A listing whose dimensions are wrong is a 400 naming the field, and nothing is stored."""
    answer = client.post("/v1/listings", json={**BASE, **body}, headers=auth_headers)
    assert answer.status_code == 400, answer.json
    assert field in [e["field"] for e in answer.json["validation_errors"]], answer.json
    assert _listings(app) == 0


def test_usage_prices_all_named_need_no_remaining_dimension(client: Any, auth_headers: dict[str, str],
                                                            plan: None) -> None:
    """Naming every usage price (by key or item) is enough when fixed fees are not reported."""
    dims = [{"name": "api_calls", "unit_price": "0.001", "prices": ["item_calls"]},
            {"name": "tokens", "unit_price": "0.01", "prices": ["tokens"]}]
    created = client.post("/v1/listings", json={**BASE, "dimensions": dims}, headers=auth_headers)
    assert created.status_code == 201, created.json


def test_patch_switches_between_one_and_several_dimensions(app: Any, client: Any, auth_headers: dict[str, str],
                                                           plan: None) -> None:
    """PATCH sets dimensions, refuses a single unit_price while there are several, and null goes back to one."""
    one = client.post("/v1/listings", json={**BASE, "dimension": "usage_cost", "unit_price": "0.01"},
                      headers=auth_headers).json
    url = f"/v1/listings/{one['id']}"
    several = client.patch(url, json={"dimensions": TWO}, headers=auth_headers)
    assert several.status_code == 200 and several.json["dimensions"] == TWO
    refused = client.patch(url, json={"unit_price": "0.02"}, headers=auth_headers)
    assert refused.status_code == 400 and refused.json["validation_errors"][0]["field"] == "unit_price"
    wrong = client.patch(url, json={"dimensions": _with(0, prices=["nope"])}, headers=auth_headers)
    assert wrong.status_code == 400 and wrong.json["validation_errors"][0]["field"] == "dimensions.0.prices.0"
    assert client.get(url, headers=auth_headers).json["dimensions"] == TWO  # the refusals changed nothing
    back = client.patch(url, json={"dimensions": None, "dimension": "usage_cost", "unit_price": "0.02"},
                        headers=auth_headers)
    assert back.status_code == 200, back.json
    assert back.json["dimensions"] == [{"name": "usage_cost", "unit_price": "0.02", "prices": "remaining"}]


def test_patch_to_a_plan_lacking_a_named_price_is_refused(client: Any, auth_headers: dict[str, str], app: Any,
                                                          plan: None) -> None:
    """Changing the billing plan re-checks the dimensions against the new plan's prices."""
    with Session(app.extensions["marketsync"].engine) as session:
        SqlCatalog(session).save_plan(plan_of(unit("1", id="p_other", key="other"), id="plan_other"))
        session.commit()
    created = client.post("/v1/listings", json={**BASE, "dimensions": TWO}, headers=auth_headers).json
    answer = client.patch(f"/v1/listings/{created['id']}", json={"billing_plan_id": "plan_other"}, headers=auth_headers)
    assert answer.status_code == 400 and answer.json["validation_errors"][0]["field"] == "dimensions.0.prices.0"
