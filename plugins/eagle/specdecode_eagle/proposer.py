"""EagleProposer: chain drafting with an EAGLE head, fed by the hidden states of the target's verify pass.

One proposer serves both generations: EAGLE-1/2 heads read the target's last-layer state f_j, EAGLE-3 heads a few
layers' states concatenated (the drafter names them in ``hidden_state_layers``, which the core hands over, and fuses
them in ``fuse_target_states``); everything below is the same for both.

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

A long prompt enters the head's cache by its last ``head_prompt_tokens`` positions only (``uncached`` counts the
rest; positions keep their absolute RoPE index): the head drafts from nearby context, and a document of a thousand
tokens would otherwise cost a head pass over all of it and an attention over all of it in every later head pass.

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

Trees (``EagleOptions.tree_width`` > 1, where the core verifies them: ``StartContext.trees``): instead of one
chain, each depth's most valuable nodes are run through the head together and each offers its ``tree_width`` best
continuations; nodes join while they pay for their verify slot, by the same rule (``_draft_tree``). The core verifies the tree in one pass
and hands back the accepted path as a chain, so the catch-up above is unchanged.

Prompt lookup (``EagleOptions.prompt_lookup``, on by default). A one-layer head misses most of what the target copies
from its context (a summary's phrases, a rewritten list, its own repeated lines), which prompt lookup finds for free:
the continuation of the longest earlier match of the current suffix (``specdecode.toolkit.NgramIndex``, the config's
``prompt_lookup_min`` / ``prompt_lookup_max``). In a tree its tokens are one more branch: they join first, each
while it pays for its verify slot, valued by a second :class:`Calibration` (its confidence is a prior by match
length, as method ``ngram`` uses), and a head candidate equal to one of them is that node (no second slot; the head
can expand it). In a chain, the lookup continuation replaces the head's chain when its first token's estimate beats
the head's d_1 (decided from q_1's maximum, never from drawn tokens). Steps that skip the head still propose
lookup continuations that pay. Where the target copies, the head can cost more than it adds beside lookup: after
every tree step the tokens only the head's nodes gave are weighed against its passes and verify rows (in tokens at
the step's planned rate), and when a window of steps says it does not pay, the head is skipped for 2, 4, ... up to
``max_skip`` steps while lookup drafts alone. Lookup drafts are deterministic, which rejection sampling and the
core's tree acceptance handle losslessly.

Every decision depends on tokens and verify results only, never on timings, so seeded sampling stays reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import attrs
import torch
from specdecode import ConfigError, Proposal, Proposer, ProposeRequest, StartContext, VerifyResult
from specdecode.toolkit import NgramIndex, StepPlan, crop_to, draft_distribution, draw, verify_cost

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

    # Prompt lookup's confidence for its first draft after a match of n tokens (LOOKUP_FIRST + LOOKUP_PER_NGRAM * n,
    # method ngram's prior) and for its second and later drafts; the lookup calibration turns them into acceptance
    # estimates. On SmolLM2-135M's greedy answers to 18 Spec-Bench prompts of the training split, a first draft was
    # accepted ~0.45 / ~0.75 of the time after a 2 / 3-token match and a later one ~0.75-0.85; a fit to those
    # (0.05 + 0.23n) did worse than this prior on 12 held-out prompts (MAL 2.15 against 2.40), perhaps because it
    # rates the 4- and 5-token matches of the default window at 0.95.
    LOOKUP_FIRST, LOOKUP_PER_NGRAM, LOOKUP_LATER = 0.35, 0.1, 0.8
    HEAD_WORTH_WINDOW = 8  # tree steps over which the head's worth beside prompt lookup is judged (a decay horizon)

    def __init__(self, drafter: EagleDrafter, options=None, lookup_window: tuple[int, int] | None = None):
        from . import EagleOptions

        self.drafter = drafter
        # (min, max) n-gram sizes of prompt lookup, None: the head alone.
        self.lookup_window = lookup_window
        self.method = getattr(drafter, "method", "eagle")  # "eagle" or "eagle3", for messages
        # The target states the head reads (the core concatenates them); None: the last layer's.
        self.hidden_state_layers = getattr(drafter, "hidden_state_layers", None)
        self.options = options if options is not None else EagleOptions()
        # Whether the core verifies trees in this generation (not under typical acceptance, in a batch, or on
        # models whose attention cannot place branches: ALiBi, recurrent layers); chains otherwise.
        self.trees = True
        self.verify_cost = verify_cost(None, self.options.cost_jump, self.options.cost_per_token)
        self.cache = None
        self.committed = 0  # head positions computed from real target features (m above)
        self.uncached = 0  # the first positions, left out of the head's cache (a long prompt's start)
        self.next_logits: torch.Tensor | None = None  # [1, V'] draft scores of x_{m+1}
        self.next_feature: torch.Tensor | None = None  # [1, 1, H] predicted f_m
        self._vocab_ids: torch.Tensor | None = None  # [V'] target id of each draft-vocabulary row
        self.index: NgramIndex | None = None  # prompt lookup's, over the sequence so far
        self._reset()

    def _reset(self) -> None:
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # queued (hidden [1, n, H], tokens [1, n])
        prior = self.options.confidence_prior
        if prior is None:  # what the head's training measured (train-eagle's validation), else the default
            prior = getattr(self.drafter, "calibration", None) or Calibration.DEFAULT_PRIOR
        self.calibration = Calibration(prior)
        self.lookup_calibration = Calibration(1.0)  # lookup confidences are priors already
        self.lookup_confidences: list[float] = []  # of the current step's drafts, when prompt lookup made them
        self.head_drafts = 0  # drafts the head made in the current step
        self.head_passes = 0  # head passes run for the current step (catch-up included)
        self.step_rate = 1.0  # the current tree step's planned tokens per unit of cost
        self.head_worth = [0.0, 0.0, 0]  # running [tokens only the head's nodes gave, their cost in tokens, steps]
        self.unworthy = 0  # consecutive tree steps after which the head was judged not worth its cost
        # Uncapped tallies per position class: [accepted, summed confidence, drafts reached] (train-eagle stores
        # their ratios with the head as its calibration prior).
        self.tally = [[0.0, 0.0, 0] for _ in range(Calibration.POSITIONS)]
        self.confidences: list[float] = []  # confidence of each draft of the current step
        self.tree: DraftTree | None = None  # this step's tree, if any
        self.idle = 0  # consecutive probes that drafted nothing
        self.skip_left = 0  # steps left in which the head is not run
        self.forced = False  # this step's d_1 was drafted only to explore
        # Counters for benchmarks and tests.
        self.probes = 0  # steps that ran the head to decide
        self.skipped = 0  # steps that did not run the head at all

    def start(self, context: StartContext) -> None:
        ids, hidden = context.input_ids, context.hidden_states  # [1, T], [1, T-1, H] (EAGLE-3: [1, T-1, k*H])
        if ids.shape[0] != 1:
            raise ConfigError(
                f"method {self.method!r} drafts for one sequence at a time (got a batch of {ids.shape[0]})",
                field="input_ids",
                value=tuple(ids.shape),
            )
        # The width too: a wrapper that loses hidden_state_layers hands over the last layer's [.., H] instead.
        width = getattr(self.drafter, "target_width", None)
        if hidden is None or hidden.shape[1] != ids.shape[1] - 1 or width not in (None, hidden.shape[-1]):
            got = None if hidden is None else tuple(hidden.shape)
            layers = "the last layer" if self.hidden_state_layers is None else f"layers {self.hidden_state_layers}"
            raise ConfigError(
                f"method {self.method!r} needs the target's hidden states over the prompt at {layers}, "
                f"[1, {ids.shape[1] - 1}, {width or 'H'}] (got {got})",
                field="hidden_states",
                value=got,
            )
        self.trees = context.trees
        self.verify_cost = verify_cost(ids.device, self.options.cost_jump, self.options.cost_per_token)
        self.cache = self.drafter.new_cache()
        self.committed = 0
        self.next_logits = self.next_feature = None
        self._reset()
        tokens = ids[:, 1:]
        window = self.options.head_prompt_tokens  # the head reads the prompt's last positions only
        self.uncached = max(tokens.shape[1] - window, 0) if window else 0
        if self.uncached:
            hidden, tokens = hidden[:, self.uncached :], tokens[:, self.uncached :]
            self.committed = self.uncached
        self.pending.append((hidden, tokens))  # the target's states, fused at catch-up
        self.index = None if self.lookup_window is None else NgramIndex(*self.lookup_window)

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
            hidden = self.drafter.fuse_target_states(hidden)  # [1, n, H]
            features = self.drafter.features(hidden, tokens, self.committed, self.cache)  # [1, n, H]
            self.head_passes += 1
            self.committed += tokens.shape[1]
            self.next_feature = features[:, -1:]
            self.next_logits = self.drafter.logits(self.next_feature[:, -1])

    def propose(self, request: ProposeRequest) -> Proposal:
        self.confidences = []
        self.lookup_confidences = []
        self.head_drafts = 0
        self.head_passes = 0
        self.step_rate = 1.0
        tree = self.options.tree_width > 1 and self.trees
        if not self.options.adaptive:
            self._catch_up()
            return self._draft_tree(request) if tree else self._draft_chain(request)
        if self.skip_left > 0:
            self.skip_left -= 1
            self.skipped += 1
            return self._lookup_chain(request)
        self._catch_up()
        self.probes += 1
        self.forced = False
        explore = (self.idle + 1) % self.EXPLORE_EVERY == 0
        proposal = self._draft_tree(request, explore) if tree else self._draft_chain(request, explore)
        if self.head_drafts == 0 or self.forced:  # a forced exploring draft does not end the back-off
            self.idle += 1
            self.skip_left = 0 if self.idle < 2 else min(2 ** (self.idle - 2), self.options.max_skip)
        else:
            self.idle = 0
        return proposal

    def _draft_chain(self, request: ProposeRequest, explore: bool = False) -> Proposal:
        """A chain: exactly ``num_tokens`` drafts with the back-off off; otherwise as many as pay for themselves
        (0..num_tokens; see the module docstring), at least one when ``explore``."""
        adaptive, calibration, drafter = self.options.adaptive, self.calibration, self.drafter
        plan = StepPlan(self.verify_cost, self.RATE_MARGIN)
        survive = 1.0  # the chance that every draft kept so far is accepted
        tokens: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        feature, logits = self.next_feature, self.next_logits
        lookup, n = self._lookup(request)
        for i in range(request.num_tokens):
            token, q = self._draw(logits, request, tokens)  # [1], [1, V] or [1, V']
            # Keeping draft i is decided from q alone, never from the drawn token (see the module docstring).
            confidence = float(q.max())
            if i == 0 and lookup:
                # Prompt lookup's chain instead, when its first draft is the better bet: decided from q_1's maximum
                # only, so dropping d_1 does not bias the drafts this step keeps.
                head_first, lookup_first = confidence, self._lookup_confidence(0, n)  # fixed K: raw confidences
                if adaptive:
                    head_first = calibration.predict(0, head_first)
                    lookup_first = self.lookup_calibration.predict(0, lookup_first)
                if lookup_first > head_first:
                    return self._lookup_chain(request, (lookup, n))
            if adaptive:
                gain = survive * calibration.predict(i, confidence)
                if not plan.pays(gain):
                    if not (explore and i == 0):
                        break
                    self.forced = True  # d_1 does not pay, but one draft now and then keeps the calibration honest
                plan.add(gain)
                survive = gain
            tokens.append(token)
            self.head_drafts += 1
            if not request.sampling.greedy:
                probs.append(q if q.shape[-1] == drafter.vocab_size else drafter.to_full_vocab(q))
            self.confidences.append(confidence)  # calibrates even with the back-off off (it may be turned on)
            if i + 1 == request.num_tokens:
                break
            if adaptive:  # one more draft step pays only if the next draft, at a similar confidence, would be kept
                if not plan.pays(survive * calibration.predict(i + 1, confidence), extra=self.options.draft_cost):
                    break
                plan.charge(self.options.draft_cost)
            feature = drafter.features(feature, token.view(1, 1), self.committed + i, self.cache)
            self.head_passes += 1
            logits = drafter.logits(feature[:, -1])
        if not tokens:
            return Proposal.empty(1, request.input_ids.device)
        draft_probs = torch.stack(probs, dim=1) if probs else None  # [1, k, V]
        return Proposal(token_ids=torch.stack(tokens, dim=1).to(request.input_ids.device), draft_probs=draft_probs)

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
        options, drafter = self.options, self.drafter
        adaptive, width = options.adaptive, options.tree_width
        plan = StepPlan(self.verify_cost, self.RATE_MARGIN)
        tree = DraftTree()
        features: dict[int, torch.Tensor] = {}  # expanded node -> its predicted feature [1, 1, H]
        slots: dict[int, int] = {}  # expanded node -> its position in the head's cache
        device = request.input_ids.device
        self._seed_lookup(tree, plan, request)
        pending = self._candidates(tree, -1, self.next_logits[0], 1, request)
        for depth in range(1, request.num_tokens + 1):
            chosen: list[int] = []
            for candidate in sorted(pending, key=lambda c: -c.value):
                node = tree.find(candidate.parent, candidate.token)
                if node is not None:  # prompt lookup's branch has it: its slot is paid, and the head may expand it
                    tree.merge(node, candidate)
                    chosen.append(node)
                    continue
                if adaptive:
                    if tree.head_nodes >= options.tree_nodes:
                        break
                    if not plan.pays(candidate.value):
                        if not (explore and not tree.head_nodes):
                            break
                        self.forced = True  # one draft now and then keeps the calibration honest
                    plan.add(candidate.value)
                chosen.append(tree.add(candidate, depth))
            if not chosen or depth == request.num_tokens:
                break
            expand = chosen[:width]
            if adaptive:
                best = expand[0]
                gain = tree.values[best] * self.calibration.predict(depth, tree.confidences[best])
                if not plan.pays(gain, extra=options.draft_cost):
                    break
                plan.charge(options.draft_cost)
            past = self.cache.get_seq_length()
            sees = torch.zeros(len(expand), past, dtype=torch.bool, device=device)
            sees[:, : self.committed - self.uncached] = True
            for row, node in enumerate(expand):
                sees[row, [slots[a] for a in tree.ancestors(node)]] = True
            hidden = torch.cat([features[tree.parents[n]] if tree.parents[n] >= 0 else self.next_feature
                                for n in expand], 1)
            ids = torch.tensor([[tree.tokens[n] for n in expand]], device=device)
            out = drafter.tree_features(hidden, ids, self.committed + depth - 1, self.cache, sees)
            self.head_passes += 1
            logits = drafter.logits(out[0])  # [n, V']
            pending = []
            for row, node in enumerate(expand):
                slots[node] = past + row
                features[node] = out[:, row : row + 1]
                pending += self._candidates(tree, node, logits[row], depth + 1, request)
        if not adaptive:
            tree = tree.best(options.tree_nodes)  # EAGLE-2's re-ranking
        if not len(tree):
            return Proposal.empty(1, device)
        self.head_drafts = tree.head_nodes
        self.step_rate = plan.expected / plan.cost
        self.tree = tree
        return Proposal(token_ids=torch.tensor([tree.tokens], device=device), parents=tuple(tree.parents))

    def _lookup(self, request: ProposeRequest) -> tuple[list[int], int]:
        """Prompt lookup's continuation of the sequence (up to ``num_tokens`` tokens) and its match length n;
        ([], 0) without a match or with prompt lookup off."""
        index = self.index
        if index is None:
            return [], 0
        ids = request.input_ids[0]
        if ids.shape[0] > len(index.tokens):  # the tokens accepted since the last step
            index.extend(ids[len(index.tokens) :].tolist())
        return index.match(request.num_tokens)

    def _lookup_confidence(self, position: int, n: int) -> float:
        """The prior of lookup draft ``position`` (0-based) after a match of ``n`` tokens."""
        if position > 0:
            return self.LOOKUP_LATER
        return min(0.95, self.LOOKUP_FIRST + self.LOOKUP_PER_NGRAM * n)

    def _lookup_drafts(self, lookup: tuple[list[int], int], plan: StepPlan | None):
        """(position, token, confidence, value) of the lookup drafts that pay for their verify slots in ``plan``;
        value = the estimated chance the target accepts the path to it. ``plan`` None (fixed K): all of them, valued
        by the raw priors, as fixed-K drafting values the head's by its raw probabilities."""
        tokens, n = lookup
        value = 1.0
        for i, token in enumerate(tokens):
            confidence = self._lookup_confidence(i, n)
            value *= confidence if plan is None else self.lookup_calibration.predict(i, confidence)
            if plan is not None:
                if not plan.pays(value):
                    return
                plan.add(value)
            yield i, token, confidence, value

    def _lookup_chain(self, request: ProposeRequest, lookup: tuple[list[int], int] | None = None) -> Proposal:
        """Prompt lookup's drafts alone, as a chain (deterministic: no draft_probs), as far as they pay."""
        lookup = lookup if lookup is not None else self._lookup(request)
        plan = StepPlan(self.verify_cost, self.RATE_MARGIN) if self.options.adaptive else None
        tokens = []
        for _, token, confidence, _ in self._lookup_drafts(lookup, plan):
            tokens.append(token)
            self.lookup_confidences.append(confidence)
        device = request.input_ids.device
        if not tokens:
            return Proposal.empty(1, device)
        return Proposal(token_ids=torch.tensor([tokens], device=device))

    def _seed_lookup(self, tree: DraftTree, plan: StepPlan, request: ProposeRequest) -> None:
        """Prompt lookup's branch first: a chain from the root, each node while it pays for its slot."""
        parent = -1
        for i, token, confidence, value in self._lookup_drafts(self._lookup(request), plan if self.options.adaptive
                                                               else None):
            parent = tree.add(Candidate(value, None, token, parent), i + 1, lookup=confidence)

    def _candidates(
        self, tree: DraftTree, parent: int, logits: torch.Tensor, depth: int, request: ProposeRequest
    ) -> list[Candidate]:
        """The ``tree_width`` most likely continuations of ``parent`` from its draft scores ``logits`` [V'].

        Under sampling they are q's most likely tokens, not draws: the core accepts each as a deterministic draft,
        which is lossless whatever picked them (specdecode.trees.sampled_path)."""
        pipeline = request.sampling.logits_processor
        if pipeline:  # the target processes its logits: rank candidates by the processed distribution over V
            path = [tree.tokens[n] for n in [*reversed(tree.ancestors(parent)), parent]] if parent >= 0 else []
            ids = self._prefix(request, [torch.tensor([t]) for t in path]) if pipeline.reads_ids else None
            probs, ids_out = draft_distribution(self._full_vocab(logits), request.sampling, ids).topk(
                self.options.tree_width
            )
        else:
            probs, index = draft_distribution(logits, request.sampling).topk(self.options.tree_width)
            ids_out = self.drafter.to_token_ids(index)
        parent_value = tree.values[parent] if parent >= 0 else 1.0
        adaptive = self.options.adaptive
        return [
            Candidate(parent_value * (self.calibration.predict(depth - 1, p) if adaptive else p), p, token, parent)
            for p, token in zip(probs.tolist(), ids_out.tolist())
        ]

    def _draw(self, logits: torch.Tensor, request: ProposeRequest, drafted: list[torch.Tensor]):
        """A draft token after ``drafted`` from the head's scores [1, V'] -> (token ids [1], q). Where the target
        processes its logits (repetition penalty, min-p, ...), the head's scores are spread over the full
        vocabulary and processed the same way, so q resembles p (q is then over V)."""
        pipeline = request.sampling.logits_processor
        if not pipeline:
            index, q = draw(logits, request.sampling, request.generator)
            return self.drafter.to_token_ids(index), q
        ids = self._prefix(request, drafted) if pipeline.reads_ids else None
        return draw(self._full_vocab(logits), request.sampling, request.generator, input_ids=ids)

    def _full_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., V'] draft-vocabulary scores -> [..., V], -inf for tokens the head does not score."""
        if logits.shape[-1] == self.drafter.vocab_size:
            return logits
        if self._vocab_ids is None:
            self._vocab_ids = self.drafter.to_token_ids(torch.arange(logits.shape[-1], device=logits.device))
        full = logits.new_full((*logits.shape[:-1], self.drafter.vocab_size), float("-inf"))
        return full.index_copy_(-1, self._vocab_ids, logits)

    @staticmethod
    def _prefix(request: ProposeRequest, drafted: list[torch.Tensor]) -> torch.Tensor:
        """The tokens before a draft position: the sequence so far and the drafts before it ([1] tensors)."""
        ids = request.input_ids[0]
        return torch.cat([ids, *(t.to(ids.device, ids.dtype).view(1) for t in drafted)])

    def _weigh_head(self, gained: int, rows: int) -> None:
        """After a tree step: tokens only the head's nodes gave against what the head cost (its passes and its
        verify rows, in tokens at the step's planned rate). When a window of steps says the head costs more than it
        adds (lookup alone would do better), it is skipped for 2, 4, ... up to ``max_skip`` steps (lookup drafts in
        them); one verdict that it pays resets the count."""
        worth = self.head_worth
        cost = (self.head_passes * self.options.draft_cost + rows * self.verify_cost.per_token) * self.step_rate
        decay = 1.0 - 1.0 / self.HEAD_WORTH_WINDOW
        worth[0] = worth[0] * decay + gained
        worth[1] = worth[1] * decay + cost
        worth[2] += 1
        if worth[2] >= self.HEAD_WORTH_WINDOW and worth[0] < worth[1]:
            self.unworthy += 1
            self.skip_left = max(self.skip_left, min(2 ** self.unworthy, self.options.max_skip))
        else:
            self.unworthy = 0

    def _observe(self, index: int, confidence: float, accepted: bool) -> None:
        """One draft at position ``index`` (0-based) was reached: calibrate, and count it for train-eagle."""
        self.calibration.observe(index, confidence, accepted)
        tally = self.tally[min(index, Calibration.POSITIONS - 1)]
        tally[0] += 1.0 if accepted else 0.0
        tally[1] += confidence
        tally[2] += 1

    def on_verified(self, result: VerifyResult) -> None:
        n = result.num_accepted_list[0]
        reached = int(result.num_drafted[0])  # the loop may have cut the proposal near max_new_tokens
        if self.tree is not None:
            # Every node whose parent the target accepted was reached; the accepted path holds one per depth.
            path = self.tree.path_of(result.input_ids[0, -(n + 1) : -1].tolist() if n else [])
            tree = self.tree
            if self.options.adaptive and self.lookup_window is not None:
                self._weigh_head(sum(tree.lookup_confidences[i] is None for i in path), tree.head_nodes)
            for i, parent in enumerate(tree.parents):
                if (parent < 0 or parent in path) and tree.depths[i] <= reached:
                    if tree.confidences[i] is not None:
                        self._observe(tree.depths[i] - 1, tree.confidences[i], i in path)
                    if tree.lookup_confidences[i] is not None:
                        self.lookup_calibration.observe(tree.depths[i] - 1, tree.lookup_confidences[i], i in path)
            self.tree = None
        for i, confidence in enumerate(self.confidences[: min(n + 1, reached)]):  # drafts 0..n were reached
            self._observe(i, confidence, i < n)
        for i, confidence in enumerate(self.lookup_confidences[: min(n + 1, reached)]):
            self.lookup_calibration.observe(i, confidence, i < n)
        self.confidences = []
        self.lookup_confidences = []
        crop_to(self.cache, self.committed - self.uncached)  # the speculative positions of the drafts
        self.pending.append((result.hidden_states[:, : n + 1], result.input_ids[:, -(n + 1) :]))

    def torch_modules(self) -> list[torch.nn.Module]:
        head = getattr(self.drafter, "head", None)  # a drafter that is not a torch head (a test's stand-in): none
        return [head] if isinstance(head, torch.nn.Module) else []

    def finish(self) -> None:
        self.cache = None
        self.next_feature = self.next_logits = None
        self.pending = []
        self.index = None


