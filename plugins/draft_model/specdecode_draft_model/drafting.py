"""Drafting k tokens autoregressively from a draft model's :class:`specdecode.toolkit.TokenCache`, greedy or sampled.

Tokens are picked by ``specdecode.toolkit.draw`` (the target's way of picking: temperature / top-k / top-p when
sampling), and the distributions they were sampled from are returned as q, so rejection sampling stays lossless. Logits are first fitted to
the target's vocabulary: ids the target does not have are masked, ids the draft does not have get probability
0.
"""

from __future__ import annotations

from collections.abc import Collection

import attrs
import torch
from specdecode import SamplingParams
from specdecode.toolkit import TokenCache, draw


def fit_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[..., V_draft]`` logits -> ``[..., vocab_size]``: extra ids cut off, missing ids at -inf."""
    have = logits.shape[-1]
    if have == vocab_size:
        return logits
    if have > vocab_size:
        return logits[..., :vocab_size]
    pad = logits.new_full((*logits.shape[:-1], vocab_size - have), float("-inf"))
    return torch.cat([logits, pad], dim=-1)


@attrs.frozen(kw_only=True)
class Draft:
    token_ids: list[int]
    probs: torch.Tensor | None  # [n, V] the distributions the tokens were sampled from; None when greedy


def draft_tokens(
    cache: TokenCache,
    context: list[int],
    num_tokens: int,
    *,
    vocab_size: int,
    sampling: SamplingParams,
    generator: torch.Generator | None,
    device: torch.device,
    p_min: float | None = None,
    stop_ids: Collection[int] = (),
) -> Draft:
    """Up to ``num_tokens`` draft tokens after ``context`` (token ids the draft understands).

    ``vocab_size`` and ``device`` are the target's: logits are fitted to the target's vocabulary and moved to
    its device before picking, so q lives where the verifier reads it. Drafting stops before a token whose
    distribution's top probability is below ``p_min``, and after a token in ``stop_ids``.
    """
    logits = cache.sync(context)
    tokens: list[int] = []
    probs: list[torch.Tensor] = []
    # The target's processors that read the tokens so far (repetition penalty, ...) shape q as they shape p.
    reads_ids = getattr(sampling.logits_processor, "reads_ids", False)
    for i in range(num_tokens):
        ids = torch.tensor(context + tokens, device=device) if reads_ids else None
        token, q = draw(fit_vocab(logits.to(device), vocab_size), sampling, generator, input_ids=ids)  # [], [V]
        if p_min is not None and float(q.max()) < p_min:
            break
        if sampling.do_sample:
            probs.append(q)
        token_id = int(token)
        tokens.append(token_id)
        if token_id in stop_ids or i + 1 == num_tokens:
            break
        logits = cache.step(token)
    return Draft(token_ids=tokens, probs=torch.stack(probs) if probs else None)
