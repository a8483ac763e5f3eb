"""The verify loop.

One step: the proposer drafts d_1..d_k; the target scores [last token, d_1..d_k] in one forward pass over its KV
cache (logits ``[B, k+1, V]``); drafts are accepted (greedy match, rejection sampling or typical acceptance); the
token after the accepted run (corrected or bonus) is appended; the cache is cropped back to the accepted prefix.
The prompt is never recomputed.

In a batch every row accepts its own number of drafts; the cache keeps the longest accepted run and hides the
slots other rows rejected behind the attention mask (see :mod:`specdecode.batching` and docs/batching.md).
Sequences that stop leave the batch. K per step comes from the batch-size policies of the config and from the
speculation schedule (:mod:`specdecode.schedules`).

Letters: B batch, T tokens so far, k drafts this step, V vocabulary, H hidden size. p = target, q = draft.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from . import sampling, trees
from .batching import CacheSlots, RightAlignedTokens, check_left_padded
from .config import SpeculativeConfig
from .errors import ConfigError, SpecDecodeError, invalid
from .kernels import few_rows_linear
from .proposer import Proposal, Proposer, ProposeRequest, SamplingParams, StartContext, VerifyResult
from .registry import get_method
from .schedules import StepOutcome, make_schedule
from .stats import GenerationStats

DEFAULT_MAX_NEW_TOKENS = 128


@attrs.frozen(kw_only=True)
class GenerateOutput:
    # [B, T_prompt + new]: each prompt as given (left padding kept), then its generated tokens, right-padded with
    # the pad token where a sequence stopped early (as transformers' batched generate returns them).
    sequences: torch.Tensor
    stats: GenerationStats  # the whole call; in a batch, counts are summed over sequences
    sequence_stats: list[GenerationStats] = attrs.field(factory=list)  # one per sequence (B == 1: [stats])


def build_proposer(model: Any, config: SpeculativeConfig) -> Proposer:
    """Instantiate the proposer of ``config.method`` for this target model."""
    spec = get_method(config.method).spec
    proposer = spec.factory(model, config, config.options)
    if not isinstance(proposer, Proposer):
        raise SpecDecodeError(
            f"the factory of method {config.method!r} returned {type(proposer).__name__}, not a specdecode.Proposer"
        )
    return proposer


def generate(
    model: Any,
    input_ids: torch.Tensor,
    config: SpeculativeConfig | dict | str | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int | Sequence[int] | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: str | Sequence[str] | None = None,
    tokenizer: Any = None,
    streamer: Any = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    proposer: Proposer | None = None,
) -> GenerateOutput:
    """Generate with speculative decoding. Greedy output is identical to ``model.generate(do_sample=False)``;
    sampled output follows the same distribution as ``model.generate(do_sample=True)`` (unless the lossy
    ``typical_acceptance_sampler`` is chosen).

    ``config`` may be a :class:`SpeculativeConfig`, a dict or a JSON string in vLLM's shape; ``None`` means
    ``SpeculativeConfig()`` (n-gram prompt lookup, K=5). Unset sampling arguments fall back to the model's
    ``generation_config``, as in transformers. ``proposer`` overrides the one the config names (for tests).

    A batch (``input_ids`` of shape ``[B, T]``, B > 1) must be left-padded, with ``attention_mask`` marking the
    padding. Every sequence accepts its own number of drafts per step and leaves the batch when it stops;
    ``max_new_tokens`` may be one number per sequence. See docs/batching.md. ``input_ids`` may also be a
    tokenizer's output (a mapping with ``input_ids`` and possibly ``attention_mask``).
    """
    config = _as_config(config)
    if not isinstance(input_ids, torch.Tensor) and hasattr(input_ids, "keys") and "input_ids" in input_ids:
        # A tokenizer's output (transformers 5's apply_chat_template(return_tensors="pt") returns one).
        encoded = input_ids
        input_ids = encoded["input_ids"]
        if attention_mask is None and "attention_mask" in encoded:
            attention_mask = encoded["attention_mask"]
    if not isinstance(input_ids, torch.Tensor):
        raise invalid("input_ids", type(input_ids).__name__,
                      "a [batch, length] tensor of token ids, or a tokenizer's output holding one")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise invalid("input_ids", tuple(input_ids.shape), "a non-empty [batch, length] tensor of token ids")
    batch = input_ids.shape[0]
    if streamer is not None and batch > 1:
        raise invalid(
            "streamer",
            type(streamer).__name__,
            "None when the batch size is above 1 (streamers take one sequence)",
        )
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise invalid(
            "attention_mask", tuple(attention_mask.shape), f"the shape of input_ids {tuple(input_ids.shape)}"
        )
    gen_config = getattr(model, "generation_config", None)
    params = _sampling_params(gen_config, do_sample, temperature, top_k, top_p)
    max_new = _resolve_max_new_tokens(max_new_tokens, gen_config, batch)
    eos_ids = _eos_ids(eos_token_id, gen_config)
    pad = _pad_token_id(pad_token_id, gen_config, model, eos_ids)
    stops = _stop_strings(stop_strings, tokenizer)
    if generator is None and seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)

    proposer = proposer if proposer is not None else build_proposer(model, config)

    def new_loop(row_max_new: list[int]) -> _Loop:
        loop = _Loop(model, config, params, row_max_new, eos_ids, stops, tokenizer, streamer, generator, pad)
        loop.proposer = proposer
        return loop

    if batch == 1:
        # Drop padding: the loop then needs no mask or explicit positions.
        padding = None
        if attention_mask is not None:
            keep = attention_mask[0].bool()
            if not bool(keep.all()):
                padding = input_ids[:, ~keep]
                input_ids = input_ids[:, keep]
        loop = new_loop(max_new)
        try:
            generated = loop.run(input_ids, None, [input_ids.shape[1]])
        finally:
            proposer.finish()
        new = torch.tensor(generated, dtype=input_ids.dtype, device=input_ids.device)
        sequences = torch.cat([input_ids, new] if padding is None else [padding, input_ids, new], dim=1)
        return GenerateOutput(sequences=sequences, stats=loop.stats, sequence_stats=[loop.stats])

    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    lengths = check_left_padded(mask)
    if not type(proposer).supports_batch:
        return _generate_one_by_one(new_loop, proposer, input_ids, lengths, max_new, pad)
    trim = input_ids.shape[1] - max(lengths)  # columns that are padding in every row
    loop = new_loop(max_new)
    try:
        generated = loop.run(input_ids[:, trim:], mask[:, trim:], lengths)
    finally:
        proposer.finish()
    return GenerateOutput(
        sequences=_right_pad(input_ids, generated, pad), stats=loop.stats, sequence_stats=loop.sequence_stats
    )


def _generate_one_by_one(new_loop, proposer, input_ids, lengths, max_new, pad) -> GenerateOutput:
    """For proposers that set ``supports_batch = False``: the sequences one after another, same outputs."""
    generated, per_sequence = [], []
    width = input_ids.shape[1]
    try:
        for b, length in enumerate(lengths):
            loop = new_loop([max_new[b]])
            generated.append(loop.run(input_ids[b : b + 1, width - length :], None, [length])[0])
            per_sequence.append(loop.stats)
    finally:
        proposer.finish()
    total = per_sequence[0]
    for stats in per_sequence[1:]:
        total = total.merge(stats)
    return GenerateOutput(
        sequences=_right_pad(input_ids, generated, pad), stats=total, sequence_stats=per_sequence
    )


def _right_pad(prompts: torch.Tensor, generated: list[list[int]], pad: int) -> torch.Tensor:
    """[B, T] prompts + per-row generated tokens -> [B, T + longest], right-padded with ``pad``."""
    longest = max(len(g) for g in generated)
    new = torch.full((len(generated), longest), pad, dtype=prompts.dtype)
    for b, tokens in enumerate(generated):
        new[b, : len(tokens)] = torch.tensor(tokens, dtype=prompts.dtype)
    return torch.cat([prompts, new.to(prompts.device)], dim=1)


class _Loop:
    """State of one generation. Kept in a class only so that ``run`` reads top to bottom.

    Rows: the B sequences keep their index b for the proposer (stable, with ``active`` flags), while the target's
    forward runs only over the R rows still running (``running`` maps position i in the target batch to b).
    """

    proposer: Proposer

    def __init__(self, model, config, params, max_new, eos_ids, stops, tokenizer, streamer, generator, pad):
        self.model = model
        self.config = config
        self.params = params
        self.max_new: list[int] = max_new  # per sequence
        self.eos_ids = eos_ids
        self.stops = stops
        self.tokenizer = tokenizer
        self.streamer = streamer
        self.generator = generator
        self.pad = pad
        self.stats = GenerationStats(num_sequences=len(max_new))
        self.sequence_stats = [self.stats] if len(max_new) == 1 else [GenerationStats() for _ in max_new]
        self.schedule = make_schedule(config.speculation_schedule, config.num_speculative_tokens)
        self.cache_kwarg = cache_kwarg_name(model)

    def forward(self, ids, cache, want_hidden, logits_to_keep=0, attention_mask=None, position_ids=None):
        """One target forward pass over ``ids`` [R, n] appended to ``cache``."""
        start = time.perf_counter()
        extra = {}
        if attention_mask is not None:
            extra = {"attention_mask": attention_mask, "position_ids": position_ids}
        out = self.model(  # inside run()'s few_rows_linear block: cheaper CPU decode and verify passes
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

    def drafts_for_running(self, proposal: Proposal, k_budget: int, running_index, room: list[int]):
        """The running rows' drafts, at most ``k_budget`` and ``room[i]`` tokens each.

        -> (draft [R, k], lengths [R] or None, draft_probs [R, k, V] or None).
        """
        draft, lengths, q = proposal.token_ids, proposal.lengths, proposal.draft_probs
        if running_index is not None:  # some sequences finished: the proposal still has all B rows
            draft = draft[running_index]
            lengths = None if lengths is None else lengths[running_index]
            q = None if q is None else q[running_index]
        device = self.device
        draft = draft[:, :k_budget].to(device)
        k = draft.shape[1]
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

    def run(
        self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None, lengths: list[int]
    ) -> list[list[int]]:
        """Generate for ``prompt`` [B, P] (left-padded by ``prompt_mask`` when B > 1; ``lengths`` real tokens per
        row). Returns each sequence's generated tokens."""
        self.t0 = t0 = time.perf_counter()
        stats, proposer, schedule = self.stats, self.proposer, self.schedule
        batch = prompt.shape[0]
        self.device = prompt.device
        stats.prompt_tokens = sum(lengths)
        for s, length in zip(self.sequence_stats, lengths):
            s.prompt_tokens = length
        want_hidden = type(proposer).needs_hidden_states
        self.hidden_layers = getattr(proposer, "hidden_state_layers", None)
        cache = _new_cache(self.model)
        slots = CacheSlots.from_prompt(prompt_mask, lengths)
        if self.streamer is not None:
            self.streamer.put(prompt.cpu())

        # The whole loop, proposers included, runs on the few-rows linear kernels (kernels.py): a draft model or a
        # head decodes a row or a few at a time too. Prefills and other wide products keep F.linear.
        with torch.inference_mode(), few_rows_linear():
            logits, hidden = self.forward(
                prompt, cache, want_hidden, 1, slots.mask, slots.prefill_positions()
            )
            if hasattr(cache, "activate_past_recording"):
                # After the prefill (no memory spike on long prompts): sliding-window layers must now keep what
                # they would drop, or a rejected draft could not be rolled back.
                cache.activate_past_recording()
            last = self.pick(logits[:, -1])  # [R] each running row's newest token, not yet in the cache
            generated = [[t] for t in last.tolist()]
            self._emit(generated[0])
            ones = torch.ones(batch, 1, dtype=torch.long, device=prompt.device)
            mask = ones.expand(batch, prompt.shape[1]) if prompt_mask is None else prompt_mask.long()
            view = RightAlignedTokens(
                torch.cat([prompt, last.unsqueeze(1)], 1), torch.cat([mask, ones], 1), self.pad
            )
            t = time.perf_counter()
            proposer.start(
                StartContext(
                    input_ids=view.ids,
                    attention_mask=view.mask,
                    num_speculative_tokens=self.config.num_speculative_tokens,
                    sampling=self.params,
                    generator=self.generator,
                    hidden_states=hidden,
                    tokenizer=self.tokenizer,
                )
            )
            stats.time_proposer += time.perf_counter() - t
            running = list(range(batch))  # target row i is sequence running[i]
            running_index = None  # the same as a tensor, None while every sequence runs
            active = torch.ones(batch, dtype=torch.bool, device=prompt.device)
            finished = [i for i, b in enumerate(running) if self._finished(b, generated[b], 0)]
            if finished:
                running, running_index, active, last = self._drop(
                    finished, running, slots, cache, last, batch
                )

            while running:
                t_step = time.perf_counter()
                rows = len(running)
                # Never draft past max_new_tokens: k drafts + 1 corrected/bonus token per step.
                room = [self.max_new[b] - len(generated[b]) - 1 for b in running]
                cap = self.config.num_tokens_for_batch(rows)
                k_budget = min(schedule.next_k(cap, rows), max(room))
                if k_budget > 0:
                    proposal = proposer.propose(
                        ProposeRequest(
                            input_ids=view.ids,
                            attention_mask=view.mask,
                            num_tokens=k_budget,
                            active=active,
                            sampling=self.params,
                            generator=self.generator,
                        )
                    )
                else:
                    proposal = Proposal.empty(batch, prompt.device)
                draft_seconds = time.perf_counter() - t_step
                stats.time_proposer += draft_seconds
                t_verify = time.perf_counter()
                if proposal.parents is not None and proposal.num_tokens > 0:
                    verified = self.verify_tree(proposal, last, cache, slots, want_hidden, min(k_budget, room[0]))
                else:
                    verified = self.verify_chain(proposal, last, cache, slots, want_hidden, k_budget,
                                                 running_index, room)
                num_accepted, next_tokens, hidden, kept_tokens, nexts, drafted, k = verified
                accepted = [len(t) for t in kept_tokens]
                verify_seconds = time.perf_counter() - t_verify

                new_tokens: list[list[int]] = [[] for _ in range(batch)]
                finished = []
                for i, b in enumerate(running):
                    before = len(generated[b])
                    generated[b].extend(kept_tokens[i])
                    generated[b].append(nexts[i])
                    # _finished truncates at eos / max_new_tokens / stop string.
                    if self._finished(b, generated[b], before):
                        finished.append(i)
                    new_tokens[b] = generated[b][before:]
                view.append(new_tokens)
                self._emit(new_tokens[0])
                stats.record_batch_step(drafted, accepted)
                stats.k_budget_per_step.append(k_budget)
                if batch > 1:
                    for i, b in enumerate(running):
                        self.sequence_stats[b].record_step(drafted[i], accepted[i])
                        self.sequence_stats[b].k_budget_per_step.append(k_budget)

                if len(finished) < rows:  # someone still runs
                    t = time.perf_counter()
                    proposer.on_verified(
                        self._verify_result(
                            view, running, rows, batch, drafted, accepted, num_accepted, next_tokens, hidden
                        )
                    )
                    stats.time_proposer += time.perf_counter() - t
                last = next_tokens
                if finished:
                    running, running_index, active, last = self._drop(
                        finished, running, slots, cache, last, batch
                    )
                if running:
                    slots.maybe_compact(cache)  # only when holes and padding fill half of the cache
                schedule.observe(
                    StepOutcome(
                        budget=k_budget,
                        drafted=drafted,
                        accepted=accepted,
                        verify_tokens=rows * (k + 1),
                        verify_seconds=verify_seconds,
                        draft_seconds=draft_seconds,
                        step_seconds=time.perf_counter() - t_step,
                    )
                )

        if self.streamer is not None:
            self.streamer.end()
        stats.new_tokens = sum(len(g) for g in generated)
        stats.time_total = time.perf_counter() - t0
        if batch > 1:
            for s, g in zip(self.sequence_stats, generated):
                s.new_tokens = len(g)
        return generated

    def verify_chain(self, proposal, last, cache, slots, want_hidden, k_budget, running_index, room):
        """Score [last, d_1..d_k] for every running row, accept, and roll the cache back to the longest accepted
        run. -> (num_accepted [R], next_tokens [R], hidden [R, k+1, H] or None, accepted drafts per row (host),
        next tokens (host), drafted per row (host), k)."""
        rows = last.shape[0]
        draft, draft_lengths, q = self.drafts_for_running(proposal, k_budget, running_index, room)
        k = draft.shape[1]
        verify_ids = torch.cat([last.unsqueeze(1), draft], dim=1)  # [R, k+1]
        attention_mask, position_ids = slots.forward_inputs(k + 1)
        logits, hidden = self.forward(verify_ids, cache, want_hidden, 0, attention_mask, position_ids)
        num_accepted, next_tokens = self.accept(logits, draft, draft_lengths, q)  # [R], [R]
        # One host transfer per step: counts, next tokens, drafts (and draft lengths when given).
        parts = [num_accepted, next_tokens, draft.reshape(-1)]
        if draft_lengths is not None:
            parts.append(draft_lengths)
        host = torch.cat(parts).tolist()
        accepted, nexts = host[:rows], host[rows : 2 * rows]
        drafted = host[2 * rows + rows * k :] if draft_lengths is not None else [k] * rows
        kept_tokens = [host[2 * rows + i * k : 2 * rows + i * k + n] for i, n in enumerate(accepted)]
        # The cache holds [.., last, d_1..d_k] per row; keep the longest accepted run, hide the rest.
        kept = slots.advance(num_accepted, accepted)
        if k + 1 > kept:
            cache.crop(-(k + 1 - kept))
        return num_accepted, next_tokens, hidden, kept_tokens, nexts, drafted, k

    def verify_tree(self, proposal, last, cache, slots, want_hidden, max_depth):
        """Score a tree proposal (batch size 1; greedy or rejection sampling) in one forward pass and keep the path
        the target accepts (specdecode.trees). Returns what :meth:`verify_chain` returns; ``hidden`` holds [last,
        path] only, so proposers see a chain of accepted tokens either way, and ``drafted`` is the tree's depth."""
        typical = not self.params.greedy and self.config.acceptance_method == "typical_acceptance_sampler"
        if last.shape[0] != 1 or typical:
            what = f"a batch of {last.shape[0]}" if last.shape[0] != 1 else "typical acceptance"
            raise ConfigError(
                "tree proposals are verified for one sequence, greedy or with rejection sampling; this generation "
                f"uses {what}. A proposer should draft a chain here (leave Proposal.parents None)",
                field="Proposal.parents",
                value=proposal.parents,
            )
        parents = trees.check_parents(proposal.parents, proposal.num_tokens)
        draft, parents = trees.limit_depth(proposal.token_ids[0].tolist(), parents, max_depth)
        k, device = len(draft), last.device
        past = slots.length
        verify_ids = torch.cat([last, torch.tensor(draft, dtype=torch.long, device=device)]).unsqueeze(0)
        dtype = self.model.get_input_embeddings().weight.dtype
        mask = trees.attention_mask(parents, past, dtype, device)
        node_depths = trees.depths(parents)
        positions = trees.position_ids(node_depths, slots.real_counts[0], device)
        logits, hidden = self.forward(verify_ids, cache, want_hidden, 0, mask, positions)
        if self.params.greedy:
            path, next_token = trees.greedy_path(logits[0].argmax(dim=-1).tolist(), draft, parents)
        else:  # draft_probs are not used: each candidate counts as a deterministic draft (see trees.sampled_path)
            probs = sampling.warp_probs(logits[0], self.params)
            path, next_token = trees.sampled_path(probs, draft, parents, self.generator)
        n = len(path)
        keep = [0] + [i + 1 for i in path]  # verify slots: 0 = the last token, i + 1 = node i
        num_accepted = torch.tensor([n], device=device)
        slots.advance(num_accepted, [n])
        trees.keep_cache_slots(cache, past, keep)
        if hidden is not None:
            hidden = hidden[:, torch.tensor(keep, device=device)]
        next_tokens = torch.tensor([next_token], device=device)
        return num_accepted, next_tokens, hidden, [[draft[i] for i in path]], [next_token], [max(node_depths)], k

    def _drop(self, finished, running, slots, cache, last, batch):
        """Remove the finished target rows (positions in ``running``) from the target batch and its cache."""
        stopped = set(finished)
        keep = [i for i in range(len(running)) if i not in stopped]
        if len(self.sequence_stats) > 1:
            for i in finished:  # a sequence's own time: until it left the batch
                self.sequence_stats[running[i]].time_total = time.perf_counter() - self.t0
        running = [running[i] for i in keep]
        if not running:
            return running, None, None, last
        slots.select(keep, cache)
        last = last[torch.tensor(keep, device=last.device)]
        running_index = torch.tensor(running, device=last.device)
        active = torch.zeros(batch, dtype=torch.bool, device=last.device)
        active[running_index] = True
        return running, running_index, active, last

    def _verify_result(
        self, view, running, rows, batch, drafted, accepted, num_accepted, next_tokens, hidden
    ):
        """The step's feedback over all B sequences (rows that are not running report zeros)."""
        if rows == batch:
            num_drafted = torch.tensor(drafted, device=self.device)
            accepted_list = accepted
        else:
            index = torch.tensor(running, device=self.device)
            num_drafted = torch.zeros(batch, dtype=torch.long, device=self.device)
            num_drafted[index] = torch.tensor(drafted, device=self.device)
            num_accepted = torch.zeros(batch, dtype=num_accepted.dtype, device=self.device).index_copy(
                0, index, num_accepted
            )
            next_tokens = torch.full(
                (batch,), self.pad, dtype=next_tokens.dtype, device=self.device
            ).index_copy(0, index, next_tokens)
            if hidden is not None:
                hidden = hidden.new_zeros(batch, *hidden.shape[1:]).index_copy(0, index, hidden)
            accepted_list = [0] * batch
            for i, b in enumerate(running):
                accepted_list[b] = accepted[i]
        return VerifyResult(
            input_ids=view.ids,
            attention_mask=view.mask,
            num_drafted=num_drafted,
            num_accepted=num_accepted,
            next_tokens=next_tokens,
            num_accepted_list=accepted_list,
            hidden_states=hidden,
        )

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
        window = generated[max(0, i + 1 - self.stop_window) : i + 1]
        prev = self.tokenizer.decode(window[:-1])
        text = self.tokenizer.decode(window)
        return any(s in text and s not in prev for s in self.stops)

    @property
    def stop_window(self) -> int:
        return max(len(s) for s in self.stops) + 2


