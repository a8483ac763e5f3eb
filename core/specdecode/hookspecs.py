"""Hook specifications: the ways a plugin extends specdecode.

A plugin is a module (or object) with functions marked ``@specdecode.hookimpl`` whose names match the specs below.
It is found through the ``specdecode.proposers`` entry-point group, or registered in code with
:func:`specdecode.register_plugin`. Every hook is documented in docs/plugins/hooks.md
(tests/test_hooks_meta.py checks that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .registry import ProposerSpec

PROJECT_NAME = "specdecode"
ENTRY_POINT_GROUP = "specdecode.proposers"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def specdecode_proposers() -> list[ProposerSpec]:  # type: ignore[empty-body]
    """Return the speculation methods this plugin provides, as a list of :class:`specdecode.ProposerSpec`.

    Called once when the plugin manager is built (listing methods imports nothing heavy: keep imports of
    torch models inside the factory).
    """


@hookspec
def specdecode_register_commands(subparsers: Any) -> None:
    """Add sub-commands to the ``specdecode`` command line.

    ``subparsers`` is the :mod:`argparse` sub-parser action of the top-level parser: call
    ``subparsers.add_parser(name, help=...)`` and ``set_defaults(func=callable)``; the callable receives the parsed
    ``argparse.Namespace`` and returns an exit code.
    """
