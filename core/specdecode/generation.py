"""The verify loop.

One step: the proposer drafts d_1..d_k; the target scores [last token, d_1..d_k] in one forward pass over its KV
cache (logits ``[B, k+1, V]``); drafts are accepted (greedy match, rejection sampling or typical acceptance); the
token after the accepted run (corrected or bonus) is appended; the cache is cropped back to the accepted prefix.
The prompt is never recomputed.

Letters: B batch, T tokens so far, k drafts this step, V vocabulary, H hidden size. p = target, q = draft.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from . import sampling
from .config import SpeculativeConfig
from .errors import ConfigError, SpecDecodeError, invalid
from .proposer import Proposal, ProposeRequest, Proposer, SamplingParams, StartContext, VerifyResult
from .registry import get_method
from .stats import GenerationStats

DEFAULT_MAX_NEW_TOKENS = 128


@attrs.frozen(kw_only=True)
class GenerateOutput:
    sequences: torch.Tensor  # [B, T_prompt + new] prompt and generated tokens
    stats: GenerationStats


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
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
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
    """
    config = _as_config(config)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise invalid("input_ids", tuple(input_ids.shape), "a non-empty [batch, length] tensor of token ids")
    if input_ids.shape[0] != 1:
        raise SpecDecodeError(
            f"batch size {input_ids.shape[0]} is not supported yet: specdecode.generate takes one sequence "
            "(input_ids of shape [1, length]); loop over the prompts"
        )
    gen_config = getattr(model, "generation_config", None)
    params = _sampling_params(gen_config, do_sample, temperature, top_k, top_p)
    max_new = _resolve_max_new_tokens(max_new_tokens, gen_config)
    eos_ids = _eos_ids(eos_token_id, gen_config)
    stops = _stop_strings(stop_strings, tokenizer)
    if generator is None and seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)

    # Batch size 1: drop left padding, the loop then needs no mask or explicit positions.
    padding = None
    if attention_mask is not None:
        keep = attention_mask[0].bool()
        if not bool(keep.all()):
            padding = input_ids[:, ~keep]
            input_ids = input_ids[:, keep]
    loop = _Loop(model, config, params, max_new, eos_ids, stops, tokenizer, streamer, generator)
    loop.proposer = proposer if proposer is not None else build_proposer(model, config)
    try:
        sequences = loop.run(input_ids)
    finally:
        loop.proposer.finish()
    if padding is not None:
        sequences = torch.cat([padding, sequences], dim=1)
    return GenerateOutput(sequences=sequences, stats=loop.stats)


