"""Scripted proposers for tests: they draft what the test decides, so acceptance is known in advance."""

from __future__ import annotations

import specdecode
import torch
from specdecode import Proposal, Proposer, ProposeRequest, ProposerSpec


class OracleProposer(Proposer):
    """Drafts the target's own greedy continuation (everything is accepted under greedy decoding)."""

    def __init__(self, model):
        self.model = model

    def propose(self, request: ProposeRequest) -> Proposal:
        ids = request.input_ids
        with torch.inference_mode():
            out = self.model.generate(ids, do_sample=False, max_new_tokens=request.num_tokens, min_new_tokens=request.num_tokens)
        return Proposal(token_ids=out[:, ids.shape[1] :])


class WrongProposer(Proposer):
    """Drafts tokens the target never picks first: (argmax + 1) mod V repeated; every draft is rejected."""

    def __init__(self, model):
        self.model = model

    def propose(self, request: ProposeRequest) -> Proposal:
        with torch.inference_mode():
            logits = self.model(request.input_ids).logits[:, -1]
        wrong = (logits.argmax(-1, keepdim=True) + 1) % logits.shape[-1]
        return Proposal(token_ids=wrong.repeat(1, request.num_tokens))


class SamplingProposer(Proposer):
    """Samples drafts from a fixed distribution q (the same at every position) and reports q."""

    def __init__(self, q: torch.Tensor):
        self.q = q

    def propose(self, request: ProposeRequest) -> Proposal:
        k = request.num_tokens
        tokens = torch.multinomial(self.q, k, replacement=True, generator=request.generator).view(1, k)
        return Proposal(token_ids=tokens, draft_probs=self.q.view(1, 1, -1).expand(1, k, -1))


class TargetSamplingProposer(Proposer):
    """Samples drafts from the target's own warped distribution (draft == target, so q == p)."""

    def __init__(self, model):
        self.model = model

    def propose(self, request: ProposeRequest) -> Proposal:
        ids = request.input_ids
        tokens, probs = [], []
        with torch.inference_mode():
            for _ in range(request.num_tokens):
                p = specdecode.warp_probs(self.model(ids).logits[:, -1], request.sampling)
                t = torch.multinomial(p, 1, generator=request.generator)
                tokens.append(t)
                probs.append(p)
                ids = torch.cat([ids, t], dim=1)
        return Proposal(token_ids=torch.cat(tokens, dim=1), draft_probs=torch.stack(probs, dim=1))


class ScriptedPlugin:
    """A plugin object whose single method builds ``proposer_factory(model)``."""

    def __init__(self, name: str, proposer_factory):
        self.name = name
        self.proposer_factory = proposer_factory

    @specdecode.hookimpl
    def specdecode_proposers(self):
        return [ProposerSpec(name=self.name, factory=lambda model, config, options: self.proposer_factory(model))]
