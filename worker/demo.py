"""The demo run: a sample catalog, listings on all three marketplaces, contracts created by the
emulators (real signed notifications), a stream of usage, and reports arriving at the emulators.

Started by ``marketsync run --demo`` as one more child process (``python -m worker.demo``).
Everything goes through the service's own public paths: the catalog and listings are written
through the use cases, contracts arrive as marketplace notifications, usage through ``/v1/ingest``,
reports through the sync (first a catch-up of the hours the demo backdates usage into, then
hourly as in production).
"""

from __future__ import annotations

import argparse
import random
import secrets
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import requests
from sqlmodel import Session

from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.errors import NotFound
from billing_core.metrics import MetricDefinition, create_metric
from billing_core.periods import Cadence
from billing_core.persistence.catalog import SqlCatalog
from billing_core import SqlMetricRepository
from billing_core.plans import Item
from billing_core.pricing import BillingMode, ModelType, Price, Tier, TieredConfig, UnitConfig
from billing_core.service_plans import create_plan_with_prices
from config import Settings
from worker import listings
from worker.logs import get_logger
from worker.runtime import Runtime

log = get_logger("marketsync.demo")

PLAN_ID = "plan_demo"
DIMENSION = "usage_fee"
# The products the built-in emulators use for their sandbox listings.
AWS_PRODUCT = "prod-marketsync-demo"
AZURE_OFFER = "marketsync-sandbox-offer"
AZURE_PLAN = "payg"
GCP_PLAN = "demo-payg"


def load_catalog(runtime: Runtime, *, now: datetime) -> None:
    """Create the demo metrics, items and plan (platform fee, tiered API calls, storage, discount)."""
    with Session(runtime.engine) as session:
        catalog = SqlCatalog(session)
        try:
            catalog.get_plan(PLAN_ID)
            return  # loaded by an earlier demo run
        except NotFound:
            pass
        metrics = SqlMetricRepository(session)
        create_metric(metrics, metric_id="metric_api_calls", name="API calls", now=now,
                      definition=MetricDefinition(event_name="api_call", aggregation="count"))
        create_metric(metrics, metric_id="metric_storage", name="Storage (GB-hours)", now=now,
                      definition=MetricDefinition(event_name="storage", aggregation="sum", property="gb_hours"))
        for item_id, name in (("item_platform", "Platform fee"), ("item_api", "API calls"), ("item_storage", "Storage")):
            catalog.add_item(Item(id=item_id, name=name, created_at=now))
        prices = [
            Price(id="price_platform", key="platform", name="Platform fee", item_id="item_platform",
                  model_type=ModelType.UNIT, config=UnitConfig(Decimal("250.00")), cadence=Cadence.MONTHLY,
                  billing_mode=BillingMode.IN_ADVANCE, fixed_price_quantity=Decimal(1)),
            Price(id="price_api", key="api_calls", name="API calls", item_id="item_api",
                  model_type=ModelType.TIERED, metric_id="metric_api_calls", config=TieredConfig((
                      Tier(Decimal(0), Decimal(10000), Decimal("0.002")),
                      Tier(Decimal(10000), Decimal(100000), Decimal("0.0015")),
                      Tier(Decimal(100000), None, Decimal("0.001")),
                  ))),
            Price(id="price_storage", key="storage", name="Storage per GB-hour", item_id="item_storage",
                  model_type=ModelType.UNIT, metric_id="metric_storage", config=UnitConfig(Decimal("0.0004"))),
        ]
        discount = Adjustment(id="adj_enterprise", adjustment_type=AdjustmentType.PERCENTAGE_DISCOUNT,
                              value=Decimal("0.10"), applies_to_price_ids=("price_api", "price_storage"),
                              reason="Enterprise discount")
        create_plan_with_prices(session, plan_id=PLAN_ID, name="Demo usage plan", currency="USD", prices=prices,
                                adjustments=[discount], now=now, description="Sample catalog of the demo run")
        session.commit()


def load_listings(runtime: Runtime, *, now: datetime, gcp_product: str) -> None:
    """Create one listing per marketplace (a cent per unit of the usage_fee dimension)."""
    start = now.replace(day=1).date()
    for marketplace, product, plan in (("aws", AWS_PRODUCT, None), ("azure", AZURE_OFFER, AZURE_PLAN),
                                       ("gcp", gcp_product, GCP_PLAN)):
        try:
            listings.create_listing(runtime.engine, {
                "marketplace": marketplace, "product_id": product, "plan_id": plan, "name": f"Demo on {marketplace}",
                "billing_plan_id": PLAN_ID, "dimension": DIMENSION, "unit_price": "0.01", "currency": "USD",
                "close_rounding": "half_up", "include_fixed_fees": False, "metering_start_date": start,
            }, now=now)
        except listings.ListingConflict:
            pass


INCLUDED = 500  # units of the demo dimension the contracts with consumption include per month


