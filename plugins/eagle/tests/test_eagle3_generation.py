"""Generating with an EAGLE-3 head: greedy output equals plain greedy generate (chains and trees), the head's
incremental state matches a full recompute over the aux layers, and sampling follows the target's distribution.
The checks and helpers are EAGLE-1's (test_eagle_greedy.py, test_eagle_sampling.py), run through EagleProposer with
an Eagle3Drafter."""

import pytest
import specdecode
import torch
from specdecode.testing import tiny_llama
from specdecode_eagle import Eagle3Options
from specdecode_eagle.eagle3 import Eagle3Drafter, random_eagle3_head
from specdecode_eagle.proposer import EagleProposer
from test_eagle_greedy import RecordingProposer, assert_greedy_matches, assert_state_matches_recompute
from test_eagle_sampling import VOCAB, assert_follows_target

torch.set_num_threads(1)  # tiny models: a second thread only adds contention
LAYERS = 4


def _drafter(model, seed=0, **changes):
    # Larger weights than the default init, so the drafts vary and sometimes agree with the target.
    return Eagle3Drafter(random_eagle3_head(model.config, std=0.3, seed=seed, **changes), model)


@pytest.mark.parametrize("tree_width", [1, 3], ids=["chain", "tree"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-k", "back-off"])
@pytest.mark.parametrize(
    ("vocab", "k", "changes"),
    [(64, 5, {"norm_before_residual": True}),
     (12, 4, {"draft_vocab": [0, 2, 5, 6, 8, 11], "aux_layer_ids": (0, 1, 3)})],
    ids=["full-vocab", "draft-vocab"],
)
def test_greedy_matches_plain_generate(vocab, k, changes, adaptive, tree_width):
    model = tiny_llama(vocab_size=vocab, hidden_size=32, num_layers=LAYERS, seed=3)
    drafter = _drafter(model, seed=2, **changes)  # a random head whose drafts are right now and then on this target
    options = Eagle3Options(adaptive=adaptive, tree_width=tree_width, tree_nodes=6)
    proposer = EagleProposer(drafter, options)
    assert proposer.hidden_state_layers == drafter.hidden_state_layers == changes.get("aux_layer_ids", (2, 2, 1))
    accepted = assert_greedy_matches(model, lambda: EagleProposer(drafter, options), "eagle3", k, prompts=2)
    if vocab == 12 and not adaptive:
        assert accepted > 0  # a small vocabulary makes some drafts right, so the rollback path runs too


@pytest.mark.parametrize("tree_width", [1, 2], ids=["chain", "tree"])
def test_incremental_head_state_matches_a_full_recompute(tree_width):
    """After every head update, the kept draft logits equal a fresh head pass over the target's aux states of the
    sequence so far (transformers' hidden_states at the head's layers): pins down which layers the core hands
    over, their alignment with the tokens, and the cache rollback."""
    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=LAYERS, seed=5)
    drafter = _drafter(model, seed=1, aux_layer_ids=(1, 3, 2))
    proposer = RecordingProposer(drafter, Eagle3Options(adaptive=False, tree_width=tree_width))
    ids = torch.randint(0, 12, (1, 7), generator=torch.Generator().manual_seed(0))
    out = specdecode.generate(model, ids, {"method": "eagle3", "num_speculative_tokens": 3}, max_new_tokens=40,
                              proposer=proposer)
    assert 0 < out.stats.accepted < out.stats.drafted  # both paths were taken
    assert proposer.hidden_state_layers == (1, 3, 2)  # the recompute concatenates these, in this order
    assert_state_matches_recompute(model, drafter, proposer, out.sequences)


def test_sampled_output_follows_the_target_distribution():
    """test_eagle_sampling's check (seeded draws against the exact distribution, judged by plain sampling's noise)
    with an EAGLE-3 chain whose head scores 4 of the 6 tokens: q reaches rejection sampling through d2t. (Trees
    under sampling take EAGLE-1's path unchanged, test_eagle_sampling.py; their d2t mapping is checked above.)"""
    target = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=LAYERS, seed=4, num_heads=2, num_kv_heads=1,
                        initializer_range=0.4)
    drafter = _drafter(target, draft_vocab=[0, 1, 2, 4], aux_layer_ids=(1, 2, 3))
    assert_follows_target(target, torch.tensor([[1, 4, 2]]), lambda: EagleProposer(drafter, Eagle3Options(tree_width=1)))


def test_states_of_the_wrong_layers_are_refused_at_start():
    """A proposer wrapper that loses ``hidden_state_layers`` makes the loop hand over the last layer's [.., H]; the
    proposer says so instead of drafting from a misread fc input."""
    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=LAYERS, seed=5)
    proposer = EagleProposer(_drafter(model, aux_layer_ids=(1, 2, 3)), Eagle3Options())
    ids = torch.randint(0, 12, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        last = model(input_ids=ids[:, :-1], output_hidden_states=True).hidden_states[-1]  # [1, 4, 32]
    context = specdecode.StartContext(input_ids=ids, attention_mask=torch.ones_like(ids), num_speculative_tokens=3,
                                      sampling=specdecode.SamplingParams(), generator=None, hidden_states=last)
    with pytest.raises(specdecode.ConfigError, match=r"at layers \(1, 2, 3\), \[1, 4, 96\] \(got \(1, 4, 32\)\)"):
        proposer.start(context)
