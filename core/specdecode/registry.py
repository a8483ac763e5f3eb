"""Plugin discovery and the method registry.

Methods are provided by plugins through the ``specdecode_proposers`` hook; plugins are found through the
``specdecode.proposers`` entry-point group. The core never imports a plugin by name.

Environment switches:

* ``SPECDECODE_DISABLE_PLUGINS``: comma-separated distribution or entry-point names that are not loaded.
* ``SPECDECODE_LOAD_PLUGINS``: if set, only these (comma-separated) distribution or entry-point names are loaded.
* ``SPECDECODE_STRICT_PLUGINS=1``: a plugin that fails to load is an error instead of a warning (use it in CI).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import PluginError, UnknownMethodError

IN_CODE = "<registered in code>"


@attrs.frozen(kw_only=True)
class ProposerSpec:
    """One speculation method, as a plugin declares it.

    ``factory(target_model, config, options)`` builds a :class:`specdecode.Proposer` for one generation.
    ``options_class`` is an attrs class (keyword arguments only) that validates the method's own options;
    ``None`` means the method takes none.
    """

    name: str
    factory: Callable[..., Any]
    options_class: type | None = None
    description: str = ""
    needs_draft_model: bool = False


@attrs.frozen(kw_only=True)
class MethodInfo:
    """A registered method and where it came from (what :func:`available_methods` returns)."""

    name: str
    distribution: str
    version: str
    description: str
    plugin: str  # the plugin's registered name
    location: str  # the file the plugin module was loaded from
    spec: ProposerSpec = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class PluginFailure:
    name: str
    distribution: str
    error: str


class _Registry:
    """A plugin manager plus the method table built from it. One is cached per process."""

    def __init__(self, load_entry_points: bool = True, strict: bool | None = None):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.strict = _env_flag("SPECDECODE_STRICT_PLUGINS") if strict is None else strict
        self._dist_of: dict[str, tuple[str, str]] = {}
        self._methods: dict[str, MethodInfo] | None = None
        if load_entry_points:
            self._load_entry_points()
        self.pm.check_pending()

    # -- loading -------------------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        only = _env_list("SPECDECODE_LOAD_PLUGINS")
        blocked = _env_list("SPECDECODE_DISABLE_PLUGINS") or set()
        for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
            version = ep.dist.version if ep.dist is not None else "?"
            names = {ep.name, dist, _normalize(ep.name), _normalize(dist)}
            if blocked & names or (only is not None and not only & names):
                continue
            if self.pm.has_plugin(ep.name):
                continue  # the same distribution found twice on sys.path
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken third-party plugin must not break the others
                message = (
                    f"specdecode plugin '{ep.name}' from distribution '{dist}' {version} failed to load: "
                    f"{type(exc).__name__}: {exc}"
                )
                if self.strict:
                    raise PluginError(message + " (strict mode: SPECDECODE_STRICT_PLUGINS=1)") from exc
                warnings.warn(message + "; skipping it.", RuntimeWarning, stacklevel=3)
                self.failures.append(PluginFailure(name=ep.name, distribution=dist, error=str(exc)))
                continue
            self._dist_of[ep.name] = (dist, version)

    def register(self, plugin: object, name: str | None = None) -> str:
        registered = self.pm.register(plugin, name=name)
        if registered is None:
            raise PluginError(f"plugin {name or plugin!r} is already registered or blocked")
        self.pm.check_pending()
        self._methods = None
        return registered

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._methods = None

    # -- the method table ----------------------------------------------------------------------------------
    def methods(self) -> dict[str, MethodInfo]:
        if self._methods is None:
            self._methods = self._collect()
        return self._methods

    def _collect(self) -> dict[str, MethodInfo]:
        table: dict[str, MethodInfo] = {}
        for impl in self.pm.hook.specdecode_proposers.get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            dist, version = self._dist_of.get(plugin_name, (IN_CODE, ""))
            try:  # one plugin at a time, so a broken one is reported by name and the others still count
                specs = [spec for result in self.call_one(plugin_name, "specdecode_proposers") for spec in result or []]
            except Exception as exc:
                message = f"specdecode plugin '{plugin_name}' ({dist}) raised in specdecode_proposers: {exc}"
                if self.strict:
                    raise PluginError(message) from exc
                warnings.warn(message + "; skipping it.", RuntimeWarning, stacklevel=3)
                self.failures.append(PluginFailure(name=plugin_name, distribution=dist, error=str(exc)))
                continue
            location = getattr(impl.plugin, "__file__", None) or repr(impl.plugin)
            for spec in specs:
                if not isinstance(spec, ProposerSpec):
                    raise PluginError(
                        f"plugin '{plugin_name}' ({dist}) returned {spec!r} from specdecode_proposers; "
                        "expected specdecode.ProposerSpec records"
                    )
                if spec.name in table:
                    other = table[spec.name]
                    raise PluginError(
                        f"Speculation method '{spec.name}' is provided by two plugins: "
                        f"'{other.plugin}' (distribution {other.distribution}) and '{plugin_name}' "
                        f"(distribution {dist}). Uninstall one, or block one with SPECDECODE_DISABLE_PLUGINS."
                    )
                table[spec.name] = MethodInfo(
                    name=spec.name,
                    distribution=dist,
                    version=version,
                    description=spec.description,
                    plugin=plugin_name,
                    location=str(location),
                    spec=spec,
                )
        return dict(sorted(table.items()))

    def call_one(self, plugin_name: str, hook: str, **kwargs: Any) -> list[Any]:
        """Call ``hook`` of one plugin only, through the plugin manager (a subset hook caller)."""
        others = [p for name, p in self.pm.list_name_plugin() if name != plugin_name]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs)

    def get(self, name: str) -> MethodInfo:
        table = self.methods()
        if name in table:
            return table[name]
        installed = ", ".join(table) or "none (install a plugin such as specdecode-ngram)"
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownMethodError(
            f"Unknown speculation method {name!r}. Installed: {installed}.{hint}", field="method", value=name
        )


_REGISTRY: _Registry | None = None


def get_registry() -> _Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _Registry()
    return _REGISTRY


def get_plugin_manager() -> pluggy.PluginManager:
    return get_registry().pm


def reset_registry() -> None:
    """Forget the cached registry (after installing a plugin in the same process, or in tests)."""
    global _REGISTRY
    _REGISTRY = None


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object or module in code (tests, notebooks). Returns its registered name."""
    return get_registry().register(plugin, name=name)


def unregister_plugin(name: str) -> None:
    get_registry().unregister(name)


def available_methods() -> list[MethodInfo]:
    """Installed speculation methods, sorted by name, with their distribution and version."""
    return list(get_registry().methods().values())


def get_method(name: str) -> MethodInfo:
    """Look a method up by name; an unknown name raises :class:`UnknownMethodError` listing the installed ones."""
    return get_registry().get(name)


def plugin_failures() -> list[PluginFailure]:
    return list(get_registry().failures)


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {_normalize(x) for x in raw.split(",") if x.strip()} | {x.strip() for x in raw.split(",") if x.strip()}


def _env_flag(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")
