"""EagleProposer: chain drafting with an EAGLE head, fed by the hidden states of the target's verify pass.

Head position j reads (f_j, x_{j+1}); its output predicts f_{j+1} and, through the target's LM head, x_{j+2}.
Let m be the index of the last token x_m (the one the target has not read yet). Between steps the head's cache holds
positions 0..m-1, all computed from real target features, and we keep the prediction of the last one: the draft
distribution of x_{m+1}. A step then:

* propose: d_1 comes from that kept prediction; for i >= 2, position m+i-2 reads (predicted f, d_{i-1}) and gives
  d_i. That is k-1 head passes of one position each, appended to the cache speculatively.
* on_verified: the target read [x_m, d_1..d_k] and returned f_m..f_{m+k}; n drafts were accepted and x_{m+n+1} is
  the corrected or bonus token. Drop the speculative positions, then run positions m..m+n on the real features
  f_m..f_{m+n} with tokens x_{m+1}..x_{m+n+1}: one head pass of n+1 positions, and the next step's d_1.
"""

from __future__ import annotations

import torch
from specdecode import ConfigError, Proposal, Proposer, ProposeRequest, StartContext, VerifyResult
from specdecode.sampling import sample, warp_probs

from .head import EagleDrafter


class EagleProposer(Proposer):
    needs_hidden_states = True
    supports_batch = False  # one head cache per generation; specdecode.generate runs batch size 1

    def __init__(self, drafter: EagleDrafter):
        self.drafter = drafter
        self.cache = None
        self.committed = 0  # head positions computed from real target features (m above)
        self.next_logits: torch.Tensor | None = None  # [1, V'] draft scores of x_{m+1}
        self.next_feature: torch.Tensor | None = None  # [1, 1, H] predicted f_m

    def start(self, context: StartContext) -> None:
        ids, hidden = context.input_ids, context.hidden_states  # [1, T], [1, T-1, H]
        if ids.shape[0] != 1:
            raise ConfigError(
                f"method 'eagle' drafts for one sequence at a time (got a batch of {ids.shape[0]})",
                field="input_ids",
                value=tuple(ids.shape),
            )
        if hidden is None or hidden.shape[1] != ids.shape[1] - 1:
            got = None if hidden is None else tuple(hidden.shape)
            raise ConfigError(
                f"method 'eagle' needs the target's hidden states over the prompt, [1, {ids.shape[1] - 1}, H] "
                f"(got {got})",
                field="hidden_states",
                value=got,
            )
        self.cache = self.drafter.new_cache()
        self.committed = 0
        with torch.inference_mode():
            self._advance(hidden, ids[:, 1:])

    def _advance(self, hidden: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Append real-feature positions committed..committed+n-1 and keep the last one's prediction."""
        features = self.drafter.features(hidden, next_tokens, self.committed, self.cache)  # [1, n, H]
        self.committed += next_tokens.shape[1]
        self.next_feature = features[:, -1:]
        self.next_logits = self.drafter.logits(self.next_feature[:, -1])

    def propose(self, request: ProposeRequest) -> Proposal:
        k = request.num_tokens
        drafter, sampling = self.drafter, request.sampling
        tokens: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        feature, logits = self.next_feature, self.next_logits
        with torch.inference_mode():
            for i in range(k):
                if sampling.greedy:
                    token = drafter.to_token_ids(logits.argmax(dim=-1))  # [1]
                else:
                    q = warp_probs(logits, sampling)  # [1, V'], the exact distribution the draft is drawn from
                    token = drafter.to_token_ids(sample(q, request.generator))
                    probs.append(drafter.to_full_vocab(q))
                tokens.append(token)
                if i + 1 < k:
                    feature = drafter.features(feature, token.view(1, 1), self.committed + i, self.cache)
                    logits = drafter.logits(feature[:, -1])
        token_ids = torch.stack(tokens, dim=1).to(request.input_ids.device)  # [1, k]
        draft_probs = torch.stack(probs, dim=1) if probs else None  # [1, k, V]
        return Proposal(token_ids=token_ids, draft_probs=draft_probs)

    def on_verified(self, result: VerifyResult) -> None:
        n = result.num_accepted_list[0]
        speculative = self.cache.get_seq_length() - self.committed
        if speculative > 0:  # crop(-n) removes n positions; crop(0) would mean something else
            self.cache.crop(-speculative)
        with torch.inference_mode():
            self._advance(result.hidden_states[:, : n + 1], result.input_ids[:, -(n + 1) :])

    def finish(self) -> None:
        self.cache = None
        self.next_feature = self.next_logits = None
