"""Registering plugins in tests without leaking them into the next test."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from ..registry import register_plugin, reset_registry, unregister_plugin

PLUGIN_ENV_VARS = ("SPECDECODE_DISABLE_PLUGINS", "SPECDECODE_LOAD_PLUGINS", "SPECDECODE_STRICT_PLUGINS")


@contextlib.contextmanager
def registered_plugin(plugin: object, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` (a module or object with ``@specdecode.hookimpl`` functions) for the ``with`` block.

    Yields the registered name; the plugin is unregistered afterwards, even when the block raises.
    """
    registered = register_plugin(plugin, name=name)
    try:
        yield registered
    finally:
        unregister_plugin(registered)


@contextlib.contextmanager
def fresh_registry(env: Mapping[str, str | None] | None = None) -> Iterator[None]:
    """Rebuild the plugin registry from entry points under the given plugin environment variables.

    ``env`` maps ``SPECDECODE_*`` variables to values (None unsets one). The variables and the cached registry
    are restored afterwards, so later tests see the usual plugins again.
    """
    saved = {var: os.environ.get(var) for var in PLUGIN_ENV_VARS}
    try:
        for var, value in (env or {}).items():
            if var not in PLUGIN_ENV_VARS:
                raise ValueError(f"'env' may set only {', '.join(PLUGIN_ENV_VARS)} (got {var!r})")
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        reset_registry()
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        reset_registry()


def run_cli(argv: list[str]) -> int:
    """Run the ``specdecode`` command line in this process (with every command plugins add) and return its exit
    status, as the console script would; output goes to this process's stdout and stderr (capsys sees it)."""
    from ..cli import main

    return main(argv)
