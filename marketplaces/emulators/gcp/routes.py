"""The Google emulator's routes: Service Control and Partner Procurement (``wire``) and its own control
API (``extras``: metrics, auth, config, certificates, redelivery, accounts, entitlements)."""

from __future__ import annotations

import base64
import json
from typing import Any

import requests
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from marketplaces.gcp import parse_rfc3339, EMULATOR_CERTS_PATH
from marketplaces.gcp.labels import labels_problem
from marketplaces.emulators.control import EXTENSION
from marketplaces.emulators.gcp.state import GcpEmulatorState
from marketplaces.emulators.gcp.wire import (
    ACTIVE_STATES,
    CHECK_CODES,
    RPC_STATUS,
    SERVICE_CONFIG_ID,
    ApiError,
    _fingerprint,
    _rfc3339,
)

wire = Blueprint("gcp_wire", __name__)
extras = Blueprint("gcp_control", __name__, url_prefix="/_emulator")


def _state() -> GcpEmulatorState:
    return current_app.extensions[EXTENSION]


def api_error(exc: ApiError) -> tuple[Response, int]:
    return jsonify(error={
        "code": exc.http_status, "message": exc.message,
        "status": RPC_STATUS.get(exc.rpc_code, "UNKNOWN"),
    }), exc.http_status


def http_error(exc: HTTPException) -> tuple[Response, int]:
    code = exc.code or 500
    return jsonify(error={"code": code, "message": exc.description, "status": "UNKNOWN"}), code


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True, force=True)
    if body is None and request.get_data():
        raise ApiError(3, "Invalid JSON payload received.")
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ApiError(3, "Invalid JSON payload received: expected an object.")
    return body


def authenticate() -> None:
    state = _state()
    # Anonymous calls are the sandbox default; a refused bearer token stands for bad
    # credentials (an unknown or unlinked service account).
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    with state.lock:
        refused = scheme.lower() == "bearer" and token.strip() in state.refused_tokens
    if refused:
        raise ApiError(16, "Request had invalid authentication credentials.")


def draw_fault() -> str | None:
    state = _state()
    authenticate()
    fault = state.faults.draw()
    if fault == "outage":
        raise ApiError(14, "The service is currently unavailable.", 503)
    if fault == "throttle":
        raise ApiError(8, "Quota exceeded; retry later.", 429)
    return fault


def deliver(outbox: list[dict[str, Any]]) -> None:
    state = _state()
    # Called without the lock: a receiver may call back into the emulator.
    with state.lock:
        url, audience = state.receiver_url, state.audience or state.receiver_url
    for record in outbox:
        record["attempts"] = record.get("attempts", 0) + 1
        if not url:
            record["delivery"] = {"status": None, "error": "no receiver configured"}
            continue
        token = state.mint_push_token(audience=audience)
        try:
            answer = state.http.post(
                url, data=json.dumps(record["envelope"]),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                timeout=state.push_timeout,
            )
            record["delivery"] = {"status": answer.status_code, "error": None}
        except requests.RequestException as exc:
            record["delivery"] = {"status": None, "error": str(exc)}


def enum_as_int() -> bool:
    return "enum-encoding=int" in (request.args.get("$alt") or "")


# Service Control ------------------------------------------------------------------------


@wire.post("/v1/services/<path:service_and_method>")
def service_control(service_and_method: str) -> Any:
    state = _state()
    service, _, method = service_and_method.rpartition(":")
    if method not in ("check", "report") or not service:
        raise ApiError(5, f"Method {method!r} not found.")
    fault = draw_fault()
    if len(request.get_data()) > state.max_request_bytes:
        raise ApiError(3, f"Request payload size exceeds the limit: {state.max_request_bytes} bytes.")
    body = json_body()
    if method == "check":
        if fault == "error":
            raise ApiError(13, "Internal error.", 500)
        return check(service, body)
    if fault == "error" and not state.fail_after_store:
        raise ApiError(13, "Internal error.", 500)
    answer = report(service, body)
    if fault == "error" or state.ambiguous_reports:
        # Stored, yet the caller sees a failure: the outcome is ambiguous by design.
        raise ApiError(13, "Internal error.", 500)
    return answer


