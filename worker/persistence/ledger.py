"""The usage ledger and per-contract sync state.

Every outbound report is a ledger row, unique on (contract, dimension, hour stamp), written as
``pending`` before it is sent and never changed in quantity afterwards, so a resend is always
identical. ``DimensionSyncRow`` holds the units counted as reported in the current period per
contract and dimension; ``ContractSyncRow`` their sum over the listing's dimensions, and the
version every change of either bumps (compare-and-swap): two processes can never both report
the same units.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class LedgerRow(SQLModel, table=True):
    __tablename__ = "usage_ledger"
    __table_args__ = (
        UniqueConstraint("contract_id", "dimension", "hour", name="uq_ledger_contract_dimension_hour"),
        Index("ix_ledger_status_marketplace", "status", "marketplace"),
        Index("ix_ledger_contract_period", "contract_id", "period_start"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(max_length=255, unique=True)  # contract:dimension:hour — what the marketplace dedupes on
    contract_id: str = Field(max_length=40)
    marketplace: str = Field(max_length=16)
    product: str = Field(default="", max_length=255)
    dimension: str = Field(max_length=255)
    hour: datetime
    period_start: datetime
    quantity: int
    kind: str = Field(default="hourly", max_length=16)  # hourly, zero, final
    cost_to_date: str = Field(default="0", sa_column=Column(Text, nullable=False, default="0"))
    units_total: int = Field(default=0)  # units computed for the period when this row was written
    # The dimension's unit price the units were computed at (a decimal as text): an expired report's
    # amount is quantity x unit price. None on rows written before migration sync_0006.
    unit_price: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    # The quantity split over tag combinations (docs/marketplaces.md §1.12): [{"tags": [[key, value], ...],
    # "quantity": n}], summing to ``quantity``. None: the record carries no allocations.
    allocations: Optional[list[dict[str, Any]]] = Field(default=None, sa_column=Column(JSON, nullable=True))
    status: str = Field(default="pending", max_length=16)  # a worker.statuses.LedgerStatus
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    marketplace_record_id: Optional[str] = Field(default=None, max_length=255)
    attempts: int = Field(default=0)
    claim_token: Optional[str] = Field(default=None, max_length=40)
    claimed_at: Optional[datetime] = Field(default=None)
    # A pending report the marketplace answered "not active" (Azure ResourceNotActive) waits until
    # then before it is sent again (or until its contract is reinstated, which clears it).
    held_until: Optional[datetime] = Field(default=None)
    created_at: datetime
    sent_at: Optional[datetime] = Field(default=None)
    settled_at: Optional[datetime] = Field(default=None)


class DimensionSyncRow(SQLModel, table=True):
    __tablename__ = "contract_dimension_sync"

    contract_id: str = Field(primary_key=True, max_length=40)
    dimension: str = Field(primary_key=True, max_length=255)
    period_start: Optional[datetime] = Field(default=None)
    units_reported: int = Field(default=0)  # pending + accepted + duplicate units of the period
    over_reported: int = Field(default=0)
    last_cost: str = Field(default="0", sa_column=Column(Text, nullable=False, default="0"))
    last_units_total: int = Field(default=0)
    # Units counted per tag combination (its key -> units) when the listing allocates usage; None otherwise.
    allocated: Optional[dict[str, int]] = Field(default=None, sa_column=Column(JSON, nullable=True))


class ContractSyncRow(SQLModel, table=True):
    __tablename__ = "contract_sync"

    contract_id: str = Field(primary_key=True, max_length=40)
    version: int = Field(default=0)
    period_start: Optional[datetime] = Field(default=None)
    # Sums over the listing's dimensions (each dimension's own are DimensionSyncRow).
    units_reported: int = Field(default=0)  # pending + accepted + duplicate units of the period
    over_reported: int = Field(default=0)  # units reported beyond what the cost now gives
    last_cost: str = Field(default="0", sa_column=Column(Text, nullable=False, default="0"))
    last_units_total: int = Field(default=0)
    last_run_at: Optional[datetime] = Field(default=None)
    last_outcome: str = Field(default="", max_length=32)
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    deadline_at: Optional[datetime] = Field(default=None)  # cancellation: final report due by
    alerted_at: Optional[datetime] = Field(default=None)
    # Usage that arrived after the contract's cancellation time: kept, but billed nowhere.
    unbillable_events: int = Field(default=0)
    unbillable_checked_at: Optional[datetime] = Field(default=None)
