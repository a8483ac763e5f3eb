"""The suffix-decoding proposer: match the end of the text in suffix tries, draft the most frequent continuation.

Two tries are consulted: one over this sequence (prompt and generated tokens so far) and, when
``cache_outputs > 0``, one over the outputs of earlier generations with the same target model (agentic and
repetitive workloads reuse them). The longer match wins. Speculation length adapts to the match: at most
``max_spec_factor`` times the match length, as in the paper, and never more than the loop asks for.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from typing import Any

import torch
from specdecode import PerSequenceProposer, StartContext, VerifyResult
from specdecode.toolkit import SequenceReader

from .options import SuffixOptions
from .trie import SuffixTrie, most_likely_path


class OutputCache:
    """The last ``size`` outputs of one target model, in one trie."""

    def __init__(self, size: int, max_depth: int):
        self.size = size
        self.trie = SuffixTrie(max_depth)
        self.outputs: deque[list[int]] = deque()

    def add(self, output: list[int]) -> None:
        if not output:
            return
        self.trie.add_sequence(output)
        self.outputs.append(output)
        while len(self.outputs) > self.size:
            self.trie.remove_sequence(self.outputs.popleft())


# target model -> {(size, max_depth): cache}; weak, so a dropped model takes its cache with it.
_CACHES: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], OutputCache]] = weakref.WeakKeyDictionary()


def output_cache(model: Any, size: int, max_depth: int) -> OutputCache:
    per_model = _CACHES.setdefault(model, {})
    return per_model.setdefault((size, max_depth), OutputCache(size, max_depth))


class SuffixProposer(PerSequenceProposer):
    def __init__(self, options: SuffixOptions, cache: OutputCache | None = None):
        self.options = options
        self.cache = cache
        self.tries: dict[int, SuffixTrie] = {}
        self.reader = SequenceReader()
        self.prompt_length = 0
        self.latest: torch.Tensor | None = None  # the newest verified tokens seen, [B, T]
        self.verified_steps = 0

    def start(self, context: StartContext) -> None:
        self.tries = {}
        self.reader = SequenceReader()
        self.prompt_length = context.input_ids.shape[1] - 1  # input_ids holds the first generated token too
        self.latest = context.input_ids
        self.verified_steps = 0

    def propose_one(self, index: int, tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
        trie = self._trie_for(index, tokens)
        context = tokens[-self.options.max_depth :].tolist()
        length, node = trie.longest_match(context, self.options.min_match)
        if self.cache is not None:
            cached_length, cached_node = self.cache.trie.longest_match(context, self.options.min_match)
            if cached_length > length:
                length, node = cached_length, cached_node
        if node is None:
            return torch.empty(0, dtype=torch.long)
        budget = min(num_tokens, math.ceil(self.options.max_spec_factor * length))
        return torch.tensor(most_likely_path(node, budget, self.options.min_token_prob), dtype=torch.long)

    def on_verified(self, result: VerifyResult) -> None:
        self.latest = result.input_ids
        self.verified_steps += 1

    def finish(self) -> None:
        # Without a verified step there is no output beyond the first token (and a proposer started only to
        # propose once, as the conformance kit's replay does, must not touch the shared cache).
        if self.cache is not None and self.latest is not None and self.verified_steps > 0:
            for row in self.latest:
                self.cache.add(row[self.prompt_length :].tolist())
        self.tries, self.latest = {}, None

    def _trie_for(self, index: int, tokens: torch.Tensor) -> SuffixTrie:
        """This sequence's trie, caught up with ``tokens``. Only verified tokens ever enter it, so a rejected
        draft needs no rollback."""
        new, restarted = self.reader.unread(index, tokens)
        if restarted:
            self.tries[index] = SuffixTrie(self.options.max_depth)
        trie = self.tries[index]
        trie.append(new)
        return trie
