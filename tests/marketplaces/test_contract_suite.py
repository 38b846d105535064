"""The shared adapter contract: every marketplace adapter, run against its emulator, behaves alike.

Each marketplace adds one factory to ``ENV_FACTORIES``: a generator taking the module's
server cache (``dict[str, EmulatorServer]``; start your emulator once and store it there) and
yielding an ``AdapterEnv`` for one test, with the emulator reset. ``AdapterEnv`` offers:

- ``adapter``: the real adapter, built the way production builds it (sandbox mode);
- ``emulator``: control helpers ``create_customer(dimensions) -> identifiers``,
  ``usage_total(identifiers, dimension, hour) -> number``, ``usage_totals()``,
  ``set_faults(**faults)``, ``reset()``;
- ``make_record(key, identifiers, dimension, hour, quantity) -> UsageRecord``;
- ``hour``: a whole UTC hour the marketplace accepts now;
- ``bad_credentials_adapter()``: an adapter whose credentials the emulator refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Mapping

import pytest

from config.settings import Settings
from marketplaces.base import (
    Marketplace,
    MarketplaceAdapter,
    OutcomeStatus,
    PermanentMarketplaceError,
    TransientMarketplaceError,
    UsageRecord,
)
from marketplaces.emulators.server import EmulatorServer

DIMENSION = "usage_fee"
FINAL = {OutcomeStatus.ACCEPTED, OutcomeStatus.DUPLICATE}


@dataclass
class AdapterEnv:
    """One marketplace's adapter wired to its running emulator."""

    name: str
    adapter: Any
    emulator: Any
    make_record: Callable[[str, Mapping[str, str], str, datetime, int], UsageRecord]
    hour: datetime
    bad_credentials_adapter: Callable[[], Any]


def _last_hour() -> datetime:
    return datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


# --- AWS --------------------------------------------------------------------------------------


class _AwsControl:
    """Contract-suite control helpers over the AWS emulator's control API."""

    def __init__(self, url: str):
        from marketplaces.emulators.aws import AwsEmulatorClient

        self.client = AwsEmulatorClient(url)

    def create_customer(self, dimensions: list[str] = [DIMENSION]) -> dict[str, str]:  # noqa: B006
        return self.client.create_customer(product_code="prod-contract", dimensions=list(dimensions))[
            "identifiers"
        ]

    def usage_total(self, identifiers: Mapping[str, str], dimension: str, hour: datetime) -> int:
        return self.client.usage_total(identifiers, dimension, hour)

    def usage_totals(self) -> list[dict[str, Any]]:
        return self.client.usage()["totals"]

    def set_faults(self, **faults: Any) -> None:
        self.client.set_faults(**faults)

    def reset(self) -> None:
        self.client.reset()
        # Throttling has its own emulator test; here it would only add retry noise.
        self.client.set_options(rate_limit_rps=0, bad_access_keys=["AKIABADBADBADBADBAD0"])


def _aws_env(servers: dict[str, EmulatorServer]) -> Iterator[AdapterEnv]:
    from marketplaces.aws import build_aws_adapter

    server = servers["aws"]
    control = _AwsControl(server.url)
    control.reset()
    settings = Settings.from_env(
        {"MARKETPLACE_MODE": "sandbox", "AWS_EMULATOR_PORT": str(server.port)}
    )

    def make_record(key: str, ids: Mapping[str, str], dimension: str, hour: datetime, quantity: int) -> UsageRecord:
        return UsageRecord(key, Marketplace.AWS, dict(ids), dimension, hour, quantity)

    yield AdapterEnv(
        name="aws",
        adapter=build_aws_adapter(settings, backoff_seconds=(0.01,)),
        emulator=control,
        make_record=make_record,
        hour=_last_hour(),
        bad_credentials_adapter=lambda: build_aws_adapter(
            settings, aws_access_key_id="AKIABADBADBADBADBAD0", max_attempts=1
        ),
    )


# --- Azure ------------------------------------------------------------------------------------


