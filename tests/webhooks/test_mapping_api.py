"""The mapping API: listings CRUD, contract filters, PATCH mapping and custom properties."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from tests.webhooks.test_receivers import FakeBilling, _add_listing, _event, _post, _run_queue, billing  # noqa: F401
from worker.persistence.contracts import ContractRow

LISTING = {"marketplace": "aws", "product_id": "prod-abc", "billing_plan_id": "plan_1",
           "dimension": "usage_cost", "unit_price": "0.01"}


def test_listing_crud(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """A listing is created, fetched, listed and updated; defaults are sensible."""
    created = client.post("/v1/listings", json={**LISTING, "metering_start_date": "2026-11-01"}, headers=auth_headers)
    assert created.status_code == 201, created.json
    body = created.json
    assert body["id"].startswith("lst_") and body["unit_price"] == "0.01"
    assert body["close_rounding"] == "floor" and body["include_fixed_fees"] is False
    assert body["metering_start_date"] == "2026-11-01"
    assert client.get(f"/v1/listings/{body['id']}", headers=auth_headers).json == body
    listed = client.get("/v1/listings?marketplace=aws", headers=auth_headers).json
    assert listed["total_count"] == 1 and listed["results"][0]["id"] == body["id"]
    patched = client.patch(f"/v1/listings/{body['id']}", json={"unit_price": "0.001", "close_rounding": "half_up"},
                           headers=auth_headers)
    assert patched.status_code == 200 and patched.json["unit_price"] == "0.001"
    assert patched.json["close_rounding"] == "half_up"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**LISTING, "unit_price": 0.01}, "unit_price"),
        ({**LISTING, "unit_price": "-1"}, "unit_price"),
        ({**LISTING, "marketplace": "ibm"}, "marketplace"),
        ({**LISTING, "close_rounding": "up"}, "close_rounding"),
        ({**LISTING, "metering_start_date": "2026-11-01T05:00:00Z"}, "metering_start_date"),
        ({**LISTING, "surprise": 1}, "surprise"),
        ({k: v for k, v in LISTING.items() if k != "dimension"}, "dimension"),
    ],
    ids=["float-price", "negative-price", "marketplace", "rounding", "not-midnight", "unknown-field", "missing-dimension"],
)
def test_listing_validation(client, auth_headers, body, field) -> None:  # type: ignore[no-untyped-def]
    """Invalid listings get 400 naming the field."""
    response = client.post("/v1/listings", json=body, headers=auth_headers)
    assert response.status_code == 400
    assert field in response.json["detail"]


def test_listing_aws_identifier_flags(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """New listings are neither legacy nor Concurrent Agreements; the flags are set, shown and exclusive."""
    created = client.post("/v1/listings", json=LISTING, headers=auth_headers).json
    assert (created["aws_legacy_identifiers"], created["aws_concurrent_agreements"]) == (False, False)
    patched = client.patch(f"/v1/listings/{created['id']}", json={"aws_concurrent_agreements": True}, headers=auth_headers)
    assert patched.status_code == 200 and patched.json["aws_concurrent_agreements"] is True
    both = client.patch(f"/v1/listings/{created['id']}", json={"aws_legacy_identifiers": True}, headers=auth_headers)
    assert both.status_code == 400
    assert [e["field"] for e in both.json["validation_errors"]] == ["aws_concurrent_agreements"]
    assert client.get(f"/v1/listings/{created['id']}", headers=auth_headers).json["aws_legacy_identifiers"] is False
    azure = client.post("/v1/listings", json={**LISTING, "marketplace": "azure", "aws_legacy_identifiers": True},
                        headers=auth_headers)
    assert azure.status_code == 400
    assert [e["field"] for e in azure.json["validation_errors"]] == ["aws_legacy_identifiers"]


def test_listing_conflict_and_not_found(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """A second listing for the same product and plan is 409; an unknown id is 404."""
    assert client.post("/v1/listings", json=LISTING, headers=auth_headers).status_code == 201
    assert client.post("/v1/listings", json=LISTING, headers=auth_headers).status_code == 409
    assert client.get("/v1/listings/lst_nope", headers=auth_headers).status_code == 404
    assert client.get("/v1/listings", headers={}).status_code == 401


def test_contract_filters_and_detail(app, client, auth_headers, billing) -> None:  # type: ignore[no-untyped-def]
    """Contracts are filtered by cloud identifiers and fetched with their inbox history."""
    _add_listing(app.extensions["marketsync"].engine)
    _post(client, _event(contract_id="ctr_a"), delivery_id="a")
    _post(client, _event(contract_id="ctr_b", cloud_identifiers={"product_code": "prod-zzz",
                                                                  "customer_aws_account_id": "999999999999"}),
          delivery_id="b")
    _run_queue(app)
    everything = client.get("/v1/contracts", headers=auth_headers).json
    assert everything["total_count"] == 2 and everything["page_count"] == 1
    by_account = client.get("/v1/contracts?customer_aws_account_id=999999999999", headers=auth_headers).json
    assert [c["external_id"] for c in by_account["results"]] == ["ctr_b"]
    unmapped = client.get("/v1/contracts?mapping_status=unmapped", headers=auth_headers).json
    assert [c["external_id"] for c in unmapped["results"]] == ["ctr_b"]
    page = client.get("/v1/contracts?page_size=1", headers=auth_headers).json
    assert page["count"] == 1 and page["next"] and page["previous"] is None
    detail = client.get(f"/v1/contracts/{unmapped['results'][0]['id']}", headers=auth_headers).json
    assert detail["inbox"][0]["status"] == "done"
    assert client.get("/v1/contracts?colour=red", headers=auth_headers).status_code == 400


def test_patch_maps_unmapped_contract(app, client, auth_headers, billing) -> None:  # type: ignore[no-untyped-def]
    """PATCH external_associations attaches an existing subscription; errors are 404 and 409."""
    engine = app.extensions["marketsync"].engine
    _post(client, _event(contract_id="ctr_u"), delivery_id="u")
    _run_queue(app)
    contract = client.get("/v1/contracts", headers=auth_headers).json["results"][0]
    assert contract["mapping"]["status"] == "unmapped"
    url = f"/v1/contracts/{contract['id']}"
    body = lambda sub: {"external_associations": {"billing": {"mapped_object": {"id": sub}}}}  # noqa: E731
    missing = client.patch(url, json=body("sub_missing"), headers=auth_headers)
    assert missing.status_code == 404 and "sub_missing" in missing.json["detail"]
    sub = billing.create_subscription(idempotency_key="x", customer_id="cus_9", plan_id="p", start=None,  # type: ignore[arg-type]
                                      external_marketplace="aws", reporting_id="x")
    mapped = client.patch(url, json=body(sub), headers=auth_headers)
    assert mapped.status_code == 200, mapped.json
    assert mapped.json["mapping"] == {"status": "mapped", "reason": None, "customer_id": "cus_9", "subscription_id": sub}
    # A second contract cannot take the same subscription.
    _post(client, _event(contract_id="ctr_v"), delivery_id="v")
    _run_queue(app)
    other = [c for c in client.get("/v1/contracts", headers=auth_headers).json["results"] if c["external_id"] == "ctr_v"][0]
    conflict = client.patch(f"/v1/contracts/{other['id']}", json=body(sub), headers=auth_headers)
    assert conflict.status_code == 409 and "already mapped" in conflict.json["detail"]
    with Session(engine) as s:
        assert s.get(ContractRow, other["id"]).subscription_id is None


def _unmapped_contract(app, client, auth_headers, billing, key: str):  # type: ignore[no-untyped-def]
    """Return the URL of a fresh unmapped contract and a subscription of another customer it may take."""
    _post(client, _event(contract_id=f"ctr_{key}"), delivery_id=key)
    _run_queue(app)
    contract = [c for c in client.get("/v1/contracts", headers=auth_headers).json["results"]
                if c["external_id"] == f"ctr_{key}"][0]
    assert contract["mapping"]["status"] == "unmapped"
    sub = billing.create_subscription(idempotency_key=key, customer_id="cus_9", plan_id="p", start=None,  # type: ignore[arg-type]
                                      external_marketplace="aws", reporting_id=key)
    return f"/v1/contracts/{contract['id']}", sub


def _associations(**keys):  # type: ignore[no-untyped-def]
    """``{"external_associations": {key: {"mapped_object": {"id": value} or None}}}``."""
    return {"external_associations": {key: {"mapped_object": {"id": value} if value else None}
                                      for key, value in keys.items()}}


@pytest.mark.parametrize("key", ["orb", "billing"])
def test_patch_maps_with_orb_or_its_billing_alias(app, client, auth_headers, billing, key) -> None:  # type: ignore[no-untyped-def]
    """Clazar's body (external_associations.orb) maps a contract; the older billing key still does."""
    url, sub = _unmapped_contract(app, client, auth_headers, billing, key)
    mapped = client.patch(url, json=_associations(**{key: sub}), headers=auth_headers)
    assert mapped.status_code == 200, mapped.json
    assert mapped.json["mapping"]["status"] == "mapped" and mapped.json["mapping"]["subscription_id"] == sub
    assert mapped.json["external_associations"] == {"orb": {"mapped_object": {"id": sub}},
                                                    "billing": {"mapped_object": {"id": sub}}}
    assert client.get(url, headers=auth_headers).json["external_associations"]["orb"]["mapped_object"] == {"id": sub}


