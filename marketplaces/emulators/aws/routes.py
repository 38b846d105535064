"""The AWS emulator's routes: the wire protocol (``wire``) and its own control API (``extras``)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request

from marketplaces.emulators.aws.notifications import _deliver_sns, finish_deprovisioning, _notify, _topic_arn
from marketplaces.emulators.aws.operations import (
    _admit,
    _batch_meter_usage,
    _create_subscription,
    _get_entitlements,
    _lookup,
    _resolve_customer,
)
from marketplaces.emulators.aws.state import AwsEmulatorState, _redacted_headers
from marketplaces.emulators.aws.wire import (
    CERT_PATH,
    AwsError,
    _cbor_response,
    _iso,
    _json_error,
    _json_response,
    _parse_iso,
    cbor_decode,
    sign_envelope,
)
from marketplaces.emulators.control import state as _state

wire = Blueprint("aws_wire", __name__)
extras = Blueprint("aws_control", __name__, url_prefix="/_emulator")


def _base_url(state: AwsEmulatorState) -> str:
    return (state.options.get("public_url") or request.host_url).rstrip("/")


# -- wire protocol --


@wire.post("/")
def json_rpc() -> Response:
    state = _state()
    target = request.headers.get("X-Amz-Target", "")
    handlers = {
        "AWSMPMeteringService.BatchMeterUsage": _batch_meter_usage,
        "AWSMPMeteringService.ResolveCustomer": _resolve_customer,
        "AWSMPEntitlementService.GetEntitlements": _get_entitlements,
    }
    try:
        handler = handlers.get(target)
        if handler is None:
            raise AwsError("UnknownOperationException", f"unknown target {target!r}")
        _admit(state)
        body = request.get_data()
        if len(body) > state.options["max_body_bytes"]:
            raise AwsError("ValidationException", "request body must be smaller than 1 MB", 413)
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            raise AwsError("SerializationException", "body is not JSON") from None
        result = handler(state, params)
    except AwsError as err:
        return _json_error(err)
    return _json_response(result)


@wire.post("/service/<service>/operation/<operation>")
def cbor_rpc(service: str, operation: str) -> Response:
    state = _state()
    try:
        if (service, operation) != ("AWSMPEntitlementService", "GetEntitlements"):
            raise AwsError("UnknownOperationException", f"unknown operation {operation!r}")
        _admit(state)
        body = request.get_data()
        params = cbor_decode(body) if body else {}
        result = _get_entitlements(state, params)
    except AwsError as err:
        return _cbor_response(
            {"__type": err.type, "message": err.message}, err.status
        )
    except ValueError as err:
        return _cbor_response({"__type": "SerializationException", "message": str(err)}, 400)
    return _cbor_response(result, 200)


@wire.get("/")
def confirm_subscription() -> Response:
    """Answer an SNS SubscribeURL (``?Action=ConfirmSubscription&TopicArn=&Token=``)."""
    state = _state()
    if request.args.get("Action") != "ConfirmSubscription":
        return Response("unknown action", status=400)
    with state.lock:
        state.confirmations.append(
            {"topic_arn": request.args.get("TopicArn"), "token": request.args.get("Token"),
             "at": _iso(state.now())}
        )
    arn = f"{request.args.get('TopicArn')}:{uuid.uuid4()}"
    xml = (
        "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>"
        f"{arn}</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
    )
    return Response(xml, content_type="text/xml")

# -- control API --


@extras.route("/options", methods=["GET", "POST"])
def options_view() -> Response:
    state = _state()
    if request.method == "POST":
        try:
            state.set_options(request.get_json(force=True) or {})
        except AwsError as err:
            return jsonify({"error": err.message}), 400
    with state.lock:
        shown = dict(state.options)
    shown["eventbridge_headers"] = _redacted_headers(state, shown["eventbridge_headers"] or {})
    return jsonify(shown)


@extras.route("/customers", methods=["GET", "POST"])
def customers() -> Response:
    state = _state()
    if request.method == "GET":
        with state.lock:
            now, window = state.now(), state.window()
            return jsonify([s.as_dict(now, window) for s in state.subscriptions.values()])
    body = request.get_json(force=True) or {}
    try:
        sub = _create_subscription(state, body)
    except AwsError as err:
        return jsonify({"error": err.message}), 400
    deliveries = _notify(state, _base_url(state), sub, "created", body.get("notify"))
    with state.lock:
        out = sub.as_dict(state.now(), state.window())
    out["notifications"] = deliveries
    return jsonify(out), 201


@extras.post("/customers/<sub_id>/cancel")
def cancel(sub_id: str) -> Response:
    state = _state()
    body = request.get_json(silent=True) or {}
    with state.lock:
        sub = _lookup(state, sub_id)
        if sub is None:
            return jsonify({"error": "no such subscription"}), 404
        now = state.now()
        if sub.canceled_at is None:
            sub.canceled_at = now
        if body.get("immediate"):
            sub.canceled_at = now - timedelta(seconds=state.window())
    deliveries = _notify(state, _base_url(state), sub, "canceled", body.get("notify"))
    deliveries += finish_deprovisioning(state, _base_url(state))
    with state.lock:
        out = sub.as_dict(state.now(), state.window())
    out["notifications"] = deliveries
    return jsonify(out)


@extras.post("/customers/<sub_id>/entitlements")
def entitlements(sub_id: str) -> Response:
    state = _state()
    body = request.get_json(force=True) or {}
    with state.lock:
        sub = _lookup(state, sub_id)
        if sub is None:
            return jsonify({"error": "no such subscription"}), 404
        if "entitlements" in body:
            sub.entitlements = dict(body["entitlements"])
        if "expiration" in body:
            sub.expiration = _parse_iso(body["expiration"]) if body["expiration"] else None
        if "dimensions" in body:
            sub.dimensions = set(body["dimensions"])
            state.products.setdefault(sub.product_code, set()).update(sub.dimensions)
    deliveries = _notify(state, _base_url(state), sub, "modified", body.get("notify"))
    with state.lock:
        out = sub.as_dict(state.now(), state.window())
    out["notifications"] = deliveries
    return jsonify(out)


@extras.post("/tick")
def tick() -> Response:
    state = _state()
    return jsonify({"notifications": finish_deprovisioning(state, _base_url(state))})


@extras.get(CERT_PATH.removeprefix("/_emulator"))
def cert() -> Response:
    state = _state()
    return Response(state.cert_pem, content_type="application/x-pem-file")


@extras.post("/sns/sign")
def sign() -> Response:
    state = _state()
    body = request.get_json(force=True) or {}
    envelope = body.get("envelope") or {}
    version = str(body.get("signature_version") or state.options["signature_version"])
    return jsonify(sign_envelope(state.key, envelope, _base_url(state) + CERT_PATH, version))


@extras.post("/sns/subscription-confirmation")
def send_subscription_confirmation() -> Response:
    state = _state()
    body = request.get_json(silent=True) or {}
    topic = body.get("topic_arn") or _topic_arn(state, "subscription", body.get("product_code") or "prod-emulator")
    token = uuid.uuid4().hex + uuid.uuid4().hex
    envelope = {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic,
        "Message": (
            f"You have chosen to subscribe to the topic {topic}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        ),
        "SubscribeURL": _base_url(state) + "/?" + urlencode(
            {"Action": "ConfirmSubscription", "TopicArn": topic, "Token": token}
        ),
        "Timestamp": _iso(state.now(), millis=True),
    }
    return jsonify(_deliver_sns(state, _base_url(state), envelope, body.get("signature_version")))


@extras.get("/sns/confirmations")
def confirmations() -> Response:
    state = _state()
    with state.lock:
        return jsonify(list(state.confirmations))
