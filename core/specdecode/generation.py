"""``specdecode.generate``: the arguments a user gives, resolved into one :class:`specdecode.loop.Decoder` run.

Unset generation arguments fall back to the model's ``generation_config``, as in transformers. A batch must be
left-padded; proposers that cannot batch get their sequences one after another (same outputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from .attention import AttentionLayout
from .batching import check_left_padded
from .cache import cache_kwarg_name  # noqa: F401  (public: specdecode.cache_kwarg_name)
from .config import SpeculativeConfig
from .errors import ConfigError, SpecDecodeError, invalid
from .loop import Decoder, select_hidden_states  # noqa: F401  (select_hidden_states: the conformance kit's)
from .proposer import Proposer, SamplingParams
from .registry import get_method
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

    def new_loop(row_max_new: list[int]) -> Decoder:
        return Decoder(
            model, config, proposer, params, row_max_new, eos_ids=eos_ids, pad=pad, stops=stops,
            tokenizer=tokenizer, streamer=streamer, generator=generator,
        )

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
    if not type(proposer).supports_batch or AttentionLayout.of(model).stateful:
        # Convolution / recurrent states run along one sequence: a batch's holes would enter them.
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
