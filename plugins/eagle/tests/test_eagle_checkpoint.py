"""Loading heads: our own format, the EAGLE authors' format (synthetic checkpoint), and the errors."""

import json

import attrs
import pytest
import specdecode
import torch
from safetensors.torch import save_file
from specdecode import ConfigError
from specdecode.testing import tiny_llama
from specdecode_eagle import EagleOptions, load_drafter
from specdecode_eagle.checkpoint import HEAD_CONFIG, HEAD_WEIGHTS, check_fits_target, load_head, save_head
from specdecode_eagle.head import EagleHead, HeadConfig

torch.set_num_threads(1)  # tiny models: a second thread only adds contention
VOCAB, HIDDEN = 40, 32


@pytest.fixture(scope="module")
def target():
    return tiny_llama(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=1, seed=2)


def _head(target, seed=0, **changes):
    torch.manual_seed(seed)
    return EagleHead(attrs.evolve(HeadConfig.from_target(target.config), **changes)).eval()


def _features(head, target):
    """The head's output on a fixed input: equal outputs mean equal weights and wiring."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 6, HIDDEN, generator=g)
    tokens = torch.randint(0, VOCAB, (1, 6), generator=g)
    with torch.no_grad():
        return head(target.get_input_embeddings()(tokens), hidden, torch.arange(6).unsqueeze(0))


def eagle_authors_config(c, **fields):
    """The Llama config.json the EAGLE authors publish with a head of layer shape ``c`` (a HeadConfig), plus
    ``fields`` (EAGLE-3 adds draft_vocab_size)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "num_hidden_layers": 1,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "vocab_size": c.vocab_size,
        "hidden_act": "silu",
        "torch_dtype": "float16",
        **fields,
    }


def _eagle_authors_checkpoint(directory, head, target, *, bin_file=False, extra=None):
    """Write ``head`` the way SafeAILab/EAGLE publishes heads: a Llama config.json and weights with their names,
    including the copy of the embedding that vLLM skips."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(eagle_authors_config(head.config)))
    weights = {k: v.clone() for k, v in head.state_dict().items()}
    weights["embed_tokens.weight"] = target.get_input_embeddings().weight.detach().clone()
    weights.update(extra or {})
    if bin_file:
        torch.save(weights, directory / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in weights.items()}, directory / "model.safetensors")
    return directory


def test_eagle_authors_key_names_are_ours(target):
    keys = set(_head(target).state_dict())
    assert keys == {
        "fc.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.0.self_attn.k_proj.weight",
        "layers.0.self_attn.v_proj.weight",
        "layers.0.self_attn.o_proj.weight",
        "layers.0.mlp.gate_proj.weight",
        "layers.0.mlp.up_proj.weight",
        "layers.0.mlp.down_proj.weight",
        "layers.0.post_attention_layernorm.weight",
    }  # no input_layernorm (EAGLE drops it), no embedding or LM head


def test_own_format_round_trip_with_draft_vocab(tmp_path, target):
    head = _head(target)
    vocab = torch.tensor([0, 3, 5, 7, 11])
    save_head(head, tmp_path / "h", draft_vocab=vocab, dtype=torch.float32, meta={"target": "tiny"})
    assert (tmp_path / "h" / HEAD_CONFIG).is_file() and (tmp_path / "h" / HEAD_WEIGHTS).is_file()
    loaded = load_head(tmp_path / "h")
    assert torch.equal(loaded.draft_vocab, vocab) and loaded.meta["target"] == "tiny"
    torch.testing.assert_close(_features(loaded.head, target), _features(head, target))


def test_fp16_save_is_close(tmp_path, target):
    head = _head(target)
    save_head(head, tmp_path / "h")  # default dtype float16, loaded back as float32
    loaded = load_head(tmp_path / "h")
    assert loaded.head.fc.weight.dtype == torch.float32
    torch.testing.assert_close(_features(loaded.head, target), _features(head, target), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("bin_file", [False, True])
def test_eagle_authors_format_loads(tmp_path, target, bin_file):
    head = _head(target, fc_bias=False)
    directory = _eagle_authors_checkpoint(tmp_path / "eagle", head, target, bin_file=bin_file)
    loaded = load_head(directory)
    assert loaded.meta["format"] == "eagle" and loaded.draft_vocab is None
    torch.testing.assert_close(_features(loaded.head, target), _features(head, target))


def test_eagle_authors_format_with_fc_bias(tmp_path, target):
    """EAGLE-1's own code builds fc with a bias; the loader picks that up from the weights."""
    biased = _head(target, fc_bias=True)
    directory = _eagle_authors_checkpoint(tmp_path / "eagle", biased, target)
    loaded = load_head(directory)
    assert loaded.head.config.fc_bias
    torch.testing.assert_close(_features(loaded.head, target), _features(biased, target))


