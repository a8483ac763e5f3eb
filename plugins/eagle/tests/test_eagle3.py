"""EAGLE-3 heads: the speculators format (round trip, the fields vLLM reads), the forward pass against an independent
reference of vLLM's ``llama_eagle3.py``, the EAGLE authors' EAGLE-3 layout, and the loaders' errors."""

import json

import pytest
import specdecode
import torch
from safetensors.torch import load_file, save_file
from specdecode import ConfigError
from specdecode.testing import tiny_llama
from specdecode_eagle import load_eagle3_drafter
from specdecode_eagle.checkpoint import head_format, load_head, save_head
from specdecode_eagle.eagle3 import Eagle3Drafter, default_aux_layers, random_eagle3_head
from specdecode_eagle.eagle3_checkpoint import load_eagle3_head, save_speculators
from specdecode_eagle.head import random_head
from test_eagle_checkpoint import eagle_authors_config

torch.set_num_threads(1)  # tiny models: a second thread only adds contention
VOCAB, HIDDEN, LAYERS = 40, 32, 4
DRAFT_VOCAB = [0, 3, 5, 7, 11, 12, 30, 39]  # lm_head row i scores the i-th of these
AUX = (1, 2, 3)


@pytest.fixture(scope="module")
def target():
    return tiny_llama(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, seed=2)


def _head(target, seed=0, draft_vocab=DRAFT_VOCAB, **changes):
    return random_eagle3_head(target.config, std=0.3, seed=seed, draft_vocab=draft_vocab,
                              **{"aux_layer_ids": AUX, **changes})


# -- the format ------------------------------------------------------------------------------------------


def test_state_dict_keys_are_vllms_and_d2t_is_an_offset(target):
    head = _head(target)
    assert set(head.state_dict()) == {
        "fc.weight",
        "layers.0.hidden_norm.weight",
        "layers.0.input_layernorm.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.0.self_attn.k_proj.weight",
        "layers.0.self_attn.v_proj.weight",
        "layers.0.self_attn.o_proj.weight",
        "layers.0.post_attention_layernorm.weight",
        "layers.0.mlp.gate_proj.weight",
        "layers.0.mlp.up_proj.weight",
        "layers.0.mlp.down_proj.weight",
        "norm.weight",
        "lm_head.weight",
        "d2t",
        "t2d",
    }
    state = head.state_dict()
    assert state["fc.weight"].shape == (HIDDEN, 3 * HIDDEN)
    assert state["layers.0.self_attn.q_proj.weight"].shape == (HIDDEN, 2 * HIDDEN)  # [embedding ; hidden]
    assert state["lm_head.weight"].shape == (len(DRAFT_VOCAB), HIDDEN)
    # speculators' vocab mapping: d2t = selected ids - arange(D), t2d marks them.
    assert state["d2t"].dtype == torch.int64 and state["t2d"].dtype == torch.bool
    assert state["d2t"].tolist() == [t - i for i, t in enumerate(DRAFT_VOCAB)]
    assert state["t2d"].nonzero().flatten().tolist() == DRAFT_VOCAB
    assert head.draft_token_ids().tolist() == DRAFT_VOCAB
    # A full draft vocabulary has no mapping, as speculators saves it; the variants add their norms.
    full = _head(target, draft_vocab=None, norm_before_fc=True).state_dict()
    assert "d2t" not in full and "t2d" not in full and full["input_norm.weight"].shape == (3 * HIDDEN,)
    assert {"fc_norm.0.weight", "fc_norm.2.weight"} <= set(_head(target, fc_norm=True).state_dict())


