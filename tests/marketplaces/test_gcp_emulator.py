"""The GCP emulator's wire rules and the adapter's report/procurement calls, through the real clients."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
import requests
from google.api_core import exceptions as core
from google.cloud import servicecontrol_v1 as sc

from config.settings import Settings
from marketplaces.base import (
    Marketplace,
    OutcomeStatus,
    PermanentMarketplaceError,
    TransientMarketplaceError,
    UsageRecord,
)
from marketplaces.emulators.gcp import create_gcp_emulator
from marketplaces.emulators.server import EmulatorServer
from marketplaces.gcp import (
    OPERATION_NAME,
    GcpMarketplace,
    _classify,
    build_gcp_adapter,
    operation_id_for,
)

HOUR = datetime(2026, 11, 21, 10, tzinfo=timezone.utc)


class Gcp:
    """A running emulator, its URL and control helpers."""

    def __init__(self, server: EmulatorServer):
        self.server = server
        self.url = server.url
        self.state = server.app.extensions["gcp_emulator"]

    def control(self, method: str, path: str, **json: Any) -> Any:
        response = requests.request(method, self.url + path, json=json or None, timeout=10)
        response.raise_for_status()
        return response.json()

    def entitlement(self, approve: bool = True, **fields: Any) -> dict[str, str]:
        return self.control("POST", "/_emulator/entitlements", approve=approve, **fields)["identifiers"]

    def usage(self) -> dict[str, Any]:
        return self.control("GET", "/_emulator/usage")

    def adapter(self, **overrides: Any) -> GcpMarketplace:
        settings = Settings.from_env({"GCP_EMULATOR_PORT": str(self.server.port)})
        return build_gcp_adapter(settings, **overrides)

    def client(self) -> sc.ServiceControllerClient:
        from google.auth.credentials import AnonymousCredentials

        return sc.ServiceControllerClient(
            transport="rest", credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )


@pytest.fixture
def gcp(emulator_servers: dict[str, EmulatorServer]) -> Gcp:
    """Return the session's emulator, reset to empty with no faults."""
    env = Gcp(emulator_servers["gcp"])
    env.control("POST", "/_emulator/reset")
    return env


@pytest.fixture
def make_gcp() -> Iterator[Any]:
    """Return a factory of emulators built with custom options (stopped after the test)."""
    servers: list[EmulatorServer] = []

    def make(**options: Any) -> Gcp:
        server = EmulatorServer(create_gcp_emulator(**options)).start()
        servers.append(server)
        return Gcp(server)

    yield make
    for server in servers:
        server.stop()


def record(ids: dict[str, str], quantity: int = 10, hour: datetime = HOUR,
           dimension: str = "usage_fee", key: str | None = None) -> UsageRecord:
    return UsageRecord(
        key=key or f"ctr-{ids['entitlement_id']}:{dimension}:{hour:%Y-%m-%dT%H}",
        marketplace=Marketplace.GCP, identifiers=ids, dimension=dimension,
        hour=hour, quantity=quantity,
    )


def totals(env: Gcp) -> list[tuple[str, str, int]]:
    return [(t["dimension"], t["hour"], t["quantity"]) for t in env.usage()["totals"]]


# --- operationId -------------------------------------------------------------------------------


def test_operation_id_is_stable_across_processes() -> None:
    """The same ledger key yields the same UUIDv5 operationId in a fresh interpreter."""
    rec = record({"consumer_id": "project:pr-1", "entitlement_id": "e1"})
    code = (
        "from datetime import datetime, timezone\n"
        "from marketplaces.base import UsageRecord, Marketplace\n"
        "from marketplaces.gcp import operation_id_for\n"
        f"r = UsageRecord('k', Marketplace.GCP, {dict(rec.identifiers)!r}, "
        "'usage_fee', datetime(2026, 11, 21, 10, tzinfo=timezone.utc), 99)\n"
        "print(operation_id_for(r))\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == operation_id_for(rec)
    assert operation_id_for(rec) == "042c0595-0d0c-517a-bd47-0bac8a66b000"  # uuid5(ns, "e1/usage_fee/2026-11-21T10:00:00Z"), pinned


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"hour": HOUR + timedelta(hours=1)}, id="next-hour"),
        pytest.param({"dimension": "api_calls"}, id="other-dimension"),
        pytest.param({"ids": {"consumer_id": "project:pr-2", "entitlement_id": "e2"}}, id="other-entitlement"),
    ],
)
def test_operation_id_differs_per_hour_dimension_and_entitlement(change: dict[str, Any]) -> None:
    """Another hour, dimension or entitlement gets another operationId."""
    ids = {"consumer_id": "project:pr-1", "entitlement_id": "e1"}
    changed = dict(change)
    other_ids = changed.pop("ids", ids)
    assert operation_id_for(record(other_ids, **changed)) != operation_id_for(record(ids))