class _AzureControl:
    """Contract-suite control helpers over the Azure emulator's control API."""

    def __init__(self, url: str):
        import requests

        self.url = f"{url}/_emulator"
        self.http = requests.Session()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"{self.url}/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def create_customer(self, dimensions: list[str] = [DIMENSION]) -> dict[str, str]:  # noqa: B006
        sub = self._call("POST", "subscriptions", {"plan_id": "payg", "dimensions": list(dimensions)})
        return {"resource_id": sub["subscription"]["id"], "plan_id": "payg"}

    def usage_total(self, identifiers: Mapping[str, str], dimension: str, hour: datetime) -> float:
        stamp = hour.strftime("%Y-%m-%dT%H:%M:%SZ")
        return sum(
            row["quantity"]
            for row in self.usage_totals()
            if (row["resource_id"], row["dimension"], row["hour"])
            == (identifiers["resource_id"], dimension, stamp)
        )

    def usage_totals(self) -> list[dict[str, Any]]:
        return self._call("GET", "usage")["totals"]

    def set_faults(self, **faults: Any) -> None:
        self._call("POST", "faults", faults)

    def reset(self) -> None:
        self._call("POST", "reset")


def _azure_env(servers: dict[str, EmulatorServer]) -> Iterator[AdapterEnv]:
    from marketplaces.azure import build_azure_adapter

    server = servers["azure"]
    control = _AzureControl(server.url)
    control.reset()
    settings = Settings.from_env(
        {"MARKETPLACE_MODE": "sandbox", "AZURE_EMULATOR_PORT": str(server.port)}
    )

    def make_record(key: str, ids: Mapping[str, str], dimension: str, hour: datetime, quantity: int) -> UsageRecord:
        return UsageRecord(key, Marketplace.AZURE, dict(ids), dimension, hour, quantity)

    yield AdapterEnv(
        name="azure",
        adapter=build_azure_adapter(settings, retry_delays=(0.01, 0.01)),
        emulator=control,
        make_record=make_record,
        hour=_last_hour(),
        bad_credentials_adapter=lambda: build_azure_adapter(
            settings, client_secret="not-the-secret", retry_delays=()
        ),
    )


# --- Google Cloud -----------------------------------------------------------------------------


class _GcpControl:
    """Contract-suite control helpers over the GCP emulator's control API."""

    def __init__(self, url: str):
        import requests

        self.url = f"{url}/_emulator"
        self.http = requests.Session()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"{self.url}/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def create_customer(self, dimensions: list[str] = [DIMENSION]) -> dict[str, str]:  # noqa: B006
        # Metrics belong to the service (product), not the customer: define them there.
        self._call("POST", "metrics", {"metrics": list(dimensions)})
        return self._call("POST", "entitlements", {"approve": True})["identifiers"]

    def usage_total(self, identifiers: Mapping[str, str], dimension: str, hour: datetime) -> int:
        stamp = hour.strftime("%Y-%m-%dT%H:00:00Z")
        return sum(
            row["quantity"]
            for row in self.usage_totals()
            if (row["consumer_id"], row["dimension"], row["hour"])
            == (identifiers["consumer_id"], dimension, stamp)
        )

    def usage_totals(self) -> list[dict[str, Any]]:
        return self._call("GET", "usage")["totals"]

    def set_faults(self, **faults: Any) -> None:
        self._call("POST", "faults", faults)

    def reset(self) -> None:
        self._call("POST", "reset")
        self._call("POST", "metrics", {"metrics": [], "replace": True})
        self._call("POST", "auth", {"refused_tokens": ["bad-gcp-token"]})


def _gcp_env(servers: dict[str, EmulatorServer]) -> Iterator[AdapterEnv]:
    from google.oauth2.credentials import Credentials

    from marketplaces.gcp import build_gcp_adapter

    server = servers["gcp"]
    control = _GcpControl(server.url)
    control.reset()
    settings = Settings.from_env({"MARKETPLACE_MODE": "sandbox", "GCP_EMULATOR_PORT": str(server.port)})

    def make_record(key: str, ids: Mapping[str, str], dimension: str, hour: datetime, quantity: int) -> UsageRecord:
        return UsageRecord(key, Marketplace.GCP, dict(ids), dimension, hour, quantity)

    def bad_credentials_adapter() -> Any:
        from google.cloud import servicecontrol_v1

        client = servicecontrol_v1.ServiceControllerClient(
            transport="rest",
            credentials=Credentials(token="bad-gcp-token"),
            client_options={"api_endpoint": server.url},
        )
        return build_gcp_adapter(settings, client=client)

    yield AdapterEnv(
        name="gcp",
        adapter=build_gcp_adapter(settings),
        emulator=control,
        make_record=make_record,
        hour=_last_hour(),
        bad_credentials_adapter=bad_credentials_adapter,
    )


