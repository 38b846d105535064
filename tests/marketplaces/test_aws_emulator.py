"""The AWS Marketplace emulator enforces each rule of docs/marketplaces.md §2.11, seen through real boto3 clients."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from marketplaces.emulators.aws import AwsEmulatorClient, cbor_decode, cbor_encode
from marketplaces.emulators.server import EmulatorServer
from tests.marketplaces.aws_support import NOW, emu, server  # noqa: F401  (shared fixtures)

HOUR = datetime(2026, 11, 21, 10, tzinfo=timezone.utc)
PRODUCT = "prod-emu"


def _client(server: EmulatorServer, service: str = "meteringmarketplace", key: str = "sandbox") -> Any:
    return boto3.client(
        service,
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="sandbox",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


@pytest.fixture
def metering(server: EmulatorServer) -> Any:
    return _client(server)


@pytest.fixture
def sub(emu: AwsEmulatorClient) -> dict[str, Any]:
    """Create one active subscription to ``PRODUCT`` with dimensions a and b."""
    return emu.create_customer(product_code=PRODUCT, dimensions=["a", "b"])


def _rec(sub: dict[str, Any], dimension: str = "a", quantity: int = 1, when: datetime = HOUR, **extra: Any) -> dict[str, Any]:
    ids = sub["identifiers"]
    return {
        "Timestamp": when,
        "CustomerAWSAccountId": ids["customer_aws_account_id"],
        "LicenseArn": ids["license_arn"],
        "Dimension": dimension,
        "Quantity": quantity,
        **extra,
    }


def _error(metering: Any, records: list[dict[str, Any]], product: str = PRODUCT) -> str:
    with pytest.raises(ClientError) as info:
        metering.batch_meter_usage(ProductCode=product, UsageRecords=records)
    return info.value.response["Error"]["Code"]


def _statuses(response: dict[str, Any]) -> list[str]:
    return [r["Status"] for r in response["Results"]]


def test_accepted_record_is_stored_with_a_record_id(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """A valid record answers Success with a MeteringRecordId and shows in the usage read-back."""
    response = metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, quantity=5)])

    [result] = response["Results"]
    assert result["Status"] == "Success" and result["MeteringRecordId"]
    assert emu.usage_total(sub["identifiers"], "a", HOUR) == 5
    [stored] = emu.usage()["records"]
    assert stored["request"]["Timestamp"] == int(HOUR.timestamp())


@pytest.mark.parametrize(
    ("resend_status", "expected"),
    [
        pytest.param("Success", "Success", id="default-success"),
        pytest.param("DuplicateRecord", "DuplicateRecord", id="configured-duplicate"),
    ],
)
def test_identical_resend_answers_the_configured_status(
    emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any], resend_status: str, expected: str
) -> None:
    """An identical resend answers Success (or DuplicateRecord when configured) and adds nothing."""
    emu.set_options(identical_resend_status=resend_status)
    metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, quantity=5)])

    again = metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, quantity=5)])

    assert _statuses(again) == [expected]
    assert emu.usage_total(sub["identifiers"], "a", HOUR) == 5
    assert len(emu.usage()["records"]) == 1


def test_first_write_wins_for_an_hour(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """A different quantity for the same customer, dimension and hour is DuplicateRecord."""
    metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, quantity=5)])

    later = metering.batch_meter_usage(
        ProductCode=PRODUCT, UsageRecords=[_rec(sub, quantity=6, when=HOUR + timedelta(minutes=20))]
    )

    assert _statuses(later) == ["DuplicateRecord"]
    assert emu.usage_total(sub["identifiers"], "a", HOUR) == 5


def test_legacy_identifier_shares_the_hour_slot(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """A legacy CustomerIdentifier meters the same subscription, so the hour slot is shared."""
    legacy = {"Timestamp": HOUR, "CustomerIdentifier": sub["identifiers"]["customer_identifier"], "Dimension": "a", "Quantity": 3}

    first = metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[legacy])
    second = metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, quantity=4)])

    assert (_statuses(first), _statuses(second)) == (["Success"], ["DuplicateRecord"])
    assert emu.usage_total({"customer_identifier": sub["identifiers"]["customer_identifier"]}, "a", HOUR) == 3


def test_more_than_25_records_is_a_validation_error(emu: AwsEmulatorClient, metering: Any) -> None:
    """A call with 26 records fails as a whole with ValidationException."""
    dims = [f"d{i}" for i in range(26)]
    sub = emu.create_customer(product_code=PRODUCT, dimensions=dims)

    assert _error(metering, [_rec(sub, d) for d in dims]) == "ValidationException"
    assert emu.usage()["records"] == []


def test_oversized_request_is_refused(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """A request body above the size limit (1 MB by default; 1 KB here) is refused."""
    emu.set_options(max_body_bytes=1024)
    records = [_rec(sub, "a", i, when=HOUR - timedelta(hours=i % 5)) for i in range(10)]

    assert _error(metering, records) == "ValidationException"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        pytest.param(lambda r: {**r, "Dimension": "zzz"}, "InvalidUsageDimensionException", id="unknown-dimension"),
        pytest.param(lambda r: {**r, "LicenseArn": r["LicenseArn"][:-4] + "beef"}, "InvalidLicenseException", id="unknown-license"),
        pytest.param(lambda r: {**r, "CustomerAWSAccountId": "000000000000"}, "InvalidLicenseException", id="license-of-another-account"),
        pytest.param(lambda r: {"Timestamp": r["Timestamp"], "CustomerIdentifier": "nobody", "Dimension": "a", "Quantity": 1}, "InvalidCustomerIdentifierException", id="unknown-customer-identifier"),
        pytest.param(lambda r: {**r, "Timestamp": NOW - timedelta(hours=6)}, "TimestampOutOfBoundsException", id="six-hours-old"),
        pytest.param(lambda r: {**r, "Timestamp": NOW + timedelta(minutes=6)}, "TimestampOutOfBoundsException", id="future"),
        pytest.param(lambda r: {**r, "Quantity": 2_147_483_648}, "ValidationException", id="quantity-too-large"),
        pytest.param(lambda r: {**r, "CustomerIdentifier": "x"}, "ValidationException", id="two-customer-keys"),
        pytest.param(lambda r: {**r, "Quantity": 3, "UsageAllocations": [{"AllocatedUsageQuantity": 2}]}, "InvalidUsageAllocationsException", id="allocations-do-not-sum"),
        pytest.param(lambda r: {**r, "Quantity": 1, "UsageAllocations": [{"AllocatedUsageQuantity": 1, "Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(6)]}]}, "InvalidTagException", id="six-tags"),
    ],
)
def test_a_bad_record_rejects_the_whole_batch(
    emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any], mutate: Any, code: str
) -> None:
    """One invalid record fails the whole call with its exception; the good record is not metered."""
    good = _rec(sub, "b", 2)

    assert _error(metering, [good, mutate(_rec(sub, "a", 1))]) == code
    assert emu.usage()["records"] == []


def test_unknown_product_code_is_refused(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """A product the emulator does not list answers InvalidProductCodeException."""
    assert _error(metering, [_rec(sub)], product="prod-unknown") == "InvalidProductCodeException"


@pytest.mark.parametrize(
    ("when", "accepted"),
    [
        pytest.param(NOW - timedelta(hours=5, minutes=59), True, id="just-inside-6h"),
        pytest.param(NOW - timedelta(hours=6), False, id="exactly-6h"),
        pytest.param(NOW + timedelta(minutes=4), True, id="4-min-ahead"),
        pytest.param(NOW + timedelta(minutes=6), False, id="6-min-ahead"),
    ],
)
def test_timestamp_window_edges(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any], when: datetime, accepted: bool) -> None:
    """Records are accepted up to (not including) 6 hours old and at most 5 minutes ahead."""
    try:
        response = metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, when=when)])
        outcome = _statuses(response) == ["Success"]
    except ClientError as err:
        assert err.response["Error"]["Code"] == "TimestampOutOfBoundsException"
        outcome = False
    assert outcome is accepted


def test_window_is_configurable(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """With a one-hour window, a record two hours old is out of bounds."""
    emu.set_options(max_age_seconds=3600)

    assert _error(metering, [_rec(sub, when=NOW - timedelta(hours=2))]) == "TimestampOutOfBoundsException"


def test_usage_before_license_start_is_refused(emu: AwsEmulatorClient, metering: Any) -> None:
    """Usage for an hour before the license started answers InvalidLicenseException."""
    sub = emu.create_customer(product_code=PRODUCT, dimensions=["a"], started_at="2026-11-21T10:10:00Z")

    assert _error(metering, [_rec(sub, when=HOUR - timedelta(hours=1))]) == "InvalidLicenseException"
    assert _statuses(metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub)])) == ["Success"]


def test_cancellation_leaves_a_final_window_then_refuses(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """After cancel the customer may be metered for the window, then gets CustomerNotSubscribed."""
    emu.cancel(sub["id"])
    inside = metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, "a")])

    emu.set_clock(NOW + timedelta(minutes=61))
    after = metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, "b")])

    assert (_statuses(inside), _statuses(after)) == (["Success"], ["CustomerNotSubscribed"])


def test_account_without_subscription_is_not_subscribed(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """An account id with no license for the product answers CustomerNotSubscribed."""
    record = {"Timestamp": HOUR, "CustomerAWSAccountId": "123123123123", "Dimension": "a", "Quantity": 1}

    assert _statuses(metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[record])) == ["CustomerNotSubscribed"]


def test_token_bucket_throttles_bursts(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """Beyond the configured request rate and burst the emulator answers ThrottlingException."""
    emu.set_options(rate_limit_rps=0.1, rate_limit_burst=2)
    codes = []
    for dimension in ["a", "b", "a"]:
        try:
            metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, dimension, when=HOUR - timedelta(hours=len(codes)))])
            codes.append("ok")
        except ClientError as err:
            codes.append(err.response["Error"]["Code"])

    assert codes == ["ok", "ok", "ThrottlingException"]


@pytest.mark.parametrize(
    ("faults", "code", "status"),
    [
        pytest.param({"error_rate": 1.0}, "InternalServiceErrorException", 500, id="error"),
        pytest.param({"throttle_rate": 1.0}, "ThrottlingException", 400, id="throttle"),
        pytest.param({"outage": True}, "503", 503, id="outage"),
    ],
)
def test_injected_faults(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any], faults: dict[str, Any], code: str, status: int) -> None:
    """Injected faults answer the AWS error for each kind and meter nothing."""
    emu.set_faults(**faults)

    with pytest.raises(ClientError) as info:
        metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub)])

    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    emu.set_faults(error_rate=0.0, throttle_rate=0.0, outage=False)
    assert emu.usage()["records"] == []


def test_unprocessed_records_injection(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """With an unprocessed rate of 1, every record comes back in UnprocessedRecords, unmetered."""
    emu.set_options(unprocessed_rate=1.0)

    response = metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub, "a"), _rec(sub, "b")])

    assert response["Results"] == [] and len(response["UnprocessedRecords"]) == 2
    assert emu.usage()["records"] == []


def test_bad_access_key_is_unrecognized(emu: AwsEmulatorClient, server: EmulatorServer, sub: dict[str, Any]) -> None:
    """A configured bad access key id answers UnrecognizedClientException."""
    emu.set_options(bad_access_keys=["AKIABAD0000000000000"])

    bad = _client(server, key="AKIABAD0000000000000")

    assert _error(bad, [_rec(sub)]) == "UnrecognizedClientException"


def test_get_entitlements_filters_and_paginates(emu: AwsEmulatorClient, server: EmulatorServer) -> None:
    """GetEntitlements filters by license and pages with NextToken, including an empty first page."""
    one = emu.create_customer(product_code=PRODUCT, dimensions=["a"], entitlements={"seats": 10, "tier": "gold"},
                              expiration="2027-11-21T00:00:00Z")
    emu.create_customer(product_code=PRODUCT, dimensions=["a"], entitlements={"seats": 3})
    emu.set_options(empty_first_entitlement_page=True)
    entitlements = _client(server, "marketplace-entitlement")

    rows, token, pages = [], None, 0
    while True:
        params = {"ProductCode": PRODUCT, "Filter": {"LICENSE_ARN": [one["identifiers"]["license_arn"]]}, "MaxResults": 1}
        if token:
            params["NextToken"] = token
        page = entitlements.get_entitlements(**params)
        rows += page["Entitlements"]
        pages += 1
        token = page.get("NextToken")
        if not token:
            break

    assert pages == 3
    assert [(r["Dimension"], r["Value"]) for r in rows] == [("seats", {"IntegerValue": 10}), ("tier", {"StringValue": "gold"})]
    assert rows[0]["ExpirationDate"] == datetime(2027, 11, 21, tzinfo=timezone.utc)


def test_get_entitlements_over_rpc_v2_cbor(emu: AwsEmulatorClient, server: EmulatorServer) -> None:
    """The Smithy RPC v2 CBOR route answers GetEntitlements in CBOR that botocore's parser reads."""
    import requests
    from botocore.parsers import RpcV2CBORParser
    from botocore.session import get_session

    emu.create_customer(product_code=PRODUCT, dimensions=["a"], entitlements={"seats": 4}, expiration="2027-01-01T00:00:00Z")
    model = get_session().get_service_model("marketplace-entitlement").operation_model("GetEntitlements")

    answer = requests.post(
        server.url + "/service/AWSMPEntitlementService/operation/GetEntitlements",
        data=cbor_encode({"ProductCode": PRODUCT}),
        headers={"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"},
        timeout=5,
    )
    parsed = RpcV2CBORParser().parse(
        {"status_code": answer.status_code, "headers": answer.headers, "body": answer.content},
        model.output_shape,
    )

    [row] = parsed["Entitlements"]
    assert (row["Dimension"], row["Value"], row["ExpirationDate"].year) == ("seats", {"IntegerValue": 4}, 2027)