def test_operation_id_ignores_quantity_and_ledger_key() -> None:
    """Two reports for the same entitlement, dimension and hour share one operationId."""
    ids = {"consumer_id": "project:pr-1", "entitlement_id": "e1"}
    assert operation_id_for(record(ids, quantity=77, key="another-key")) == operation_id_for(record(ids))


def test_operation_matches_the_reference_shape(gcp: Gcp) -> None:
    """The stored operation has the §7.3 shape: verbatim consumerId, one-hour interval, int64 string."""
    ids = gcp.entitlement()
    adapter = gcp.adapter()
    [outcome] = adapter.report([record(ids, quantity=1250)])
    assert outcome.status is OutcomeStatus.ACCEPTED
    [stored] = gcp.usage()["operations"]
    op = stored["operation"]
    assert op["operationId"] == outcome.marketplace_record_id == operation_id_for(record(ids))
    assert op["operationName"] == OPERATION_NAME
    assert op["consumerId"] == ids["consumer_id"] and op["consumerId"].count("project:") == 1
    assert (op["startTime"], op["endTime"]) == ("2026-11-21T10:00:00Z", "2026-11-21T11:00:00Z")
    assert op["metricValueSets"] == [
        {"metricName": f"{adapter.service_name}/usage_fee", "metricValues": [{"int64Value": "1250"}]}
    ]


# --- report rules ------------------------------------------------------------------------------


def test_identical_resend_is_accepted_and_counted_once(gcp: Gcp) -> None:
    """Resending the same operation (same id, same payload) is accepted again but billed once."""
    ids = gcp.entitlement()
    adapter = gcp.adapter()
    records = [record(ids, 10), record(ids, 11, hour=HOUR + timedelta(hours=1))]
    first = adapter.report(records)
    again = adapter.report(records)
    assert [o.status for o in first + again] == [OutcomeStatus.ACCEPTED] * 4
    assert totals(gcp) == [("usage_fee", "2026-11-21T10:00:00Z", 10), ("usage_fee", "2026-11-21T11:00:00Z", 11)]
    assert [s["received"] for s in gcp.usage()["operations"]] == [2, 2]


@pytest.mark.parametrize(
    ("conflicting_operation", "expected"),
    [
        pytest.param("error", OutcomeStatus.DUPLICATE, id="error"),
        pytest.param("ignore", OutcomeStatus.ACCEPTED, id="ignore"),
    ],
)
def test_same_operation_id_with_other_payload_keeps_the_first(
    make_gcp: Any, conflicting_operation: str, expected: OutcomeStatus
) -> None:
    """A different quantity under a used operationId never changes the stored total."""
    env = make_gcp(conflicting_operation=conflicting_operation)
    ids = env.entitlement()
    adapter = env.adapter()
    assert adapter.report([record(ids, 10)])[0].status is OutcomeStatus.ACCEPTED
    [outcome] = adapter.report([record(ids, 12)])
    assert outcome.status is expected
    assert totals(env) == [("usage_fee", "2026-11-21T10:00:00Z", 10)]


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        pytest.param("cancel", "SERVICE_NOT_ACTIVATED", id="cancelled"),
        pytest.param("pending", "SERVICE_NOT_ACTIVATED", id="activation-requested"),
        pytest.param("unknown", "CONSUMER_INVALID", id="unknown-consumer"),
        pytest.param("delete", "CONSUMER_INVALID", id="deleted"),
    ],
)
def test_check_errors_stop_the_report(gcp: Gcp, setup: str, code: str) -> None:
    """A consumer that may not be billed fails check, and nothing is reported for it."""
    ids = gcp.entitlement(approve=setup != "pending")
    if setup == "cancel":
        gcp.control("POST", f"/_emulator/entitlements/{ids['entitlement_id']}/cancel")
    elif setup == "delete":
        gcp.control("DELETE", f"/_emulator/entitlements/{ids['entitlement_id']}")
    elif setup == "unknown":
        ids = {**ids, "consumer_id": "project:pr-0000000000000000"}
    [outcome] = gcp.adapter().report([record(ids)])
    assert outcome.status is OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED
    assert code in outcome.detail
    assert gcp.usage()["operations"] == []


