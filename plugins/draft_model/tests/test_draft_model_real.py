"""The plugin on the embedded real models (slow: run with -m real_model)."""

from __future__ import annotations

import pytest
import specdecode
import torch

pytestmark = pytest.mark.real_model

NEW = 20


@pytest.fixture(scope="module")
def smol():
    from specdecode import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def gemma():
    from specdecode import load_model

    return load_model("gemma3-270m")


def chat_prompt(tokenizer, question: str) -> torch.Tensor:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return tokenizer(f"Question: {question}\nAnswer:", return_tensors="pt").input_ids


def test_layer_skip_on_smollm2_is_exact(smol):
    model, tokenizer = smol
    prompt = chat_prompt(tokenizer, "Name three primary colors.")
    config = specdecode.SpeculativeConfig(method="layer_skip", method_options={"num_layers": 15})
    out = specdecode.generate(model, prompt, config, max_new_tokens=NEW, tokenizer=tokenizer)
    assert torch.equal(out.sequences, model.generate(prompt, max_new_tokens=NEW, do_sample=False))
    assert out.stats.accepted > 0


def test_cross_tokenizer_gemma_target_smollm2_draft_is_exact(smol, gemma):
    draft, draft_tokenizer = smol
    model, tokenizer = gemma
    prompt = chat_prompt(tokenizer, "What is the capital of France?")
    config = specdecode.SpeculativeConfig(
        method="draft_model", draft_model=draft, method_options={"draft_tokenizer": draft_tokenizer}
    )
    with pytest.warns(UserWarning, match="10-20x"):
        out = specdecode.generate(model, prompt, config, max_new_tokens=NEW, tokenizer=tokenizer)
    assert torch.equal(out.sequences, model.generate(prompt, max_new_tokens=NEW, do_sample=False))
    assert out.stats.accepted > 0


def test_gemma_with_smollm2_draft_without_cross_mode_is_refused(smol, gemma):
    model, tokenizer = gemma
    config = specdecode.SpeculativeConfig(method="draft_model", draft_model="smollm2-135m")
    with pytest.raises(specdecode.ConfigError, match="draft_tokenizer"):
        specdecode.generate(
            model, chat_prompt(tokenizer, "Hi"), config, max_new_tokens=4, tokenizer=tokenizer
        )