def test_cbor_codec_round_trips() -> None:
    """The emulator's CBOR codec round-trips the value kinds the Entitlement Service uses."""
    value = {"a": [1, -2, 3.5, True, False, None, "é", b"\x00"], "n": 2**40, "t": datetime(2026, 1, 1, tzinfo=timezone.utc)}

    assert cbor_decode(cbor_encode(value)) == value


def test_resolve_customer_returns_license_identifiers(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """ResolveCustomer (token = subscription id) returns the account id, product and license ARN."""
    resolved = metering.resolve_customer(RegistrationToken=sub["id"])

    assert (resolved["CustomerAWSAccountId"], resolved["ProductCode"], resolved["LicenseArn"]) == (
        sub["identifiers"]["customer_aws_account_id"], PRODUCT, sub["identifiers"]["license_arn"],
    )


def test_reset_forgets_everything(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any]) -> None:
    """Reset clears subscriptions and usage."""
    metering.batch_meter_usage(ProductCode=PRODUCT, UsageRecords=[_rec(sub)])

    emu.reset()

    assert emu.usage() == {"totals": [], "records": []}
    assert emu._call("GET", "/_emulator/customers") == []


# --- one product per call, and requests without ProductCode (Concurrent Agreements) --------------------


def test_a_batch_mixing_two_products_fails_as_a_whole(emu: AwsEmulatorClient, metering: Any) -> None:
    """Without ProductCode each license names its product; two products in one call refuse every record."""
    one = emu.create_customer(product_code="prod-one", dimensions=["a"])
    two = emu.create_customer(product_code="prod-two", dimensions=["a"])

    with pytest.raises(ClientError) as info:
        metering.batch_meter_usage(UsageRecords=[_rec(one), _rec(two)])

    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "one product" in info.value.response["Error"]["Message"]
    assert emu.usage()["records"] == []


