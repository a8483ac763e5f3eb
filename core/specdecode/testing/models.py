"""Tiny random causal LMs built in-process (no files, no network) and prompts for them."""

from __future__ import annotations

from typing import Any

import torch


def testing_device() -> torch.device:
    """Where the conformance kit and the architecture matrix put their tiny models: ``$SPECDECODE_TEST_DEVICE``
    (e.g. ``cuda``; scripts/gpu_check.sh sets it), else the CPU."""
    import os

    return torch.device(os.environ.get("SPECDECODE_TEST_DEVICE", "cpu"))


def testing_dtype() -> torch.dtype:
    """The dtype of the architecture matrix's models: ``$SPECDECODE_TEST_DTYPE`` (``bfloat16``, ``float16``),
    else float32."""
    import os

    return getattr(torch, os.environ.get("SPECDECODE_TEST_DTYPE", "float32"))


def tiny_llama(
    vocab_size: int = 64,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    *,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    **config_overrides: Any,
):
    """A randomly initialised Llama-architecture model in fp32 eval mode, deterministic for a given seed.

    No eos token by default, so generation always runs to ``max_new_tokens``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
        **config_overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.do_sample = False
    return model.eval()


def repetitive_prompts(vocab_size: int, count: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Prompts ``[1, T]`` built from repeated chunks, so that n-gram lookups fire often; plus a few random ones."""
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(count):
        if i % 4 == 3:
            prompts.append(torch.randint(0, vocab_size, (1, 12 + i), generator=g))
        else:
            chunk = torch.randint(0, vocab_size, (1, 3 + i % 5), generator=g)
            prompts.append(chunk.repeat(1, 3 + i % 3))
    return prompts


def char_tokenizer(alphabet: str, *, merges: tuple[str, ...] = ()):
    """A fast tokenizer built in memory: one token per character of ``alphabet`` (ids in that order), plus
    merged tokens for ``merges`` (two-character strings); decoding concatenates. No files, no downloads."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(alphabet)}
    for pair in merges:
        vocab[pair] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[(p[0], p[1]) for p in merges]))
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)
