"""Acceptance rules on hand-built distributions: exact cases, then distributions against a noise baseline."""

import pytest
import torch
from specdecode import SamplingParams
from specdecode.sampling import greedy_accept, rejection_sample, typical_accept, warp_logits, warp_probs


def _onehot_logits(tokens: list[int], vocab: int = 6) -> torch.Tensor:
    logits = torch.full((1, len(tokens), vocab), -5.0)
    for i, t in enumerate(tokens):
        logits[0, i, t] = 5.0
    return logits


def test_greedy_accepts_the_matching_prefix_then_corrects():
    logits = _onehot_logits([1, 2, 3, 4])  # target argmax at each of k+1 = 4 positions
    n, nxt = greedy_accept(logits, torch.tensor([[1, 2, 5]]))
    assert (n.item(), nxt.item()) == (2, 3)  # d1, d2 match; d3 is replaced by the target's 3


def test_greedy_all_accepted_gives_the_bonus_token():
    n, nxt = greedy_accept(_onehot_logits([1, 2, 3, 4]), torch.tensor([[1, 2, 3]]))
    assert (n.item(), nxt.item()) == (3, 4)


def test_greedy_first_rejected_and_empty_draft():
    assert greedy_accept(_onehot_logits([1, 2]), torch.tensor([[0]]))[0].item() == 0
    n, nxt = greedy_accept(_onehot_logits([4]), torch.empty(1, 0, dtype=torch.long))
    assert (n.item(), nxt.item()) == (0, 4)


def test_per_sequence_lengths_stop_acceptance():
    logits = torch.cat([_onehot_logits([1, 2, 3]), _onehot_logits([1, 2, 3])])
    n, nxt = greedy_accept(logits, torch.tensor([[1, 2], [1, 2]]), lengths=torch.tensor([2, 1]))
    assert n.tolist() == [2, 1] and nxt.tolist() == [3, 2]


def test_rejection_with_certain_outcomes():
    p = torch.zeros(1, 3, 4)
    p[0, 0, 1] = 1.0  # target certain of 1, then of 2, then of 3
    p[0, 1, 2] = 1.0
    p[0, 2, 3] = 1.0
    n, nxt = rejection_sample(p, torch.tensor([[1, 2]]))
    assert (n.item(), nxt.item()) == (2, 3)  # both accepted with probability 1, bonus 3
    n, nxt = rejection_sample(p, torch.tensor([[1, 0]]))
    assert (n.item(), nxt.item()) == (1, 2)  # p(0) = 0 at position 1: rejected, resampled from p - q = 2


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * (a - b).abs().sum().item()


def _hist(samples: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(samples, minlength=vocab).float() / samples.numel()


def _first_token_samples(p, q, n, seed):
    """Run one-draft speculative sampling n times in one batch; return the first emitted token of each run."""
    g = torch.Generator().manual_seed(seed)
    vocab = p.shape[-1]
    draft = torch.multinomial(q.expand(n, vocab), 1, generator=g)  # [n, 1]
    target = p.view(1, 1, vocab).expand(n, 2, vocab)
    num_accepted, next_tokens = rejection_sample(target, draft, q.view(1, 1, vocab).expand(n, 1, vocab), generator=g)
    return torch.where(num_accepted == 1, draft[:, 0], next_tokens)


def _noise_bound(p: torch.Tensor, n: int) -> float:
    """How far plain sampling of n tokens from p lands from p: the worst of 5 seeded tries, with margin."""
    tvs = []
    for s in range(5):
        g = torch.Generator().manual_seed(1000 + s)
        tvs.append(_tv(_hist(torch.multinomial(p.expand(n, -1), 1, generator=g).view(-1), p.numel()), p))
    return 1.5 * max(tvs)


P = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.05, 0.0, 0.0])


