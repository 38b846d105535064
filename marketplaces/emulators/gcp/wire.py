"""The Google wire format: status codes, error shapes, RFC 3339 times, the signing key of pushes."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from marketplaces.emulators.server import self_signed_certificate_pem


ACTIVE_STATES = frozenset(
    {
        "ENTITLEMENT_ACTIVE",
        "ENTITLEMENT_PENDING_CANCELLATION",
        "ENTITLEMENT_PENDING_PLAN_CHANGE",
        "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL",
    }
)


CHECK_CODES = {"NOT_FOUND": 5, "SERVICE_NOT_ACTIVATED": 104, "CONSUMER_INVALID": 125}
RPC_STATUS = {
    3: "INVALID_ARGUMENT",
    5: "NOT_FOUND",
    7: "PERMISSION_DENIED",
    16: "UNAUTHENTICATED",
    6: "ALREADY_EXISTS",
    9: "FAILED_PRECONDITION",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    8: "RESOURCE_EXHAUSTED",
}


HTTP_FOR_RPC = {3: 400, 5: 404, 6: 409, 7: 403, 9: 400, 13: 500, 14: 503, 8: 429, 16: 401}
SERVICE_CONFIG_ID = "2026-11-01r0"
SUBSCRIPTION = "projects/marketsync-sandbox/subscriptions/marketplace-procurement-push"


class ApiError(Exception):
    """An error answered in Google's JSON error shape."""

    def __init__(self, rpc_code: int, message: str, http_status: int | None = None):
        super().__init__(message)
        self.rpc_code = rpc_code
        self.message = message
        self.http_status = http_status or HTTP_FOR_RPC.get(rpc_code, 400)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SigningKey:
    """An RSA key and its self-signed certificate, published by key id."""

    kid: str
    private_pem: bytes
    certificate_pem: str

    @classmethod
    def generate(cls) -> "SigningKey":
        """Make a fresh 2048-bit key with a self-signed certificate."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(
            kid=secrets.token_hex(20),
            private_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            certificate_pem=self_signed_certificate_pem(key, "marketsync-gcp-emulator").decode(),
        )

    def sign(self, claims: dict[str, Any]) -> str:
        """Return ``claims`` as an RS256 JWT carrying this key's id."""
        return pyjwt.encode(claims, self.private_pem, algorithm="RS256", headers={"kid": self.kid})


def _metric_number(value: dict[str, Any]) -> float:
    if "int64Value" in value:
        return int(value["int64Value"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    return 0


def _fingerprint(operation: dict[str, Any]) -> str:
    return json.dumps(operation, sort_keys=True, separators=(",", ":"))
