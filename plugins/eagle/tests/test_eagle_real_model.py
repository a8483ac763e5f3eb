"""The shipped heads on the embedded SmolLM2-135M-Instruct: load by default, stay lossless, draft useful tokens."""

import pytest
import specdecode
import torch

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    from specdecode import load_model

    return load_model("smollm2-135m")


@pytest.mark.parametrize(("method", "question"), [
    ("eagle", "List three facts about the Moon."),  # the shipped EAGLE-1 head
    ("eagle3", "Explain why the sky is blue in two sentences."),  # the shipped EAGLE-3 head (speculators format)
])
def test_shipped_head_is_the_default_and_greedy_stays_identical(smollm2, method, question):
    model, tokenizer = smollm2
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False)
    out = specdecode.generate(model, ids, {"method": method, "num_speculative_tokens": 5}, max_new_tokens=40)
    assert torch.equal(out.sequences, expected)
    assert out.stats.mean_acceptance_length > 1.1  # a random head stays at about 1.0
