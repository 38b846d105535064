"""Errors of the worker, named for what the caller does next.

    WorkerError
    ├── NotFound      the named object does not exist (HTTP 404)
    │   ├── contracts.ContractNotFound
    │   └── listings.ListingNotFound
    ├── Conflict      the request contradicts stored state (HTTP 409)
    │   ├── contracts.MappingConflict
    │   └── listings.ListingConflict
    ├── Invalid       the input is malformed; ``field`` names what is wrong (HTTP 400)
    │   └── contracts.InvalidProperties
    ├── Permanent     cannot be done as things are: recorded and shown, never retried (HTTP 409)
    │   └── hourly.SyncError   a contract that cannot be reported (unmapped, no listing, ...)
    └── Transient     may work a moment later: a job lets it propagate so RQ retries it
        └── Contention    a compare-and-swap kept losing to other writers

A subscription the billing core does not know is billing_core's ``SubscriptionNotFound``; the
marketplace adapters raise ``marketplaces.base.TransientMarketplaceError`` and
``PermanentMarketplaceError``. ``webhooks.errors`` maps all of them to HTTP in one table.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every worker error."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotFound(WorkerError):
    """The named object does not exist."""


class Conflict(WorkerError):
    """The request contradicts what is stored."""


class Invalid(WorkerError):
    """The input is malformed; ``field`` names the offending field."""


class Permanent(WorkerError):
    """The work cannot be done as things stand; retrying gives the same answer."""


class Transient(WorkerError):
    """The work may succeed when tried again shortly."""


class Contention(Transient):
    """Other writers kept changing the state a compare-and-swap read; retry."""
