"""Errors of the billing core, named for what the caller does next.

    BillingError
    ├── NotFound          the named object does not exist (HTTP 404)
    ├── Conflict          the request contradicts stored state (HTTP 409)
    └── InvalidInput      the request is malformed; ``field`` names what is wrong (HTTP 400)
        └── UnsupportedMetricSql   metric SQL outside the supported subset (HTTP 400)
"""

from __future__ import annotations


class BillingError(Exception):
    """Base of every billing-core error."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(BillingError):
    """The named object does not exist."""


class Conflict(BillingError):
    """The request contradicts what is stored (e.g. an idempotency key reused with another body)."""


class InvalidInput(BillingError):
    """The request is malformed; ``field`` names the offending field."""


class UnsupportedMetricSql(InvalidInput):
    """A metric's SQL uses a construct outside the supported subset."""