ENV_FACTORIES: dict[str, Callable[[dict[str, EmulatorServer]], Iterator[AdapterEnv]]] = {
    "aws": _aws_env,
    "azure": _azure_env,
    "gcp": _gcp_env,
}




@pytest.fixture(params=sorted(ENV_FACTORIES), ids=sorted(ENV_FACTORIES))
def adapter_env(request: pytest.FixtureRequest, emulator_servers: dict[str, EmulatorServer]) -> Iterator[AdapterEnv]:
    """Yield one marketplace's adapter and a freshly reset emulator."""
    yield from ENV_FACTORIES[request.param](emulator_servers)


def _report_until_final(env: AdapterEnv, records: list[UsageRecord], rounds: int = 10) -> dict[str, Any]:
    """Report like the worker does: resend what is not final, tolerating transient errors."""
    final: dict[str, Any] = {}
    pending = list(records)
    for _ in range(rounds):
        if not pending:
            break
        try:
            outcomes = env.adapter.report(pending)
        except TransientMarketplaceError:
            continue
        for outcome in outcomes:
            if outcome.status in FINAL:
                final[outcome.key] = outcome
        pending = [r for r in pending if r.key not in final]
    assert not pending, f"still not delivered after {rounds} rounds: {[r.key for r in pending]}"
    return final


# --- the contract -----------------------------------------------------------------------------


def test_adapter_implements_the_interface(adapter_env: AdapterEnv) -> None:
    """The adapter satisfies the MarketplaceAdapter protocol."""
    assert isinstance(adapter_env.adapter, MarketplaceAdapter)


def test_report_is_accepted_and_counted(adapter_env: AdapterEnv) -> None:
    """A valid record comes back ACCEPTED and the marketplace holds exactly its quantity."""
    ids = adapter_env.emulator.create_customer([DIMENSION])
    record = adapter_env.make_record("k1", ids, DIMENSION, adapter_env.hour, 7)

    [outcome] = adapter_env.adapter.report([record])

    assert (outcome.key, outcome.status) == ("k1", OutcomeStatus.ACCEPTED)
    assert adapter_env.emulator.usage_total(ids, DIMENSION, adapter_env.hour) == 7


def test_identical_resend_is_not_double_counted(adapter_env: AdapterEnv) -> None:
    """Resending the same record answers ACCEPTED or DUPLICATE and never adds to the total."""
    ids = adapter_env.emulator.create_customer([DIMENSION])
    record = adapter_env.make_record("k1", ids, DIMENSION, adapter_env.hour, 7)
    adapter_env.adapter.report([record])

    [again] = adapter_env.adapter.report([record])

    assert again.status in FINAL
    assert adapter_env.emulator.usage_total(ids, DIMENSION, adapter_env.hour) == 7


def test_different_quantity_for_a_reported_hour_is_duplicate(adapter_env: AdapterEnv) -> None:
    """A second, different quantity for the same hour is DUPLICATE and the first one stands."""
    ids = adapter_env.emulator.create_customer([DIMENSION])
    adapter_env.adapter.report([adapter_env.make_record("k1", ids, DIMENSION, adapter_env.hour, 7)])

    [second] = adapter_env.adapter.report(
        [adapter_env.make_record("k1b", ids, DIMENSION, adapter_env.hour, 9)]
    )

    assert second.status == OutcomeStatus.DUPLICATE
    assert adapter_env.emulator.usage_total(ids, DIMENSION, adapter_env.hour) == 7


