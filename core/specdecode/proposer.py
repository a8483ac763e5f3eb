"""The proposer contract: what a speculation method implements.

Letters used throughout: B = batch size, T = tokens so far (prompt + generated), K = speculation depth,
k = draft length of one step (k <= K), V = vocabulary size, H = the target's hidden size.
p = the target's distribution, q = the draft distribution a proposal was sampled from.

One generation, seen from a proposer::

    proposer = factory(target_model, config, options)   # once per generate() call
    proposer.start(context)                              # after the prompt's prefill
    loop:
        proposal = proposer.propose(request)             # up to K draft tokens per sequence
        ... the target scores [last token + drafts] in one forward pass, tokens are accepted ...
        proposer.on_verified(result)                     # how many were accepted, what comes next
    proposer.finish()

Every tensor has a batch dimension, even at batch size 1, so batched generation needs no plugin rewrite. In a
batch, row b is always the b-th prompt (finished sequences stay, with ``active[b]`` False), and every row is
right-aligned: padding on the left, ``input_ids[:, -1]`` is each row's newest token (docs/batching.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F


@attrs.frozen(kw_only=True)
class SamplingParams:
    """How the target picks tokens. A proposer that samples must report the exact distribution it sampled from;
    drawing with ``specdecode.toolkit.draw`` gives both, processed the way the target processes its logits.

    ``logits_processor``: the target's own processing (transformers' logits processors and, when sampling, its
    warpers: temperature, top-k, top-p, min-p, ...), as a callable ``(logits [N, V], prefix) -> scores`` (a
    :class:`specdecode.processing.LogitsPipeline`); None for the plain temperature / top-k / top-p fields below,
    which otherwise only describe it.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    logits_processor: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def greedy(self) -> bool:
        return not self.do_sample


@attrs.frozen(kw_only=True)
class StartContext:
    """Handed to :meth:`Proposer.start` once the prompt has been prefilled."""

    input_ids: torch.Tensor  # [B, T] prompt plus the first generated token
    attention_mask: torch.Tensor  # [B, T] 1 for real tokens, 0 for left padding
    num_speculative_tokens: int  # K
    sampling: SamplingParams
    generator: torch.Generator | None
    # [B, T-1, H] the target's last-layer hidden states over the prompt; only for proposers that set
    # ``needs_hidden_states``. Position t is the state after reading input_ids[:, t].
    hidden_states: torch.Tensor | None = None
    tokenizer: Any = None  # the target's tokenizer when the caller gave one (cross-tokenizer drafting needs it)
    # Whether tree proposals (Proposal.parents) are verified in this generation: batch size 1, greedy or rejection
    # sampling, and a model whose attention can place the branches (not ALiBi, no recurrent/convolution layers).
    # A proposer that drafts trees should draft chains when this is False.
    trees: bool = True


@attrs.frozen(kw_only=True)
class ProposeRequest:
    """Handed to :meth:`Proposer.propose` at every step."""

    input_ids: torch.Tensor  # [B, T] every token so far; the last one is not yet in the target's cache
    attention_mask: torch.Tensor  # [B, T]
    num_tokens: int  # K for this step (may vary per step under an adaptive schedule); propose at most this many
    active: torch.Tensor  # [B] bool, False for sequences that have finished (their proposals are ignored)
    sampling: SamplingParams
    generator: torch.Generator | None


@attrs.frozen(kw_only=True)
class Proposal:
    """Draft tokens for one step.

    ``token_ids`` is ``[B, k]``; sequence b uses only its first ``lengths[b]`` entries (the rest is padding and is
    never read). ``lengths=None`` means every sequence uses all k. ``draft_probs`` is the ``[B, k, V]``
    distribution each token was sampled from, or None for a deterministic proposer (q is then one-hot).
    A proposal with k == 0 means a plain decode step.

    ``parents`` makes the k tokens a tree instead of a chain (batch size 1; greedy or rejection sampling, where each
    candidate counts as a deterministic draft and ``draft_probs`` is not used): ``parents[i]`` is the
    index of token i's parent, or -1 for a child of the last token, with ``parents[i] < i``. The target verifies
    every branch in the same forward pass and keeps the longest path it agrees with; no more than
    ``ProposeRequest.num_tokens`` tokens deep (see :mod:`specdecode.trees`).
    """

    token_ids: torch.Tensor  # [B, k] long
    draft_probs: torch.Tensor | None = None  # [B, k, V]
    lengths: torch.Tensor | None = None  # [B] long, 0 <= lengths[b] <= k
    parents: tuple[int, ...] | None = None  # [k] tree proposals only

    @classmethod
    def empty(cls, batch_size: int, device: torch.device | str = "cpu") -> Proposal:
        return cls(token_ids=torch.empty(batch_size, 0, dtype=torch.long, device=device))

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[1])


@attrs.frozen(kw_only=True)
class VerifyResult:
    """Handed to :meth:`Proposer.on_verified` after the target has checked a proposal.

    Sequence b kept ``num_accepted[b]`` of its draft tokens and then ``next_tokens[b]`` (the corrected token, or the
    bonus token when all drafts were accepted). ``input_ids`` already includes them, so the proposer can roll its
    own state back to ``input_ids.shape[1]`` (minus padding) tokens.
    """

    input_ids: torch.Tensor  # [B, T'] every token so far, after this step
    attention_mask: torch.Tensor  # [B, T']
    num_drafted: torch.Tensor  # [B] long, draft tokens this sequence proposed this step
    num_accepted: torch.Tensor  # [B] long, 0 <= num_accepted[b] <= num_drafted[b]
    next_tokens: torch.Tensor  # [B] long, the token after the accepted drafts
    num_accepted_list: list[int]  # num_accepted on the host (the loop needs it there anyway; saves a sync)
    # [B, k+1, H] the target's last-layer hidden states over [last token + drafts] of this step, only for
    # proposers that set ``needs_hidden_states``. For sequence b, positions 0..num_accepted[b] are valid.
    hidden_states: torch.Tensor | None = None