def check(service: str, body: dict[str, Any]) -> Any:
    state = _state()
    operation = body.get("operation")
    if not isinstance(operation, dict) or not operation.get("operationId"):
        raise ApiError(3, "operation.operationId is required.")
    consumer = operation.get("consumerId") or ""
    if not consumer:
        raise ApiError(3, "operation.consumerId is required.")
    with state.lock:
        problem = state.consumer_problem(service, consumer)
        state.record_check(operation, problem)
    answer: dict[str, Any] = {
        "operationId": operation["operationId"],
        "serviceConfigId": SERVICE_CONFIG_ID,
        "serviceRolloutId": SERVICE_CONFIG_ID,
    }
    if problem:
        code, detail = problem
        answer["checkErrors"] = [{
            "code": CHECK_CODES[code] if enum_as_int() else code,
            "subject": consumer,
            "detail": detail,
        }]
    return jsonify(answer)


def report(service: str, body: dict[str, Any]) -> Any:
    state = _state()
    operations = body.get("operations")
    if not isinstance(operations, list):
        raise ApiError(3, "operations must be a list.")
    for position, operation in enumerate(operations):
        validate_operation(position, operation)
    errors: list[dict[str, Any]] = []
    with state.lock:
        for operation in operations:
            problem = report_problem(service, operation)
            if problem:
                code, message = problem
                errors.append({"operationId": operation["operationId"],
                               "status": {"code": code, "message": message}})
                continue
            op_id = operation["operationId"]
            stored = state.operations.get(op_id)
            if stored is None:
                state.operations[op_id] = {
                    "service": service, "operation": operation,
                    "fingerprint": _fingerprint(operation), "received": 1,
                }
            elif stored["fingerprint"] == _fingerprint(operation):
                stored["received"] += 1  # an identical resend: accepted, counted once
            elif state.conflicting_operation == "error":
                errors.append({"operationId": op_id, "status": {
                    "code": 6,
                    "message": f"Operation {op_id} was already reported with a different payload.",
                }})
        state.report_errors.extend(errors)
    answer: dict[str, Any] = {"serviceConfigId": SERVICE_CONFIG_ID, "serviceRolloutId": SERVICE_CONFIG_ID}
    if errors:
        answer["reportErrors"] = errors
    return jsonify(answer)


def validate_operation(position: int, operation: Any) -> None:
    where = f"operations[{position}]"
    if not isinstance(operation, dict):
        raise ApiError(3, f"{where} must be an object.")
    for name in ("operationId", "consumerId", "startTime", "endTime"):
        if not operation.get(name):
            raise ApiError(3, f"{where}.{name} is required.")
    seen: set[tuple[str, str]] = set()
    for value_set in operation.get("metricValueSets", []):
        for value in value_set.get("metricValues", []):
            combo = (value_set.get("metricName", ""), json.dumps(value.get("labels", {}), sort_keys=True))
            # Google rejects the whole request when one operation repeats a metric+labels.
            if combo in seen:
                raise ApiError(3, f"{where}: duplicate metric value for {combo[0]} with the same labels.")
            seen.add(combo)


