"""A contract mapped end to end for sync tests: an emulator, the real adapter, the billing core."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Sequence

import requests
from sqlalchemy import Engine
from sqlmodel import Session

from billing_core.events import ingest_events
from billing_core.metrics import MetricDefinition, create_metric
from billing_core.persistence.catalog import SqlCatalog
from billing_core import SqlEventStore, SqlMetricRepository
from config import Settings
from marketplaces.emulators.server import EmulatorServer
from tests.billing_core.helpers import plan_of, unit
from worker.billing_gateway import CoreBillingGateway
from worker.metering import hour_floor
from worker.persistence.contracts import ContractRow, ListingRow

DIMENSION = "usage_cost"
_seq = itertools.count()


@dataclass
class SyncEnv:
    """One marketplace's emulator and adapter, and a helper to map contracts against it."""

    marketplace: str
    engine: Engine
    server: EmulatorServer
    adapter: Any
    settings: Settings
    contracts: list[str] = field(default_factory=list)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(method, f"{self.server.url}/_emulator/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json() if response.content else None

    def new_identifiers(self, product_code: str = "prod-sync",
                        dimensions: Sequence[str] = (DIMENSION,)) -> dict[str, str]:
        """Create a marketplace customer able to receive usage of ``dimensions``; return its identifiers."""
        if self.marketplace == "aws":
            created = self.control("POST", "customers", {"product_code": product_code, "dimensions": list(dimensions)})
            return {"product_code": product_code, **created["identifiers"]}
        if self.marketplace == "azure":
            sub = self.control("POST", "subscriptions", {"plan_id": "payg", "dimensions": list(dimensions)})
            return {"azure_subscription_id": sub["subscription"]["id"], "plan_id": "payg", "offer_id": "offer-sync"}
        self.control("POST", "metrics", {"metrics": list(dimensions)})
        ids = self.control("POST", "entitlements", {"approve": True})["identifiers"]
        return {"gcp_entitlement_id": ids["entitlement_id"], "usage_reporting_id": ids["consumer_id"],
                "entitlement_id": ids["entitlement_id"], "product_id": "prod-sync"}

    def totals(self) -> int:
        """Return every unit the emulator accepted, all customers and hours together."""
        rows = self.control("GET", "usage")["totals"]
        return int(sum(Decimal(str(r["quantity"])) for r in rows))

    def totals_by_dimension(self) -> dict[str, int]:
        """Return the units the emulator accepted per dimension, all customers and hours together."""
        out: dict[str, int] = {}
        for r in self.control("GET", "usage")["totals"]:
            out[r["dimension"]] = out.get(r["dimension"], 0) + int(Decimal(str(r["quantity"])))
        return out

    def totals_by_hour(self) -> dict[str, int]:
        rows = self.control("GET", "usage")["totals"]
        out: dict[str, int] = {}
        for r in rows:
            out[r["hour"]] = out.get(r["hour"], 0) + int(Decimal(str(r["quantity"])))
        return out


def setup_billing(engine: Engine, *, unit_amount: str = "0.001", plan_id: str = "plan_sync") -> None:
    """Create the metric (sum of tokens) and a unit-priced plan in the billing core."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        create_metric(SqlMetricRepository(session), metric_id="m_tokens", name="tokens", now=now,
                      definition=MetricDefinition(event_name="api_call", aggregation="sum", property="tokens"))
        SqlCatalog(session).save_plan(plan_of(unit(unit_amount, id=f"{plan_id}_p", metric="m_tokens"), id=plan_id))
        session.commit()


# Two dimensions over a plan of two usage prices (setup_two_dimension_billing): calls at 0.0007
# each to api_calls (units of 0.001), tokens at 0.001 each to usage_fee (units of 0.01).
TWO_DIMENSIONS = [{"name": "api_calls", "unit_price": "0.001", "prices": ["calls"]},
                  {"name": "usage_fee", "unit_price": "0.01", "prices": "remaining"}]


def setup_two_dimension_billing(engine: Engine, *, plan_id: str = "plan_dims") -> None:
    """Create a count-of-calls metric and a plan pricing calls (key ``calls``) and tokens (key ``tokens``)."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        create_metric(SqlMetricRepository(session), metric_id="m_calls", name="calls", now=now,
                      definition=MetricDefinition(event_name="api_call", aggregation="count"))
        SqlCatalog(session).save_plan(plan_of(
            unit("0.0007", id=f"{plan_id}_calls", key="calls", item_id="item_calls", metric="m_calls"),
            unit("0.001", id=f"{plan_id}_tokens", key="tokens", item_id="item_tokens", metric="m_tokens"),
            id=plan_id))
        session.commit()