def test_large_batch_is_split_and_fully_accepted(adapter_env: AdapterEnv) -> None:
    """Sixty records (more than any marketplace's batch limit) are all accepted, in order."""
    dimensions = [f"dim_{i:02d}" for i in range(20)]
    customers = [adapter_env.emulator.create_customer(dimensions) for _ in range(3)]
    records = [
        adapter_env.make_record(f"k{c}-{d}", ids, dim, adapter_env.hour, c * 100 + d + 1)
        for c, ids in enumerate(customers)
        for d, dim in enumerate(dimensions)
    ]

    outcomes = adapter_env.adapter.report(records)

    assert [o.key for o in outcomes] == [r.key for r in records]
    assert {o.status for o in outcomes} == {OutcomeStatus.ACCEPTED}
    for record in records[::7]:
        assert adapter_env.emulator.usage_total(record.identifiers, record.dimension, record.hour) == record.quantity


def test_one_bad_record_is_rejected_alone(adapter_env: AdapterEnv) -> None:
    """An unknown dimension among good records rejects only that record; the rest go through."""
    dimensions = [f"dim_{i}" for i in range(5)]
    ids = adapter_env.emulator.create_customer(dimensions)
    good = [adapter_env.make_record(f"g{i}", ids, dim, adapter_env.hour, i + 1) for i, dim in enumerate(dimensions)]
    bad = adapter_env.make_record("bad", ids, "no_such_dimension", adapter_env.hour, 3)

    outcomes = {o.key: o for o in adapter_env.adapter.report(good[:3] + [bad] + good[3:])}

    assert outcomes["bad"].status == OutcomeStatus.REJECTED
    assert {outcomes[r.key].status for r in good} == {OutcomeStatus.ACCEPTED}
    assert [adapter_env.emulator.usage_total(ids, r.dimension, r.hour) for r in good] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param({"error_rate": 0.3, "seed": 11}, id="server-errors"),
        pytest.param({"throttle_rate": 0.3, "seed": 12}, id="throttling"),
    ],
)
def test_flaky_marketplace_still_gets_exact_totals(adapter_env: AdapterEnv, faults: dict[str, Any]) -> None:
    """Under random 5xx or throttling, retrying until final leaves every total exact."""
    dimensions = [f"dim_{i}" for i in range(10)]
    customers = [adapter_env.emulator.create_customer(dimensions) for _ in range(3)]
    records = [
        adapter_env.make_record(f"k{c}-{d}", ids, dim, adapter_env.hour, 10 * c + d)
        for c, ids in enumerate(customers)
        for d, dim in enumerate(dimensions)
    ]
    adapter_env.emulator.set_faults(**faults)

    _report_until_final(adapter_env, records)

    adapter_env.emulator.set_faults(error_rate=0.0, throttle_rate=0.0)
    for record in records:
        assert adapter_env.emulator.usage_total(record.identifiers, record.dimension, record.hour) == record.quantity


def test_outage_raises_transient_then_recovers(adapter_env: AdapterEnv) -> None:
    """While the marketplace is down the adapter raises TransientMarketplaceError; later it delivers."""
    ids = adapter_env.emulator.create_customer([DIMENSION])
    record = adapter_env.make_record("k1", ids, DIMENSION, adapter_env.hour, 4)
    adapter_env.emulator.set_faults(outage=True)

    with pytest.raises(TransientMarketplaceError):
        adapter_env.adapter.report([record])

    adapter_env.emulator.set_faults(outage=False)
    [outcome] = adapter_env.adapter.report([record])
    assert outcome.status == OutcomeStatus.ACCEPTED
    assert adapter_env.emulator.usage_total(ids, DIMENSION, adapter_env.hour) == 4


def test_bad_credentials_are_permanent(adapter_env: AdapterEnv) -> None:
    """Credentials the marketplace refuses raise PermanentMarketplaceError and meter nothing."""
    ids = adapter_env.emulator.create_customer([DIMENSION])
    record = adapter_env.make_record("k1", ids, DIMENSION, adapter_env.hour, 4)

    with pytest.raises(PermanentMarketplaceError):
        adapter_env.bad_credentials_adapter().report([record])

    assert adapter_env.emulator.usage_total(ids, DIMENSION, adapter_env.hour) == 0
