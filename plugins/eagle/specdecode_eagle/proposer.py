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

The real-feature passes are queued and run only when a draft is wanted (``_catch_up``), so steps that skip the head
cost nothing, and a catch-up after skipped steps is one head pass over all their positions.

Back-off (``EagleOptions.adaptive``, on by default). Speculation has to pay for itself, so a step drafts only while
the expected gain beats the cost:

* every draft's *confidence* is the head's probability of its most likely token (greedy: the probability of the
  draft itself). Under sampling it is the max of q too, a property of the distribution, never of the drawn token:
  deciding whether to keep a draft from its own value would bias the drafts away from q and make rejection sampling
  lossy. A :class:`Calibration` maps confidence to an acceptance estimate a_i (the head is over-confident, and more
  so deeper in the chain), learnt from the verify results of this generation.
* s_i = a_1 ... a_i estimates the chance that drafts 1..i all survive; a step with drafts 1..k emits
  1 + s_1 + ... + s_k tokens in expectation and costs (relative to a plain decode step)
  1 + cost_jump + cost_per_token * k + draft_cost * (k - 1). Draft i is kept while its s_i per unit of added verify
  cost beats the step's current tokens per cost, and the next one is computed only while its expected gain would
  also pay for a draft step (Leviathan et al.'s expected speedup, decided one draft at a time).
* a step where even d_1 does not pay drafts nothing (a plain decode step). After two such steps in a row the head
  is not even run for the next 1, 2, 4, ... ``max_skip`` steps (their features are queued), and every 8th such
  probe drafts one token anyway, so a pessimistic calibration can recover.

Trees (``EagleOptions.tree_width`` > 1; greedy or rejection sampling): instead of one chain, each depth's most
valuable nodes are run through the head together and each offers its ``tree_width`` best continuations; nodes join
while they pay for their verify slot, by the same rule (``_draft_tree``). The core verifies the tree in one pass
and hands back the accepted path as a chain, so the catch-up above is unchanged.

Every decision depends on tokens and verify results only, never on timings, so seeded sampling stays reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from specdecode import ConfigError, Proposal, Proposer, ProposeRequest, StartContext, VerifyResult
from specdecode.kernels import verify_cost
from specdecode.sampling import sample, warp_probs

from .head import EagleDrafter


class Calibration:
    """Running map from a draft's confidence to its acceptance chance, given the drafts before it were accepted.

    Predicted acceptance = confidence x ratio, where ratio = observed acceptances / summed confidence over the drafts
    that were reached (their predecessors accepted). Ratios are kept per position class (first, second, third and
    later drafts) and, within each, per confidence bucket; a bucket's ratio starts from its position's ratio, which
    starts from ``prior`` (one ratio, or one per position class: ``EagleOptions.confidence_prior``, else what the
    head's training measured, else DEFAULT_PRIOR). Evidence is capped per cell, so old steps fade and the estimate
    follows the text.
    """

    DEFAULT_PRIOR = 0.7

    EDGES = (0.2, 0.4, 0.6, 0.8)  # confidence buckets: [0, .2), [.2, .4), ..., [.8, 1]
    POSITIONS = 3
    POSITION_PRIOR_WEIGHT = 2.0  # in units of summed confidence
    BUCKET_PRIOR_WEIGHT = 1.0
    CAP = 24.0  # summed confidence kept per cell
    MAX_ACCEPTANCE = 0.98

    def __init__(self, prior: float | Sequence[float]):
        w = self.POSITION_PRIOR_WEIGHT
        priors = [float(prior)] * self.POSITIONS if isinstance(prior, (int, float)) else [float(p) for p in prior]
        priors = (priors + priors[-1:] * self.POSITIONS)[: self.POSITIONS]
        self.position = [[p * w, w] for p in priors]  # [accepted, summed confidence] per position class
        self.bucket = [[[0.0, 0.0] for _ in range(len(self.EDGES) + 1)] for _ in range(self.POSITIONS)]

    def _cells(self, index: int, confidence: float) -> tuple[list[float], list[float]]:
        p = min(index, self.POSITIONS - 1)
        b = sum(confidence >= edge for edge in self.EDGES)
        return self.position[p], self.bucket[p][b]

    def predict(self, index: int, confidence: float) -> float:
        """Estimated chance that draft ``index`` (0-based) is accepted, given drafts 0..index-1 were."""
        position, bucket = self._cells(index, confidence)
        ratio = (bucket[0] + self.BUCKET_PRIOR_WEIGHT * position[0] / position[1]) / (
            bucket[1] + self.BUCKET_PRIOR_WEIGHT
        )
        return min(confidence * ratio, self.MAX_ACCEPTANCE)

    def observe(self, index: int, confidence: float, accepted: bool) -> None:
        for cell in self._cells(index, confidence):
            cell[0] += 1.0 if accepted else 0.0
            cell[1] += confidence
            if cell[1] > self.CAP:
                scale = self.CAP / cell[1]
                cell[0] *= scale
                cell[1] *= scale


class EagleProposer(Proposer):
    needs_hidden_states = True
    supports_batch = False  # one head cache per generation; specdecode.generate runs batch size 1

    EXPLORE_EVERY = 8  # consecutive no-draft probes after which one draft is proposed anyway
    RATE_MARGIN = 1.02  # a draft must beat the current rate by 2%, so estimation noise does not buy expensive steps

    def __init__(self, drafter: EagleDrafter, options=None, trees_when_sampling: bool = True):
        from . import EagleOptions

        self.drafter = drafter
        self.options = options if options is not None else EagleOptions()
        # The core verifies trees under rejection sampling, not under typical acceptance (then: chains).
        self.trees_when_sampling = trees_when_sampling
        self.verify_cost = verify_cost(None, self.options.cost_jump, self.options.cost_per_token)
        self.cache = None
        self.committed = 0  # head positions computed from real target features (m above)
        self.next_logits: torch.Tensor | None = None  # [1, V'] draft scores of x_{m+1}
        self.next_feature: torch.Tensor | None = None  # [1, 1, H] predicted f_m
        self._reset()

    def _reset(self) -> None:
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # queued (hidden [1, n, H], tokens [1, n])
        prior = self.options.confidence_prior
        if prior is None:  # what the head's training measured (train-eagle's validation), else the default
            prior = getattr(self.drafter, "calibration", None) or Calibration.DEFAULT_PRIOR
        self.calibration = Calibration(prior)
        # Uncapped tallies per position class: [accepted, summed confidence, drafts reached] (train-eagle stores
        # their ratios with the head as its calibration prior).
        self.tally = [[0.0, 0.0, 0] for _ in range(Calibration.POSITIONS)]
        self.confidences: list[float] = []  # confidence of each draft of the current step
        self.tree: tuple[list[int], list[int], list[int], list[float]] | None = None  # this step's tree, if any
        self.idle = 0  # consecutive probes that drafted nothing
        self.skip_left = 0  # steps left in which the head is not run
        self.forced = False  # this step's d_1 was drafted only to explore
        # Counters for benchmarks and tests.
        self.probes = 0  # steps that ran the head to decide
        self.skipped = 0  # steps that did not run the head at all

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
        self.verify_cost = verify_cost(ids.device, self.options.cost_jump, self.options.cost_per_token)
        self.cache = self.drafter.new_cache()
        self.committed = 0
        self.next_logits = self.next_feature = None
        self._reset()
        self.pending.append((hidden, ids[:, 1:]))

    def _catch_up(self) -> None:
        """Run the queued real-feature positions (one head pass) and keep the last one's prediction."""
        if not self.pending:
            return
        if len(self.pending) == 1:
            hidden, tokens = self.pending[0]
        else:
            hidden = torch.cat([h for h, _ in self.pending], dim=1)
            tokens = torch.cat([t for _, t in self.pending], dim=1)
        self.pending = []
        with torch.inference_mode():
            features = self.drafter.features(hidden, tokens, self.committed, self.cache)  # [1, n, H]
            self.committed += tokens.shape[1]
            self.next_feature = features[:, -1:]
            self.next_logits = self.drafter.logits(self.next_feature[:, -1])

    def propose(self, request: ProposeRequest) -> Proposal:
        self.confidences = []
        tree = self.options.tree_width > 1 and (request.sampling.greedy or self.trees_when_sampling)
        if not self.options.adaptive:
            self._catch_up()
            return self._draft_tree(request) if tree else self._draft_fixed(request)
        if self.skip_left > 0:
            self.skip_left -= 1
            self.skipped += 1
            return Proposal.empty(1, request.input_ids.device)
        self._catch_up()
        self.probes += 1
        self.forced = False
        explore = (self.idle + 1) % self.EXPLORE_EVERY == 0
        proposal = self._draft_tree(request, explore) if tree else self._draft_adaptive(request, explore)
        if proposal.num_tokens == 0 or self.forced:  # a forced exploring draft does not end the back-off
            self.idle += 1
            self.skip_left = 0 if self.idle < 2 else min(2 ** (self.idle - 2), self.options.max_skip)
        else:
            self.idle = 0
        return proposal

    def _draft_fixed(self, request: ProposeRequest) -> Proposal:
        """Exactly ``request.num_tokens`` drafts (back-off off)."""
        k = request.num_tokens
        drafter, sampling = self.drafter, request.sampling
        tokens: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        feature, logits = self.next_feature, self.next_logits
        with torch.inference_mode():
            for i in range(k):
                if sampling.greedy:
                    q = logits.float().softmax(dim=-1)
                    token = drafter.to_token_ids(q.argmax(dim=-1))  # [1]
                else:
                    q = warp_probs(logits, sampling)  # [1, V'], the exact distribution the draft is drawn from
                    token = drafter.to_token_ids(sample(q, request.generator))
                    probs.append(drafter.to_full_vocab(q))
                self.confidences.append(float(q.max()))  # only to calibrate: the back-off may be turned on later
                tokens.append(token)
                if i + 1 < k:
                    feature = drafter.features(feature, token.view(1, 1), self.committed + i, self.cache)
                    logits = drafter.logits(feature[:, -1])
        return self._proposal(tokens, probs, request)

    def _draft_adaptive(self, request: ProposeRequest, explore: bool = False) -> Proposal:
        """As many drafts (0..num_tokens) as the cost model says pay for themselves, at least one when
        ``explore``; see the module docstring."""
        options, calibration = self.options, self.calibration
        drafter, sampling = self.drafter, request.sampling
        tokens: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        feature, logits = self.next_feature, self.next_logits
        expected, cost, survive = 1.0, 1.0, 1.0  # tokens and cost of the step planned so far; P(all kept survive)
        with torch.inference_mode():
            for i in range(request.num_tokens):
                # The decision to keep draft i uses its distribution only (see the module docstring).
                q = logits.float().softmax(dim=-1) if sampling.greedy else warp_probs(logits, sampling)  # [1, V']
                confidence = float(q.max())
                gain = survive * calibration.predict(i, confidence)
                added = self.verify_cost.per_token + (self.verify_cost.jump if i == 0 else 0.0)
                if gain * cost <= self.RATE_MARGIN * expected * added:
                    if not (explore and i == 0):
                        break
                    self.forced = True  # d_1 does not pay, but one draft now and then keeps the calibration honest
                if sampling.greedy:
                    token = drafter.to_token_ids(q.argmax(dim=-1))
                else:
                    token = drafter.to_token_ids(sample(q, request.generator))
                    probs.append(drafter.to_full_vocab(q))
                tokens.append(token)
                self.confidences.append(confidence)
                expected, cost, survive = expected + gain, cost + added, gain
                if i + 1 == request.num_tokens:
                    break
                # One more draft step pays only if the next draft, at a similar confidence, would be kept.
                next_gain = survive * calibration.predict(i + 1, confidence)
                if next_gain * cost <= self.RATE_MARGIN * expected * (options.draft_cost + self.verify_cost.per_token):
                    break
                cost += options.draft_cost
                feature = drafter.features(feature, token.view(1, 1), self.committed + i, self.cache)
                logits = drafter.logits(feature[:, -1])
        return self._proposal(tokens, probs, request)

    def _draft_tree(self, request: ProposeRequest, explore: bool = False) -> Proposal:
        """A tree of drafts (see the module docstring), at most ``num_tokens`` deep.

        Depth by depth, the ``tree_width`` most valuable nodes of a depth are run through the head together (one
        head pass per depth, as for a chain) and each gets its ``tree_width`` most likely continuations as
        candidates. A node's value is the estimated chance that the target accepts the path to it, and the
        expected tokens of a step are 1 + the sum of its nodes' values. With ``adaptive``, candidates join in order
        of value while they pay for their verify slot, and the next depth is drafted only while it would pay for a
        head pass (the chain's rule, applied to the best node); otherwise every candidate joins and the
        ``tree_nodes`` most valuable nodes are kept (EAGLE-2's re-ranking), with raw head probabilities as values.
        """
        options, calibration, drafter = self.options, self.calibration, self.drafter
        adaptive, width, max_nodes = options.adaptive, options.tree_width, options.tree_nodes
        greedy = request.sampling.greedy
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        values: list[float] = []
        confidences: list[float] = []
        features: dict[int, torch.Tensor] = {}  # expanded node -> its predicted feature [1, 1, H]
        slots: dict[int, int] = {}  # expanded node -> its position in the head's cache
        expected, cost = 1.0, 1.0
        device = request.input_ids.device

        def candidates(parent: int, logits: torch.Tensor, depth: int) -> list[tuple[float, float, int, int]]:
            # Under sampling the candidates are q's most likely tokens, not draws: the core accepts each as a
            # deterministic draft, which is lossless whatever picked them (specdecode.trees.sampled_path).
            q = logits.float().softmax(dim=-1) if greedy else warp_probs(logits, request.sampling)
            probs, index = q.topk(width)
            ids = drafter.to_token_ids(index).tolist()
            parent_value = values[parent] if parent >= 0 else 1.0
            out = []
            for p, token in zip(probs.tolist(), ids):
                chance = calibration.predict(depth - 1, p) if adaptive else p
                out.append((parent_value * chance, p, token, parent))
            return out

        with torch.inference_mode():
            pending = candidates(-1, self.next_logits[0], 1)
            for depth in range(1, request.num_tokens + 1):
                pending.sort(key=lambda c: -c[0])
                chosen: list[int] = []
                for value, confidence, token, parent in pending:
                    if adaptive:
                        if len(tokens) >= max_nodes:
                            break
                        added = self.verify_cost.per_token + (self.verify_cost.jump if not tokens else 0.0)
                        if value * cost <= self.RATE_MARGIN * expected * added:
                            if not (explore and not tokens):
                                break
                            self.forced = True  # one draft now and then keeps the calibration honest
                        expected, cost = expected + value, cost + added
                    chosen.append(len(tokens))
                    tokens.append(token)
                    parents.append(parent)
                    depths.append(depth)
                    values.append(value)
                    confidences.append(confidence)
                if not chosen or depth == request.num_tokens:
                    break
                expand = chosen[:width]
                if adaptive:
                    best = expand[0]
                    gain = values[best] * calibration.predict(depth, confidences[best])
                    if gain * cost <= self.RATE_MARGIN * expected * (options.draft_cost + self.verify_cost.per_token):
                        break
                    cost += options.draft_cost
                past = self.cache.get_seq_length()
                sees = torch.zeros(len(expand), past, dtype=torch.bool, device=device)
                sees[:, : self.committed] = True
                for row, node in enumerate(expand):
                    ancestor = parents[node]
                    while ancestor >= 0:
                        sees[row, slots[ancestor]] = True
                        ancestor = parents[ancestor]
                hidden = torch.cat([features[parents[n]] if parents[n] >= 0 else self.next_feature for n in expand], 1)
                ids = torch.tensor([[tokens[n] for n in expand]], device=device)
                out = drafter.tree_features(hidden, ids, self.committed + depth - 1, self.cache, sees)
                logits = drafter.logits(out[0])  # [n, V']
                pending = []
                for row, node in enumerate(expand):
                    slots[node] = past + row
                    features[node] = out[:, row : row + 1]
                    pending += candidates(node, logits[row], depth + 1)
        if not adaptive and len(tokens) > max_nodes:  # keep the most valuable nodes; parents outrank children
            keep = sorted(sorted(range(len(tokens)), key=lambda i: (-values[i], depths[i]))[:max_nodes])
            renumber = {old: new for new, old in enumerate(keep)}
            tokens, confidences, depths = ([seq[i] for i in keep] for seq in (tokens, confidences, depths))
            parents = [renumber.get(parents[i], -1) for i in keep]
        if not tokens:
            return Proposal.empty(1, device)
        self.tree = (tokens, parents, depths, confidences)
        return Proposal(token_ids=torch.tensor([tokens], device=device), parents=tuple(parents))

    def _observe_tree(self, result: VerifyResult) -> None:
        """Calibrate from a tree step: every node whose parent the target accepted was reached; the accepted path
        holds one of them per depth."""
        tokens, parents, depths, confidences = self.tree
        self.tree = None
        n = result.num_accepted_list[0]
        reached_depth = int(result.num_drafted[0])  # the loop may have cut the tree near max_new_tokens
        accepted = result.input_ids[0, -(n + 1) : -1].tolist() if n else []
        path = {-1}
        node = -1
        for token in accepted:
            node = next(i for i, p in enumerate(parents) if p == node and tokens[i] == token)
            path.add(node)
        for i, parent in enumerate(parents):
            if parent in path and depths[i] <= reached_depth:
                on_path = i in path
                self.calibration.observe(depths[i] - 1, confidences[i], on_path)
                tally = self.tally[min(depths[i] - 1, Calibration.POSITIONS - 1)]
                tally[0] += 1.0 if on_path else 0.0
                tally[1] += confidences[i]
                tally[2] += 1

    def _proposal(self, tokens: list[torch.Tensor], probs: list[torch.Tensor], request: ProposeRequest) -> Proposal:
        if not tokens:
            return Proposal.empty(1, request.input_ids.device)
        token_ids = torch.stack(tokens, dim=1).to(request.input_ids.device)  # [1, k]
        draft_probs = torch.stack(probs, dim=1) if probs else None  # [1, k, V]
        return Proposal(token_ids=token_ids, draft_probs=draft_probs)

    def on_verified(self, result: VerifyResult) -> None:
        n = result.num_accepted_list[0]
        if self.tree is not None:
            self._observe_tree(result)
        reached = min(n + 1, int(result.num_drafted[0]))  # drafts 0..n, of those the loop kept (it may cut some)
        for i, confidence in enumerate(self.confidences[:reached]):
            self.calibration.observe(i, confidence, i < n)
            tally = self.tally[min(i, Calibration.POSITIONS - 1)]
            tally[0] += 1.0 if i < n else 0.0
            tally[1] += confidence
            tally[2] += 1
        self.confidences = []
        speculative = self.cache.get_seq_length() - self.committed
        if speculative > 0:  # crop(-n) removes n positions; crop(0) would mean something else
            self.cache.crop(-speculative)
        self.pending.append((result.hidden_states[:, : n + 1], result.input_ids[:, -(n + 1) :]))

    def finish(self) -> None:
        self.cache = None
        self.next_feature = self.next_logits = None
        self.pending = []
