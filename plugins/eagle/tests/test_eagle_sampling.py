"""Sampling with an EAGLE head follows the target's distribution: seeded draws on a vocabulary of 6 against the exact
distribution, judged by the noise of plain sampling from that distribution with the same number of draws."""

import itertools

import pytest
import specdecode
import torch
from specdecode import Proposal, SamplingParams
from specdecode.testing import tiny_llama
from specdecode.toolkit import warp_probs
from specdecode_eagle import EagleOptions
from specdecode_eagle.head import EagleDrafter, random_head
from specdecode_eagle.proposer import EagleProposer

torch.set_num_threads(1)  # tiny models: a second thread only adds contention
VOCAB, NEW, K, DRAWS = 6, 4, 3, 400
PARAMS = SamplingParams(do_sample=True, temperature=0.8, top_k=4)


def _setup():
    # A larger init than usual gives a peaked target distribution, so a wrong sampler would show.
    target = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=1, seed=4, num_heads=2, num_kv_heads=1,
                        initializer_range=0.4)
    head = random_head(target.config, std=0.4)
    # The head scores 4 of the 6 tokens: its q is zero elsewhere, which rejection sampling must still handle.
    drafter = EagleDrafter(head, target, torch.tensor([0, 1, 2, 4]))
    return target, drafter


def _exact_joint(target, prompt, params) -> torch.Tensor:
    """p(t1..t4 | prompt) for every continuation, under the warped sampling distribution: [V]*4."""
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=NEW)))  # [V^4, 4]
    ids = torch.cat([prompt.expand(len(seqs), -1), seqs], dim=1)
    with torch.no_grad():
        logits = target(input_ids=ids).logits[:, prompt.shape[1] - 1 : -1]  # [V^4, 4, V] scores of t1..t4
    probs = warp_probs(logits, params)
    per_step = probs.gather(-1, seqs.unsqueeze(-1)).squeeze(-1)  # [V^4, 4]
    return per_step.prod(dim=1).view(*([VOCAB] * NEW))


def _statistics(joint: torch.Tensor) -> list[torch.Tensor]:
    """Marginals of t2, t3, t4 (the tokens that go through drafting) and the (t2, t3) pair."""
    return [joint.sum(dim=(0, 2, 3)), joint.sum(dim=(0, 1, 3)), joint.sum(dim=(0, 1, 2)), joint.sum(dim=(0, 3)).flatten()]


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def _empirical(samples: torch.Tensor) -> torch.Tensor:
    counts = torch.zeros(VOCAB**NEW)
    index = (samples * torch.tensor([VOCAB**3, VOCAB**2, VOCAB, 1])).sum(dim=1)
    counts.index_add_(0, index, torch.ones(len(samples)))
    return (counts / len(samples)).view(*([VOCAB] * NEW))


def _sampled(target, prompt, make_proposer, seed=1234):
    """DRAWS seeded generations -> (statistics of the draws, drafted, accepted, draft length of each first step)."""
    generator = torch.Generator().manual_seed(seed)
    config = specdecode.SpeculativeConfig(method="eagle", num_speculative_tokens=K)
    draws, drafted, accepted, lengths = [], 0, 0, []
    for _ in range(DRAWS):
        out = specdecode.generate(
            target, prompt, config, max_new_tokens=NEW, do_sample=True, temperature=PARAMS.temperature,
            top_k=PARAMS.top_k, generator=generator, proposer=make_proposer(),
        )
        draws.append(out.sequences[0, prompt.shape[1] :])
        drafted += out.stats.drafted
        accepted += out.stats.accepted
        lengths.append(out.stats.k_per_step[0])
    return _statistics(_empirical(torch.stack(draws))), drafted, accepted, lengths


def _noise_bound(exact: torch.Tensor) -> torch.Tensor:
    """Per statistic: mean + 4 std of its TV distance over 30 runs of DRAWS plain draws of the exact distribution."""
    flat = exact.flatten()
    g = torch.Generator().manual_seed(99)
    baseline = torch.tensor([
        [_tv(s, e) for s, e in zip(_statistics(_empirical(_unflatten(torch.multinomial(flat, DRAWS, True, generator=g)))),
                                    _statistics(exact))]
        for _ in range(30)
    ])  # [30, 4]
    return baseline.mean(dim=0) + 4 * baseline.std(dim=0)


@pytest.mark.parametrize(
    "options",
    [{"tree_width": 1}, {}, {"adaptive": False, "tree_width": 3, "tree_nodes": 6}],
    ids=["chain", "default-tree", "fixed-tree"],
)
def test_sampled_output_follows_the_target_distribution(options):
    """Chains hand q to rejection sampling; trees offer q's most likely tokens, which the core accepts as
    deterministic drafts (specdecode.trees.sampled_path)."""
    target, drafter = _setup()
    assert_follows_target(target, torch.tensor([[1, 4, 2]]), lambda: EagleProposer(drafter, EagleOptions(**options)))


