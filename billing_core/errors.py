"""Errors of the billing core, named for what the caller does next.

    BillingError
    ├── NotFound          the named object does not exist (HTTP 404)
    ├── Conflict          the request contradicts stored state (HTTP 409)
    ├── InvalidInput      the request is malformed; ``field`` names what is wrong (HTTP 400)
    │   └── UnsupportedMetricSql   metric SQL outside the supported subset (HTTP 400)
    └── OutOfRange        stored numbers cannot be computed with exactly (HTTP 422); not retried
        ├── UsageOutOfRange   a metric's total (or max, latest) is beyond the supported range
        └── InexactAmount     money arithmetic would need more digits than the exact context has
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


class OutOfRange(BillingError):
    """A computation over stored numbers cannot be exact; retrying gives the same answer.

    It concerns one customer (and metric): callers report it for that one and carry on with
    the others. ``reason`` is a stable code for metrics and the dashboard.
    """

    reason = "out_of_range"


class UsageOutOfRange(OutOfRange):
    """A metric's aggregated value for one customer is beyond the supported range."""

    reason = "usage_out_of_range"

    def __init__(self, message: str, *, metric_id: str | None = None, customer_id: str | None = None):
        super().__init__(message)
        self.metric_id = metric_id
        self.customer_id = customer_id


class InexactAmount(OutOfRange):
    """An amount would need more significant digits than the exact money context holds."""

    reason = "inexact_amount"