class Proposer:
    """Base class of every proposer. Subclass it and override :meth:`propose`; the rest is optional.

    Capability flags are class attributes:

    * ``needs_hidden_states``: the loop passes the target's last-layer hidden states of the verify pass (and of the
      prompt) without running a second forward pass.
    * ``supports_batch``: the proposer handles B > 1 (plain per-sequence proposers get this for free by
      deriving from :class:`PerSequenceProposer`).
    * ``hidden_state_layers``: which of the target's layers ``needs_hidden_states`` hands over (default: the last).
    """

    needs_hidden_states: ClassVar[bool] = False
    supports_batch: ClassVar[bool] = True
    # Which hidden states a proposer with ``needs_hidden_states`` gets. None: the last layer's, after the final norm
    # (what the LM head reads), [.., H]. A tuple of indices into transformers' ``output_hidden_states`` (0 = the
    # embeddings, i = the output of decoder layer i-1, i.e. the input of layer i: vLLM's numbering of EAGLE-3's
    # aux layers) gives those states concatenated along the last dimension, [.., H * len(layers)]. May be set per
    # instance (it can depend on the target's depth).
    hidden_state_layers: tuple[int, ...] | None = None

    def start(self, context: StartContext) -> None:
        """Called once per generation, after the prompt's prefill."""

    def propose(self, request: ProposeRequest) -> Proposal:
        """Return up to ``request.num_tokens`` draft tokens per sequence."""
        raise NotImplementedError

    def on_verified(self, result: VerifyResult) -> None:
        """Called after every verified step, so stateful proposers can roll back and catch up."""

    def finish(self) -> None:
        """Called once when generation ends (also after an error), to free per-generation state."""

    def torch_modules(self) -> list[torch.nn.Module]:
        """The torch modules this proposer runs (a draft model, a head). While a generation runs, the loop gives
        their linear layers the CPU kernel it gives the target's (specdecode.kernels). Default: none."""
        return []


class PerSequenceProposer(Proposer):
    """Convenience base for proposers that think about one sequence at a time.

    Override :meth:`propose_one`, which gets the real (unpadded) tokens of one sequence as a 1-D tensor and returns
    at most ``num_tokens`` draft tokens (possibly none). Batching and padding are handled here. While it runs,
    ``self.request`` is the step's :class:`ProposeRequest` (sampling settings, generator).
    """

    request: ProposeRequest | None = None

    def propose_one(
        self, index: int, tokens: torch.Tensor, num_tokens: int
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Drafts for sequence ``index``: a 1-D tensor of token ids, or ``(token ids [n], q [n, V])`` when they
        were sampled, q[i] being the distribution draft i was drawn from (see ``specdecode.toolkit.draw``)."""
        raise NotImplementedError

    def propose(self, request: ProposeRequest) -> Proposal:
        self.request = request
        ids, mask, device = request.input_ids, request.attention_mask, request.input_ids.device
        batch = ids.shape[0]
        if batch == 1:  # the common case: no padding to strip, no host sync on the mask
            if not bool(request.active[0]):
                return Proposal.empty(1, device)
            draft, q = _drafts_and_q(self.propose_one(0, ids[0], request.num_tokens))
            return Proposal(
                token_ids=draft.view(1, -1).to(device=device, dtype=torch.long),
                draft_probs=None if q is None else q.unsqueeze(0).to(device),
            )
        active = request.active.tolist()
        empty = (torch.empty(0, dtype=torch.long), None)
        drafts = [
            _drafts_and_q(self.propose_one(b, ids[b][mask[b].bool()], request.num_tokens)) if active[b] else empty
            for b in range(batch)
        ]
        width = max(len(d) for d, _ in drafts)
        token_ids = torch.zeros(batch, width, dtype=torch.long, device=device)
        vocab = next((q.shape[-1] for _, q in drafts if q is not None), None)
        probs = None if vocab is None else torch.zeros(batch, width, vocab, device=device)
        for b, (draft, q) in enumerate(drafts):
            n = len(draft)
            token_ids[b, :n] = draft.to(device)
            if probs is not None and n:  # a row drafted without q: its drafts are deterministic (q one-hot)
                probs[b, :n] = q.to(device) if q is not None else F.one_hot(draft.to(device), vocab).float()
        lengths = torch.tensor([len(d) for d, _ in drafts], dtype=torch.long, device=device)
        return Proposal(token_ids=token_ids, draft_probs=probs, lengths=lengths)


def _drafts_and_q(drafted: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]):
    if isinstance(drafted, tuple):
        return drafted[0].to(torch.long), drafted[1]
    return drafted.to(torch.long), None


class SequenceReader:
    """How far a proposer has read each sequence, so that it takes in only the tokens that arrived since.

    Make one in ``start()``; per step, :meth:`unread` returns sequence ``index``'s new tokens and whether the
    sequence started over (first seen, or shorter than last time), in which case they are all of its tokens.
    Proposers that learn only from verified tokens need no rollback: the loop hands them only those.
    """

    def __init__(self) -> None:
        self.read: dict[int, int] = {}

    def unread(self, index: int, tokens: torch.Tensor | list[int]) -> tuple[list[int], bool]:
        seen = self.read.get(index)
        restarted = seen is None or seen > len(tokens)
        self.read[index] = len(tokens)
        new = tokens if restarted else tokens[seen:]
        return (new.tolist() if isinstance(new, torch.Tensor) else list(new)), restarted
