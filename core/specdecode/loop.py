"""The verify loop: one generation, step by step.

One step, in the order :meth:`Decoder.run` takes them:

1. **budget**: K for this step, from the config's batch-size policies and the speculation schedule;
2. **propose**: the proposer drafts d_1..d_k per running sequence (a chain, or a tree at batch size 1);
3. **verify**: the target scores [last token, d_1..d_k] in one forward pass over its KV cache (logits
   ``[R, k+1, V]``); each position is processed as plain ``generate`` would process it there (its logits
   processors, given the prefix before it, and a grammar's mask: :mod:`specdecode.processing`); drafts are accepted
   (greedy match, rejection sampling or typical acceptance), the token after the accepted run (corrected or bonus)
   is drawn, the cache is rolled back to the accepted prefix, and everything the host needs comes back in one
   transfer: a :class:`Step`;
4. **commit**: the new tokens join each sequence, its stopping criteria cut them (:mod:`specdecode.stopping`), they
   are streamed and counted;
5. **feedback**: the proposer hears what was accepted (``on_verified``), the schedule what it cost;
6. **drop**: finished sequences leave the target's batch and its cache.

The prompt is never recomputed. In a batch every row accepts its own number of drafts; the cache keeps the longest
accepted run and hides the slots other rows rejected behind the attention mask (:mod:`specdecode.batching`).

Letters: B sequences, R of them still running, P the prompt's width, T tokens so far, k drafts this step,
V vocabulary, H hidden size. p = the target's distribution, q = the draft's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import torch

from . import attention, sampling, trees
from .attention import AttentionLayout, grouped_kv_in_place
from .batching import CacheSlots, History, RightAlignedTokens
from .cache import cache_kwarg_name, check_rollback, crop_to, keep_past, new_cache
from .config import SpeculativeConfig
from .errors import ConfigError
from .kernels import few_rows_linear
from .processing import LogitsPipeline
from .proposer import Proposal, Proposer, ProposeRequest, SamplingParams, StartContext, VerifyResult
from .schedules import StepOutcome, make_schedule
from .stats import GenerationStats
from .stopping import StopRules


@attrs.define
class Rows:
    """Which of the B sequences are still in the target's batch: target row i is sequence ``running[i]``.

    Proposers always see all B rows (``active[b]`` False for finished ones); the target only the R running.
    """

    batch: int
    running: list[int]
    active: torch.Tensor  # [B] bool
    index: torch.Tensor | None = None  # ``running`` on the device; None while every sequence runs

    @classmethod
    def all(cls, batch: int, device: torch.device) -> Rows:
        return cls(batch=batch, running=list(range(batch)), active=torch.ones(batch, dtype=torch.bool, device=device))

    @property
    def count(self) -> int:
        return len(self.running)

    def keep(self, positions: Sequence[int]) -> None:
        """Only the running rows at these positions stay."""
        self.running = [self.running[i] for i in positions]
        device = self.active.device
        self.index = torch.tensor(self.running, dtype=torch.long, device=device)
        self.active = torch.zeros(self.batch, dtype=torch.bool, device=device)
        self.active[self.index] = True

    def of_running(self, values: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [R, ...]."""
        return values if self.index is None else values[self.index]

    def to_batch(self, values: torch.Tensor, fill: float | int) -> torch.Tensor:
        """[R, ...] -> [B, ...], ``fill`` in the rows that are not running."""
        if self.index is None:
            return values
        out = values.new_full((self.batch, *values.shape[1:]), fill)
        return out.index_copy_(0, self.index, values)


@attrs.frozen(kw_only=True)
class Settings:
    """How one generation picks and stops, as transformers' ``generate`` prepared it."""

    sampling: SamplingParams  # do_sample, and the processors (``sampling.logits_processor``) proposers may apply
    pipeline: LogitsPipeline  # the target's logits processors (warpers included when sampling)
    rules: StopRules
    pad: int
    grammar: Any = None  # a specdecode.grammar.CompiledConstraint, or None
    output_scores: bool = False  # keep each generated token's processed scores
    output_logits: bool = False  # and its raw logits
    tokenizer: Any = None
    streamer: Any = None  # gets the new tokens (the caller has put the prompt)
    generator: torch.Generator | None = None
    rows: Sequence[int] = ()  # the rows of the caller's batch this run decodes (processors index them); () = all


