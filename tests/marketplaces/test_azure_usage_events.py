"""Azure's usage-event read-back (GET /api/usageEvents) through the real HTTP adapter against the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from marketplaces.aws import AwsMarketplace
from marketplaces.base import AcceptedUsage, Marketplace, PermanentMarketplaceError, UsageReadBack, read_back
from tests.marketplaces.azure_support import HOUR, AzureSandbox, hours_ago


@pytest.fixture
def sandbox() -> Iterator[AzureSandbox]:
    box = AzureSandbox()
    yield box
    box.close()


def _send(sandbox: AzureSandbox, ids: dict[str, str], dimension: str, hours: int, quantity: int) -> None:
    record = sandbox.make_record(f"k-{ids['resource_id']}-{dimension}-{hours}", ids, dimension, hours_ago(hours), quantity)
    [outcome] = sandbox.adapter.report([record])
    assert outcome.status.value == "accepted", outcome


def test_read_back_lists_accepted_events_exactly(sandbox: AzureSandbox) -> None:
    """Every accepted event comes back once, per resource, dimension and hour, with exact quantities."""
    a = sandbox.create_customer(dimensions=["usage_fee", "api_calls"])
    b = sandbox.create_customer()
    _send(sandbox, a, "usage_fee", 3, 800)
    _send(sandbox, a, "api_calls", 3, 7)
    _send(sandbox, b, "usage_fee", 2, 12345)
    got = sandbox.adapter.read_usage(hours_ago(5), HOUR + timedelta(hours=1))
    assert sorted((u.identifiers["resource_id"], u.dimension, u.hour, u.quantity) for u in got) == sorted([
        (a["resource_id"], "usage_fee", hours_ago(3), Decimal(800)),
        (a["resource_id"], "api_calls", hours_ago(3), Decimal(7)),
        (b["resource_id"], "usage_fee", hours_ago(2), Decimal(12345)),
    ])
    assert all(isinstance(u, AcceptedUsage) and u.marketplace is Marketplace.AZURE for u in got)
    assert all(u.status == "Accepted" and u.processed == u.quantity for u in got)
    assert all(isinstance(u.quantity, Decimal) for u in got)
    # The window is half-open and the answer is filtered to it.
    assert [u.hour for u in sandbox.adapter.read_usage(hours_ago(2), hours_ago(1))] == [hours_ago(2)]
    # A filter the API documents narrows the read.
    only = sandbox.adapter.read_usage(hours_ago(5), HOUR, dimension="api_calls")
    assert [(u.dimension, u.quantity) for u in only] == [("api_calls", Decimal(7))]


def test_wire_shape_is_the_documented_one(sandbox: AzureSandbox) -> None:
    """The emulator answers a bare JSON array of the documented fields; usageStartDate is required."""
    ids = sandbox.create_customer()
    _send(sandbox, ids, "usage_fee", 1, 5)
    answer = sandbox.api("GET", "/usageEvents", params={"api-version": "2018-08-31",
                                                         "usageStartDate": hours_ago(4).strftime("%Y-%m-%d")})
    assert answer.status_code == 200
    [item] = answer.json()
    assert set(item) == {"usageDate", "usageResourceId", "dimension", "planId", "planName", "offerId", "offerName",
                         "offerType", "azureSubscriptionId", "reconStatus", "submittedQuantity",
                         "processedQuantity", "submittedCount"}
    assert item["usageResourceId"] == ids["resource_id"] and item["offerType"] == "SaaS"
    assert item["usageDate"] == hours_ago(1).strftime("%Y-%m-%dT%H:%M:%SZ")
    missing = sandbox.api("GET", "/usageEvents", params={"api-version": "2018-08-31"})
    assert missing.status_code == 400 and "usageStartDate" in missing.text
    unauthenticated = sandbox.http.get(f"{sandbox.url}/api/usageEvents",
                                       params={"api-version": "2018-08-31", "usageStartDate": "2026-11-01"})
    assert unauthenticated.status_code == 403


def test_recon_status_is_carried(sandbox: AzureSandbox) -> None:
    """A Mismatch (processed below submitted) or a Rejected event is read as Azure states it."""
    ids = sandbox.create_customer()
    _send(sandbox, ids, "usage_fee", 2, 17)
    sandbox.control("POST", "recon", {"resource_id": ids["resource_id"], "dimension": "usage_fee",
                                      "hour": hours_ago(2).isoformat(), "recon_status": "Mismatch",
                                      "processed_quantity": 16})
    [usage] = sandbox.adapter.read_usage(hours_ago(3), HOUR)
    assert (usage.status, usage.quantity, usage.processed) == ("Mismatch", Decimal(17), Decimal(16))
    rejected = sandbox.adapter.read_usage(hours_ago(3), HOUR, reconStatus="Accepted")
    assert rejected == []


def test_read_back_is_optional_on_the_interface(sandbox: AzureSandbox) -> None:
    """Azure's adapter offers the read; AWS's does not, and read_back says so with None."""
    assert isinstance(sandbox.adapter, UsageReadBack)
    assert read_back(sandbox.adapter, hours_ago(3), HOUR) == []
    assert not hasattr(AwsMarketplace, "read_usage")
    assert read_back(object(), hours_ago(3), HOUR) is None


def test_unreadable_answer_is_permanent(sandbox: AzureSandbox) -> None:
    """A 403 from the read is a permanent error, as for metering calls."""
    sandbox.control("POST", "reset", {"options": {"client_id": "another-app"}})
    with pytest.raises(PermanentMarketplaceError):
        sandbox.adapter.read_usage(hours_ago(3), HOUR)
