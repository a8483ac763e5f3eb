"""A proposer wrapper that watches a method's proposer from inside the verify loop.

It checks every proposal against the contract (shapes, dtypes, token range, draft probabilities), notices a
proposer that writes into the loop's tensors, and can

* hide some proposals from the loop (``empty_every``), so the proposer sees steps whose drafts were all dropped;
* compare every proposal with the one a freshly started proposer makes for the same tokens (``replay``): a
  proposer whose rollback after a rejection is wrong drifts away from the fresh one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch

from ..proposer import Proposal, Proposer, ProposeRequest, StartContext, VerifyResult


class ContractViolation(AssertionError):
    """A proposer broke the proposer contract (see docs/plugins/index.md)."""


@attrs.define
class ProbeLog:
    """What the probe saw during one generation."""

    proposals: int = 0
    emptied: int = 0
    drafted: int = 0
    replay_mismatches: list[str] = attrs.field(factory=list)


def probe(
    inner: Proposer,
    *,
    vocab_size: int,
    empty_every: int = 0,
    replay: Callable[[ProposeRequest], Proposal] | None = None,
) -> Proposer:
    """Wrap ``inner`` in a :class:`ProposerProbe` that keeps its capability flags (the loop reads them from the
    class), the hidden-state layers it asks for and the modules it runs."""
    cls = type(inner)
    probe_cls = type(
        f"Probed{cls.__name__}",
        (ProposerProbe,),
        {"needs_hidden_states": cls.needs_hidden_states, "supports_batch": cls.supports_batch},
    )
    return probe_cls(inner, vocab_size=vocab_size, empty_every=empty_every, replay=replay)


class ProposerProbe(Proposer):
    def __init__(
        self,
        inner: Proposer,
        *,
        vocab_size: int,
        empty_every: int = 0,
        replay: Callable[[ProposeRequest], Proposal] | None = None,
    ):
        self.inner = inner
        self.vocab_size = vocab_size
        self.empty_every = empty_every
        self.replay = replay
        self.log = ProbeLog()
        self.name = type(inner).__name__
        self.hidden_state_layers = getattr(inner, "hidden_state_layers", None)  # may be set per instance

    def torch_modules(self) -> list:
        return self.inner.torch_modules()

    def start(self, context: StartContext) -> None:
        before = context.input_ids.clone()
        self.inner.start(context)
        self._unchanged("start", "context.input_ids", before, context.input_ids)

    def propose(self, request: ProposeRequest) -> Proposal:
        before = request.input_ids.clone()
        proposal = self.inner.propose(request)
        self._unchanged("propose", "request.input_ids", before, request.input_ids)
        self._check_proposal(proposal, request)
        self.log.proposals += 1
        if self.replay is not None:
            self._compare_with_fresh(proposal, request)
        if self.empty_every and self.log.proposals % self.empty_every == 0:
            self.log.emptied += 1
            return Proposal.empty(request.input_ids.shape[0], request.input_ids.device)
        self.log.drafted += _lengths(proposal)[0] if proposal.num_tokens else 0
        return proposal

    def on_verified(self, result: VerifyResult) -> None:
        before = result.input_ids.clone()
        self.inner.on_verified(result)
        self._unchanged("on_verified", "result.input_ids", before, result.input_ids)

    def finish(self) -> None:
        self.inner.finish()

    # -- checks --------------------------------------------------------------------------------------------
    def _fail(self, message: str) -> None:
        raise ContractViolation(f"{self.name}: {message}")

    def _unchanged(self, hook: str, what: str, before: torch.Tensor, after: torch.Tensor) -> None:
        if not torch.equal(before, after):
            self._fail(f"{hook}() modified {what} in place; the loop owns it (clone it before editing)")

    def _check_proposal(self, proposal: Any, request: ProposeRequest) -> None:
        if not isinstance(proposal, Proposal):
            self._fail(f"propose() returned {type(proposal).__name__}, expected specdecode.Proposal")
        ids = proposal.token_ids
        batch = request.input_ids.shape[0]
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != batch:
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            self._fail(f"Proposal.token_ids must be a [B={batch}, k] tensor (got {shape})")
        if ids.dtype != torch.long:
            self._fail(f"Proposal.token_ids must have dtype torch.long (got {ids.dtype})")
        if ids.device != request.input_ids.device:
            self._fail(f"Proposal.token_ids is on {ids.device}, the tokens are on {request.input_ids.device}")
        k = ids.shape[1]
        if proposal.parents is not None:
            self._check_tree(proposal.parents, k, batch, request)
        elif k > request.num_tokens:
            self._fail(
                f"proposed {k} tokens but request.num_tokens was {request.num_tokens} (at most that many)"
            )
        lengths = _lengths(proposal)
        if proposal.lengths is not None and (
            proposal.lengths.shape != (batch,) or min(lengths, default=0) < 0 or max(lengths, default=0) > k
        ):
            self._fail(
                f"Proposal.lengths must be [B={batch}] values in [0, {k}] (got {proposal.lengths.tolist()})"
            )
        valid = [ids[b, : lengths[b]] for b in range(batch)]
        if any(v.numel() and (int(v.min()) < 0 or int(v.max()) >= self.vocab_size) for v in valid):
            self._fail(f"draft token ids must be in [0, {self.vocab_size}) (got {ids.tolist()})")
        if proposal.draft_probs is not None:
            self._check_draft_probs(proposal.draft_probs, ids, lengths)

    def _check_tree(self, parents: Any, k: int, batch: int, request: ProposeRequest) -> None:
        from .. import trees
        from ..errors import ConfigError

        if batch != 1:
            self._fail(f"Proposal.parents (a tree) is verified for batch size 1 only; this step has batch {batch}")
        try:
            parents = trees.check_parents(parents, k)
        except ConfigError as error:
            self._fail(str(error))
        depth = max(trees.depths(parents), default=0)
        if depth > request.num_tokens:
            self._fail(f"proposed a tree {depth} tokens deep but request.num_tokens was {request.num_tokens}")

    def _check_draft_probs(self, q: torch.Tensor, ids: torch.Tensor, lengths: list[int]) -> None:
        batch, k = ids.shape
        if q.dim() != 3 or q.shape[0] != batch or q.shape[1] < k or q.shape[2] != self.vocab_size:
            self._fail(
                f"Proposal.draft_probs must be [B={batch}, k={k}, V={self.vocab_size}] (got {tuple(q.shape)})"
            )
        for b in range(batch):
            rows = q[b, : lengths[b]].double()
            if not rows.numel():
                continue
            if not bool(torch.isfinite(rows).all()) or float(rows.min()) < 0:
                self._fail("Proposal.draft_probs has negative or non-finite entries")
            sums = rows.sum(dim=-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                self._fail(f"each row of Proposal.draft_probs must sum to 1 (got sums {sums.tolist()})")
            picked = rows.gather(-1, ids[b, : lengths[b]].to(rows.device).unsqueeze(-1))
            if float(picked.min()) <= 0:
                self._fail(
                    "a draft token has probability 0 under its own draft_probs: report the distribution the "
                    "token was sampled from"
                )

    def _compare_with_fresh(self, proposal: Proposal, request: ProposeRequest) -> None:
        fresh = self.replay(request)
        mine, theirs = _drafts(proposal), _drafts(fresh)
        if mine != theirs:
            self.log.replay_mismatches.append(
                f"step {self.log.proposals} at {request.input_ids.shape[1]} tokens: proposed {mine}, a freshly "
                f"started proposer proposes {theirs}"
            )


def _lengths(proposal: Proposal) -> list[int]:
    batch, k = proposal.token_ids.shape
    return [k] * batch if proposal.lengths is None else [int(x) for x in proposal.lengths.tolist()]


def _drafts(proposal: Proposal) -> list[list[int]]:
    lengths = _lengths(proposal)
    return [proposal.token_ids[b, : lengths[b]].tolist() for b in range(len(lengths))]
