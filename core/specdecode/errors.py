"""Exceptions raised by specdecode.

Every message says who (the field or plugin), what (the value) and how to fix it (what is allowed).
"""

from __future__ import annotations


class SpecDecodeError(Exception):
    """Base class of every error specdecode raises on purpose."""


class ConfigError(SpecDecodeError, ValueError):
    """A configuration value is invalid. ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None, value: object = None):
        super().__init__(message)
        self.field = field
        self.value = value


class PluginError(SpecDecodeError):
    """A plugin could not be loaded, or two plugins claim the same method name."""


class UnknownMethodError(ConfigError):
    """The requested speculation method is not provided by any installed plugin."""


def invalid(field: str, value: object, allowed: str) -> ConfigError:
    """Build the standard message: ``'field' must be <allowed> (got <value>)``."""
    return ConfigError(f"'{field}' must be {allowed} (got {value!r})", field=field, value=value)
