"""The one interface every marketplace adapter implements, and the values it speaks in.

Exception tree (named for what the caller does next)::

    MarketplaceError
    ├── TransientMarketplaceError    retry with backoff (throttling, 5xx, timeouts, outages)
    ├── PermanentMarketplaceError    record and show; do not retry blindly (auth, bad product)
    └── NotificationError
        ├── UnverifiedNotification   signature/token invalid -> HTTP 401, store nothing
        └── MalformedNotification    verified (or unverifiable) but unparseable -> HTTP 400

Per-record results of a report are *values* (``Outcome``), never exceptions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import AbstractSet, Any, Callable, Mapping, Protocol, Sequence, runtime_checkable


class MarketplaceError(Exception):
    """Base of every error an adapter raises."""


class TransientMarketplaceError(MarketplaceError):
    """The call may succeed later: throttling, 5xx, timeouts, connection failures."""


class PermanentMarketplaceError(MarketplaceError):
    """The call will not succeed as it is: bad credentials, unknown product, bad configuration."""


class NotificationError(MarketplaceError):
    """A lifecycle notification could not be accepted."""


class UnverifiedNotification(NotificationError):
    """The notification's signature or token did not verify (answer 401, store nothing)."""


class MalformedNotification(NotificationError):
    """The notification is not of the expected shape; ``field`` names what is wrong."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Marketplace(str, enum.Enum):
    AWS = "aws"
    AZURE = "azure"
    GCP = "gcp"


class OutcomeStatus(str, enum.Enum):
    """What the marketplace answered for one record."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # an earlier record for the same key/hour stands (quantity in detail)
    REJECTED = "rejected"  # invalid record (bad dimension, timestamp out of window, bad license, ...)
    CUSTOMER_NOT_SUBSCRIBED = "customer_not_subscribed"
    FAILED = "failed"  # not processed (e.g. still unprocessed after retries); safe to resend
    # Past the marketplace's late window (AWS TimestampOutOfBounds, Azure Expired): it can never be
    # accepted, so it is never sent again; its units are revenue lost.
    EXPIRED = "expired"
    # The subscription exists but takes no usage now (Azure ResourceNotActive: suspended): hold the
    # record and send it, identical, once the subscription is active again inside the window.
    NOT_ACTIVE = "not_active"


@dataclass(frozen=True)
class UsageRecord:
    """One metered quantity for one contract, dimension and whole UTC hour.

    ``key`` is deterministic (contract, dimension, hour) and is what the ledger stores.
    ``identifiers`` carries the marketplace-specific cloud identifiers:

    - aws:   ``product_code``, and either ``customer_aws_account_id`` + ``license_arn``
             or the legacy ``customer_identifier`` (never both kinds on the wire);
             ``concurrent_agreements`` = ``"true"``: the request carries no ``ProductCode``
    - azure: ``resource_id`` (SaaS subscription id), ``plan_id``
    - gcp:   ``service_name``, ``consumer_id`` (the entitlement's usageReportingId, verbatim),
             ``entitlement_id``
    """

    key: str
    marketplace: Marketplace
    identifiers: Mapping[str, str]
    dimension: str
    hour: datetime
    quantity: int
    # The wire id the marketplace dedupes on, when the sender chooses it (Google's operationId) and
    # pinned it on the ledger row before the first send: every resend carries this one.
    record_id: str | None = None
    # Usage allocations (docs/marketplaces.md §1.12): the quantity split over tag combinations,
    # each ((key, value), ...) with its units; empty tags hold the untagged usage. Empty: none.
    allocations: tuple[tuple[tuple[tuple[str, str], ...], int], ...] = ()

    def __post_init__(self) -> None:
        if self.hour.tzinfo is None or self.hour.utcoffset() != timezone.utc.utcoffset(None):
            raise ValueError("UsageRecord.hour must be an aware UTC datetime")
        if self.hour.minute or self.hour.second or self.hour.microsecond:
            raise ValueError("UsageRecord.hour must be a whole hour")
        if self.quantity < 0:
            raise ValueError("UsageRecord.quantity must be >= 0")
        if self.allocations and sum(q for _, q in self.allocations) != self.quantity:
            raise ValueError("UsageRecord.allocations must sum to its quantity")


