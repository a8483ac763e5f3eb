"""Helpers shared by the draft_model tests (imported by module name, hence the unique name)."""

from __future__ import annotations

import specdecode
import torch
from specdecode.testing import char_tokenizer, tiny_llama  # noqa: F401  (char_tokenizer: re-exported for the tests)


def prompts(vocab_size: int, count: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (1, 6 + 3 * i), generator=g) for i in range(count)]


def plain_greedy(model, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    return model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)


def speculative(model, prompt: torch.Tensor, max_new_tokens: int, **config) -> specdecode.GenerateOutput:
    config.setdefault("num_speculative_tokens", 4)
    tokenizer = config.pop("tokenizer", None)
    return specdecode.generate(
        model,
        prompt,
        specdecode.SpeculativeConfig(**config),
        max_new_tokens=max_new_tokens,
        tokenizer=tokenizer,
    )


def permuted_copy(model, permutation: torch.Tensor):
    """The same model under renumbered token ids: new id ``i`` is old id ``permutation[i]``."""
    copy = tiny_llama(
        vocab_size=model.config.vocab_size,
        hidden_size=model.config.hidden_size,
        num_layers=model.config.num_hidden_layers,
        num_heads=model.config.num_attention_heads,
        num_kv_heads=model.config.num_key_value_heads,
    )
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight[permutation])
        copy.lm_head.weight.copy_(model.lm_head.weight[permutation])
    return copy.eval()


def sharpen(model, factor: float):
    """Scale the LM head so that the model's distributions are far from uniform (and differ between seeds)."""
    with torch.no_grad():
        model.lm_head.weight.mul_(factor)
    return model
