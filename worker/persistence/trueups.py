"""Manual true-ups: one row per adjustment applied, unique on its key, pointing at the ledger row it wrote.

The key (``worker/trueups.py``, ``adjustment_key``) is a digest of the adjustment's contract,
dimension, units and reason: the unique constraint is what makes a file applied twice, or by two
operators at once, report each adjustment once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel


class TrueupRow(SQLModel, table=True):
    __tablename__ = "trueups"

    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(max_length=64, unique=True)  # sha256 of contract, dimension, units, reason
    contract_id: str = Field(max_length=40, index=True)
    dimension: str = Field(max_length=255)
    units: int
    reason: str = Field(sa_column=Column(Text, nullable=False))
    ledger_id: int  # the pending ledger row (kind "trueup") that reports the units
    file_digest: str = Field(max_length=64)  # the file it came from, and its line there
    line: int
    created_at: datetime
