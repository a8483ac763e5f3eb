"""When a sequence stops: transformers' stopping criteria, applied to each token a step adds.

Plain ``generate`` checks its ``StoppingCriteriaList`` after every token, on the batch's ``input_ids`` (the prompt as
given, padding included, then the tokens so far). A verify step adds several tokens per sequence at once, so
:class:`StopRules` checks each of them in turn, on that sequence's tokens up to it, and cuts the step's tokens
after the first one that stops the sequence. The common criteria are decided on the host without touching the
device: the length limit (``max_length`` / ``max_new_tokens``, and a per-sequence limit of specdecode's), eos
tokens and the time limit; any other criterion (stop strings, a user's criteria) is called once per new token
with a ``[1, T]`` view of that sequence (``scores`` is None, as plain generate passes it unless it keeps scores).

As in transformers, a sequence that stopped gets pad tokens only when an eos criterion exists; otherwise it keeps
generating until every sequence of the batch has stopped (``pad_finished``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


class StopRules:
    """The stopping criteria of one generation, with each sequence's limit on new tokens."""

    def __init__(
        self, criteria: Sequence[Any], max_new: Sequence[int], prompt_width: int, eos_ids: frozenset[int] = frozenset()
    ):
        from transformers.generation.stopping_criteria import (
            EosTokenCriteria,
            MaxLengthCriteria,
            MaxTimeCriteria,
        )

        self.max_new = list(max_new)  # per sequence
        self.eos_ids = set(eos_ids)
        self.deadline: float | None = None
        self.other: list[Any] = []
        self.pad_finished = False
        for criterion in criteria:
            if isinstance(criterion, MaxLengthCriteria):
                limit = criterion.max_length - prompt_width
                self.max_new = [min(m, limit) for m in self.max_new]
            elif isinstance(criterion, EosTokenCriteria):
                self.eos_ids |= {int(t) for t in criterion.eos_token_id.flatten().tolist()}
            elif isinstance(criterion, MaxTimeCriteria):
                end = criterion.initial_timestamp + criterion.max_time
                self.deadline = end if self.deadline is None else min(self.deadline, end)
            else:
                self.other.append(criterion)
            if hasattr(criterion, "eos_token_id"):  # transformers' own test for "stopped rows get padding"
                self.pad_finished = True
        if self.eos_ids and not any(hasattr(c, "eos_token_id") for c in criteria):
            self.pad_finished = True  # eos ids given directly (specdecode.generate's own path)

    def first_stop(self, b: int, tokens: list[int], before: int, prefix: Callable[[int], torch.Tensor]) -> int | None:
        """Sequence b's tokens so far are ``tokens`` (host), of which ``tokens[before:]`` are new this step. The
        number of tokens it keeps when one of the new ones stops it (the stopping one included), else None.
        ``prefix(n)`` is the sequence's ``[1, P + n]`` ids up to its n-th generated token, for the other criteria."""
        limit = self.max_new[b]
        timed_out = self.deadline is not None and time.time() > self.deadline
        for i in range(before, len(tokens)):
            n = i + 1
            if n >= limit or tokens[i] in self.eos_ids:
                return n
            if self.other and any(bool(c(prefix(n), None).any()) for c in self.other):
                return n
        if timed_out:  # the whole step was computed before the deadline was noticed: keep it
            return len(tokens)
        return None
