"""transformers' logits processors, applied to every position a verify pass scores.

Plain ``generate`` turns the last position's logits into scores with its ``LogitsProcessorList`` (repetition
penalty, no-repeat n-grams, min length, bad words, the user's processors, then temperature / top-k / top-p / min-p /
typical / epsilon / eta when sampling), given the tokens so far: ``scores = processors(input_ids, logits.float())``.
A verify pass scores k+1 positions at once, so position j is processed with exactly the prefix before it (the
sequence so far, then drafts 1..j): the same scores plain generate would compute there, so greedy output stays
identical and sampling keeps the target's distribution.

Most processors read ``input_ids``; the sampling warpers (and a few others) read only the scores. A
:class:`LogitsPipeline` splits the list into runs of each kind: runs that read ids are called once per position
with that position's prefix, the others once for all positions together. Structured output (a grammar mask) sits
where transformers puts a user's processor: after its own processors, before the warpers.

Letters: N positions scored at once, V vocabulary, T tokens in a prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

# Processors that never read input_ids (their output depends on the scores alone): they can run on all positions of
# a verify pass in one call. Anything else, a user's processor included, gets each position's own prefix.
_IDS_FREE = {
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "TopHLogitsWarper",
    "MinPLogitsWarper",
    "TypicalLogitsWarper",
    "EpsilonLogitsWarper",
    "EtaLogitsWarper",
    "LogitNormalization",
    "InfNanRemoveLogitsProcessor",
    "SuppressTokensLogitsProcessor",
}
# Where a user's processor lands in transformers' list: before the first of these (the sampling warpers, the
# watermark and the final normalisation are appended after the user's processors).
_AFTER_USER = _IDS_FREE - {"InfNanRemoveLogitsProcessor", "SuppressTokensLogitsProcessor"} | {
    "WatermarkLogitsProcessor",
    "SynthIDTextWatermarkLogitsProcessor",
}


def reads_ids(processor: Any) -> bool:
    return type(processor).__name__ not in _IDS_FREE


class LogitsPipeline:
    """A processor list, ready to score many positions at once. ``mask_at`` is where a grammar mask goes.

    Call it with logits ``[N, V]`` (any float dtype; processed in float32, as plain generate does), a function
    giving position n's batch row b and prefix ``[1, T]``, and an optional mask ``[N, V]`` (True = allowed) ->
    scores [N, V]. Processors may keep per-row state for the ``batch_size`` rows they were built for (transformers'
    repetition penalty skips each row's left padding), so a position is processed as row b of a batch of that size
    (the other rows copies, thrown away).
    """

    def __init__(self, processors: Sequence[Any], batch_size: int = 1):
        self.processors = list(processors)
        self.batch_size = batch_size
        self.mask_at = next(
            (i for i, p in enumerate(self.processors) if type(p).__name__ in _AFTER_USER), len(self.processors)
        )

    def __bool__(self) -> bool:
        return bool(self.processors)

    @property
    def reads_ids(self) -> bool:
        return any(reads_ids(p) for p in self.processors)

    def __call__(
        self,
        logits: torch.Tensor,
        prefix: Callable[[int], tuple[int, torch.Tensor]] | None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        scores = logits.to(dtype=torch.float32, copy=True)
        stages = self.processors[: self.mask_at], self.processors[self.mask_at :]
        for stage_index, stage in enumerate(stages):
            if stage_index == 1 and mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            scores = self._run(stage, scores, prefix)
        return scores

    def _run(self, processors: list[Any], scores: torch.Tensor, prefix: Callable[[int], tuple[int, torch.Tensor]] | None):
        i = 0
        while i < len(processors):
            j = i
            needs = reads_ids(processors[i])
            while j < len(processors) and reads_ids(processors[j]) == needs:
                j += 1
            run = processors[i:j]
            if not needs:
                for processor in run:
                    scores = processor(None, scores)
            elif prefix is not None:  # one position at a time, each with its own prefix, as row b of the batch
                rows = []
                for n in range(scores.shape[0]):
                    b, ids = prefix(n)
                    row = scores[n : n + 1]
                    if self.batch_size > 1:
                        ids = ids.expand(self.batch_size, -1)
                        row = row.expand(self.batch_size, -1).clone()
                    for processor in run:
                        row = processor(ids, row)
                    rows.append(row[b : b + 1] if self.batch_size > 1 else row)
                scores = torch.cat(rows)
            i = j
        return scores