def report_problem(service: str, operation: dict[str, Any]) -> tuple[int, str] | None:
    state = _state()
    consumer = operation["consumerId"]
    if state.consumer_problem(service, consumer):
        return 5, f"Consumer '{consumer}' not found or not active."
    labels = operation.get("userLabels") or {}
    problem = labels_problem(labels) if isinstance(labels, dict) else "userLabels must be a map of strings"
    if problem:
        # Labels follow Google's label syntax; the two cloudmarketplace.googleapis.com/ keys are reserved.
        return 3, f"userLabels: {problem}"
    start, end = parse_rfc3339(operation["startTime"]), parse_rfc3339(operation["endTime"])
    if start is None or end is None or end < start:
        return 3, "startTime and endTime must be RFC 3339 times with startTime <= endTime."
    for value_set in operation.get("metricValueSets", []):
        metric = value_set.get("metricName", "")
        prefix, _, bare = metric.rpartition("/")
        if prefix != service or (state.metrics is not None and bare not in state.metrics):
            return 3, f"Metric {metric!r} is not defined for service {service}."
        for value in value_set.get("metricValues", []):
            if "int64Value" in value:
                try:
                    number = int(value["int64Value"])
                except (TypeError, ValueError):
                    return 3, f"Metric {metric!r}: int64Value is not an integer."
                if number < 0:
                    return 3, f"Metric {metric!r}: value must not be negative."
            elif "doubleValue" not in value:
                return 3, f"Metric {metric!r}: value kind does not match the metric (INT64)."
    return None


# Partner Procurement --------------------------------------------------------------------


@wire.get("/v1/providers/<provider>/entitlements/<entitlement_id>")
def get_entitlement(provider: str, entitlement_id: str) -> Any:
    state = _state()
    draw_fault_or_500()
    with state.lock:
        return jsonify(state.entitlement(provider, entitlement_id))


@wire.get("/v1/providers/<provider>/entitlements")
def list_entitlements(provider: str) -> Any:
    state = _state()
    draw_fault_or_500()
    if provider != state.provider_id:
        raise ApiError(5, f"Provider {provider} not found.")
    matches = parse_filter(request.args.get("filter", ""))
    size = int(request.args.get("pageSize") or state.page_size)
    try:
        start = int(base64.urlsafe_b64decode(request.args.get("pageToken") or "MA==").decode())
    except ValueError:
        raise ApiError(3, "Invalid pageToken.") from None
    with state.lock:
        items = [e for e in sorted(state.entitlements.values(), key=lambda e: (e["createTime"], e["name"]))
                 if matches(e)]
        page = [dict(e) for e in items[start:start + size]]
    answer: dict[str, Any] = {"entitlements": page}
    if start + size < len(items):
        answer["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    return jsonify(answer)


@wire.post("/v1/providers/<provider>/entitlements/<name_and_method>")
def entitlement_method(provider: str, name_and_method: str) -> Any:
    state = _state()
    entitlement_id, _, method = name_and_method.partition(":")
    draw_fault_or_500()
    body = json_body()
    outbox: list[dict[str, Any]] = []
    with state.lock:
        entitlement = state.entitlement(provider, entitlement_id)
        if method == "approve":
            state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVATION_REQUESTED"},
                             "ENTITLEMENT_ACTIVE", "ENTITLEMENT_ACTIVE")
        elif method == "reject":
            state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVATION_REQUESTED"},
                             "ENTITLEMENT_CANCELLED", "ENTITLEMENT_CANCELLED")
            entitlement["cancellationReason"] = "rejected"
            if body.get("reason"):
                entitlement["messageToUser"] = str(body["reason"])[:256]
        elif method in ("approvePlanChange", "rejectPlanChange"):
            pending = entitlement.get("newPendingPlan")
            if entitlement["state"] == "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL" and \
                    body.get("pendingPlanName") != pending:
                raise ApiError(9, f"pendingPlanName must be the pending plan {pending!r}.")
            if method == "approvePlanChange":
                state.transition(outbox, entitlement, {"ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL"},
                                 "ENTITLEMENT_ACTIVE", "ENTITLEMENT_PLAN_CHANGED", newPlan=pending)
                entitlement["plan"] = pending
            else:
                state.transition(outbox, entitlement, {"ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL"},
                                 "ENTITLEMENT_ACTIVE", "ENTITLEMENT_PLAN_CHANGE_CANCELLED")
            entitlement.pop("newPendingPlan", None)
        else:
            raise ApiError(5, f"Method {method!r} not found.")
    deliver(outbox)
    return jsonify({})  # google.protobuf.Empty, as the real methods answer


@wire.get("/v1/providers/<provider>/accounts/<account_id>")
def get_account(provider: str, account_id: str) -> Any:
    state = _state()
    draw_fault_or_500()
    with state.lock:
        return jsonify(state.account(provider, account_id))


