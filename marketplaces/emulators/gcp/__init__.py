"""A loopback Google Cloud Marketplace: Service Control, Partner Procurement and Pub/Sub push.

The real clients run against it unchanged: ``servicecontrol_v1.ServiceControllerClient``
with ``transport="rest"`` and ``client_options={"api_endpoint": url}``, and
``googleapiclient.discovery.build("cloudcommerceprocurement", "v1", client_options=...)``.

Wire rules it enforces (docs/marketplaces.md §4.2, §4.9):

- ``POST /v1/services/<service>:check`` answers ``checkErrors`` for unknown consumers
  (``CONSUMER_INVALID``) and consumers none of whose entitlements for the service is active
  (``SERVICE_NOT_ACTIVATED``); every check is recorded (``usage`` answers them as ``checks``),
  so a test sees that each reported operation was checked first.
- ``POST /v1/services/<service>:report`` stores operations by ``operationId``: the same id
  with the same payload is accepted again and counted once; the same id with a different
  payload is a ``reportError`` (``ALREADY_EXISTS``, or silently ignored when
  ``conflicting_operation="ignore"``). Unknown or inactive consumers and unknown metrics
  are ``reportErrors`` inside an HTTP 200; a request over ``max_request_bytes`` or with a
  duplicate metric+labels combination inside one operation is rejected whole (400).
- Faults: ``error`` -> 500 (with ``fail_after_store`` the operations are stored first, an
  ambiguous outcome), ``throttle`` -> 429, ``outage`` -> 503; ``ambiguous_reports`` makes every
  report store its operations and answer 500 while checks pass.

Procurement lifecycle (docs/marketplaces.md §4.6, §4.7), driven from the control API and the real API::

    create  -> ENTITLEMENT_ACTIVATION_REQUESTED   push ENTITLEMENT_CREATION_REQUESTED
    :approve -> ENTITLEMENT_ACTIVE                push ENTITLEMENT_ACTIVE
    :reject  -> ENTITLEMENT_CANCELLED             push ENTITLEMENT_CANCELLED
    plan-change -> ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL  push ENTITLEMENT_PLAN_CHANGE_REQUESTED
    :approvePlanChange -> ENTITLEMENT_ACTIVE (new plan)      push ENTITLEMENT_PLAN_CHANGED
    :rejectPlanChange  -> ENTITLEMENT_ACTIVE (old plan)      push ENTITLEMENT_PLAN_CHANGE_CANCELLED
    cancel (at_term_end) -> ENTITLEMENT_PENDING_CANCELLATION push ENTITLEMENT_PENDING_CANCELLATION
    revert-cancellation  -> ENTITLEMENT_ACTIVE               push ENTITLEMENT_CANCELLATION_REVERTED
    cancel               -> ENTITLEMENT_CANCELLED            push ENTITLEMENT_CANCELLED
    renew                -> (unchanged)                      push ENTITLEMENT_RENEWED
    delete               -> 404 on GET                       push ENTITLEMENT_DELETED

Every push is a Pub/Sub envelope with base64 ``data`` and an RS256 OIDC token from a key
made when the app is created; the certificates are at ``GET /_emulator/oauth2/v1/certs``.

Control API: the shared one (``marketplaces.emulators.control``: reset, faults (+
``fail_after_store``, ``ambiguous_reports``), clock, receiver ``{"url", "audience"}``, usage
``{"totals", "operations", "report_errors", "checks"}``, notifications) plus ``config``, ``metrics``, ``auth`` (refused bearer tokens ->
401), ``notifications/redeliver`` (push again whatever no 2xx acknowledged), ``accounts``,
``entitlements`` (create) and ``entitlements/<id>/{plan-change,cancel,revert-cancellation,renew}``,
``DELETE entitlements/<id>``.

Modules: ``wire`` (codes, errors, times, signing key), ``state``, ``routes``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from marketplaces.emulators.control import EXTENSION, control
from marketplaces.emulators.gcp.routes import api_error, extras, http_error, wire
from marketplaces.emulators.gcp.state import DEFAULT_OPTIONS, GcpEmulatorState
from marketplaces.emulators.gcp.wire import ApiError, SigningKey


def create_app(**options: Any) -> Flask:
    """Build the Google emulator app; ``options`` override ``DEFAULT_OPTIONS`` (also ``http``: the
    requests session pushes go through, ``faults``: a shared ``Faults``)."""
    app = Flask("gcp_emulator")
    app.extensions[EXTENSION] = app.extensions["gcp_emulator"] = GcpEmulatorState.create(options)
    app.register_error_handler(ApiError, api_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_blueprint(wire)
    app.register_blueprint(control)
    app.register_blueprint(extras)
    return app


create_gcp_emulator = create_app

__all__ = ["DEFAULT_OPTIONS", "GcpEmulatorState", "SigningKey", "create_app", "create_gcp_emulator"]
