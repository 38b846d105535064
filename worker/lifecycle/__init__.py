"""Run a marketplace's lifecycle hooks around applying a contract event.

The hooks live with their marketplace (``marketplaces.<name>.lifecycle``, found through
``marketplaces.lifecycle_hooks``); this module gives them their ``LifecycleContext``: the adapter
from the runtime, the contract store (``SqlContractLookup``) and the listing lookup. Events of
the normalized webhook (source ``contracts``) have no hooks.

``TransientMarketplaceError`` propagates so the job is retried; a ``PermanentMarketplaceError``
is recorded on the delivery as failed and not retried (``worker.delivery.process``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from marketplaces import lifecycle_hooks
from marketplaces.lifecycle import ContractView, LifecycleContext
from worker.contract_events import ContractEvent
from worker.contracts import _COLUMN_IDENTIFIERS, find_listing, new_id
from worker.persistence.contracts import ContractRow, ListingRow


def before_apply(runtime: Any, event: ContractEvent) -> ContractEvent:
    """Return the event to apply after the marketplace's own checks."""
    hooks = lifecycle_hooks(event.source)
    hook = getattr(hooks, "before_apply", None)
    return hook(context(runtime, event.source), event) if hook else event


def after_apply(runtime: Any, event: ContractEvent, applied: Any) -> None:
    """Run the marketplace's acknowledgement once the event is applied."""
    hooks = lifecycle_hooks(event.source)
    hook = getattr(hooks, "after_apply", None)
    if hook:
        hook(context(runtime, event.source), event, applied)


def context(runtime: Any, marketplace: str) -> LifecycleContext:
    """Return what ``marketplace``'s hooks need: its adapter, the contracts and the listings."""
    engine = runtime.engine

    def listing(identifiers: Mapping[str, str], plan: str | None) -> ListingRow | None:
        with Session(engine, expire_on_commit=False) as session:
            return find_listing(session, marketplace, identifiers, plan)

    return LifecycleContext(adapter=lambda: runtime.adapter(marketplace), contracts=SqlContractLookup(engine),
                            find_listing=listing)


class SqlContractLookup:
    """The contract store as the lifecycle hooks see it (``marketplaces.lifecycle.ContractLookup``)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def find(self, source: str, *, external_id: str | None = None, identifier: tuple[str, str] | None = None,
             customer_identifier: str | None = None) -> ContractView | None:
        """Return the oldest contract of ``source`` matching the one criterion given, or None."""
        if external_id is not None:
            condition: Any = ContractRow.external_id == external_id
        elif identifier is not None:
            condition = ContractRow.cloud_identifiers[identifier[0]].as_string() == identifier[1]
        elif customer_identifier is not None:
            condition = ContractRow.customer_identifier == customer_identifier
        else:
            raise ValueError("find needs external_id, identifier or customer_identifier")
        query = select(ContractRow).where(ContractRow.source == source, condition).order_by(ContractRow.created_at)
        with Session(self.engine) as session:
            row = session.execute(query).scalars().first()
            return _view(row) if row is not None else None

    def mapping_status(self, contract_id: str | None) -> str:
        """Return the contract's mapping status ("" when there is no such contract)."""
        if not contract_id:
            return ""
        with Session(self.engine) as session:
            row = session.get(ContractRow, contract_id)
            return row.mapping_status if row is not None else ""

    def hold(self, *, source: str, contract_key: str, marketplace: str, identifiers: Mapping[str, str],
             plan: str | None, reason: str, at: datetime) -> None:
        """Record a requested contract as pending and unmapped, showing ``reason`` to the operator."""
        for _ in range(2):  # a concurrent worker may insert the same contract: then update theirs
            with Session(self.engine, expire_on_commit=False) as session:
                row = session.execute(
                    select(ContractRow).where(ContractRow.source == source, ContractRow.external_id == contract_key)
                ).scalars().first()
                if row is not None and (row.status != "pending" or row.mapping_status == "mapped"):
                    return  # activated or mapped meanwhile: nothing to hold
                if row is None:
                    row = ContractRow(id=new_id("ctr"), source=source, external_id=contract_key,
                                      marketplace=marketplace, status="pending", created_at=at, updated_at=at)
                merged = dict(row.cloud_identifiers or {})
                merged.update({k: v for k, v in identifiers.items() if v})
                row.cloud_identifiers = merged
                for name in _COLUMN_IDENTIFIERS:
                    if merged.get(name):
                        setattr(row, name, merged[name])
                row.plan_id = plan
                row.mapping_status, row.mapping_reason = "unmapped", reason
                row.updated_at = at
                session.add(row)
                try:
                    session.commit()
                    return
                except IntegrityError:
                    session.rollback()


def _view(row: ContractRow) -> ContractView:
    return ContractView(id=row.id, external_id=row.external_id, status=row.status,
                        mapping_status=row.mapping_status, cloud_identifiers=dict(row.cloud_identifiers or {}))