def _as_config(config: SpeculativeConfig | dict | str | None) -> SpeculativeConfig:
    if config is None:
        return SpeculativeConfig()
    if isinstance(config, SpeculativeConfig):
        return config
    if isinstance(config, str):
        return SpeculativeConfig.from_json(config)
    if isinstance(config, dict):
        return SpeculativeConfig.from_dict(config)
    raise invalid("config", config, "a SpeculativeConfig, a dict or a JSON string")


def _sampling_params(gen_config, do_sample, temperature, top_k, top_p) -> SamplingParams:
    def pick(value, name, fallback):
        if value is not None:
            return value
        found = getattr(gen_config, name, None) if gen_config is not None else None
        return fallback if found is None else found

    do_sample = bool(pick(do_sample, "do_sample", False))
    temperature = float(pick(temperature, "temperature", 1.0))
    top_k = pick(top_k, "top_k", None)
    top_p = pick(top_p, "top_p", None)
    if do_sample:
        if temperature <= 0:
            raise invalid("temperature", temperature, "> 0 when sampling (use do_sample=False for greedy)")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise invalid("top_k", top_k, "an integer >= 0 (0 disables it)")
        if top_p is not None and not 0.0 < float(top_p) <= 1.0:
            raise invalid("top_p", top_p, "a number in (0, 1]")
    return SamplingParams(
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k or None,
        top_p=None if top_p is None or float(top_p) >= 1.0 else float(top_p),
    )


