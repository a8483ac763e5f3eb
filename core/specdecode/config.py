"""SpeculativeConfig: what to speculate with, validated when it is built.

Field names follow vLLM's ``speculative_config`` where they mean the same thing, so one config travels to a serving
engine unchanged (:meth:`SpeculativeConfig.to_vllm`). ``model`` is accepted as an alias of ``draft_model``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import ConfigError, invalid

ACCEPTANCE_METHODS = ("rejection_sampler", "typical_acceptance_sampler")
SCHEDULES = ("auto", "constant", "heuristic", "cost_model")
DEFAULT_PROMPT_LOOKUP = (2, 5)  # (min, max) when neither is given; vLLM uses 5/5, short matches pay on small models
_VLLM_ALIASES = {"model": "draft_model"}


def _positive_int(field: str, value: object, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(field, value, f"an integer >= {minimum}" + (" or null" if allow_none else ""))


def _probability(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise invalid(field, value, "a number in (0, 1]")


@attrs.frozen(kw_only=True)
class SpeculativeConfig:
    """How to speculate. Build it with keyword arguments, :meth:`from_dict` or :meth:`from_json`.

    Example::

        SpeculativeConfig(method="ngram", num_speculative_tokens=5, prompt_lookup_max=4)
    """

    method: str = "ngram"
    num_speculative_tokens: int = 5
    draft_model: Any = None  # a path, an embedded model name, or a loaded model object
    prompt_lookup_min: int | None = None
    prompt_lookup_max: int | None = None
    acceptance_method: str = "rejection_sampler"
    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3
    speculation_schedule: str = "auto"
    disable_by_batch_size: int | None = None
    num_speculative_tokens_per_batch_size: tuple[tuple[int, int, int], ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(tuple(r) for r in v)
    )
    method_options: Mapping[str, Any] = attrs.field(factory=dict, converter=lambda v: dict(v or {}))
    # The plugin's validated options object (an instance of its options class), built from ``method_options``.
    options: Any = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise invalid("method", self.method, "the name of an installed speculation method")
        _positive_int("num_speculative_tokens", self.num_speculative_tokens)
        _positive_int("prompt_lookup_min", self.prompt_lookup_min, allow_none=True)
        _positive_int("prompt_lookup_max", self.prompt_lookup_max, allow_none=True)
        lo, hi = self.prompt_lookup_window
        if lo > hi:
            raise ConfigError(
                f"'prompt_lookup_min' must be <= 'prompt_lookup_max' (got min={lo}, max={hi})",
                field="prompt_lookup_min",
                value=lo,
            )
        if self.acceptance_method not in ACCEPTANCE_METHODS:
            raise invalid("acceptance_method", self.acceptance_method, "one of " + ", ".join(ACCEPTANCE_METHODS))
        _probability("posterior_threshold", self.posterior_threshold)
        _probability("posterior_alpha", self.posterior_alpha)
        if self.speculation_schedule not in SCHEDULES:
            raise invalid("speculation_schedule", self.speculation_schedule, "one of " + ", ".join(SCHEDULES))
        _positive_int("disable_by_batch_size", self.disable_by_batch_size, allow_none=True)
        self._check_batch_size_ranges()
        if self.draft_model is not None and not isinstance(self.draft_model, (str, os.PathLike)):
            if not hasattr(self.draft_model, "forward"):
                raise invalid("draft_model", self.draft_model, "a path, an embedded model name or a loaded model")

        from .registry import get_method  # late: building the registry imports plugins

        spec = get_method(self.method).spec
        object.__setattr__(self, "options", _build_options(self.method, spec.options_class, self.method_options))
        if spec.needs_draft_model and self.draft_model is None:
            raise ConfigError(
                f"'draft_model' is required by method {self.method!r} (got None); "
                "give a local model directory, a .gguf file or an embedded model name",
                field="draft_model",
                value=None,
            )

    def _check_batch_size_ranges(self) -> None:
        ranges = self.num_speculative_tokens_per_batch_size
        if ranges is None:
            return
        for r in ranges:
            ok = len(r) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
            if not ok or r[0] < 1 or r[1] < r[0] or r[2] < 0:
                raise invalid(
                    "num_speculative_tokens_per_batch_size",
                    [list(x) for x in ranges],
                    "a list of [batch_lo, batch_hi, K] with 1 <= batch_lo <= batch_hi and K >= 0",
                )

    # -- derived values ------------------------------------------------------------------------------------
    @property
    def prompt_lookup_window(self) -> tuple[int, int]:
        """(min, max) n-gram sizes. As in vLLM, when only one is given the other mirrors it."""
        lo, hi = self.prompt_lookup_min, self.prompt_lookup_max
        if lo is None and hi is None:
            return DEFAULT_PROMPT_LOOKUP
        if lo is None:
            return (min(DEFAULT_PROMPT_LOOKUP[0], hi), hi)  # type: ignore[type-var,return-value]
        if hi is None:
            return (lo, lo)
        return (lo, hi)

    def num_tokens_for_batch(self, batch_size: int) -> int:
        """K for a batch of this size, after ``disable_by_batch_size`` and the per-batch-size ranges."""
        if self.disable_by_batch_size is not None and batch_size > self.disable_by_batch_size:
            return 0
        for lo, hi, k in self.num_speculative_tokens_per_batch_size or ():
            if lo <= batch_size <= hi:
                return k
        return self.num_speculative_tokens

    def max_num_tokens(self) -> int:
        """The most drafts any batch size may ask for (``num_speculative_tokens`` or a per-batch-size K above it)."""
        return max([self.num_speculative_tokens, *(k for _, _, k in self.num_speculative_tokens_per_batch_size or ())])

    # -- constructors and serialisation --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeculativeConfig:
        """Build from a dict in this class's or vLLM's ``speculative_config`` shape.

        Keys of the method's own options class may sit at the top level (as vLLM does) or under
        ``method_options``; any other unknown key is rejected by name.
        """
        if not isinstance(data, Mapping):
            raise invalid("speculative_config", data, "a JSON object / dict")
        fields = {f.name for f in attrs.fields(cls) if f.init}
        kwargs: dict[str, Any] = {}
        options: dict[str, Any] = dict(data.get("method_options") or {})
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key == "method_options":
                continue
            name = _VLLM_ALIASES.get(key, key)
            if name in fields:
                if name in kwargs:
                    raise ConfigError(f"'{name}' is given twice (as '{key}' and its alias)", field=name, value=value)
                kwargs[name] = value
            else:
                extra[key] = value
        if extra:
            from .registry import get_method

            method = kwargs.get("method", "ngram")
            option_fields = _option_fields(get_method(method).spec.options_class)
            for key, value in extra.items():
                if key not in option_fields:
                    allowed = sorted(fields | set(_VLLM_ALIASES) | option_fields)
                    raise ConfigError(
                        f"Unknown key {key!r} in speculative_config (value {value!r}). Allowed keys: "
                        + ", ".join(allowed),
                        field=key,
                        value=value,
                    )
                options[key] = value
        if options:
            kwargs["method_options"] = options
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> SpeculativeConfig:
        """Build from a JSON object string, e.g. vLLM's ``--speculative-config '{"method": "ngram", ...}'``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"speculative_config is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
                f"(got {text!r})",
                field="speculative_config",
                value=text,
            ) from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` turns back into an equal config."""
        out = attrs.asdict(self, filter=lambda a, _: a.init, recurse=False)
        if out["num_speculative_tokens_per_batch_size"] is not None:
            out["num_speculative_tokens_per_batch_size"] = [list(r) for r in out["num_speculative_tokens_per_batch_size"]]
        out["method_options"] = dict(self.method_options)
        if out["draft_model"] is not None and not isinstance(out["draft_model"], str):
            out["draft_model"] = os.fspath(out["draft_model"]) if isinstance(out["draft_model"], os.PathLike) else out["draft_model"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_vllm(self) -> dict[str, Any]:
        """The same settings as a vLLM ``speculative_config`` dict (keys vLLM knows; unset ones left out)."""
        lo, hi = self.prompt_lookup_window
        out: dict[str, Any] = {"method": self.method, "num_speculative_tokens": self.num_speculative_tokens}
        if self.draft_model is not None:
            out["model"] = self.draft_model if isinstance(self.draft_model, str) else os.fspath(self.draft_model)
        if self.method == "ngram":
            out["prompt_lookup_min"], out["prompt_lookup_max"] = lo, hi
        if self.acceptance_method != "rejection_sampler":
            out["acceptance_method"] = self.acceptance_method
            out["posterior_threshold"] = self.posterior_threshold
            out["posterior_alpha"] = self.posterior_alpha
        if self.disable_by_batch_size is not None:
            out["disable_by_batch_size"] = self.disable_by_batch_size
        if self.num_speculative_tokens_per_batch_size is not None:
            out["num_speculative_tokens_per_batch_size"] = [list(r) for r in self.num_speculative_tokens_per_batch_size]
        out.update(self.method_options)
        return out

    def evolve(self, **changes: Any) -> SpeculativeConfig:
        return attrs.evolve(self, **changes)


def _option_fields(options_class: type | None) -> set[str]:
    if options_class is None or not attrs.has(options_class):
        return set()
    return {f.name for f in attrs.fields(options_class) if f.init}


def _build_options(method: str, options_class: type | None, values: Mapping[str, Any]) -> Any:
    if options_class is None:
        if values:
            raise ConfigError(
                f"method {method!r} takes no method_options (got {dict(values)!r})", field="method_options", value=values
            )
        return None
    allowed = _option_fields(options_class)
    for key in values:
        if allowed and key not in allowed:
            raise ConfigError(
                f"Unknown option {key!r} for method {method!r} (value {values[key]!r}). "
                f"Allowed: {', '.join(sorted(allowed)) or 'none'}",
                field=f"method_options.{key}",
                value=values[key],
            )
    try:
        return options_class(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid method_options for {method!r}: {exc}", field="method_options", value=values) from None
