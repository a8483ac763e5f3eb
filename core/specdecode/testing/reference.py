"""What speculative output is compared with: plain ``model.generate`` and the target's exact distribution.

The exact distribution is computed with transformers' own logits warpers, so a test never grades specdecode's
sampling code with itself.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from typing import Any

import torch


def plain_greedy(model: Any, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None):
    """Plain ``model.generate(do_sample=False)`` output ``[1, T + new]``, the reference for greedy equality.

    Remembered per model object, so several methods checked against the same tiny model share the work.
    """
    key = (id(model), tuple(input_ids.flatten().tolist()), max_new_tokens, eos_token_id)
    cached = _PLAIN_CACHE.get(key)
    if cached is not None and cached[0] is model:
        return cached[1].clone()
    output = _plain_generate(model, input_ids, max_new_tokens, eos_token_id)
    if len(_PLAIN_CACHE) > 512:
        _PLAIN_CACHE.clear()
    _PLAIN_CACHE[key] = (model, output)
    return output.clone()


_PLAIN_CACHE: dict[tuple, tuple[Any, torch.Tensor]] = {}


def _plain_generate(model: Any, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None):
    kwargs: dict[str, Any] = {}
    if eos_token_id is not None:
        kwargs = {"eos_token_id": eos_token_id, "pad_token_id": eos_token_id}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # transformers warns about unset pad tokens and generation flags
        return model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            **kwargs,
        )


def hf_warpers(sampling: Mapping[str, Any]) -> list:
    """transformers' processors for ``sampling`` (``repetition_penalty``, ``no_repeat_ngram_size``, the user's
    ``logits_processor``, then the warpers ``temperature`` / ``top_k`` / ``top_p`` / ``min_p``), built from its
    classes in the order ``generate`` applies them, so the reference never shares code with specdecode."""
    from transformers import (
        MinPLogitsWarper,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors: list = []
    if sampling.get("repetition_penalty") not in (None, 1.0):
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=float(sampling["repetition_penalty"])))
    if sampling.get("no_repeat_ngram_size"):
        processors.append(NoRepeatNGramLogitsProcessor(int(sampling["no_repeat_ngram_size"])))
    processors += list(sampling.get("logits_processor") or [])
    temperature = float(sampling.get("temperature", 1.0))
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if sampling.get("top_k"):
        processors.append(TopKLogitsWarper(int(sampling["top_k"])))
    if sampling.get("top_p") is not None and float(sampling["top_p"]) < 1.0:
        processors.append(TopPLogitsWarper(float(sampling["top_p"])))
    if sampling.get("min_p") is not None:
        processors.append(MinPLogitsWarper(float(sampling["min_p"])))
    return processors


def target_probs(model: Any, input_ids: torch.Tensor, sampling: Mapping[str, Any]) -> torch.Tensor:
    """The target's processed next-token distribution after every position: ``[B, T]`` ids -> ``[B, T, V]``.
    Position t is processed with the tokens up to it, as plain generate processes the token it picks there."""
    with torch.inference_mode():
        logits = model(input_ids=input_ids).logits.float()  # [B, T, V]
    processors = hf_warpers(sampling)
    columns = []
    for t in range(logits.shape[1]):
        scores = logits[:, t]
        for processor in processors:
            scores = processor(input_ids[:, : t + 1], scores)
        columns.append(scores.softmax(dim=-1))
    return torch.stack(columns, dim=1)


def exact_continuations(
    model: Any, prompt: torch.Tensor, num_tokens: int, sampling: Mapping[str, Any]
) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Every continuation of ``num_tokens`` tokens after ``prompt`` ``[1, T]`` and its exact probability.

    Enumerates all V ** num_tokens continuations, so keep V and num_tokens small. Returns the continuations in
    lexicographic order and their probabilities ``[V ** num_tokens]`` (summing to 1).
    """
    vocab = int(model.config.vocab_size)
    prefixes: list[tuple[int, ...]] = [()]
    prob_of = {(): 1.0}
    for _ in range(num_tokens):
        batch = torch.tensor([list(prompt[0].tolist()) + list(p) for p in prefixes], dtype=torch.long,
                             device=prompt.device)
        next_probs = target_probs(model, batch, sampling)[:, -1].double()  # [len(prefixes), V]
        grown = []
        for row, prefix in enumerate(prefixes):
            for token in range(vocab):
                grown.append(prefix + (token,))
                prob_of[prefix + (token,)] = prob_of[prefix] * float(next_probs[row, token])
        prefixes = grown
    continuations = list(itertools.product(range(vocab), repeat=num_tokens))
    probs = torch.tensor([prob_of[c] for c in continuations], dtype=torch.float64)
    return continuations, probs / probs.sum()
