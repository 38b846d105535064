"""An Azure commercial marketplace emulator: metering, SaaS Fulfillment v2, Entra tokens, webhooks.

It speaks the real wire protocol under ``/api`` (``?api-version=2018-08-31``), so
``AzureMarketplace`` runs unmodified against it. It issues its own bearer tokens from an
Entra-like token endpoint (``POST /{tenant}/oauth2/v2.0/token``, client-credentials grant),
signs them and its webhooks with an RSA key generated when the app is built, and publishes that
key as a JWKS (``GET /_emulator/jwks``, also ``/{tenant}/discovery/v2.0/keys`` behind an
openid-configuration at ``/{tenant}/v2.0/.well-known/openid-configuration``).

Metering rules (docs/marketplaces.md §3.2): first write wins per (resourceId, dimension, calendar hour),
25 events per batch, quantity > 0, a 24 h window on the emulator's clock, no future times,
usage only for ``Subscribed`` subscriptions, except that an ``Unsubscribed`` one still
accepts times before its cancellation. Token lifetimes follow the wall clock (so a verifier
in the same process accepts them); every marketplace rule follows the settable clock.

Control API: the shared one (``marketplaces.emulators.control``: reset, faults, clock, receiver
``{"url"}``, usage ``{"totals", "events"}``, notifications: every webhook delivery attempt) plus::

    POST subscriptions                  create {offer_id, plan_id, dimensions, quantity,
                                        auto_activate, id, name, plans, app_id}
    GET  subscriptions/<id>             the subscription, its operations, its landing token
    POST subscriptions/<id>/plan        {"plan_id", "dimensions"?}  -> ChangePlan webhook
    POST subscriptions/<id>/quantity    {"quantity"}                -> ChangeQuantity webhook
    POST subscriptions/<id>/suspend | reinstate | renew | unsubscribe ({"at": ISO}?)
    GET  operations/<op_id>             an operation with ``acknowledged`` (the publisher's PATCH)
    GET  webhooks                       every delivery attempt (as ``notifications``)
    POST webhooks/<op_id>/redeliver     send an operation's webhook again
    POST tokens                         {"kind": "webhook"|"api", "claims": {...}, "ttl": s}
    GET  jwks, .well-known/openid-configuration

Modules: ``wire`` (records, JSON shapes, errors), ``state``, ``routes``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from marketplaces.emulators.azure.routes import api, extras, identity
from marketplaces.emulators.azure.state import DEFAULT_OPTIONS, AzureEmulatorState
from marketplaces.emulators.azure.wire import _error, _Reject
from marketplaces.emulators.control import EXTENSION, control


def create_app(**options: Any) -> Flask:
    """Build the Azure emulator app; ``options`` override ``DEFAULT_OPTIONS``."""
    app = Flask("marketsync.azure_emulator")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = app.extensions["azure_emulator"] = AzureEmulatorState(**options)
    app.register_blueprint(api)
    app.register_blueprint(identity)
    app.register_blueprint(control)
    app.register_blueprint(extras)

    @app.errorhandler(_Reject)
    def _rejected(exc: _Reject) -> Any:
        return _error(exc.status, exc.code, exc.message)

    @app.errorhandler(404)
    def _not_found(_: Any) -> Any:
        return _error(404, "NotFound", "No such endpoint.")

    @app.errorhandler(405)
    def _not_allowed(_: Any) -> Any:
        return _error(405, "MethodNotAllowed", "Method not allowed.")

    return app


create_azure_emulator = create_app

__all__ = ["AzureEmulatorState", "DEFAULT_OPTIONS", "create_app", "create_azure_emulator"]
