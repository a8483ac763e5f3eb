"""Speculation schedules: K per step under scripted acceptance patterns, unit level and end to end."""

from __future__ import annotations

import attrs
import pytest
import specdecode
import torch
from specdecode import Proposal, Proposer, ProposeRequest, SpeculativeConfig
from specdecode.schedules import (
    AutoSchedule,
    ConstantSchedule,
    CostModelSchedule,
    HeuristicSchedule,
    StepOutcome,
    VerifyCostCurve,
    expected_tokens,
    make_schedule,
)
from specdecode.testing import repetitive_prompts

from .helpers import ScriptedPlugin


def outcome(
    budget: int, drafted, accepted, *, rows: int = 1, verify: float = 1.0, draft: float = 0.0
) -> StepOutcome:
    drafted, accepted = list(drafted), list(accepted)
    return StepOutcome(
        budget=budget,
        drafted=drafted,
        accepted=accepted,
        verify_tokens=rows * (max(drafted) + 1),
        verify_seconds=verify,
        draft_seconds=draft,
        step_seconds=verify + draft,
    )


def test_constant_asks_for_the_cap():
    schedule = ConstantSchedule()
    assert [schedule.next_k(cap, 4) for cap in (5, 0, 2)] == [5, 0, 2]


def test_heuristic_adds_two_after_full_acceptance_and_drops_one_otherwise():
    schedule = HeuristicSchedule(max_k=6)
    seen = []
    # full, miss, miss, miss, miss, miss, miss (floor 1), full, full, full (cap 6)
    pattern = [True, False, False, False, False, False, False, True, True, True]
    for full in pattern:
        k = schedule.next_k(6, 1)
        seen.append(k)
        schedule.observe(outcome(k, [k], [k if full else 0]))
    assert seen == [6, 6, 5, 4, 3, 2, 1, 1, 3, 5]
    assert schedule.next_k(6, 1) == 6 and schedule.next_k(2, 1) == 2  # the batch-size cap still applies


def test_heuristic_in_a_batch_needs_every_row_fully_accepted_and_ignores_empty_steps():
    schedule = HeuristicSchedule(max_k=4)
    schedule.observe(outcome(4, [4, 4], [4, 3], rows=2))
    assert schedule.next_k(4, 2) == 3
    schedule.observe(outcome(3, [0, 0], [0, 0], rows=2))  # nothing drafted: no evidence either way
    assert schedule.next_k(4, 2) == 3
    schedule.observe(outcome(3, [3, 2], [3, 2], rows=2))
    assert schedule.next_k(4, 2) == 4


def test_expected_tokens_is_the_geometric_sum():
    for alpha in (0.0, 0.3, 0.9, 1.0):
        for k in range(6):
            assert expected_tokens(alpha, k) == pytest.approx(sum(alpha**i for i in range(k + 1)))


def test_verify_cost_curve_interpolates_and_is_optimistic_outside_what_it_measured():
    curve = VerifyCostCurve()
    curve.observe(2, 1.0)
    curve.observe(6, 3.0)
    assert curve(4) == pytest.approx(2.0)  # linear between measured points
    assert curve(1) == pytest.approx(0.5)  # proportional below
    assert curve(12) == pytest.approx(3.0)  # flat above
    for seconds in (3.2, 30.0, 2.9):  # one preempted step among normal ones
        curve.observe(6, seconds)
    assert curve(6) == pytest.approx(3.1)  # the running median ignores the outlier


def feed(schedule, steps: int, accept_all: bool, cost, cap: int = 5, rows: int = 1) -> list[int]:
    """Run the schedule against a scripted target: every draft accepted (or none), verify cost ``cost(tokens)``."""
    chosen = []
    for _ in range(steps):
        k = schedule.next_k(cap, rows)
        chosen.append(k)
        schedule.observe(
            outcome(k, [k] * rows, [k if accept_all else 0] * rows, rows=rows, verify=cost(rows * (k + 1)),
                    draft=0.01 * k)
        )
    return chosen


def cpu_like_cost(tokens: int) -> float:
    """Like SmolLM2-135M on 2 CPU cores: 70 ms for one token, 110 ms + 4 ms a token beyond."""
    return 0.070 if tokens == 1 else 0.110 + 0.004 * tokens