def test_patch_orb_and_billing_together(app, client, auth_headers, billing) -> None:  # type: ignore[no-untyped-def]
    """orb and billing with the same id map; different ids (or one of them null) are a 400 naming billing."""
    url, sub = _unmapped_contract(app, client, auth_headers, billing, "both")
    for body in (_associations(orb=sub, billing="sub_other"), _associations(orb=sub, billing=None)):
        refused = client.patch(url, json=body, headers=auth_headers)
        assert refused.status_code == 400, refused.json
        assert refused.json["detail"].startswith("external_associations.billing: ")
        assert refused.json["validation_errors"][0]["field"] == "external_associations.billing"
    assert client.get(url, headers=auth_headers).json["mapping"]["status"] == "unmapped"
    mapped = client.patch(url, json=_associations(orb=sub, billing=sub), headers=auth_headers)
    assert mapped.status_code == 200, mapped.json
    assert mapped.json["mapping"]["subscription_id"] == sub


@pytest.mark.parametrize(
    ("body", "field"),
    [({"external_associations": {}}, "external_associations.orb"),
     ({"external_associations": {"orb": {}}}, "external_associations.orb.mapped_object"),
     ({"external_associations": {"orb": {"mapped_object": {"id": ""}}}}, "external_associations.orb.mapped_object.id"),
     ({"external_associations": {"stripe": {"mapped_object": {"id": "sub_1"}}}}, "external_associations.stripe")],
    ids=["empty", "no-mapped-object", "empty-id", "unknown-key"],
)
def test_patch_associations_validation(app, client, auth_headers, billing, body, field) -> None:  # type: ignore[no-untyped-def]
    """A malformed external_associations is a 400 naming the field."""
    url, _ = _unmapped_contract(app, client, auth_headers, billing, "val")
    refused = client.patch(url, json=body, headers=auth_headers)
    assert refused.status_code == 400, refused.json
    assert refused.json["detail"].startswith(f"{field}: "), refused.json