class Candidate(NamedTuple):
    """A possible tree node: ``value`` = the estimated chance that the target accepts the path to it,
    ``confidence`` = the head's probability of ``token`` after ``parent`` (-1: the last token); None for a node
    only prompt lookup proposed."""

    value: float
    confidence: float | None
    token: int
    parent: int


@attrs.define
class DraftTree:
    """A tree of drafts as it grows, in the core's layout: node i's token and its parent's index (-1: a child of the
    last token; parents come first), with its depth, value and confidences: the head's (:class:`Candidate`; None
    when only prompt lookup proposed it) and prompt lookup's (None when it did not)."""

    tokens: list[int] = attrs.field(factory=list)
    parents: list[int] = attrs.field(factory=list)
    depths: list[int] = attrs.field(factory=list)
    values: list[float] = attrs.field(factory=list)
    confidences: list[float | None] = attrs.field(factory=list)
    lookup_confidences: list[float | None] = attrs.field(factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def head_nodes(self) -> int:
        """Nodes that took a verify slot for the head (a head candidate equal to a lookup node took none)."""
        return sum(c is not None and lc is None for c, lc in zip(self.confidences, self.lookup_confidences))

    def add(self, candidate: Candidate, depth: int, lookup: float | None = None) -> int:
        """Append a node (``lookup``: prompt lookup's confidence, when it proposed it); returns its index."""
        self.tokens.append(candidate.token)
        self.parents.append(candidate.parent)
        self.depths.append(depth)
        self.values.append(candidate.value)
        self.confidences.append(candidate.confidence)
        self.lookup_confidences.append(lookup)
        return len(self.tokens) - 1

    def find(self, parent: int, token: int) -> int | None:
        """The node holding ``token`` under ``parent``, if any."""
        return next((i for i, (p, t) in enumerate(zip(self.parents, self.tokens)) if p == parent and t == token),
                    None)

    def merge(self, node: int, candidate: Candidate) -> None:
        """The head proposes a node prompt lookup placed: it gets the head's confidence, and the better value."""
        self.confidences[node] = candidate.confidence
        self.values[node] = max(self.values[node], candidate.value)

    def ancestors(self, node: int) -> list[int]:
        """The nodes above ``node``, nearest first."""
        out = []
        parent = self.parents[node]
        while parent >= 0:
            out.append(parent)
            parent = self.parents[parent]
        return out

    def best(self, count: int) -> DraftTree:
        """The ``count`` most valuable nodes (a parent outranks its children at equal value), renumbered."""
        if len(self) <= count:
            return self
        keep = sorted(sorted(range(len(self)), key=lambda i: (-self.values[i], self.depths[i]))[:count])
        renumber = {old: new for new, old in enumerate(keep)}
        return DraftTree(
            tokens=[self.tokens[i] for i in keep],
            parents=[renumber.get(self.parents[i], -1) for i in keep],
            depths=[self.depths[i] for i in keep],
            values=[self.values[i] for i in keep],
            confidences=[self.confidences[i] for i in keep],
            lookup_confidences=[self.lookup_confidences[i] for i in keep],
        )

    def path_of(self, accepted: Sequence[int]) -> set[int]:
        """The nodes the target accepted, from its accepted tokens (one node per depth, from the root down)."""
        path: set[int] = set()
        node = -1
        for token in accepted:
            node = next(i for i, p in enumerate(self.parents) if p == node and self.tokens[i] == token)
            path.add(node)
        return path