def map_contract(env: SyncEnv, *, start: datetime, unit_price: str = "0.01", close_rounding: str = "floor",
                 metering_start: datetime | None = None, aws_product_code: str = "prod-sync",
                 plan_id: str = "plan_sync", dimensions: list[dict[str, Any]] | None = None,
                 **listing_flags: bool) -> tuple[str, str]:
    """Create a listing (with ``listing_flags``, e.g. ``aws_legacy_identifiers``; ``dimensions``:
    several), a billing subscription and a mapped contract; return (contract, customer)."""
    n = next(_seq)
    names = [d["name"] for d in dimensions] if dimensions else [DIMENSION]
    identifiers = env.new_identifiers(aws_product_code, names)
    gateway = CoreBillingGateway(env.engine)
    customer = gateway.ensure_customer(external_customer_id=f"{env.marketplace}:c{n}", name=f"C{n}",
                                       email=f"c{n}@example.test", currency="USD")
    contract_id = f"ctr_sync{n}"
    sub_id = gateway.create_subscription(idempotency_key=contract_id, customer_id=customer, plan_id=plan_id,
                                         start=start, external_marketplace=env.marketplace, reporting_id=contract_id)
    now = datetime.now(UTC)
    with Session(env.engine) as session:
        listing_id = f"lst_sync{n}"
        session.add(ListingRow(id=listing_id, marketplace=env.marketplace, product_id=f"prod-sync-{n}",
                               billing_plan_id=plan_id, dimension=names[0],
                               unit_price=dimensions[0]["unit_price"] if dimensions else unit_price,
                               dimensions=dimensions,
                               close_rounding=close_rounding,
                               metering_start_date=metering_start.date() if metering_start else None,
                               created_at=now, updated_at=now, **listing_flags))
        columns = {k: v for k, v in identifiers.items()
                   if k in ("product_code", "customer_aws_account_id", "license_arn", "customer_identifier",
                            "azure_subscription_id", "gcp_entitlement_id", "offer_id", "plan_id")}
        session.add(ContractRow(id=contract_id, source="contracts", external_id=contract_id,
                                marketplace=env.marketplace, status="active", listing_id=listing_id,
                                cloud_identifiers=identifiers, mapping_status="mapped", customer_id=customer,
                                subscription_id=sub_id, started_at=start, created_at=now, updated_at=now, **columns))
        session.commit()
    env.contracts.append(contract_id)
    return contract_id, customer


def mark_canceled(engine: Engine, contract_id: str, at: datetime) -> None:
    """Record the contract as canceled at ``at`` (received then too), as the cancellation event would."""
    with Session(engine) as session:
        row = session.get(ContractRow, contract_id)
        row.status, row.canceled_at, row.cancel_effective_at = "canceled", at, at
        session.add(row)
        session.commit()


def ingest(engine: Engine, customer_id: str, tokens: int, at: datetime, key: str | None = None) -> None:
    """Store one api_call event of ``tokens`` for the customer."""
    with Session(engine) as session:
        ingest_events(SqlEventStore(session), [{
            "idempotency_key": key or f"ev-{next(_seq)}", "customer_id": customer_id, "event_name": "api_call",
            "timestamp": at.isoformat(), "properties": {"tokens": tokens},
        }], now=datetime.now(UTC))
        session.commit()


def start_of_test_window() -> datetime:
    """Return a subscription start three hours ago (inside every marketplace's late window)."""
    return hour_floor(datetime.now(UTC)) - timedelta(hours=3)


def build_env(marketplace: str, engine: Engine, server: EmulatorServer) -> SyncEnv:
    """Return the environment with the sandbox adapter pointed at ``server``."""
    from worker.runtime import Runtime

    port_setting = {"aws": "AWS_EMULATOR_PORT", "azure": "AZURE_EMULATOR_PORT", "gcp": "GCP_EMULATOR_PORT"}[marketplace]
    settings = Settings.from_env({"MARKETPLACE_MODE": "sandbox", port_setting: str(server.port),
                                  "EMULATOR_HOST": "127.0.0.1", "GCP_PUSH_AUDIENCE": "http://127.0.0.1/unused"})
    adapter = Runtime(settings).adapter(marketplace)
    return SyncEnv(marketplace, engine, server, adapter, settings)


def fresh_env(marketplace: str, engine: Engine, servers: dict[str, EmulatorServer]) -> SyncEnv:
    """Return the environment of ``marketplace``'s session emulator, reset, with usage fragments on and the
    tokens plan (``setup_billing``) stored."""
    from billing_core import use_fragments

    use_fragments(engine, True)
    environment = build_env(marketplace, engine, servers[marketplace])
    environment.control("POST", "reset")
    setup_billing(engine)
    return environment


def emulator_factory(marketplace: str) -> Any:
    if marketplace == "aws":
        from marketplaces.emulators.aws import create_aws_emulator as factory
    elif marketplace == "azure":
        from marketplaces.emulators.azure import create_azure_emulator as factory
    else:
        from marketplaces.emulators.gcp import create_gcp_emulator as factory
    return factory


def point_cli_at(monkeypatch: Any, environment: SyncEnv, runtime: Any) -> None:
    """Point the ``marketsync`` CLI (it builds its own runtime from the environment) at this
    test's database, Redis and AWS emulator."""
    for key, value in {"DATABASE_URL": runtime.settings.database_url, "REDIS_URL": runtime.settings.REDIS_URL,
                       "AWS_EMULATOR_PORT": str(environment.server.port), "EMULATOR_HOST": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