@pytest.mark.parametrize("key", ["orb", "billing"])
def test_patch_null_mapped_object_unmaps(app, client, auth_headers, billing, key) -> None:  # type: ignore[no-untyped-def]
    """mapped_object null detaches the subscription (under orb or billing); the contract can be mapped again."""
    engine = app.extensions["marketsync"].engine
    url, sub = _unmapped_contract(app, client, auth_headers, billing, f"null_{key}")
    assert client.patch(url, json=_associations(orb=sub), headers=auth_headers).status_code == 200
    unmapped = client.patch(url, json=_associations(**{key: None}), headers=auth_headers)
    assert unmapped.status_code == 200, unmapped.json
    assert unmapped.json["mapping"]["status"] == "unmapped" and unmapped.json["mapping"]["subscription_id"] is None
    assert sub in unmapped.json["mapping"]["reason"]
    assert unmapped.json["external_associations"] == {"orb": {"mapped_object": None}, "billing": {"mapped_object": None}}
    with Session(engine) as s:
        row = s.get(ContractRow, url.rsplit("/", 1)[1])
        assert row.subscription_id is None and row.mapping_status == "unmapped" and row.customer_id == "cus_9"
    again = client.patch(url, json=_associations(**{key: None}), headers=auth_headers)
    assert again.status_code == 200 and again.json["mapping"]["status"] == "unmapped"
    # Unmapped, the subscription is free again: this contract (or another) may take it.
    remapped = client.patch(url, json=_associations(orb=sub), headers=auth_headers)
    assert remapped.status_code == 200 and remapped.json["mapping"]["subscription_id"] == sub


