"""Checks that a draft model suits a target, run when the proposer is built (and again at start, once the
target's tokenizer is known).

* Tokenizers: equal vocabularies are required unless cross-tokenizer mode is on. Vocabulary sizes that differ
  only by padding are fine (the proposer masks the extra ids). Without both tokenizers at hand, sizes that
  differ by more than padding ever does (``MAX_VOCAB_PADDING``) are taken as different tokenizers.
* Size: a draft that is not much smaller than the target gets a :class:`DraftSizeWarning`.
* Device and dtype differences are handled by the proposer (see loading.py), so they are only reported.
"""

from __future__ import annotations

import warnings
from typing import Any

import attrs
import torch
from specdecode import ConfigError

# Models pad their embedding to a multiple of 64..256 rows; a larger gap means other tokens.
MAX_VOCAB_PADDING = 1024
MIN_SIZE_RATIO = 10.0  # the rule of thumb: a draft about 10-20x smaller than the target, from the same family

CROSS_TOKENIZER_HINT = (
    "Speculating with token ids needs the same tokenizer on both sides. To draft with a model that has its "
    "own tokenizer, use cross-tokenizer mode: "
    "method_options={'draft_tokenizer': <the draft's tokenizer, its directory or embedded name>} and pass "
    "the target's tokenizer to specdecode.generate(..., tokenizer=...)"
)


class DraftSizeWarning(UserWarning):
    """The draft model is not much smaller than the target, so drafting may cost more than it saves."""


@attrs.frozen(kw_only=True)
class PairReport:
    target_params: int
    draft_params: int
    target_vocab: int
    draft_vocab: int
    target_device: torch.device
    draft_device: torch.device
    target_dtype: torch.dtype
    draft_dtype: torch.dtype

    @property
    def size_ratio(self) -> float:
        """How many times fewer parameters the draft has (embedding lookups excluded, the LM head
        included)."""
        return self.target_params / max(self.draft_params, 1)


def output_vocab_size(model: Any) -> int:
    """Rows of the LM head: the V of the logits (may exceed the tokenizer's size by padding)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def compute_params(model: Any) -> int:
    """Parameters that cost compute per token: all of them, less an input embedding not tied to the LM
    head."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embed is not None and (head is None or head.weight is not embed.weight):
        total -= embed.weight.numel()
    return total


def check_pair(
    target: Any,
    draft: Any,
    *,
    target_tokenizer: Any = None,
    draft_tokenizer: Any = None,
    cross_tokenizer: bool = False,
) -> PairReport:
    """Raise :class:`specdecode.ConfigError` for a pair that cannot work, warn for one that will be slow."""
    t_param, d_param = next(target.parameters()), next(draft.parameters())
    report = PairReport(
        target_params=compute_params(target),
        draft_params=compute_params(draft),
        target_vocab=output_vocab_size(target),
        draft_vocab=output_vocab_size(draft),
        target_device=t_param.device,
        draft_device=d_param.device,
        target_dtype=t_param.dtype,
        draft_dtype=d_param.dtype,
    )
    if not cross_tokenizer:
        check_same_tokenizer(report, target_tokenizer, draft_tokenizer)
    if report.size_ratio < MIN_SIZE_RATIO:
        warnings.warn(
            f"the draft model has {report.draft_params / 1e6:.1f}M parameters and the target "
            f"{report.target_params / 1e6:.1f}M (only {report.size_ratio:.1f}x smaller). Rule of thumb: a "
            "draft about 10-20x smaller than the target, from the same family; otherwise a draft step "
            "costs nearly as much as the target step it saves (a speedup needs the acceptance rate to "
            "exceed the cost ratio c).",
            DraftSizeWarning,
            stacklevel=3,
        )
    return report


def check_same_tokenizer(report: PairReport, target_tokenizer: Any, draft_tokenizer: Any) -> None:
    t_vocab, d_vocab = report.target_vocab, report.draft_vocab
    if target_tokenizer is not None and draft_tokenizer is not None:
        if (
            target_tokenizer is not draft_tokenizer
            and target_tokenizer.get_vocab() != draft_tokenizer.get_vocab()
        ):
            raise ConfigError(
                f"the draft model's tokenizer ({type(draft_tokenizer).__name__}, {len(draft_tokenizer)} "
                f"tokens) differs from the target's ({type(target_tokenizer).__name__}, "
                f"{len(target_tokenizer)} tokens). " + CROSS_TOKENIZER_HINT,
                field="draft_model",
                value=(len(draft_tokenizer), len(target_tokenizer)),
            )
        real = len(target_tokenizer)
        if real > min(t_vocab, d_vocab):
            raise ConfigError(
                f"the tokenizer has {real} tokens but the draft's LM head has {d_vocab} rows and the "
                f"target's {t_vocab}: both must cover every token (only padding rows beyond it may differ)",
                field="draft_model",
                value=(d_vocab, t_vocab),
            )
        return
    if abs(t_vocab - d_vocab) > MAX_VOCAB_PADDING:
        raise ConfigError(
            f"the draft model's vocabulary has {d_vocab} ids and the target's {t_vocab}: they differ by more "
            f"than padding ({MAX_VOCAB_PADDING} ids), so the tokenizers are different. " + CROSS_TOKENIZER_HINT,
            field="draft_model",
            value=(d_vocab, t_vocab),
        )
