"""The proposers: a draft model sharing the target's tokenizer, and one drafting in its own tokens.

Both keep one :class:`specdecode.toolkit.TokenCache` per sequence. Nothing is done in ``on_verified``: the next
``propose`` compares the cache's tokens with the sequence, crops the rejected drafts and feeds the corrected or
bonus token, so the draft catches up in the same forward pass that starts its next draft.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from specdecode import ConfigError, PerSequenceProposer, SamplingParams, StartContext
from specdecode.toolkit import TokenCache

from .drafting import Draft, draft_tokens

GREEDY = SamplingParams()
TAIL_TOKENS = 8  # draft tokens of left context decoded with the drafts, so word boundaries come out right
TAIL_CHARS = 64  # characters of target text re-encoded with the continuation, to find the token boundary


def sequences(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """The real (unpadded) tokens of every sequence."""
    if input_ids.shape[0] == 1:  # no padding at batch size 1
        return [input_ids[0].tolist()]
    return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]


class _DraftProposerBase(PerSequenceProposer):
    """What both proposers share: per-sequence caches and counters of the draft's work."""

    def __init__(self, draft_model: Any, *, draft_device: torch.device, p_min: float | None):
        self.draft_model = draft_model
        self.draft_device = draft_device
        self.p_min = p_min
        self.caches: dict[int, TokenCache] = {}
        self._finished_forwards = 0
        self._finished_seconds = 0.0

    @property
    def draft_forwards(self) -> int:
        """Draft forward passes so far, over every generation this proposer ran."""
        return self._finished_forwards + sum(c.forwards for c in self.caches.values())

    @property
    def draft_seconds(self) -> float:
        return self._finished_seconds + sum(c.seconds for c in self.caches.values())

    def _new_caches(self, context: StartContext, prompt: Callable[[list[int]], list[int]]) -> None:
        """One cache per sequence, holding ``prompt(tokens)`` of its prompt (the newest token is fed with the
        first draft)."""
        self.finish()
        with torch.inference_mode():
            for b, tokens in enumerate(sequences(context.input_ids, context.attention_mask)):
                self.caches[b] = TokenCache(self.draft_model, self.draft_device)
                self.caches[b].prefill(prompt(tokens[:-1]))

    def torch_modules(self) -> list[torch.nn.Module]:
        return [self.draft_model]

    def finish(self) -> None:
        self._finished_forwards = self.draft_forwards
        self._finished_seconds = self.draft_seconds
        self.caches = {}


class DraftModelProposer(_DraftProposerBase):
    """A draft model with the target's tokenizer (and ``layer_skip``'s truncated target)."""

    def __init__(
        self,
        draft_model: Any,
        *,
        target_vocab_size: int,
        draft_device: torch.device,
        p_min: float | None = None,
        check_tokenizer: Callable[[Any], None] | None = None,
    ):
        super().__init__(draft_model, draft_device=draft_device, p_min=p_min)
        self.vocab_size = target_vocab_size
        self.check_tokenizer = check_tokenizer

    def start(self, context: StartContext) -> None:
        if self.check_tokenizer is not None and context.tokenizer is not None:
            self.check_tokenizer(context.tokenizer)
        self._new_caches(context, lambda tokens: tokens)

    def propose_one(self, index: int, tokens: torch.Tensor, num_tokens: int):
        request = self.request
        assert request is not None  # set by PerSequenceProposer.propose
        draft = draft_tokens(
            self.caches[index],
            tokens.tolist(),
            num_tokens,
            vocab_size=self.vocab_size,
            sampling=request.sampling,
            generator=request.generator,
            device=tokens.device,
            p_min=self.p_min,
        )
        return torch.tensor(draft.token_ids, dtype=torch.long), draft.probs


