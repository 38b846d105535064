"""Outbound webhooks and alerts: endpoints (the secret only in the create answer), the delivery
log, alerts (Orb's ``Alert``) and the bodies that create and change them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional

from pydantic import Field

from webhooks.api.schemas.base import CreatedAtQuery, CursorQuery, DecimalInput, Query, Shape

PayloadStyle = Literal["expanded", "standard"]


class WebhookEndpoint(Shape):
    id: str
    created_at: datetime
    enabled: bool
    enabled_event_types: Optional[list[str]]
    payload_style: PayloadStyle
    url: str


class WebhookEndpointWithSecret(WebhookEndpoint):
    """The create answer: the only time the signing secret is shown."""

    secret: str


class WebhookEndpointCreate(Query):
    url: str = Field(min_length=1, max_length=2000)
    enabled_event_types: Optional[list[str]] = None
    payload_style: Optional[PayloadStyle] = None


class WebhookEndpointUpdate(Query):
    url: Optional[str] = Field(default=None, max_length=2000)
    enabled_event_types: Optional[list[str]] = None
    payload_style: Optional[PayloadStyle] = None


class WebhookDelivery(Shape):
    """One event to one endpoint: its attempts, last status code and error, and the event."""

    id: int
    event_id: str
    event_type: str
    event_created_at: datetime
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: Optional[datetime]
    last_attempt_at: Optional[datetime]
    last_status_code: Optional[int]
    last_error: Optional[str]
    delivered_at: Optional[datetime]


class DeliveryQuery(CursorQuery):
    pass


class ThresholdShape(Shape):
    value: float


class ThresholdInput(Query):
    value: DecimalInput | float


class AlertMetric(Shape):
    id: str


class AlertPlan(Shape):
    id: Optional[str]
    external_plan_id: Optional[str]
    name: Optional[str]
    plan_version: str


class AlertCustomer(Shape):
    id: str
    external_customer_id: Optional[str]


class AlertSubscription(Shape):
    id: str


class Alert(Shape):
    id: str
    created_at: datetime
    currency: Optional[str]
    customer: Optional[AlertCustomer]
    enabled: bool
    metric: Optional[AlertMetric]
    plan: Optional[AlertPlan]
    subscription: Optional[AlertSubscription]
    thresholds: Optional[list[ThresholdShape]]
    type: str
    balance_alert_status: Optional[list[dict[str, object]]]
    last_fired_at: Optional[datetime] = Field(description="marketsync: when a threshold of it last fired")


class AlertCreate(Query):
    type: str
    thresholds: Optional[list[ThresholdInput]] = None
    currency: Optional[str] = None
    metric_id: Optional[str] = None
    plan_version: Optional[int] = None


class AlertUpdate(Query):
    thresholds: list[ThresholdInput]


class AlertToggle(Query):
    subscription_id: Optional[str] = None


class AlertQuery(CreatedAtQuery):
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None
    subscription_id: Optional[str] = None
