"""Prompt lookup: propose the tokens that followed the most recent earlier occurrence of the current suffix.

The suffix of prompt + generated text is matched from ``prompt_lookup_max`` tokens down to ``prompt_lookup_min``;
the longest match wins, and among equal lengths the most recent occurrence. An index of n-grams is extended as
tokens arrive, so a step costs O(window), not a rescan of the sequence.
"""

from __future__ import annotations

import attrs
import torch

import specdecode
from specdecode import PerSequenceProposer, ProposerSpec, StartContext


@attrs.frozen(kw_only=True)
class NgramOptions:
    """Options of ``method="ngram"`` (besides the config's prompt_lookup_min / prompt_lookup_max)."""


class NgramIndex:
    """Maps every n-gram (min_n <= n <= max_n) of a growing token list to where its latest continuation starts."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self.tables: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}

    def extend(self, new_tokens: list[int]) -> None:
        tokens = self.tokens
        for token in new_tokens:
            # Token at position i = len(tokens) gives every n-gram ending just before it a continuation at i.
            i = len(tokens)
            for n, table in self.tables.items():
                if i >= n:
                    table[tuple(tokens[i - n : i])] = i
            tokens.append(token)

    def lookup(self, num_tokens: int) -> list[int]:
        """Continuation of the longest suffix match, up to ``num_tokens`` tokens; [] when nothing matches."""
        tokens = self.tokens
        length = len(tokens)
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            start = self.tables[n].get(tuple(tokens[length - n :]))
            if start is not None:
                return tokens[start : start + num_tokens]
        return []


class NgramProposer(PerSequenceProposer):
    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.indexes: dict[int, NgramIndex] = {}

    def start(self, context: StartContext) -> None:
        self.indexes = {}

    def propose_one(self, index: int, tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
        ngram = self.indexes.get(index)
        if ngram is None:
            ngram = self.indexes[index] = NgramIndex(self.min_n, self.max_n)
        if len(ngram.tokens) > tokens.shape[0]:  # the sequence shrank (a new generation): start over
            ngram = self.indexes[index] = NgramIndex(self.min_n, self.max_n)
        if len(ngram.tokens) < tokens.shape[0]:
            ngram.extend(tokens[len(ngram.tokens) :].tolist())
        return torch.tensor(ngram.lookup(num_tokens), dtype=torch.long)


def _factory(model, config: specdecode.SpeculativeConfig, options: NgramOptions) -> NgramProposer:
    lo, hi = config.prompt_lookup_window
    return NgramProposer(lo, hi)


@specdecode.hookimpl
def specdecode_proposers():
    return [
        ProposerSpec(
            name="ngram",
            factory=_factory,
            options_class=NgramOptions,
            description="Prompt lookup: copy what followed the latest earlier match of the current n-gram suffix.",
        )
    ]
