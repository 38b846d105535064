"""Plan migrations: the request, Orb's migration object with our counts, outcomes, and the dry run."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional, Union

from pydantic import Field

from webhooks.api.common import Body
from webhooks.api.schemas.base import CursorQuery, Money, Shape

EffectiveTimeValue = Union[datetime, Literal["end_of_invoice", "end_of_term"]]
MigrationStatus = Literal["not_started", "in_progress", "completed", "action_needed", "canceled"]
OutcomeName = Literal["pending", "migrated", "conflict", "skipped", "reverted", "kept", "canceled"]


class PlanMigrationCreate(Body):
    to_version: int = Field(ge=1)
    from_versions: Optional[list[int]] = None
    subscription_ids: Optional[list[str]] = None
    effective_time: Optional[EffectiveTimeValue] = None
    overrides: Optional[Literal["keep", "replace"]] = None
    dry_run: Optional[bool] = None


class MigrationCounts(Shape):
    total: int
    migrated: int
    conflicts: int
    skipped: int
    pending: int
    reverted: int
    to_revert: int = Field(description="edits a cancel still owes a revert (RQ jobs are reverting them)")
    kept: int = Field(description="edits a cancel could not revert (each outcome's reasons say why)")
    canceled: int


class PlanMigration(Shape):
    """Orb's migration object (id, plan_id, effective_time, status) with our fields."""

    id: str
    plan_id: str
    effective_time: EffectiveTimeValue
    status: MigrationStatus
    to_version: int
    from_versions: list[int]
    overrides: Literal["keep", "replace"]
    created_at: datetime
    canceled_at: Optional[datetime]
    counts: MigrationCounts


class MigrationOutcome(Shape):
    subscription_id: str
    outcome: OutcomeName
    effective_time: Optional[datetime]
    reasons: list[str]


class PlanMigrationDetail(PlanMigration):
    subscriptions: list[MigrationOutcome]


class DryRunLine(Shape):
    subscription_id: str
    outcome: Literal["migrated", "conflict", "skipped"]
    effective_time: Optional[datetime]
    reasons: list[str]
    old_total: Money
    new_total: Money
    difference: Money


class DryRunTotals(Shape):
    old_total: Money
    new_total: Money
    difference: Money


class PlanMigrationDryRun(Shape):
    dry_run: Literal[True]
    plan_id: str
    to_version: int
    effective_time: EffectiveTimeValue
    currency: str
    subscriptions: list[DryRunLine]
    totals: DryRunTotals


class MigrationQuery(CursorQuery):
    pass