def test_patch_custom_properties_merge(app, client, auth_headers, billing) -> None:  # type: ignore[no-untyped-def]
    """custom_properties are merged and a null value removes the key."""
    _post(client, _event(contract_id="ctr_p"), delivery_id="p")
    _run_queue(app)
    contract_id = client.get("/v1/contracts", headers=auth_headers).json["results"][0]["id"]
    url = f"/v1/contracts/{contract_id}"
    client.patch(url, json={"custom_properties": {"crm_id": "A-1", "tier": "gold"}}, headers=auth_headers)
    result = client.patch(url, json={"custom_properties": {"tier": None, "region": "eu"}}, headers=auth_headers)
    assert result.json["custom_properties"] == {"crm_id": "A-1", "region": "eu"}
    bad = client.patch(url, json={"custom_properties": {"nested": {"a": 1}}}, headers=auth_headers)
    assert bad.status_code == 400 and "nested" in bad.json["detail"]
    assert client.patch("/v1/contracts/ctr_nope", json={"custom_properties": {}}, headers=auth_headers).status_code == 404


def test_unmapping_a_canceled_contract_that_owes_its_final_report_is_refused(app, client, auth_headers,  # type: ignore[no-untyped-def]
                                                                             billing) -> None:
    """A canceled contract reports its final usage only while mapped: unmapping it is a 409 that
    says why, and changes nothing; once closed it may be unmapped."""
    engine = app.extensions["marketsync"].engine
    url, sub = _unmapped_contract(app, client, auth_headers, billing, "owes")
    assert client.patch(url, json=_associations(orb=sub), headers=auth_headers).status_code == 200
    contract_id = url.rsplit("/", 1)[1]
    with Session(engine) as s:
        row = s.get(ContractRow, contract_id)
        row.status = "canceled"
        s.add(row)
        s.commit()
    refused = client.patch(url, json=_associations(orb=None), headers=auth_headers)
    assert refused.status_code == 409, refused.json
    assert "final usage report" in refused.json["detail"]
    with Session(engine) as s:
        assert s.get(ContractRow, contract_id).subscription_id == sub
    with Session(engine) as s:
        row = s.get(ContractRow, contract_id)
        row.status = "closed"
        s.add(row)
        s.commit()
    assert client.patch(url, json=_associations(orb=None), headers=auth_headers).status_code == 200


def test_a_contract_an_operator_unmapped_stays_unmapped_through_lifecycle_events(app, client, auth_headers,  # type: ignore[no-untyped-def]
                                                                                 billing) -> None:
    """Once an operator unmaps a contract, a later contract.modified (or a creation delivered
    again) does not map it back to its old subscription; the operator's next mapping does."""
    engine = app.extensions["marketsync"].engine
    _add_listing(engine)
    _post(client, _event(contract_id="ctr_op"), delivery_id="op1")
    _run_queue(app)
    contract = [c for c in client.get("/v1/contracts", headers=auth_headers).json["results"]
                if c["external_id"] == "ctr_op"][0]
    assert contract["mapping"]["status"] == "mapped"
    url, sub = f"/v1/contracts/{contract['id']}", contract["mapping"]["subscription_id"]
    assert client.patch(url, json=_associations(orb=None), headers=auth_headers).status_code == 200
    _post(client, _event("contract.modified", contract_id="ctr_op",
                         pricing={"currency": "USD", "dimensions": [{"name": "usage_cost", "unit_price": "0.02"}]}),
          delivery_id="op2")
    again = _event(contract_id="ctr_op")
    again["id"] = "evt_created_again"
    _post(client, again, delivery_id="op3")
    _run_queue(app)
    after = client.get(url, headers=auth_headers).json
    assert after["mapping"]["status"] == "unmapped" and after["mapping"]["subscription_id"] is None, after["mapping"]
    remapped = client.patch(url, json=_associations(orb=sub), headers=auth_headers)
    assert remapped.status_code == 200 and remapped.json["mapping"]["subscription_id"] == sub
    with Session(engine) as s:
        assert s.get(ContractRow, contract["id"]).operator_unmapped is False