@wire.get("/v1/providers/<provider>/accounts")
def list_accounts(provider: str) -> Any:
    state = _state()
    draw_fault_or_500()
    if provider != state.provider_id:
        raise ApiError(5, f"Provider {provider} not found.")
    with state.lock:
        return jsonify({"accounts": [dict(a) for a in state.accounts.values()]})


@wire.post("/v1/providers/<provider>/accounts/<name_and_method>")
def account_method(provider: str, name_and_method: str) -> Any:
    state = _state()
    account_id, _, method = name_and_method.partition(":")
    draw_fault_or_500()
    body = json_body()
    with state.lock:
        account = state.account(provider, account_id)
        if method not in ("approve", "reject"):
            raise ApiError(5, f"Method {method!r} not found.")
        approval_name = body.get("approvalName")
        approval = next((a for a in account["approvals"] if a["name"] == approval_name), None)
        if approval is None:
            raise ApiError(3, f"Unknown approvalName {approval_name!r}.")
        approval["state"] = "APPROVED" if method == "approve" else "REJECTED"
        approval["updateTime"] = account["updateTime"] = _rfc3339(state.now())
        if body.get("reason"):
            approval["reason"] = str(body["reason"])
    return jsonify({})


def draw_fault_or_500() -> None:
    if draw_fault() == "error":
        raise ApiError(13, "Internal error.", 500)


def parse_filter(text: str) -> Any:
    terms: list[tuple[str, str]] = []
    for part in text.replace(" AND ", " ").split():
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise ApiError(3, f"Unsupported filter term {part!r}.")
        camel = "".join(w if i == 0 else w.capitalize() for i, w in enumerate(name.split("_")))
        terms.append((camel, value.strip('"')))

    def matches(entitlement: dict[str, Any]) -> bool:
        for name, value in terms:
            actual = str(entitlement.get(name, ""))
            if name == "account":
                actual = actual.rsplit("/", 1)[-1]
            if actual != value:
                return False
        return True

    return matches


# Control API ----------------------------------------------------------------------------


@extras.route("/metrics", methods=["GET", "POST"])
def defined_metrics() -> Any:
    """Define the service's metrics (bare names); until then any metric of the service goes."""
    state = _state()
    if request.method == "POST":
        body = json_body()
        names = body.get("metrics")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ApiError(3, "metrics must be a list of metric names")
        with state.lock:
            if body.get("replace") or state.metrics is None:
                state.metrics = frozenset(names)
            else:
                state.metrics = state.metrics | frozenset(names)
    with state.lock:
        return jsonify({"metrics": None if state.metrics is None else sorted(state.metrics)})


@extras.post("/auth")
def auth() -> Any:
    """Set the bearer tokens the APIs refuse with 401 (stand-ins for bad credentials)."""
    state = _state()
    tokens = json_body().get("refused_tokens") or []
    with state.lock:
        state.refused_tokens = {str(t) for t in tokens}
        return jsonify({"refused_tokens": sorted(state.refused_tokens)})


@extras.get("/config")
def config() -> Any:
    state = _state()
    with state.lock:
        return jsonify({
            "provider_id": state.provider_id,
            "service_name": state.service_name,
            "push_service_account": state.push_service_account,
            "receiver_url": state.receiver_url,
            "audience": state.audience or state.receiver_url,
            "certs_path": EMULATOR_CERTS_PATH,
        })


@extras.get(EMULATOR_CERTS_PATH.removeprefix("/_emulator"))
def certs() -> Any:
    state = _state()
    return jsonify({state.signing_key.kid: state.signing_key.certificate_pem})


@extras.post("/notifications/redeliver")
def redeliver() -> Any:
    """Push again every notification not yet acknowledged with a 2xx (Pub/Sub retries)."""
    state = _state()
    with state.lock:
        outbox = [n for n in state.notifications
                  if not (n["delivery"] and 200 <= (n["delivery"]["status"] or 0) < 300)]
    deliver(outbox)
    return jsonify({"redelivered": len(outbox)})


