"""The entry points: ``specdecode.generate`` and ``specdecode.custom_generate``, one code path.

``custom_generate`` is a decoding function for transformers' ``model.generate(..., custom_generate=...)``:
transformers merges the call's arguments with the model's ``generation_config``, validates them, builds the logits
processors and stopping criteria exactly as for plain ``generate``, and hands them to it; it runs specdecode's
loop (:mod:`specdecode.loop`) instead of transformers' own. ``specdecode.generate`` is that same call, with
specdecode's extras (a config or proposer object, a generator, a limit per sequence, stats) and errors in
specdecode's words.

Modes that cannot be speculative (beam search, contrastive search, DoLa, classifier-free guidance, transformers' own
assisted decoding, ...) are refused before anything runs, naming the argument.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import attrs
import torch

from .attention import AttentionLayout
from .batching import check_left_padded
from .cache import cache_kwarg_name  # noqa: F401  (public: specdecode.cache_kwarg_name)
from .config import SpeculativeConfig
from .errors import ConfigError, SpecDecodeError, invalid
from .loop import Decoder, Result, Settings, select_hidden_states  # noqa: F401  (the conformance kit's)
from .processing import LogitsPipeline
from .proposer import Proposer, SamplingParams
from .registry import get_method
from .stats import GenerationStats
from .stopping import StopRules


@attrs.frozen(kw_only=True)
class GenerateOutput:
    """What :func:`generate` returns."""

    # [B, P + new]: each prompt as given (left padding kept), then its generated tokens, right-padded with the pad
    # token where a sequence stopped early (as transformers' batched generate returns them).
    sequences: torch.Tensor
    stats: GenerationStats  # the whole call; in a batch, counts are summed over sequences
    sequence_stats: list[GenerationStats] = attrs.field(factory=list)  # one per sequence (B == 1: [stats])
    # With output_scores / output_logits: one [B, V] tensor per generated position, as plain generate returns them
    # (processed scores / raw logits, float32). Rows that had stopped by then hold zeros.
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None


@functools.cache
def _output_class() -> type:
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    @dataclass
    class SpeculativeGenerateOutput(GenerateDecoderOnlyOutput):
        """transformers' ``GenerateDecoderOnlyOutput`` with specdecode's acceptance metrics and timings."""

        speculative_stats: GenerationStats | None = None
        sequence_stats: list[GenerationStats] | None = None

    return SpeculativeGenerateOutput


def build_proposer(model: Any, config: SpeculativeConfig) -> Proposer:
    """Instantiate the proposer of ``config.method`` for this target model."""
    spec = get_method(config.method).spec
    proposer = spec.factory(model, config, config.options)
    if not isinstance(proposer, Proposer):
        raise SpecDecodeError(
            f"the factory of method {config.method!r} returned {type(proposer).__name__}, not a specdecode.Proposer"
        )
    return proposer


@attrs.define(kw_only=True)
class _Run:
    """What :func:`generate` hands :func:`custom_generate` besides transformers' own arguments, and what it gets
    back."""

    config: SpeculativeConfig
    proposer: Proposer | None = None
    generator: torch.Generator | None = None
    tokenizer: Any = None
    streamer: Any = None
    max_new: list[int] | None = None  # a limit per sequence
    constraint: dict[str, Any] = attrs.field(factory=dict)  # json_schema / regex / grammar
    started: bool = False  # transformers' preparation is over: errors from here on are not argument errors
    output: GenerateOutput | None = None


# -- specdecode.generate ---------------------------------------------------------------------------------------


def generate(
    model: Any,
    input_ids: Any,
    config: SpeculativeConfig | dict | str | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int | Sequence[int] | None = None,
    tokenizer: Any = None,
    streamer: Any = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    proposer: Proposer | None = None,
    stop_strings: str | Sequence[str] | None = None,
    json_schema: dict | str | None = None,
    regex: str | None = None,
    grammar: str | None = None,
    **generation_kwargs: Any,
) -> GenerateOutput:
    """Generate with speculative decoding. Greedy output is identical to ``model.generate(do_sample=False)`` with
    the same arguments; sampled output follows the same distribution as ``model.generate(do_sample=True)`` (unless
    the lossy ``typical_acceptance_sampler`` is chosen).

    ``config`` may be a :class:`SpeculativeConfig`, a dict or a JSON string in vLLM's shape; ``None`` means
    ``SpeculativeConfig()`` (n-gram prompt lookup, K=5). Every argument of transformers' ``generate`` is taken and
    means what it means there: a ``generation_config``, ``logits_processor``, ``stopping_criteria``, and any
    ``GenerationConfig`` field as a keyword (``repetition_penalty``, ``no_repeat_ngram_size``, ``min_new_tokens``,
    ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``eos_token_id``, ``output_scores``, ...), the
    model's own ``generation_config`` filling in what is not given. ``max_new_tokens`` may also be one number per
    sequence; ``stop_strings`` need the ``tokenizer``; ``json_schema`` (a dict or JSON text), ``regex`` or
    ``grammar`` (EBNF) constrain the output (needs ``pip install 'specdecode[grammar]'`` and the tokenizer).
    ``seed`` or ``generator`` makes sampling reproducible. ``proposer`` replaces the one the config names (tests).

    A batch (``input_ids`` ``[B, T]``, B > 1) must be left-padded, with ``attention_mask`` marking the padding;
    ``input_ids`` may also be a tokenizer's output. See docs/batching.md.
    """
    config = _as_config(config)
    input_ids, attention_mask = _as_inputs(input_ids, attention_mask)
    batch = input_ids.shape[0]
    _check_generation_kwargs(model, generation_kwargs)
    _check_sampling(model, generation_kwargs)
    _refuse_modes(model, _requested(model, generation_kwargs))
    limits = _max_new_tokens(max_new_tokens, batch)
    if streamer is not None and batch > 1:
        raise invalid("streamer", type(streamer).__name__, "None when the batch size is above 1 (streamers take one sequence)")
    if generator is None and seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    criteria = list(generation_kwargs.pop("stopping_criteria", None) or [])
    stops = _stop_strings(stop_strings, model, tokenizer, generation_kwargs)
    if stops:
        from transformers.generation.stopping_criteria import StopStringCriteria

        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stops)))
    constraint = {k: v for k, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar)) if v is not None}
    run = _Run(config=config, proposer=proposer, generator=generator, tokenizer=tokenizer, streamer=streamer,
               max_new=None if isinstance(max_new_tokens, int) or max_new_tokens is None else limits,
               constraint=constraint)
    if max_new_tokens is not None:
        generation_kwargs["max_new_tokens"] = max(limits)
    from transformers import StoppingCriteriaList

    try:
        model.generate(
            input_ids,
            attention_mask=attention_mask,
            stopping_criteria=StoppingCriteriaList(criteria) if criteria else None,
            streamer=streamer,
            custom_generate=custom_generate,
            specdecode_run=run,
            **generation_kwargs,
        )
    except (ValueError, TypeError) as exc:
        if run.started or isinstance(exc, SpecDecodeError):
            raise
        # transformers refused an argument while preparing (its messages name it): one clear error, no traceback.
        raise ConfigError(f"invalid generation arguments: {exc}", field="generate", value=None) from None
    assert run.output is not None
    return run.output


# -- custom_generate -------------------------------------------------------------------------------------------


def custom_generate(
    model: Any,
    input_ids: torch.Tensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: Any,
    synced_gpus: bool = False,
    streamer: Any = None,
    speculative_config: SpeculativeConfig | dict | str | None = None,
    speculative_tokenizer: Any = None,
    json_schema: dict | str | None = None,
    regex: str | None = None,
    grammar: str | None = None,
    specdecode_run: _Run | None = None,
    **model_kwargs: Any,
) -> Any:
    """Speculative decoding as transformers' decoding loop::

        model.generate(**inputs, custom_generate=specdecode.custom_generate,
                       speculative_config={"method": "ngram", "num_speculative_tokens": 5}, max_new_tokens=64)

    Everything ``model.generate`` takes flows through (processors, stopping criteria, ``max_time``, streamer,
    ``return_dict_in_generate`` with ``output_scores`` / ``output_logits``, batches with an attention mask), and it
    returns what plain generate returns; with ``return_dict_in_generate=True`` the output also carries
    ``speculative_stats``. ``speculative_config``: what :class:`SpeculativeConfig` takes (default: ngram, K=5).
    ``json_schema`` / ``regex`` / ``grammar`` constrain the output; transformers does not pass ``tokenizer=`` on to
    a custom decoding function, so give it as ``speculative_tokenizer=`` (or the model must have been loaded from a
    local directory that holds its tokenizer).
    """
    run = specdecode_run
    if run is None:
        run = _Run(config=_as_config(speculative_config), tokenizer=speculative_tokenizer)
        run.constraint = {
            k: v for k, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar)) if v is not None
        }
    run.started = True
    # transformers 5 puts the prompt into the streamer itself, then does not pass the streamer on to a custom
    # decoding function: take it from the caller's arguments.
    streamer = run.streamer or streamer or _caller_argument("streamer")
    _refuse_unsupported(model, generation_config, logits_processor, model_kwargs, synced_gpus)
    result = _decode(model, input_ids, model_kwargs.get("attention_mask"), generation_config, logits_processor,
                     stopping_criteria, streamer, run)
    run.output = result
    if not generation_config.return_dict_in_generate:
        return result.sequences
    return _output_class()(
        sequences=result.sequences,
        scores=result.scores,
        logits=result.logits,
        speculative_stats=result.stats,
        sequence_stats=result.sequence_stats,
    )


def _decode(model, input_ids, attention_mask, generation_config, logits_processor, stopping_criteria, streamer,
            run: _Run) -> GenerateOutput:
    """The loop over prepared inputs: one Decoder over the batch, or one per sequence."""
    batch, width = input_ids.shape
    device = model.get_input_embeddings().weight.device  # inputs on another device (the CPU) join the model
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device, torch.long)
    check_left_padded(mask)
    max_length = generation_config.max_length
    limits = [max_length - width] * batch if run.max_new is None else [
        min(m, max_length - width) for m in run.max_new
    ]
    pad = _pad_id(generation_config)
    tokenizer = run.tokenizer
    if tokenizer is None and run.constraint:
        tokenizer = _local_tokenizer(model)
    proposer = run.proposer if run.proposer is not None else build_proposer(model, run.config)
    pipeline = LogitsPipeline(logits_processor, batch_size=batch)
    grammar = _compile_constraint(model, tokenizer, generation_config, run.constraint) if run.constraint else None
    sampling_params = SamplingParams(
        do_sample=bool(generation_config.do_sample),
        temperature=float(generation_config.temperature or 1.0),
        top_k=generation_config.top_k or None,
        top_p=generation_config.top_p if generation_config.top_p not in (None, 1.0) else None,
        logits_processor=pipeline,
    )

    def settings(rows: list[int], stream: Any) -> Settings:
        return Settings(
            sampling=sampling_params, pipeline=pipeline, pad=pad, grammar=grammar,
            rules=StopRules(stopping_criteria, [limits[b] for b in rows], width),
            output_scores=bool(generation_config.return_dict_in_generate and generation_config.output_scores),
            output_logits=bool(generation_config.return_dict_in_generate and generation_config.output_logits),
            tokenizer=tokenizer, streamer=stream, generator=run.generator, rows=rows,
        )

    results: list[tuple[Result, Decoder]] = []
    try:
        if batch == 1 or (type(proposer).supports_batch and not AttentionLayout.of(model).stateful):
            decoder = Decoder(model, run.config, proposer, settings(list(range(batch)), streamer))
            results.append((decoder.run(input_ids, mask), decoder))
        else:  # proposers that cannot batch, convolution / recurrent states: one sequence after another
            for b in range(batch):
                decoder = Decoder(model, run.config, proposer, settings([b], None))
                results.append((decoder.run(input_ids[b : b + 1], mask[b : b + 1]), decoder))
    finally:
        proposer.finish()
    return _assemble(input_ids, pad, results)


def _assemble(input_ids: torch.Tensor, pad: int, results: list[tuple[Result, Decoder]]) -> GenerateOutput:
    """Sequences (prompt + tokens, right-padded), scores, logits and stats from one run or one run per row."""
    tokens = [t for result, _ in results for t in result.tokens]
    longest = max(len(t) for t in tokens)
    new = torch.full((len(tokens), longest), pad, dtype=input_ids.dtype)
    for b, row in enumerate(tokens):
        new[b, : len(row)] = torch.tensor(row, dtype=input_ids.dtype)
    sequences = torch.cat([input_ids, new.to(input_ids.device)], dim=1)
    outputs = {}
    for name in ("scores", "logits"):
        rows = [r for result, _ in results for r in (getattr(result, name) or [])]
        if rows and any(rows):
            template = next(row[0] for row in rows if row)
            outputs[name] = tuple(
                torch.stack([row[t] if t < len(row) else torch.zeros_like(template) for row in rows])
                for t in range(longest)
            )
    if len(results) == 1:
        decoder = results[0][1]
        stats, per_sequence = decoder.stats, decoder.sequence_stats
    else:
        per_sequence = [decoder.stats for _, decoder in results]
        stats = per_sequence[0]
        for other in per_sequence[1:]:
            stats = stats.merge(other)
    return GenerateOutput(sequences=sequences, stats=stats, sequence_stats=per_sequence, **outputs)


# -- what cannot be speculative --------------------------------------------------------------------------------

_QUANTIZED_OR_OFFLOADED = ("quantized", "offloaded", "offloaded_static", "offloaded_hybrid", "offloaded_hybrid_chunked")


def _refuse_unsupported(model, generation_config, logits_processor, model_kwargs, synced_gpus) -> None:
    """Refuse, naming the argument and why, every setting this loop would otherwise ignore or get wrong."""
    _refuse_modes(model, generation_config)
    gc = generation_config

    def refuse(field: str, value: Any, allowed: str, why: str) -> None:
        raise ConfigError(f"'{field}' must be {allowed} (got {value!r}): {why}", field=field, value=value)

    if _caller_argument("assistant_model") is not None:
        refuse("assistant_model", "a model", "None", "that is transformers' own assisted decoding; give the "
               "draft as speculative_config={'method': 'draft_model', 'draft_model': ...}")
    if synced_gpus or _caller_argument("synced_gpus"):
        refuse("synced_gpus", True, "False", "the loop does not keep several processes in step")
    cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    if cache is not None and _filled(cache):
        refuse("past_key_values", "a filled cache", "None", "specdecode builds the cache from the prompt itself")
    for processor in logits_processor:
        if type(processor).__name__ == "UnbatchedClassifierFreeGuidanceLogitsProcessor":
            refuse("guidance_scale", gc.guidance_scale, "None or 1", "classifier-free guidance runs the model "
                   "again inside its logits processor")


def _refuse_modes(model: Any, gc: Any) -> None:
    """The generation modes that cannot be speculative, from generation settings ``gc`` (anything with the
    GenerationConfig attributes: transformers' prepared config, or the arguments of a call over the model's)."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(
            f"specdecode speculates on decoder-only causal LMs; {type(model).__name__} is an encoder-decoder model",
            field="model", value=type(model).__name__,
        )

    def refuse(field: str, value: Any, allowed: str, why: str) -> None:
        raise ConfigError(f"'{field}' must be {allowed} (got {value!r}): {why}", field=field, value=value)

    if (gc.num_beams or 1) > 1:
        refuse("num_beams", gc.num_beams, "1", "beam search keeps several hypotheses per sequence; speculative "
               "decoding verifies one continuation (use plain generate for beam search)")
    if getattr(gc, "penalty_alpha", None) and (gc.top_k or 0) > 1:
        refuse("penalty_alpha", gc.penalty_alpha, "None", "contrastive search re-ranks candidates with the model's "
               "hidden states at every step, which a verify pass does not reproduce")
    if getattr(gc, "dola_layers", None) is not None:
        refuse("dola_layers", gc.dola_layers, "None", "DoLa contrasts layers at every step")
    if gc.guidance_scale not in (None, 1, 1.0):
        refuse("guidance_scale", gc.guidance_scale, "None or 1", "classifier-free guidance runs a second, "
               "unconditional pass per token")
    if gc.prompt_lookup_num_tokens is not None:
        refuse("prompt_lookup_num_tokens", gc.prompt_lookup_num_tokens, "None", "that is transformers' own prompt "
               "lookup; speculation here is specdecode's (speculative_config={'method': 'ngram', ...})")
    if getattr(gc, "assistant_early_exit", None) is not None:
        refuse("assistant_early_exit", gc.assistant_early_exit, "None", "that is transformers' own "
               "self-speculation; use speculative_config={'method': 'layer_skip'}")
    if gc.return_dict_in_generate and (gc.output_attentions or gc.output_hidden_states):
        what = "output_attentions" if gc.output_attentions else "output_hidden_states"
        refuse(what, True, "False", "a verify pass reads several tokens at once, so there are no per-step "
               "attentions or hidden states to return")
    _check_cache_implementation(gc.cache_implementation)


