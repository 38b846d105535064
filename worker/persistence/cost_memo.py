"""The cost memo: each contract's cost to date as the last hourly run computed it, and what it rested on.

A derived value, never the truth: ``worker/cost_memo.py`` uses a row only when the billing core
proves nothing it depends on changed, and dropping the table loses nothing (the next run
computes every contract again).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


class CostMemoRow(SQLModel, table=True):
    __tablename__ = "contract_cost_memo"

    contract_id: str = Field(primary_key=True, max_length=40)
    # What the cost depends on besides usage (subscription revision, listing and contract
    # versions, window start, price structure), as one digest: another digest, another cost.
    basis: str = Field(max_length=64)
    position: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # change-log watermark read first
    window_end: datetime  # the cost is of [window start, window_end)
    event_names: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # JSON list: what the usage reads
    costs: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # JSON {dimension: exact decimal text}
    computed_at: datetime


cost_memo_table: sa.Table = CostMemoRow.__table__  # type: ignore[attr-defined]
