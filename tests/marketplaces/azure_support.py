"""Test helpers for the Azure adapter: a running emulator, an adapter pointed at it, controls."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import requests

from config.settings import Settings
from marketplaces.azure import AzureMarketplace, build_azure_adapter
from marketplaces.base import Marketplace, UsageRecord
from marketplaces.emulators.azure import create_azure_emulator
from marketplaces.emulators.server import EmulatorServer


# The emulator's clock in these tests: fixed, so hour arithmetic never straddles a boundary.
NOW = datetime(2026, 11, 21, 11, 30, tzinfo=timezone.utc)
HOUR = NOW.replace(minute=0)  # the current hour on that clock


def hours_ago(n: int) -> datetime:
    """Return the start of the hour ``n`` hours before ``HOUR``."""
    return HOUR - timedelta(hours=n)


class AzureSandbox:
    """An Azure emulator on a loopback port, an adapter built for it, and its control API."""

    def __init__(self, **emulator_options: Any):
        emulator_options.setdefault("now", NOW)
        self.app = create_azure_emulator(**emulator_options)
        self.state = self.app.extensions["azure_emulator"]
        self.server = EmulatorServer(self.app).start()
        self.url = self.server.url
        self.http = requests.Session()
        self.settings = Settings.from_env(
            {"AZURE_EMULATOR_PORT": str(self.server.port), "EMULATOR_HOST": "127.0.0.1"}
        )
        self.adapter = self.build_adapter()

    def build_adapter(self, **overrides: Any) -> AzureMarketplace:
        """Build an adapter through the composition root, without retry pauses."""
        overrides.setdefault("retry_delays", ())
        return build_azure_adapter(self.settings, **overrides)

    def close(self) -> None:
        self.server.stop()
        self.http.close()

    # Control API ---------------------------------------------------------------------------

    def control(self, method: str, path: str, body: Any = None, expect: int | None = 200) -> Any:
        """Call ``/_emulator/<path>`` and return its JSON (checking the status if asked)."""
        response = self.http.request(method, f"{self.url}/_emulator/{path}", json=body)
        if expect is not None:
            assert response.status_code == expect, response.text
        return response.json() if response.content else None

    def create_subscription(self, **body: Any) -> dict[str, Any]:
        """Create a subscription (auto-activated unless told) and return the control answer."""
        body.setdefault("plan_id", "payg")
        body.setdefault("dimensions", ["usage_fee"])
        return self.control("POST", "subscriptions", body, expect=201)

    def create_customer(self, **body: Any) -> dict[str, str]:
        """Create a subscription and return the usage identifiers for it."""
        sub = self.create_subscription(**body)["subscription"]
        return {"resource_id": sub["id"], "plan_id": sub["planId"]}

    def usage(self) -> dict[str, Any]:
        return self.control("GET", "usage")

    def usage_totals(self) -> dict[tuple[str, str, str], float]:
        """Return accepted quantities by (resource id, dimension, hour ISO)."""
        return {
            (row["resource_id"], row["dimension"], row["hour"]): row["quantity"]
            for row in self.usage()["totals"]
        }

    def set_faults(self, **faults: Any) -> None:
        self.control("POST", "faults", faults)

    def set_clock(self, now: datetime | None) -> None:
        self.control("POST", "clock", {"now": now.isoformat() if now else None})

    def reset(self) -> None:
        self.control("POST", "reset")

    def token(self, kind: str = "webhook", ttl: int | None = None, **claims: Any) -> str:
        """Mint a token signed by the emulator (``kind`` webhook or api) with claim overrides."""
        return self.control("POST", "tokens", {"kind": kind, "ttl": ttl, "claims": claims})["token"]

    def api(self, method: str, path: str, *, token: str | None = None, params: Any = None,
            **kwargs: Any) -> requests.Response:
        """Call the marketplace API directly with a valid token (unless one is given)."""
        if params is None:
            params = {"api-version": "2018-08-31"}
        headers = {"Authorization": f"Bearer {token or self.token('api')}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.url}/api{path}", params=params, headers=headers, **kwargs)

    @staticmethod
    def make_record(
        key: str, identifiers: Mapping[str, str], dimension: str, hour: datetime, quantity: int
    ) -> UsageRecord:
        return UsageRecord(key, Marketplace.AZURE, dict(identifiers), dimension, hour, quantity)
