"""Acceptance metrics and timings of one generate() call, returned as data (the CLI prints them)."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define(kw_only=True)
class GenerationStats:
    """Counts follow vLLM's definitions.

    * acceptance rate = accepted / drafted
    * mean acceptance length = 1 + accepted / (steps that drafted): tokens emitted per verify step that drafted,
      the corrected or bonus token included
    * per-position acceptance: of the steps that drafted a token at position i, the share where it was accepted
    """

    new_tokens: int = 0
    steps: int = 0  # verify forwards after the prefill
    drafting_steps: int = 0  # steps whose proposal was not empty
    drafted: int = 0
    accepted: int = 0
    target_forwards: int = 0  # prefill included
    drafted_per_position: list[int] = attrs.field(factory=list)
    accepted_per_position: list[int] = attrs.field(factory=list)
    k_per_step: list[int] = attrs.field(factory=list)  # draft tokens proposed at each step (widest row in a batch)
    accepted_per_step: list[int] = attrs.field(factory=list)  # summed over the rows of a batch
    k_budget_per_step: list[int] = attrs.field(factory=list)  # K asked of the proposer (schedule and policies)
    rows_per_step: list[int] = attrs.field(factory=list)  # sequences in each verify forward
    num_sequences: int = 1
    time_proposer: float = 0.0  # seconds in propose() and on_verified()
    time_target: float = 0.0  # seconds in the target's forward passes
    time_processing: float = 0.0  # seconds in logits processors (and a grammar's masks) at the verify positions
    time_total: float = 0.0
    prompt_tokens: int = 0

    def record_step(self, drafted: int, accepted: int) -> None:
        """One verify forward of a single sequence."""
        self.record_batch_step([drafted], [accepted])

    def record_batch_step(self, drafted: list[int], accepted: list[int]) -> None:
        """One verify forward over several rows. Counts are summed over rows, so ``drafting_steps`` counts
        (row, step) pairs that drafted and the mean acceptance length keeps its per-sequence meaning."""
        self.steps += 1
        self.k_per_step.append(max(drafted))
        self.accepted_per_step.append(sum(accepted))
        self.rows_per_step.append(len(drafted))
        for d, n in zip(drafted, accepted):
            if d == 0:
                continue
            self.drafting_steps += 1
            self.drafted += d
            self.accepted += n
            if len(self.drafted_per_position) < d:
                grow = d - len(self.drafted_per_position)
                self.drafted_per_position.extend([0] * grow)
                self.accepted_per_position.extend([0] * grow)
            for i in range(d):
                self.drafted_per_position[i] += 1
            for i in range(n):
                self.accepted_per_position[i] += 1

    def merge(self, other: GenerationStats) -> GenerationStats:
        """Sum of two stats (for totals over prompts)."""
        out = GenerationStats()
        for f in attrs.fields(GenerationStats):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, list):
                if f.name in ("drafted_per_position", "accepted_per_position"):
                    n = max(len(a), len(b))
                    setattr(out, f.name, [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)])
                else:
                    setattr(out, f.name, a + b)
            else:
                setattr(out, f.name, a + b)
        return out

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        return 1.0 + self.accepted / self.drafting_steps if self.drafting_steps else 1.0

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per target forward pass (Spec-Bench's tau, prefill included)."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_per_position, self.drafted_per_position)]

    @property
    def time_other(self) -> float:
        """Seconds outside the target's forward and the proposer: acceptance, cache handling, Python."""
        return max(self.time_total - self.time_proposer - self.time_target, 0.0)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.time_total if self.time_total > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        for name in (
            "acceptance_rate",
            "mean_acceptance_length",
            "tokens_per_forward",
            "per_position_acceptance",
            "time_other",
            "tokens_per_second",
        ):
            out[name] = getattr(self, name)
        return out

    def summary(self) -> str:
        return (
            f"{self.new_tokens} tokens in {self.time_total:.2f}s ({self.tokens_per_second:.1f} tok/s), "
            f"acceptance rate {self.acceptance_rate:.1%}, mean acceptance length {self.mean_acceptance_length:.2f}, "
            f"{self.target_forwards} target forwards"
        )
