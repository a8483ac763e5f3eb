"""What a target model's attention allows specdecode to do, and the explicit masks it needs.

transformers builds its causal and sliding-window masks from cache *slot* indices. That is right for a prompt and
for plain decoding, where the real tokens of a row sit in consecutive slots, but not for two things speculation
does:

* a batch keeps *holes* in the cache (the slots of drafts one row rejected while another kept its own): a sliding
  window counted in slots would then see fewer real tokens than the model was trained with;
* a tree puts siblings side by side: each node must see its ancestors only, at position ``past + depth``.

So in those cases specdecode passes 4-D masks it built from real *positions* (holes and padding never count against
a window), one per kind of attention layer: a dict ``{"full_attention": ..., "sliding_attention": ...}`` for models
whose config lists ``layer_types`` (Gemma 2/3, Qwen2/3, Cohere 2, SmolLM3, ...), one tensor for the others (all
layers alike: Llama, or all sliding: Mistral, Starcoder2). transformers hands a 4-D mask to attention unchanged.

Letters: R rows, L cached slots, W slots read this step (the last token and the drafts).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import torch

SLIDING = "sliding_attention"
FULL = "full_attention"


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@attrs.frozen(kw_only=True)
class AttentionLayout:
    """The attention kinds of a target model and what they allow."""

    kinds: tuple[str, ...]  # the distinct layer kinds (FULL, SLIDING, or a recurrent kind), in first-seen order
    window: int | None  # the sliding window, in positions
    per_kind_masks: bool  # the model takes a dict of masks keyed by kind (its config lists layer_types)
    tree_refusal: str | None  # why trees cannot be verified on this model, or None

    @classmethod
    def of(cls, model: Any) -> AttentionLayout:
        config = _text_config(model)
        layer_types = getattr(config, "layer_types", None)
        window = getattr(config, "sliding_window", None)
        if layer_types:
            kinds = tuple(dict.fromkeys(layer_types))
        else:
            kinds = (SLIDING,) if window is not None else (FULL,)
        try:
            takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            takes_positions = True
        refusal = None
        stateful = [kind for kind in kinds if kind not in (FULL, SLIDING)]
        if stateful:
            refusal = (
                f"{type(model).__name__} has {'/'.join(stateful)} layers, whose state runs along one sequence and "
                "cannot hold the branches of a tree"
            )
        elif getattr(config, "alibi", False) or not takes_positions:
            refusal = (
                f"{type(model).__name__} takes token positions from its 2-D attention mask (ALiBi), which cannot "
                "place the branches of a tree"
            )
        return cls(
            kinds=kinds, window=window if SLIDING in kinds else None, per_kind_masks=bool(layer_types),
            tree_refusal=refusal,
        )

    @property
    def sliding(self) -> bool:
        return SLIDING in self.kinds

    @property
    def stateful(self) -> bool:
        """Some layers keep a state along the sequence (convolutions, SSMs, linear attention) instead of keys."""
        return any(kind not in (FULL, SLIDING) for kind in self.kinds)

    def masks(
        self,
        key_real: torch.Tensor,
        key_positions: torch.Tensor,
        query_positions: torch.Tensor,
        within: torch.Tensor,
        dtype: torch.dtype,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive masks ``[R, 1, W, L+W]`` (0 = may attend, the dtype's minimum elsewhere) for reading W new
        slots after L cached ones.

        ``key_real`` [R, L] bool marks cached slots that hold real tokens (not holes or padding), ``key_positions``
        [R, L] their positions, ``query_positions`` [R, W] the new slots' positions, ``within`` [W, W] bool which
        new slot may see which (causal for a chain, ancestors for a tree). The sliding kind also keeps a key only
        when ``query - key < window`` (transformers' rule), counted in positions.
        """
        rows, width = query_positions.shape
        new_real = torch.ones(rows, width, dtype=torch.bool, device=key_real.device)
        real = torch.cat([key_real, new_real], dim=1)  # [R, L+W]
        positions = torch.cat([key_positions, query_positions], dim=1)  # [R, L+W]
        seen = torch.cat(
            [torch.ones(width, key_real.shape[1], dtype=torch.bool, device=key_real.device), within], dim=1
        )  # [W, L+W]
        allowed = real.unsqueeze(1) & seen.unsqueeze(0)  # [R, W, L+W]
        out: dict[str, torch.Tensor] = {}
        for kind in self.kinds:
            kind_allowed = allowed
            if kind == SLIDING and self.window is not None:
                distance = query_positions.unsqueeze(2) - positions.unsqueeze(1)  # [R, W, L+W]
                kind_allowed = allowed & (distance < self.window)
            mask = torch.zeros(kind_allowed.shape, dtype=dtype, device=key_real.device)
            out[kind] = mask.masked_fill_(~kind_allowed, torch.finfo(dtype).min).unsqueeze(1)
        if self.per_kind_masks:
            return out
        return out[self.kinds[0]]


def causal(width: int, device: Any) -> torch.Tensor:
    """``within`` for a chain: each new slot sees itself and the ones before it."""
    return torch.ones(width, width, dtype=torch.bool, device=device).tril()


# transformers' own switch (integrations/sdpa_attention.py, read at every attention call): pass grouped K/V heads to
# SDPA as they are (``enable_gqa``) even when a mask is given, instead of copying them to one per query head.
FORCE_GQA_ENV = "TRANSFORMERS_SDPA_FORCE_GQA"


class _ProcessSwitch:
    """An environment variable held by every running loop that wants it: the first sets it (unless the user had set
    it: then it is theirs and stays as it is), the last one out removes it. Loops may run in several threads."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.holders = 0
        self.ours = False

    def enter(self) -> None:
        with self.lock:
            if self.holders == 0:
                self.ours = self.name not in os.environ
                if self.ours:
                    os.environ[self.name] = "1"
            self.holders += 1

    def leave(self) -> None:
        with self.lock:
            self.holders -= 1
            if self.holders == 0 and self.ours:
                os.environ.pop(self.name, None)
                self.ours = False


_FORCE_GQA = _ProcessSwitch(FORCE_GQA_ENV)


@contextlib.contextmanager
def grouped_kv_in_place(model: Any) -> Iterator[None]:
    """While the loop runs a target on a CPU, SDPA reads grouped K/V heads in place under explicit masks.

    With a mask, transformers expands the K/V heads of grouped-query attention to one per query head
    (``repeat_kv``: a copy of the layer's whole cache), because CUDA's fused kernels do not take grouped heads with
    a mask. Every verify pass of more than one row has a mask, so on a CPU its price grew with the context: on
    SmolLM2-135M (3 K/V heads for 9 query heads) a 6-row verify after 1024 cached tokens took 35 ms against 29 ms in
    place (benchmarks/verify_rows.py). torch's CPU kernel takes ``enable_gqa`` with a mask and its outputs are
    bit-identical, so on a CPU the loop sets transformers' switch while it runs. The variable is process-wide: a
    user who set it keeps their value, concurrent loops share it, and on accelerators it is left alone (there it
    could pick a slower kernel).
    """
    device = getattr(model, "device", None)
    if torch.device(device if device is not None else "cpu").type != "cpu":
        yield
        return
    _FORCE_GQA.enter()
    try:
        yield
    finally:
        _FORCE_GQA.leave()
