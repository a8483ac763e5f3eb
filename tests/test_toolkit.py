"""The plugin toolkit's pieces: costs, validators, draw, SequenceReader, TokenCache, PerSequenceProposer with q."""

from __future__ import annotations

import attrs
import pytest
import specdecode
import torch
from specdecode import PerSequenceProposer, ProposeRequest, SamplingParams
from specdecode.testing import tiny_llama
from specdecode.toolkit import (
    SequenceReader,
    StepPlan,
    TokenCache,
    VerifyCost,
    best_draft_length,
    draw,
    expected_tokens,
    validators,
)

# -- costs ---------------------------------------------------------------------------------------------------------


def test_best_draft_length_maximises_tokens_per_cost():
    free = VerifyCost(0.0, 0.0)
    assert best_draft_length([0.9, 0.8, 0.7], free) == 3  # every draft is free: take them all
    assert best_draft_length([], free) == 0
    costly = VerifyCost(jump=1.0, per_token=0.5)
    assert best_draft_length([0.3, 0.1], costly) == 0  # 1.3 tokens for 2.5 steps: a plain step is better
    # By hand: k=1 -> 1.9 / 1.6 = 1.19, k=2 -> 2.7 / 1.7 = 1.59, k=3 -> 2.8 / 1.8 = 1.56.
    assert best_draft_length([0.9, 0.8, 0.1], VerifyCost(0.5, 0.1)) == 2


def test_a_new_group_of_rows_costs_its_jump():
    """With groups of 8 rows the 8th draft (the 9th row) starts a second group, the 16th a third."""
    grouped = VerifyCost(jump=0.2, per_token=0.1, group_rows=8, group_jump=0.3)
    plain = VerifyCost(jump=0.2, per_token=0.1)
    assert [grouped(k) - plain(k) for k in (0, 1, 7, 8, 15, 16)] == pytest.approx([0, 0, 0, 0.3, 0.3, 0.6])
    slots = [grouped.slot(i) for i in range(16)]
    assert sum(slots) == pytest.approx(grouped(16) - 1.0)  # the slots add up to the curve
    assert slots[7] == slots[15] == pytest.approx(0.4) and slots[6] == slots[8] == pytest.approx(0.1)
    # Nine drafts that each survive with 0.9: all pay for 0.1 slots (k=9: 9.1 tokens / 2.1 steps), but the 8th and
    # 9th do not pay for opening a second group (k=7: 7.3 / 1.9 = 3.84 against k=9: 9.1 / 2.4 = 3.79).
    assert best_draft_length([0.9] * 9, plain) == 9
    assert best_draft_length([0.9] * 9, grouped) == 7


def test_step_plan_keeps_a_draft_while_it_pays_for_its_slot():
    plan = StepPlan(VerifyCost(jump=0.2, per_token=0.1), margin=1.0)
    assert plan.slot() == pytest.approx(0.3)  # the first draft pays the jump too
    assert not plan.pays(0.29) and plan.pays(0.31)  # 1 token per step so far: a slot of 0.3 needs gain > 0.3
    plan.add(0.9)
    assert (plan.expected, plan.cost, plan.drafts) == (pytest.approx(1.9), pytest.approx(1.3), 1)
    assert plan.slot() == pytest.approx(0.1)
    threshold = 1.9 / 1.3 * 0.1
    assert plan.pays(threshold * 1.01) and not plan.pays(threshold * 0.99)
    assert not plan.pays(threshold * 1.01, extra=0.05)  # a draft step on top of the slot
    plan.charge(0.05)
    assert plan.cost == pytest.approx(1.35)


def test_expected_tokens_is_leviathans_geometric_sum():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


# -- validators ----------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Options:
    depth: int = attrs.field(default=2, validator=validators.integer(1))
    layers: int | None = attrs.field(default=None, validator=validators.integer(1, optional=True, meaning="(x)"))
    share: float = attrs.field(default=0.5, validator=validators.number(0, 1, high_open=True))
    ratio: float | None = attrs.field(default=None, validator=validators.number(0, 2, low_open=True, optional=True))
    flag: bool = attrs.field(default=True, validator=validators.boolean())
    where: str | None = attrs.field(default=None, validator=validators.path())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 0}, "'method_options.depth' must be an integer >= 1 (got 0)"),
        ({"depth": True}, "'method_options.depth' must be an integer >= 1 (got True)"),
        ({"depth": 2.0}, "'method_options.depth' must be an integer >= 1 (got 2.0)"),
        ({"layers": 0}, "'method_options.layers' must be an integer >= 1 or null (x) (got 0)"),
        ({"share": 1}, "'method_options.share' must be a number in [0, 1) (got 1)"),
        ({"share": float("nan")}, "'method_options.share' must be a number in [0, 1) (got nan)"),
        ({"share": "0.5"}, "'method_options.share' must be a number in [0, 1) (got '0.5')"),
        ({"ratio": 0}, "'method_options.ratio' must be a number in (0, 2] or null (got 0)"),
        ({"flag": 1}, "'method_options.flag' must be true or false (got 1)"),
        ({"where": 3}, "'method_options.where' must be a path or null (got 3)"),
    ],
)
def test_validators_name_the_option_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(specdecode.ConfigError) as info:
        _Options(**kwargs)
    assert str(info.value) == message
    assert info.value.field == f"method_options.{next(iter(kwargs))}"