def test_a_license_of_another_product_fails_the_call(emu: AwsEmulatorClient, metering: Any) -> None:
    """With ProductCode, a record whose license is for another product refuses the whole call."""
    one = emu.create_customer(product_code="prod-one", dimensions=["a"])
    two = emu.create_customer(product_code="prod-two", dimensions=["a"])

    assert _error(metering, [_rec(one), _rec(two)], product="prod-one") == "InvalidLicenseException"
    assert emu.usage()["records"] == []


def test_records_of_one_product_without_product_code_are_accepted(emu: AwsEmulatorClient, metering: Any) -> None:
    """Concurrent Agreements: two licenses of one account and product, no ProductCode, both accepted."""
    first = emu.create_customer(product_code=PRODUCT, dimensions=["a"])
    second = emu.create_customer(product_code=PRODUCT, dimensions=["a"],
                                 customer_aws_account_id=first["identifiers"]["customer_aws_account_id"])

    response = metering.batch_meter_usage(UsageRecords=[_rec(first, quantity=2), _rec(second, quantity=3)])

    assert _statuses(response) == ["Success", "Success"]
    assert sorted(r["quantity"] for r in emu.usage()["records"]) == [2, 3]


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(lambda sub: {"Timestamp": HOUR, "CustomerIdentifier": sub["identifiers"]["customer_identifier"],
                                  "Dimension": "a", "Quantity": 1}, id="customer-identifier"),
        pytest.param(lambda sub: {"Timestamp": HOUR, "CustomerAWSAccountId": sub["identifiers"]["customer_aws_account_id"],
                                  "Dimension": "a", "Quantity": 1}, id="account-without-license"),
    ],
)
def test_without_product_code_every_record_needs_a_license(emu: AwsEmulatorClient, metering: Any, sub: dict[str, Any], record: Any) -> None:
    """The legacy identifier needs the request's ProductCode; without it every record names its license."""
    with pytest.raises(ClientError) as info:
        metering.batch_meter_usage(UsageRecords=[_rec(sub), record(sub)])

    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert emu.usage()["records"] == []


def test_mixed_products_check_is_an_option(emu: AwsEmulatorClient, metering: Any) -> None:
    """one_product_per_call=false lets a mixed call through (to test a sender's own splitting)."""
    emu.set_options(one_product_per_call=False)
    one = emu.create_customer(product_code="prod-one", dimensions=["a"])
    two = emu.create_customer(product_code="prod-two", dimensions=["a"])

    assert _statuses(metering.batch_meter_usage(UsageRecords=[_rec(one), _rec(two)])) == ["Success", "Success"]