def test_a_contract_with_consumption_shows_its_entitlements(app, client, auth_headers, billing) -> None:  # type: ignore[no-untyped-def]
    """``data.entitlements`` of the normalized webhook are stored from the event's instant and shown
    in the contract JSON; a change adds a snapshot, the same one delivered again adds nothing, and a
    bad quantity is a 400 naming the field that changes nothing."""
    _add_listing(app.extensions["marketsync"].engine)
    _post(client, _event(contract_id="ctr_cons", entitlements={"usage_cost": 1000}), delivery_id="c1")
    _post(client, _event("contract.modified", contract_id="ctr_cons", entitlements={"usage_cost": 1500},
                         effective_at="2026-11-25T00:00:00Z"), delivery_id="c2")
    again = _event("contract.modified", contract_id="ctr_cons", entitlements={"usage_cost": 1500},
                   effective_at="2026-11-26T00:00:00Z")
    again["id"] = "evt_again"
    _post(client, again, delivery_id="c3")
    bad = _post(client, _event("contract.modified", contract_id="ctr_cons", entitlements={"usage_cost": "1.5"}),
                delivery_id="c4")
    assert bad.status_code == 400 and "data.entitlements" in bad.json["detail"], bad.json
    _run_queue(app)
    [contract] = [c for c in client.get("/v1/contracts", headers=auth_headers).json["results"]
                  if c["external_id"] == "ctr_cons"]
    assert contract["entitlements"] == [
        {"effective_at": "2026-11-21T10:00:00+00:00", "included": {"usage_cost": 1000}, "source": "contracts"},
        {"effective_at": "2026-11-25T00:00:00+00:00", "included": {"usage_cost": 1500}, "source": "contracts"},
    ]


def test_patch_sets_what_a_contract_includes(app, client, auth_headers, billing) -> None:  # type: ignore[no-untyped-def]
    """An operator sets what a contract includes from an instant (e.g. a Google commitment the API
    does not expose); a bad quantity or a naive instant is a 400 naming the field and changes nothing."""
    _add_listing(app.extensions["marketsync"].engine)
    _post(client, _event(contract_id="ctr_ops_incl"), delivery_id="oi1")
    _run_queue(app)
    [contract] = [c for c in client.get("/v1/contracts", headers=auth_headers).json["results"]
                  if c["external_id"] == "ctr_ops_incl"]
    url = f"/v1/contracts/{contract['id']}"
    for body, field in (({"included": {"usage_cost": "1.5"}, "effective_at": "2026-11-22T00:00:00Z"},
                         "entitlements.included"),
                        ({"included": {"usage_cost": 10}, "effective_at": "2026-11-22T00:00:00"},
                         "entitlements.effective_at"),
                        ({"included": {"usage_cost": 10}}, "entitlements.effective_at")):
        answer = client.patch(url, json={"entitlements": body}, headers=auth_headers)
        assert answer.status_code == 400 and field in answer.json["detail"], answer.json
    assert client.get(url, headers=auth_headers).json["entitlements"] == []
    answer = client.patch(url, json={"entitlements": {"included": {"usage_cost": 1000},
                                                      "effective_at": "2026-11-22T00:00:00Z"}}, headers=auth_headers)
    assert answer.status_code == 200, answer.json
    assert answer.json["entitlements"] == [{"effective_at": "2026-11-22T00:00:00+00:00",
                                            "included": {"usage_cost": 1000}, "source": "operator"}]