def test_pending_cancellation_still_bills(gcp: Gcp) -> None:
    """An entitlement cancelled at term end is still active for usage until the term ends."""
    ids = gcp.entitlement()
    gcp.control("POST", f"/_emulator/entitlements/{ids['entitlement_id']}/cancel", at_term_end=True)
    assert gcp.adapter().report([record(ids)])[0].status is OutcomeStatus.ACCEPTED


def test_a_consumer_with_a_cancelled_and_an_active_order_may_report(gcp: Gcp) -> None:
    """One consumer holding two orders of the product, one cancelled and one active, passes check: the
    active order's reports are accepted and checked first."""
    first = gcp.entitlement(usage_reporting_id="project:pr-two-orders")
    second = gcp.entitlement(account_id=first["account_id"], usage_reporting_id="project:pr-two-orders")
    gcp.control("POST", f"/_emulator/entitlements/{first['entitlement_id']}/cancel")
    [outcome] = gcp.adapter().report([record(second)])
    assert outcome.status is OutcomeStatus.ACCEPTED
    checks = gcp.usage()["checks"]
    assert [(c["operationId"], c["passed"]) for c in checks] == [(operation_id_for(record(second)), True)]


def test_a_pinned_operation_id_is_sent_as_it_is(gcp: Gcp) -> None:
    """A record whose id the sender pinned on its ledger row goes out under that id, whatever its identifiers say."""
    ids = gcp.entitlement()
    pinned = operation_id_for(record({**ids, "entitlement_id": "the-first-send"}))
    [outcome] = gcp.adapter().report([replace(record(ids), record_id=pinned)])
    assert outcome.status is OutcomeStatus.ACCEPTED and outcome.marketplace_record_id == pinned
    assert [op["operation"]["operationId"] for op in gcp.usage()["operations"]] == [pinned]


def test_report_errors_for_unknown_consumer_come_inside_http_200(gcp: Gcp) -> None:
    """Report without check: an unknown consumerId is a per-operation reportError (code 5)."""
    adapter = gcp.adapter()
    op = adapter.build_operation(record({"consumer_id": "project:pr-nobody", "entitlement_id": "x"}))
    response = gcp.client().report(
        request=sc.ReportRequest(service_name=adapter.service_name, operations=[op])
    )
    assert [(e.operation_id, e.status.code) for e in response.report_errors] == [(op.operation_id, 5)]
    assert "not found or not active" in response.report_errors[0].status.message


def test_unknown_metric_is_rejected_per_record(make_gcp: Any) -> None:
    """A metric the service does not define is rejected; the other records in the call are accepted."""
    env = make_gcp(metrics={"usage_fee"})
    ids = env.entitlement()
    outcomes = env.adapter().report([record(ids), record(ids, dimension="bogus")])
    assert [o.status for o in outcomes] == [OutcomeStatus.ACCEPTED, OutcomeStatus.REJECTED]
    assert "bogus" in outcomes[1].detail
    assert totals(env) == [("usage_fee", "2026-11-21T10:00:00Z", 10)]


def test_request_over_the_size_limit_is_rejected_whole(make_gcp: Any) -> None:
    """A report request above max_request_bytes is answered 400 and nothing is stored."""
    env = make_gcp(max_request_bytes=2_000)
    ids = env.entitlement()
    adapter = env.adapter()
    ops = [adapter.build_operation(record(ids, hour=HOUR + timedelta(hours=h))) for h in range(12)]
    with pytest.raises(core.BadRequest, match="size exceeds"):
        env.client().report(request=sc.ReportRequest(service_name=adapter.service_name, operations=ops))
    assert env.usage()["operations"] == []