VARIANTS = {
    "residual-after-norm": {"norm_before_residual": False},
    "residual-before-norm": {"norm_before_residual": True},
    "full-vocab-fc-norm-norm-output": {"draft_vocab": None, "fc_norm": True, "norm_output": True},
    "norm-before-fc-default-aux": {"norm_before_fc": True, "aux_layer_ids": None},
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_speculators_round_trip(tmp_path, target, variant):
    head = _head(target, **variant)
    save_speculators(head, tmp_path / "h", verifier="tiny-llama", speculative_tokens=4)
    loaded = load_eagle3_head(tmp_path / "h")
    assert loaded.format == "speculators" and loaded.head.config == head.config
    original, back = head.state_dict(), loaded.head.state_dict()
    assert set(original) == set(back)
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


def test_speculators_config_has_what_vllm_reads(tmp_path, target):
    save_speculators(_head(target, norm_before_residual=True), tmp_path, verifier="tiny-llama", speculative_tokens=4,
                     dtype=torch.float16)
    raw = json.loads((tmp_path / "config.json").read_text())
    # vLLM treats a config as speculators' when model_type is absent and speculators_config is present.
    assert "model_type" not in raw and raw["speculators_model_type"] == "eagle3"
    spec = raw["speculators_config"]
    assert spec["algorithm"] == "eagle3" and spec["proposal_methods"][0]["speculative_tokens"] == 4
    assert spec["default_proposal_method"] == spec["proposal_methods"][0]["proposal_type"] == "greedy"
    assert spec["verifier"] == {"name_or_path": "tiny-llama", "architectures": []}
    layer = raw["transformer_layer_config"]
    assert layer["model_type"] == "llama" and layer["num_hidden_layers"] == 1
    assert (layer["vocab_size"], layer["hidden_size"], layer["num_key_value_heads"]) == (VOCAB, HIDDEN, 2)
    assert layer["rope_theta"] == layer["rope_parameters"]["rope_theta"]
    assert raw["draft_vocab_size"] == len(DRAFT_VOCAB) and raw["eagle_aux_hidden_state_layer_ids"] == list(AUX)
    assert raw["norm_before_residual"] is True  # always written: vLLM reads a missing one as true
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["fc.weight"].dtype == torch.float16 and tensors["d2t"].dtype == torch.int64
    assert "embed_tokens.weight" not in tensors  # the target's embedding is used


def test_missing_norm_before_residual_reads_as_vllm_does(tmp_path, target):
    save_speculators(_head(target, norm_before_residual=False), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["norm_before_residual"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert load_eagle3_head(tmp_path).head.config.norm_before_residual is True


def test_llama3_rope_survives_the_round_trip(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 512}
    target = tiny_llama(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, rope_parameters=rope)
    head = _head(target)
    assert head.config.layer.rope_parameters == rope
    save_speculators(head, tmp_path)
    layer = json.loads((tmp_path / "config.json").read_text())["transformer_layer_config"]
    assert layer["rope_scaling"]["rope_type"] == "llama3" and layer["rope_theta"] == 500000.0  # transformers 4 keys
    assert load_eagle3_head(tmp_path).head.config == head.config


# -- the forward pass against vLLM's ------------------------------------------------------------------------


def _rms(x, weight, eps):
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x, positions, theta):
    """Neox-style RoPE (vLLM's get_rope for Llama): x [T, heads, d]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    angles = positions[:, None].float() * inv_freq[None]  # [T, d/2]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _vllm_eagle3(w, raw, target, aux, tokens, drafts):
    """An independent reading of vLLM's llama_eagle3.py in plain torch: fc (``combine_hidden_states``) over the
    aux states of the n real positions, then the model over the real positions followed by ``drafts`` chained
    draft steps (each feeds back the previous position's second output, as vLLM's proposer does); every position
    attends causally to the ones before it (vLLM's KV cache). ``w`` holds the file's tensors renamed as vLLM's
    load_weights does. Returns compute_logits: [n + drafts, V], -inf outside the draft vocabulary."""
    layer = raw["transformer_layer_config"]
    eps, theta = layer["rms_norm_eps"], layer["rope_parameters"]["rope_theta"]
    heads, kv_heads, dim = layer["num_attention_heads"], layer["num_key_value_heads"], layer["head_dim"]
    p = "model.layers.0."
    if raw["norm_before_fc"]:
        aux = _rms(aux, w["model.input_norm.weight"], eps)
    if raw["fc_norm"]:
        chunks = aux.chunk(3, dim=-1)
        aux = torch.cat([_rms(c, w[f"model.fc_norm.{i}.weight"], eps) for i, c in enumerate(chunks)], -1)
    hidden = aux @ w["model.fc.weight"].T  # [n, H]
    embed = target.get_input_embeddings().weight  # no embed_tokens in the file: vLLM shares the target's

    def model(hidden, token_ids):
        t = token_ids.numel()
        positions = torch.arange(t)
        embeds = _rms(embed[token_ids], w[p + "input_layernorm.weight"], eps)
        normed_hidden = _rms(hidden, w[p + "hidden_norm.weight"], eps)
        residual = normed_hidden if raw["norm_before_residual"] else hidden
        x = torch.cat([embeds, normed_hidden], dim=-1)  # [t, 2H]
        q = _rope((x @ w[p + "self_attn.q_proj.weight"].T).view(t, heads, dim), positions, theta)
        k = _rope((x @ w[p + "self_attn.k_proj.weight"].T).view(t, kv_heads, dim), positions, theta)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).view(t, kv_heads, dim)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / dim**0.5
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        attended = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, heads * dim)
        residual = residual + attended @ w[p + "self_attn.o_proj.weight"].T  # post_attention_layernorm(h, residual)
        m = _rms(residual, w[p + "post_attention_layernorm.weight"], eps)
        mlp = (torch.nn.functional.silu(m @ w[p + "mlp.gate_proj.weight"].T) * (m @ w[p + "mlp.up_proj.weight"].T))
        prenorm = residual + mlp @ w[p + "mlp.down_proj.weight"].T
        normed = _rms(prenorm, w["model.norm.weight"], eps)  # self.norm(hidden, residual)
        return normed, normed if raw["norm_output"] else prenorm

    n = hidden.shape[0]
    for step in range(drafts):
        _, fed_back = model(hidden, tokens[: n + step])
        hidden = torch.cat([hidden, fed_back[-1:]])
    normed, _ = model(hidden, tokens)
    logits = normed @ w["lm_head.weight"].T  # [T, D]
    if "draft_id_to_target_id" not in w:
        return logits
    targets = torch.arange(logits.shape[1]) + w["draft_id_to_target_id"]
    full = logits.new_full((logits.shape[0], raw["transformer_layer_config"]["vocab_size"]), float("-inf"))
    full[:, targets] = logits
    return full


def _vllm_names(tensors):
    """vLLM's Eagle3LlamaForCausalLM.load_weights: t2d skipped, d2t renamed, everything but lm_head under model."""
    out = {}
    for name, tensor in tensors.items():
        if name == "t2d":
            continue
        if name == "d2t":
            name = "draft_id_to_target_id"
        elif "lm_head" not in name:
            name = "model." + name.replace("midlayer.", "layers.0.")
        out[name] = tensor.float() if tensor.is_floating_point() else tensor
    return out


def _ours(drafter, aux, tokens, drafts):
    """The drafter as the proposer runs it: one pass over the real positions, then chained draft steps."""
    n = aux.shape[1]
    cache = drafter.new_cache()
    features = drafter.features(drafter.fuse_target_states(aux), tokens[:, :n], 0, cache)  # [1, n, H]
    logits = [drafter.logits(features[0])]
    feature = features[:, -1:]
    for step in range(drafts):
        feature = drafter.features(feature, tokens[:, n + step : n + step + 1], n + step, cache)
        logits.append(drafter.logits(feature[0]))
    return torch.cat(logits)  # [n + drafts, D]


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_forward_matches_vllms(tmp_path, target, variant):
    save_speculators(_head(target, seed=3, **variant), tmp_path, dtype=torch.float32)
    raw = json.loads((tmp_path / "config.json").read_text())
    weights = _vllm_names(load_file(tmp_path / "model.safetensors"))
    drafter = Eagle3Drafter(load_eagle3_head(tmp_path).head, target)
    layers = drafter.hidden_state_layers
    assert layers == (variant.get("aux_layer_ids", AUX) or default_aux_layers(LAYERS))

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (1, 9), generator=g)
    with torch.no_grad():
        states = target(input_ids=ids, output_hidden_states=True).hidden_states
    aux = torch.cat([states[i] for i in layers], dim=-1)[:, :-1]  # [1, 8, 3H]: what the core hands over
    drafts = 2
    tokens = torch.cat([ids[:, 1:], torch.randint(0, VOCAB, (1, drafts), generator=g)], dim=1)  # x_{j+1}, drafts
    with torch.no_grad():
        ours = _ours(drafter, aux, tokens, drafts)  # [10, D]
        reference = _vllm_eagle3(weights, raw, target, aux[0], tokens[0], drafts)  # [10, V]
    ids_map = drafter.head.draft_token_ids()
    expected = reference if ids_map is None else reference[:, ids_map]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(drafter.to_token_ids(ours.argmax(-1)), reference.argmax(-1))  # d2t maps to the same ids

    # The comparison can tell the variants apart: the other residual gives other logits.
    raw["norm_before_residual"] = not raw["norm_before_residual"]
    with torch.no_grad():
        other = _vllm_eagle3(weights, raw, target, aux[0], tokens[0], drafts)
    assert not torch.allclose(reference, other, atol=1e-3)


# -- the EAGLE authors' EAGLE-3 layout ----------------------------------------------------------------------


def _eagle_authors_eagle3(directory, head, *, bin_file=True):
    """``head`` as SafeAILab/EAGLE publishes EAGLE-3 heads: a Llama config.json with draft_vocab_size, weights with
    midlayer.* names, d2t and t2d, no embedding (frozen parameters are not saved)."""
    config = eagle_authors_config(head.config.layer, draft_vocab_size=head.config.draft_vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    weights = {k.replace("layers.0.", "midlayer."): v.clone() for k, v in head.state_dict().items()}
    if bin_file:
        torch.save(weights, directory / "pytorch_model.bin")
    else:
        save_file(weights, directory / "model.safetensors")
    return directory


@pytest.mark.parametrize("bin_file", [True, False], ids=["bin", "safetensors"])
def test_eagle_authors_eagle3_layout_loads(tmp_path, target, bin_file):
    head = _head(target, norm_before_residual=False, aux_layer_ids=None)  # their layer; their default layers
    directory = _eagle_authors_eagle3(tmp_path / "e3", head, bin_file=bin_file)
    assert head_format(directory) == "eagle3"
    loaded = load_eagle3_head(directory)
    assert loaded.format == "eagle3" and loaded.head.config == head.config
    for key, tensor in head.state_dict().items():
        assert torch.equal(loaded.head.state_dict()[key], tensor), key
    drafter = load_eagle3_drafter(target, directory)
    assert drafter.hidden_state_layers == default_aux_layers(LAYERS) == (2, 2, 1)

    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(1))
    expected = target.generate(ids, max_new_tokens=10, do_sample=False)
    for config in ({"method": "eagle3", "model": str(directory)},  # vLLM's spelling
                   {"method": "eagle3", "method_options": {"head": str(directory), "adaptive": False}}):
        out = specdecode.generate(target, ids, config, max_new_tokens=10)
        assert torch.equal(out.sequences, expected)
    assert out.stats.drafted > 0


# -- errors --------------------------------------------------------------------------------------------------


def _message(call):
    with pytest.raises(ConfigError) as error:
        call()
    return str(error.value)


def test_a_head_for_another_hidden_size_names_both_shapes(tmp_path, target):
    other = tiny_llama(vocab_size=VOCAB, hidden_size=48, num_layers=LAYERS, num_heads=4, num_kv_heads=2)
    save_speculators(_head(other), tmp_path)
    message = _message(lambda: load_eagle3_drafter(target, tmp_path))
    assert "hidden_size 48" in message and "fc.weight [48, 144]" in message
    assert f"embed_tokens [{VOCAB}, {HIDDEN}]" in message  # the target's


def test_a_head_for_another_vocabulary_names_both_sizes(tmp_path, target):
    other = tiny_llama(vocab_size=VOCAB + 10, hidden_size=HIDDEN, num_layers=LAYERS)
    save_speculators(_head(other), tmp_path)
    message = _message(lambda: load_eagle3_drafter(target, tmp_path))
    assert f"vocab_size {VOCAB + 10} (t2d [{VOCAB + 10}])" in message and f"has {VOCAB} tokens" in message


def test_tensors_that_contradict_the_config_are_named(tmp_path, target):
    save_speculators(_head(target), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["lm_head.weight"][:5].contiguous()
    save_file(tensors, tmp_path / "model.safetensors")
    message = _message(lambda: load_eagle3_head(tmp_path))
    assert f"lm_head.weight has shape [5, {HIDDEN}]" in message and f"needs [{len(DRAFT_VOCAB)}, {HIDDEN}]" in message
    assert f"draft_vocab_size={len(DRAFT_VOCAB)}" in message
    del tensors["norm.weight"]
    tensors["lm_head.weight"] = torch.zeros(len(DRAFT_VOCAB), HIDDEN)
    save_file(tensors, tmp_path / "model.safetensors")
    assert "missing ['norm.weight']" in _message(lambda: load_eagle3_head(tmp_path))


def test_aux_layers_outside_the_target_are_refused(tmp_path, target):
    save_speculators(_head(target, aux_layer_ids=(1, 2, LAYERS)), tmp_path)
    message = _message(lambda: load_eagle3_drafter(target, tmp_path))
    assert f"reads target layers [1, 2, {LAYERS}]" in message and f"in 0..{LAYERS - 1}" in message
    shallow = tiny_llama(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=2)
    message = _message(lambda: Eagle3Drafter(_head(shallow, aux_layer_ids=None), shallow))
    assert "reads target layers [2, 1, -1]" in message  # vLLM's default does not fit 2 layers: give the ids


def test_unsupported_speculators_types_and_variants_are_refused(tmp_path, target):
    save_speculators(_head(target), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for change, expected in [
        ({"speculators_model_type": "eagle"}, "'speculators_model_type' must be 'eagle3'"),
        ({"target_hidden_size": 64}, "'target_hidden_size' must be null or the head's hidden_size 32 (got 64)"),
        ({"transformer_layer_config": {**raw["transformer_layer_config"], "model_type": "qwen3"}},
         "'transformer_layer_config.model_type' must be 'llama'"),
        ({"norm_before_fc": True, "fc_norm": True}, "'norm_before_fc' and 'fc_norm' exclude each other"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**raw, **change}))
        assert expected in _message(lambda: load_eagle3_head(tmp_path)), change


def test_each_method_refuses_the_other_generation_by_name(tmp_path, target):
    save_head(random_head(target.config, std=0.3), tmp_path / "eagle1")
    save_speculators(_head(target), tmp_path / "eagle3")
    assert "use method 'eagle'" in _message(lambda: load_eagle3_head(tmp_path / "eagle1"))
    assert "use method 'eagle3'" in _message(lambda: load_head(tmp_path / "eagle3"))
    ids = torch.tensor([[1, 2, 3]])
    message = _message(lambda: specdecode.generate(target, ids, {"method": "eagle", "model": str(tmp_path / "eagle3")},
                                                   max_new_tokens=2))
    assert "holds an EAGLE-3 head (speculators format)" in message


def test_no_head_is_a_clear_error(target):
    message = _message(lambda: specdecode.generate(target, torch.tensor([[1, 2, 3]]), {"method": "eagle3"},
                                                   max_new_tokens=2))
    assert "method 'eagle3' needs an EAGLE-3 draft head trained for this target" in message
    assert "method_options={'head': PATH}" in message and "speculators-format" in message
    assert "train-eagle --format speculators" in message
    with pytest.raises(ConfigError, match="Unknown option 'use_draft_vocab'"):
        specdecode.SpeculativeConfig(method="eagle3", method_options={"use_draft_vocab": False})


def test_no_head_path_means_the_shipped_head_or_a_config_error_naming_the_option(target):
    """load_eagle3_drafter(target) without a path (as benchmarks/bench_eagle.py calls it) takes the shipped head for
    SmolLM2's shape; for any other target it says what to pass instead of failing on the missing path."""
    message = _message(lambda: load_eagle3_drafter(target))
    assert "method 'eagle3' needs an EAGLE-3 draft head" in message and "method_options={'head': PATH}" in message