@pytest.mark.parametrize(
    "q",
    [
        pytest.param(P.clone(), id="draft-equals-target"),
        pytest.param(torch.full((8,), 1 / 8), id="uniform-draft"),
        pytest.param(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]), id="disjoint-support"),
        pytest.param(torch.tensor([0.05, 0.05, 0.1, 0.1, 0.2, 0.5, 0.0, 0.0]), id="reversed-draft"),
    ],
)
def test_rejection_sampling_preserves_the_target_distribution(q):
    n = 40_000
    bound = _noise_bound(P, n)
    samples = _first_token_samples(P, q, n, seed=7)
    assert _tv(_hist(samples, 8), P) <= bound
    assert (samples >= 6).sum() == 0  # tokens with p = 0 never come out


def test_the_distribution_test_has_power():
    """Accepting every draft (a broken sampler) is caught by the same bound."""
    n, q = 40_000, torch.full((8,), 1 / 8)
    g = torch.Generator().manual_seed(7)
    broken = torch.multinomial(q.expand(n, -1), 1, generator=g).view(-1)
    assert _tv(_hist(broken, 8), P) > _noise_bound(P, n)


def test_deterministic_draft_is_one_hot_q():
    n = 40_000
    g = torch.Generator().manual_seed(3)
    draft = torch.full((n, 1), 3)  # always proposes token 3 (p = 0.1)
    target = P.view(1, 1, 8).expand(n, 2, 8)
    num_accepted, nxt = rejection_sample(target, draft, None, generator=g)
    first = torch.where(num_accepted == 1, draft[:, 0], nxt)
    assert abs(num_accepted.float().mean().item() - 0.1) < 0.01
    assert _tv(_hist(first, 8), P) <= _noise_bound(P, n)


def test_seeded_sampling_is_reproducible():
    q = torch.full((8,), 1 / 8)
    assert torch.equal(_first_token_samples(P, q, 500, seed=11), _first_token_samples(P, q, 500, seed=11))


def test_warpers_match_transformers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(do_sample=True, temperature=0.7, top_k=20, top_p=0.8)
    ours = warp_logits(logits, params)
    theirs = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(20)(None, TemperatureLogitsWarper(0.7)(None, logits.clone())))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1))


def test_top_k_and_top_p_keep_samples_inside_the_allowed_set():
    logits = torch.log(P.clamp(min=1e-9)).view(1, 1, 8)
    probs = warp_probs(logits, SamplingParams(do_sample=True, top_k=2))
    assert (probs[0, 0, 2:] == 0).all()
    probs = warp_probs(logits, SamplingParams(do_sample=True, top_p=0.5))  # 0.4 + 0.25 reaches 0.5
    assert (probs[0, 0, 2:] == 0).all() and probs[0, 0, :2].sum() == pytest.approx(1.0)


def test_typical_acceptance_thresholds():
    # Peaked target: entropy is low, so the threshold is posterior_threshold (0.09).
    p = torch.tensor([[[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]]])
    assert typical_accept(p, torch.tensor([[0]]))[0].item() == 1
    assert typical_accept(p, torch.tensor([[1]]))[0].item() == 0  # 0.05 < 0.09
    # Flat target over 3 tokens: alpha * exp(-ln 3) = 0.1, and p = 1/3 > 0.1 so any draft passes.
    flat = torch.full((1, 2, 3), 1 / 3)
    assert typical_accept(flat, torch.tensor([[2]]), posterior_alpha=0.3)[0].item() == 1
    # p = [0.6, 0.4]: exp(-entropy) = 0.51, so with alpha = 1 and threshold 0.5 the bar is 0.5.
    two = torch.tensor([[[0.6, 0.4], [0.6, 0.4]]])
    assert typical_accept(two, torch.tensor([[0]]), posterior_threshold=0.5, posterior_alpha=1.0)[0].item() == 1
    assert typical_accept(two, torch.tensor([[1]]), posterior_threshold=0.5, posterior_alpha=1.0)[0].item() == 0