def test_adapter_chunks_reports_under_the_size_limit(make_gcp: Any) -> None:
    """The adapter splits a large report into requests that each fit the limit."""
    env = make_gcp(max_request_bytes=2_000)
    ids = env.entitlement()
    adapter = env.adapter(max_request_bytes=2_000)
    records = [record(ids, quantity=h, hour=HOUR + timedelta(hours=h)) for h in range(12)]
    outcomes = adapter.report(records)
    assert [o.status for o in outcomes] == [OutcomeStatus.ACCEPTED] * 12
    assert [t[2] for t in totals(env)] == list(range(12))


def test_duplicate_metric_and_labels_reject_the_whole_request(gcp: Gcp) -> None:
    """One operation repeating a metric with the same labels makes the whole request fail (400)."""
    ids = gcp.entitlement()
    adapter = gcp.adapter()
    good = adapter.build_operation(record(ids, hour=HOUR + timedelta(hours=1)))
    bad = adapter.build_operation(record(ids))
    bad.metric_value_sets.append(bad.metric_value_sets[0])
    with pytest.raises(core.BadRequest, match="duplicate metric"):
        gcp.client().report(request=sc.ReportRequest(service_name=adapter.service_name, operations=[good, bad]))
    assert gcp.usage()["operations"] == []


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"outage": True}, id="outage-503"),
        pytest.param({"throttle_rate": 1.0}, id="throttle-429"),
        pytest.param({"error_rate": 1.0}, id="error-500"),
    ],
)
def test_faults_raise_transient_errors(gcp: Gcp, fault: dict[str, Any]) -> None:
    """Outages, throttling and server errors become TransientMarketplaceError."""
    ids = gcp.entitlement()
    gcp.control("POST", "/_emulator/faults", **fault)
    with pytest.raises(TransientMarketplaceError):
        gcp.adapter().report([record(ids)])
    gcp.control("POST", "/_emulator/faults", outage=False, throttle_rate=0.0, error_rate=0.0)
    assert gcp.usage()["operations"] == []


def test_ambiguous_failure_then_identical_resend_bills_once(gcp: Gcp) -> None:
    """A 500 after the emulator stored the report is resent with the same operationId: billed once."""
    ids = gcp.entitlement()
    adapter = gcp.adapter()
    # check must pass; the fault only hits report: store then fail.
    gcp.control("POST", "/_emulator/faults", fail_after_store=True)
    check = gcp.client().check(request=sc.CheckRequest(
        service_name=adapter.service_name, operation=adapter.build_operation(record(ids))))
    assert not check.check_errors
    gcp.control("POST", "/_emulator/faults", error_rate=1.0)
    with pytest.raises(core.InternalServerError):
        gcp.client().report(request=sc.ReportRequest(
            service_name=adapter.service_name, operations=[adapter.build_operation(record(ids))]))
    assert totals(gcp) == [("usage_fee", "2026-11-21T10:00:00Z", 10)]  # stored despite the 500
    gcp.control("POST", "/_emulator/faults", error_rate=0.0)
    [outcome] = adapter.report([record(ids)])
    assert outcome.status is OutcomeStatus.ACCEPTED
    assert totals(gcp) == [("usage_fee", "2026-11-21T10:00:00Z", 10)]