@dataclass(frozen=True)
class Outcome:
    """The marketplace's answer for one record (matched by ``key``)."""

    key: str
    status: OutcomeStatus
    detail: str = ""
    marketplace_record_id: str | None = None
    accepted_quantity: int | None = None  # for duplicates: the quantity the marketplace keeps


class NotificationKind(str, enum.Enum):
    CREATED = "created"
    MODIFIED = "modified"
    CANCELED = "canceled"
    RENEWED = "renewed"
    SUSPENDED = "suspended"
    REINSTATED = "reinstated"
    # Not contract changes, but things the receiver must act on or record:
    SUBSCRIPTION_CONFIRMATION = "subscription_confirmation"  # SNS: confirm the topic subscription
    PENDING = "pending"  # e.g. GCP creation/plan change requested: approve through the API
    IGNORED = "ignored"  # verified, understood, nothing to do (stored and marked ignored)


@dataclass(frozen=True)
class ContractNotification:
    """A verified, normalized marketplace lifecycle message.

    ``delivery_id`` is the marketplace's dedupe key for the delivery (SNS MessageId,
    EventBridge id, Azure operation id, Pub/Sub eventId). ``identifiers`` uses the same
    names as ``UsageRecord.identifiers`` plus whatever identifies the contract
    (aws ``license_arn``/``customer_identifier``, azure ``subscription_id``, gcp
    ``entitlement_id``/``account_id``). ``action`` is the marketplace's own word
    (``unsubscribe-pending``, ``Unsubscribe``, ``ENTITLEMENT_CANCELLED``...).
    """

    marketplace: Marketplace
    delivery_id: str
    kind: NotificationKind
    action: str
    identifiers: Mapping[str, str] = field(default_factory=dict)
    plan: str | None = None
    quantity: int | None = None
    effective_at: datetime | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class MarketplaceAdapter(Protocol):
    """What every marketplace adapter offers the sync worker and the webhook receivers."""

    marketplace: Marketplace

    def report(self, records: Sequence[UsageRecord]) -> list[Outcome]:
        """Send ``records``; return one ``Outcome`` per record, in input order.

        Raise ``TransientMarketplaceError`` when nothing is known to have been processed
        and a retry may succeed; ``PermanentMarketplaceError`` for configuration or auth.
        """
        ...

    def parse_notification(
        self, headers: Mapping[str, str], body: bytes
    ) -> ContractNotification:
        """Verify and normalize a native lifecycle notification.

        Raise ``UnverifiedNotification`` (401) or ``MalformedNotification`` (400).
        """
        ...


@runtime_checkable
class ConsumptionEntitlements(Protocol):
    """Contracts with consumption (docs/marketplaces.md §1.13): what a contract includes per dimension.

    Every adapter reads it where its marketplace keeps it: AWS GetEntitlements' integer
    entitlements, Azure's plan (listAvailablePlans' included base quantities), Google's
    entitlement commitments. Dimensions are the marketplace's own names (the listing's dimensions).
    """

    def included_quantities(self, identifiers: Mapping[str, str], plan: str | None = None) -> dict[str, int]:
        """Return the whole units each dimension of the contract includes per period ({}: none).

        Raise ``TransientMarketplaceError`` or ``PermanentMarketplaceError`` as ``report`` does.
        """
        ...