class _Loop:
    """State of one generation. Kept in a class only so that ``run`` reads top to bottom."""

    proposer: Proposer

    def __init__(self, model, config, params, max_new, eos_ids, stops, tokenizer, streamer, generator):
        self.model = model
        self.config = config
        self.params = params
        self.max_new = max_new
        self.eos_ids = eos_ids
        self.stops = stops
        self.tokenizer = tokenizer
        self.streamer = streamer
        self.generator = generator
        self.stats = GenerationStats()
        self.cache_kwarg = _cache_kwarg_name(model)

    def forward(self, ids: torch.Tensor, cache: Any, want_hidden: bool, logits_to_keep: int = 0):
        """One target forward pass over ``ids`` [B, n] appended to ``cache``."""
        start = time.perf_counter()
        out = self.model(
            input_ids=ids,
            use_cache=True,
            output_hidden_states=want_hidden,
            logits_to_keep=logits_to_keep,
            **{self.cache_kwarg: cache},
        )
        self.stats.time_target += time.perf_counter() - start
        self.stats.target_forwards += 1
        hidden = out.hidden_states[-1] if want_hidden else None
        return out.logits, hidden

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """A token from [B, V] logits, as plain generate would pick it."""
        if self.params.greedy:
            return logits.argmax(dim=-1)
        return sampling.sample(sampling.warp_probs(logits, self.params), self.generator)

    def accept(self, logits: torch.Tensor, proposal: Proposal, draft: torch.Tensor):
        """Decide how many drafts survive. logits [B, k+1, V], draft [B, k] -> (num_accepted [B], next [B])."""
        if self.params.greedy:
            return sampling.greedy_accept(logits, draft, proposal.lengths)
        probs = sampling.warp_probs(logits, self.params)  # [B, k+1, V]
        if self.config.acceptance_method == "typical_acceptance_sampler":
            return sampling.typical_accept(
                probs,
                draft,
                proposal.lengths,
                posterior_threshold=self.config.posterior_threshold,
                posterior_alpha=self.config.posterior_alpha,
                generator=self.generator,
            )
        q = proposal.draft_probs
        if q is not None:
            q = q[:, : draft.shape[1]].to(probs.dtype)
        return sampling.rejection_sample(probs, draft, q, proposal.lengths, self.generator)

    def run(self, prompt: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        stats, proposer = self.stats, self.proposer
        stats.prompt_tokens = prompt.shape[1]
        want_hidden = type(proposer).needs_hidden_states
        cache = _new_cache(self.model)
        if self.streamer is not None:
            self.streamer.put(prompt.cpu())

        with torch.inference_mode():
            logits, hidden = self.forward(prompt, cache, want_hidden, logits_to_keep=1)
            if hasattr(cache, "activate_past_recording"):
                # After the prefill (no memory spike on long prompts): sliding-window layers must now keep what
                # they would drop, or a rejected draft could not be rolled back.
                cache.activate_past_recording()
            first = self.pick(logits[:, -1])  # [B]
            tokens = torch.cat([prompt, first.unsqueeze(1)], dim=1)  # [B, T]
            generated = [int(first[0])]
            self._emit(generated)
            mask = torch.ones_like(tokens)
            t = time.perf_counter()
            proposer.start(
                StartContext(
                    input_ids=tokens,
                    attention_mask=mask,
                    num_speculative_tokens=self.config.num_speculative_tokens,
                    sampling=self.params,
                    generator=self.generator,
                    hidden_states=hidden,
                    tokenizer=self.tokenizer,
                )
            )
            stats.time_proposer += time.perf_counter() - t
            active = torch.ones(1, dtype=torch.bool, device=tokens.device)
            done = self._finished(generated, len(generated))

            while not done:
                # Never draft past max_new_tokens: k drafts + 1 corrected/bonus token per step.
                k_budget = min(self.config.num_speculative_tokens, self.max_new - len(generated) - 1)
                t = time.perf_counter()
                if k_budget > 0:
                    proposal = proposer.propose(
                        ProposeRequest(
                            input_ids=tokens,
                            attention_mask=mask,
                            num_tokens=k_budget,
                            active=active,
                            sampling=self.params,
                            generator=self.generator,
                        )
                    )
                else:
                    proposal = Proposal.empty(1, tokens.device)
                stats.time_proposer += time.perf_counter() - t
                draft = proposal.token_ids[:, :k_budget].to(tokens.device)  # [B, k]
                if proposal.lengths is not None:
                    proposal = attrs.evolve(proposal, lengths=proposal.lengths.clamp(max=draft.shape[1]))
                k = draft.shape[1]

                verify_ids = torch.cat([tokens[:, -1:], draft], dim=1)  # [B, k+1]
                logits, hidden = self.forward(verify_ids, cache, want_hidden)  # [B, k+1, V]
                num_accepted, next_tokens = self.accept(logits, proposal, draft)
                # One host transfer per step: the loop needs both counts on the host to crop and to stop.
                n, next_token = torch.stack([num_accepted[0], next_tokens[0]]).tolist()
                drafted = k if proposal.lengths is None else int(proposal.lengths[0])
                stats.record_step(drafted, n)
                # The cache now holds [.., last, d_1..d_k]; keep [.., last, d_1..d_n] (next_token is not in it yet).
                if k - n > 0:
                    cache.crop(-(k - n))

                new = draft[0, :n].tolist() + [next_token]
                before = len(generated)
                generated.extend(new)
                done = self._finished(generated, before)
                new = generated[before:]  # _finished truncates at eos / max_new_tokens / stop string
                new_t = torch.tensor([new], dtype=tokens.dtype, device=tokens.device)
                tokens = torch.cat([tokens, new_t], dim=1)
                mask = torch.ones_like(tokens)
                self._emit(new)
                if not done:
                    t = time.perf_counter()
                    proposer.on_verified(
                        VerifyResult(
                            input_ids=tokens,
                            attention_mask=mask,
                            num_drafted=torch.tensor([drafted], device=tokens.device),
                            num_accepted=num_accepted,
                            next_tokens=next_tokens,
                            num_accepted_list=[n],
                            hidden_states=hidden,
                        )
                    )
                    stats.time_proposer += time.perf_counter() - t

        if self.streamer is not None:
            self.streamer.end()
        stats.new_tokens = len(generated)
        stats.time_total = time.perf_counter() - t0
        return tokens

    def _emit(self, new: list[int]) -> None:
        if self.streamer is not None and new:
            self.streamer.put(torch.tensor(new, dtype=torch.long))

    def _finished(self, generated: list[int], before: int) -> bool:
        """Truncate ``generated`` in place at the first stop among the tokens added after ``before``; True if done."""
        for i in range(before, len(generated)):
            if i + 1 >= self.max_new or generated[i] in self.eos_ids or self._hit_stop_string(generated, i):
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


def _resolve_max_new_tokens(max_new_tokens: int | None, gen_config: Any) -> int:
    if max_new_tokens is None:
        max_new_tokens = getattr(gen_config, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise invalid("max_new_tokens", max_new_tokens, "an integer >= 1")
    return max_new_tokens


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


def _cache_kwarg_name(model: Any) -> str:
    """transformers renamed ``past_key_values`` to ``cache``; use whichever this model's forward takes."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"
