"""AwsMarketplace against the AWS emulator: wire format, statuses, bisection, retries, entitlements, wiring."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from config.settings import Settings
from marketplaces.aws import AwsEntitlement, AwsMarketplace, SnsVerifier, build_aws_adapter, license_id
from marketplaces.base import (
    Marketplace,
    MarketplaceAdapter,
    OutcomeStatus,
    PermanentMarketplaceError,
    TransientMarketplaceError,
    UsageRecord,
)
from marketplaces.emulators.aws import AwsEmulatorClient
from marketplaces.emulators.server import EmulatorServer
from tests.marketplaces.aws_support import emu, server  # noqa: F401  (shared fixtures)

HOUR = datetime(2026, 11, 21, 9, tzinfo=timezone.utc)
PRODUCT = "prod-adapter"


@pytest.fixture
def settings(server: EmulatorServer) -> Settings:
    return Settings.from_env({"MARKETPLACE_MODE": "sandbox", "AWS_EMULATOR_PORT": str(server.port)})


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def adapter(settings: Settings, sleeps: list[float], emu: AwsEmulatorClient) -> AwsMarketplace:
    return build_aws_adapter(settings, sleep=sleeps.append, max_attempts=2)


def _record(key: str, ids: dict[str, str], dimension: str = "a", quantity: int = 1, hour: datetime = HOUR) -> UsageRecord:
    return UsageRecord(key, Marketplace.AWS, ids, dimension, hour, quantity)


def test_adapter_is_a_marketplace_adapter(adapter: AwsMarketplace) -> None:
    """The AWS adapter satisfies the shared protocol."""
    assert isinstance(adapter, MarketplaceAdapter) and adapter.marketplace == Marketplace.AWS


def test_concurrent_agreements_wire_format(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """Account id + license ARN go on the wire with the hour as Timestamp; the record id comes back."""
    sub = emu.create_customer(product_code=PRODUCT, dimensions=["a"])
    ids = {k: v for k, v in sub["identifiers"].items() if k != "customer_identifier"}

    [outcome] = adapter.report([_record("k1", ids, quantity=12)])

    [stored] = emu.usage()["records"]
    assert stored["request"] == {
        "Timestamp": int(HOUR.timestamp()),
        "CustomerAWSAccountId": ids["customer_aws_account_id"],
        "LicenseArn": ids["license_arn"],
        "Dimension": "a",
        "Quantity": 12,
    }
    assert (outcome.status, outcome.marketplace_record_id) == (OutcomeStatus.ACCEPTED, stored["metering_record_id"])


def test_legacy_customer_identifier(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """A legacy contract is metered with CustomerIdentifier (and the product code)."""
    sub = emu.create_customer(product_code=PRODUCT, dimensions=["a"])
    ids = {"product_code": PRODUCT, "customer_identifier": sub["identifiers"]["customer_identifier"]}

    [outcome] = adapter.report([_record("k1", ids, quantity=3)])

    assert outcome.status == OutcomeStatus.ACCEPTED
    assert emu.usage()["records"][0]["request"]["CustomerIdentifier"] == ids["customer_identifier"]


def test_records_are_grouped_by_product(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """Records of two products in one report are sent per product and all accepted, in input order."""
    one = emu.create_customer(product_code="prod-one", dimensions=["a"])["identifiers"]
    two = emu.create_customer(product_code="prod-two", dimensions=["a"])["identifiers"]

    outcomes = adapter.report([_record("1", one), _record("2", two), _record("3", one, hour=HOUR - timedelta(hours=1))])

    assert [(o.key, o.status) for o in outcomes] == [("1", OutcomeStatus.ACCEPTED), ("2", OutcomeStatus.ACCEPTED), ("3", OutcomeStatus.ACCEPTED)]
    assert sorted(r["product_code"] for r in emu.usage()["records"]) == ["prod-one", "prod-one", "prod-two"]


def test_customer_not_subscribed_after_the_final_window(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """Once the deprovisioning window has closed, records come back CUSTOMER_NOT_SUBSCRIBED."""
    sub = emu.create_customer(product_code=PRODUCT, dimensions=["a"])
    emu.cancel(sub["id"], immediate=True)

    [outcome] = adapter.report([_record("k1", sub["identifiers"])])

    assert outcome.status == OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED


@pytest.mark.parametrize(
    ("bad", "exception", "status"),
    [
        # Too old can never be accepted: EXPIRED (never resent), not REJECTED.
        pytest.param({"hour": HOUR - timedelta(hours=7)}, "TimestampOutOfBoundsException", OutcomeStatus.EXPIRED,
                     id="too-old"),
        pytest.param({"dimension": "nope"}, "InvalidUsageDimensionException", OutcomeStatus.REJECTED,
                     id="bad-dimension"),
        pytest.param({"license": "arn:aws:license-manager::294406891311:license:l-00"}, "InvalidLicenseException",
                     OutcomeStatus.REJECTED, id="bad-license"),
    ],
)
def test_bisection_isolates_request_level_errors(emu: AwsEmulatorClient, adapter: AwsMarketplace, bad: dict[str, Any],
                                                 exception: str, status: OutcomeStatus) -> None:
    """A record that fails the whole call is isolated and answered alone with the exception name (a too-old
    timestamp EXPIRED, anything else REJECTED); 24 others go through."""
    dims = [f"d{i}" for i in range(24)]
    sub = emu.create_customer(product_code=PRODUCT, dimensions=dims + ["a"])
    ids = sub["identifiers"]
    good = [_record(f"g{i}", ids, dim, i + 1) for i, dim in enumerate(dims)]
    bad_ids = {**ids, "license_arn": bad["license"]} if "license" in bad else ids
    wrong = _record("bad", bad_ids, bad.get("dimension", "a"), 1, bad.get("hour", HOUR))

    outcomes = {o.key: o for o in adapter.report(good[:10] + [wrong] + good[10:])}

    assert outcomes["bad"].status == status
    assert outcomes["bad"].detail.startswith(exception)
    assert {outcomes[r.key].status for r in good} == {OutcomeStatus.ACCEPTED}
    assert len(emu.usage()["records"]) == 24


def test_unprocessed_records_are_resent(emu: AwsEmulatorClient, adapter: AwsMarketplace, sleeps: list[float]) -> None:
    """Records AWS leaves unprocessed are resent after a short backoff until accepted."""
    emu.set_options(unprocessed_rate=0.5, seed=3)
    dims = [f"d{i}" for i in range(10)]
    ids = emu.create_customer(product_code=PRODUCT, dimensions=dims)["identifiers"]

    outcomes = adapter.report([_record(d, ids, d, 2) for d in dims])

    assert {o.status for o in outcomes} == {OutcomeStatus.ACCEPTED}
    assert sleeps and all(s <= 1.0 for s in sleeps)
    assert len(emu.usage()["records"]) == 10


def test_persistently_unprocessed_records_fail(emu: AwsEmulatorClient, adapter: AwsMarketplace, sleeps: list[float]) -> None:
    """Records still unprocessed after the retries come back FAILED (safe to resend later)."""
    emu.set_options(unprocessed_rate=1.0)
    ids = emu.create_customer(product_code=PRODUCT, dimensions=["a"])["identifiers"]

    [outcome] = adapter.report([_record("k1", ids)])

    assert outcome.status == OutcomeStatus.FAILED
    assert sleeps == [0.2, 0.5, 1.0]


@pytest.mark.parametrize(
    ("record", "detail"),
    [
        pytest.param(_record("k", {"customer_identifier": "x"}), "missing product_code", id="no-product"),
        pytest.param(_record("k", {"product_code": PRODUCT}), "missing customer", id="no-customer"),
        pytest.param(_record("k", {"product_code": PRODUCT, "customer_identifier": "x"}, quantity=2**31), "quantity", id="too-large"),
        pytest.param(UsageRecord("k", Marketplace.AZURE, {}, "a", HOUR, 1), "not an AWS record", id="wrong-marketplace"),
    ],
)
def test_records_rejected_before_sending(emu: AwsEmulatorClient, adapter: AwsMarketplace, record: UsageRecord, detail: str) -> None:
    """Records that cannot be valid are REJECTED locally without calling AWS."""
    [outcome] = adapter.report([record])

    assert outcome.status == OutcomeStatus.REJECTED and detail in outcome.detail


def test_unknown_product_code_is_permanent(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """InvalidProductCodeException is a configuration problem: PermanentMarketplaceError."""
    ids = emu.create_customer(product_code=PRODUCT, dimensions=["a"])["identifiers"]

    with pytest.raises(PermanentMarketplaceError, match="InvalidProductCodeException"):
        adapter.report([_record("k1", {**ids, "product_code": "prod-missing"})])


def test_persistent_throttling_is_transient(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """Throttling that outlasts botocore's retries raises TransientMarketplaceError."""
    ids = emu.create_customer(product_code=PRODUCT, dimensions=["a"])["identifiers"]
    emu.set_faults(throttle_rate=1.0)

    with pytest.raises(TransientMarketplaceError, match="ThrottlingException"):
        adapter.report([_record("k1", ids)])


