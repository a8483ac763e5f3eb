"""Greedy EAGLE output equals plain greedy generate, and the head's incremental state matches a full recompute."""

import pytest
import specdecode
import torch
from specdecode.testing import tiny_llama
from specdecode_eagle import EagleOptions
from specdecode_eagle.head import EagleDrafter, EagleHead, random_head
from specdecode_eagle.proposer import EagleProposer

torch.set_num_threads(1)  # tiny models: a second thread only adds contention


def _random_head(model, seed: int = 0, **overrides) -> EagleHead:
    # Larger weights than the default init, so the drafts vary and sometimes agree with the target.
    return random_head(model.config, std=0.3, seed=seed, **overrides)


@pytest.mark.parametrize("tree_width", [1, 3], ids=["chain", "tree"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-k", "back-off"])
@pytest.mark.parametrize(
    ("vocab", "k", "draft_vocab"),
    [(64, 5, None), (12, 3, None), (12, 4, list(range(0, 12, 2)))],
)
def test_greedy_matches_plain_generate(vocab, k, draft_vocab, adaptive, tree_width):
    model = tiny_llama(vocab_size=vocab, hidden_size=32, num_layers=2, seed=3)
    head = _random_head(model)
    vocab_ids = None if draft_vocab is None else torch.tensor(draft_vocab)
    options = EagleOptions(adaptive=adaptive, tree_width=tree_width, tree_nodes=6)
    accepted = assert_greedy_matches(model, lambda: EagleProposer(EagleDrafter(head, model, vocab_ids), options),
                                     "eagle", k, prompts=3)
    if vocab == 12 and not adaptive:
        assert accepted > 0  # a small vocabulary makes some drafts right, so the rollback path runs too


def assert_greedy_matches(model, make_proposer, method, k, prompts):
    """Speculative greedy output with ``make_proposer()`` equals plain greedy generate on ``prompts`` random prompts
    (a one-token prompt first); a fixed-k proposer drafts. Returns the drafts accepted (also used for EAGLE-3)."""
    vocab, accepted = model.config.vocab_size, 0
    for seed in range(prompts):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (1, 1 + 5 * seed), generator=g)
        expected = model.generate(ids, max_new_tokens=20, do_sample=False)
        proposer = make_proposer()
        out = specdecode.generate(
            model, ids, {"method": method, "num_speculative_tokens": k}, max_new_tokens=20, proposer=proposer
        )
        assert torch.equal(out.sequences, expected), f"prompt seed {seed}"
        if not proposer.options.adaptive:  # the back-off may rightly draft nothing with a random head
            assert out.stats.drafted > 0
        accepted += out.stats.accepted
    return accepted


class RecordingProposer(EagleProposer):
    """Keeps (committed positions, draft logits, positions caught up) after every head update, to compare with a
    full recompute."""

    def __init__(self, drafter, options=None):
        super().__init__(drafter, options)
        self.records = []

    def _catch_up(self):
        caught_up = sum(t.shape[1] for _, t in self.pending)
        super()._catch_up()
        if caught_up:
            self.records.append((self.committed, self.next_logits.clone(), caught_up))


@pytest.mark.parametrize("tree_width", [1, 2], ids=["chain", "tree"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-k", "back-off"])
def test_incremental_head_state_matches_a_full_recompute(adaptive, tree_width):
    """After every head update, the kept draft logits equal a fresh head pass over the real features of the
    sequence: this pins down the alignment of the prompt and verify-pass hidden states, the cache rollback, and
    (with the back-off) the catch-up over several skipped steps in one pass."""
    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=2, seed=5)
    head = _random_head(model, seed=1)
    drafter = EagleDrafter(head, model)
    proposer = RecordingProposer(drafter, EagleOptions(adaptive=adaptive, tree_width=tree_width))
    ids = torch.randint(0, 12, (1, 7), generator=torch.Generator().manual_seed(0))
    out = specdecode.generate(model, ids, {"method": "eagle", "num_speculative_tokens": 3}, max_new_tokens=60,
                              proposer=proposer)
    if adaptive:
        assert proposer.skipped > 0 and any(n > 2 for _, _, n in proposer.records[1:])  # multi-step catch-ups ran
    else:
        assert out.stats.accepted > 0 and out.stats.accepted < out.stats.drafted  # both paths were taken
    assert_state_matches_recompute(model, drafter, proposer, out.sequences)


def assert_state_matches_recompute(model, drafter, proposer, seq):
    """Every recorded catch-up's draft logits equal one fresh head pass over the target states of ``seq`` at the
    layers the proposer asked the core for (the last one for EAGLE-1/2)."""
    layers = proposer.hidden_state_layers
    with torch.inference_mode():
        states = model(input_ids=seq, output_hidden_states=True).hidden_states
        hidden = states[-1] if layers is None else torch.cat([states[i] for i in layers], dim=-1)  # [1, N, .]
        fused = drafter.fuse_target_states(hidden[:, :-1])
        features = drafter.features(fused, seq[:, 1:], 0, None)  # position j reads (f_j, x_{j+1})
        full = drafter.logits(features)[0]  # [N-1, V]
    assert len(proposer.records) > 3
    for committed, logits, _ in proposer.records:
        torch.testing.assert_close(logits[0], full[committed - 1], atol=1e-4, rtol=1e-4)


def test_tree_drafts_are_what_the_head_drafts_along_each_path():
    """Every node's children in a tree are the head's top continuations after the node's path, as a chain run of the
    head along that path computes them: pins down the tree's attention mask and positions inside the head."""
    from specdecode import ProposeRequest, SamplingParams

    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=2, seed=5)
    drafter = EagleDrafter(_random_head(model, seed=2), model)
    width, depth = 3, 3
    proposer = EagleProposer(drafter, EagleOptions(adaptive=False, tree_width=width, tree_nodes=100))
    ids = torch.randint(0, 12, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    proposer.start(specdecode.StartContext(input_ids=ids, attention_mask=torch.ones_like(ids), num_speculative_tokens=depth,
                                           sampling=SamplingParams(), generator=None, hidden_states=hidden[:, :-1]))
    request = ProposeRequest(input_ids=ids, attention_mask=torch.ones_like(ids), num_tokens=depth,
                             active=torch.ones(1, dtype=torch.bool), sampling=SamplingParams(), generator=None)
    proposal = proposer.propose(request)
    tokens, parents = proposal.token_ids[0].tolist(), proposal.parents
    assert len(tokens) == width + width * width + width * width  # every depth keeps width^2 candidates, expands width
    m = ids.shape[1] - 1
    with torch.inference_mode():
        for node in [-1] + list(range(len(tokens))):
            children = sorted(tokens[i] for i, p in enumerate(parents) if p == node)
            if not children:
                continue
            path = []
            walk = node
            while walk >= 0:
                path.insert(0, tokens[walk])
                walk = parents[walk]
            cache = drafter.new_cache()
            features = drafter.features(hidden[:, :m], ids[:, 1 : m + 1], 0, cache)
            feature = features[:, -1:]
            for i, token in enumerate(path):
                feature = drafter.features(feature, torch.tensor([[token]]), m + i, cache)
            top = drafter.logits(feature[0, -1]).topk(width).indices.tolist()
            assert children == sorted(top), f"node {node} (path {path})"
