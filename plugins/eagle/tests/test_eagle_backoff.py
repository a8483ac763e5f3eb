"""The back-off: a useless head drafts (almost) nothing and is rarely run, an oracle head drafts the full depth,
``adaptive=False`` drafts exactly K, and the options are validated."""

import pytest
import specdecode
import torch
from specdecode import ConfigError
from specdecode.testing import tiny_llama
from specdecode_eagle import EagleOptions
from specdecode_eagle.head import EagleDrafter, EagleHead, random_head
from specdecode_eagle.proposer import Calibration, EagleProposer

torch.set_num_threads(1)  # tiny models: a second thread only adds contention
VOCAB, K, NEW = 64, 5, 120


def _useless_head(model) -> EagleHead:
    """A random head with large weights: confident (peaked drafts) and nearly always wrong."""
    return random_head(model.config, std=1.0)


class _Cache:
    def __init__(self):
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, n: int) -> None:
        assert n < 0
        self.length += n


class OracleDrafter:
    """Stands in for EagleDrafter and drafts the target's own continuation: head position j "predicts" token
    x_{j+2} of ``sequence`` (the feature is just that index), with probability ~0.997."""

    def __init__(self, sequence: torch.Tensor, vocab: int):
        self.sequence = sequence.view(-1).tolist()
        self.vocab = vocab

    def new_cache(self):
        return _Cache()

    def fuse_target_states(self, hidden):
        return hidden

    def features(self, hidden, next_tokens, start, cache):
        n = next_tokens.shape[1]
        if cache is not None:
            cache.length += n
        return torch.arange(start + 2, start + 2 + n, dtype=torch.float).view(1, n, 1)

    def logits(self, features):
        index = int(features.reshape(-1)[-1])
        out = torch.zeros(1, self.vocab)
        if index < len(self.sequence):
            out[0, self.sequence[index]] = 10.0
        return out

    def to_token_ids(self, index):
        return index

    def to_full_vocab(self, probs):
        return probs


def _prompt():
    return torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
def test_useless_head_backs_off_to_almost_no_drafts(do_sample):
    model = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=3)
    drafter = EagleDrafter(_useless_head(model), model)
    ids = _prompt()
    config = {"method": "eagle", "num_speculative_tokens": K}
    fixed = EagleProposer(drafter, EagleOptions(adaptive=False))
    raw = specdecode.generate(model, ids, config, max_new_tokens=NEW, do_sample=do_sample, seed=0, proposer=fixed)
    assert raw.stats.acceptance_rate < 0.05  # the head is useless indeed

    proposer = EagleProposer(drafter)  # back-off on: the default
    out = specdecode.generate(model, ids, config, max_new_tokens=NEW, do_sample=do_sample, seed=0, proposer=proposer)
    stats = out.stats
    if not do_sample:
        assert torch.equal(out.sequences, model.generate(ids, max_new_tokens=NEW, do_sample=False))
    assert stats.drafted <= 0.05 * K * stats.steps, stats.k_per_step
    assert sum(1 for k in stats.k_per_step if k > 0) <= 0.1 * stats.steps
    # Most steps do not even run the head; the ones that do are the probes.
    # (The last step has no room for drafts, so the loop does not ask the proposer.)
    assert proposer.skipped > 0.6 * stats.steps and proposer.probes + proposer.skipped == stats.steps - 1
    assert proposer.probes >= 5  # but it keeps probing, and explores now and then
    assert stats.drafted > 0


def test_fixed_k_drafts_exactly_k():
    model = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=3)
    proposer = EagleProposer(EagleDrafter(_useless_head(model), model), EagleOptions(adaptive=False))
    out = specdecode.generate(model, _prompt(), {"method": "eagle", "num_speculative_tokens": K},
                              max_new_tokens=NEW, proposer=proposer)
    generated = 1  # the prefill's token
    for k, accepted in zip(out.stats.k_per_step, out.stats.accepted_per_step):
        assert k == min(K, NEW - generated - 1)  # K, except where max_new_tokens leaves less room
        generated += accepted + 1
    assert proposer.probes == proposer.skipped == 0


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-k", "back-off"])
def test_oracle_head_drafts_the_full_depth(adaptive):
    model = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=3)
    ids = _prompt()
    expected = model.generate(ids, max_new_tokens=NEW, do_sample=False)
    # The stand-in drafter knows one continuation only: a chain (trees get their own tests).
    proposer = EagleProposer(OracleDrafter(expected, VOCAB), EagleOptions(adaptive=adaptive, tree_width=1))
    out = specdecode.generate(model, ids, {"method": "eagle", "num_speculative_tokens": K}, max_new_tokens=NEW,
                              proposer=proposer)
    assert torch.equal(out.sequences, expected)
    assert out.stats.acceptance_rate == 1.0
    # Full depth, except at the end (no room) and, with the back-off, at the first step (before any evidence, the
    # prior calls for a shorter chain).
    assert out.stats.k_per_step[1:-2] == [K] * (len(out.stats.k_per_step) - 3)
    assert out.stats.mean_acceptance_length > K


def test_calibration_learns_over_confidence():
    calibration = Calibration(prior=0.7)
    assert calibration.predict(0, 0.9) == pytest.approx(0.63)
    for i in range(40):
        calibration.observe(0, 0.9, accepted=i % 4 == 0)  # accepted a quarter of the time
    assert calibration.predict(0, 0.9) == pytest.approx(0.25, abs=0.05)
    assert calibration.predict(1, 0.9) == pytest.approx(0.63)  # other positions are kept apart
    for _ in range(40):
        calibration.observe(1, 0.5, accepted=True)
    assert calibration.predict(1, 0.5) > 0.9  # under-confidence is corrected too (capped at 0.98)


def test_options_are_validated_and_reach_the_config():
    config = specdecode.SpeculativeConfig(method="eagle", method_options={"adaptive": False, "max_skip": 4})
    assert config.options.adaptive is False and config.options.max_skip == 4
    with pytest.raises(ConfigError, match="draft_cost"):
        EagleOptions(draft_cost=-0.1)
    with pytest.raises(ConfigError, match="confidence_prior"):
        EagleOptions(confidence_prior=0.0)
    with pytest.raises(ConfigError, match="max_skip"):
        EagleOptions(max_skip=1.5)


def test_the_heads_measured_calibration_is_the_prior(tmp_path):
    from specdecode_eagle import load_drafter
    from specdecode_eagle.checkpoint import save_head

    model = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=3)
    save_head(_useless_head(model), tmp_path, meta={"calibration": {"ratio_per_position": [0.5, 0.3, 0.2]}})
    drafter = load_drafter(model, tmp_path)
    assert drafter.calibration == [0.5, 0.3, 0.2]
    proposer = EagleProposer(drafter)
    assert [a / c for a, c in proposer.calibration.position] == pytest.approx([0.5, 0.3, 0.2])
    assert proposer.calibration.predict(1, 0.9) == pytest.approx(0.27)
    explicit = EagleProposer(drafter, EagleOptions(confidence_prior=0.9))  # the option wins
    assert [a / c for a, c in explicit.calibration.position] == pytest.approx([0.9] * 3)
