"""Draft-model speculation for specdecode: ``method="draft_model"`` and ``method="layer_skip"``.

* ``draft_model``: a smaller causal LM (``config.draft_model``: a path, an embedded model name or a loaded
  model) drafts K tokens autoregressively with its own KV cache. With ``method_options={"draft_tokenizer":
  ...}`` the draft may use a different tokenizer (proposals go through text).
* ``layer_skip``: self-speculation; the target's first N layers, final norm and LM head draft (shared
  weights).

Heavy imports (transformers, weights) happen in the factories, so listing methods stays fast.
"""

from __future__ import annotations

from typing import Any

import specdecode
from specdecode import ProposerSpec

from .options import DraftModelOptions, LayerSkipOptions
from .pair_checks import DraftSizeWarning, PairReport, check_pair

__all__ = [
    "DraftModelOptions",
    "DraftSizeWarning",
    "LayerSkipOptions",
    "PairReport",
    "check_pair",
    "specdecode_proposers",
]


def _draft_model_factory(target: Any, config: specdecode.SpeculativeConfig, options: DraftModelOptions):
    from .loading import parameter_device_dtype, resolve_draft, resolve_tokenizer
    from .pair_checks import output_vocab_size
    from .proposers import CrossTokenizerProposer, DraftModelProposer

    loaded = resolve_draft(config.draft_model, target)
    draft_device, _ = parameter_device_dtype(loaded.model)
    if options.draft_tokenizer is not None:
        check_pair(target, loaded.model, cross_tokenizer=True)
        tokenizer = resolve_tokenizer(options.draft_tokenizer)
        return CrossTokenizerProposer(
            loaded.model, tokenizer, draft_device=draft_device, p_min=options.draft_p_min
        )

    report = check_pair(target, loaded.model, draft_tokenizer=loaded.tokenizer)

    def check_tokenizer(target_tokenizer: Any) -> None:
        # The target's tokenizer is only known at start; compare it with the draft's when both are at hand.
        if loaded.tokenizer is not None:
            from .pair_checks import check_same_tokenizer

            check_same_tokenizer(report, target_tokenizer, loaded.tokenizer)

    return DraftModelProposer(
        loaded.model,
        target_vocab_size=output_vocab_size(target),
        draft_device=draft_device,
        p_min=options.draft_p_min,
        check_tokenizer=check_tokenizer,
    )


def _layer_skip_factory(target: Any, config: specdecode.SpeculativeConfig, options: LayerSkipOptions):
    from .layer_skip import num_decoder_layers, truncated_view
    from .loading import parameter_device_dtype
    from .pair_checks import output_vocab_size
    from .proposers import DraftModelProposer

    num_layers = (
        options.num_layers if options.num_layers is not None else max(num_decoder_layers(target) // 2, 1)
    )
    draft = truncated_view(target, num_layers)
    device, _ = parameter_device_dtype(target)
    return DraftModelProposer(
        draft, target_vocab_size=output_vocab_size(target), draft_device=device, p_min=options.draft_p_min
    )


@specdecode.hookimpl
def specdecode_proposers() -> list[ProposerSpec]:
    return [
        ProposerSpec(
            name="draft_model",
            factory=_draft_model_factory,
            options_class=DraftModelOptions,
            description="A smaller model drafts K tokens with its own KV cache (optionally own tokenizer).",
            needs_draft_model=True,
        ),
        ProposerSpec(
            name="layer_skip",
            factory=_layer_skip_factory,
            options_class=LayerSkipOptions,
            description="Self-speculation: the target's first N layers, final norm and LM head draft.",
        ),
    ]
