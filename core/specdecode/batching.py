"""Bookkeeping for verifying a batch of sequences against one shared KV cache.

The target's cache has one length L for every row. In a verify step each running row appends k+1 slots
([last token, d_1..d_k]); row b keeps the first n_b + 1 of them. The loop crops the tail that no row kept
(k - max n_b slots); the slots that a row rejected but another row kept stay in the cache as *holes*, hidden from
attention by the 2-D attention mask. Position ids come from the number of real slots per row, so a hole never
shifts a position and the keys already cached (RoPE applied) stay valid.

Holes and left padding cost attention work and memory, so when they fill more than half of the cache it is
compacted: every row's real slots are gathered to the right end and columns that are empty in every row dropped.
See docs/batching.md for the whole picture.

Letters: R rows running in the target, L cache slots, W = k+1 verified slots this step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import invalid

# Compact when the slots beyond the fullest row exceed this share of the cache (and this many slots).
COMPACT_WASTE_SHARE = 0.5
COMPACT_MIN_WASTE = 32


def left_pad(rows: Sequence[Sequence[int] | torch.Tensor], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences of different lengths -> ``(input_ids [B, T], attention_mask [B, T])``, left-padded: the
    layout :func:`specdecode.generate` (and transformers' batched ``generate``) expects."""
    lengths = [len(row) for row in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, (row, length) in enumerate(zip(rows, lengths)):
        ids[b, width - length :] = torch.as_tensor(row, dtype=torch.long)
        mask[b, width - length :] = 1
    return ids, mask


def check_left_padded(attention_mask: torch.Tensor) -> list[int]:
    """Real-token count of every row of a ``[B, T]`` mask that must be left padding (0..0 1..1); else an error."""
    mask = attention_mask.to(torch.long)
    lengths = mask.sum(dim=1)  # [B]
    width = mask.shape[1]
    expected = torch.arange(width, device=mask.device).unsqueeze(0) >= (width - lengths).unsqueeze(1)
    if not bool((mask.bool() == expected).all()) or bool((lengths == 0).any()):
        raise invalid(
            "attention_mask",
            "a mask with padding on the right, in the middle, or an empty row",
            "left padding only (zeros then ones in every row, at least one 1): use tokenizer.padding_side='left'",
        )
    return lengths.tolist()


class CacheSlots:
    """Which of the L cache slots hold real tokens, row by row.

    ``mask is None`` means "every slot of every row is real" (batch size 1, or a batch that has stayed aligned):
    the forward pass then needs neither an attention mask nor position ids, which keeps batch size 1 as cheap as a
    loop that knows nothing about batches.
    """

    def __init__(self, mask: torch.Tensor | None, real_counts: Sequence[int]):
        self.mask = mask  # [R, L] bool or None
        self.real_counts = list(real_counts)  # [R] on the host: real slots per row = the next position id
        self.length = max(self.real_counts) if mask is None else int(mask.shape[1])

    @classmethod
    def from_prompt(cls, prompt_mask: torch.Tensor | None, real_counts: Sequence[int]) -> CacheSlots:
        if prompt_mask is None or min(real_counts) == prompt_mask.shape[1]:
            return cls(None, real_counts)
        return cls(prompt_mask.bool(), real_counts)

    def forward_inputs(self, width: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(attention_mask [R, L+W], position_ids [R, W]) for appending W slots; (None, None) when aligned."""
        if self.mask is None:
            return None, None
        rows, device = self.mask.shape[0], self.mask.device
        new = torch.ones(rows, width, dtype=torch.bool, device=device)
        attention_mask = torch.cat([self.mask, new], dim=1)
        start = torch.tensor(self.real_counts, device=device).unsqueeze(1)  # [R, 1]
        positions = start + torch.arange(width, device=device).unsqueeze(0)  # [R, W]
        return attention_mask, positions

    def keys(self, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(real [R, L] bool: slots holding real tokens, positions [R, L]: their positions) of the cached slots,
        for masks built from positions (:mod:`specdecode.attention`)."""
        if self.mask is None:
            rows = len(self.real_counts)
            real = torch.ones(rows, self.length, dtype=torch.bool, device=device)
            positions = torch.arange(self.length, device=device).expand(rows, -1)
            return real, positions
        return self.mask, (self.mask.long().cumsum(dim=1) - 1).clamp(min=0)

    def prefill_positions(self) -> torch.Tensor | None:
        """Position ids [R, L] of a left-padded prompt (padding gets position 0; it is masked anyway)."""
        if self.mask is None:
            return None
        return (self.mask.long().cumsum(dim=1) - 1).clamp(min=0)

    def advance(self, num_accepted: torch.Tensor, accepted: Sequence[int]) -> int:
        """Record a verify step whose rows kept ``accepted[b] + 1`` slots; returns how many slots the cache keeps
        (max accepted + 1: the caller crops the rest). ``num_accepted`` is the same counts on the device ``[R]``."""
        kept = max(accepted) + 1
        aligned = all(n + 1 == kept for n in accepted)
        if self.mask is not None or not aligned:
            rows = len(accepted)
            if self.mask is None:
                self.mask = torch.ones(rows, self.length, dtype=torch.bool, device=num_accepted.device)
            offsets = torch.arange(kept, device=num_accepted.device).unsqueeze(0)  # [1, kept]
            block = offsets <= num_accepted.unsqueeze(1)  # [R, kept]; False = a hole (a rejected draft)
            self.mask = torch.cat([self.mask, block], dim=1)
        self.length += kept
        self.real_counts = [c + n + 1 for c, n in zip(self.real_counts, accepted)]
        return kept

    def select(self, rows: list[int], cache: Any) -> None:
        """Keep only these rows (the others finished), in the cache too."""
        index = torch.tensor(rows, dtype=torch.long, device=self._device(cache))
        cache.batch_select_indices(index)
        self.real_counts = [self.real_counts[r] for r in rows]
        if self.mask is not None:
            self.mask = self.mask[index]

    def maybe_compact(self, cache: Any) -> bool:
        """Gather each row's real slots to the right and drop empty columns, when enough of the cache is wasted.

        Only caches whose layers are plain :class:`transformers.DynamicLayer` tensors are compacted; others keep
        their holes (still correct, only slower). Returns True when it compacted.
        """
        if self.mask is None:
            return False
        fullest = max(self.real_counts)
        waste = self.length - fullest
        if waste < COMPACT_MIN_WASTE or waste < COMPACT_WASTE_SHARE * self.length or not _compactable(cache):
            if fullest == self.length and all(c == fullest for c in self.real_counts):
                self.mask = None  # every row real everywhere: aligned again
            return False
        mask = self.mask
        rows, device = mask.shape[0], mask.device
        counts = torch.tensor(self.real_counts, device=device)  # [R]
        # Real slots first, in their order (a stable sort of "is a hole").
        real_first = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # [R, L]
        source = torch.arange(fullest, device=device).unsqueeze(0) - (fullest - counts).unsqueeze(1)  # [R, W]
        new_mask = source >= 0  # [R, W] right-aligned real slots
        index = real_first.gather(1, source.clamp(min=0))  # [R, W] (padding slots repeat a real one, masked)
        for layer in cache.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            heads, dim = layer.keys.shape[1], layer.keys.shape[-1]
            gather = index.view(rows, 1, fullest, 1).expand(rows, heads, fullest, dim)
            layer.keys = layer.keys.gather(2, gather)
            layer.values = layer.values.gather(
                2, index.view(rows, 1, fullest, 1).expand(-1, heads, -1, layer.values.shape[-1])
            )
        self.length = fullest
        self.mask = None if bool(new_mask.all()) else new_mask
        return True

    @staticmethod
    def _device(cache: Any) -> torch.device:
        for layer in getattr(cache, "layers", ()):
            keys = getattr(layer, "keys", None)
            if isinstance(keys, torch.Tensor):
                return keys.device
        return torch.device("cpu")


def _compactable(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class RightAlignedTokens:
    """Every row's tokens so far, right-aligned in one ``[B, T]`` tensor (left padding), as proposers see them.

    ``ids[:, -1]`` is every row's latest token. A row that gains fewer tokens than another in a step is shifted
    right (one gather), so padding stays on the left.
    """

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, pad_token_id: int):
        self.ids = ids  # [B, T] long
        self.mask = mask  # [B, T] long, 1 = real token
        self.pad = pad_token_id

    def append(self, block: torch.Tensor, counts: Sequence[int]) -> None:
        """Append the first ``counts[b]`` tokens of ``block[b]`` (``[B, w]``, on the device) to row b."""
        widest = max(counts)
        if widest == 0:
            return
        block = block[:, :widest].to(self.ids.dtype)
        if all(c == widest for c in counts):
            self.ids = torch.cat([self.ids, block], dim=1)
            self.mask = torch.cat([self.mask, torch.ones_like(block)], dim=1)
            return
        rows, width = self.ids.shape
        device = self.ids.device
        gap = torch.tensor([widest - c for c in counts], device=device).unsqueeze(1)  # [B, 1]
        # Right-align each row's new tokens inside the block: row b becomes [pad * gap_b, new tokens].
        column = torch.arange(widest, device=device).unsqueeze(0)
        new = column >= gap
        block = torch.where(new, block.gather(1, (column - gap).clamp(min=0)), self.pad)
        ids = torch.cat([self.ids, block], dim=1)  # [B, T+widest], row b: old, pad*gap_b, new
        mask = torch.cat([self.mask, new.to(self.mask.dtype)], dim=1)
        # Move the gap to the front with one gather, so padding stays on the left.
        column = torch.arange(width + widest, device=device).unsqueeze(0)  # [1, T+widest]
        source = torch.where(column < gap + width, (column - gap).clamp(min=0), column)  # [B, T+widest]
        real = column >= gap
        self.ids = torch.where(real, ids.gather(1, source), self.pad)
        self.mask = mask.gather(1, source) * real


class History:
    """Every sequence as plain ``generate`` holds it: the prompt as given (left padding included), then its
    generated tokens. Logits processors and stopping criteria read prefixes of it (``prefix``), so they see exactly
    the ``input_ids`` plain generate would pass them. ``tokens[b]`` is sequence b's generated tokens on the host;
    the device copy may hold tentative tokens (drafts) past them."""

    def __init__(self, prompt: torch.Tensor, capacity: int, pad: int):
        batch, width = prompt.shape
        self.prompt_width = width
        self.ids = torch.full((batch, width + capacity), pad, dtype=torch.long, device=prompt.device)
        self.ids[:, :width] = prompt
        self.tokens: list[list[int]] = [[] for _ in range(batch)]

    def prefix(self, b: int, generated: int) -> torch.Tensor:
        """``[1, P + generated]``: sequence b's prompt and its first ``generated`` tokens (or drafts written there)."""
        return self.ids[b : b + 1, : self.prompt_width + generated]

    def write(self, rows: Sequence[int], block: torch.Tensor) -> None:
        """Write ``block`` ``[R, w]`` after the generated tokens of the sequences ``rows`` (device only)."""
        if block.shape[1] == 0:
            return
        device = self.ids.device
        starts = torch.tensor([self.prompt_width + len(self.tokens[b]) for b in rows], device=device)
        columns = starts.unsqueeze(1) + torch.arange(block.shape[1], device=device).unsqueeze(0)  # [R, w]
        self.ids[torch.tensor(list(rows), device=device).unsqueeze(1), columns] = block.to(device)
