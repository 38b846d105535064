"""The Azure emulator's rules, driven through the real adapter (and raw requests where needed)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Iterator

import pytest
import requests

from marketplaces.azure import (
    ZERO_QUANTITY_DETAIL,
    AzureMarketplace,
    OperationSuperseded,
    SandboxCredential,
)
from marketplaces.base import (
    OutcomeStatus,
    PermanentMarketplaceError,
    TransientMarketplaceError,
)
from tests.marketplaces.azure_support import HOUR, NOW, AzureSandbox, hours_ago


@pytest.fixture(scope="module")
def azure_sandbox() -> Iterator[AzureSandbox]:
    sandbox = AzureSandbox()
    yield sandbox
    sandbox.close()


@pytest.fixture
def sandbox(azure_sandbox: AzureSandbox) -> AzureSandbox:
    azure_sandbox.reset()
    return azure_sandbox


@pytest.fixture
def sub(sandbox: AzureSandbox) -> dict[str, str]:
    return sandbox.create_customer()


def _record(ids: dict[str, str], hour=None, quantity: int = 5, dimension: str = "usage_fee",
            key: str = "k"):
    return AzureSandbox.make_record(key, ids, dimension, hour or hours_ago(1), quantity)


def _event(ids: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {
        "resourceId": ids["resource_id"],
        "quantity": 5.0,
        "dimension": "usage_fee",
        "effectiveStartTime": hours_ago(1).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "planId": ids["plan_id"],
        **fields,
    }


class _CountingSession(requests.Session):
    """A session that counts the batch calls it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if "batchUsageEvent" in url:
            self.batches += 1
        return super().request(method, url, *args, **kwargs)


# Metering --------------------------------------------------------------------------------------