def test_cost_model_goes_to_the_cap_when_drafts_are_accepted():
    schedule = CostModelSchedule()
    chosen = feed(schedule, 20, accept_all=True, cost=cpu_like_cost)
    assert chosen[-10:] == [5] * 10
    assert schedule.alpha > 0.95


def test_cost_model_backs_off_to_plain_decoding_and_probes_less_and_less_often():
    schedule = CostModelSchedule(probe_every=4, max_probe_every=16)
    chosen = feed(schedule, 80, accept_all=False, cost=cpu_like_cost)
    assert chosen[0] == 5  # nothing measured yet: try the longest verify
    plain = [i for i, k in enumerate(chosen) if k == 0]
    assert len(plain) > 60
    probes = [i for i, k in enumerate(chosen) if k > 0 and i > plain[0]]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert probes and gaps == sorted(gaps) and gaps[-1] == 17  # 4, 8, 16, then capped at 16 plain steps


def test_cost_model_comes_back_when_drafts_start_to_work_again():
    schedule = CostModelSchedule(probe_every=2, max_probe_every=4)
    feed(schedule, 30, accept_all=False, cost=cpu_like_cost)
    assert schedule.next_k(5, 1) == 0
    chosen = feed(schedule, 30, accept_all=True, cost=cpu_like_cost)
    assert chosen[-5:] == [5] * 5


def bernoulli_run(k: int, alpha: float, generator: torch.Generator) -> int:
    """Accepted drafts out of k when each is accepted with probability alpha, up to the first rejection."""
    accepted = 0
    while accepted < k and torch.rand((), generator=generator).item() < alpha:
        accepted += 1
    return accepted


@pytest.mark.parametrize(("verify_cost", "best"), [(lambda n: 0.05 * n, 0), (lambda n: 0.05, 5)])
def test_cost_model_weighs_acceptance_against_the_verify_cost_curve(verify_cost, best):
    """Acceptance 0.5. With a verify cost proportional to the tokens verified, no K beats plain decoding
    (expected tokens (1 - a^(K+1)) / (1 - a) < K + 1); with a flat verify cost the longest K wins."""
    schedule = CostModelSchedule()
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        k = schedule.next_k(5, 1)
        schedule.observe(outcome(k, [k], [bernoulli_run(k, 0.5, generator)], verify=verify_cost(k + 1)))
    assert 0.3 < schedule.alpha < 0.7
    assert schedule.best_k(5, 1) == best


def test_probes_verify_about_eight_tokens_in_all():
    schedule = CostModelSchedule()
    assert [schedule.probe_k(5, rows) for rows in (1, 2, 3, 4, 16)] == [5, 3, 1, 1, 1]
    assert schedule.probe_k(2, 1) == 2  # never above the cap


def test_cost_model_probes_a_wide_batch_with_one_draft():
    """16 rows, every draft rejected, verify cost growing with the tokens verified: the first step and every probe
    draft one token per row (32 tokens verified), not the cap (96 tokens, several plain steps' worth)."""
    schedule = CostModelSchedule(probe_every=4, max_probe_every=16)
    chosen = feed(schedule, 60, accept_all=False, cost=cpu_like_cost, rows=16)
    assert chosen[0] == 1
    assert chosen.count(0) > 45
    assert max(chosen[2:]) <= 1  # after the optimistic second look, probes only


def test_auto_is_constant_alone_and_the_cost_model_in_a_batch():
    schedule = AutoSchedule()
    alone = feed(schedule, 20, accept_all=False, cost=cpu_like_cost, rows=1)
    assert alone == [5] * 20  # one sequence: the proposer's own back-off decides, K stays the cap
    batched = feed(schedule, 40, accept_all=False, cost=cpu_like_cost, rows=4)
    assert batched.count(0) > 30  # several rows: rejected drafts drive K to plain steps


def test_make_schedule_names():
    assert isinstance(make_schedule("auto", 5), AutoSchedule)
    assert isinstance(make_schedule("constant", 5), ConstantSchedule)
    assert isinstance(make_schedule("heuristic", 5), HeuristicSchedule)
    assert isinstance(make_schedule("cost_model", 5), CostModelSchedule)
    with pytest.raises(specdecode.ConfigError, match="speculation_schedule"):
        make_schedule("adaptive", 5)