def test_connection_refused_is_transient() -> None:
    """Nothing listening on the emulator port is a transient failure."""
    with EmulatorServer(create_gcp_emulator()) as server:
        port = server.port
    settings = Settings.from_env({"GCP_EMULATOR_PORT": str(port)})
    adapter = build_gcp_adapter(settings, timeout=2.0)
    with pytest.raises(TransientMarketplaceError):
        adapter.report([record({"consumer_id": "project:pr-1", "entitlement_id": "e"})])
    with pytest.raises(TransientMarketplaceError):
        adapter.get_entitlement("e")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(core.ServiceUnavailable("x"), TransientMarketplaceError, id="503"),
        pytest.param(core.InternalServerError("x"), TransientMarketplaceError, id="500"),
        pytest.param(core.TooManyRequests("x"), TransientMarketplaceError, id="429"),
        pytest.param(core.DeadlineExceeded("x"), TransientMarketplaceError, id="deadline"),
        pytest.param(core.GatewayTimeout("x"), TransientMarketplaceError, id="504"),
        pytest.param(requests.ConnectionError("x"), TransientMarketplaceError, id="connection"),
        pytest.param(core.PermissionDenied("x"), PermanentMarketplaceError, id="403"),
        pytest.param(core.Unauthenticated("x"), PermanentMarketplaceError, id="401"),
        pytest.param(core.InvalidArgument("x"), PermanentMarketplaceError, id="invalid-argument"),
        pytest.param(core.BadRequest("x"), PermanentMarketplaceError, id="400"),
    ],
)
def test_call_errors_are_classified(error: Exception, expected: type) -> None:
    """Each Service Control call failure maps to the error that says what the caller does next."""
    assert type(_classify(error)) is expected


def test_missing_consumer_id_is_rejected_without_a_call(gcp: Gcp) -> None:
    """A record without the entitlement's usageReportingId is rejected locally."""
    [outcome] = gcp.adapter().report([record({"entitlement_id": "e"})])
    assert outcome.status is OutcomeStatus.REJECTED and "consumer_id" in outcome.detail


# --- Partner Procurement -----------------------------------------------------------------------


def test_entitlement_approval_and_rejection(gcp: Gcp) -> None:
    """approve moves ACTIVATION_REQUESTED to ACTIVE; a second approve or a late reject is refused."""
    adapter = gcp.adapter()
    first = gcp.entitlement(approve=False)["entitlement_id"]
    second = gcp.entitlement(approve=False)["entitlement_id"]
    assert adapter.get_entitlement(first)["state"] == "ENTITLEMENT_ACTIVATION_REQUESTED"
    adapter.approve_entitlement(first)
    assert adapter.get_entitlement(first)["state"] == "ENTITLEMENT_ACTIVE"
    with pytest.raises(PermanentMarketplaceError, match="400"):
        adapter.approve_entitlement(first)
    with pytest.raises(PermanentMarketplaceError):
        adapter.reject_entitlement(first, "too late")
    adapter.reject_entitlement(second, "not eligible")
    rejected = adapter.get_entitlement(second)
    assert (rejected["state"], rejected["messageToUser"]) == ("ENTITLEMENT_CANCELLED", "not eligible")


@pytest.mark.parametrize(
    ("decision", "plan"),
    [pytest.param("approve", "enterprise-payg", id="approve"),
     pytest.param("reject", "standard-payg", id="reject")],
)
def test_plan_change_approval(gcp: Gcp, decision: str, plan: str) -> None:
    """A requested plan change waits for approval; approving switches the plan, rejecting keeps it."""
    adapter = gcp.adapter()
    eid = gcp.entitlement(plan="standard-payg")["entitlement_id"]
    gcp.control("POST", f"/_emulator/entitlements/{eid}/plan-change", plan="enterprise-payg")
    pending = adapter.get_entitlement(eid)
    assert (pending["state"], pending["newPendingPlan"]) == (
        "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL", "enterprise-payg")
    with pytest.raises(PermanentMarketplaceError):
        adapter.approve_plan_change(eid, "some-other-plan")
    if decision == "approve":
        adapter.approve_plan_change(eid, "enterprise-payg")
    else:
        adapter.reject_plan_change(eid, "enterprise-payg", "not offered")
    after = adapter.get_entitlement(eid)
    assert (after["state"], after["plan"], "newPendingPlan" in after) == ("ENTITLEMENT_ACTIVE", plan, False)