def whole_units(value: Any) -> int | None:
    """Return an included quantity as whole units; None when it is no count (a flag, a text, a fraction)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value).strip())
    except ArithmeticError:
        return None
    if not number.is_finite() or number < 0 or number != number.to_integral_value():
        return None
    return int(number)


@dataclass(frozen=True)
class AcceptedUsage:
    """One quantity a marketplace says it holds for a customer, dimension and hour (its read-back).

    ``identifiers`` uses the names of ``UsageRecord.identifiers`` (Azure: ``resource_id``) and
    only names that identify the buyer or the product, so it matches a contract's record
    identifiers; ``quantity`` is what was submitted and accepted, ``processed`` what the
    marketplace's own pipeline processed so far (None: it does not say), ``status`` its own word
    for the record's state (Azure's ``reconStatus``).
    """

    marketplace: Marketplace
    identifiers: Mapping[str, str]
    dimension: str
    hour: datetime
    quantity: Decimal
    processed: Decimal | None = None
    status: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class UsageReadBack(Protocol):
    """The optional read of accepted usage; only marketplaces with such an API implement it (Azure).

    AWS and Google have no API that lists accepted usage: their adapters do not offer
    ``read_usage``, and ``read_back`` answers None for them.
    """

    def read_usage(self, start: datetime, end: datetime) -> list[AcceptedUsage]:
        """Return the usage the marketplace holds for hours in [start, end), every customer.

        Raise ``TransientMarketplaceError`` or ``PermanentMarketplaceError`` as ``report`` does.
        """
        ...


def read_back(adapter: Any, start: datetime, end: datetime) -> list[AcceptedUsage] | None:
    """Return the marketplace's own record of accepted usage in [start, end), or None: no read-back API."""
    if not isinstance(adapter, UsageReadBack):
        return None
    return adapter.read_usage(start, end)


def _hour(instant: datetime) -> datetime:
    return instant.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class FlushPlan:
    """When a canceled contract's flushes run (``MarketplaceRules.flush_plan``).

    ``now``: the flush to run at once (None: none, the final flush alone reports); ``final_at``:
    the final flush; ``deadline``: until when the marketplace takes the final usage.
    """

    now: datetime | None
    final_at: datetime
    deadline: datetime