@extras.post("/accounts")
def create_account() -> Any:
    state = _state()
    body = json_body()
    outbox: list[dict[str, Any]] = []
    with state.lock:
        account = dict(state.new_account(outbox, body.get("id")))
    deliver(outbox)
    return jsonify(account), 201


@extras.post("/entitlements")
def create_entitlement() -> Any:
    state = _state()
    body = json_body()
    outbox: list[dict[str, Any]] = []
    with state.lock:
        entitlement = state.new_entitlement(
            outbox,
            account_id=body.get("account_id"),
            plan=body.get("plan") or "standard-payg",
            product=body.get("product"),
            usage_reporting_id=body.get("usage_reporting_id"),
            entitlement_id=body.get("id"),
        )
        if body.get("included"):
            state.set_included(entitlement["name"].rsplit("/", 1)[1],
                               {str(k): int(v) for k, v in body["included"].items()})
        if body.get("approve"):
            state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVATION_REQUESTED"},
                             "ENTITLEMENT_ACTIVE", "ENTITLEMENT_ACTIVE")
        answer = {"entitlement": dict(entitlement), "identifiers": identifiers_of(entitlement)}
    deliver(outbox)
    return jsonify(answer), 201


def identifiers_of(entitlement: dict[str, Any]) -> dict[str, str]:
    return {
        "service_name": entitlement["product"],
        "consumer_id": entitlement["usageReportingId"],
        "entitlement_id": entitlement["name"].rsplit("/", 1)[1],
        "account_id": entitlement["account"].rsplit("/", 1)[1],
        "provider_id": entitlement["provider"],
    }


@extras.post("/entitlements/<entitlement_id>/<action>")
def entitlement_action(entitlement_id: str, action: str) -> Any:
    state = _state()
    body = json_body()
    outbox: list[dict[str, Any]] = []
    with state.lock:
        entitlement = state.entitlement(state.provider_id, entitlement_id)
        if action == "plan-change":
            plan = body.get("plan")
            if not plan:
                raise ApiError(3, "plan is required")
            entitlement["newPendingPlan"] = plan
            state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVE"},
                             "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL",
                             "ENTITLEMENT_PLAN_CHANGE_REQUESTED", newPlan=plan)
        elif action == "cancel" and body.get("at_term_end"):
            state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVE"},
                             "ENTITLEMENT_PENDING_CANCELLATION", "ENTITLEMENT_PENDING_CANCELLATION")
        elif action == "cancel":
            state.transition(outbox, entitlement, ACTIVE_STATES | {"ENTITLEMENT_ACTIVATION_REQUESTED"},
                             "ENTITLEMENT_CANCELLED", "ENTITLEMENT_CANCELLED")
            entitlement["cancellationReason"] = body.get("reason") or "user-cancelled"
            entitlement.pop("newPendingPlan", None)
        elif action == "revert-cancellation":
            state.transition(outbox, entitlement, {"ENTITLEMENT_PENDING_CANCELLATION"},
                             "ENTITLEMENT_ACTIVE", "ENTITLEMENT_CANCELLATION_REVERTED")
        elif action == "renew":
            state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVE"},
                             "ENTITLEMENT_ACTIVE", "ENTITLEMENT_RENEWED")
        else:
            raise ApiError(5, f"unknown action {action!r}")
        answer = dict(entitlement)
    deliver(outbox)
    return jsonify(answer)


@extras.delete("/entitlements/<entitlement_id>")
def delete_entitlement(entitlement_id: str) -> Any:
    state = _state()
    outbox: list[dict[str, Any]] = []
    with state.lock:
        entitlement = state.entitlement(state.provider_id, entitlement_id)
        del state.entitlements[entitlement_id]
        entitlement["updateTime"] = _rfc3339(state.now())
        state.queue_event(outbox, "ENTITLEMENT_DELETED", entitlement=entitlement)
    deliver(outbox)
    return jsonify({})
