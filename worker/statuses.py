"""The worker's status vocabularies: what each stored ``status`` column may hold.

They are ``StrEnum``s, so a member compares equal to (and is stored as) its text: rows keep
plain strings, and code names the states instead of spelling them.
"""

from __future__ import annotations

from enum import StrEnum


class LedgerStatus(StrEnum):
    """A usage report: written ``pending``, then the marketplace's answer."""

    PENDING = "pending"  # written, not yet answered (sent again, identical, until it is)
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # the marketplace already had this hour
    REJECTED = "rejected"  # refused: its units are not counted as reported
    FAILED = "failed"  # a permanent error: its units are not counted as reported
    # Past the marketplace's late window, unsent or refused as too old: never sent again. Its units
    # stay counted (no later hour carries them): they are revenue lost, shown with their amount.
    EXPIRED = "expired"


class InboxStatus(StrEnum):
    """A stored webhook delivery: ``received → processing → done | failed``."""

    RECEIVED = "received"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    IGNORED = "ignored"  # needs no processing
    DEFERRED = "deferred"  # waits for its contract's creation


class ContractStatus(StrEnum):
    """A marketplace contract's lifecycle."""

    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CANCELED = "canceled"  # reports its final usage, then closes
    CLOSED = "closed"


class MappingStatus(StrEnum):
    """Whether a contract is attached to a billing subscription."""

    MAPPED = "mapped"
    UNMAPPED = "unmapped"
    ERROR = "error"


# Contracts that still report usage (canceled ones until their final report closes them).
SYNCABLE = (ContractStatus.ACTIVE, ContractStatus.SUSPENDED, ContractStatus.CANCELED)