@attrs.define(kw_only=True)
class Result:
    """What :meth:`Decoder.run` returns: per sequence, its generated tokens and, when asked for, one processed
    scores row and one raw logits row ``[V]`` per token."""

    tokens: list[list[int]]
    scores: list[list[torch.Tensor]] | None = None
    logits: list[list[torch.Tensor]] | None = None


@attrs.frozen(kw_only=True)
class Step:
    """What one verify step decided, for the phases after it. Per running row i (host lists) and on the device."""

    budget: int  # K asked of the proposer
    width: int  # draft tokens the target read per row (a tree: its node count)
    drafted: list[int]  # drafts per row (a tree: its depth)
    tokens: list[list[int]]  # per row: the accepted drafts, then the corrected or bonus token
    num_accepted: torch.Tensor  # [R]
    next_tokens: torch.Tensor  # [R]
    new_ids: torch.Tensor  # [R, w]: row i's first num_accepted[i] + 1 entries are its new tokens
    hidden: torch.Tensor | None  # [R, w, H] states over [last token, accepted drafts...]
    scores: torch.Tensor | None  # [R, w, V] processed scores of the new tokens' positions (when outputs keep them)
    logits: torch.Tensor | None  # [R, w, V] their raw logits (ditto)
    draft_seconds: float
    verify_seconds: float

    @property
    def accepted(self) -> list[int]:
        return [len(t) - 1 for t in self.tokens]


@attrs.define(kw_only=True)
class _Generation:
    """The state of one :meth:`Decoder.run`."""

    t0: float
    cache: Any
    slots: CacheSlots
    rows: Rows
    last: torch.Tensor  # [R] each running row's newest token, not yet in the cache
    history: History  # [B, P + ...] every sequence as plain generate holds it; ``history.tokens`` on the host
    view: RightAlignedTokens  # [B, T] every sequence, as proposers see it
    want_hidden: bool
    result: Result
    grammars: list[Any] | None = None  # per sequence: a specdecode.grammar.GrammarState
    done_at: list[int | None] = attrs.field(factory=list)  # without padding of stopped rows: where each stopped
    finished: list[int] = attrs.field(factory=list)  # running positions that stopped this step


