"""The shipped head on the embedded SmolLM2-135M-Instruct: loads by default, stays lossless, drafts useful tokens."""

import pytest
import specdecode
import torch

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    from specdecode import load_model

    return load_model("smollm2-135m")


def test_shipped_head_is_the_default_and_greedy_stays_identical(smollm2):
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "List three facts about the Moon."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False)
    out = specdecode.generate(model, ids, {"method": "eagle", "num_speculative_tokens": 5}, max_new_tokens=40)
    assert torch.equal(out.sequences, expected)
    assert out.stats.mean_acceptance_length > 1.1  # a random head stays at about 1.0


def test_shipped_eagle3_head_is_the_default_and_greedy_stays_identical(smollm2):
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "Explain why the sky is blue in two sentences."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False)
    out = specdecode.generate(model, ids, {"method": "eagle3", "num_speculative_tokens": 5}, max_new_tokens=40)
    assert torch.equal(out.sequences, expected)
    assert out.stats.mean_acceptance_length > 1.1  # a random head stays at about 1.0
