"""Events: ingest, search, amend, deprecate, backfills."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from webhooks.api.common import Body
from webhooks.api.schemas.base import Shape, Query, EventFailure


# --- events ---------------------------------------------------------------------------------------

class NewEvent(BaseModel):
    """One usage event (validated by ``billing_core.events.validate_batch``)."""

    model_config = ConfigDict(extra="forbid")
    idempotency_key: str = Field(min_length=1)
    event_name: str = Field(min_length=1)
    timestamp: datetime
    properties: dict[str, Any]
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None


class IngestBody(Body):
    events: list[NewEvent] = Field(max_length=500)


class IngestQuery(Query):
    debug: Optional[bool] = None
    backfill_id: Optional[str] = None


class IngestDebug(Shape):
    duplicate: list[str]
    ingested: list[str]


class IngestResult(Shape):
    validation_failed: list[EventFailure]
    debug: Optional[IngestDebug] = None


class EventSearch(Body):
    event_ids: list[str] = Field(max_length=500)
    timeframe_start: Optional[datetime] = None
    timeframe_end: Optional[datetime] = None


class EventView(Shape):
    id: str
    customer_id: Optional[str]
    external_customer_id: Optional[str]
    event_name: str
    timestamp: datetime
    deprecated: bool
    properties: dict[str, Any]


class EventList(Shape):
    data: list[EventView]


class EventAmend(Body):
    event_name: str
    properties: dict[str, Any]
    timestamp: datetime
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None


class Amended(Shape):
    amended: str


class Deprecated(Shape):
    deprecated: str


class BackfillCreate(Body):
    timeframe_start: datetime
    timeframe_end: datetime
    customer_id: Optional[str] = None
    external_customer_id: Optional[str] = None
    replace_existing_events: Optional[bool] = None


class Backfill(Shape):
    id: str
    status: Literal["pending", "pending_revert", "reflected", "reverted"]
    created_at: datetime
    timeframe_start: datetime
    timeframe_end: datetime
    customer_id: Optional[str]
    replace_existing_events: bool
    events_ingested: int
    close_time: Optional[datetime]
    reverted_at: Optional[datetime]
    deprecation_filter: None
