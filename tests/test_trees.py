"""Tree proposals: the tree helpers, and greedy output identical to plain generate when drafts form a tree."""

import random

import pytest
import specdecode
import torch
from specdecode import ConfigError, Proposal, Proposer, ProposeRequest, SpeculativeConfig, trees
from specdecode.testing import repetitive_prompts
from specdecode.testing.reference import plain_greedy


def test_attention_mask_lets_each_node_see_its_ancestors_only():
    from specdecode.attention import FULL, AttentionLayout

    parents = (-1, -1, 0, 2, 1)  # two branches from the last token: 0 -> 2 -> 3 and 1 -> 4
    layout = AttentionLayout(kinds=(FULL,), window=None, per_kind_masks=False, tree_refusal=None)
    positions = trees.position_ids(trees.depths(parents), 3, "cpu")
    keys = torch.ones(1, 3, dtype=torch.bool), torch.arange(3).view(1, 3)
    mask = layout.masks(*keys, positions, trees.visibility(parents), torch.float32)
    assert mask.shape == (1, 1, 6, 9)
    allowed = (mask[0, 0] == 0).int()
    assert allowed[:, :3].all()  # the cache
    assert allowed[:, 3:].tolist() == [
        [1, 0, 0, 0, 0, 0],  # the last token
        [1, 1, 0, 0, 0, 0],  # node 0
        [1, 0, 1, 0, 0, 0],  # node 1
        [1, 1, 0, 1, 0, 0],  # node 2: last, 0, itself
        [1, 1, 0, 1, 1, 0],  # node 3: last, 0, 2, itself
        [1, 0, 1, 0, 0, 1],  # node 4: last, 1, itself
    ]
    assert trees.depths(parents) == [1, 1, 2, 3, 2]
    assert trees.position_ids(trees.depths(parents), 7, "cpu").tolist() == [[7, 8, 8, 9, 10, 9]]


def test_greedy_path_follows_the_targets_argmax_through_any_branch():
    parents = (-1, -1, 0, 1, 1)
    draft = [10, 11, 12, 13, 14]
    # target argmax after: last -> 11 (node 1), node 1 -> 14 (node 4), node 4 -> 99 (no child: the next token)
    target = [11, 12, 14, 0, 0, 99]
    assert trees.greedy_path(target, draft, parents) == ([1, 4], 99)
    assert trees.greedy_path([42, 0, 0, 0, 0, 0], draft, parents) == ([], 42)


def test_limit_depth_drops_deep_nodes_and_renumbers():
    tokens, parents = trees.limit_depth([5, 6, 7, 8, 9], (-1, 0, -1, 1, 2), max_depth=2)
    assert tokens == [5, 6, 7, 9] and parents == (-1, 0, -1, 2)


@pytest.mark.parametrize("parents", [(-1, 1), (-1, -2), (0,), (-1,)])
def test_bad_parents_name_the_field(parents):
    with pytest.raises(ConfigError, match="Proposal.parents"):
        trees.check_parents(parents, 2 if len(parents) != 1 or parents == (0,) else 3)


def test_keep_cache_slots_moves_the_path_into_place():
    from transformers import DynamicCache

    cache = DynamicCache()
    keys = torch.arange(8.0).view(1, 1, 8, 1)
    cache.update(keys, keys + 100, 0)
    trees.keep_cache_slots(cache, start=3, keep=[0, 2, 4])  # verify slots 3..7: keep 3, 5, 7
    assert cache.get_seq_length() == 6
    assert cache.layers[0].keys.flatten().tolist() == [0, 1, 2, 3, 5, 7]
    assert cache.layers[0].values.flatten().tolist() == [100, 101, 102, 103, 105, 107]


class TreeOracle(Proposer):
    """Drafts a random tree in which the target's greedy continuation sits on a random branch (sometimes only part
    of it, sometimes none), so accepted paths run through first, middle and last children."""

    needs_hidden_states = True

    def __init__(self, reference: list[int], vocab_size: int, seed: int):
        self.reference = reference  # prompt + the whole greedy continuation
        self.vocab = vocab_size
        self.rng = random.Random(seed)
        self.accepted_paths = 0
        self.off_first_branch = 0
        self.hidden: list[torch.Tensor] = []

    def start(self, context):
        self.hidden.append(context.hidden_states[0])

    def propose(self, request: ProposeRequest) -> Proposal:
        t = request.input_ids.shape[1]
        truth = self.reference[t : t + request.num_tokens]
        correct = self.rng.randint(0, len(truth))  # how deep the true path goes
        tokens, parents = [], []
        parent = -1
        self.true_nodes = []
        for depth in range(self.rng.randint(1, request.num_tokens + 1)):
            siblings = self.rng.randint(1, 3)
            slot = self.rng.randrange(siblings)
            true_token = truth[depth] if depth < len(truth) else None
            chosen = None
            used = {true_token}
            for s in range(siblings):
                if s == slot and depth < correct and true_token is not None:
                    token = true_token
                else:
                    token = self.rng.choice([v for v in range(self.vocab) if v not in used])
                    used.add(token)
                tokens.append(token)
                parents.append(parent)
                if s == slot:
                    chosen = len(tokens) - 1
            if self.rng.random() < 0.3:  # a wrong node hanging off a sibling branch too
                tokens.append(self.rng.randrange(self.vocab))
                parents.append(len(tokens) - 2 if len(tokens) >= 2 else -1)
            self.true_nodes.append((chosen, slot))
            parent = chosen
        return Proposal(token_ids=torch.tensor([tokens]), parents=tuple(parents))

    def on_verified(self, result):
        n = result.num_accepted_list[0]
        if n:
            self.accepted_paths += 1
            self.off_first_branch += any(slot > 0 for _, slot in self.true_nodes[:n])
        self.hidden.append(result.hidden_states[0, : n + 1])


