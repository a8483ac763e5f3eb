"""Prompt lookup's index, shared by proposers: ``method="ngram"`` drafts from it alone, the EAGLE heads add its
continuation to their trees (copied spans are what a small head misses most)."""

from __future__ import annotations


class NgramIndex:
    """Maps every n-gram (min_n <= n <= max_n) of a growing token list to where its latest continuation starts.

    ``extend`` costs O(max_n) per token and ``match`` O(max_n), so a step never rescans the sequence."""

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

    def match(self, num_tokens: int) -> tuple[list[int], int]:
        """(continuation of the longest suffix match, up to ``num_tokens`` tokens; its n-gram length), or ([], 0).
        Among matches of equal length the most recent occurrence wins."""
        tokens = self.tokens
        length = len(tokens)
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            start = self.tables[n].get(tuple(tokens[length - n :]))
            if start is not None:
                return tokens[start : start + num_tokens], n
        return [], 0

    def lookup(self, num_tokens: int) -> list[int]:
        return self.match(num_tokens)[0]