def test_cancellation_revert_and_delete(gcp: Gcp) -> None:
    """Pending cancellation can be reverted; cancel ends the entitlement; delete makes GET 404."""
    adapter = gcp.adapter()
    eid = gcp.entitlement()["entitlement_id"]
    gcp.control("POST", f"/_emulator/entitlements/{eid}/cancel", at_term_end=True)
    assert adapter.get_entitlement(eid)["state"] == "ENTITLEMENT_PENDING_CANCELLATION"
    gcp.control("POST", f"/_emulator/entitlements/{eid}/revert-cancellation")
    assert adapter.get_entitlement(eid)["state"] == "ENTITLEMENT_ACTIVE"
    gcp.control("POST", f"/_emulator/entitlements/{eid}/cancel")
    assert adapter.get_entitlement(eid)["state"] == "ENTITLEMENT_CANCELLED"
    gcp.control("DELETE", f"/_emulator/entitlements/{eid}")
    assert adapter.get_entitlement(eid) is None


def test_list_entitlements_filters_on_state_across_pages(gcp: Gcp) -> None:
    """list follows pageToken until the end and applies the state filter."""
    adapter = gcp.adapter()
    active = {gcp.entitlement()["entitlement_id"] for _ in range(5)}
    pending = {gcp.entitlement(approve=False)["entitlement_id"] for _ in range(2)}
    found = adapter.list_entitlements("state=ENTITLEMENT_ACTIVE", page_size=2)
    assert {e["name"].rsplit("/", 1)[1] for e in found} == active
    assert len(adapter.list_entitlements(page_size=3)) == len(active | pending)


def test_account_signup_approval(gcp: Gcp) -> None:
    """An account's signup approval goes from PENDING to APPROVED through accounts.approve."""
    adapter = gcp.adapter()
    account_id = gcp.entitlement()["account_id"]
    assert adapter.get_account(account_id)["approvals"][0]["state"] == "PENDING"
    adapter.approve_account(account_id)
    assert adapter.get_account(account_id)["approvals"][0]["state"] == "APPROVED"
    assert adapter.get_account("no-such-account") is None


def test_procurement_outage_is_transient(gcp: Gcp) -> None:
    """A 503 from the Partner Procurement API is a transient error."""
    eid = gcp.entitlement()["entitlement_id"]
    gcp.control("POST", "/_emulator/faults", outage=True)
    with pytest.raises(TransientMarketplaceError):
        gcp.adapter().get_entitlement(eid)


def test_settable_clock_stamps_entitlements(gcp: Gcp) -> None:
    """The emulator clock set through the control API stamps created entitlements."""
    gcp.control("POST", "/_emulator/clock", now="2026-11-21T09:02:11Z")
    eid = gcp.entitlement(approve=False)["entitlement_id"]
    assert gcp.adapter().get_entitlement(eid)["createTime"] == "2026-11-21T09:02:11.000000Z"


# --- partial failures --------------------------------------------------------------------------


class FlakyClient:
    """Wrap the real client; fail check for chosen consumers and report after ``report_ok`` calls."""

    def __init__(self, client: sc.ServiceControllerClient, failing_consumers: set[str], report_ok: int = 99):
        self.client = client
        self.failing_consumers = failing_consumers
        self.report_ok = report_ok

    def check(self, request: sc.CheckRequest, **kwargs: Any) -> sc.CheckResponse:
        if request.operation.consumer_id in self.failing_consumers:
            raise core.ServiceUnavailable("check unavailable")
        return self.client.check(request=request, **kwargs)

    def report(self, request: sc.ReportRequest, **kwargs: Any) -> sc.ReportResponse:
        if self.report_ok <= 0:
            raise core.ServiceUnavailable("report unavailable")
        self.report_ok -= 1
        return self.client.report(request=request, **kwargs)


def test_one_failed_check_fails_only_its_record(gcp: Gcp) -> None:
    """A transient check failure leaves that record FAILED (resend later) and reports the others."""
    good, flaky = gcp.entitlement(), gcp.entitlement()
    adapter = gcp.adapter(client=FlakyClient(gcp.client(), {flaky["consumer_id"]}))
    outcomes = adapter.report([record(good), record(flaky)])
    assert [o.status for o in outcomes] == [OutcomeStatus.ACCEPTED, OutcomeStatus.FAILED]
    assert "check unavailable" in outcomes[1].detail
    assert len(gcp.usage()["operations"]) == 1