@dataclass(frozen=True)
class MarketplaceRules:
    """What the sync needs to know of one marketplace, so the worker never branches on its name.

    - ``batch_size``: ledger rows per send;
    - ``final_usage_window``: how long after a cancellation the marketplace still takes usage;
    - ``window_opens_at_cancellation``: the window runs from the cancellation's own instant (AWS:
      one hour from the deprovisioning), not from when marketsync received the message; the
      earlier of the two counts, so a late delivery never lengthens it;
    - ``final_flush_lead``: the final flush is planned at least this long before the deadline, so
      its retries and the watchdog's alert fit inside the window;
    - ``hourly_zero_record``: send a zero-quantity record in hours without usage (a heartbeat);
    - ``flush_lookback_hours``: 0 means a flush takes the current hour or waits for the next;
      above 0, a flush may take the latest unused hour within that many hours back, never an
      hour after the cancellation (a marketplace that accepts past hours but none after the end);
    - ``contract_key_fields``: identifiers that key a contract, first present wins;
    - ``product_fields``: identifiers that name the product a listing matches;
    - ``record_identifiers(columns, cloud_identifiers)``: the identifiers of a usage record;
    - ``customer_identity(identifiers)``: who the buyer is (keys the billing customer);
    - ``event_identifiers(identifiers)``: the identifiers a contract event of a notification
      carries (e.g. Azure's subscription id under the column name ``azure_subscription_id``);
    - ``event_kind(notification, contract_key)``: the kind of that contract event (e.g. Google's
      ``ENTITLEMENT_DELETED`` ends the contract);
    - ``report_window``: how long after its hour stamp a report is still accepted (None: the
      marketplace documents no limit); a report still unsent past it is ``expired``, never sent;
    - ``hold_while_suspended``: a suspended subscription takes no usage, so the reports of a
      suspended contract are held (kept pending, not sent) until it is reinstated;
    - ``allocation_keys_problem(keys)``: why a listing's tag keys cannot split its records over
      tag combinations (None when they can); unset: the marketplace takes no allocations;
    - ``pinned_record_id(record)``: the wire id the marketplace dedupes on when the sender
      chooses it (Google's operationId), stored on the ledger row before the first send so a
      resend carries the same one whatever changed meanwhile (None: the marketplace dedupes on
      the record's own fields).
    """

    marketplace: Marketplace
    batch_size: int
    final_usage_window: timedelta
    hourly_zero_record: bool
    flush_lookback_hours: int
    contract_key_fields: tuple[str, ...]
    product_fields: tuple[str, ...]
    record_identifiers: Callable[[Mapping[str, Any], Mapping[str, str]], dict[str, str]]
    customer_identity: Callable[[Mapping[str, str]], str | None]
    event_identifiers: Callable[[Mapping[str, str]], dict[str, str]] = dict
    event_kind: Callable[[ContractNotification, str], str] = lambda note, key: note.kind.value
    report_window: timedelta | None = None
    hold_while_suspended: bool = False
    pinned_record_id: Callable[[UsageRecord], str] | None = None
    window_opens_at_cancellation: bool = False
    final_flush_lead: timedelta = timedelta(minutes=20)
    # Why a listing's allocation tag keys cannot be used (None: they can); None here: the
    # marketplace takes no usage allocations (Azure).
    allocation_keys_problem: Callable[[Sequence[str]], str | None] | None = None

    def final_usage_deadline(self, received_at: datetime, effective_at: datetime | None) -> datetime:
        """Return until when the marketplace takes a canceled contract's final usage."""
        opened = received_at
        if self.window_opens_at_cancellation and effective_at is not None:
            opened = min(received_at, effective_at)
        return opened + self.final_usage_window

    def flush_plan(self, received_at: datetime, effective_at: datetime | None, now: datetime,
                   grace: timedelta) -> "FlushPlan":
        """Return when a cancellation's flushes run: the final one after the usage grace, but no later
        than ``final_flush_lead`` before the deadline (at once when that has passed); a flush now too,
        unless it would take the hour stamp the final one needs.

        With ``flush_lookback_hours`` 0 a flush reports under the current hour and a second flush in
        that hour must wait for the next boundary. When that boundary comes later than the latest
        moment the final flush may run, a flush now would leave the final usage no hour inside the
        window: then the final flush alone reports, under the current hour.
        """
        deadline = self.final_usage_deadline(received_at, effective_at)
        final_at = max(now, min(now + grace, deadline - self.final_flush_lead))
        flush_now = final_at > now
        if flush_now and not self.flush_lookback_hours and _hour(final_at) == _hour(now):
            flush_now = _hour(now) + timedelta(hours=1) <= deadline - self.final_flush_lead
        return FlushPlan(now=now if flush_now else None, final_at=final_at, deadline=deadline)

    def expires_at(self, hour: datetime) -> datetime | None:
        """Return when a report stamped ``hour`` can no longer be accepted (None: never, as far as documented)."""
        return None if self.report_window is None else hour + self.report_window

    def contract_key(self, identifiers: Mapping[str, str]) -> str:
        """Return the contract key among ``identifiers`` (the first of ``contract_key_fields`` present)."""
        return next((identifiers[f] for f in self.contract_key_fields if identifiers.get(f)), "")

    def flush_stamp(self, used: AbstractSet[datetime], now: datetime,
                    cancel_effective_at: datetime | None) -> datetime | None:
        """Return the hour stamp a flush can use now, or None when it must wait for the next hour."""
        stamp = _hour(now)
        if not self.flush_lookback_hours:
            return None if stamp in used else stamp
        if cancel_effective_at is not None:
            stamp = min(stamp, _hour(cancel_effective_at))
        oldest = _hour(now) - timedelta(hours=self.flush_lookback_hours)
        while stamp >= oldest:
            if stamp not in used:
                return stamp
            stamp -= timedelta(hours=1)
        return None