def test_validators_accept_what_they_allow():
    _Options(depth=3, layers=None, share=0, ratio=2, flag=False, where="/tmp")


# -- draw ----------------------------------------------------------------------------------------------------------


def test_draw_greedy_is_the_argmax_with_its_softmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    tokens, q = draw(logits, SamplingParams())
    assert tokens.tolist() == [1, 0]
    torch.testing.assert_close(q, logits.softmax(-1))


def test_draw_samples_from_the_q_it_returns():
    params = SamplingParams(do_sample=True, temperature=0.5, top_k=2)
    logits = torch.tensor([1.0, 0.5, 0.0, -1.0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(4000):
        token, q = draw(logits, params, generator)
        counts[int(token)] += 1
    torch.testing.assert_close(q, specdecode.warp_probs(logits, params))
    assert q[2] == 0 and q[3] == 0  # top-k removed them
    assert (counts / counts.sum() - q).abs().max() < 0.03


# -- SequenceReader ------------------------------------------------------------------------------------------------


def test_sequence_reader_hands_over_each_token_once():
    reader = SequenceReader()
    assert reader.unread(0, torch.tensor([1, 2, 3])) == ([1, 2, 3], True)
    assert reader.unread(0, torch.tensor([1, 2, 3, 4, 5])) == ([4, 5], False)
    assert reader.unread(1, [7]) == ([7], True)  # another sequence
    assert reader.unread(0, torch.tensor([1, 2, 3, 4, 5])) == ([], False)
    assert reader.unread(0, torch.tensor([9, 9])) == ([9, 9], True)  # shorter: a new generation


# -- TokenCache ----------------------------------------------------------------------------------------------------


def test_token_cache_keeps_the_common_prefix_and_matches_a_fresh_forward():
    model = tiny_llama(vocab_size=32)
    cache = TokenCache(model, "cpu")
    with torch.inference_mode():
        cache.prefill([1, 2, 3, 4])
        cache.sync([1, 2, 3, 4, 5, 6])  # feeds 5, 6
        logits = cache.sync([1, 2, 3, 9, 7])  # crops 4, 5, 6; feeds 9, 7
        fresh = model(input_ids=torch.tensor([[1, 2, 3, 9, 7]])).logits[0, -1]
    assert cache.ids == [1, 2, 3, 9, 7]
    assert cache.cache.get_seq_length() == 5
    assert cache.forwards == 3
    torch.testing.assert_close(logits, fresh, rtol=1e-4, atol=1e-5)


# -- PerSequenceProposer with q ------------------------------------------------------------------------------------


class _Sampled(PerSequenceProposer):
    """Row 0 drafts two sampled tokens with q, row 1 one deterministic token, row 2 nothing."""

    def propose_one(self, index, tokens, num_tokens):
        assert self.request is not None and self.request.num_tokens == num_tokens
        if index == 0:
            q = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.25, 0.75, 0.0]])
            return torch.tensor([1, 2]), q
        if index == 1:
            return torch.tensor([3])
        return torch.empty(0, dtype=torch.long)


def test_per_sequence_proposals_carry_q_and_one_hot_for_deterministic_rows():
    ids = torch.tensor([[5, 6, 7], [0, 6, 7], [5, 6, 7]])
    request = ProposeRequest(
        input_ids=ids, attention_mask=(ids != 0).long(), num_tokens=3, active=torch.ones(3, dtype=torch.bool),
        sampling=SamplingParams(do_sample=True), generator=None,
    )
    proposal = _Sampled().propose(request)
    assert proposal.token_ids.tolist() == [[1, 2], [3, 0], [0, 0]]
    assert proposal.lengths.tolist() == [2, 1, 0]
    q = proposal.draft_probs
    assert q.shape == (3, 2, 4)
    torch.testing.assert_close(q[0], torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.25, 0.75, 0.0]]))
    assert q[1, 0].tolist() == [0.0, 0.0, 0.0, 1.0]  # drafted without q: deterministic, q one-hot


def test_per_sequence_proposal_at_batch_size_one_keeps_q():
    ids = torch.tensor([[5, 6, 7]])
    request = ProposeRequest(
        input_ids=ids, attention_mask=torch.ones_like(ids), num_tokens=2, active=torch.ones(1, dtype=torch.bool),
        sampling=SamplingParams(do_sample=True), generator=None,
    )
    proposal = _Sampled().propose(request)
    assert proposal.token_ids.tolist() == [[1, 2]] and proposal.draft_probs.shape == (1, 2, 4)