def test_failed_later_chunk_keeps_earlier_accepted(gcp: Gcp) -> None:
    """When a later report request fails, the accepted chunk stands and the rest are FAILED."""
    ids = gcp.entitlement()
    adapter = gcp.adapter(client=FlakyClient(gcp.client(), set(), report_ok=1), max_operations_per_call=2)
    records = [record(ids, quantity=h, hour=HOUR + timedelta(hours=h)) for h in range(4)]
    outcomes = adapter.report(records)
    assert [o.status for o in outcomes] == [OutcomeStatus.ACCEPTED] * 2 + [OutcomeStatus.FAILED] * 2
    assert [t[2] for t in totals(gcp)] == [0, 1]


def test_nothing_processed_raises_transient(gcp: Gcp) -> None:
    """When every record failed transiently, the call raises instead of returning only FAILED."""
    ids = gcp.entitlement()
    adapter = gcp.adapter(client=FlakyClient(gcp.client(), {ids["consumer_id"]}))
    with pytest.raises(TransientMarketplaceError, match="check unavailable"):
        adapter.report([record(ids)])


def test_refused_credentials_are_permanent(gcp: Gcp) -> None:
    """A bearer token the emulator refuses (401) makes report raise PermanentMarketplaceError."""
    from google.oauth2.credentials import Credentials

    ids = gcp.entitlement()
    gcp.control("POST", "/_emulator/auth", refused_tokens=["revoked"])
    client = sc.ServiceControllerClient(
        transport="rest", credentials=Credentials(token="revoked"),
        client_options={"api_endpoint": gcp.url},
    )
    with pytest.raises(PermanentMarketplaceError):
        gcp.adapter(client=client).report([record(ids)])
    assert gcp.usage()["operations"] == []


def test_live_settings_trust_google_not_the_emulator() -> None:
    """In live mode the push verifier checks Google's certs, the configured audience and account."""
    settings = Settings.from_env({
        "MARKETPLACE_MODE": "live", "GCP_SERVICE_NAME": "acme.endpoints.acme-prod.cloud.goog",
        "GCP_PROVIDER_ID": "acme", "GCP_PUSH_AUDIENCE": "https://sync.acme.example/gcp/pubsub",
        "GCP_PUSH_SERVICE_ACCOUNT": "push@acme-prod.iam.gserviceaccount.com",
    })
    adapter = build_gcp_adapter(settings, client=object(), procurement=object())
    verifier = adapter.push_verifier
    assert (verifier.certs_url, verifier.audience, verifier.service_account) == (
        None, "https://sync.acme.example/gcp/pubsub", "push@acme-prod.iam.gserviceaccount.com")
    assert (adapter.service_name, adapter.provider_id) == ("acme.endpoints.acme-prod.cloud.goog", "acme")


@pytest.mark.parametrize(("labels", "accepted"), [
    pytest.param({"cloudmarketplace.googleapis.com/resource_name": "products_db"}, True, id="reserved-key"),
    pytest.param({"team": "red", "env": ""}, True, id="empty-value"),
    pytest.param({"Team": "red"}, False, id="uppercase-key"),
    pytest.param({"team": "Red"}, False, id="uppercase-value"),
    pytest.param({"cloudmarketplace.googleapis.com/other": "x"}, False, id="unreserved-domain-key"),
    pytest.param({f"k{i}": "v" for i in range(65)}, False, id="65-labels"),
])
def test_user_labels_follow_googles_rules(gcp: Gcp, labels: dict[str, str], accepted: bool) -> None:
    """The emulator takes userLabels in Google's label syntax (and the two reserved cloudmarketplace keys) and answers
    any other with a per-operation INVALID_ARGUMENT (code 3) that names userLabels; the operation is not stored."""
    adapter = gcp.adapter()
    ids = gcp.entitlement()
    op = adapter.build_operation(record(ids))
    op.user_labels.update(labels)
    response = gcp.client().report(request=sc.ReportRequest(service_name=adapter.service_name, operations=[op]))
    if accepted:
        assert not response.report_errors and len(gcp.usage()["operations"]) == 1
    else:
        assert [e.status.code for e in response.report_errors] == [3]
        assert "userLabels" in response.report_errors[0].status.message and gcp.usage()["operations"] == []
