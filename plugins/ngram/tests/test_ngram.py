import random

import pytest
import specdecode
import torch
from specdecode_ngram import NgramIndex, NgramProposer


def brute_force(tokens: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    """The definition: longest suffix n-gram first; among its earlier occurrences, the most recent one."""
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = tokens[length - n :]
        for start in range(length - n - 1, -1, -1):  # occurrences that end before the last token
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + k]
    return []


@pytest.mark.parametrize("window", [(1, 1), (1, 3), (2, 4), (3, 3)])
def test_incremental_index_matches_brute_force(window):
    rng = random.Random(sum(window))
    for _ in range(30):
        tokens = [rng.randrange(5) for _ in range(rng.randrange(2, 40))]
        index = NgramIndex(*window)
        # Feed in uneven chunks, checking after each one, as the loop does.
        pos = 0
        while pos < len(tokens):
            step = rng.randrange(1, 6)
            index.extend(tokens[pos : pos + step])
            pos += step
            assert index.lookup(4) == brute_force(tokens[:pos], *window, 4)


def test_prefers_the_longest_then_the_most_recent_match():
    index = NgramIndex(1, 3)
    index.extend([7, 8, 9, 1, 2, 3, 5, 2, 3, 6, 1, 2, 3])
    assert index.lookup(2) == [5, 2]  # "1 2 3" matched (3-gram) at its only earlier place
    index = NgramIndex(1, 2)
    index.extend([2, 3, 4, 2, 3, 5, 2, 3])
    assert index.lookup(1) == [5]  # two earlier "2 3": the later one wins


def test_no_match_is_an_empty_proposal():
    index = NgramIndex(2, 3)
    index.extend([1, 2, 3, 4])
    assert index.lookup(5) == []


def test_proposer_restarts_for_a_new_sequence():
    proposer = NgramProposer(1, 2)
    proposer.start(None)  # type: ignore[arg-type]
    assert proposer.propose_one(0, torch.tensor([1, 2, 1]), 3).tolist() == [2, 1]
    assert proposer.propose_one(0, torch.tensor([5, 6]), 3).tolist() == []


def test_window_comes_from_the_config():
    config = specdecode.SpeculativeConfig(method="ngram", prompt_lookup_min=2, prompt_lookup_max=3)
    proposer = specdecode.build_proposer(None, config)
    assert (proposer.min_n, proposer.max_n) == (2, 3)


def test_adaptive_model_backs_off_after_rejections_and_returns_after_acceptances():
    from specdecode_ngram import AcceptanceModel, NgramOptions

    model = AcceptanceModel(NgramOptions(), max_n=3, max_k=5)
    assert model.best_k(3, 5) == 5  # optimistic prior: a long match drafts fully
    for _ in range(40):
        model.record(3, drafted=5, accepted=0)
    decisions = [model.best_k(3, 5) for _ in range(32)]
    assert decisions.count(0) >= 30  # backs off, exploring with k = 1 now and then
    assert set(decisions) <= {0, 1}
    for _ in range(40):
        model.record(3, drafted=1, accepted=1)
        model.record(3, drafted=5, accepted=5)
    assert model.best_k(3, 5) == 5


def test_the_cost_curve_decides_whether_a_coin_flip_is_worth_drafting():
    from specdecode_ngram import AcceptanceModel, NgramOptions

    def trained(options):
        model = AcceptanceModel(options, max_n=2, max_k=5)
        for _ in range(40):
            model.record(1, drafted=1, accepted=0)
            model.record(1, drafted=1, accepted=1)  # first-token acceptance about one half
        return model

    expensive = trained(NgramOptions(cost_jump=0.6, cost_per_token=0.0))  # a verify step costs 1.6 plain steps
    assert expensive.verify_cost(1) == pytest.approx(1.6)
    assert expensive.best_k(1, 1) == 0
    cheap = trained(NgramOptions(cost_jump=0.0, cost_per_token=0.0))  # as cheap as a plain step (GPU-like)
    assert cheap.best_k(1, 1) == 1


def test_cost_curve_defaults_to_the_cores_and_options_override_it():
    from specdecode.toolkit import verify_cost
    from specdecode_ngram import AcceptanceModel, NgramOptions

    default = AcceptanceModel(NgramOptions(), max_n=2, max_k=5, device="cpu")
    assert default.verify_cost(3) == pytest.approx(verify_cost("cpu")(3))
    mixed = AcceptanceModel(NgramOptions(cost_jump=0.0), max_n=2, max_k=5, device="cpu")
    assert mixed.verify_cost(2) == pytest.approx(1.0 + 2 * verify_cost("cpu").per_token)


def test_bad_options_are_named():
    with pytest.raises(
        specdecode.ConfigError, match=r"'method_options.prior_first' must be a number in \[0, 1\] \(got 1.5\)"
    ):
        specdecode.SpeculativeConfig(method="ngram", method_options={"prior_first": 1.5})
    with pytest.raises(specdecode.ConfigError, match=r"'method_options.adaptive' must be true or false \(got 1\)"):
        specdecode.SpeculativeConfig(method="ngram", method_options={"adaptive": 1})
    with pytest.raises(
        specdecode.ConfigError, match=r"'method_options.cost_jump' must be a number >= 0 or null \(got -0.5\)"
    ):
        specdecode.SpeculativeConfig(method="ngram", method_options={"cost_jump": -0.5})


def test_non_adaptive_drafts_every_match_in_full():
    proposer = NgramProposer(1, 2, specdecode_ngram_options(adaptive=False), max_k=5)
    proposer.start(None)  # type: ignore[arg-type]
    assert proposer.propose_one(0, torch.tensor([1, 2, 3, 4, 5, 6, 1]), 5).tolist() == [2, 3, 4, 5, 6]


def specdecode_ngram_options(**kwargs):
    from specdecode_ngram import NgramOptions

    return NgramOptions(**kwargs)