def test_tree_proposals_give_plain_greedy_output_and_path_hidden_states(tiny_model):
    total_accepted = off_first = 0
    for seed, ids in enumerate(repetitive_prompts(64, count=4, seed=3)):
        reference = plain_greedy(tiny_model, ids, 40)
        proposer = TreeOracle(reference[0].tolist(), 64, seed)
        out = specdecode.generate(
            tiny_model, ids, SpeculativeConfig(num_speculative_tokens=4), max_new_tokens=40, proposer=proposer
        )
        assert torch.equal(out.sequences, reference)
        # The states handed to the proposer are the target's states along the accepted path: those of an
        # ordinary forward pass over the final sequence (up to rounding).
        with torch.inference_mode():
            full = tiny_model(out.sequences[:, :-1], output_hidden_states=True).hidden_states[-1][0]
        seen = torch.cat(proposer.hidden)  # the last step is not reported: generation ended there
        assert full.shape[0] - 6 < seen.shape[0] <= full.shape[0]
        assert torch.allclose(seen, full[: seen.shape[0]], atol=1e-5)
        total_accepted += out.stats.accepted
        off_first += proposer.off_first_branch
    assert total_accepted > 20 and off_first > 3  # paths through later siblings were taken and kept


def test_tree_proposals_are_refused_under_typical_acceptance(tiny_model):
    ids = repetitive_prompts(64, count=1)[0]
    proposer = TreeOracle(plain_greedy(tiny_model, ids, 10)[0].tolist(), 64, 0)
    config = SpeculativeConfig(acceptance_method="typical_acceptance_sampler")
    with pytest.raises(ConfigError, match="typical acceptance"):
        specdecode.generate(tiny_model, ids, config, max_new_tokens=10, do_sample=True, proposer=proposer)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0  # nothing outside p's support
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_sampled_path_emits_exactly_the_targets_distribution():
    """Two positions deep: the first emitted token follows p(. | last) and, after a first token t, the second
    follows p(. | t), whichever candidates the tree offered (including a repeated one and one outside p's
    support). Chi-square against the exact distributions; the same statistic for direct draws from them is the
    noise baseline (5 degrees of freedom at most: 20.5 is the 0.001 quantile)."""
    p_root = torch.tensor([0.35, 0.25, 0.2, 0.1, 0.1, 0.0])
    p_after = {0: torch.tensor([0.1, 0.1, 0.5, 0.1, 0.1, 0.1]), 1: torch.tensor([0.0, 0.6, 0.0, 0.2, 0.2, 0.0])}
    # root children: tokens 1, 0, 1 (repeated), 5 (p = 0); node 1 (token 0) has children 2 and 3
    draft, parents = [1, 0, 1, 5, 2, 3], (-1, -1, -1, -1, 1, 1)
    rows = [p_root, p_after[1], p_after[0], p_after[1], torch.ones(6) / 6, torch.ones(6) / 6, torch.ones(6) / 6]
    probs = torch.stack(rows)  # [k+1, V]: row 0 after the last token, row i+1 after node i
    g = torch.Generator().manual_seed(0)
    first, second = torch.zeros(6), {0: torch.zeros(6), 1: torch.zeros(6)}
    trials = 12000
    for _ in range(trials):
        path, nxt = trees.sampled_path(probs, draft, parents, g)
        emitted = [draft[i] for i in path] + [nxt]
        first[emitted[0]] += 1
        if len(emitted) > 1 and emitted[0] in second:
            second[emitted[0]][emitted[1]] += 1
    baseline = torch.bincount(torch.multinomial(p_root, trials, replacement=True, generator=g), minlength=6).float()
    assert _chi_square(baseline, p_root) < 20.5  # the threshold holds for honest draws
    assert _chi_square(first, p_root) < 20.5
    assert second[0].sum() > 1000
    assert _chi_square(second[0], p_after[0]) < 20.5  # after token 0 the tree offered children 2 and 3