def assert_follows_target(target, prompt, make_proposer):
    """DRAWS seeded generations with ``make_proposer()`` follow the exact distribution within plain sampling's
    noise, and a wrong distribution does not (also used by the EAGLE-3 tests)."""
    exact = _exact_joint(target, prompt, PARAMS)
    spec, drafted, accepted, _ = _sampled(target, prompt, make_proposer)
    assert 0 < accepted < drafted  # both acceptance and rejection were exercised
    bound = _noise_bound(exact)
    for i, (s, e) in enumerate(zip(spec, _statistics(exact))):
        assert _tv(s, e) <= float(bound[i]), f"statistic {i}: TV {_tv(s, e):.4f} > noise bound {float(bound[i]):.4f}"

    # The test can tell distributions apart: the unwarped target (temperature 1, no top-k) fails the same bound.
    wrong = _statistics(_exact_joint(target, prompt, SamplingParams(do_sample=True)))
    assert any(_tv(s, w) > float(bound[i]) for i, (s, w) in enumerate(zip(spec, wrong)))


class _Cache:
    def __init__(self):
        self.length = 0

    def get_seq_length(self):
        return self.length

    def crop(self, n):
        self.length += n


class BranchingDrafter:
    """A stand-in drafter whose next distribution depends only on the last token it read: after an even token it
    splits 0.45 / 0.45 between the next two tokens (confident), after an odd one it is nearly flat. So whether the
    back-off keeps d_2 depends on the value of d_1."""

    vocab_size = VOCAB  # it scores the whole vocabulary (no draft vocabulary)

    def new_cache(self):
        return _Cache()

    def fuse_target_states(self, hidden):
        return hidden

    def features(self, hidden, next_tokens, start, cache):
        if cache is not None:
            cache.length += next_tokens.shape[1]
        return next_tokens.float().unsqueeze(-1)  # [1, n, 1]: the token read

    def logits(self, features):
        t = int(features.reshape(-1)[-1])
        probs = torch.full((1, VOCAB), 0.1 / (VOCAB - 2))
        if t % 2 == 0:
            probs[0, (t + 1) % VOCAB] = probs[0, (t + 2) % VOCAB] = 0.45
        else:
            probs = torch.full((1, VOCAB), 1.0 / VOCAB)
            probs[0, t] += 0.05
        return probs.log() / PARAMS.temperature  # warping with the request's temperature gives back ~probs

    def to_token_ids(self, index):
        return index

    def to_full_vocab(self, probs):
        return probs


class LossyProposer(EagleProposer):
    """A wrong back-off, for the control: keeps d_1 only when the token actually drawn is even."""

    def _draft_chain(self, request, explore=False):
        proposal = super()._draft_chain(request, explore)
        if proposal.num_tokens and int(proposal.token_ids[0, 0]) % 2 == 1:
            self.confidences = []
            return Proposal.empty(1)
        return proposal


def test_backoff_whose_depth_depends_on_earlier_drafts_stays_lossless():
    """The back-off decides whether to keep draft i from the draft distributions, which depend on the drafts before
    it, never from draft i's own value. Such prefix-dependent chain lengths keep sampling exact; deciding from the
    drawn value does not (the control)."""
    target, _ = _setup()
    prompt = torch.tensor([[1, 4, 2]])
    # The stand-in drafter below drafts chains only (trees have their own test above).
    options = EagleOptions(confidence_prior=1.0, cost_jump=0.0, cost_per_token=0.1, draft_cost=0.0, tree_width=1)
    exact = _statistics(_exact_joint(target, prompt, PARAMS))
    bound = _noise_bound(_exact_joint(target, prompt, PARAMS))
    spec, drafted, accepted, lengths = _sampled(target, prompt, lambda: EagleProposer(BranchingDrafter(), options))
    assert 0 < accepted < drafted
    # The first step's depth really varies (K = 3, NEW = 4: at most 2 drafts fit).
    assert lengths.count(1) > 0.1 * DRAWS and lengths.count(2) > 0.05 * DRAWS, (lengths.count(1), lengths.count(2))
    for i, (s, e) in enumerate(zip(spec, exact)):
        assert _tv(s, e) <= float(bound[i]), f"statistic {i}: TV {_tv(s, e):.4f} > noise bound {float(bound[i]):.4f}"

    lossy, *_ = _sampled(target, prompt, lambda: LossyProposer(BranchingDrafter(), options))
    assert any(_tv(s, e) > float(bound[i]) for i, (s, e) in enumerate(zip(lossy, exact)))


def _unflatten(index: torch.Tensor) -> torch.Tensor:
    digits = [(index // VOCAB**p) % VOCAB for p in (3, 2, 1, 0)]
    return torch.stack(digits, dim=1)


def test_seeded_sampling_is_reproducible():
    target, drafter = _setup()
    prompt = torch.tensor([[3, 0, 5, 1]])
    runs = [
        specdecode.generate(target, prompt, {"method": "eagle"}, max_new_tokens=16, do_sample=True, seed=7,
                            proposer=EagleProposer(drafter)).sequences
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
