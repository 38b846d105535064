"""The one control API of the three emulators: the same paths and shapes on each (``/_emulator/``).

::

    POST     reset           forget everything but the signing keys; {"options": {...}} also
                             replaces the app's creation options until the next reset
    GET|POST faults          {"latency_ms", "error_rate", "throttle_rate", "outage", "seed"} (+ extras)
    GET|POST clock           {"now": ISO | null} or {"advance_seconds": n} -> {"now", "fixed"}
    GET|POST receiver        {"url": ... (+ extras)}: only the keys given change; "" or null unsets
    GET      usage           {"totals": [{..., "dimension", "hour", "quantity"}], ...} accepted usage
    GET      notifications   {"notifications": [...]} every notification sent (credentials as ***)

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


@control.get("/notifications")
def notifications() -> Any:
    return jsonify({"notifications": state().notification_log()})
