"""Marketplace-specific steps around applying a contract event.

Each marketplace module may define:

- ``before_apply(runtime, event) -> ContractEvent``: re-read authoritative state (AWS
  GetEntitlements, Google Procurement GET, approvals) and return the event to apply;
- ``after_apply(runtime, event, applied) -> None``: acknowledge what the marketplace expects
  once the change is persisted (Azure operations PATCH, ...).

Raise ``TransientMarketplaceError`` to have the job retried.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from worker.contract_events import ContractEvent

_MODULES = {"aws": "worker.lifecycle.aws", "azure": "worker.lifecycle.azure", "gcp": "worker.lifecycle.gcp"}


def _module(source: str) -> ModuleType | None:
    name = _MODULES.get(source)
    if name is None:
        return None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def before_apply(runtime: Any, event: ContractEvent) -> ContractEvent:
    """Return the event to apply after the marketplace's own checks."""
    module = _module(event.source)
    hook = getattr(module, "before_apply", None) if module else None
    return hook(runtime, event) if hook else event


def after_apply(runtime: Any, event: ContractEvent, applied: Any) -> None:
    """Run the marketplace's acknowledgement once the event is applied."""
    module = _module(event.source)
    hook = getattr(module, "after_apply", None) if module else None
    if hook:
        hook(runtime, event, applied)