def _check_cache_implementation(value: Any) -> None:
    if value in _QUANTIZED_OR_OFFLOADED:
        raise ConfigError(
            f"'cache_implementation' must be unset, 'dynamic', 'static', 'hybrid' or 'sliding_window' (got {value!r}): "
            "specdecode keeps its own cache on the model's device, which it rolls back after rejected drafts (a "
            "quantized cache would also change the output)",
            field="cache_implementation",
            value=value,
        )


def _filled(cache: Any) -> bool:
    """Whether a cache the caller handed over already holds positions (transformers' own fresh one does not)."""
    try:
        return cache.get_seq_length() > 0
    except (ValueError, StopIteration):  # a cache of recurrent layers only has no length to ask for
        return any(getattr(layer, "is_recurrent_states_initialized", {}).get(0) for layer in cache.layers)


def _caller_argument(name: str) -> Any:
    """An argument of the ``model.generate`` call that is running us (transformers does not pass every one on)."""
    frame = sys._getframe(1)
    for _ in range(6):
        frame = frame.f_back
        if frame is None:
            return None
        if frame.f_code.co_name == "generate" and "transformers" in frame.f_code.co_filename:
            return frame.f_locals.get(name)
    return None


# -- arguments -------------------------------------------------------------------------------------------------


def _as_config(config: SpeculativeConfig | dict | str | None) -> SpeculativeConfig:
    if config is None:
        return SpeculativeConfig()
    if isinstance(config, SpeculativeConfig):
        return config
    if isinstance(config, str):
        return SpeculativeConfig.from_json(config)
    if isinstance(config, dict):
        return SpeculativeConfig.from_dict(config)
    raise invalid("speculative_config", config, "a SpeculativeConfig, a dict or a JSON string")


