"""A client for the AWS emulator's control API (tests and the CLI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

import requests

from marketplaces.emulators.aws.state import _license_id
from marketplaces.emulators.aws.wire import _hour, _iso, _utc


class AwsEmulatorClient:
    """Drive a running AWS emulator's control API (``base_url`` like ``http://127.0.0.1:8101``)."""

    def __init__(self, base_url: str, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.http = session or requests.Session()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.http.request(method, self.base_url + path, json=body, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def reset(self, **options: Any) -> None:
        """Forget everything; ``options`` override the emulator's creation options until the next reset."""
        self._call("POST", "/_emulator/reset", {"options": options} if options else None)

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        return self._call("POST", "/_emulator/faults", faults)

    def set_options(self, **options: Any) -> dict[str, Any]:
        return self._call("POST", "/_emulator/options", options)

    def set_clock(self, now: datetime | None) -> dict[str, Any]:
        return self._call("POST", "/_emulator/clock", {"now": _iso(now) if now else None})

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        return self._call("POST", "/_emulator/clock", {"advance_seconds": seconds})

    def set_receiver(self, url: str | None = None, eventbridge_url: str | None = None,
                     eventbridge_headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url, "eventbridge_url": eventbridge_url}
        if eventbridge_headers is not None:
            body["eventbridge_headers"] = dict(eventbridge_headers)
        return self._call("POST", "/_emulator/receiver", body)

    def create_customer(self, **fields: Any) -> dict[str, Any]:
        """Create a subscription; return the emulator's view (``identifiers``, ``id``, ...)."""
        return self._call("POST", "/_emulator/customers", fields)

    def cancel(self, sub_id: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", f"/_emulator/customers/{sub_id}/cancel", fields)

    def update_entitlements(self, sub_id: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", f"/_emulator/customers/{sub_id}/entitlements", fields)

    def tick(self) -> dict[str, Any]:
        return self._call("POST", "/_emulator/tick")

    def usage(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/usage")

    def notifications(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_emulator/notifications")["notifications"]

    def sign(self, envelope: Mapping[str, Any], signature_version: str = "2") -> dict[str, Any]:
        return self._call(
            "POST", "/_emulator/sns/sign",
            {"envelope": dict(envelope), "signature_version": signature_version},
        )

    def send_subscription_confirmation(self, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/_emulator/sns/subscription-confirmation", fields)

    def confirmations(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_emulator/sns/confirmations")

    def usage_total(self, identifiers: Mapping[str, str], dimension: str, hour: datetime) -> int:
        """Return the accepted quantity for one subscription, dimension and hour (0 if none)."""
        wanted_hour = _iso(_hour(_utc(hour)))
        for entry in self.usage()["totals"]:
            if entry["dimension"] != dimension or entry["hour"] != wanted_hour:
                continue
            if identifiers.get("license_arn"):
                if _license_id(entry["license_arn"]) == _license_id(identifiers["license_arn"]):
                    return int(entry["quantity"])
            elif entry["customer_identifier"] == identifiers.get("customer_identifier"):
                return int(entry["quantity"])
        return 0
