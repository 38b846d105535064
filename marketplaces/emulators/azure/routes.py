"""The Azure emulator's routes: the Marketplace API (``api``), Entra-like identity (``identity``) and
its own control API (``extras``: subscriptions, operations, webhooks, tokens)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from marketplaces.azure import API_VERSION, MARKETPLACE_APP_ID
from marketplaces.emulators.azure.state import AzureEmulatorState
from marketplaces.emulators.azure.wire import (
    SUBSCRIBED,
    SUSPENDED,
    UNSUBSCRIBED,
    _Operation,
    _Reject,
    _Subscription,
    _as_time,
    _error,
    _int_or_none,
    _wire_time,
    operation_json,
    plans_json,
    subscription_json,
)
from marketplaces.emulators.control import EXTENSION


def _state() -> AzureEmulatorState:
    return current_app.extensions[EXTENSION]


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None and request.get_data():
        raise _Reject(400, "BadRequest", "The request body is not JSON.")
    return body if isinstance(body, dict) else {}


# Marketplace API ---------------------------------------------------------------------------

api = Blueprint("azure_api", __name__, url_prefix="/api")


@api.before_request
def _guard() -> Any:
    state = _state()
    fault = state.faults.draw()
    if fault == "outage":
        return _error(503, "ServiceUnavailable", "The service is unavailable.")
    if fault == "error":
        return _error(500, "InternalServerError", "An internal error occurred.")
    if fault == "throttle":
        response, status = _error(429, "TooManyRequests", "Too many requests.")
        response.headers["Retry-After"] = "1"
        return response, status
    request.environ["azure.claims"] = state.authenticate(request.headers.get("Authorization"))
    if request.args.get("api-version") != API_VERSION:
        raise _Reject(400, "BadRequest", "The api-version query parameter is missing or unsupported.")
    return None


def _app_id() -> str:
    return request.environ["azure.claims"]["appid"]


@api.post("/usageEvent")
def usage_event() -> Any:
    status, result = _state().meter(_json_body(), _app_id())
    if status == "Accepted":
        return jsonify(result)
    if status == "Duplicate":
        return jsonify(result["error"]), 409
    return jsonify(result["error"]), 400


@api.post("/batchUsageEvent")
def batch_usage_event() -> Any:
    state = _state()
    events = _json_body().get("request")
    if not isinstance(events, list) or not events:
        raise _Reject(400, "BadArgument", "The request must carry a non-empty list of events.")
    if len(events) > state.batch_limit:
        raise _Reject(400, "BadArgument", f"A batch holds at most {state.batch_limit} events.")
    app_id = _app_id()
    results = [state.meter(event, app_id)[1] for event in events]
    return jsonify({"count": len(results), "result": results})


@api.get("/usageEvents")
def usage_events() -> Any:
    # The read-back answers a bare JSON array (docs/marketplaces.md §3.2a).
    return jsonify(_state().usage_events(request.args, _app_id()))


def _operation_location(op: _Operation) -> str:
    return (
        f"{request.host_url.rstrip('/')}/api/saas/subscriptions/{op.subscription_id}"
        f"/operations/{op.id}?api-version={API_VERSION}"
    )


def _accepted(op: _Operation) -> Any:
    _state().deliver(op)
    response = Response(status=202)
    response.headers["Operation-Location"] = _operation_location(op)
    return response


@api.post("/saas/subscriptions/resolve")
def resolve() -> Any:
    state = _state()
    token = request.headers.get("x-ms-marketplace-token", "")
    with state.lock:
        sub = next((s for s in state.subscriptions.values() if token and s.landing_token == token), None)
        if sub is None or state.now() > sub.landing_token_expires:
            raise _Reject(400, "BadArgument", "The marketplace token is missing, invalid or expired.")
        return jsonify({
            "id": sub.id,
            "subscriptionName": sub.name,
            "offerId": sub.offer_id,
            "planId": sub.plan_id,
            "quantity": sub.quantity,
            "subscription": subscription_json(sub),
        })


@api.post("/saas/subscriptions/<sub_id>/activate")
def activate(sub_id: str) -> Any:
    state = _state()
    body = _json_body()
    with state.lock:
        sub = state.subscription(sub_id)
        if sub.status == UNSUBSCRIBED:
            raise _Reject(404, "NotFound", "The subscription is Unsubscribed.")
        if sub.status in (SUBSCRIBED, SUSPENDED):
            raise _Reject(400, "BadArgument", f"The subscription is already {sub.status}.")
        if body.get("planId") != sub.plan_id:
            raise _Reject(400, "BadArgument", "The planId does not match the purchase.")
        quantity = _int_or_none(body.get("quantity"))
        if quantity is not None and sub.quantity is not None and quantity != sub.quantity:
            raise _Reject(400, "BadArgument", "The quantity does not match the purchase.")
        sub.status = SUBSCRIBED
        sub.last_modified = state.now()
    return Response(status=200)


@api.get("/saas/subscriptions")
def list_subscriptions() -> Any:
    state = _state()
    try:
        offset = int(request.args.get("continuationToken") or 0)
    except ValueError:
        raise _Reject(400, "BadArgument", "Invalid continuationToken.") from None
    with state.lock:
        subs = list(state.subscriptions.values())
    page = subs[offset : offset + state.page_size]
    next_link = ""
    if offset + state.page_size < len(subs):
        next_link = (
            f"{request.host_url.rstrip('/')}/api/saas/subscriptions?"
            f"continuationToken={offset + state.page_size}&api-version={API_VERSION}"
        )
    return jsonify({"subscriptions": [subscription_json(s) for s in page], "@nextLink": next_link})


@api.get("/saas/subscriptions/<sub_id>")
def get_subscription(sub_id: str) -> Any:
    return jsonify(subscription_json(_state().subscription(sub_id)))


@api.get("/saas/subscriptions/<sub_id>/listAvailablePlans")
def list_available_plans(sub_id: str) -> Any:
    state = _state()
    sub = state.subscription(sub_id)
    with state.lock:
        return jsonify(plans_json(sub))


@api.patch("/saas/subscriptions/<sub_id>")
def patch_subscription(sub_id: str) -> Any:
    body = _json_body()
    plan_id = body.get("planId")
    quantity = _int_or_none(body.get("quantity"))
    op = _state().change(sub_id, plan_id=plan_id, quantity=quantity, source="Partner")
    return _accepted(op)


@api.delete("/saas/subscriptions/<sub_id>")
def delete_subscription(sub_id: str) -> Any:
    state = _state()
    if state.subscription(sub_id).status == UNSUBSCRIBED:
        raise _Reject(404, "NotFound", "The subscription is already Unsubscribed.")
    return _accepted(state.transition(sub_id, "Unsubscribe", source="Partner"))


@api.get("/saas/subscriptions/<sub_id>/operations")
def list_operations(sub_id: str) -> Any:
    state = _state()
    state.subscription(sub_id)
    with state.lock:
        pending = [
            operation_json(op)
            for op in state.operations.values()
            if op.subscription_id == sub_id and op.status in ("NotStarted", "InProgress")
        ]
    return jsonify({"operations": pending})


@api.get("/saas/subscriptions/<sub_id>/operations/<op_id>")
def get_operation(sub_id: str, op_id: str) -> Any:
    state = _state()
    with state.lock:
        op = state.operations.get(op_id)
        if op is None or op.subscription_id != sub_id:
            raise _Reject(404, "NotFound", f"operation {op_id} not found")
        return jsonify(operation_json(op))


@api.patch("/saas/subscriptions/<sub_id>/operations/<op_id>")
def update_operation(sub_id: str, op_id: str) -> Any:
    _state().acknowledge(sub_id, op_id, _json_body().get("status"))
    return Response(status=200)


# Entra-like identity endpoints -------------------------------------------------------------

identity = Blueprint("azure_identity", __name__)


def _check_tenant(tenant: str) -> None:
    if tenant != _state().tenant_id:
        raise _Reject(400, "invalid_tenant", f"tenant {tenant!r} is not known here")


@identity.get("/<tenant>/v2.0/.well-known/openid-configuration")
@identity.get("/_emulator/.well-known/openid-configuration", defaults={"tenant": None})
def openid_configuration(tenant: str | None) -> Any:
    state = _state()
    if tenant is not None:
        _check_tenant(tenant)
    root = request.host_url.rstrip("/")
    return jsonify({
        "issuer": f"{root}/{state.tenant_id}/v2.0",
        "token_endpoint": f"{root}/{state.tenant_id}/oauth2/v2.0/token",
        "jwks_uri": f"{root}/_emulator/jwks",
        "id_token_signing_alg_values_supported": ["RS256"],
    })


@identity.get("/_emulator/jwks")
@identity.get("/<tenant>/discovery/v2.0/keys")
def jwks(tenant: str | None = None) -> Any:
    if tenant is not None:
        _check_tenant(tenant)
    return jsonify(_state().jwks())


@identity.post("/<tenant>/oauth2/v2.0/token")
@identity.post("/<tenant>/oauth2/token")
def token(tenant: str) -> Any:
    state = _state()
    _check_tenant(tenant)
    form = request.form
    if form.get("grant_type") != "client_credentials":
        return jsonify({"error": "unsupported_grant_type"}), 400
    if form.get("client_id") != state.client_id or (
        state.client_secret is not None and form.get("client_secret") != state.client_secret
    ):
        return jsonify({"error": "invalid_client", "error_description": "bad client credentials"}), 401
    wanted = form.get("scope") or form.get("resource") or ""
    if MARKETPLACE_APP_ID not in wanted:
        return jsonify({"error": "invalid_scope", "error_description": "unknown resource"}), 400
    return jsonify({
        "token_type": "Bearer",
        "expires_in": state.token_ttl,
        "ext_expires_in": state.token_ttl,
        "access_token": state.sign(state.api_claims()),
    })


# Control API -------------------------------------------------------------------------------

extras = Blueprint("azure_control", __name__, url_prefix="/_emulator")


def _control_subscription(sub: _Subscription) -> dict[str, Any]:
    state = _state()
    with state.lock:
        ops = [
            {**operation_json(op), "acknowledged": op.acknowledged}
            for op in state.operations.values()
            if op.subscription_id == sub.id
        ]
        return {
            "subscription": subscription_json(sub),
            "plans": sub.plans,
            "included": sub.included,
            "canceled_at": _wire_time(sub.canceled_at) if sub.canceled_at else None,
            "marketplace_token": sub.landing_token,
            "operations": ops,
        }


@extras.post("/subscriptions")
def create_subscription() -> Any:
    state = _state()
    sub, op = state.create_subscription(_json_body())
    body = _control_subscription(sub)
    body["operation_id"] = op.id if op else None
    body["webhook"] = state.deliver(op) if op else None
    return jsonify(body), 201


@extras.get("/subscriptions/<sub_id>")
def show_subscription(sub_id: str) -> Any:
    return jsonify(_control_subscription(_state().subscription(sub_id)))


def _notified(op: _Operation) -> Any:
    state = _state()
    webhook = state.deliver(op)
    body = _control_subscription(state.subscription(op.subscription_id))
    return jsonify({**body, "operation_id": op.id, "webhook": webhook})


@extras.post("/subscriptions/<sub_id>/plan")
def change_plan(sub_id: str) -> Any:
    body = _json_body()
    if not body.get("plan_id"):
        raise _Reject(400, "BadArgument", "plan_id is required")
    return _notified(_state().change(sub_id, plan_id=str(body["plan_id"]), dimensions=body.get("dimensions")))


@extras.post("/subscriptions/<sub_id>/quantity")
def change_quantity(sub_id: str) -> Any:
    quantity = _int_or_none(_json_body().get("quantity"))
    if quantity is None:
        raise _Reject(400, "BadArgument", "quantity is required")
    return _notified(_state().change(sub_id, quantity=quantity))


@extras.post("/subscriptions/<sub_id>/<any(suspend, reinstate, renew, unsubscribe, cancel):verb>")
def lifecycle(sub_id: str, verb: str) -> Any:
    action = {"suspend": "Suspend", "reinstate": "Reinstate", "renew": "Renew",
              "unsubscribe": "Unsubscribe", "cancel": "Unsubscribe"}[verb]
    at = _as_time(_json_body().get("at"))
    return _notified(_state().transition(sub_id, action, at=at))


@extras.post("/recon")
def set_recon() -> Any:
    return jsonify(_state().set_recon(_json_body()))


@extras.get("/operations/<op_id>")
def show_operation(op_id: str) -> Any:
    state = _state()
    with state.lock:
        op = state.operations.get(op_id)
        if op is None:
            raise _Reject(404, "NotFound", f"operation {op_id} not found")
        return jsonify({**operation_json(op), "acknowledged": op.acknowledged, "payload": op.payload})


@extras.get("/webhooks")
def webhooks() -> Any:
    state = _state()
    with state.lock:
        return jsonify({"deliveries": list(state.deliveries)})


@extras.post("/webhooks/<op_id>/redeliver")
def redeliver(op_id: str) -> Any:
    state = _state()
    with state.lock:
        op = state.operations.get(op_id)
    if op is None:
        raise _Reject(404, "NotFound", f"operation {op_id} not found")
    return jsonify(state.deliver(op))


@extras.post("/tokens")
def mint_token() -> Any:
    state = _state()
    body = _json_body()
    claims_for = state.webhook_claims if body.get("kind", "webhook") == "webhook" else state.api_claims
    claims = claims_for(ttl=body.get("ttl"), **(body.get("claims") or {}))
    return jsonify({"token": state.sign(claims), "claims": claims})
