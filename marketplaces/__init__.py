"""Marketplace adapters behind one interface (``marketplaces.base``), and their emulators.

One package per marketplace (``aws``, ``azure``, ``gcp``): its adapter and ``build_*_adapter``,
its sync ``RULES``, and its ``lifecycle`` hooks. ``rules(name)`` and ``lifecycle_hooks(name)``
find them by name, so the worker never branches on one.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from marketplaces.base import Marketplace, MarketplaceRules

__all__ = ["NAMES", "lifecycle_hooks", "rules"]

NAMES = tuple(m.value for m in Marketplace)


def _package(marketplace: str | Marketplace) -> ModuleType:
    return importlib.import_module(f"marketplaces.{Marketplace(marketplace).value}")


def rules(marketplace: str | Marketplace) -> MarketplaceRules:
    """Return the sync rules of ``marketplace`` (aws, azure, gcp)."""
    return _package(marketplace).RULES


def lifecycle_hooks(source: str | Marketplace) -> ModuleType | None:
    """Return the lifecycle hooks module of a marketplace (None for any other event source)."""
    if source not in NAMES and not isinstance(source, Marketplace):
        return None
    return importlib.import_module(f"marketplaces.{Marketplace(source).value}.lifecycle")
