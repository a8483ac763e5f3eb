"""The suffix trie against brute force over small random token lists."""

import random
from collections import Counter

import pytest
from specdecode_suffix.trie import SuffixTrie, most_likely_path


def substring_counts(tokens, max_depth):
    return Counter(
        tuple(tokens[s : e + 1]) for e in range(len(tokens)) for s in range(max(0, e - max_depth + 1), e + 1)
    )


def trie_counts(trie):
    found, stack = {}, [((), trie.root)]
    while stack:
        path, node = stack.pop()
        for token, child in node.children.items():
            found[path + (token,)] = child.count
            stack.append((path + (token,), child))
    return found


@pytest.mark.parametrize("seed", range(5))
def test_incremental_trie_counts_every_bounded_substring(seed):
    rng = random.Random(seed)
    tokens = [rng.randrange(4) for _ in range(40)]
    trie = SuffixTrie(max_depth=5)
    for start in range(0, 40, 7):  # appended in uneven pieces, as the loop delivers them
        trie.append(tokens[start : start + 7])
    assert trie_counts(trie) == substring_counts(tokens, 5)


def test_separate_sequences_do_not_join_and_remove_undoes_add():
    trie = SuffixTrie(max_depth=4)
    trie.add_sequence([1, 2, 3])
    trie.add_sequence([4, 5])
    assert (3, 4) not in trie_counts(trie)
    assert trie_counts(trie) == substring_counts([1, 2, 3], 4) + substring_counts([4, 5], 4)
    trie.remove_sequence([1, 2, 3])
    assert trie_counts(trie) == substring_counts([4, 5], 4)


def test_longest_match_prefers_the_longest_suffix_with_a_continuation():
    trie = SuffixTrie(max_depth=8)
    trie.append([7, 1, 2, 3, 9, 2, 3, 5, 1, 2, 3])
    length, node = trie.longest_match([8, 1, 2, 3])
    # "8 1 2 3" never occurred; "1 2 3" did, first followed by 9 (its last occurrence has no continuation yet).
    assert length == 3
    assert most_likely_path(node, 4, 0.0) == [9, 2, 3, 5]


def test_most_likely_path_follows_counts_and_stops_below_min_prob():
    trie = SuffixTrie(max_depth=4)
    for continuation in ([1, 2], [1, 2], [1, 3]):
        trie.add_sequence([0, *continuation])
    _, node = trie.longest_match([0])
    assert most_likely_path(node, 3, 0.0) == [1, 2]
    assert most_likely_path(node, 3, 0.7) == [1]  # 1 always follows 0; then 2 has 2/3 < 0.7
    assert most_likely_path(node, 0, 0.0) == []
