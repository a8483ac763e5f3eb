"""The draft model's KV cache for one sequence, kept in step with the target by token ids.

The cache remembers which token ids it holds. Before each draft, :meth:`DraftCache.advance_to` compares them
with the sequence as it now stands: the common prefix is kept (the accepted drafts are never recomputed), the
rest is cropped and the tokens the draft has not seen yet (the corrected or bonus token, or re-tokenized text)
are fed in one pass.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from specdecode import cache_kwarg_name


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case, compared in C
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


class DraftCache:
    """One sequence's draft KV cache. ``forwards`` and ``seconds`` count the draft's forward passes."""

    def __init__(self, model: Any, device: torch.device):
        self.model = model
        self.device = device
        self.cache_kwarg = cache_kwarg_name(model)
        self.ids: list[int] = []  # the tokens whose keys and values the cache holds, in order
        self.cache: Any = None
        # Sliding-window layers forget what fell out of the window; they can only roll back to the length at
        # their last crop. Below that the cache is rebuilt (rare: cross-tokenizer re-tokenization far back).
        self.floor = 0
        self.has_sliding = False
        self.forwards = 0
        self.seconds = 0.0

    def advance_to(self, tokens: list[int]) -> torch.Tensor:
        """Make the cache hold ``tokens`` and return the draft's logits after the last one, ``[V_draft]``."""
        if not tokens:
            raise ValueError("the draft needs at least one token of context")
        keep = min(common_prefix_length(self.ids, tokens), len(tokens) - 1)  # the last token is always fed
        if keep < len(self.ids):
            self._rollback(keep)
        return self._feed(tokens[keep:])

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token (a tensor holding one id, no host sync) and return the logits after it,
        ``[V_draft]``."""
        return self._feed_tensor(token.reshape(1, 1).to(self.device), [token])

    def prefill(self, tokens: list[int]) -> None:
        """Feed a prompt ahead of the first draft (so that the first propose only feeds the newest token)."""
        if tokens:
            self.advance_to(tokens)

    def _rollback(self, length: int) -> None:
        if self.cache is None:
            return
        if self.has_sliding and length < self.floor:
            self.cache, self.ids, self.floor = None, [], 0
            return
        self.cache.crop(-(len(self.ids) - length))
        del self.ids[length:]
        self.floor = length

    def _feed(self, new: list[int]) -> torch.Tensor:
        ids = torch.tensor([new], dtype=torch.long, device=self.device)
        return self._feed_tensor(ids, new)

    def _feed_tensor(self, ids: torch.Tensor, new: list) -> torch.Tensor:
        first = self.cache is None
        if first:
            from transformers import DynamicCache

            self.cache = DynamicCache(config=self.model.config)
        start = time.perf_counter()
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: self.cache})
        self.seconds += time.perf_counter() - start
        self.forwards += 1
        if first and hasattr(self.cache, "activate_past_recording"):
            # After the prefill (no memory spike): sliding-window layers must keep what a rollback needs.
            self.cache.activate_past_recording()
            self.has_sliding = any(
                getattr(layer, "is_sliding", False) for layer in getattr(self.cache, "layers", [])
            )
            self.floor = ids.shape[1]
        self.ids.extend(int(t) for t in new)
        return out.logits[0, -1]
