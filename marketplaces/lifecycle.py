"""What a marketplace's lifecycle hooks receive, so they never import the worker.

Each marketplace package has a ``lifecycle`` module with two hooks around applying a contract
event (the worker's ``ContractEvent``, a frozen dataclass the hooks change with
``dataclasses.replace``):

- ``before_apply(context, event) -> event``: re-read authoritative state (AWS GetEntitlements,
  Azure Fulfillment, Google Procurement), approve what the listings allow, and return the event
  to apply;
- ``after_apply(context, event, applied) -> None``: acknowledge what the marketplace expects once
  the change is stored (Azure activation and operation PATCH).

``LifecycleContext`` carries what they need: the marketplace's adapter (built on first use),
``ContractLookup`` (the worker's contract store seen through a port) and a listing lookup.
``TransientMarketplaceError`` propagates so the job is retried; ``PermanentMarketplaceError``
is recorded on the delivery as failed, not retried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Callable, Mapping, Protocol


@dataclass(frozen=True)
class ContractView:
    """A stored contract as the hooks see it."""

    id: str
    external_id: str
    status: str
    mapping_status: str
    cloud_identifiers: Mapping[str, str] = field(default_factory=dict)


class ListingView(Protocol):
    """A listing as the hooks see it."""

    id: str
    approve_entitlements: bool


class ContractLookup(Protocol):
    """The worker's contract store, as far as the lifecycle hooks need it."""

    def find(self, source: str, *, external_id: str | None = None,
             identifier: tuple[str, str] | None = None,
             customer_identifier: str | None = None) -> ContractView | None:
        """Return the oldest contract of ``source`` matching the one criterion given, or None."""
        ...

    def mapping_status(self, contract_id: str | None) -> str:
        """Return the contract's mapping status ("" when there is no such contract)."""
        ...

    def hold(self, *, source: str, contract_key: str, marketplace: str, identifiers: Mapping[str, str],
             plan: str | None, reason: str, at: datetime) -> None:
        """Record a requested contract as pending and unmapped, showing ``reason`` to the operator."""
        ...


class LifecycleContext:
    """The adapter, the contract store and the listing lookup of one marketplace's hooks."""

    def __init__(self, *, adapter: Callable[[], Any], contracts: ContractLookup,
                 find_listing: Callable[[Mapping[str, str], str | None], ListingView | None]):
        self._build_adapter = adapter
        self.contracts = contracts
        self.find_listing = find_listing

    @cached_property
    def adapter(self) -> Any:
        """Return the marketplace adapter (built when a hook first needs it)."""
        return self._build_adapter()
