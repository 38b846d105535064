"""A listing's usage allocations (docs/marketplaces.md §1.12): stored and shown, or refused with a 400 naming the field
as each marketplace's rule says (AWS: at most 5 tag keys; Google: label-key syntax or a reserved key; Azure: none)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session

from billing_core.persistence.catalog import SqlCatalog
from tests.billing_core.helpers import plan_of, unit


@pytest.fixture
def plan(app: Any) -> None:
    with Session(app.extensions["marketsync"].engine) as session:
        SqlCatalog(session).save_plan(plan_of(unit("0.01", id="p_alloc", metric="m1"), id="plan_alloc"))
        session.commit()


def _create(client: Any, auth_headers: dict[str, str], marketplace: str, allocations: Any) -> Any:
    return client.post("/v1/listings", headers=auth_headers, json={
        "marketplace": marketplace, "product_id": f"prod-{marketplace}", "billing_plan_id": "plan_alloc",
        "dimension": "usage_fee", "unit_price": "0.01", "usage_allocations": allocations})


def test_allocations_are_stored_shown_and_cleared(client: Any, auth_headers: dict[str, str], plan: None) -> None:
    """An AWS listing keeps its tag keys and properties; a Google one takes the reserved resource_name key; [] clears."""
    aws = _create(client, auth_headers, "aws", [{"tag": "CostCenter", "property": "cost_center"},
                                                {"tag": "team", "property": "team"}])
    assert aws.status_code == 201, aws.json
    assert aws.json["usage_allocations"] == [{"tag": "CostCenter", "property": "cost_center"},
                                             {"tag": "team", "property": "team"}]
    gcp = _create(client, auth_headers, "gcp", [
        {"tag": "cloudmarketplace.googleapis.com/resource_name", "property": "database"}])
    assert gcp.status_code == 201, gcp.json
    cleared = client.patch(f"/v1/listings/{aws.json['id']}", headers=auth_headers, json={"usage_allocations": []})
    assert cleared.status_code == 200 and cleared.json["usage_allocations"] == []
    plain = _create(client, auth_headers, "azure", None)
    assert plain.status_code == 201 and plain.json["usage_allocations"] == []


@pytest.mark.parametrize(("marketplace", "allocations", "field", "message"), [
    pytest.param("aws", [{"tag": f"k{i}", "property": f"p{i}"} for i in range(6)], "usage_allocations",
                 "at most 5 tag keys", id="aws-six-keys"),
    pytest.param("aws", [{"tag": "bad{key}", "property": "p"}], "usage_allocations.0.tag", "AWS tag keys",
                 id="aws-bad-key"),
    pytest.param("gcp", [{"tag": "ok", "property": "a"}, {"tag": "Team", "property": "b"}],
                 "usage_allocations.1.tag", "Google label keys", id="gcp-uppercase-key"),
    pytest.param("gcp", [{"tag": "ok", "property": "a"}, {"tag": "ok", "property": "b"}],
                 "usage_allocations.1.tag", "also usage_allocations.0.tag", id="repeated-key"),
    pytest.param("azure", [{"tag": "team", "property": "team"}], "usage_allocations", "azure takes no usage",
                 id="azure"),
])
def test_bad_allocations_are_refused_naming_the_field(client: Any, auth_headers: dict[str, str], plan: None,
                                                       marketplace: str, allocations: Any, field: str,
                                                       message: str) -> None:
    """A listing whose tag keys its marketplace does not take is a 400 naming the field; nothing is stored."""
    answer = _create(client, auth_headers, marketplace, allocations)
    assert answer.status_code == 400, answer.json
    assert answer.json["validation_errors"][0]["field"] == field and message in answer.json["detail"]
    assert client.get("/v1/listings", headers=auth_headers).json["results"] == []
