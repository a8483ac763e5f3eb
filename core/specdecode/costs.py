"""The cost model of speculation (Leviathan et al. 2023), in one place for the core and the proposers.

Costs are in units of one plain decode step of the target. A verify pass over k drafts costs
``1 + jump + per_token * k`` (:class:`VerifyCost`): on an accelerator about 1 for small k, on a CPU it grows with k
and must be measured (``specdecode tune``). With a = the chance that one draft is accepted, a step with k drafts
emits :func:`expected_tokens` = (1 - a^(k+1)) / (1 - a) tokens (the corrected or bonus token included), so its
speedup over plain decoding is that over its cost. Proposers that decide how much to draft weigh each draft
against what it adds to the cost (:class:`StepPlan`, :func:`best_draft_length`); the loop's cost-model schedule
does the same with measured seconds (:mod:`specdecode.schedules`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch

__all__ = ["MARGIN", "StepPlan", "VerifyCost", "best_draft_length", "expected_tokens", "verify_cost"]

# A draft must beat the current tokens-per-cost rate by this factor, so estimation noise does not buy expensive
# steps.
MARGIN = 1.02


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens per row emitted by a step with k drafts: (1 - a^(k+1)) / (1 - a), bonus token included."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


class VerifyCost(NamedTuple):
    """A verify pass over k drafts costs ``1 + jump + per_token * k`` plain decode steps, plus ``group_jump`` for
    every further ``group_rows`` rows beyond the first group (the native kernel reads the weights once per group of
    up to 8 token rows: the last token and the drafts). ``group_rows`` 0: no groups."""

    jump: float
    per_token: float
    group_rows: int = 0
    group_jump: float = 0.0

    def __call__(self, k: int) -> float:
        if k == 0:
            return 1.0
        extra_groups = k // self.group_rows if self.group_rows > 0 else 0  # k + 1 rows
        return 1.0 + self.jump + self.per_token * k + self.group_jump * extra_groups

    def slot(self, index: int) -> float:
        """What draft number ``index`` (0-based) adds: the first one also pays the jump, one that starts a new group
        of rows the group jump."""
        new_group = self.group_rows > 0 and (index + 1) % self.group_rows == 0
        return self.per_token + (self.jump if index == 0 else 0.0) + (self.group_jump if new_group else 0.0)


# Measured with `specdecode tune`'s curve (SmolLM2-135M, fp32, 2 AMD EPYC cores, a 600-token cache), relative to a
# decode step on the same path. The native kernel makes every step cheaper but the first extra row dearer in
# relative terms: a multi-token step also builds an attention mask and expands the grouped KV heads.
_CPU_VERIFY_COSTS = {
    # A 9th row starts a second pass over the weights: 8 rows ~28-35 ms, 9 rows ~34-43 ms, 1 row ~20-22 ms (300-
    # and 1000-token caches), so +0.3 of a decode step.
    "native": VerifyCost(jump=0.20, per_token=0.06, group_rows=8, group_jump=0.3),
    "torch": VerifyCost(jump=0.05, per_token=0.09),
    "off": VerifyCost(jump=0.45, per_token=0.12),
}


def verify_cost(
    device: torch.device | str | None = None, jump: float | None = None, per_token: float | None = None
) -> VerifyCost:
    """The verify-cost curve of specdecode's forwards on ``device``, for proposers that weigh drafts; ``jump`` and
    ``per_token``, where given (a proposer's options), replace the default's.

    CPU: by the active linear kernel (measured on one machine; `specdecode tune` measures yours). Other devices:
    the CPU's ``torch`` curve, a conservative guess (accelerators verify a few tokens for nearly the price of one).
    """
    from .kernels import backend  # late: building the kernel is only needed on a CPU

    kind = torch.device(device).type if device is not None else "cpu"
    default = _CPU_VERIFY_COSTS["torch" if kind != "cpu" else backend()]
    return default._replace(
        jump=default.jump if jump is None else jump, per_token=default.per_token if per_token is None else per_token
    )


def best_draft_length(survival: Iterable[float], cost: VerifyCost, margin: float = MARGIN) -> int:
    """How many drafts (0 = a plain step) give the most expected tokens per unit of verify cost, when
    ``survival[i]`` is the chance that drafts 1..i+1 are all accepted. A longer step must beat the best shorter one
    by ``margin``."""
    best_k, best_rate, expected = 0, 1.0, 1.0
    for k, survive in enumerate(survival, start=1):
        expected += survive  # token k is emitted only if drafts 1..k are all accepted
        rate = expected / cost(k)
        if rate > best_rate * margin:
            best_k, best_rate = k, rate
    return best_k


class StepPlan:
    """A verify step planned one draft at a time: the tokens it is expected to emit and what it costs so far.

    A draft whose chance of being emitted is ``gain`` (its path accepted) joins while it pays for its verify slot:
    ``gain / slot cost > margin * expected / cost`` (the rate of the step so far). ``pays(gain, extra)`` also
    charges ``extra`` (e.g. a draft model's step) on top of the slot.
    """

    def __init__(self, cost: VerifyCost, margin: float = MARGIN):
        self.verify_cost = cost
        self.margin = margin
        self.expected = 1.0
        self.cost = 1.0
        self.drafts = 0

    def slot(self) -> float:
        return self.verify_cost.slot(self.drafts)

    def pays(self, gain: float, extra: float = 0.0) -> bool:
        return gain * self.cost > self.margin * self.expected * (self.slot() + extra)

    def add(self, gain: float) -> None:
        """A draft joins: its gain and its verify slot."""
        self.expected += gain
        self.cost += self.slot()
        self.drafts += 1

    def charge(self, extra: float) -> None:
        """Work that is not a verify slot (a draft step)."""
        self.cost += extra
