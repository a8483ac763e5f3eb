"""A suffix trie of bounded depth over a growing token list, with occurrence counts.

Every substring of length <= ``max_depth`` is a path from the root; a node's ``count`` says how often that
substring occurred. Appending a token extends the (at most ``max_depth``) paths that end at the previous token, so
the trie grows in O(max_depth) per token. This is the data structure of suffix decoding (Oliaro et al. 2024,
arXiv 2411.04975) with the depth cap it uses in practice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class Node:
    __slots__ = ("children", "count", "last")

    def __init__(self) -> None:
        self.children: dict[int, Node] = {}
        self.count = 0
        self.last = 0  # when this substring was last seen (a stamp from the trie's clock); breaks count ties


class SuffixTrie:
    def __init__(self, max_depth: int):
        self.max_depth = max_depth
        self.root = Node()
        self.clock = 0
        self._open: list[Node] = []  # nodes of the suffixes ending at the last appended token, shortest first

    def append(self, tokens: Iterable[int]) -> None:
        """Continue the current sequence with ``tokens``."""
        for token in tokens:
            self.clock += 1
            grown = []
            for node in [self.root, *self._open[: self.max_depth - 1]]:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = Node()
                child.count += 1
                child.last = self.clock
                grown.append(child)
            self._open = grown

    def add_sequence(self, tokens: Sequence[int]) -> None:
        """Insert a whole separate sequence (an earlier output); it does not join up with the current one."""
        saved, self._open = self._open, []
        self.append(tokens)
        self._open = saved

    def remove_sequence(self, tokens: Sequence[int]) -> None:
        """Undo :meth:`add_sequence` for the same tokens (for a cache that forgets old outputs)."""
        for start in range(len(tokens)):
            node = self.root
            for token in tokens[start : start + self.max_depth]:
                child = node.children[token]
                child.count -= 1
                if child.count == 0:
                    del node.children[token]
                    break
                node = child

    def longest_match(self, context: Sequence[int], min_length: int = 1) -> tuple[int, Node | None]:
        """The longest suffix of ``context`` (at most ``max_depth - 1`` tokens, so a continuation fits) that is a
        path with at least one continuation. Returns (its length, its node) or (0, None)."""
        longest = min(len(context), self.max_depth - 1)
        for length in range(longest, min_length - 1, -1):
            node = self._walk(context[len(context) - length :])
            if node is not None and node.children:
                return length, node
        return 0, None

    def _walk(self, tokens: Sequence[int]) -> Node | None:
        node = self.root
        for token in tokens:
            node = node.children.get(token)
            if node is None:
                return None
        return node


def most_likely_path(node: Node, max_tokens: int, min_prob: float) -> list[int]:
    """Follow the most frequent continuation from ``node`` while its estimated probability (the product of
    count ratios along the path) stays at or above ``min_prob``."""
    path: list[int] = []
    prob = 1.0
    while len(path) < max_tokens and node.children:
        total = sum(child.count for child in node.children.values())
        token, child = max(node.children.items(), key=lambda item: (item[1].count, item[1].last))
        prob *= child.count / total
        if prob < min_prob:
            break
        path.append(token)
        node = child
    return path
