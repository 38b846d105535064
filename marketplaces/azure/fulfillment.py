"""SaaS Fulfillment v2: resolve, activate, read subscriptions and operations, answer operations."""
from __future__ import annotations

from typing import Any, Iterator, Mapping
from urllib.parse import quote

from marketplaces.azure.wire import OperationSuperseded, _error_message
from marketplaces.base import whole_units


class Fulfillment:
    """The SaaS Fulfillment part of ``AzureMarketplace``."""

    def resolve(self, marketplace_token: str) -> dict[str, Any]:
        """Resolve a landing-page token to ``{id, subscriptionName, offerId, planId, ...}``."""
        response = self._call(
            "POST",
            "/saas/subscriptions/resolve",
            headers={"x-ms-marketplace-token": marketplace_token},
        )
        self._raise_for_status(response)
        return response.json()

    def activate(
        self, subscription_id: str, plan_id: str, quantity: int | None = None
    ) -> None:
        """Activate a subscription on ``plan_id`` (billing starts now)."""
        body: dict[str, Any] = {"planId": plan_id}
        if quantity is not None:
            body["quantity"] = str(quantity)
        response = self._call(
            "POST", f"/saas/subscriptions/{quote(subscription_id)}/activate", json_body=body
        )
        self._raise_for_status(response)

    def get_subscription(self, subscription_id: str) -> dict[str, Any]:
        """Return the subscription object."""
        response = self._call("GET", f"/saas/subscriptions/{quote(subscription_id)}")
        self._raise_for_status(response)
        return response.json()

    def list_subscriptions(self) -> Iterator[dict[str, Any]]:
        """Yield every subscription of the publisher, following ``@nextLink`` pages."""
        response = self._call("GET", "/saas/subscriptions")
        while True:
            self._raise_for_status(response)
            page = response.json()
            yield from page.get("subscriptions") or []
            next_link = page.get("@nextLink") or page.get("nextLink")
            if not next_link:
                return
            response = self._call("GET", next_link)

    def list_available_plans(self, subscription_id: str) -> list[dict[str, Any]]:
        """Return the plans the subscription may be on, with their components (docs/marketplaces.md §3.9)."""
        response = self._call("GET", f"/saas/subscriptions/{quote(subscription_id)}/listAvailablePlans")
        self._raise_for_status(response)
        return list(response.json().get("plans") or [])

    def included_quantities(self, identifiers: Mapping[str, str], plan: str | None = None) -> dict[str, int]:
        """Return the units of each dimension the plan's base fee includes (a plan with included
        base quantities: only usage above them is reported, §3.9)."""
        subscription_id = identifiers.get("subscription_id") or identifiers.get("azure_subscription_id") or ""
        plan_id = plan or identifiers.get("plan_id")
        if not subscription_id or not plan_id:
            return {}
        plans = self.list_available_plans(subscription_id)
        return included_of(next((p for p in plans if str(p.get("planId")) == plan_id), {}))

    def list_operations(self, subscription_id: str) -> list[dict[str, Any]]:
        """Return the subscription's pending operations."""
        response = self._call("GET", f"/saas/subscriptions/{quote(subscription_id)}/operations")
        self._raise_for_status(response)
        return list(response.json().get("operations") or [])

    def get_operation(self, subscription_id: str, operation_id: str) -> dict[str, Any]:
        """Return one operation (the authoritative copy of a webhook's payload)."""
        response = self._call(
            "GET", f"/saas/subscriptions/{quote(subscription_id)}/operations/{quote(operation_id)}"
        )
        self._raise_for_status(response)
        return response.json()

    def update_operation(self, subscription_id: str, operation_id: str, status: str) -> None:
        """Acknowledge a ChangePlan/ChangeQuantity operation with ``Success`` or ``Failure``."""
        if status not in ("Success", "Failure"):
            raise ValueError("status must be 'Success' or 'Failure'")
        response = self._call(
            "PATCH",
            f"/saas/subscriptions/{quote(subscription_id)}/operations/{quote(operation_id)}",
            json_body={"status": status},
        )
        if response.status_code == 409:
            raise OperationSuperseded(
                f"operation {operation_id} was superseded: {_error_message(response)}"
            )
        self._raise_for_status(response)


def included_of(plan: Mapping[str, Any]) -> dict[str, int]:
    """Return a plan's included base quantities: ``meteredQuantityIncluded`` of its monthly recurrent
    billing term (``P1M``, the period usage is counted over; else its first term), as whole units
    per dimension id."""
    terms = [t for t in (plan.get("planComponents") or {}).get("recurrentBillingTerms") or [] if isinstance(t, Mapping)]
    term = next((t for t in terms if t.get("termUnit") == "P1M"), terms[0] if terms else {})
    out: dict[str, int] = {}
    for item in term.get("meteredQuantityIncluded") or []:
        units = whole_units(item.get("units"))
        if units is not None and item.get("dimensionId"):
            out[str(item["dimensionId"])] = units
    return out
