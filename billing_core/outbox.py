"""Outbound webhooks, the domain: endpoints, outbox events, deliveries, and the event types.

An event's stored body holds its resources and ``properties`` (Orb's standard payload without
``id``, ``created_at`` and ``payload_style``, which the sender adds per endpoint); ``expanded``
holds the resources an expanded payload carries in their place (the full subscription, the full
invoice), rendered with the body, as of the change. Writing one is ``service_outbox.emit`` — in
the transaction of the change that caused it; ``payload_body`` is what an endpoint is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from billing_core.errors import InvalidInput
from billing_core.lines import iso

__all__ = ["Delivery", "EVENT_TYPES", "Endpoint", "OutboxEvent", "PAYLOAD_STYLES", "check_event_types"]

# Every type this service emits: Orb's, then marketsync's own in the same style.
EVENT_TYPES = (
    "subscription.created", "subscription.edited", "subscription.ended",
    "subscription.usage_exceeded", "subscription.cost_exceeded",
    "subscription.plan_version_change_scheduled", "subscription.plan_version_changed",
    "invoice.issued",
    "contract.mapped", "contract.unmapped", "contract.canceled", "contract.closed",
    "marketplace_report.rejected", "marketplace_report.failed", "marketplace_report.deadline_at_risk",
    "marketplace_report.expired",
    "webhook_endpoint.disabled",
)
PAYLOAD_STYLES = ("expanded", "standard")


@dataclass(frozen=True)
class Endpoint:
    """Where events are sent; ``enabled_event_types`` None means every type."""

    id: str
    url: str
    secret: str
    enabled: bool
    enabled_event_types: tuple[str, ...] | None
    payload_style: str
    created_at: datetime
    failing_since: datetime | None = None
    disabled_reason: str | None = None

    def wants(self, event_type: str) -> bool:
        """Tell whether events of ``event_type`` go to this endpoint (enabled or not)."""
        return self.enabled_event_types is None or event_type in self.enabled_event_types


@dataclass(frozen=True)
class OutboxEvent:
    """One event written to the outbox; ``seq`` orders it (commit order of the change log is not needed).

    ``expanded``: the resources that replace the body's in an expanded payload; None when both
    styles are alike (marketsync's own events).
    """

    seq: int
    id: str
    type: str
    ordering_key: str | None
    body: Mapping[str, Any]
    created_at: datetime
    expanded: Mapping[str, Any] | None = None

    def payload_body(self, payload_style: str) -> dict[str, Any]:
        """Return the body an endpoint taking ``payload_style`` payloads is sent."""
        resources = self.expanded if payload_style == "expanded" and self.expanded else {}
        return {"id": self.id, "created_at": iso(self.created_at), "payload_style": payload_style,
                **self.body, **resources}


@dataclass(frozen=True)
class Delivery:
    """One event to one endpoint, and what its attempts so far answered."""

    id: int
    endpoint_id: str
    event_seq: int
    ordering_key: str | None
    status: str  # pending | delivered | failed
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


def check_event_types(types: Any, field: str = "enabled_event_types") -> tuple[str, ...] | None:
    """Return ``types`` as a tuple of known event types (None: every type), or raise InvalidInput naming ``field``."""
    if types is None:
        return None
    if not isinstance(types, (list, tuple)) or not all(isinstance(t, str) for t in types):
        raise InvalidInput(f"{field}: must be a list of event types or null", field=field)
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput(f"{field}: unknown event type(s) {', '.join(unknown)}", field=field)
    return tuple(dict.fromkeys(types))