def create_contracts(settings: Settings, per_marketplace: int) -> None:
    """Have each emulator create customers: they send real signed notifications to the web."""
    for i in range(per_marketplace):
        # Every second buyer holds a contract with consumption: 500 units included, only the rest reported.
        included = {DIMENSION: INCLUDED} if i % 2 else {}
        requests.post(f"{settings.emulator_url('aws')}/_emulator/customers",
                      json={"product_code": AWS_PRODUCT, "dimensions": [DIMENSION], "entitlements": included},
                      timeout=30).raise_for_status()
        requests.post(f"{settings.emulator_url('azure')}/_emulator/subscriptions",
                      json={"offer_id": AZURE_OFFER, "plan_id": AZURE_PLAN, "dimensions": [DIMENSION],
                            "name": f"Demo buyer {i + 1}", "included": {AZURE_PLAN: included}},
                      timeout=30).raise_for_status()
        requests.post(f"{settings.emulator_url('gcp')}/_emulator/metrics", json={"metrics": [DIMENSION]},
                      timeout=30).raise_for_status()
        requests.post(f"{settings.emulator_url('gcp')}/_emulator/entitlements",
                      json={"plan": GCP_PLAN, "included": included}, timeout=30).raise_for_status()


def mapped_customers(base_url: str, api_key: str) -> dict[str, str]:
    """Return {contract id: billing customer id} of the mapped contracts."""
    headers = {"Authorization": f"Bearer {api_key}"}
    out: dict[str, str] = {}
    page = 1
    while True:
        body = requests.get(f"{base_url}/v1/contracts", params={"mapping_status": "mapped", "page": page,
                                                                 "page_size": 500}, headers=headers, timeout=30).json()
        for contract in body.get("results", []):
            if contract["mapping"]["customer_id"]:
                out[contract["id"]] = contract["mapping"]["customer_id"]
        if not body.get("next"):
            return out
        page += 1


def usage_batch(customers: list[str], *, now: datetime, rng: random.Random, backdate: timedelta) -> list[dict[str, Any]]:
    """Return a batch of api_call and storage events spread over the last ``backdate``."""
    events = []
    for customer in customers:
        for _ in range(rng.randint(20, 60)):
            at = now - timedelta(seconds=rng.uniform(0, backdate.total_seconds()))
            events.append({"idempotency_key": secrets.token_hex(12), "customer_id": customer,
                           "event_name": "api_call", "timestamp": at.isoformat(), "properties": {"endpoint": "/v1/query"}})
        events.append({"idempotency_key": secrets.token_hex(12), "customer_id": customer, "event_name": "storage",
                       "timestamp": (now - timedelta(seconds=rng.uniform(0, backdate.total_seconds()))).isoformat(),
                       "properties": {"gb_hours": rng.randint(50, 500)}})
    return events


def ingest(base_url: str, api_key: str, events: list[dict[str, Any]]) -> None:
    """Send events to /v1/ingest in batches of 500."""
    headers = {"Authorization": f"Bearer {api_key}"}
    for i in range(0, len(events), 500):
        response = requests.post(f"{base_url}/v1/ingest", json={"events": events[i:i + 500]}, headers=headers,
                                 timeout=60)
        response.raise_for_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load the demo and stream usage.")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--contracts", type=int, default=2, help="Contracts per marketplace.")
    parser.add_argument("--interval", type=float, default=20.0, help="Seconds between usage batches.")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    runtime = Runtime(settings)
    api_key = settings.API_KEYS[0]
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    signal.signal(signal.SIGINT, lambda s, f: stop.append(s))
    now = datetime.now(timezone.utc)
    from marketplaces.gcp import SANDBOX_SERVICE_NAME

    load_catalog(runtime, now=now)
    load_listings(runtime, now=now, gcp_product=settings.GCP_SERVICE_NAME or SANDBOX_SERVICE_NAME)
    create_contracts(settings, args.contracts)
    print(f"demo: catalog, 3 listings and {3 * args.contracts} contracts requested", flush=True)
    deadline = time.monotonic() + 60
    customers: dict[str, str] = {}
    while time.monotonic() < deadline and not stop:
        customers = mapped_customers(args.base_url, api_key)
        if len(customers) >= 3 * args.contracts:
            break
        time.sleep(1)
    print(f"demo: {len(customers)} contracts mapped to subscriptions", flush=True)
    rng = random.Random(7)
    ingest(args.base_url, api_key, usage_batch(sorted(set(customers.values())), now=datetime.now(timezone.utc),
                                               rng=rng, backdate=timedelta(seconds=30)))
    # Report now rather than at the next HH:05, so units reach the emulators within a minute.
    for contract_id in customers:
        requests.post(f"{args.base_url}/v1/contracts/{contract_id}/sync",
                      headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    print("demo: first usage ingested and reported; usage streams on, the hourly run reports the rest",
          flush=True)
    while not stop:
        time.sleep(args.interval)
        if stop:
            break
        ingest(args.base_url, api_key, usage_batch(sorted(set(customers.values())), now=datetime.now(timezone.utc),
                                                   rng=rng, backdate=timedelta(seconds=args.interval)))
    runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