def _resolve_max_new_tokens(
    max_new_tokens: int | Sequence[int] | None, gen_config: Any, batch: int
) -> list[int]:
    """One limit per sequence: a number for all, or a list with one entry per prompt."""
    if max_new_tokens is None:
        max_new_tokens = getattr(gen_config, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS
    if isinstance(max_new_tokens, (list, tuple)):
        limits = list(max_new_tokens)
        if len(limits) != batch:
            raise invalid(
                "max_new_tokens", max_new_tokens, f"an integer or a list of {batch} integers (one per prompt)"
            )
    else:
        limits = [max_new_tokens] * batch
    for limit in limits:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            allowed = (
                "a list of integers >= 1" if isinstance(max_new_tokens, (list, tuple)) else "an integer >= 1"
            )
            raise invalid("max_new_tokens", max_new_tokens, allowed)
    return limits


def _pad_token_id(pad_token_id: int | None, gen_config: Any, model: Any, eos_ids: frozenset[int]) -> int:
    """The id that right-pads stopped sequences: the argument, the model's pad token, an eos token, or 0."""
    for candidate in (
        pad_token_id,
        getattr(gen_config, "pad_token_id", None),
        getattr(getattr(model, "config", None), "pad_token_id", None),
    ):
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            return candidate
    return min(eos_ids) if eos_ids else 0


def _eos_ids(eos_token_id: int | Sequence[int] | None, gen_config: Any) -> frozenset[int]:
    if eos_token_id is None and gen_config is not None:
        eos_token_id = getattr(gen_config, "eos_token_id", None)
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset([eos_token_id])
    if isinstance(eos_token_id, torch.Tensor):
        return frozenset(int(x) for x in eos_token_id.flatten().tolist())
    return frozenset(int(x) for x in eos_token_id)


def _stop_strings(stop_strings: str | Sequence[str] | None, tokenizer: Any) -> tuple[str, ...]:
    if stop_strings is None:
        return ()
    stops = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    if any(not isinstance(s, str) or not s for s in stops):
        raise invalid("stop_strings", stop_strings, "a non-empty string or a list of non-empty strings")
    if tokenizer is None:
        raise ConfigError(
            "'stop_strings' needs the target's tokenizer: pass tokenizer=... to generate()",
            field="stop_strings",
            value=stop_strings,
        )
    return stops


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def select_hidden_states(hidden_states: Sequence[torch.Tensor], layers: Sequence[int] | None) -> torch.Tensor:
    """The hidden states a proposer asked for (:attr:`Proposer.hidden_state_layers`) from a forward pass's
    ``output_hidden_states`` tuple: the last entry, or the listed entries concatenated along the last dimension."""
    if layers is None:
        return hidden_states[-1]
    return torch.cat([hidden_states[i] for i in layers], dim=-1)


def cache_kwarg_name(model: Any) -> str:
    """transformers renamed ``past_key_values`` to ``cache``; use whichever this model's forward takes."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"
