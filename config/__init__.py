"""Settings for marketsync: ``Settings.from_env()`` parses and validates them once."""

from config.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError"]
