"""layer_skip: the target's first N layers + final norm + LM head draft, sharing the target's weights."""

from __future__ import annotations

import pytest
import specdecode
import torch
from draft_model_helpers import plain_greedy, prompts, speculative
from specdecode.testing import tiny_llama
from specdecode_draft_model.layer_skip import truncated_view

VOCAB = 64
NEW = 24


@pytest.fixture(scope="module")
def target():
    return tiny_llama(vocab_size=VOCAB, num_layers=4, seed=0)


def tiny_gemma(num_layers: int = 4, seed: int = 0):
    """Gemma 3 style: sliding-window layers (window 4, so generation runs far past it) and one full layer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=4,
        layer_types=["sliding_attention"] * (num_layers - 1) + ["full_attention"],
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(config)
    model.generation_config.do_sample = False
    return model.eval()


def test_view_shares_weights_and_leaves_the_target_alone(target):
    draft = truncated_view(target, 2)
    assert len(draft.model.layers) == 2 and draft.config.num_hidden_layers == 2
    assert len(target.model.layers) == 4 and target.config.num_hidden_layers == 4
    assert draft.lm_head.weight is target.lm_head.weight
    assert draft.model.embed_tokens.weight is target.model.embed_tokens.weight
    assert draft.model.norm is target.model.norm
    assert all(a is b for a, b in zip(draft.model.layers, target.model.layers))


@pytest.mark.parametrize("num_layers", [1, 3])
def test_view_computes_final_norm_and_head_over_the_first_layers(target, num_layers):
    ids = prompts(VOCAB, count=1)[0]
    with torch.inference_mode():
        hidden = target(ids, output_hidden_states=True).hidden_states[num_layers]  # after layer num_layers
        expected = target.lm_head(target.model.norm(hidden))
        got = truncated_view(target, num_layers)(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_greedy_output_equals_plain_generate(target, num_layers):
    for prompt in prompts(VOCAB, count=2, seed=num_layers):
        out = speculative(target, prompt, NEW, method="layer_skip", method_options={"num_layers": num_layers})
        assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))
        assert out.stats.drafted > 0


def test_default_is_half_the_layers(target):
    proposer = specdecode.build_proposer(target, specdecode.SpeculativeConfig(method="layer_skip"))
    assert proposer.draft_model.config.num_hidden_layers == 2


@pytest.mark.parametrize("num_layers", [4, 9])
def test_num_layers_must_leave_a_layer_out(target, num_layers):
    config = specdecode.SpeculativeConfig(method="layer_skip", method_options={"num_layers": num_layers})
    with pytest.raises(specdecode.ConfigError, match="between 1 and 3") as info:
        specdecode.build_proposer(target, config)
    assert info.value.field == "method_options.num_layers"


def test_num_layers_is_validated_with_the_config():
    with pytest.raises(specdecode.ConfigError) as info:
        specdecode.SpeculativeConfig(method="layer_skip", method_options={"num_layers": 0})
    assert info.value.field == "method_options.num_layers"


def test_sliding_window_models_roll_back_past_the_window():
    """Gemma 3 style caches forget beyond the window; rejected drafts must still roll back exactly."""
    target = tiny_gemma()
    prompt = prompts(VOCAB, count=1)[0]
    expected = plain_greedy(target, prompt, 30)
    skip = speculative(
        target, prompt, 30, method="layer_skip", method_options={"num_layers": 2}, num_speculative_tokens=3
    )
    assert torch.equal(skip.sequences, expected)
    other = speculative(target, prompt, 30, method="draft_model", draft_model=tiny_gemma(2, seed=1))
    assert torch.equal(other.sequences, expected)
    assert skip.stats.drafted - skip.stats.accepted > 3 and other.stats.drafted - other.stats.accepted > 3