def test_failure_after_partial_progress_returns_failed_outcomes(emu: AwsEmulatorClient, settings: Settings) -> None:
    """If a later chunk fails transiently, earlier answers are kept and the rest come back FAILED."""
    dims = [f"d{i}" for i in range(4)]
    ids = emu.create_customer(product_code=PRODUCT, dimensions=dims)["identifiers"]
    calls = {"n": 0}
    adapter = build_aws_adapter(settings, max_batch=2, max_attempts=1)
    real_call = adapter.client.batch_meter_usage

    def second_call_fails(**params: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            emu.set_faults(outage=True)
        try:
            return real_call(**params)
        finally:
            emu.set_faults(outage=False)

    adapter.client.batch_meter_usage = second_call_fails  # type: ignore[method-assign]

    outcomes = adapter.report([_record(d, ids, d) for d in dims])

    assert [o.status for o in outcomes] == [OutcomeStatus.ACCEPTED, OutcomeStatus.ACCEPTED, OutcomeStatus.FAILED, OutcomeStatus.FAILED]


def test_unreachable_endpoint_is_transient() -> None:
    """A refused connection raises TransientMarketplaceError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings.from_env({"MARKETPLACE_MODE": "sandbox", "AWS_EMULATOR_PORT": str(port)})
    adapter = build_aws_adapter(settings, max_attempts=1, connect_timeout=1)

    with pytest.raises(TransientMarketplaceError):
        adapter.report([_record("k1", {"product_code": PRODUCT, "customer_identifier": "x"})])


def test_get_entitlements_reads_every_page(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """GetEntitlements follows NextToken through an empty first page and small pages."""
    emu.set_options(entitlement_page_size=1, empty_first_entitlement_page=True)
    sub = emu.create_customer(
        product_code=PRODUCT, dimensions=["a"], entitlements={"seats": 10, "premium": True, "tier": "gold"},
        expiration="2027-11-21T00:00:00Z",
    )
    emu.create_customer(product_code=PRODUCT, dimensions=["a"], entitlements={"seats": 1})
    ids = sub["identifiers"]

    rows = adapter.get_entitlements(PRODUCT, license_arn=ids["license_arn"])

    assert rows == [
        AwsEntitlement(PRODUCT, dim, value, ids["customer_identifier"], ids["customer_aws_account_id"],
                       ids["license_arn"], datetime(2027, 11, 21, tzinfo=timezone.utc))
        for dim, value in [("premium", True), ("seats", 10), ("tier", "gold")]
    ]
    assert len(adapter.get_entitlements(PRODUCT)) == 4


def test_entitlement_filters_must_be_compatible(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """Filtering by both customer identifier and account id is refused as permanent."""
    with pytest.raises(PermanentMarketplaceError):
        adapter.get_entitlements(PRODUCT, customer_aws_account_id="1", customer_identifier="x")


def test_license_id_normalization() -> None:
    """license_id takes the trailing l-<hex> of any spelling of a license ARN."""
    assert [
        license_id("arn:aws:license-manager::294406891311:license:l-0f1e"),
        license_id("aws:license-manager:us-east-1:123456789012:l-0f1e"),
        license_id("no license here"),
        license_id(None),
    ] == ["l-0f1e", "l-0f1e", None, None]


def test_sandbox_builder_points_at_the_emulator(settings: Settings, server: EmulatorServer) -> None:
    """Sandbox mode builds boto3 clients on the emulator URL with dummy credentials and explicit retries."""
    adapter = build_aws_adapter(settings)

    assert adapter.client.meta.endpoint_url == server.url
    assert adapter.entitlement_client.meta.endpoint_url == server.url
    assert adapter.client._request_signer._credentials.access_key == "sandbox"
    assert adapter.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert adapter.sns_verifier.is_trusted_url(server.url + "/_emulator/sns/cert.pem")
    assert not adapter.sns_verifier.is_trusted_url("https://sns.us-east-1.amazonaws.com/x.pem")


def test_live_builder_points_at_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live mode uses the regional metering endpoint, us-east-1 entitlements and the SNS host rules."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    live = Settings.from_env({"MARKETPLACE_MODE": "live", "AWS_REGION": "eu-west-1", "AWS_SNS_TOPIC_ARNS": "arn:aws:sns:us-east-1:1:t"})

    adapter = build_aws_adapter(live)

    assert adapter.client.meta.endpoint_url == "https://metering.marketplace.eu-west-1.amazonaws.com"
    assert adapter.entitlement_client.meta.region_name == "us-east-1"
    assert adapter.sns_verifier.is_trusted_url("https://sns.us-east-1.amazonaws.com/x.pem")
    assert adapter.sns_verifier.topic_arns == ("arn:aws:sns:us-east-1:1:t",)


def test_builder_accepts_injected_parts(settings: Settings) -> None:
    """Overrides replace the built clients and verifier (for tests and the worker runtime)."""
    verifier = SnsVerifier.live()
    adapter = build_aws_adapter(settings, client="metering", entitlement_client="entitlement", sns_verifier=verifier, product_code="p")

    assert (adapter.client, adapter.entitlement_client, adapter.sns_verifier, adapter.product_code) == (
        "metering", "entitlement", verifier, "p",
    )


# --- 2026 rules: identifiers, one product per call, no ProductCode under Concurrent Agreements ----


def _calls(adapter: AwsMarketplace) -> list[dict[str, Any]]:
    """Record the parameters of every BatchMeterUsage call the real boto3 client makes."""
    calls: list[dict[str, Any]] = []
    adapter.client.meta.events.register(
        "provide-client-params.marketplace-metering.BatchMeterUsage",
        lambda params, **_: calls.append(dict(params)),
    )
    return calls


def _kinds(request: dict[str, Any]) -> set[str]:
    return {k for k in ("CustomerIdentifier", "CustomerAWSAccountId", "LicenseArn") if k in request}


def test_a_batch_of_two_products_is_sent_as_two_calls(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """Records of two products in one report go out in two BatchMeterUsage calls, one product each."""
    one = emu.create_customer(product_code="prod-one", dimensions=["a"])["identifiers"]
    two = emu.create_customer(product_code="prod-two", dimensions=["a"])["identifiers"]
    calls = _calls(adapter)

    outcomes = adapter.report([_record("1", one), _record("2", two), _record("3", one, hour=HOUR - timedelta(hours=1))])

    assert {o.status for o in outcomes} == {OutcomeStatus.ACCEPTED}
    assert sorted((c["ProductCode"], len(c["UsageRecords"])) for c in calls) == [("prod-one", 2), ("prod-two", 1)]


def test_concurrent_agreements_send_no_product_code_and_split_per_product(
    emu: AwsEmulatorClient, adapter: AwsMarketplace
) -> None:
    """Concurrent Agreements records carry account + license, no request ProductCode, one product per call."""
    one = emu.create_customer(product_code="prod-one", dimensions=["a"])["identifiers"]
    two = emu.create_customer(product_code="prod-two", dimensions=["a"])["identifiers"]
    flag = {"concurrent_agreements": "true"}
    calls = _calls(adapter)

    outcomes = adapter.report([_record("1", {**one, **flag}), _record("2", {**two, **flag})])

    assert {o.status for o in outcomes} == {OutcomeStatus.ACCEPTED}
    assert len(calls) == 2 and all("ProductCode" not in c for c in calls)
    assert [_kinds(r) for c in calls for r in c["UsageRecords"]] == [{"CustomerAWSAccountId", "LicenseArn"}] * 2
    assert sorted(r["product_code"] for r in emu.usage()["records"]) == ["prod-one", "prod-two"]


def test_records_never_carry_both_identifier_kinds(emu: AwsEmulatorClient, adapter: AwsMarketplace) -> None:
    """Identifiers of both kinds on a record: only account + license go on the wire; legacy only alone."""
    sub = emu.create_customer(product_code=PRODUCT, dimensions=["a", "b"])["identifiers"]
    legacy = {"product_code": PRODUCT, "customer_identifier": sub["customer_identifier"]}
    calls = _calls(adapter)

    outcomes = adapter.report([_record("both", sub, "a"), _record("legacy", legacy, "b")])

    assert {o.status for o in outcomes} == {OutcomeStatus.ACCEPTED}
    kinds = [_kinds(r) for c in calls for r in c["UsageRecords"]]
    assert sorted(map(sorted, kinds)) == [["CustomerAWSAccountId", "LicenseArn"], ["CustomerIdentifier"]]
    assert all(c["ProductCode"] == PRODUCT for c in calls)


@pytest.mark.parametrize(
    ("ids", "detail"),
    [
        pytest.param({"product_code": PRODUCT, "customer_aws_account_id": "123456789012"}, "go together", id="account-alone"),
        pytest.param({"product_code": PRODUCT, "license_arn": "arn:aws:license-manager::1:license:l-0a"}, "go together", id="license-alone"),
        pytest.param({"product_code": PRODUCT, "customer_identifier": "x", "concurrent_agreements": "true"},
                     "Concurrent Agreements", id="concurrent-legacy"),
    ],
)
def test_incomplete_current_identifiers_are_rejected_locally(
    emu: AwsEmulatorClient, adapter: AwsMarketplace, ids: dict[str, str], detail: str
) -> None:
    """Account without license (or the reverse), or a legacy identifier under Concurrent Agreements: never sent."""
    calls = _calls(adapter)

    [outcome] = adapter.report([_record("k", ids)])

    assert outcome.status == OutcomeStatus.REJECTED and detail in outcome.detail and calls == []


_CONTRACT = {"product_code": PRODUCT, "customer_identifier": "cust-1", "customer_aws_account_id": "123456789012",
             "license_arn": "arn:aws:license-manager::294406891311:license:l-0123abcd"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param({}, {"product_code": PRODUCT, "customer_aws_account_id": "123456789012",
                          "license_arn": _CONTRACT["license_arn"]}, id="current"),
        pytest.param({"aws_legacy_identifiers": True}, {"product_code": PRODUCT, "customer_identifier": "cust-1"}, id="legacy"),
        pytest.param({"aws_concurrent_agreements": True}, {"product_code": PRODUCT, "customer_aws_account_id": "123456789012",
                                                           "license_arn": _CONTRACT["license_arn"],
                                                           "concurrent_agreements": "true"}, id="concurrent"),
    ],
)
def test_record_identifiers_follow_the_listing(flags: dict[str, bool], expected: dict[str, str]) -> None:
    """CustomerIdentifier only for legacy listings; otherwise account + license (never both kinds)."""
    from marketplaces.aws import RULES

    assert RULES.record_identifiers({**_CONTRACT, **flags}, {}) == expected


def test_legacy_listing_without_a_customer_identifier_meters_by_license() -> None:
    """A legacy listing's contract known only by its license (EventBridge) is metered by account + license."""
    from marketplaces.aws import RULES

    columns = {**_CONTRACT, "customer_identifier": None, "aws_legacy_identifiers": True}
    assert RULES.record_identifiers(columns, {}) == {"product_code": PRODUCT, "customer_aws_account_id": "123456789012",
                                                     "license_arn": _CONTRACT["license_arn"]}


def test_current_listing_never_falls_back_to_the_customer_identifier() -> None:
    """A non-legacy listing's contract without a license yields no customer identifier: the adapter rejects it."""
    from marketplaces.aws import RULES

    columns = {"product_code": PRODUCT, "customer_identifier": "cust-1"}
    assert RULES.record_identifiers(columns, {}) == {"product_code": PRODUCT}
