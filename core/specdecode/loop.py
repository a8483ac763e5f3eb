"""The verify loop: one generation, step by step.

One step, in the order :meth:`Decoder.run` takes them:

1. **budget**: K for this step, from the config's batch-size policies and the speculation schedule;
2. **propose**: the proposer drafts d_1..d_k per running sequence (a chain, or a tree at batch size 1);
3. **verify**: the target scores [last token, d_1..d_k] in one forward pass over its KV cache (logits
   ``[R, k+1, V]``), drafts are accepted (greedy match, rejection sampling or typical acceptance), the token after
   the accepted run (corrected or bonus) is drawn, the cache is rolled back to the accepted prefix, and everything
   the host needs comes back in one transfer: a :class:`Step`;
4. **commit**: the new tokens join each sequence, stops (eos, max_new_tokens, stop strings) cut them, they are
   streamed and counted;
5. **feedback**: the proposer hears what was accepted (``on_verified``), the schedule what it cost;
6. **drop**: finished sequences leave the target's batch and its cache.

The prompt is never recomputed. In a batch every row accepts its own number of drafts; the cache keeps the longest
accepted run and hides the slots other rows rejected behind the attention mask (:mod:`specdecode.batching`).

Letters: B sequences, R of them still running, T tokens so far, k drafts this step, V vocabulary, H hidden size.
p = the target's distribution, q = the draft's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import torch

from . import attention, sampling, trees
from .attention import AttentionLayout
from .batching import CacheSlots, RightAlignedTokens
from .cache import cache_kwarg_name, check_rollback, crop_to, keep_past, new_cache
from .config import SpeculativeConfig
from .errors import ConfigError
from .kernels import few_rows_linear
from .proposer import Proposal, Proposer, ProposeRequest, SamplingParams, StartContext, VerifyResult
from .schedules import StepOutcome, make_schedule
from .stats import GenerationStats


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
    generated: list[list[int]]  # [B] each sequence's tokens so far (host)
    view: RightAlignedTokens  # [B, T] every sequence, as proposers see it
    want_hidden: bool
    finished: list[int] = attrs.field(factory=list)  # running positions that stopped this step


class Decoder:
    """Runs generations for one target model, proposer and set of generation settings."""

    def __init__(
        self,
        model: Any,
        config: SpeculativeConfig,
        proposer: Proposer,
        params: SamplingParams,
        max_new: list[int],
        *,
        eos_ids: frozenset[int],
        pad: int,
        stops: tuple[str, ...] = (),
        tokenizer: Any = None,
        streamer: Any = None,
        generator: torch.Generator | None = None,
    ):
        self.model = model
        self.config = config
        self.proposer = proposer
        self.params = params
        self.max_new = max_new  # per sequence
        self.eos_ids = eos_ids
        self.pad = pad
        self.stops = stops
        self.tokenizer = tokenizer
        self.streamer = streamer
        self.generator = generator
        self.stats = GenerationStats(num_sequences=len(max_new))
        self.sequence_stats = [self.stats] if len(max_new) == 1 else [GenerationStats() for _ in max_new]
        self.schedule = make_schedule(config.speculation_schedule, config.num_speculative_tokens)
        self.cache_kwarg = cache_kwarg_name(model)
        self.hidden_layers = getattr(proposer, "hidden_state_layers", None)
        self.layout = AttentionLayout.of(model)
        self.dtype = model.get_input_embeddings().weight.dtype

    def run(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None, lengths: list[int]) -> list[list[int]]:
        """Generate for ``prompt`` [B, P] (left-padded by ``prompt_mask`` when B > 1; ``lengths`` real tokens per
        row). Returns each sequence's generated tokens."""
        with self._scope():
            state = self.prefill(prompt, prompt_mask, lengths)
            while state.rows.count:
                t_step = time.perf_counter()
                budget = self.budget(state)
                proposal = self.propose(state, budget)
                step = self.verify(state, proposal, budget, draft_seconds=time.perf_counter() - t_step)
                self.commit(state, step)
                self.feedback(state, step)
                self.drop(state, compact=True)
                self.schedule.observe(self._outcome(step, time.perf_counter() - t_step))
        if self.streamer is not None:
            self.streamer.end()
        self._close_stats(state)
        return state.generated

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        # The whole loop, proposers included, runs on the few-rows linear kernels (kernels.py): a draft model or a
        # head decodes a row or a few at a time too. Prefills and other wide products keep F.linear.
        with torch.inference_mode(), few_rows_linear(self.model, *self.proposer.torch_modules()):
            yield

    # -- phases ---------------------------------------------------------------------------------------------
    def prefill(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None, lengths: list[int]) -> _Generation:
        """Read the prompt, pick the first token, start the proposer."""
        t0 = time.perf_counter()
        batch, device = prompt.shape[0], prompt.device
        self.stats.prompt_tokens = sum(lengths)
        for s, length in zip(self.sequence_stats, lengths):
            s.prompt_tokens = length
        want_hidden = type(self.proposer).needs_hidden_states
        cache = new_cache(self.model)
        slots = CacheSlots.from_prompt(prompt_mask, lengths)
        if self.streamer is not None:
            self.streamer.put(prompt.cpu())
        logits, hidden = self.forward(prompt, cache, want_hidden, 1, slots.mask, slots.prefill_positions())
        check_rollback(cache, self.model)
        keep_past(cache)
        last = self.pick(logits[:, -1])  # [B]
        generated = [[t] for t in last.tolist()]
        self._emit(generated[0])
        ones = torch.ones(batch, 1, dtype=torch.long, device=device)
        mask = ones.expand(batch, prompt.shape[1]) if prompt_mask is None else prompt_mask.long()
        view = RightAlignedTokens(torch.cat([prompt, last.unsqueeze(1)], 1), torch.cat([mask, ones], 1), self.pad)
        state = _Generation(
            t0=t0, cache=cache, slots=slots, rows=Rows.all(batch, device), last=last, generated=generated,
            view=view, want_hidden=want_hidden,
        )
        with self._proposer_time():
            self.proposer.start(
                StartContext(
                    input_ids=view.ids,
                    attention_mask=view.mask,
                    num_speculative_tokens=self.config.num_speculative_tokens,
                    sampling=self.params,
                    generator=self.generator,
                    hidden_states=hidden,
                    tokenizer=self.tokenizer,
                    trees=self.tree_refusal(batch) is None,
                )
            )
        state.finished = [b for b in range(batch) if self._finished(b, generated[b], 0)]
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
                    generator=self.generator,
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
        counts = [0] * rows.batch  # new tokens per sequence, after stops
        state.finished = []
        for i, b in enumerate(rows.running):
            before = len(state.generated[b])
            state.generated[b].extend(step.tokens[i])
            if self._finished(b, state.generated[b], before):  # truncates at eos / max_new_tokens / stop string
                state.finished.append(i)
            counts[b] = len(state.generated[b]) - before
        state.view.append(rows.to_batch(step.new_ids, self.pad), counts)
        self._emit(state.generated[0][len(state.generated[0]) - counts[0] :])
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
        k = draft.shape[1]
        verify_ids = torch.cat([state.last.unsqueeze(1), draft], dim=1)  # [R, k+1]
        attention_mask, position_ids = state.slots.forward_inputs(k + 1)
        if attention_mask is not None and self.layout.sliding:  # holes must not count against the window
            keys = state.slots.keys(draft.device)
            attention_mask = self.layout.masks(*keys, position_ids, attention.causal(k + 1, draft.device), self.dtype)
        logits, hidden = self.forward(verify_ids, state.cache, state.want_hidden, 0, attention_mask, position_ids)
        num_accepted, next_tokens = self.accept(logits, draft, lengths, q)  # [R], [R]
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
                    new_ids=new_ids, hidden=hidden)

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
        k, device = len(draft), last.device
        past = slots.length
        verify_ids = torch.cat([last, torch.tensor(draft, dtype=torch.long, device=device)]).unsqueeze(0)
        node_depths = trees.depths(parents)
        positions = trees.position_ids(node_depths, slots.real_counts[0], device)
        mask = self.layout.masks(*slots.keys(device), positions, trees.visibility(parents, device), self.dtype)
        logits, hidden = self.forward(verify_ids, state.cache, state.want_hidden, 0, mask, positions)
        if self.params.greedy:
            path, next_token = trees.greedy_path(logits[0].argmax(dim=-1).tolist(), draft, parents)
        else:  # draft_probs are not used: each candidate counts as a deterministic draft (see trees.sampled_path)
            probs = sampling.warp_probs(logits[0], self.params)
            path, next_token = trees.sampled_path(probs, draft, parents, self.generator)
        n = len(path)
        keep = [0] + [i + 1 for i in path]  # verify slots: 0 = the last token, i + 1 = node i
        num_accepted = torch.tensor([n], device=device)
        slots.advance(num_accepted, [n])
        trees.keep_cache_slots(state.cache, past, keep)
        if hidden is not None:
            hidden = hidden[:, torch.tensor(keep, device=device)]
        tokens = [draft[i] for i in path] + [next_token]
        return dict(width=k, drafted=[max(node_depths)], tokens=[tokens], num_accepted=num_accepted,
                    next_tokens=torch.tensor([next_token], device=device),
                    new_ids=torch.tensor([tokens], dtype=torch.long, device=device), hidden=hidden)

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

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """A token from [R, V] logits, as plain generate would pick it."""
        if self.params.greedy:
            return logits.argmax(dim=-1)
        return sampling.sample(sampling.warp_probs(logits, self.params), self.generator)

    def accept(self, logits, draft, lengths, draft_probs):
        """Decide how many drafts survive. logits [R, k+1, V], draft [R, k] -> (num_accepted [R], next [R])."""
        if self.params.greedy:
            return sampling.greedy_accept(logits, draft, lengths)
        probs = sampling.warp_probs(logits, self.params)  # [R, k+1, V]
        if self.config.acceptance_method == "typical_acceptance_sampler":
            return sampling.typical_accept(
                probs,
                draft,
                lengths,
                posterior_threshold=self.config.posterior_threshold,
                posterior_alpha=self.config.posterior_alpha,
                generator=self.generator,
            )
        q = None if draft_probs is None else draft_probs.to(probs.dtype)
        return sampling.rejection_sample(probs, draft, q, lengths, self.generator)

    # -- helpers --------------------------------------------------------------------------------------------
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
        """Drafts each running sequence may still take before max_new_tokens."""
        return [self.max_new[b] - len(state.generated[b]) - 1 for b in state.rows.running]

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
        self.stats.new_tokens = sum(len(g) for g in state.generated)
        self.stats.time_total = time.perf_counter() - state.t0
        if len(self.sequence_stats) > 1:
            for s, g in zip(self.sequence_stats, state.generated):
                s.new_tokens = len(g)

    def _emit(self, new: list[int]) -> None:
        if self.streamer is not None and new:
            self.streamer.put(torch.tensor(new, dtype=torch.long))

    def _finished(self, b: int, generated: list[int], before: int) -> bool:
        """Truncate ``generated`` (sequence b's tokens) in place at the first stop among the tokens added after
        ``before``; True if the sequence is done."""
        max_new = self.max_new[b]
        for i in range(before, len(generated)):
            if i + 1 >= max_new or generated[i] in self.eos_ids or self._hit_stop_string(generated, i):
                del generated[i + 1 :]
                return True
        return False

    def _hit_stop_string(self, generated: list[int], i: int) -> bool:
        if not self.stops:
            return False
        # Decode a window long enough to contain any stop string ending in token i.
        window = generated[max(0, i + 1 - self._stop_window) : i + 1]
        prev = self.tokenizer.decode(window[:-1])
        text = self.tokenizer.decode(window)
        return any(s in text and s not in prev for s in self.stops)

    @property
    def _stop_window(self) -> int:
        return max(len(s) for s in self.stops) + 2


def select_hidden_states(hidden_states: Sequence[torch.Tensor], layers: Sequence[int] | None) -> torch.Tensor:
    """The hidden states a proposer asked for (:attr:`Proposer.hidden_state_layers`) from a forward pass's
    ``output_hidden_states`` tuple: the last entry, or the listed entries concatenated along the last dimension."""
    if layers is None:
        return hidden_states[-1]
    return torch.cat([hidden_states[i] for i in layers], dim=-1)