def _as_inputs(input_ids: Any, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
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
    if attention_mask is not None:
        if attention_mask.dim() == 1:
            attention_mask = attention_mask.unsqueeze(0)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise invalid(
                "attention_mask", tuple(attention_mask.shape), f"the shape of input_ids {tuple(input_ids.shape)}"
            )
    return input_ids, attention_mask


_GENERATE_ARGUMENTS = {
    "generation_config", "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus",
    "assistant_model", "negative_prompt_ids", "negative_prompt_attention_mask", "use_model_defaults",
    "assistant_tokenizer", "trust_remote_code",
}


def _check_generation_kwargs(model: Any, kwargs: dict[str, Any]) -> None:
    """Every keyword must be a GenerationConfig field, an argument of ``generate`` or of the model's forward."""
    from transformers import GenerationConfig

    known = set(GenerationConfig().to_dict()) | _GENERATE_ARGUMENTS
    try:
        known |= set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        pass
    for key, value in kwargs.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{key!r} is not a generation setting (got {value!r}): specdecode.generate takes the arguments of "
                f"transformers' generate and the fields of GenerationConfig.{hint}",
                field=key,
                value=value,
            )


def _requested(model: Any, kwargs: dict[str, Any]) -> Any:
    """The generation settings a call asks for (its arguments over its generation_config or the model's), before
    transformers prepares them: transformers acts on some (beams expand the batch) before the loop could refuse."""
    from transformers import GenerationConfig

    base = kwargs.get("generation_config") or getattr(model, "generation_config", None) or GenerationConfig()
    settings = GenerationConfig.from_dict(base.to_dict())
    for key, value in kwargs.items():
        if hasattr(settings, key) and key != "generation_config":
            setattr(settings, key, value)
    return settings