class CrossTokenizerProposer(_DraftProposerBase):
    """A draft model with its own tokenizer (universal assisted generation).

    Every step the target's tokens are decoded to text and re-encoded with the draft's tokenizer; the draft
    extends that text greedily, and the new text is encoded with the target's tokenizer to give the proposal.
    Proposals are deterministic (q one-hot), which keeps rejection sampling exact when the target samples:
    accepting x with probability p(x) and otherwise sampling from p without x yields p.
    """

    def __init__(
        self, draft_model: Any, draft_tokenizer: Any, *, draft_device: torch.device, p_min: float | None
    ):
        super().__init__(draft_model, draft_device=draft_device, p_min=p_min)
        self.draft_tokenizer = draft_tokenizer
        self.draft_vocab = min(len(draft_tokenizer), _logits_width(draft_model))
        self.draft_stop_ids = frozenset(getattr(draft_tokenizer, "all_special_ids", ()) or ())
        self.target_tokenizer: Any = None

    def start(self, context: StartContext) -> None:
        if context.tokenizer is None:
            raise ConfigError(
                "cross-tokenizer drafting (method_options.draft_tokenizer is set) converts tokens through "
                "text and needs the target's tokenizer: pass tokenizer=<the target's tokenizer> to "
                "specdecode.generate()",
                field="tokenizer",
                value=None,
            )
        self.target_tokenizer = context.tokenizer
        self._new_caches(context, lambda tokens: self._draft_context(tokens)[:-1])

    def propose_one(self, index: int, tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
        return torch.tensor(self._propose_one(index, tokens.tolist(), num_tokens).token_ids, dtype=torch.long)

    def _propose_one(self, index: int, tokens: list[int], num_tokens: int) -> Draft:
        text = self._text(tokens)
        context = self._encode_draft(text)
        if not context:
            return Draft(token_ids=[], probs=None)
        drafted = draft_tokens(
            self.caches[index],
            context,
            num_tokens,
            vocab_size=self.draft_vocab,
            sampling=GREEDY,
            generator=None,
            device=self.draft_device,
            p_min=self.p_min,
            stop_ids=self.draft_stop_ids,
        ).token_ids
        continuation = self._continuation_text(context, drafted)
        if not continuation:
            return Draft(token_ids=[], probs=None)
        return Draft(token_ids=self._target_ids_after(text, continuation)[:num_tokens], probs=None)

    # -- text conversions ------------------------------------------------------------------------------------
    def _text(self, target_tokens: list[int]) -> str:
        return self.target_tokenizer.decode(
            target_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _encode_draft(self, text: str) -> list[int]:
        return self.draft_tokenizer(text, add_special_tokens=False)["input_ids"]

    def _draft_context(self, target_tokens: list[int]) -> list[int]:
        return self._encode_draft(self._text(target_tokens))

    def _continuation_text(self, context: list[int], drafted: list[int]) -> str:
        """The text the drafted tokens add after ``context``, decoded with a little left context so that a
        leading space or a multi-byte character comes out as it does in running text."""
        drafted = [t for t in drafted if t not in self.draft_stop_ids]
        if not drafted:
            return ""
        decode = self.draft_tokenizer.decode
        tail = context[-TAIL_TOKENS:]
        before = decode(tail, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        after = decode(tail + drafted, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if after.startswith(before):
            return after[len(before) :]
        return decode(drafted, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _target_ids_after(self, text: str, continuation: str) -> list[int]:
        """Target tokens for ``continuation`` as they would follow ``text``: the end of ``text`` is encoded
        with it and the tokens from the boundary on are kept. When a token straddles the boundary (the target
        already emitted part of a word) the continuation is encoded on its own."""
        tokenizer = self.target_tokenizer
        tail = text[-TAIL_CHARS:]
        try:
            encoded = tokenizer(tail + continuation, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError):  # slow tokenizers have no offsets
            encoded = None
        if encoded is not None and tail:
            ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
            boundary = len(tail)
            for j, (start, _end) in enumerate(offsets):
                if start >= boundary:
                    if j == 0 or offsets[j - 1][1] <= boundary:
                        return list(ids[j:])
                    break
        return tokenizer(continuation, add_special_tokens=False)["input_ids"]


def _logits_width(model: Any) -> int:
    from .pair_checks import output_vocab_size

    return output_vocab_size(model)
