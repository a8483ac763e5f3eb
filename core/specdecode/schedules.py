"""Speculation schedules: how many draft tokens (K) to ask for at each step.

The loop asks ``schedule.next_k(cap, rows)`` before drafting and reports what happened with
``schedule.observe(outcome)`` after verifying. ``cap`` is the most the config allows for this batch size
(:meth:`SpeculativeConfig.num_tokens_for_batch`); ``rows`` is the number of sequences still running.

* ``constant``: always the cap.
* ``heuristic``: transformers' ``num_assistant_tokens_schedule="heuristic"``: +2 after a step whose drafts were all
  accepted, -1 otherwise, never below 1 and never above ``num_speculative_tokens`` (or the batch-size cap).
* ``cost_model``: picks the K that maximises Leviathan's expected speedup, from running estimates of the acceptance
  rate and of the measured draft and verify costs (K = 0, a plain decode step, is allowed).
* ``auto`` (the default): ``constant`` while one sequence runs, ``cost_model`` while several do. Alone, the
  proposers back off by themselves from the tokens they see (deterministic, so seeded sampling reproduces); in a
  batch every row pays for the widest draft, which only measured costs can weigh.

Letters: a = acceptance rate of one draft token, K = draft tokens asked for, R = running rows,
V(n) = seconds of a target forward over n tokens (n = R * (K+1)), D = draft seconds per requested token,
O = the rest of a step (acceptance, bookkeeping).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import attrs

from .costs import expected_tokens


@attrs.frozen(kw_only=True)
class StepOutcome:
    """What one verify step did, as the schedules see it."""

    budget: int  # K the loop asked the proposer for
    drafted: Sequence[int]  # per running row
    accepted: Sequence[int]  # per running row
    verify_tokens: int  # tokens the target scored: rows * (verified width + 1)
    verify_seconds: float  # the target's forward, up to the host sync of the results
    draft_seconds: float  # propose() time
    step_seconds: float  # the whole step


class Schedule(Protocol):
    def next_k(self, cap: int, rows: int) -> int: ...

    def observe(self, outcome: StepOutcome) -> None: ...


class ConstantSchedule:
    """Always ask for the cap."""

    def next_k(self, cap: int, rows: int) -> int:
        return cap

    def observe(self, outcome: StepOutcome) -> None:
        pass


class HeuristicSchedule:
    """+2 after a fully accepted step, -1 otherwise; between 1 and ``max_k``.

    In a batch a step counts as fully accepted only when every row accepted every token it drafted: the verify
    width is shared, so a longer K is paid by every row. A step without drafts says nothing and changes nothing.
    """

    def __init__(self, max_k: int):
        self.max_k = max_k
        self.k = max_k  # start optimistic, like transformers (which starts at num_assistant_tokens)

    def next_k(self, cap: int, rows: int) -> int:
        return min(self.k, cap)

    def observe(self, outcome: StepOutcome) -> None:
        drafted = sum(outcome.drafted)
        if drafted == 0:
            return
        if sum(outcome.accepted) == drafted:
            self.k = min(self.k + 2, self.max_k)
        else:
            self.k = max(self.k - 1, 1)


class RunningMedian:
    """Median of the last ``window`` measurements: on a shared machine a step is sometimes preempted (10x slower),
    and one such outlier must not decide K for many steps, as it would in a moving average."""

    def __init__(self, window: int = 9):
        self.values: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        self.values.append(value)

    def __bool__(self) -> bool:
        return bool(self.values)

    @property
    def value(self) -> float:
        ordered = sorted(self.values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


class VerifyCostCurve:
    """Running estimate of V(n), the seconds of one target forward over n tokens, from measured steps.

    Each measured n keeps the running median of its recent measurements. Between measured points V is
    interpolated linearly. Outside them the curve is *optimistic* on purpose, so that an option never tried looks
    attractive and gets measured: flat above the largest n (longer drafts cost nothing more), proportional below
    the smallest (shorter verifies cost proportionally less).
    """

    def __init__(self, window: int = 9):
        self.window = window
        self.points: dict[int, RunningMedian] = {}
        self._sorted: list[int] = []

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens not in self.points:
            self.points[tokens] = RunningMedian(self.window)
            bisect.insort(self._sorted, tokens)
        self.points[tokens].add(seconds)

    @property
    def empty(self) -> bool:
        return not self.points

    def __call__(self, tokens: int) -> float:
        known = self._sorted
        if tokens in self.points:
            return self.points[tokens].value
        i = bisect.bisect_left(known, tokens)
        if i == len(known):
            return self.points[known[-1]].value
        if i == 0:
            return self.points[known[0]].value * tokens / known[0]
        lo, hi = known[i - 1], known[i]
        share = (tokens - lo) / (hi - lo)
        return self.points[lo].value + share * (self.points[hi].value - self.points[lo].value)


class CostModelSchedule:
    """Each step, the K in 0..cap that maximises the expected speedup over a plain decode step::

        speedup(K) = expected_tokens(a, K) * C(0) / C(K),   C(K) = V(R * (K+1)) + D * K + O

    With C(K) = K*c + 1 in units of a target step this is Leviathan et al.'s (1 - a^(K+1)) / ((1 - a)(K c + 1));
    here the verify cost is a measured curve, since on a CPU V(K+1) grows with K.

    The acceptance rate is estimated from draft positions seen as Bernoulli trials: a row that accepted n of its
    d drafts had n successes in n + [n < d] trials (positions after the first rejection were never tried). Both
    counts are exponential moving averages, started from a weak prior of a = 0.5. While K = 0 wins, no drafts are
    seen, so the schedule probes every ``probe_every`` plain steps, doubling the wait after every probe that does
    not change its mind (up to ``max_probe_every``). A probe (and the first step, before anything is measured)
    verifies about ``probe_tokens`` tokens in all: the cap for one sequence, K = 1 for a wide batch, where a probe at
    the cap would cost several plain steps.
    """

    def __init__(
        self,
        *,
        decay: float = 0.8,
        prior_alpha: float = 0.5,
        prior_trials: float = 2.0,
        probe_every: int = 4,
        max_probe_every: int = 64,
        probe_tokens: int = 8,
    ):
        self.decay = decay
        self.successes = prior_alpha * prior_trials
        self.trials = prior_trials
        self.verify_cost = VerifyCostCurve()
        self.draft_per_token = RunningMedian()  # D, seconds per requested draft token
        self.other = RunningMedian()  # O
        self.first_probe_every = probe_every
        self.probe_every = probe_every
        self.max_probe_every = max_probe_every
        self.probe_tokens = probe_tokens
        self.plain_steps = 0  # consecutive steps where K = 0 won

    @property
    def alpha(self) -> float:
        return self.successes / self.trials if self.trials > 0 else 0.0

    @property
    def draft_cost(self) -> float:
        return self.draft_per_token.value if self.draft_per_token else 0.0

    @property
    def other_cost(self) -> float:
        return self.other.value if self.other else 0.0

    def step_cost(self, k: int, rows: int) -> float:
        return self.verify_cost(rows * (k + 1)) + self.draft_cost * k + self.other_cost

    def speedup(self, k: int, rows: int) -> float:
        return expected_tokens(self.alpha, k) * self.step_cost(0, rows) / self.step_cost(k, rows)

    def probe_k(self, cap: int, rows: int) -> int:
        """K for a probe: rows * (K + 1) close to ``probe_tokens``, at least 1, at most the cap."""
        return max(1, min(cap, self.probe_tokens // max(rows, 1) - 1))

    def best_k(self, cap: int, rows: int) -> int:
        if cap <= 0:
            return 0
        if self.verify_cost.empty:
            return self.probe_k(cap, rows)  # nothing measured yet: measure a verify with drafts first
        scores = [self.speedup(k, rows) for k in range(cap + 1)]
        return max(range(cap + 1), key=lambda k: (scores[k], -k))  # ties go to the smaller K

    def next_k(self, cap: int, rows: int) -> int:
        k = self.best_k(cap, rows)
        if k > 0 or cap == 0:
            self.plain_steps = 0
            self.probe_every = self.first_probe_every
            return k
        self.plain_steps += 1
        if self.plain_steps > self.probe_every:
            self.plain_steps = 0
            self.probe_every = min(2 * self.probe_every, self.max_probe_every)
            return self.probe_k(cap, rows)
        return 0

    def observe(self, outcome: StepOutcome) -> None:
        successes = trials = 0
        for d, n in zip(outcome.drafted, outcome.accepted):
            if d > 0:
                successes += n
                trials += n + (1 if n < d else 0)
        if trials:
            self.successes = self.decay * self.successes + successes
            self.trials = self.decay * self.trials + trials
        self.verify_cost.observe(outcome.verify_tokens, outcome.verify_seconds)
        self.other.add(max(outcome.step_seconds - outcome.verify_seconds - outcome.draft_seconds, 0.0))
        if outcome.budget > 0:
            self.draft_per_token.add(outcome.draft_seconds / outcome.budget)


class AutoSchedule:
    """``constant`` while one sequence runs, ``cost_model`` while several do (the default schedule).

    The cost model hears about every step: its verify-cost curve is keyed by the tokens verified, so single-row
    steps are valid measurements for it too."""

    def __init__(self):
        self.cost_model = CostModelSchedule()

    def next_k(self, cap: int, rows: int) -> int:
        return cap if rows == 1 else self.cost_model.next_k(cap, rows)

    def observe(self, outcome: StepOutcome) -> None:
        self.cost_model.observe(outcome)


def make_schedule(name: str, max_k: int) -> Schedule:
    """The schedule named by ``SpeculativeConfig.speculation_schedule``."""
    if name == "auto":
        return AutoSchedule()
    if name == "constant":
        return ConstantSchedule()
    if name == "heuristic":
        return HeuristicSchedule(max_k)
    if name == "cost_model":
        return CostModelSchedule()
    from .config import SCHEDULES
    from .errors import invalid

    raise invalid("speculation_schedule", name, "one of " + ", ".join(SCHEDULES))
