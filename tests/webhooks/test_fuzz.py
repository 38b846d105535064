"""Fuzzing what faces the outside: receivers and the mapping API never answer 500 and store
nothing from an unverified request."""

from __future__ import annotations

import json
import time

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import func, select
from sqlmodel import Session

from tests.conftest import TEST_WEBHOOK_SECRET
from worker.persistence.contracts import ContractRow, InboxRow, ListingRow
from worker.standard_webhooks import signed_headers

RECEIVERS = ["/webhooks/contracts", "/webhooks/aws/sns", "/webhooks/aws/events", "/webhooks/azure",
             "/webhooks/gcp/pubsub"]
SETTINGS = hsettings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=15,
)
header_names = st.sampled_from([
    "Authorization", "webhook-id", "webhook-timestamp", "webhook-signature", "x-amz-sns-message-type",
    "Content-Type", "X-Request-Id", "x-amz-sns-topic-arn",
])
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


def _count(app, model) -> int:  # type: ignore[no-untyped-def]
    with Session(app.extensions["marketsync"].engine) as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


@SETTINGS
@given(path=st.sampled_from(RECEIVERS), body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()),
                                                        st.binary(max_size=300)),
       headers=st.dictionaries(header_names, header_values, max_size=5))
def test_unverified_requests_never_500_and_store_nothing(app, client, path, body, headers) -> None:  # type: ignore[no-untyped-def]
    """Random bodies and headers on every receiver get a 4xx and nothing is stored."""
    response = client.post(path, data=body, headers=headers)
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.is_json
    assert _count(app, InboxRow) == 0


@SETTINGS
@given(payload=json_values, data=st.dictionaries(st.sampled_from(
    ["contract_id", "marketplace", "cloud_identifiers", "buyer", "pricing", "effective_at", "quantity", "plan"]),
    json_values, max_size=6), kind=st.sampled_from(["contract.created", "contract.modified", "contract.canceled",
                                                    "contract.renewed", "x"]))
def test_signed_random_events_never_500(app, client, payload, data, kind) -> None:  # type: ignore[no-untyped-def]
    """Signed but malformed contract events get 202 or a 400 naming a field, never a 500."""
    for candidate in (payload, {"id": "evt", "type": kind, "occurred_at": "2026-11-21T10:00:00Z", "data": data}):
        body = json.dumps(candidate).encode()
        headers = signed_headers(TEST_WEBHOOK_SECRET, f"msg_{abs(hash(body))}", int(time.time()), body)
        response = client.post("/webhooks/contracts", data=body, headers=headers)
        assert response.status_code in (202, 400), (response.status_code, response.get_data(as_text=True)[:300])
        if response.status_code == 400:
            assert response.json["detail"]


@SETTINGS
@given(method=st.sampled_from(["get", "post", "patch", "put", "delete"]),
       path=st.sampled_from(["/v1/listings", "/v1/listings/lst_x", "/v1/contracts", "/v1/contracts/ctr_x"]),
       query=st.dictionaries(st.sampled_from(["page", "page_size", "marketplace", "status", "license_arn", "x"]),
                             header_values, max_size=3),
       body=json_values)
def test_mapping_api_never_500(app, client, auth_headers, method, path, query, body) -> None:  # type: ignore[no-untyped-def]
    """Random requests to the mapping API get a non-5xx answer and leave no half-written row."""
    listings_before = _count(app, ListingRow)
    response = getattr(client, method)(path, query_string=query, json=body, headers=auth_headers)
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:300])
    if response.status_code >= 400:
        assert response.is_json and response.json["detail"]
        assert _count(app, ListingRow) == listings_before
    assert _count(app, ContractRow) == 0