class Decoder:
    """Runs generations for one target model, proposer and set of generation settings."""

    def __init__(self, model: Any, config: SpeculativeConfig, proposer: Proposer, settings: Settings):
        self.model = model
        self.config = config
        self.proposer = proposer
        self.settings = settings
        self.params = settings.sampling
        self.rules = settings.rules
        self.pad = settings.pad
        self.stats = GenerationStats(num_sequences=len(settings.rules.max_new))
        self.sequence_stats = [self.stats] if self.stats.num_sequences == 1 else [
            GenerationStats() for _ in settings.rules.max_new
        ]
        self.schedule = make_schedule(config.speculation_schedule, config.num_speculative_tokens)
        self.cache_kwarg = cache_kwarg_name(model)
        self.hidden_layers = getattr(proposer, "hidden_state_layers", None)
        self.layout = AttentionLayout.of(model)
        self.dtype = model.get_input_embeddings().weight.dtype
        # Positions are processed (in float32) when a processor, a grammar or the caller's scores need it.
        self.processing = bool(settings.pipeline) or settings.grammar is not None or settings.output_scores

    def run(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None) -> Result:
        """Generate for ``prompt`` [B, P], left-padded where ``prompt_mask`` [B, P] is 0."""
        with self._scope():
            state = self.prefill(prompt, prompt_mask)
            while state.rows.count:
                t_step = time.perf_counter()
                budget = self.budget(state)
                proposal = self.propose(state, budget)
                step = self.verify(state, proposal, budget, draft_seconds=time.perf_counter() - t_step)
                self.commit(state, step)
                self.feedback(state, step)
                self.drop(state, compact=True)
                self.schedule.observe(self._outcome(step, time.perf_counter() - t_step))
        if self.settings.streamer is not None:
            self.settings.streamer.end()
        self._close_stats(state)
        return state.result

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        # The whole loop, proposers included, runs on the few-rows linear kernels (kernels.py): a draft model or a
        # head decodes a row or a few at a time too. Prefills and other wide products keep F.linear.
        # On a CPU, verify passes (which carry masks) read grouped K/V heads in place (attention.py).
        with torch.inference_mode(), few_rows_linear(self.model, *self.proposer.torch_modules()), \
                grouped_kv_in_place(self.model):
            yield

    # -- phases ---------------------------------------------------------------------------------------------
    def prefill(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None) -> _Generation:
        """Read the prompt, pick the first token, start the proposer."""
        t0 = time.perf_counter()
        batch, device = prompt.shape[0], prompt.device
        settings = self.settings
        mask = torch.ones_like(prompt) if prompt_mask is None else prompt_mask.to(torch.long)
        lengths = mask.sum(dim=1).tolist()
        # The target reads each row's real tokens; columns that are padding in every row are left out.
        target, target_mask = prompt[:, prompt.shape[1] - max(lengths) :], mask[:, prompt.shape[1] - max(lengths) :]
        if batch == 1:
            target, target_mask = target[:, -lengths[0] :], None
        self.stats.prompt_tokens = sum(lengths)
        for s, length in zip(self.sequence_stats, lengths):
            s.prompt_tokens = length
        want_hidden = type(self.proposer).needs_hidden_states
        cache = new_cache(self.model)
        slots = CacheSlots.from_prompt(target_mask, lengths)
        logits, hidden = self.forward(target, cache, want_hidden, 1, slots.mask, slots.prefill_positions())
        check_rollback(cache, self.model)
        keep_past(cache, tokens_per_forward=self.config.max_num_tokens() + 1)  # a verify pass: last token + drafts
        history = History(prompt, max(self.rules.max_new) + self.config.num_speculative_tokens + 2, self.pad)
        grammars = None if settings.grammar is None else [settings.grammar.new_state() for _ in range(batch)]
        logits = logits[:, -1]  # [B, V]
        scores = self._process(logits.unsqueeze(1), lambda i, j: (i, history.prefix(i, 0)), self._first_masks(grammars))
        last = self.pick(scores[:, 0])  # [B]
        result = Result(tokens=history.tokens, scores=[[] for _ in range(batch)] if settings.output_scores else None,
                        logits=[[] for _ in range(batch)] if settings.output_logits else None)
        state = _Generation(
            t0=t0, cache=cache, slots=slots, rows=Rows.all(batch, device), last=last, history=history,
            view=RightAlignedTokens(target, torch.ones_like(target) if target_mask is None else target_mask, self.pad),
            want_hidden=want_hidden, result=result, grammars=grammars, done_at=[None] * batch,
        )
        step_tokens = [[t] for t in last.tolist()]
        self._keep(state, range(batch), step_tokens, last.unsqueeze(1), self._outputs(scores, logits.unsqueeze(1)))
        with self._proposer_time():
            self.proposer.start(
                StartContext(
                    input_ids=state.view.ids,
                    attention_mask=state.view.mask,
                    num_speculative_tokens=self.config.num_speculative_tokens,
                    sampling=self.params,
                    generator=settings.generator,
                    hidden_states=hidden,
                    tokenizer=settings.tokenizer,
                    trees=self.tree_refusal(batch) is None,
                )
            )
        self.drop(state)
        return state

    def budget(self, state: _Generation) -> int:
        """K for this step: the schedule's choice under the batch-size cap, never past max_new_tokens (k drafts
        + 1 corrected or bonus token per step)."""
        room = max(self._room(state))
        cap = self.config.num_tokens_for_batch(state.rows.count)
        return min(self.schedule.next_k(cap, state.rows.count), room)

    def propose(self, state: _Generation, budget: int) -> Proposal:
        if budget == 0:
            return Proposal.empty(state.rows.batch, state.last.device)
        with self._proposer_time():
            return self.proposer.propose(
                ProposeRequest(
                    input_ids=state.view.ids,
                    attention_mask=state.view.mask,
                    num_tokens=budget,
                    active=state.rows.active,
                    sampling=self.params,
                    generator=self.settings.generator,
                )
            )

    def verify(self, state: _Generation, proposal: Proposal, budget: int, draft_seconds: float) -> Step:
        t = time.perf_counter()
        if proposal.parents is not None and proposal.num_tokens > 0:
            parts = self.verify_tree(state, proposal, min(budget, self._room(state)[0]))
        else:
            parts = self.verify_chain(state, proposal, budget)
        return Step(budget=budget, draft_seconds=draft_seconds, verify_seconds=time.perf_counter() - t, **parts)

    def commit(self, state: _Generation, step: Step) -> None:
        """Append each row's new tokens, cut them at a stop, stream and count them."""
        rows = state.rows
        self._keep(state, rows.running, step.tokens, step.new_ids, {"scores": step.scores, "logits": step.logits})
        self.stats.record_batch_step(step.drafted, step.accepted)
        self.stats.k_budget_per_step.append(step.budget)
        if rows.batch > 1:
            for i, b in enumerate(rows.running):
                self.sequence_stats[b].record_step(step.drafted[i], step.accepted[i])
                self.sequence_stats[b].k_budget_per_step.append(step.budget)
        state.last = step.next_tokens

    def feedback(self, state: _Generation, step: Step) -> None:
        """Tell the proposer what was accepted (all B rows; rows that are not running report zeros)."""
        rows = state.rows
        if len(state.finished) == rows.count:  # nobody runs on: nothing to draft for
            return
        accepted = step.accepted
        accepted_all = accepted if rows.index is None else [0] * rows.batch
        if rows.index is not None:
            for i, b in enumerate(rows.running):
                accepted_all[b] = accepted[i]
        drafted = torch.tensor(step.drafted, device=step.num_accepted.device)
        with self._proposer_time():
            self.proposer.on_verified(
                VerifyResult(
                    input_ids=state.view.ids,
                    attention_mask=state.view.mask,
                    num_drafted=rows.to_batch(drafted, 0),
                    num_accepted=rows.to_batch(step.num_accepted, 0),
                    next_tokens=rows.to_batch(step.next_tokens, self.pad),
                    num_accepted_list=accepted_all,
                    hidden_states=None if step.hidden is None else rows.to_batch(step.hidden, 0),
                )
            )

    def drop(self, state: _Generation, compact: bool = False) -> None:
        """Finished rows (``state.finished``, positions among the running) leave the target's batch and cache;
        with ``compact``, the cache's holes are squeezed out when they fill half of it."""
        rows, finished = state.rows, state.finished
        if finished:
            if rows.batch > 1:
                for i in finished:  # a sequence's own time: until it left the batch
                    self.sequence_stats[rows.running[i]].time_total = time.perf_counter() - state.t0
            stopped = set(finished)
            keep = [i for i in range(rows.count) if i not in stopped]
            rows.keep(keep)
            if keep:
                state.slots.select(keep, state.cache)
                state.last = state.last[torch.tensor(keep, device=state.last.device)]
        if compact and rows.count:
            state.slots.maybe_compact(state.cache)

    # -- verification ---------------------------------------------------------------------------------------
    def verify_chain(self, state: _Generation, proposal: Proposal, budget: int) -> dict[str, Any]:
        """Score [last, d_1..d_k] for every running row, accept, and roll the cache back to the longest accepted
        run."""
        rows = state.rows.count
        draft, lengths, q = self._drafts_for_running(state, proposal, budget)
        masks = None
        if state.grammars is not None:  # drafts leave the grammar: cut them first (one more host transfer)
            draft, lengths, masks = self._grammar_chain(state, draft, lengths, q is not None)
        k = draft.shape[1]
        verify_ids = torch.cat([state.last.unsqueeze(1), draft], dim=1)  # [R, k+1]
        attention_mask, position_ids = state.slots.forward_inputs(k + 1)
        if attention_mask is not None and self.layout.sliding:  # holes must not count against the window
            keys = state.slots.keys(draft.device)
            attention_mask = self.layout.masks(*keys, position_ids, attention.causal(k + 1, draft.device), self.dtype)
        logits, hidden = self.forward(verify_ids, state.cache, state.want_hidden, 0, attention_mask, position_ids)
        scores = logits
        if self.processing:  # position j is processed with the sequence so far and drafts 1..j
            running = state.rows.running
            state.history.write(running, draft)
            scores = self._process(
                logits,
                lambda i, j: (running[i], state.history.prefix(running[i], len(state.history.tokens[running[i]]) + j)),
                masks,
            )
        num_accepted, next_tokens = self.accept(scores, draft, lengths, q)  # [R], [R]
        # One host transfer per step: counts, next tokens, drafts (and draft lengths when given).
        parts = [num_accepted, next_tokens, draft.reshape(-1)]
        if lengths is not None:
            parts.append(lengths)
        host = torch.cat(parts).tolist()
        accepted, nexts = host[:rows], host[rows : 2 * rows]
        drafted = host[2 * rows + rows * k :] if lengths is not None else [k] * rows
        tokens = [host[2 * rows + i * k : 2 * rows + i * k + n] + [nexts[i]] for i, n in enumerate(accepted)]
        # The cache holds [.., last, d_1..d_k] per row; keep the longest accepted run, hide the rest.
        state.slots.advance(num_accepted, accepted)
        crop_to(state.cache, state.slots.length)
        new_ids = torch.cat([draft, next_tokens.unsqueeze(1)], dim=1)
        new_ids = new_ids.scatter(1, num_accepted.unsqueeze(1), next_tokens.unsqueeze(1))  # [R, k+1]
        return dict(width=k, drafted=drafted, tokens=tokens, num_accepted=num_accepted, next_tokens=next_tokens,
                    new_ids=new_ids, hidden=hidden, **self._outputs(scores, logits))

    def verify_tree(self, state: _Generation, proposal: Proposal, max_depth: int) -> dict[str, Any]:
        """Score a tree proposal (batch size 1; greedy or rejection sampling) in one forward pass and keep the path
        the target accepts (:mod:`specdecode.trees`). ``hidden`` holds [last, path] only, so proposers see a chain
        of accepted tokens either way, and ``drafted`` is the tree's depth."""
        last, slots = state.last, state.slots
        refusal = self.tree_refusal(last.shape[0])
        if refusal is not None:
            raise ConfigError(
                f"tree proposals cannot be verified here: {refusal}. A proposer should draft a chain when "
                "StartContext.trees is False (leave Proposal.parents None)",
                field="Proposal.parents",
                value=proposal.parents,
            )
        parents = trees.check_parents(proposal.parents, proposal.num_tokens)
        draft, parents = trees.limit_depth(proposal.token_ids[0].tolist(), parents, max_depth)
        masks = None
        if state.grammars is not None:  # nodes the grammar refuses go, with their subtrees
            draft, parents, masks = self._grammar_tree(state, draft, parents)
        k, device = len(draft), last.device
        past = slots.length
        verify_ids = torch.cat([last, torch.tensor(draft, dtype=torch.long, device=device)]).unsqueeze(0)
        node_depths = trees.depths(parents)
        positions = trees.position_ids(node_depths, slots.real_counts[0], device)
        mask = self.layout.masks(*slots.keys(device), positions, trees.visibility(parents, device), self.dtype)
        logits, hidden = self.forward(verify_ids, state.cache, state.want_hidden, 0, mask, positions)
        scores = logits
        if self.processing:  # node i is processed with the sequence so far and the path to it
            b = state.rows.running[0]
            done = len(state.history.tokens[b])
            paths = trees.paths(parents)

            def prefix(_i: int, j: int) -> tuple[int, torch.Tensor]:
                base = state.history.prefix(b, done)
                if j == 0:
                    return b, base
                branch = torch.tensor([[draft[n] for n in paths[j - 1]]], dtype=torch.long, device=device)
                return b, torch.cat([base, branch], dim=1)

            scores = self._process(logits, prefix, masks)
        if self.params.greedy:
            path, next_token = trees.greedy_path(scores[0].argmax(dim=-1).tolist(), draft, parents)
        else:  # draft_probs are not used: each candidate counts as a deterministic draft (see trees.sampled_path)
            path, next_token = trees.sampled_path(
                scores[0].float().softmax(dim=-1), draft, parents, self.settings.generator
            )
        n = len(path)
        keep = [0] + [i + 1 for i in path]  # verify slots: 0 = the last token, i + 1 = node i
        num_accepted = torch.tensor([n], device=device)
        slots.advance(num_accepted, [n])
        trees.keep_cache_slots(state.cache, past, keep)
        index = torch.tensor(keep, device=device)
        if hidden is not None:
            hidden = hidden[:, index]
        tokens = [draft[i] for i in path] + [next_token]
        outputs = self._outputs(scores, logits)
        outputs = {name: None if value is None else value[:, index] for name, value in outputs.items()}
        return dict(width=k, drafted=[max(node_depths, default=0)], tokens=[tokens], num_accepted=num_accepted,
                    next_tokens=torch.tensor([next_token], device=device),
                    new_ids=torch.tensor([tokens], dtype=torch.long, device=device), hidden=hidden, **outputs)

    def tree_refusal(self, rows: int) -> str | None:
        """Why this generation cannot verify tree proposals (None: it can)."""
        if rows != 1:
            return f"a batch of {rows} sequences runs (trees are verified for one)"
        if not self.params.greedy and self.config.acceptance_method == "typical_acceptance_sampler":
            return "typical acceptance is on (trees are verified greedily or by rejection sampling)"
        return self.layout.tree_refusal

    def forward(self, ids, cache, want_hidden, logits_to_keep=0, attention_mask=None, position_ids=None):
        """One target forward pass over ``ids`` [R, n] appended to ``cache`` -> (logits, hidden states or None)."""
        start = time.perf_counter()
        extra = {}
        if attention_mask is not None:
            extra = {"attention_mask": attention_mask, "position_ids": position_ids}
        out = self.model(
            input_ids=ids,
            use_cache=True,
            output_hidden_states=want_hidden,
            logits_to_keep=logits_to_keep,
            **{self.cache_kwarg: cache},
            **extra,
        )
        self.stats.time_target += time.perf_counter() - start
        self.stats.target_forwards += 1
        hidden = select_hidden_states(out.hidden_states, self.hidden_layers) if want_hidden else None
        return out.logits, hidden

    def pick(self, scores: torch.Tensor) -> torch.Tensor:
        """A token from [R, V] processed scores, as plain generate picks it."""
        if self.params.greedy:
            return scores.argmax(dim=-1)
        return sampling.sample(scores.float().softmax(dim=-1), self.settings.generator)

    def accept(self, scores, draft, lengths, draft_probs):
        """Decide how many drafts survive. scores [R, k+1, V] (processed), draft [R, k] -> (num_accepted [R],
        next [R])."""
        if self.params.greedy:
            return sampling.greedy_accept(scores, draft, lengths)
        probs = scores.float().softmax(dim=-1)  # [R, k+1, V]: p, exactly what plain generate samples from
        generator = self.settings.generator
        if self.config.acceptance_method == "typical_acceptance_sampler":
            return sampling.typical_accept(
                probs,
                draft,
                lengths,
                posterior_threshold=self.config.posterior_threshold,
                posterior_alpha=self.config.posterior_alpha,
                generator=generator,
            )
        q = None if draft_probs is None else draft_probs.to(probs.dtype)
        return sampling.rejection_sample(probs, draft, q, lengths, generator)

    # -- helpers --------------------------------------------------------------------------------------------
    def _process(
        self, logits: torch.Tensor, prefix: Callable[[int, int], tuple[int, torch.Tensor]], masks: torch.Tensor | None
    ) -> torch.Tensor:
        """[R, W, V] logits -> processed scores, position (i, j) with ``prefix(i, j)`` (its sequence b and [1, T])
        and ``masks[i, j]`` (a grammar's allowed tokens); the logits themselves when nothing processes them."""
        if not self.processing:
            return logits
        start = time.perf_counter()
        rows, width, vocab = logits.shape
        flat_masks = None if masks is None else masks.reshape(rows * width, vocab)
        caller_rows = self.settings.rows

        def position(n: int) -> tuple[int, torch.Tensor]:
            b, ids = prefix(n // width, n % width)
            return (caller_rows[b] if caller_rows else b), ids

        scores = self.settings.pipeline(logits.reshape(rows * width, vocab), position, flat_masks)
        self.stats.time_processing += time.perf_counter() - start
        return scores.view(rows, width, vocab)

    def _outputs(self, scores: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return {
            "scores": scores if self.settings.output_scores else None,
            "logits": logits.float() if self.settings.output_logits else None,
        }

    def _keep(self, state, batch_rows, step_tokens, new_ids, outputs) -> None:
        """Append each row's ``step_tokens`` (its new tokens; ``new_ids`` [R, w] on the device), cut them where a
        stopping criterion fires, advance its grammar, stream and keep its ``outputs`` (scores, logits)."""
        history, rules, result = state.history, self.rules, state.result
        counts = [0] * state.rows.batch  # new tokens per sequence, after stops
        state.finished = []
        history.write(list(batch_rows), new_ids)
        for i, b in enumerate(batch_rows):
            tokens = history.tokens[b]
            before = len(tokens)
            tokens.extend(step_tokens[i])
            keep = rules.first_stop(b, tokens, before, lambda n, b=b: history.prefix(b, n))
            if keep is not None:
                if state.done_at[b] is None:
                    state.done_at[b] = keep
                # Stopped rows leave at once when they would be padded; otherwise (no eos criterion, as in
                # transformers) a row generates on until every row has stopped, and never past its length limit.
                if rules.pad_finished or state.rows.batch == 1 or keep >= rules.max_new[b]:
                    del tokens[keep:]
                    state.finished.append(i)
            counts[b] = len(tokens) - before
            if state.grammars is not None:
                state.grammars[b].advance(tokens[before:])
            for kept, produced in ((result.scores, outputs["scores"]), (result.logits, outputs["logits"])):
                if kept is not None:
                    kept[b].extend(produced[i, : counts[b]].unbind(0))
        if not rules.pad_finished and state.rows.batch > 1 and all(d is not None for d in state.done_at):
            self._stop_together(state, batch_rows, counts)
        state.view.append(state.rows.to_batch(new_ids, self.pad), counts)
        streamer = self.settings.streamer
        if streamer is not None and counts[0]:
            streamer.put(torch.tensor(history.tokens[0][-counts[0] :], dtype=torch.long))

    def _stop_together(self, state: _Generation, batch_rows: Sequence[int], counts: list[int]) -> None:
        """Every row has stopped and stopped rows are not padded (no eos criterion): as in transformers, all rows
        end at the length of the last to stop; rows short of it generate on to it."""
        final = max(d for d in state.done_at if d is not None)
        for i, b in enumerate(batch_rows):
            tokens = state.history.tokens[b]
            if i in state.finished:
                continue
            if len(tokens) >= final:
                cut = len(tokens) - final
                del tokens[final:]
                counts[b] -= cut
                state.finished.append(i)
            else:
                self.rules.max_new[b] = final

    def _first_masks(self, grammars: list[Any] | None) -> torch.Tensor | None:
        if grammars is None:
            return None
        return torch.stack([g.masks(device=self.model.device)[0] for g in grammars]).unsqueeze(1)  # [B, 1, V]

    def _grammar_chain(self, state: _Generation, draft: torch.Tensor, lengths: torch.Tensor | None, sampled: bool):
        """Cut each running row's drafts where its grammar refuses one and build the verify positions' masks.

        A deterministic draft the grammar refuses is simply dropped. A *sampled* one (with q) is kept, as the last:
        the mask gives it probability 0, so rejection sampling rejects it and draws from max(p - q, 0) at that
        position, which is what keeps the output lossless (dropping it would draw from p there instead).
        -> (draft [R, k'], lengths [R], masks [R, k'+1, V] bool)."""
        rows, k = draft.shape
        host = draft.tolist()
        limits = lengths.tolist() if lengths is not None else [k] * rows
        new_lengths, row_masks = [], []
        for i, b in enumerate(state.rows.running):
            grammar = state.grammars[b]
            tokens = host[i][: limits[i]]
            valid = grammar.valid_prefix(tokens)
            keep = min(len(tokens), valid + 1) if sampled else valid
            new_lengths.append(keep)
            row_masks.append(grammar.masks(tokens[:valid], device=draft.device))  # [valid+1, V]
        width = max(new_lengths)
        masks = torch.ones(rows, width + 1, row_masks[0].shape[-1], dtype=torch.bool, device=draft.device)
        for i, m in enumerate(row_masks):
            n = min(m.shape[0], width + 1)
            masks[i, :n] = m[:n]
        lengths = torch.tensor(new_lengths, device=draft.device)
        return draft[:, :width], lengths, masks

    def _grammar_tree(self, state: _Generation, draft: list[int], parents: tuple[int, ...]):
        """Drop the nodes the grammar refuses (with their subtrees; each candidate is a deterministic draft, so
        this is lossless) -> (draft, parents, masks [1, k+1, V] bool: the mask after each node's path)."""
        grammar = state.grammars[state.rows.running[0]]
        keep, masks = grammar.tree_masks(draft, parents, device=state.last.device)
        renumber = {-1: -1}
        kept_draft, kept_parents = [], []
        for i in range(len(draft)):
            if keep[i]:
                renumber[i] = len(kept_draft)
                kept_draft.append(draft[i])
                kept_parents.append(renumber[parents[i]])
        rows = [0] + [i + 1 for i in range(len(draft)) if keep[i]]
        return kept_draft, tuple(kept_parents), masks[rows].unsqueeze(0)

    def _drafts_for_running(self, state: _Generation, proposal: Proposal, budget: int):
        """The running rows' drafts, at most ``budget`` and their room to max_new_tokens each.

        -> (draft [R, k], lengths [R] or None, draft_probs [R, k, V] or None).
        """
        rows, device = state.rows, state.last.device
        draft = rows.of_running(proposal.token_ids)[:, :budget].to(device)
        lengths = None if proposal.lengths is None else rows.of_running(proposal.lengths)
        q = None if proposal.draft_probs is None else rows.of_running(proposal.draft_probs)
        k = draft.shape[1]
        room = self._room(state)
        if any(r < k for r in room):  # a sequence close to its max_new_tokens drafts less
            limit = torch.tensor(room, device=device)
            lengths = limit if lengths is None else torch.minimum(lengths.to(device), limit)
        if lengths is not None:
            lengths = lengths.to(device).clamp(max=k)
            if lengths.device.type == "cpu":  # free to look at: verify no wider than the longest draft
                k = int(lengths.max())
                draft = draft[:, :k]
            # Padding entries are never read, but they pass through the embedding: make them valid ids.
            draft = draft.masked_fill(torch.arange(k, device=device).unsqueeze(0) >= lengths.unsqueeze(1), 0)
        if q is not None:
            q = q[:, :k]
        return draft, lengths, q

    def _room(self, state: _Generation) -> list[int]:
        """Drafts each running sequence may still take before its length limit."""
        return [max(self.rules.max_new[b] - len(state.history.tokens[b]) - 1, 0) for b in state.rows.running]

    @contextlib.contextmanager
    def _proposer_time(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stats.time_proposer += time.perf_counter() - start

    def _outcome(self, step: Step, step_seconds: float) -> StepOutcome:
        return StepOutcome(
            budget=step.budget,
            drafted=step.drafted,
            accepted=step.accepted,
            verify_tokens=len(step.drafted) * (step.width + 1),
            verify_seconds=step.verify_seconds,
            draft_seconds=step.draft_seconds,
            step_seconds=step_seconds,
        )

    def _close_stats(self, state: _Generation) -> None:
        tokens = state.history.tokens
        self.stats.new_tokens = sum(len(g) for g in tokens)
        self.stats.time_total = time.perf_counter() - state.t0
        if len(self.sequence_stats) > 1:
            for s, g in zip(self.sequence_stats, tokens):
                s.new_tokens = len(g)


def select_hidden_states(hidden_states: Sequence[torch.Tensor], layers: Sequence[int] | None) -> torch.Tensor:
    """The hidden states a proposer asked for (:attr:`Proposer.hidden_state_layers`) from a forward pass's
    ``output_hidden_states`` tuple: the last entry, or the listed entries concatenated along the last dimension."""
    if layers is None:
        return hidden_states[-1]
    return torch.cat([hidden_states[i] for i in layers], dim=-1)

