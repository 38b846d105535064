"""One customer shape everywhere: GET /v1/customers/{id} is the customer a subscription embeds, and
an invoice embeds its minified form (Orb's ``CustomerMinified``); the official client parses each."""

from __future__ import annotations

from typing import Any

import httpx
import orb
from orb.types import Customer
from orb.types.shared import CustomerMinified

from tests.conftest import TEST_API_KEY


def _get(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_customer_is_the_same_wherever_it_appears(live_server) -> None:  # type: ignore[no-untyped-def]
    """The customer endpoint, a subscription's customer and an invoice's customer agree, field by field."""
    client = orb.Orb(base_url=f"{live_server.url}/v1", api_key=TEST_API_KEY, max_retries=0)
    item = client.items.create(name="API")
    plan = client.plans.create(currency="USD", name="Base", prices=[{"price": {
        "name": "Platform", "item_id": item.id, "model_type": "unit", "cadence": "monthly",
        "billed_in_advance": True, "fixed_price_quantity": 1, "unit_config": {"unit_amount": "10.00"}}}])
    created = client.customers.create(name="Acme", email="ops@acme.test", external_customer_id="acme",
                                      currency="USD", metadata={"tier": "gold"})
    sub = client.subscriptions.create(customer_id=created.id, plan_id=plan.id)

    with httpx.Client(base_url=f"{live_server.url}/v1",
                      headers={"Authorization": f"Bearer {TEST_API_KEY}"}) as http:
        customer = _get(http, f"/customers/{created.id}")
        by_external_id = _get(http, "/customers/external_customer_id/acme")
        in_subscription = _get(http, f"/subscriptions/{sub.id}")["customer"]
        in_invoice = _get(http, "/invoices/upcoming", subscription_id=sub.id)["customer"]

    assert in_subscription == customer == by_external_id
    assert customer["exempt_from_automated_tax"] is False and customer["automatic_tax_enabled"] is False
    assert in_invoice == {"id": customer["id"], "external_customer_id": "acme"}

    fetched = client.customers.fetch(created.id)
    assert fetched == client.subscriptions.fetch(sub.id).customer == Customer.model_validate(customer)
    assert client.invoices.fetch_upcoming(subscription_id=sub.id).customer == CustomerMinified.model_validate(in_invoice)
    assert fetched.automatic_tax_enabled is False and fetched.metadata == {"tier": "gold"}
