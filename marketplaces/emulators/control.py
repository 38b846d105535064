"""The one control API of the three emulators: the same paths and shapes on each (``/_emulator/``).

::

    POST     reset           forget everything but the signing keys; {"options": {...}} also
                             replaces the app's creation options until the next reset
    GET|POST faults          {"latency_ms", "error_rate", "throttle_rate", "outage", "seed"} (+ extras)
    GET|POST clock           {"now": ISO | null} or {"advance_seconds": n} -> {"now", "fixed"}
    GET|POST receiver        {"url": ... (+ extras)}: only the keys given change; "" or null unsets
    GET      usage           {"totals": [{..., "dimension", "hour", "quantity"}], ...} accepted usage
    GET      notifications   {"notifications": [...]} every notification sent (credentials as ***)
    GET|POST included        contracts with consumption (docs/marketplaces.md §1.13): POST {"contract":
                             key, "included": {dimension: units}, "consumed": {dimension: units}}
                             (either or both); GET -> {"included": [{"contract", "included",
                             "consumed", "reported", "flags"}]}: a flag names a dimension whose
                             reported usage dips into what the contract includes

Every emulator's state implements ``ControlledState``; marketplace-specific controls (customers,
subscriptions, entitlements, options, tokens, ...) stay on the emulator's own blueprint. Errors
are ``{"error": message}`` with HTTP 400.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Protocol

from flask import Blueprint, current_app, jsonify, request

from marketplaces.emulators.server import Faults

EXTENSION = "emulator"  # app.extensions key of every emulator's state


class ControlledState(Protocol):
    """What an emulator's state offers the shared control API."""

    lock: threading.RLock
    faults: Faults
    fixed_now: datetime | None

    def reset(self, options: Mapping[str, Any] | None = None) -> None:
        """Forget everything but the signing keys; ``options`` override the creation options."""
        ...

    def now(self) -> datetime:
        """Return the emulator's clock (fixed when set, else the wall clock)."""
        ...

    def wire_time(self, moment: datetime) -> str:
        """Format an instant the way this emulator's control answers always have."""
        ...

    def clock_moved(self, base_url: str) -> dict[str, Any]:
        """Act on a clock change (e.g. close final-usage windows); return extra answer fields."""
        ...

    def faults_view(self) -> dict[str, Any]:
        ...

    def set_faults(self, values: dict[str, Any]) -> None:
        """Set faults (and emulator-specific extras); unknown names raise ``KeyError``."""
        ...

    def receiver_view(self) -> dict[str, Any]:
        ...

    def set_receiver(self, values: Mapping[str, Any]) -> None:
        """Set the receiver settings named in ``values`` ("url" and extras)."""
        ...

    def usage_report(self) -> dict[str, Any]:
        ...

    def notification_log(self) -> list[dict[str, Any]]:
        ...

    def set_included(self, contract: str, included: Mapping[str, int] | None) -> str:
        """Set what the contract (license id or ARN, SaaS subscription id, entitlement id) includes per
        dimension, served as the marketplace serves it (None: only find it); return its key in
        ``included_view``. An unknown contract raises ``KeyError``."""
        ...

    def included_view(self) -> list[dict[str, Any]]:
        """Return each contract's ``included`` units and the units ``reported`` per dimension (all hours)."""
        ...


def state() -> Any:
    """Return the current emulator app's state."""
    return current_app.extensions[EXTENSION]


def parse_instant(value: Any) -> datetime:
    """Parse an ISO 8601 / RFC 3339 instant (``Z`` or an offset; naive means UTC)."""
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value).strip().replace("Z", "+00:00")
        if "." in text:  # Google writes up to nanoseconds; Python reads up to microseconds
            head, _, rest = text.partition(".")
            digits = "".join(ch for ch in rest if ch.isdigit())
            text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
        moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True, force=True)
    if body is None and request.get_data():
        raise ValueError("the body is not JSON")
    if body is not None and not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body or {}


def _bad(message: str) -> Any:
    return jsonify({"error": message}), 400


control = Blueprint("emulator_control", __name__, url_prefix="/_emulator")


@control.post("/reset")
def reset() -> Any:
    try:
        options = _body().get("options")
        state().reset(options or None)
        _consumption(state()).clear()
    except (KeyError, TypeError, ValueError) as exc:
        return _bad(f"bad options: {exc}")
    return jsonify({"ok": True})


