"""Prompt lookup: propose the tokens that followed the most recent earlier occurrence of the current suffix.

The suffix of prompt + generated text is matched from ``prompt_lookup_max`` tokens down to ``prompt_lookup_min``;
the longest match wins, and among equal lengths the most recent occurrence. An index of n-grams is extended as
tokens arrive, so a step costs O(window), not a rescan of the sequence.

Speculation is not free: a target forward over k+1 tokens costs more than over one. With ``adaptive=True`` (the
default) the proposer therefore drafts only when it expects to gain: it keeps running acceptance estimates per match
length and, with a verify-cost curve (options; ``specdecode tune`` measures it), picks the k that
maximises expected tokens per unit of cost (Leviathan et al.), drafting nothing when no k beats a plain step. The
curve defaults to the core's for the device and linear kernel in use (``specdecode.toolkit.verify_cost``).
Decisions depend only on the tokens seen, never on timings, so seeded sampling stays reproducible.
"""

from __future__ import annotations

import attrs
import specdecode
import torch
from specdecode import PerSequenceProposer, ProposerSpec, StartContext, VerifyResult
from specdecode.toolkit import NgramIndex, SequenceReader, best_draft_length, validators, verify_cost

__all__ = ["AcceptanceModel", "NgramIndex", "NgramOptions", "NgramProposer"]


@attrs.frozen(kw_only=True)
class NgramOptions:
    """Options of ``method="ngram"`` (besides the config's prompt_lookup_min / prompt_lookup_max)."""

    # Draft only when the expected gain beats a plain step; False drafts every match at full length (vLLM's way).
    adaptive: bool = attrs.field(default=True, validator=validators.boolean())
    # Prior acceptance of a draft's first token for a match of n tokens: prior_first + prior_per_ngram * n.
    prior_first: float = attrs.field(default=0.35, validator=validators.number(0, 1))
    prior_per_ngram: float = attrs.field(default=0.1, validator=validators.number(0, 1))
    # Verify cost of k drafts relative to a plain step: 1 + cost_jump + cost_per_token * k. None: the core's curve
    # for the device and linear kernel in use (specdecode.toolkit.verify_cost; `specdecode tune` measures yours).
    cost_jump: float | None = attrs.field(default=None, validator=validators.number(0, optional=True))
    cost_per_token: float | None = attrs.field(default=None, validator=validators.number(0, optional=True))


class AcceptanceModel:
    """Running estimates that decide how many of a match's tokens are worth drafting.

    * first-token acceptance per match length n, as a Beta posterior seeded by the prior;
    * acceptance of each later token given the previous one was accepted (pooled: copying tends to continue);
    * the cost of a verify step with k drafts relative to a plain step, from the options' cost curve.
    """

    PRIOR_WEIGHT = 2.0  # pseudo-observations behind each prior
    DECAY = 0.98  # older evidence fades, so estimates follow the text's current regime

    def __init__(self, options: NgramOptions, max_n: int, max_k: int, device: torch.device | str | None = None):
        self.options = options
        self.set_device(device)
        self.first = {n: [self._prior_first(n) * self.PRIOR_WEIGHT, self.PRIOR_WEIGHT] for n in range(1, max_n + 1)}
        self.later = [0.8 * self.PRIOR_WEIGHT, self.PRIOR_WEIGHT]
        self.max_k = max_k
        self.skipped = 0

    def _prior_first(self, n: int) -> float:
        return min(0.95, self.options.prior_first + self.options.prior_per_ngram * n)

    def set_device(self, device: torch.device | str | None) -> None:
        """Take the verify-cost curve of ``device`` for the options left at None."""
        self.verify_cost = verify_cost(device, self.options.cost_jump, self.options.cost_per_token)

    def best_k(self, n: int, available: int) -> int:
        """The k (0 = no drafting) that maximises expected tokens per unit of verify cost."""
        a_first = self.first[n][0] / self.first[n][1]
        a_later = self.later[0] / self.later[1]
        survival = [a_first * a_later**i for i in range(available)]  # P(drafts 1..i+1 all accepted)
        best_k = best_draft_length(survival, self.verify_cost)
        if best_k == 0:
            # Explore now and then, or a pessimistic estimate could never be corrected.
            self.skipped += 1
            if self.skipped >= 16:
                self.skipped = 0
                return min(1, available)
        return best_k

    def record(self, n: int, drafted: int, accepted: int) -> None:
        if drafted == 0 or n == 0:
            return
        for stats in self.first.values():
            stats[0] *= self.DECAY
            stats[1] *= self.DECAY
        self.first[n][0] += 1.0 if accepted > 0 else 0.0
        self.first[n][1] += 1.0
        # Later positions: of drafts 2..drafted, those reached (previous accepted) and their outcomes.
        reached = min(accepted, drafted - 1)
        self.later[0] = self.later[0] * self.DECAY + max(accepted - 1, 0)
        self.later[1] = self.later[1] * self.DECAY + reached


class NgramProposer(PerSequenceProposer):
    def __init__(self, min_n: int, max_n: int, options: NgramOptions | None = None, max_k: int = 5):
        self.min_n, self.max_n = min_n, max_n
        self.options = options or NgramOptions()
        self.max_k = max_k
        self.indexes: dict[int, NgramIndex] = {}
        self.reader = SequenceReader()
        self.model = AcceptanceModel(self.options, max_n, max_k)
        self.pending: dict[int, tuple[int, int]] = {}  # sequence -> (match length, drafted) of its current draft

    def start(self, context: StartContext) -> None:
        self.indexes = {}
        self.reader = SequenceReader()
        self.pending = {}
        ids = getattr(context, "input_ids", None)
        self.model.set_device(None if ids is None else ids.device)

    def propose_one(self, index: int, tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
        new, restarted = self.reader.unread(index, tokens)
        if restarted:
            self.indexes[index] = NgramIndex(self.min_n, self.max_n)
        ngram = self.indexes[index]
        ngram.extend(new)
        draft, n = ngram.match(num_tokens)
        if draft and self.options.adaptive:
            draft = draft[: self.model.best_k(n, len(draft))]
        self.pending[index] = (n if draft else 0, len(draft))
        return torch.tensor(draft, dtype=torch.long)

    def on_verified(self, result: VerifyResult) -> None:
        if not self.options.adaptive:
            return
        for b, (n, drafted) in self.pending.items():
            if b < len(result.num_accepted_list):
                self.model.record(n, drafted, result.num_accepted_list[b])
        self.pending = {}


def _factory(model, config: specdecode.SpeculativeConfig, options: NgramOptions) -> NgramProposer:
    lo, hi = config.prompt_lookup_window
    return NgramProposer(lo, hi, options, max_k=config.num_speculative_tokens)


@specdecode.hookimpl
def specdecode_proposers():
    return [
        ProposerSpec(
            name="ngram",
            factory=_factory,
            options_class=NgramOptions,
            description="Prompt lookup: copy what followed the latest earlier match of the current n-gram suffix.",
        )
    ]
