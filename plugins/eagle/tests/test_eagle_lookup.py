"""Prompt lookup joined to the head's drafts (``prompt_lookup``, on by default): greedy output still equals plain
generate, sampling still follows the target, lookup branches merge with the head's equal candidates, steps that
skip the head still draft from lookup, and the option reaches the proposer."""

import pytest
import specdecode
import torch
from specdecode.testing import tiny_llama
from specdecode_eagle import Eagle3Options, EagleOptions, _factory
from specdecode_eagle.eagle3 import Eagle3Drafter, random_eagle3_head
from specdecode_eagle.head import EagleDrafter, random_head
from specdecode_eagle.proposer import EagleProposer
from test_eagle_backoff import OracleDrafter
from test_eagle_greedy import assert_greedy_matches
from test_eagle_sampling import _setup, assert_follows_target

torch.set_num_threads(1)  # tiny models: a second thread only adds contention


class LookupCounting(EagleProposer):
    """Counts the drafts prompt lookup placed (in chains and trees) and checks every tree's nodes are distinct."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lookup_drafts = self.merged = 0

    def propose(self, request):
        proposal = super().propose(request)
        self.lookup_drafts += len(self.lookup_confidences)
        if self.tree is not None:
            tree = self.tree
            pairs = list(zip(tree.parents, tree.tokens))
            assert len(set(pairs)) == len(pairs), "a tree holds two equal siblings"
            self.lookup_drafts += sum(c is not None for c in tree.lookup_confidences)
            self.merged += sum(c is not None and lc is not None for c, lc in zip(tree.confidences,
                                                                                  tree.lookup_confidences))
        return proposal


class TreeOracle(OracleDrafter):
    """test_eagle_backoff's oracle for trees: every node of a depth gets the prediction of that depth's position
    (the oracle knows one continuation, so only the branch along it is right)."""

    def tree_features(self, hidden, next_tokens, start, cache, sees):
        n = next_tokens.shape[1]
        cache.length += n
        return torch.full((1, n, 1), float(start + 2))

    def logits(self, features):
        rows = features.reshape(-1).long().tolist()
        out = torch.zeros(len(rows), self.vocab)
        for row, index in enumerate(rows):
            if index < len(self.sequence):
                out[row, self.sequence[index]] = 10.0
        return out


@pytest.mark.parametrize("tree_width", [1, 3], ids=["chain", "tree"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-k", "back-off"])
def test_greedy_matches_plain_generate_with_lookup(adaptive, tree_width):
    # Vocabulary 12: random prompts and the tiny target's output repeat n-grams, so lookup drafts often.
    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=4, seed=3)
    drafter = Eagle3Drafter(random_eagle3_head(model.config, std=0.3, seed=2), model)
    options = Eagle3Options(adaptive=adaptive, tree_width=tree_width, tree_nodes=6)
    made = []

    def make():
        made.append(LookupCounting(drafter, options, (1, 3)))
        return made[-1]

    assert_greedy_matches(model, make, "eagle3", 4, prompts=3)
    assert sum(p.lookup_drafts for p in made) > 0


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-k", "back-off"])
def test_lookup_branch_merges_with_the_heads_equal_candidates(adaptive):
    """An oracle head drafts the target's continuation; where lookup has found it too, the tree holds it once, with
    both confidences, and each calibration learns from the nodes it proposed."""
    vocab = 12
    model = tiny_llama(vocab_size=vocab, hidden_size=32, num_layers=2, seed=3)
    ids = torch.randint(0, vocab, (1, 6), generator=torch.Generator().manual_seed(1))
    expected = model.generate(ids, max_new_tokens=60, do_sample=False)
    proposer = LookupCounting(TreeOracle(expected, vocab), EagleOptions(adaptive=adaptive, tree_width=2), (1, 3))
    out = specdecode.generate(model, ids, {"method": "eagle", "num_speculative_tokens": 4}, max_new_tokens=60,
                              proposer=proposer)
    assert torch.equal(out.sequences, expected)
    assert proposer.merged > 0
    prior = [[p * 2.0, 2.0] for p in (1.0, 1.0, 1.0)]  # Calibration(1.0)'s untouched cells
    assert proposer.lookup_calibration.position != prior
    assert proposer.tally[0][2] > 0  # the head's drafts were counted as well


def test_steps_that_skip_the_head_still_draft_from_lookup():
    """A useless head is backed off and run rarely; lookup keeps drafting in the steps that skip it, and the drafts
    it places are accepted, so the output still comes faster than one token per step."""
    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=2, seed=3)
    drafter = EagleDrafter(random_head(model.config, std=1.0), model)  # confident and nearly always wrong
    ids = torch.tensor([[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3]])
    expected = model.generate(ids, max_new_tokens=80, do_sample=False)
    proposer = LookupCounting(drafter, EagleOptions(), (1, 3))
    out = specdecode.generate(model, ids, {"method": "eagle", "num_speculative_tokens": 5}, max_new_tokens=80,
                              proposer=proposer)
    assert torch.equal(out.sequences, expected)
    assert proposer.skipped > 0 and proposer.lookup_drafts > 0
    alone = EagleProposer(drafter, EagleOptions())  # the same head without lookup
    plain = specdecode.generate(model, ids, {"method": "eagle", "num_speculative_tokens": 5}, max_new_tokens=80,
                                proposer=alone)
    assert out.stats.accepted > plain.stats.accepted


@pytest.mark.parametrize("options", [{"tree_width": 1}, {}], ids=["chain", "default-tree"])
def test_sampled_output_follows_the_target_distribution_with_lookup(options):
    """Lookup drafts are deterministic: rejection sampling takes them as one-hot q (chains), the core's tree
    acceptance as deterministic candidates; the chain's choice between them and the head is made from q_1's
    maximum only."""
    target, drafter = _setup()
    made = []

    def make():
        made.append(LookupCounting(drafter, EagleOptions(**options), (1, 2)))
        return made[-1]

    assert_follows_target(target, torch.tensor([[1, 4, 2]]), make)
    assert sum(p.lookup_drafts for p in made) > 0


def test_the_option_and_the_configs_window_reach_the_proposer(tmp_path):
    from specdecode_eagle.checkpoint import save_head

    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=2, seed=3)
    save_head(random_head(model.config, std=0.3), tmp_path)
    config = specdecode.SpeculativeConfig(method="eagle", draft_model=str(tmp_path), prompt_lookup_max=4)
    assert _factory(model, config, config.options).lookup_window == config.prompt_lookup_window == (2, 4)
    off = specdecode.SpeculativeConfig(method="eagle", draft_model=str(tmp_path),
                                       method_options={"prompt_lookup": False})
    assert off.options.prompt_lookup is False and _factory(model, off, off.options).lookup_window is None
    with pytest.raises(specdecode.ConfigError, match="prompt_lookup"):
        EagleOptions(prompt_lookup="yes")


def test_a_head_that_adds_nothing_beside_lookup_is_skipped():
    """After HEAD_WORTH_WINDOW tree steps in which the head's own nodes gave fewer tokens than its passes and rows
    cost, the head is skipped (lookup drafts alone), for longer each time; a head that pays is never skipped."""
    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=2, seed=3)
    drafter = EagleDrafter(random_head(model.config, std=0.3), model)
    idle, useful = (EagleProposer(drafter, EagleOptions(), (1, 3)) for _ in range(2))
    skips = []
    for _ in range(EagleProposer.HEAD_WORTH_WINDOW + 2):
        for proposer, gained in ((idle, 0), (useful, 2)):
            proposer.head_passes, proposer.step_rate = 2, 1.5  # a catch-up and one tree depth; 1.5 tokens/step
            proposer._weigh_head(gained, rows=3)
        skips.append(idle.skip_left)
        assert useful.skip_left == 0
    window = EagleProposer.HEAD_WORTH_WINDOW
    assert skips[: window - 1] == [0] * (window - 1) and 0 < skips[window - 1] < skips[window] < skips[window + 1]
