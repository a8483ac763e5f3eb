"""EAGLE for specdecode: a one-layer draft head over the target's own hidden states.

    specdecode.generate(model, ids, {"method": "eagle", "num_speculative_tokens": 5})  # SmolLM2-135M: built-in head
    specdecode.generate(model, ids, {"method": "eagle", "model": "path/to/head"})      # any other head (vLLM's key)
    specdecode.generate(model, ids, {"method": "eagle3", "model": "path/to/eagle3"})   # an EAGLE-3 head

The head comes from ``method_options={"head": PATH}`` or the config's ``draft_model`` / ``model`` (a directory in the
specdecode-eagle or the EAGLE authors' format; for ``eagle3``, the speculators format vLLM loads or the EAGLE authors'
EAGLE-3 format); with neither, each method uses the head shipped for it in this package when the target is
SmolLM2-135M-Instruct. Train a head with ``specdecode train-eagle`` or ``python -m specdecode_eagle.train``; write an
EAGLE-3 head in the speculators format with ``specdecode export-eagle``.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import attrs
import specdecode
from specdecode import ConfigError, ProposerSpec
from specdecode.toolkit import validators

SHIPPED_HEADS = Path(__file__).parent / "heads"
# The shipped heads (EAGLE-1/2 for method 'eagle', EAGLE-3 in the speculators format for 'eagle3'), and the target
# shape they were trained for (a target with this exact shape gets them by default).
SMOLLM2_HEAD = SHIPPED_HEADS / "smollm2-135m-instruct"
SMOLLM2_EAGLE3_HEAD = SHIPPED_HEADS / "smollm2-135m-instruct-eagle3"
SMOLLM2_SHAPE = {
    "model_type": "llama",
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
}


@attrs.frozen(kw_only=True)
class HeadOptions:
    """Options shared by ``method="eagle"`` and ``method="eagle3"``.

    ``head``: directory of a draft head; the config's ``draft_model`` is accepted too.

    Back-off (see specdecode_eagle/proposer.py): with ``adaptive`` (the default) each step drafts only as deep as
    the head's calibrated confidence says pays for itself, possibly nothing, and a head whose drafts keep failing is
    run less and less often (at most every ``max_skip`` + 1 steps). ``adaptive=False`` drafts exactly K tokens
    every step (for measuring raw acceptance). Costs are relative to one plain decode step of the target: a draft
    step costs ``draft_cost``, a verify pass over k drafts ``1 + cost_jump + cost_per_token * k`` (None: the
    core's curve for the device and linear kernel in use, ``specdecode.toolkit.verify_cost``).
    ``confidence_prior``: the acceptance chance per unit of head confidence assumed before this generation's verify
    results correct it (None: the ratios train-eagle measured for the head, stored in its eagle_head.json; 0.7 for a
    head without them).
    ``tree_width`` / ``tree_nodes``: each expanded node's candidates and the most nodes the head adds to a tree.

    ``prompt_lookup`` (default on): prompt lookup's continuation (the config's ``prompt_lookup_min`` /
    ``prompt_lookup_max``) joins the head's drafts, as one more tree branch or, in a chain, instead of the head's
    when its first draft is the better bet; it is drafted only as far as it pays. False: the head's drafts alone
    (what measuring a head's acceptance wants).

    ``head_prompt_tokens`` (default 256): the head reads only the prompt's last this many positions (null: all of
    them). A one-layer head drafts from nearby context; running it over a long prompt (a document to summarise)
    costs a pass over every position and makes every later head pass attend over all of them. Lossless either way:
    only the drafts change.
    """

    head: str | None = attrs.field(default=None, validator=validators.path())
    adaptive: bool = attrs.field(default=True, validator=validators.boolean())
    draft_cost: float = attrs.field(default=0.08, validator=validators.number(0))
    cost_jump: float | None = attrs.field(default=None, validator=validators.number(0, optional=True))
    cost_per_token: float | None = attrs.field(default=None, validator=validators.number(0, optional=True))
    confidence_prior: float | None = attrs.field(
        default=None, validator=validators.number(0, 2, low_open=True, optional=True)
    )
    max_skip: int = attrs.field(default=16, validator=validators.integer(0))
    tree_width: int = attrs.field(default=2, validator=validators.integer(1))
    tree_nodes: int = attrs.field(default=8, validator=validators.integer(1))
    prompt_lookup: bool = attrs.field(default=True, validator=validators.boolean())
    head_prompt_tokens: int | None = attrs.field(
        default=256, validator=validators.integer(1, optional=True, meaning="(null: the whole prompt)")
    )


@attrs.frozen(kw_only=True)
class EagleOptions(HeadOptions):
    """Options of ``method="eagle"``: :class:`HeadOptions` (``head``: a specdecode-eagle or EAGLE authors' EAGLE-1/2
    directory) and ``use_draft_vocab``: score only the head's draft vocabulary when it has one (faster drafts);
    False scores the full vocabulary."""

    use_draft_vocab: bool = attrs.field(default=True, validator=validators.boolean())


@attrs.frozen(kw_only=True)
class Eagle3Options(HeadOptions):
    """Options of ``method="eagle3"``: :class:`HeadOptions` (``head``: a speculators or EAGLE authors' EAGLE-3
    directory). An EAGLE-3 head always scores its own draft vocabulary with its own LM head."""


def default_head_path(target: Any, method: str = "eagle") -> Path:
    """The head shipped for ``method`` when ``target`` has SmolLM2-135M's shape; otherwise a ConfigError saying what
    to pass."""
    config = target.config
    shape = {key: getattr(config, key, None) for key in SMOLLM2_SHAPE}
    if shape == SMOLLM2_SHAPE:
        return SMOLLM2_EAGLE3_HEAD if method == "eagle3" else SMOLLM2_HEAD
    kind, train = ("an EAGLE-3", " --format speculators") if method == "eagle3" else ("a", "")
    formats = ("a speculators-format directory, as vLLM loads, or the EAGLE authors' EAGLE-3 format"
               if method == "eagle3" else "a specdecode-eagle or EAGLE-format head directory")
    raise ConfigError(
        f"method {method!r} needs {kind} draft head trained for this target: the built-in head fits "
        f"SmolLM2-135M-Instruct only ({SMOLLM2_SHAPE}), this target has {shape}. Give method_options={{'head': PATH}} "
        f"or draft_model=PATH ({formats}), or train one with `specdecode train-eagle{train} --target MODEL`",
        field="method_options.head",
        value=None,
    )


# Loaded heads per target model, so repeated generate() calls do not re-read the file.
_DRAFTERS: weakref.WeakKeyDictionary[Any, dict[tuple[str, bool], Any]] = weakref.WeakKeyDictionary()


def _cached(target: Any, key: tuple[Any, ...], build: Any) -> Any:
    per_target = _DRAFTERS.setdefault(target, {})
    if key not in per_target:
        per_target[key] = build()
    return per_target[key]


def load_drafter(target: Any, head_path: str | os.PathLike | None = None, use_draft_vocab: bool = True) -> Any:
    """An :class:`~specdecode_eagle.head.EagleDrafter` for ``target`` (cached per target and head path)."""
    from .checkpoint import check_fits_target, load_head
    from .head import EagleDrafter

    path = Path(head_path).expanduser() if head_path is not None else default_head_path(target)

    def build() -> Any:
        embed = target.get_input_embeddings().weight
        checkpoint = load_head(path, dtype=embed.dtype)
        check_fits_target(checkpoint, target)
        vocab = checkpoint.draft_vocab if use_draft_vocab else None
        drafter = EagleDrafter(checkpoint.head.to(embed.device), target, vocab)
        ratios = (checkpoint.meta.get("calibration") or {}).get("ratio_per_position")
        if ratios and (use_draft_vocab or checkpoint.draft_vocab is None):  # measured over this vocabulary
            drafter.calibration = [float(r) for r in ratios]
        return drafter

    return _cached(target, (str(path.resolve()), use_draft_vocab), build)


def load_eagle3_drafter(target: Any, head_path: str | os.PathLike | None = None) -> Any:
    """An :class:`~specdecode_eagle.eagle3.Eagle3Drafter` for ``target`` (cached per target and head path; the
    shipped EAGLE-3 head when ``head_path`` is None and the target has SmolLM2-135M's shape)."""
    from .eagle3 import Eagle3Drafter
    from .eagle3_checkpoint import load_eagle3_head

    path = Path(head_path).expanduser() if head_path is not None else default_head_path(target, "eagle3")

    def build() -> Any:
        from .train_eagle3 import read_calibration

        embed = target.get_input_embeddings().weight
        checkpoint = load_eagle3_head(path, dtype=embed.dtype)
        drafter = Eagle3Drafter(checkpoint.head.to(embed.device), target, f"EAGLE-3 head at {checkpoint.path}")
        drafter.calibration = read_calibration(checkpoint.path)  # what train-eagle measured, if it made the head
        return drafter

    return _cached(target, (str(path.resolve()), "eagle3"), build)


def _head_path(method: str, config: specdecode.SpeculativeConfig, options: HeadOptions) -> Any:
    """The head directory given as ``method_options.head`` or ``draft_model`` (None when neither is)."""
    head = options.head
    draft = config.draft_model
    if draft is not None and not isinstance(draft, (str, os.PathLike)):
        raise ConfigError(
            f"method {method!r} takes a head directory as draft_model, not a loaded model (got "
            f"{type(draft).__name__})",
            field="draft_model",
            value=draft,
        )
    if head is not None and draft is not None and os.fspath(head) != os.fspath(draft):
        raise ConfigError(
            f"method {method!r} got two heads: method_options.head={os.fspath(head)!r} and "
            f"draft_model={os.fspath(draft)!r}; give one",
            field="method_options.head",
            value=head,
        )
    return head if head is not None else draft


def _factory(model: Any, config: specdecode.SpeculativeConfig, options: EagleOptions) -> Any:
    from .proposer import EagleProposer

    drafter = load_drafter(model, _head_path("eagle", config, options), options.use_draft_vocab)
    return EagleProposer(drafter, options, _lookup_window(config, options))


def _factory3(model: Any, config: specdecode.SpeculativeConfig, options: Eagle3Options) -> Any:
    from .proposer import EagleProposer

    path = _head_path("eagle3", config, options)
    drafter = load_eagle3_drafter(model, path)
    return EagleProposer(drafter, options, _lookup_window(config, options))


def _lookup_window(config: specdecode.SpeculativeConfig, options: HeadOptions) -> tuple[int, int] | None:
    return config.prompt_lookup_window if options.prompt_lookup else None


@specdecode.hookimpl
def specdecode_proposers():
    return [
        ProposerSpec(
            name="eagle",
            factory=_factory,
            options_class=EagleOptions,
            description="EAGLE: a one-layer draft head over the target's hidden states (built-in head for "
            "SmolLM2-135M-Instruct).",
        ),
        ProposerSpec(
            name="eagle3",
            factory=_factory3,
            options_class=Eagle3Options,
            description="EAGLE-3: a one-layer draft head over three of the target's layers (speculators / vLLM "
            "format; built-in head for SmolLM2-135M-Instruct).",
        ),
    ]


@specdecode.hookimpl
def specdecode_register_commands(subparsers: Any) -> None:
    from . import export, train

    parser = subparsers.add_parser(
        "train-eagle", help="train an EAGLE draft head for a target model on CPU (see docs/methods/eagle.md)"
    )
    train.add_arguments(parser)
    parser.set_defaults(func=train.run)
    parser = subparsers.add_parser(
        "export-eagle", help="write an EAGLE-3 head in the speculators format vLLM loads (see docs/methods/eagle.md)"
    )
    export.add_arguments(parser)
    parser.set_defaults(func=export.run)