@control.route("/faults", methods=["GET", "POST"])
def faults() -> Any:
    emulator = state()
    if request.method == "POST":
        try:
            emulator.set_faults(_body())
        except KeyError as exc:
            return _bad(f"unknown fault {exc.args[0]!r}")
        except (TypeError, ValueError) as exc:
            return _bad(str(exc))
    return jsonify(emulator.faults_view())


@control.route("/clock", methods=["GET", "POST"])
def clock() -> Any:
    emulator = state()
    extra: dict[str, Any] = {}
    if request.method == "POST":
        try:
            body = _body()
            with emulator.lock:
                if "now" in body:
                    emulator.fixed_now = parse_instant(body["now"]) if body["now"] else None
                if body.get("advance_seconds") is not None:
                    step = timedelta(seconds=float(body["advance_seconds"]))
                    emulator.fixed_now = emulator.now() + step
        except (TypeError, ValueError, OverflowError) as exc:
            return _bad(f"now must be an ISO 8601 time or null, advance_seconds a number: {exc}")
        extra = emulator.clock_moved(request.host_url.rstrip("/"))
    with emulator.lock:
        answer = {"now": emulator.wire_time(emulator.now()), "fixed": emulator.fixed_now is not None}
    return jsonify({**answer, **extra})


@control.route("/receiver", methods=["GET", "POST"])
def receiver() -> Any:
    emulator = state()
    if request.method == "POST":
        try:
            emulator.set_receiver(_body())
        except (KeyError, TypeError, ValueError) as exc:
            return _bad(str(exc))
    return jsonify(emulator.receiver_view())


@control.get("/usage")
def usage() -> Any:
    return jsonify(state().usage_report())


@control.route("/included", methods=["GET", "POST"])
def entitlements() -> Any:
    emulator = state()
    if request.method == "POST":
        try:
            body = _body()
            contract = str(body.get("contract") or "")
            if not contract:
                raise ValueError("contract: required")
            included = _units(body["included"], "included") if body.get("included") is not None else None
            consumed = _units(body["consumed"], "consumed") if body.get("consumed") is not None else None
            with emulator.lock:
                key = emulator.set_included(contract, included)
                if consumed is not None:
                    _consumption(emulator)[key] = consumed
        except KeyError as exc:
            return _bad(f"contract: no such contract {exc.args[0]!r}")
        except (TypeError, ValueError) as exc:
            return _bad(str(exc))
    with emulator.lock:
        return jsonify({"included": overage_check(emulator.included_view(), _consumption(emulator))})


def _consumption(emulator: Any) -> dict[str, dict[str, int]]:
    """What the buyer consumed per contract and dimension, as a test tells the emulator (cleared by reset)."""
    if not hasattr(emulator, "consumption"):
        emulator.consumption = {}
    return emulator.consumption


def _units(values: Any, name: str) -> dict[str, int]:
    if not isinstance(values, dict):
        raise ValueError(f"{name}: must be an object of dimension: units")
    out = {}
    for dimension, units in values.items():
        if isinstance(units, bool) or not isinstance(units, (int, str)) or not str(units).isdigit():
            raise ValueError(f"{name}.{dimension}: must be a whole number of units")
        out[str(dimension)] = int(units)
    return out


def overage_check(view: list[dict[str, Any]], consumed: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    """Flag each dimension whose reported units exceed the overage, max(0, consumed - included).

    No marketplace sees the usage a seller does not report, so none can refuse usage that dips
    into the included quantity: the emulators flag it against what a test says was consumed.
    """
    out = []
    for entry in view:
        used = dict(consumed.get(entry["contract"], {}))
        flags = []
        for dimension, units in sorted(used.items()):
            allowed = max(units - int(entry["included"].get(dimension, 0)), 0)
            reported = entry["reported"].get(dimension, 0)
            if reported > allowed:
                flags.append({"dimension": dimension, "reported": reported, "overage": allowed,
                              "problem": "reported usage dips into the included quantity"})
        out.append({**entry, "consumed": used, "flags": flags})
    return out


@control.get("/notifications")
def notifications() -> Any:
    return jsonify({"notifications": state().notification_log()})
