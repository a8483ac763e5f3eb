"""KV caches that speculation can roll back: the target's, and a draft model's kept in step by token ids.

Speculation appends drafts to a cache and then drops the rejected ones, so every cache specdecode makes must be
croppable. transformers' sliding-window layers forget what leaves the window and can only be cropped while they
record the past; specdecode's caches use full layers for sliding-window attention instead and let the attention
mask apply the window (to real positions: see :mod:`specdecode.batching`), which also lets a batch keep holes
and a tree move its accepted path into place.
"""

from __future__ import annotations

import functools
import inspect
import time
from typing import Any

import torch

__all__ = ["TokenCache", "cache_kwarg_name", "crop_to", "keep_past", "new_cache"]


def new_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for ``model`` whose attention layers all keep every position."""
    from transformers import DynamicCache
    from transformers.cache_utils import (
        DynamicLayer,
        DynamicSlidingWindowLayer,
        LinearAttentionAndFullAttentionLayer,
        LinearAttentionAndSlidingWindowAttentionLayer,
    )

    cache = DynamicCache(config=model.config)
    layers = getattr(cache, "layers", None) or []
    for i, layer in enumerate(layers):
        if type(layer) is DynamicSlidingWindowLayer:
            layers[i] = DynamicLayer()
        elif type(layer) is LinearAttentionAndSlidingWindowAttentionLayer:
            layers[i] = LinearAttentionAndFullAttentionLayer(number_of_states=layer.number_of_states)
    return cache


def has_state_layers(cache: Any) -> bool:
    """Whether some layer keeps a state along the sequence (convolution, SSM, linear attention) besides keys."""
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    return any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in getattr(cache, "layers", ()))


def keeps_recurrent_state(cache: Any) -> bool:
    """Whether some layer holds a recurrent (SSM / linear-attention) state, not only a convolution window. A
    convolution window is rolled back by keeping its past (:func:`keep_past`); a recurrent state is not, here."""
    for layer in getattr(cache, "layers", ()):
        if any(getattr(layer, "is_recurrent_states_initialized", {}).values()):
            return True
    return False


# Recurrent-state architectures whose speculative output tests/test_architectures.py checks identical to plain
# generate with transformers' recorded past states (5.25). Others stay refused until checked. Bamba is not
# identical: in transformers 5.25 its own cached decoding already disagrees with its full forward (max logit
# difference 1.9 on the tiny model, against 4e-6 for GraniteMoeHybrid with the same mixer), and a multi-token pass
# disagrees with both.
RECURRENT_ROLLBACK_CHECKED = frozenset({
    "mamba", "mamba2", "falcon_mamba", "jamba", "zamba2", "falcon_h1", "qwen3_next", "qwen3_5_text", "nemotron_h",
    "granitemoehybrid",
})


@functools.cache
def rolls_back_recurrent_state() -> bool:
    """Whether this transformers can record a recurrent layer's past states so a crop restores them (5.25 on:
    ``activate_past_recording(recurrent_states_to_keep=...)``, made for its own assisted decoding)."""
    try:
        from transformers.cache_utils import LinearAttentionCacheLayerMixin
    except ImportError:
        return False
    method = getattr(LinearAttentionCacheLayerMixin, "activate_past_recording", None)
    return method is not None and "recurrent_states_to_keep" in inspect.signature(method).parameters


def check_rollback(cache: Any, model: Any) -> None:
    """After the prefill: refuse a model whose cache cannot be cropped back (a recurrent state: a rejected draft
    would stay in it), before any token is produced."""
    from .errors import ConfigError

    model_type = getattr(model.config, "model_type", None)
    restorable = rolls_back_recurrent_state()
    if keeps_recurrent_state(cache):
        if restorable and model_type in RECURRENT_ROLLBACK_CHECKED:
            return
    elif getattr(cache, "is_croppable", True):
        return
    if restorable:
        why = (f"this transformers can restore them, but model type {model_type!r} is not among those whose "
               f"speculative output is checked identical to plain generate "
               f"({', '.join(sorted(RECURRENT_ROLLBACK_CHECKED))})")
    else:
        why = "this transformers cannot restore them (transformers 5.25 can, for the checked model types)"
    raise ConfigError(
        f"speculative decoding cannot run on {type(model).__name__}: its recurrent (SSM / linear-attention) layers "
        f"keep a state that rejected drafts would change; {why}. Use plain model.generate for this model",
        field="model",
        value=type(model).__name__,
    )


def keep_past(cache: Any, tokens_per_forward: int = 1) -> None:
    """After a prefill: layers that trim their state (convolution states) must from now on keep what a crop
    gives back, and recurrent layers the states after each of the last ``tokens_per_forward`` tokens of a forward
    (so a crop can go back that far). Not before the prefill, so a long prompt causes no memory spike."""
    if not hasattr(cache, "activate_past_recording"):
        return
    if keeps_recurrent_state(cache) and rolls_back_recurrent_state():
        # A crop must keep the first token of the forward it undoes (in 5.25 the record's first entry is the state
        # after the forward, not before it): a verify pass always keeps it, the last committed token.
        cache.activate_past_recording(recurrent_states_to_keep=tokens_per_forward)
    else:
        cache.activate_past_recording()


def crop_to(cache: Any, length: int) -> None:
    """Drop every cached position from ``length`` on (nothing when the cache is no longer than that)."""
    extra = cache.get_seq_length() - length
    if extra > 0:  # crop(-n) removes n positions; crop(0) would mean something else before transformers 5.25
        cache.crop(-extra)
    elif extra == 0 and has_state_layers(cache) and rolls_back_recurrent_state():
        # Nothing rejected: from 5.25 crop(0) drops the recorded past of convolution and recurrent layers, which
        # otherwise grows with every forward until a crop (megabytes per token on a real SSM).
        cache.crop(0)


def cache_kwarg_name(model: Any) -> str:
    """transformers renamed ``past_key_values`` to ``cache``; use whichever this model's forward takes."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case, compared in C
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


