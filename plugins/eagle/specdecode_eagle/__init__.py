"""EAGLE for specdecode: a one-layer draft head over the target's own hidden states.

    specdecode.generate(model, ids, {"method": "eagle", "num_speculative_tokens": 5})  # SmolLM2-135M: built-in head
    specdecode.generate(model, ids, {"method": "eagle", "model": "path/to/head"})      # any other head (vLLM's key)

The head comes from ``method_options={"head": PATH}`` or the config's ``draft_model`` / ``model`` (a directory in the
specdecode-eagle or the EAGLE authors' format); with neither, the head shipped in this package is used when the target
is SmolLM2-135M-Instruct. Train a head with ``specdecode train-eagle`` or ``python -m specdecode_eagle.train``.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import attrs
import specdecode
from specdecode import ConfigError, ProposerSpec

SHIPPED_HEADS = Path(__file__).parent / "heads"
# The shipped head, and the target shape it was trained for (a target with this exact shape gets it by default).
SMOLLM2_HEAD = SHIPPED_HEADS / "smollm2-135m-instruct"
SMOLLM2_SHAPE = {
    "model_type": "llama",
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
}


def _optional_path(field: str):
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"'{field}' must be a path or null (got {value!r})", field=field, value=value)

    return check


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _non_negative(field: str):
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if not _number(value) or value < 0:
            raise ConfigError(f"'{field}' must be a number >= 0 (got {value!r})", field=field, value=value)

    return check


def _optional_non_negative(field: str):
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None and (not _number(value) or value < 0):
            raise ConfigError(f"'{field}' must be a number >= 0 or null (got {value!r})", field=field, value=value)

    return check


def _ratio(field: str):
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None and (not _number(value) or not 0.0 < value <= 2.0):
            raise ConfigError(
                f"'{field}' must be a number in (0, 2] or null (got {value!r})", field=field, value=value
            )

    return check


def _count(field: str, minimum: int = 0):
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"'{field}' must be an integer >= {minimum} (got {value!r})", field=field, value=value)

    return check


@attrs.frozen(kw_only=True)
class EagleOptions:
    """Options of ``method="eagle"``.

    ``head``: directory of a draft head (specdecode-eagle or EAGLE authors' format); the config's ``draft_model``
    is accepted too. ``use_draft_vocab``: score only the head's draft vocabulary when it has one (faster drafts);
    False scores the full vocabulary.

    Back-off (see specdecode_eagle/proposer.py): with ``adaptive`` (the default) each step drafts only as deep as
    the head's calibrated confidence says pays for itself, possibly nothing, and a head whose drafts keep failing is
    run less and less often (at most every ``max_skip`` + 1 steps). ``adaptive=False`` drafts exactly K tokens
    every step (for measuring raw acceptance). Costs are relative to one plain decode step of the target: a draft
    step costs ``draft_cost``, a verify pass over k drafts ``1 + cost_jump + cost_per_token * k`` (None: the
    core's curve for the device and linear kernel in use, ``specdecode.kernels.verify_cost``). ``confidence_prior``: the acceptance
    chance per unit of head confidence assumed before this generation's verify results correct it (None: the
    ratios train-eagle measured for the head, stored in its eagle_head.json; 0.7 for a head without them).
    """

    head: str | None = attrs.field(default=None, validator=_optional_path("method_options.head"))
    use_draft_vocab: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    adaptive: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    draft_cost: float = attrs.field(default=0.08, validator=_non_negative("method_options.draft_cost"))
    cost_jump: float | None = attrs.field(default=None, validator=_optional_non_negative("method_options.cost_jump"))
    cost_per_token: float | None = attrs.field(
        default=None, validator=_optional_non_negative("method_options.cost_per_token")
    )
    confidence_prior: float | None = attrs.field(default=None, validator=_ratio("method_options.confidence_prior"))
    max_skip: int = attrs.field(default=16, validator=_count("method_options.max_skip"))
    tree_width: int = attrs.field(default=2, validator=_count("method_options.tree_width", 1))
    tree_nodes: int = attrs.field(default=8, validator=_count("method_options.tree_nodes", 1))


def default_head_path(target: Any) -> Path:
    """The shipped head when ``target`` has SmolLM2-135M's shape; otherwise a ConfigError saying what to pass."""
    config = target.config
    shape = {key: getattr(config, key, None) for key in SMOLLM2_SHAPE}
    if shape == SMOLLM2_SHAPE:
        return SMOLLM2_HEAD
    raise ConfigError(
        "method 'eagle' needs a draft head trained for this target: the built-in head fits SmolLM2-135M-Instruct "
        f"only ({SMOLLM2_SHAPE}), this target has {shape}. Give method_options={{'head': PATH}} or "
        "draft_model=PATH (a specdecode-eagle or EAGLE-format head directory), or train one with "
        "`specdecode train-eagle --target MODEL`",
        field="method_options.head",
        value=None,
    )


# Loaded heads per target model, so repeated generate() calls do not re-read the file.
_DRAFTERS: weakref.WeakKeyDictionary[Any, dict[tuple[str, bool], Any]] = weakref.WeakKeyDictionary()


def load_drafter(target: Any, head_path: str | os.PathLike | None = None, use_draft_vocab: bool = True) -> Any:
    """An :class:`~specdecode_eagle.head.EagleDrafter` for ``target`` (cached per target and head path)."""
    from .checkpoint import check_fits_target, load_head
    from .head import EagleDrafter

    path = Path(head_path).expanduser() if head_path is not None else default_head_path(target)
    key = (str(path.resolve()), use_draft_vocab)
    per_target = _DRAFTERS.setdefault(target, {})
    if key not in per_target:
        dtype = target.get_input_embeddings().weight.dtype
        checkpoint = load_head(path, dtype=dtype)
        check_fits_target(checkpoint, target)
        head = checkpoint.head.to(target.get_input_embeddings().weight.device)
        vocab = checkpoint.draft_vocab if use_draft_vocab else None
        drafter = EagleDrafter(head, target, vocab)
        ratios = (checkpoint.meta.get("calibration") or {}).get("ratio_per_position")
        if ratios and (use_draft_vocab or checkpoint.draft_vocab is None):  # measured over this vocabulary
            drafter.calibration = [float(r) for r in ratios]
        per_target[key] = drafter
    return per_target[key]


def _factory(model: Any, config: specdecode.SpeculativeConfig, options: EagleOptions) -> Any:
    from .proposer import EagleProposer

    head = options.head
    draft = config.draft_model
    if draft is not None and not isinstance(draft, (str, os.PathLike)):
        raise ConfigError(
            f"method 'eagle' takes a head directory as draft_model, not a loaded model (got {type(draft).__name__})",
            field="draft_model",
            value=draft,
        )
    if head is not None and draft is not None and os.fspath(head) != os.fspath(draft):
        raise ConfigError(
            f"method 'eagle' got two heads: method_options.head={os.fspath(head)!r} and "
            f"draft_model={os.fspath(draft)!r}; give one",
            field="method_options.head",
            value=head,
        )
    drafter = load_drafter(model, head if head is not None else draft, options.use_draft_vocab)
    return EagleProposer(drafter, options, trees_when_sampling=config.acceptance_method == "rejection_sampler")


@specdecode.hookimpl
def specdecode_proposers():
    return [
        ProposerSpec(
            name="eagle",
            factory=_factory,
            options_class=EagleOptions,
            description="EAGLE: a one-layer draft head over the target's hidden states (built-in head for "
            "SmolLM2-135M-Instruct).",
        )
    ]


@specdecode.hookimpl
def specdecode_register_commands(subparsers: Any) -> None:
    from .train import add_arguments, run

    parser = subparsers.add_parser(
        "train-eagle", help="train an EAGLE draft head for a target model on CPU (see docs/methods/eagle.md)"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
