"""Persistence of the billing core: the only modules with ``table=True`` SQLModel rows."""