class TokenCache:
    """One sequence's KV cache in a (draft) model together with the token ids it holds.

    Before each use, :meth:`sync` compares those ids with the sequence as it now stands: the common prefix is
    kept (accepted drafts are never recomputed), the rest is cropped, and the tokens the model has not seen yet
    (a corrected or bonus token, re-tokenized text) are fed in one forward pass. ``forwards`` and ``seconds``
    count the model's work.
    """

    def __init__(self, model: Any, device: torch.device | str | None = None):
        self.model = model
        self.device = device
        self.cache_kwarg = cache_kwarg_name(model)
        self.ids: list[int] = []  # the tokens whose keys and values the cache holds, in order
        self.cache: Any = None
        self.forwards = 0
        self.seconds = 0.0

    def sync(self, tokens: list[int]) -> torch.Tensor:
        """Make the cache hold ``tokens``; returns the model's logits after the last one, ``[V]``."""
        if not tokens:
            raise ValueError("the model needs at least one token of context")
        keep = min(common_prefix_length(self.ids, tokens), len(tokens) - 1)  # the last token is always fed
        self.rollback(keep)
        return self._feed(torch.tensor([tokens[keep:]], dtype=torch.long, device=self.device), tokens[keep:])

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token (a tensor holding one id: no host sync) -> logits after it, ``[V]``."""
        return self._feed(token.reshape(1, 1).to(self.device), [token])

    def prefill(self, tokens: list[int]) -> None:
        """Feed a prompt ahead of the first use (so that the first :meth:`sync` only feeds the newest token)."""
        if tokens:
            self.sync(tokens)

    def rollback(self, length: int) -> None:
        """Forget every token from position ``length`` on."""
        if self.cache is not None and length < len(self.ids):
            crop_to(self.cache, length)
        del self.ids[length:]

    def _feed(self, ids: torch.Tensor, new: list) -> torch.Tensor:
        first = self.cache is None
        if first:
            self.cache = new_cache(self.model)
        start = time.perf_counter()
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_kwarg: self.cache})
        self.seconds += time.perf_counter() - start
        if first:
            if keeps_recurrent_state(self.cache):
                # sync() crops back to any common prefix, further than the last forward's recorded states reach.
                from .errors import ConfigError

                raise ConfigError(
                    f"{type(self.model).__name__} cannot be a draft model: its recurrent (SSM / linear-attention) "
                    "layers keep a state that rejected drafts would change, and a draft model's cache is cropped "
                    "further back than that state's recorded past. Use a draft model with attention layers only",
                    field="draft_model", value=type(self.model).__name__)
            check_rollback(self.cache, self.model)
            keep_past(self.cache)
        self.forwards += 1
        self.ids.extend(int(t) for t in new)
        return out.logits[0, -1]