# -- end to end, with a scripted proposer registered in code ------------------------------------------------------


class PatternProposer(Proposer):
    """Drafts the target's greedy continuation (known in advance) while the script says "hit", and wrong tokens
    while it says "miss"; one script entry per call."""

    def __init__(self, model, continuation: list[int], script: str):
        self.vocab = model.config.vocab_size
        self.continuation = continuation
        self.script = script
        self.calls = 0

    def start(self, context) -> None:
        self.prompt_length = context.input_ids.shape[1] - 1

    def propose(self, request: ProposeRequest) -> Proposal:
        k = request.num_tokens
        done = request.input_ids.shape[1] - self.prompt_length
        right = torch.tensor(self.continuation[done : done + k]).view(1, -1)
        hit = self.script[min(self.calls, len(self.script) - 1)] == "h"
        self.calls += 1
        return Proposal(token_ids=right if hit else (right + 1) % self.vocab)


PROMPT = repetitive_prompts(64, count=1, seed=2)[0]


@pytest.fixture(scope="module")
def continuation(tiny_model) -> list[int]:
    return tiny_model.generate(PROMPT, do_sample=False, max_new_tokens=80, min_new_tokens=80)[
        0, PROMPT.shape[1] :
    ].tolist()


@pytest.fixture
def scripted_costs(monkeypatch):
    """Replace the measured timings the loop reports to the cost model by the CPU-like curve above: a tiny model's
    timings on a busy machine are noise, and this test is about the acceptance pattern."""
    original = CostModelSchedule.observe

    def observe(self, outcome: StepOutcome) -> None:
        verify = cpu_like_cost(outcome.verify_tokens)
        timed = attrs.evolve(outcome, verify_seconds=verify, draft_seconds=0.0, step_seconds=verify)
        original(self, timed)

    monkeypatch.setattr(CostModelSchedule, "observe", observe)


def run_script(model, register, continuation, script: str, schedule: str, max_new: int = 40, k: int = 4):
    register(ScriptedPlugin("pattern", lambda m: PatternProposer(m, continuation, script)), "pattern-plugin")
    config = SpeculativeConfig(method="pattern", num_speculative_tokens=k, speculation_schedule=schedule)
    out = specdecode.generate(model, PROMPT, config, max_new_tokens=max_new)
    assert out.sequences[0, PROMPT.shape[1] :].tolist() == continuation[:max_new]  # still lossless
    return out.stats


def test_heuristic_end_to_end_follows_the_script(tiny_model, register, continuation):
    stats = run_script(tiny_model, register, continuation, "hmmmmhhh", "heuristic")
    # K=4 hit -> 4 (capped), miss -> 3, 2, 1, 1 (floor), hit -> 3, hit -> 4 (cap), hit -> 4
    assert stats.k_budget_per_step[:8] == [4, 4, 3, 2, 1, 1, 3, 4]
    assert stats.k_per_step[:8] == stats.k_budget_per_step[:8]


def test_cost_model_end_to_end_backs_off_on_bad_drafts(tiny_model, register, continuation, scripted_costs):
    stats = run_script(tiny_model, register, continuation, "m", "cost_model", max_new=40)
    budgets = stats.k_budget_per_step
    assert budgets[0] == 4
    assert budgets.count(0) > len(budgets) / 2  # mostly plain decode steps
    assert stats.drafted < 4 * len(budgets) / 3


def test_cost_model_end_to_end_follows_the_acceptance(tiny_model, register, continuation, scripted_costs):
    stats = run_script(tiny_model, register, continuation, "h" * 4 + "m" * 30, "cost_model", max_new=60)
    budgets = stats.k_budget_per_step
    drafting = [k for k in budgets if k > 0]  # the script advances on propose() calls, not on plain steps
    assert drafting[:4] == [4] * 4 and stats.accepted == 16  # four hits at the full K ...
    # ... then misses drive K down to plain decoding, but for rare probes.
    assert budgets.count(0) > len(budgets) / 2 and sum(1 for k in budgets[-10:] if k) <= 2
