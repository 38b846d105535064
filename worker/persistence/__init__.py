"""Persistence of the sync application (contracts, listings, inbox, usage ledger)."""
