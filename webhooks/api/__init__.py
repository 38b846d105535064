"""The ``/v1`` API: one blueprint (``bp``) per module, registered by name.

``orb`` renders the Orb response shapes, ``bodies`` parses Orb request bodies, ``common`` holds
auth, the clock and ids, ``bad`` (the one 400) and pagination; ``schemas`` and ``openapi``
document every route.
"""

from __future__ import annotations

from flask import Flask

from webhooks.api import (
    alerts, contracts, customers, events, invoices, items, listings, metering, metrics, openapi, plan_migrations,
    plans, prices, simulations, subscriptions, trueups, webhook_endpoints,
)

BLUEPRINTS = (
    alerts.bp, contracts.bp, customers.bp, events.bp, invoices.bp, items.bp, listings.bp, metering.bp, metrics.bp,
    openapi.bp, plan_migrations.bp, plans.bp, prices.bp, simulations.bp, subscriptions.bp, trueups.bp,
    webhook_endpoints.bp,
)


def register_api(app: Flask) -> None:
    """Register every ``/v1`` blueprint on ``app``."""
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
