"""Sampling stays lossless: the draft reports the exact q it sampled from, and speculative sampling follows
the target's distribution (total variation within the noise of plain sampling, with a baseline that shows the
test would notice the draft's own distribution)."""

from __future__ import annotations

import pytest
import specdecode
import torch
from draft_model_helpers import char_tokenizer, sharpen
from specdecode import SamplingParams
from specdecode.testing import tiny_llama
from specdecode.toolkit import warp_probs

VOCAB = 4
PROMPT = torch.tensor([[0, 1, 2, 3, 1]])
DRAWS = 200
SMALL = dict(hidden_size=16, num_heads=2, num_kv_heads=1)


@pytest.fixture(scope="module")
def target():
    return sharpen(tiny_llama(vocab_size=VOCAB, num_layers=2, seed=0, **SMALL), 10.0)


@pytest.fixture(scope="module")
def draft():
    # Padded vocabulary (6 rows for 4 tokens): the extra ids must be masked and q cut to the target's 4.
    return sharpen(tiny_llama(vocab_size=VOCAB + 2, num_layers=1, seed=3, **SMALL), 10.0)


def exact_pair_distribution(model, params: SamplingParams, vocab: int = VOCAB) -> torch.Tensor:
    """P(x2, x3) after PROMPT, x1 summed out: the 2nd and 3rd generated tokens are the speculated ones."""
    joint = torch.zeros(vocab, vocab)
    with torch.inference_mode():
        p1 = warp_probs(model(PROMPT).logits[0, -1, :vocab], params)
        for x1 in range(vocab):
            prefix = torch.cat([PROMPT, torch.tensor([[x1]])], dim=1)
            p2 = warp_probs(model(prefix).logits[0, -1, :vocab], params)
            rows = torch.cat([prefix.repeat(vocab, 1), torch.arange(vocab).view(-1, 1)], dim=1)
            p3 = warp_probs(model(rows).logits[:, -1, :vocab], params)  # [x2, x3]
            joint += p1[x1] * p2.unsqueeze(1) * p3
    return joint.flatten()


def total_variation(counts: torch.Tensor, probs: torch.Tensor) -> float:
    return 0.5 * float((counts / counts.sum() - probs).abs().sum())


def noise_level(probs: torch.Tensor, draws: int, seed: int = 0) -> float:
    """99th percentile of the TV distance of plain sampling (draws samples) from the exact distribution."""
    g = torch.Generator().manual_seed(seed)
    tvs = []
    for _ in range(300):
        counts = torch.bincount(
            torch.multinomial(probs, draws, replacement=True, generator=g), minlength=len(probs)
        )
        tvs.append(total_variation(counts.float(), probs))
    return float(torch.tensor(tvs).quantile(0.99))


def speculative_pair_counts(model, config, params: SamplingParams, tokenizer=None) -> torch.Tensor:
    proposer = specdecode.build_proposer(model, config)
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(VOCAB * VOCAB)
    for _ in range(DRAWS):
        out = specdecode.generate(
            model,
            PROMPT,
            config,
            max_new_tokens=4,
            do_sample=True,
            temperature=params.temperature,
            top_k=params.top_k,
            generator=g,
            proposer=proposer,
            tokenizer=tokenizer,
        )
        x2, x3 = out.sequences[0, PROMPT.shape[1] + 1 : PROMPT.shape[1] + 3].tolist()
        counts[x2 * VOCAB + x3] += 1
    return counts


def test_speculative_sampling_follows_the_target_distribution(target, draft):
    # Temperature and top-k on: the draft must warp exactly as the target does. (Plain T=1 sampling is covered
    # by the cross-tokenizer test below and the q test.)
    params = SamplingParams(do_sample=True, temperature=0.7, top_k=3)
    config = specdecode.SpeculativeConfig(method="draft_model", draft_model=draft, num_speculative_tokens=2)
    exact = exact_pair_distribution(target, params)
    counts = speculative_pair_counts(target, config, params)
    noise = noise_level(exact, DRAWS)
    assert total_variation(counts, exact) <= noise
    assert counts[exact == 0].sum() == 0  # nothing outside top-k ever comes out
    # The test has power: the draft's own distribution is far outside the noise.
    assert total_variation(exact_pair_distribution(draft, params) * DRAWS, exact) > 2 * noise


def test_reported_q_is_the_distribution_the_draft_sampled_from(target, draft):
    params = SamplingParams(do_sample=True, temperature=0.8)
    config = specdecode.SpeculativeConfig(method="draft_model", draft_model=draft, num_speculative_tokens=1)
    proposer = specdecode.build_proposer(target, config)
    tokens = torch.cat([PROMPT, torch.tensor([[2]])], dim=1)
    mask = torch.ones_like(tokens)
    g = torch.Generator().manual_seed(5)
    proposer.start(
        specdecode.StartContext(
            input_ids=tokens, attention_mask=mask, num_speculative_tokens=1, sampling=params, generator=g
        )
    )
    request = specdecode.ProposeRequest(
        input_ids=tokens,
        attention_mask=mask,
        num_tokens=1,
        active=torch.ones(1, dtype=torch.bool),
        sampling=params,
        generator=g,
    )
    counts = torch.zeros(VOCAB)
    q = None
    for _ in range(DRAWS):
        proposal = proposer.propose(request)
        assert proposal.draft_probs.shape == (1, 1, VOCAB)  # cut to the target's vocabulary
        q = proposal.draft_probs[0, 0] if q is None else q
        assert torch.allclose(proposal.draft_probs[0, 0], q)  # same context, same q
        counts[proposal.token_ids[0, 0]] += 1
    expected = warp_probs(draft(tokens).logits[0, -1, :VOCAB].detach(), params)
    assert torch.allclose(q, expected, atol=1e-5)
    assert total_variation(counts, q) <= noise_level(q, DRAWS)


def test_cross_tokenizer_sampling_is_lossless(target):
    """One-hot q over re-tokenized greedy drafts: accept x with p(x), else sample p without x, which gives
    p."""
    target_tokenizer = char_tokenizer("abcd")
    draft_tokenizer = char_tokenizer("dcba", merges=("ab",))
    cross_draft = sharpen(tiny_llama(vocab_size=len(draft_tokenizer), num_layers=1, seed=9, **SMALL), 10.0)
    config = specdecode.SpeculativeConfig(
        method="draft_model",
        draft_model=cross_draft,
        num_speculative_tokens=2,
        method_options={"draft_tokenizer": draft_tokenizer},
    )
    params = SamplingParams(do_sample=True)
    exact = exact_pair_distribution(target, params)
    counts = speculative_pair_counts(target, config, params, tokenizer=target_tokenizer)
    assert total_variation(counts, exact) <= noise_level(exact, DRAWS)