def _check_sampling(model: Any, kwargs: dict[str, Any]) -> None:
    """The common sampling mistakes, in specdecode's words (transformers checks the rest)."""
    defaults = getattr(model, "generation_config", None)
    do_sample = kwargs.get("do_sample", getattr(defaults, "do_sample", False))
    temperature, top_k, top_p = kwargs.get("temperature"), kwargs.get("top_k"), kwargs.get("top_p")
    if do_sample and temperature is not None and not temperature > 0:
        raise invalid("temperature", temperature, "> 0 when sampling (use do_sample=False for greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise invalid("top_k", top_k, "an integer >= 0 (0 disables it)")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise invalid("top_p", top_p, "a number in (0, 1]")


def _max_new_tokens(max_new_tokens: int | Sequence[int] | None, batch: int) -> list[int]:
    """One limit per sequence: a number for all, or a list with one entry per prompt ([] when not given)."""
    if max_new_tokens is None:
        return []
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
            allowed = "a list of integers >= 1" if isinstance(max_new_tokens, (list, tuple)) else "an integer >= 1"
            raise invalid("max_new_tokens", max_new_tokens, allowed)
    return limits


def _stop_strings(stop_strings: Any, model: Any, tokenizer: Any, kwargs: dict[str, Any]) -> tuple[str, ...]:
    """The stop strings of this call (its own, else the model's generation_config's), which specdecode turns into
    transformers' StopStringCriteria itself: transformers does not pass the tokenizer on to a custom decoding
    function, so it must not see them."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    if stop_strings is None:
        stop_strings = getattr(config, "stop_strings", None)
    if getattr(config, "stop_strings", None) is not None:
        config = config.__class__.from_dict(config.to_dict())  # a copy without them
        config.stop_strings = None
        kwargs["generation_config"] = config
    if stop_strings is None:
        return ()
    stops = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    if not stops or any(not isinstance(s, str) or not s for s in stops):
        raise invalid("stop_strings", stop_strings, "a non-empty string or a list of non-empty strings")
    if tokenizer is None:
        raise ConfigError(
            "'stop_strings' needs the target's tokenizer: pass tokenizer=... to generate()",
            field="stop_strings",
            value=stop_strings,
        )
    return stops


def _pad_id(generation_config: Any) -> int:
    """The token that right-pads stopped sequences, as transformers prepared it (its pad token, else eos)."""
    pad = generation_config._pad_token_tensor
    if pad is None:
        return 0
    return int(pad.flatten()[0]) if isinstance(pad, torch.Tensor) else int(pad)


def _local_tokenizer(model: Any) -> Any:
    """The model's tokenizer from the local directory it was loaded from (never a hub download), or None."""
    import os

    path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not path or not os.path.isdir(path):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def _compile_constraint(model: Any, tokenizer: Any, generation_config: Any, constraint: dict[str, Any]) -> Any:
    from .grammar import compile_constraint, model_vocab_size

    if tokenizer is None:
        raise ConfigError(
            f"'{next(iter(constraint))}' needs the target's tokenizer: pass tokenizer=... to specdecode.generate "
            "(or speculative_tokenizer=... to model.generate with custom_generate)",
            field=next(iter(constraint)),
            value=None,
        )
    eos = generation_config._eos_token_tensor
    stop_ids = None if eos is None else tuple(int(t) for t in eos.flatten().tolist())
    return compile_constraint(tokenizer, vocab_size=model_vocab_size(model), stop_token_ids=stop_ids, **constraint)
