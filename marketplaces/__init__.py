"""Marketplace adapters behind one interface (``marketplaces.base``), and their emulators."""

from __future__ import annotations

from marketplaces.base import Marketplace, MarketplaceRules

__all__ = ["rules"]


def rules(marketplace: str | Marketplace) -> MarketplaceRules:
    """Return the sync rules of ``marketplace`` (aws, azure, gcp)."""
    name = Marketplace(marketplace).value
    if name == "aws":
        from marketplaces.aws import RULES
    elif name == "azure":
        from marketplaces.azure import RULES
    else:
        from marketplaces.gcp import RULES
    return RULES
