"""The one control API of the emulators: the same paths, bodies and answers on all three."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from marketplaces.emulators.control import parse_instant
from marketplaces.emulators.server import EmulatorServer

MARKETPLACES = ["aws", "azure", "gcp"]


@pytest.fixture(params=MARKETPLACES)
def server(request: pytest.FixtureRequest, emulators: dict[str, EmulatorServer]) -> EmulatorServer:
    return emulators[request.param]


def _call(server: EmulatorServer, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{server.url}/_emulator/{path}", json=body, timeout=10)


def _ok(server: EmulatorServer, method: str, path: str, body: Any = None) -> Any:
    answer = _call(server, method, path, body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_clock_is_set_advanced_and_released(server: EmulatorServer) -> None:
    """``now`` fixes the clock, ``advance_seconds`` moves it (forward or back), ``null`` releases it."""
    start = datetime(2026, 11, 21, 10, 30, tzinfo=timezone.utc)
    answer = _ok(server, "POST", "clock", {"now": "2026-11-21T10:30:00Z"})
    assert answer["fixed"] is True and parse_instant(answer["now"]) == start

    answer = _ok(server, "POST", "clock", {"advance_seconds": 5400})
    assert parse_instant(answer["now"]) == start + timedelta(minutes=90)
    assert parse_instant(_ok(server, "GET", "clock")["now"]) == start + timedelta(minutes=90)

    answer = _ok(server, "POST", "clock", {"advance_seconds": -7200})
    assert parse_instant(answer["now"]) == start - timedelta(minutes=30)

    released = _ok(server, "POST", "clock", {"now": None})
    assert released["fixed"] is False
    assert abs(parse_instant(released["now"]) - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_advancing_a_free_clock_fixes_it_ahead_of_the_wall_clock(server: EmulatorServer) -> None:
    answer = _ok(server, "POST", "clock", {"advance_seconds": 3600})
    assert answer["fixed"] is True
    ahead = parse_instant(answer["now"]) - datetime.now(timezone.utc)
    assert timedelta(minutes=59) < ahead <= timedelta(hours=1)


@pytest.mark.parametrize("body", [{"now": "yesterday"}, {"advance_seconds": "soon"}, {"advance_seconds": 1e300},
                                  ["now"], "2026-11-21T10:30:00Z"])
def test_a_bad_clock_body_is_a_400_and_changes_nothing(server: EmulatorServer, body: Any) -> None:
    _ok(server, "POST", "clock", {"now": "2026-11-21T10:30:00Z"})
    answer = _call(server, "POST", "clock", body)
    assert answer.status_code == 400 and answer.json()["error"]
    assert parse_instant(_ok(server, "GET", "clock")["now"]) == datetime(2026, 11, 21, 10, 30, tzinfo=timezone.utc)


def test_faults_receiver_usage_and_notifications_have_one_shape(server: EmulatorServer) -> None:
    faults = _ok(server, "POST", "faults", {"latency_ms": 1, "error_rate": 0.25})
    assert {"latency_ms", "error_rate", "throttle_rate", "outage"} <= set(faults)
    assert faults["error_rate"] == 0.25 and _ok(server, "GET", "faults")["error_rate"] == 0.25
    unknown = _call(server, "POST", "faults", {"meteor_strike": True})
    assert unknown.status_code == 400 and "meteor_strike" in unknown.json()["error"]

    receiver = _ok(server, "POST", "receiver", {"url": "http://127.0.0.1:9/hook"})
    assert receiver["url"] == "http://127.0.0.1:9/hook" and _ok(server, "GET", "receiver")["url"] == receiver["url"]
    assert _ok(server, "POST", "receiver", {"url": None})["url"] is None

    assert isinstance(_ok(server, "GET", "usage"), dict)
    assert _ok(server, "GET", "notifications") == {"notifications": []}


def test_reset_forgets_faults_clock_and_receiver(server: EmulatorServer) -> None:
    _ok(server, "POST", "faults", {"outage": True})
    _ok(server, "POST", "clock", {"now": "2026-11-21T10:30:00Z"})
    _ok(server, "POST", "receiver", {"url": "http://127.0.0.1:9/hook"})
    assert _ok(server, "POST", "reset") == {"ok": True}
    assert _ok(server, "GET", "faults")["outage"] is False
    assert _ok(server, "GET", "clock")["fixed"] is False
    assert _ok(server, "GET", "receiver")["url"] is None
    bad = _call(server, "POST", "reset", {"options": {"no_such_option": 1}})
    assert bad.status_code == 400 and "no_such_option" in bad.json()["error"]
