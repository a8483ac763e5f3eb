"""Greedy speculative output equals plain greedy generate, whatever the draft; and the draft cache is
reused."""

from __future__ import annotations

import pytest
import specdecode
import torch
from draft_model_helpers import plain_greedy, prompts, speculative
from specdecode.testing import tiny_llama

VOCAB = 64
NEW = 24


@pytest.fixture(scope="module")
def target():
    return tiny_llama(vocab_size=VOCAB, num_layers=3, seed=0)


@pytest.fixture(scope="module")
def unrelated_draft():
    return tiny_llama(vocab_size=VOCAB, num_layers=1, hidden_size=16, num_heads=2, num_kv_heads=1, seed=7)


def test_draft_equal_to_target_accepts_everything(target):
    for prompt in prompts(VOCAB):
        out = speculative(
            target, prompt, NEW, method="draft_model", draft_model=target, num_speculative_tokens=4
        )
        assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))
        assert out.stats.acceptance_rate == 1.0
        # Every full step emits K drafts + the bonus token; only the last step may be cut by max_new_tokens.
        assert out.stats.accepted_per_step[:-1] == [4] * (len(out.stats.accepted_per_step) - 1)


def test_unrelated_draft_accepts_almost_nothing_and_stays_exact(target, unrelated_draft):
    total = specdecode.GenerationStats()
    for prompt in prompts(VOCAB):
        out = speculative(target, prompt, NEW, method="draft_model", draft_model=unrelated_draft)
        assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))
        total = total.merge(out.stats)
    assert total.drafted > 50
    assert total.acceptance_rate < 0.2


@pytest.mark.parametrize("k", [1, 3, 6])
def test_every_speculation_depth_is_exact(target, k):
    draft = tiny_llama(vocab_size=VOCAB, num_layers=2, seed=0)  # shares the target's first layers' init seed
    prompt = prompts(VOCAB, count=1, seed=k)[0]
    out = speculative(target, prompt, NEW, method="draft_model", draft_model=draft, num_speculative_tokens=k)
    assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))


@pytest.mark.parametrize("draft_name", ["target", "unrelated_draft"])
def test_draft_cache_never_recomputes_the_accepted_prefix(draft_name, request, target):
    draft = request.getfixturevalue(draft_name)
    prompt = prompts(VOCAB, count=1)[0]
    config = specdecode.SpeculativeConfig(method="draft_model", draft_model=draft, num_speculative_tokens=4)
    proposer = specdecode.build_proposer(target, config)
    seen = []  # (tokens so far, drafts proposed, tokens the draft cache holds afterwards)
    original = type(proposer).propose

    def recording_propose(request):
        proposal = original(proposer, request)
        seen.append((request.input_ids.shape[1], proposal.num_tokens, len(proposer.caches[0].ids)))
        return proposal

    proposer.propose = recording_propose
    out = specdecode.generate(target, prompt, config, max_new_tokens=NEW, proposer=proposer)
    assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))
    # The cache holds the sequence plus every draft but the last: the last draft is fed only if it is
    # accepted.
    assert all(cached == length + k - 1 for length, k, cached in seen)
    # One forward for the prompt, then one per draft token: the catch-up token rides in the first draft pass.
    assert proposer.draft_forwards == 1 + out.stats.drafted


def test_draft_p_min_stops_unsure_drafts_and_stays_exact(target, unrelated_draft):
    prompt = prompts(VOCAB, count=1)[0]
    eager = speculative(target, prompt, NEW, method="draft_model", draft_model=unrelated_draft)
    careful = speculative(
        target,
        prompt,
        NEW,
        method="draft_model",
        draft_model=unrelated_draft,
        method_options={"draft_p_min": 0.5},
    )
    assert torch.equal(careful.sequences, eager.sequences)
    assert careful.stats.drafted < eager.stats.drafted


def test_left_padding_is_ignored(target):
    prompt = prompts(VOCAB, count=1)[0]
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(prompt)], dim=1)
    config = specdecode.SpeculativeConfig(method="draft_model", draft_model=target)
    out = specdecode.generate(target, padded, config, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(out.sequences[:, 3:], plain_greedy(target, prompt, NEW))


@pytest.mark.parametrize("method", ["draft_model", "layer_skip"])
def test_a_left_padded_batch_gives_each_sequence_its_own_output(target, unrelated_draft, method):
    short, long = prompts(VOCAB, count=2)
    width = long.shape[1]
    batch = torch.zeros(2, width, dtype=torch.long)
    batch[0, width - short.shape[1] :], batch[1] = short[0], long[0]
    mask = (torch.arange(width) >= width - short.shape[1]).long().unsqueeze(0).repeat(2, 1)
    mask[1] = 1
    extra = {"draft_model": unrelated_draft} if method == "draft_model" else {}
    config = specdecode.SpeculativeConfig(method=method, num_speculative_tokens=3, **extra)
    out = specdecode.generate(target, batch, config, attention_mask=mask, max_new_tokens=NEW)
    for row, prompt in enumerate((short, long)):
        expected = plain_greedy(target, prompt, NEW)[0, prompt.shape[1] :]
        assert torch.equal(out.sequences[row, width:], expected)