def test_eagle_authors_head_generates_through_the_config(tmp_path, target):
    directory = _eagle_authors_checkpoint(tmp_path / "eagle", _head(target), target)
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))
    expected = target.generate(ids, max_new_tokens=12, do_sample=False)
    for config in ({"method": "eagle", "model": str(directory)},  # vLLM's spelling
                   {"method": "eagle", "method_options": {"head": str(directory)}}):
        out = specdecode.generate(target, ids, config, max_new_tokens=12)
        assert torch.equal(out.sequences, expected)


def test_hidden_size_mismatch_names_both_shapes(tmp_path, target):
    other = tiny_llama(vocab_size=VOCAB, hidden_size=48, num_layers=1, num_heads=4, num_kv_heads=2)
    directory = _eagle_authors_checkpoint(tmp_path / "eagle", _head(other), other)
    with pytest.raises(ConfigError) as err:
        check_fits_target(load_head(directory), target)
    message = str(err.value)
    assert "hidden_size 48" in message and "fc.weight [48, 96]" in message
    assert f"[{VOCAB}, {HIDDEN}]" in message  # the target's embedding


def test_vocab_mismatch_names_both_sizes(tmp_path, target):
    other = tiny_llama(vocab_size=VOCAB + 10, hidden_size=HIDDEN, num_layers=1)
    save_head(_head(other), tmp_path / "h")
    with pytest.raises(ConfigError, match=rf"vocab_size {VOCAB + 10}.*{VOCAB} tokens"):
        load_drafter(target, tmp_path / "h")


def test_weights_that_contradict_the_config_are_named(tmp_path, target):
    head = _head(target)
    bad = {"fc.weight": torch.zeros(HIDDEN, 3 * HIDDEN)}
    directory = _eagle_authors_checkpoint(tmp_path / "eagle", head, target, extra=bad)
    with pytest.raises(ConfigError, match=r"fc.weight has shape \[32, 96\].*needs \[32, 64\]"):
        load_head(directory)


def test_embedding_copy_with_the_wrong_vocab_is_rejected(tmp_path, target):
    directory = _eagle_authors_checkpoint(
        tmp_path / "eagle", _head(target), target, extra={"embed_tokens.weight": torch.zeros(VOCAB + 1, HIDDEN)}
    )
    with pytest.raises(ConfigError, match=rf"embed_tokens.weight has shape \[{VOCAB + 1}, {HIDDEN}\]"):
        load_head(directory)


def test_eagle3_and_unknown_directories_are_rejected(tmp_path, target):
    directory = _eagle_authors_checkpoint(
        tmp_path / "eagle3", _head(target), target, extra={"d2t": torch.zeros(VOCAB, dtype=torch.long)}
    )
    with pytest.raises(ConfigError, match="EAGLE-3"):
        load_head(directory)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="'head' must be a directory"):
        load_head(tmp_path / "empty")


def test_no_head_for_another_target_is_a_clear_error(target):
    with pytest.raises(ConfigError, match="built-in head fits SmolLM2-135M-Instruct only"):
        specdecode.generate(target, torch.tensor([[1, 2, 3]]), {"method": "eagle"}, max_new_tokens=4)


def test_options_are_validated(target, tmp_path):
    with pytest.raises(ConfigError, match="method_options.head"):
        specdecode.SpeculativeConfig(method="eagle", method_options={"head": 3})
    with pytest.raises(ConfigError, match="Unknown option 'heads'"):
        specdecode.SpeculativeConfig(method="eagle", method_options={"heads": "x"})
    config = specdecode.SpeculativeConfig(method="eagle", draft_model="a", method_options={"head": "b"})
    with pytest.raises(ConfigError, match="two heads"):
        specdecode.build_proposer(target, config)
    assert EagleOptions().head is None