def test_accepted_event_is_stored_once(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """An accepted event returns its usageEventId and shows up in the usage read-back."""
    [outcome] = sandbox.adapter.report([_record(sub, quantity=7)])
    assert outcome.status is OutcomeStatus.ACCEPTED and outcome.marketplace_record_id
    usage = sandbox.usage()
    assert usage["totals"] == [{"resource_id": sub["resource_id"], "dimension": "usage_fee",
                                "hour": hours_ago(1).strftime("%Y-%m-%dT%H:%M:%SZ"), "quantity": 7.0}]
    assert usage["events"][0]["usageEventId"] == outcome.marketplace_record_id


def test_first_write_wins(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """A second event for the same hour is a duplicate that reports the first quantity."""
    sandbox.adapter.report([_record(sub, quantity=7)])
    [outcome] = sandbox.adapter.report([_record(sub, quantity=9)])
    assert outcome.status is OutcomeStatus.DUPLICATE
    assert outcome.accepted_quantity == 7
    assert list(sandbox.usage_totals().values()) == [7.0]


def test_any_minute_maps_to_its_hour(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """An event at 10:17 collides with the 10:00 event (calendar-hour dedupe)."""
    sandbox.adapter.report([_record(sub)])
    late = (hours_ago(1) + timedelta(minutes=17)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = sandbox.api("POST", "/usageEvent", json=_event(sub, effectiveStartTime=late))
    assert response.status_code == 409


def test_single_duplicate_answers_409_with_accepted_message(
    sandbox: AzureSandbox, sub: dict[str, str]
) -> None:
    """The single-event endpoint answers 409 with the §7.2 body around the accepted event."""
    first = sandbox.api("POST", "/usageEvent", json=_event(sub, quantity=40.0))
    assert first.status_code == 200 and first.json()["status"] == "Accepted"
    again = sandbox.api("POST", "/usageEvent", json=_event(sub, quantity=41.0))
    assert again.status_code == 409
    body = again.json()
    assert set(body) == {"additionalInfo", "message", "code"}
    assert body["code"] == "Conflict" and body["message"] == "This usage event already exist."
    accepted = body["additionalInfo"]["acceptedMessage"]
    assert accepted["status"] == "Duplicate"
    assert accepted["quantity"] == 40.0
    assert accepted["usageEventId"] == first.json()["usageEventId"]


def test_batch_duplicate_result_shape(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """A duplicate inside a batch has the §7.2 result shape (null messageTime, error object)."""
    sandbox.api("POST", "/usageEvent", json=_event(sub, quantity=40.0))
    body = sandbox.api("POST", "/batchUsageEvent", json={"request": [_event(sub)]}).json()
    assert body["count"] == 1
    [result] = body["result"]
    assert result["status"] == "Duplicate"
    assert result["messageTime"] == "0001-01-01T00:00:00"
    assert result["error"]["code"] == "Conflict"
    assert result["error"]["additionalInfo"]["acceptedMessage"]["quantity"] == 40.0
    assert {"resourceId", "quantity", "dimension", "effectiveStartTime", "planId"} <= set(result)


def test_batch_over_25_events_is_refused(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """A batch of 26 events is refused as a whole with HTTP 400."""
    events = [_event(sub, dimension=f"d{i}") for i in range(26)]
    response = sandbox.api("POST", "/batchUsageEvent", json={"request": events})
    assert response.status_code == 400
    assert sandbox.usage()["events"] == []


def test_adapter_sends_at_most_25_per_batch(sandbox: AzureSandbox) -> None:
    """Sixty records go out in three batches and are all accepted."""
    ids = sandbox.create_customer(dimensions=[f"d{i}" for i in range(60)])
    session = _CountingSession()
    adapter = sandbox.build_adapter(session=session)
    outcomes = adapter.report([_record(ids, dimension=f"d{i}", key=f"k{i}") for i in range(60)])
    assert [o.key for o in outcomes] == [f"k{i}" for i in range(60)]
    assert {o.status for o in outcomes} == {OutcomeStatus.ACCEPTED}
    assert session.batches == 3


@pytest.mark.parametrize(
    "params",
    [pytest.param({}, id="missing"), pytest.param({"api-version": "2022-01-01"}, id="unsupported")],
)
def test_api_version_is_required(sandbox: AzureSandbox, sub: dict[str, str], params: dict) -> None:
    """Calls without api-version=2018-08-31 get HTTP 400."""
    response = sandbox.api("POST", "/usageEvent", params=params, json=_event(sub))
    assert response.status_code == 400


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda s: None, id="missing"),
        pytest.param(lambda s: "Bearer not-a-jwt", id="garbage"),
        pytest.param(lambda s: f"Bearer {s.token('api', ttl=-600)}", id="expired"),
        pytest.param(lambda s: f"Bearer {s.token('api', appid='other-app')}", id="other-app"),
        pytest.param(lambda s: f"Bearer {s.token('api', tid='other-tenant')}", id="other-tenant"),
        pytest.param(lambda s: f"Bearer {s.token('webhook')}", id="wrong-audience"),
    ],
)
def test_bearer_token_is_required(sandbox: AzureSandbox, sub: dict[str, str], make_header) -> None:
    """A missing, invalid, expired or foreign token gets HTTP 403."""
    header = make_header(sandbox)
    headers = {"Authorization": header} if header else {}
    response = sandbox.http.post(
        f"{sandbox.url}/api/usageEvent", params={"api-version": "2018-08-31"},
        json=_event(sub), headers=headers,
    )
    assert response.status_code == 403


def test_refused_credentials_are_permanent(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """The adapter turns a 403 (after one fresh token) into PermanentMarketplaceError."""

    class WrongAppCredential:
        def get_token(self, *scopes: str, **_: Any):
            from azure.core.credentials import AccessToken

            return AccessToken(sandbox.token("api", appid="other-app"), 2**31)

    adapter = sandbox.build_adapter(credential=WrongAppCredential())
    with pytest.raises(PermanentMarketplaceError):
        adapter.report([_record(sub)])


def test_bad_client_secret_is_permanent(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """A client secret the token endpoint refuses surfaces as PermanentMarketplaceError."""
    credential = SandboxCredential(sandbox.url, "marketsync-sandbox-tenant",
                                   "marketsync-sandbox-app", "wrong-secret")
    adapter = sandbox.build_adapter(credential=credential)
    with pytest.raises(PermanentMarketplaceError):
        adapter.report([_record(sub)])


def test_token_is_cached_and_renewed_before_expiry(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """One token serves many calls and is renewed a few minutes before expires_on."""
    inner = SandboxCredential(sandbox.url, "marketsync-sandbox-tenant", "marketsync-sandbox-app",
                              "marketsync-sandbox-secret")
    calls: list[str] = []

    class Counting:
        def get_token(self, *scopes: str, **kw: Any):
            calls.append(scopes[0])
            return inner.get_token(*scopes, **kw)

    now = [1_000.0]
    adapter = sandbox.build_adapter(credential=Counting(), clock=lambda: now[0])
    now[0] = inner.get_token("20e940b3-4c77-4b0b-9a53-9e16a1b010a7/.default").expires_on - 3600
    adapter.report([_record(sub, hour=hours_ago(1))])
    adapter.report([_record(sub, hour=hours_ago(2))])
    assert calls == ["20e940b3-4c77-4b0b-9a53-9e16a1b010a7/.default"]
    now[0] += 3600 - 120  # two minutes before expiry
    adapter.report([_record(sub, hour=hours_ago(3))])
    assert len(calls) == 2


@pytest.mark.parametrize("quantity", [pytest.param(0.0, id="zero"), pytest.param(-1.0, id="negative")])
def test_quantity_must_be_positive(sandbox: AzureSandbox, sub: dict[str, str], quantity: float) -> None:
    """Zero or negative quantities are InvalidQuantity."""
    body = sandbox.api("POST", "/batchUsageEvent", json={"request": [_event(sub, quantity=quantity)]}).json()
    assert body["result"][0]["status"] == "InvalidQuantity"


@pytest.mark.parametrize("raw", [pytest.param("NaN", id="nan"), pytest.param("Infinity", id="infinity"),
                                 pytest.param('"5"', id="text")])
def test_quantity_must_be_a_finite_number(sandbox: AzureSandbox, sub: dict[str, str], raw: str) -> None:
    """A quantity that is not a finite JSON number is BadArgument, and nothing is stored."""
    event = json.dumps(_event(sub)).replace('"quantity": 5.0', f'"quantity": {raw}')
    body = sandbox.api("POST", "/batchUsageEvent", data=f'{{"request": [{event}]}}',
                       headers={"Content-Type": "application/json"}).json()
    assert body["result"][0]["status"] == "BadArgument"
    assert sandbox.usage()["events"] == []


def test_one_event_per_resource_dimension_and_hour_in_one_batch(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """Two events for one resource, dimension and hour in one batch: the first is accepted, the second is a
    Duplicate carrying the first, and the hour keeps the first quantity."""
    body = sandbox.api("POST", "/batchUsageEvent", json={"request": [
        _event(sub, quantity=5.0), _event(sub, quantity=7.0,
                                          effectiveStartTime=(hours_ago(1) + timedelta(minutes=30)).isoformat())]}).json()
    assert [r["status"] for r in body["result"]] == ["Accepted", "Duplicate"]
    assert body["result"][1]["error"]["additionalInfo"]["acceptedMessage"]["quantity"] == 5.0
    assert list(sandbox.usage_totals().values()) == [5.0]


def test_zero_records_are_not_sent(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """The adapter answers a zero record itself (ACCEPTED, no id) without calling Azure."""
    session = _CountingSession()
    adapter = sandbox.build_adapter(session=session)
    [outcome] = adapter.report([_record(sub, quantity=0)])
    assert outcome.status is OutcomeStatus.ACCEPTED
    assert outcome.marketplace_record_id is None and outcome.detail == ZERO_QUANTITY_DETAIL
    assert session.batches == 0 and sandbox.usage()["events"] == []


def test_events_older_than_the_window_expire() -> None:
    """Events older than the window (an option, 24 h by default) are Expired."""
    sandbox = AzureSandbox(usage_window_seconds=2 * 3600)
    try:
        ids = sandbox.create_customer()
        old, fresh = sandbox.adapter.report(
            [_record(ids, hour=hours_ago(3), key="old"), _record(ids, hour=hours_ago(1), key="fresh")]
        )
        assert old.status is OutcomeStatus.EXPIRED and old.detail.startswith("Expired")
        assert fresh.status is OutcomeStatus.ACCEPTED
    finally:
        sandbox.close()


def test_default_window_is_24_hours(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """With the real default, 23 h back is accepted and 25 h back is Expired."""
    inside, outside = sandbox.adapter.report(
        [_record(sub, hour=hours_ago(23), key="in"), _record(sub, hour=hours_ago(25), key="out")]
    )
    assert inside.status is OutcomeStatus.ACCEPTED
    assert outside.status is OutcomeStatus.EXPIRED and "Expired" in outside.detail


def test_future_times_are_rejected(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """An effectiveStartTime after the emulator's clock is rejected."""
    [outcome] = sandbox.adapter.report([_record(sub, hour=HOUR + timedelta(hours=1))])
    assert outcome.status is OutcomeStatus.REJECTED and outcome.detail.startswith("BadArgument")


def test_clock_is_settable(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """Moving the clock two days ahead makes yesterday's hour Expired."""
    sandbox.set_clock(NOW + timedelta(days=2))
    [outcome] = sandbox.adapter.report([_record(sub)])
    assert outcome.status is OutcomeStatus.EXPIRED and "Expired" in outcome.detail
    sandbox.control("POST", "clock", {"advance_seconds": -2 * 86400})
    [outcome] = sandbox.adapter.report([_record(sub)])
    assert outcome.status is OutcomeStatus.ACCEPTED


def test_unknown_resource_is_not_subscribed(sandbox: AzureSandbox) -> None:
    """An unknown resourceId is ResourceNotFound, reported as CUSTOMER_NOT_SUBSCRIBED."""
    [outcome] = sandbox.adapter.report([_record({"resource_id": "nope", "plan_id": "payg"})])
    assert outcome.status is OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED
    assert outcome.detail.startswith("ResourceNotFound")


def test_suspended_subscription_refuses_usage_until_reinstated(
    sandbox: AzureSandbox, sub: dict[str, str]
) -> None:
    """A Suspended subscription answers ResourceNotActive (the record is held, NOT_ACTIVE); after
    Reinstate the same event is accepted."""
    sandbox.control("POST", f"subscriptions/{sub['resource_id']}/suspend")
    [outcome] = sandbox.adapter.report([_record(sub)])
    assert outcome.status is OutcomeStatus.NOT_ACTIVE
    assert outcome.detail.startswith("ResourceNotActive")
    assert sandbox.usage()["events"] == []
    sandbox.control("POST", f"subscriptions/{sub['resource_id']}/reinstate")
    [outcome] = sandbox.adapter.report([_record(sub)])
    assert outcome.status is OutcomeStatus.ACCEPTED


def test_after_cancellation_only_earlier_hours_are_accepted(
    sandbox: AzureSandbox, sub: dict[str, str]
) -> None:
    """After Unsubscribe, hours before the cancellation time pass and later ones do not."""
    canceled_at = hours_ago(2) + timedelta(minutes=45)
    sandbox.control("POST", f"subscriptions/{sub['resource_id']}/unsubscribe",
                    {"at": canceled_at.isoformat()})
    before, same_hour, after = sandbox.adapter.report([
        _record(sub, hour=hours_ago(3), key="before"),
        _record(sub, hour=hours_ago(2), key="same-hour"),
        _record(sub, hour=hours_ago(1), key="after"),
    ])
    assert before.status is OutcomeStatus.ACCEPTED
    assert same_hour.status is OutcomeStatus.ACCEPTED  # 09:00 is before the 09:45 cancellation
    assert after.status is OutcomeStatus.NOT_ACTIVE
    assert after.detail.startswith("ResourceNotActive")


def test_pending_subscription_meters_only_after_activation(sandbox: AzureSandbox) -> None:
    """A purchase not yet activated refuses usage; resolve + activate makes it Subscribed."""
    created = sandbox.create_subscription(auto_activate=False, quantity=3)
    ids = {"resource_id": created["subscription"]["id"], "plan_id": "payg"}
    [outcome] = sandbox.adapter.report([_record(ids)])
    assert outcome.detail.startswith("ResourceNotActive")
    resolved = sandbox.adapter.resolve(created["marketplace_token"])
    assert resolved["id"] == ids["resource_id"] and resolved["planId"] == "payg"
    sandbox.adapter.activate(resolved["id"], resolved["planId"], 3)
    assert sandbox.adapter.get_subscription(ids["resource_id"])["saasSubscriptionStatus"] == "Subscribed"
    [outcome] = sandbox.adapter.report([_record(ids)])
    assert outcome.status is OutcomeStatus.ACCEPTED


@pytest.mark.parametrize(
    ("plan_id", "dimension"),
    [pytest.param("gold", "usage_fee", id="plan-mismatch"),
     pytest.param("payg", "gigabytes", id="unknown-dimension")],
)
def test_plan_and_dimension_must_match(
    sandbox: AzureSandbox, sub: dict[str, str], plan_id: str, dimension: str
) -> None:
    """A planId other than the subscription's, or a dimension not on the plan, is InvalidDimension."""
    ids = {**sub, "plan_id": plan_id}
    [outcome] = sandbox.adapter.report([_record(ids, dimension=dimension)])
    assert outcome.status is OutcomeStatus.REJECTED and outcome.detail.startswith("InvalidDimension")


def test_other_publisher_apps_resource_is_not_authorized(sandbox: AzureSandbox) -> None:
    """A subscription sold through another publisher app is ResourceNotAuthorized."""
    ids = sandbox.create_customer(app_id="someone-else")
    [outcome] = sandbox.adapter.report([_record(ids)])
    assert outcome.status is OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED
    assert outcome.detail.startswith("ResourceNotAuthorized")


def test_missing_field_is_bad_argument(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """An event without a resourceId is BadArgument in the batch and 400 alone."""
    event = _event(sub)
    del event["resourceId"]
    body = sandbox.api("POST", "/batchUsageEvent", json={"request": [event]}).json()
    assert body["result"][0]["status"] == "BadArgument"
    single = sandbox.api("POST", "/usageEvent", json=event)
    assert single.status_code == 400 and single.json()["details"][0]["target"] == "resourceId"


def test_whole_batch_400_is_narrowed_down() -> None:
    """When the API refuses a batch as a whole, the adapter splits it until events go through."""
    sandbox = AzureSandbox(batch_limit=4)
    try:
        ids = sandbox.create_customer(dimensions=[f"d{i}" for i in range(10)])
        outcomes = sandbox.adapter.report(
            [_record(ids, dimension=f"d{i}", key=f"k{i}") for i in range(10)]
        )
        assert {o.status for o in outcomes} == {OutcomeStatus.ACCEPTED}
        assert len(sandbox.usage_totals()) == 10
    finally:
        sandbox.close()


def test_event_refused_alone_is_rejected() -> None:
    """An event the API refuses even alone comes back REJECTED with the API's message."""
    sandbox = AzureSandbox(batch_limit=0)
    try:
        ids = sandbox.create_customer()
        [outcome] = sandbox.adapter.report([_record(ids)])
        assert outcome.status is OutcomeStatus.REJECTED and "at most 0 events" in outcome.detail
    finally:
        sandbox.close()


# Faults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "status"),
    [
        pytest.param({"error_rate": 1.0}, 500, id="error"),
        pytest.param({"throttle_rate": 1.0}, 429, id="throttle"),
        pytest.param({"outage": True}, 503, id="outage"),
    ],
)
def test_faults_are_transient(
    sandbox: AzureSandbox, sub: dict[str, str], faults: dict, status: int
) -> None:
    """Injected errors answer 500/429/503 and the adapter raises TransientMarketplaceError."""
    sandbox.set_faults(**faults)
    assert sandbox.api("POST", "/usageEvent", json=_event(sub)).status_code == status
    adapter = sandbox.build_adapter(retry_delays=(0, 0))
    with pytest.raises(TransientMarketplaceError):
        adapter.report([_record(sub)])
    assert sandbox.usage()["events"] == []


def test_bounded_retry_rides_out_a_short_outage(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """A fault that clears during the backoff is retried and the record accepted."""
    sandbox.set_faults(outage=True)
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        sandbox.set_faults(outage=False)

    adapter = sandbox.build_adapter(retry_delays=(0.25, 1.0), sleep=sleep)
    [outcome] = adapter.report([_record(sub)])
    assert outcome.status is OutcomeStatus.ACCEPTED and pauses == [0.25]


def test_later_batch_failing_comes_back_failed(sandbox: AzureSandbox) -> None:
    """When a second batch fails after the first went through, its records are FAILED."""
    ids = sandbox.create_customer(dimensions=[f"d{i}" for i in range(30)])
    session = requests.Session()

    def outage_after_first_batch(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if "batchUsageEvent" in response.url:
            sandbox.set_faults(outage=True)

    session.hooks["response"].append(outage_after_first_batch)
    adapter = sandbox.build_adapter(session=session)
    outcomes = adapter.report([_record(ids, dimension=f"d{i}", key=f"k{i}") for i in range(30)])
    assert [o.status for o in outcomes] == [OutcomeStatus.ACCEPTED] * 25 + [OutcomeStatus.FAILED] * 5


# Control API -----------------------------------------------------------------------------------


def test_reset_forgets_everything(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """Reset clears subscriptions, usage and faults."""
    sandbox.adapter.report([_record(sub)])
    sandbox.set_faults(error_rate=0.5)
    sandbox.reset()
    assert sandbox.usage() == {"totals": [], "events": []}
    assert sandbox.control("GET", "faults")["error_rate"] == 0.0
    sandbox.control("GET", f"subscriptions/{sub['resource_id']}", expect=404)


def test_unknown_fault_is_refused(sandbox: AzureSandbox) -> None:
    """An unknown fault name gets HTTP 400."""
    sandbox.control("POST", "faults", {"explode": True}, expect=400)


# SaaS Fulfillment v2 ---------------------------------------------------------------------------


def test_resolve_refuses_unknown_token(sandbox: AzureSandbox) -> None:
    """Resolving an unknown marketplace token is a 400, surfaced as a permanent error."""
    with pytest.raises(PermanentMarketplaceError, match="400"):
        sandbox.adapter.resolve("not-a-token")


def test_resolve_token_expires() -> None:
    """A landing-page token stops resolving after its lifetime."""
    sandbox = AzureSandbox(landing_token_ttl=3600)
    try:
        created = sandbox.create_subscription(auto_activate=False)
        sandbox.control("POST", "clock", {"advance_seconds": 7200})
        with pytest.raises(PermanentMarketplaceError):
            sandbox.adapter.resolve(created["marketplace_token"])
    finally:
        sandbox.close()


@pytest.mark.parametrize(
    ("setup", "plan_id", "status"),
    [
        pytest.param(None, "gold", 400, id="plan-mismatch"),
        pytest.param("activate", "payg", 400, id="already-subscribed"),
        pytest.param("unsubscribe", "payg", 404, id="unsubscribed"),
    ],
)
def test_activate_rules(sandbox: AzureSandbox, setup: str | None, plan_id: str, status: int) -> None:
    """Activate refuses a wrong plan, an active subscription (400) and a canceled one (404)."""
    sub_id = sandbox.create_subscription(auto_activate=False)["subscription"]["id"]
    if setup == "activate":
        sandbox.adapter.activate(sub_id, "payg")
    elif setup == "unsubscribe":
        sandbox.control("POST", f"subscriptions/{sub_id}/unsubscribe")
    with pytest.raises(PermanentMarketplaceError, match=str(status)):
        sandbox.adapter.activate(sub_id, plan_id)


def test_list_follows_next_link() -> None:
    """Listing follows @nextLink across pages and includes Unsubscribed subscriptions."""
    sandbox = AzureSandbox(page_size=2)
    try:
        ids = [sandbox.create_customer()["resource_id"] for _ in range(5)]
        sandbox.control("POST", f"subscriptions/{ids[0]}/unsubscribe")
        listed = list(sandbox.adapter.list_subscriptions())
        assert [s["id"] for s in listed] == ids
        assert listed[0]["saasSubscriptionStatus"] == "Unsubscribed"
        first_page = sandbox.api("GET", "/saas/subscriptions").json()
        assert "continuationToken=2" in first_page["@nextLink"]
    finally:
        sandbox.close()


def test_patch_subscription_answers_202_with_operation_location(
    sandbox: AzureSandbox, sub: dict[str, str]
) -> None:
    """PATCH of plan or quantity answers 202 with an Operation-Location; both at once is 400."""
    sub_id = sub["resource_id"]
    response = sandbox.api("PATCH", f"/saas/subscriptions/{sub_id}", json={"quantity": 5})
    assert response.status_code == 202
    op_id = response.headers["Operation-Location"].split("/operations/")[1].split("?")[0]
    operation = sandbox.adapter.get_operation(sub_id, op_id)
    assert operation["action"] == "ChangeQuantity" and operation["operationRequestSource"] == "Partner"
    both = sandbox.api("PATCH", f"/saas/subscriptions/{sub_id}", json={"planId": "gold", "quantity": 5})
    assert both.status_code == 400


def test_delete_unsubscribes(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """DELETE answers 202 and the subscription becomes Unsubscribed."""
    response = sandbox.api("DELETE", f"/saas/subscriptions/{sub['resource_id']}")
    assert response.status_code == 202 and "Operation-Location" in response.headers
    assert sandbox.adapter.get_subscription(sub["resource_id"])["saasSubscriptionStatus"] == "Unsubscribed"


def test_change_operations_are_pending_until_acknowledged(
    sandbox: AzureSandbox, sub: dict[str, str]
) -> None:
    """A ChangePlan stays InProgress in the operations list until the publisher PATCHes it."""
    sub_id = sub["resource_id"]
    op_id = sandbox.control("POST", f"subscriptions/{sub_id}/plan",
                            {"plan_id": "gold", "dimensions": ["usage_fee"]})["operation_id"]
    assert [op["id"] for op in sandbox.adapter.list_operations(sub_id)] == [op_id]
    sandbox.adapter.update_operation(sub_id, op_id, "Success")
    assert sandbox.adapter.list_operations(sub_id) == []
    shown = sandbox.control("GET", f"operations/{op_id}")
    assert shown["acknowledged"] == "Success" and shown["status"] == "Succeeded"
    [outcome] = sandbox.adapter.report([_record({**sub, "plan_id": "gold"})])
    assert outcome.status is OutcomeStatus.ACCEPTED


def test_failure_ack_undoes_the_change(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """Answering Failure to a ChangeQuantity restores the previous quantity."""
    sub_id = sub["resource_id"]
    op_id = sandbox.control("POST", f"subscriptions/{sub_id}/quantity", {"quantity": 9})["operation_id"]
    assert sandbox.adapter.get_subscription(sub_id)["quantity"] == 9
    sandbox.adapter.update_operation(sub_id, op_id, "Failure")
    assert sandbox.adapter.get_subscription(sub_id)["quantity"] is None
    assert sandbox.adapter.get_operation(sub_id, op_id)["status"] == "Failed"


def test_superseded_operation_answers_409(sandbox: AzureSandbox, sub: dict[str, str]) -> None:
    """Acknowledging an operation a newer change replaced raises OperationSuperseded (409)."""
    sub_id = sub["resource_id"]
    first = sandbox.control("POST", f"subscriptions/{sub_id}/quantity", {"quantity": 2})["operation_id"]
    second = sandbox.control("POST", f"subscriptions/{sub_id}/quantity", {"quantity": 3})["operation_id"]
    with pytest.raises(OperationSuperseded):
        sandbox.adapter.update_operation(sub_id, first, "Success")
    sandbox.adapter.update_operation(sub_id, second, "Success")
    sandbox.adapter.update_operation(sub_id, second, "Success")  # the same answer again is fine


def test_token_endpoint_checks_client_credentials(sandbox: AzureSandbox) -> None:
    """The Entra-like token endpoint refuses a wrong secret, tenant or scope."""
    form = {"grant_type": "client_credentials", "client_id": "marketsync-sandbox-app",
            "client_secret": "marketsync-sandbox-secret",
            "scope": "20e940b3-4c77-4b0b-9a53-9e16a1b010a7/.default"}
    url = f"{sandbox.url}/marketsync-sandbox-tenant/oauth2/v2.0/token"
    assert sandbox.http.post(url, data=form).json()["token_type"] == "Bearer"
    assert sandbox.http.post(url, data={**form, "client_secret": "x"}).status_code == 401
    assert sandbox.http.post(url, data={**form, "scope": "other/.default"}).status_code == 400
    assert sandbox.http.post(url.replace("marketsync-sandbox-tenant", "t2"), data=form).status_code == 400


def test_adapter_is_an_azure_marketplace(sandbox: AzureSandbox) -> None:
    """The composition root builds an AzureMarketplace pointed at the emulator's /api."""
    assert isinstance(sandbox.adapter, AzureMarketplace)
    assert sandbox.adapter.base_url == f"{sandbox.url}/api"
