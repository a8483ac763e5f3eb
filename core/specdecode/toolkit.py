"""The toolkit for plugin authors: everything a proposer may use from specdecode besides the names of
``specdecode`` itself (``specdecode.__all__``). Nothing else in the core is public; tests/test_public_api.py fails
when a plugin, the example package or a doc example imports anything else. docs/plugins/toolkit.md describes
every name.

* Drafting: :func:`draw` picks a token the way the target picks and returns the distribution it came from
  (:func:`draft_distribution` without picking); :func:`warp_logits` / :func:`warp_probs` / :func:`sample` are its
  parts.
* Caches: :class:`TokenCache` keeps a (draft) model's KV cache in step with a sequence by token ids;
  :func:`new_cache` and :func:`crop_to` for caches a proposer manages itself; :func:`cache_kwarg_name`.
* Costs: :func:`verify_cost` (the loop's verify cost on a device), :class:`StepPlan` and
  :func:`best_draft_length` (how many drafts pay for themselves), :func:`expected_tokens`.
* Bookkeeping: :class:`SequenceReader` (each sequence's unread tokens), :func:`left_pad`, :class:`NgramIndex`
  (prompt lookup's index: the continuation of the longest earlier match of the current suffix).
* Options: :mod:`validators` (attrs validators with specdecode's messages) and :func:`invalid`.
* Models: :func:`load_model`, :func:`resolve_model_path` (embedded names, directories, .gguf files), and
  :func:`few_rows_linear` / :func:`linear` (the loop's CPU kernel for a proposer's own models and products).
"""

from __future__ import annotations

from . import validators
from .batching import left_pad
from .cache import TokenCache, cache_kwarg_name, crop_to, keep_past, new_cache
from .costs import MARGIN, StepPlan, VerifyCost, best_draft_length, expected_tokens, verify_cost
from .errors import invalid
from .kernels import few_rows_linear, linear
from .lookup import NgramIndex
from .models import load_model, resolve_model_path
from .proposer import SequenceReader
from .sampling import draft_distribution, draw, sample, warp_logits, warp_probs

__all__ = [
    "MARGIN",
    "NgramIndex",
    "SequenceReader",
    "StepPlan",
    "TokenCache",
    "VerifyCost",
    "best_draft_length",
    "cache_kwarg_name",
    "crop_to",
    "draft_distribution",
    "draw",
    "expected_tokens",
    "few_rows_linear",
    "invalid",
    "keep_past",
    "left_pad",
    "linear",
    "load_model",
    "new_cache",
    "resolve_model_path",
    "sample",
    "validators",
    "verify_cost",
    "warp_logits",
    "warp_probs",
]
