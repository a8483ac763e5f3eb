"""Tiny random decoder-only causal LMs of many transformers architectures, built in-process (no downloads).

Every model is small (hidden size 32, 2-4 layers, vocabulary 96 by default), fp32, in eval mode, deterministic for
a seed, has no eos token (generation always runs to ``max_new_tokens``) and greedy defaults
(``generation_config.do_sample = False``). Sliding windows are small (8 tokens), so that prompts of 20-40 tokens
plus a few new ones cross them.

    from specdecode.testing.architectures import ARCHITECTURES, tiny_model

    model = tiny_model("mistral")                # a registered architecture, default seed 0
    model = tiny_model("gemma2", seed=1, sliding_window=4)   # config overrides
    for name, build in ARCHITECTURES.items():
        model = build()

:data:`SPECS` holds what each entry is made of (config and model classes, config values, traits such as
``"sliding"`` or ``"recurrent"``), so tests can select architectures by trait.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch

DEFAULT_VOCAB_SIZE = 96
SLIDING_WINDOW = 8

# Traits
SLIDING = "sliding"  # some attention layers see only a window of recent tokens
RECURRENT = "recurrent"  # some layers keep a recurrent (SSM / linear-attention) or convolution state
MOE = "moe"  # mixture-of-experts MLPs
ALIBI = "alibi"  # positions enter as ALiBi biases built from the 2-D attention mask
LEARNED_POSITIONS = "learned_positions"  # absolute position embeddings (GPT-2, OPT, ...)


@attrs.frozen(kw_only=True)
class ArchitectureSpec:
    """One registered tiny architecture: ``config_class(**config)`` -> ``model_class``."""

    name: str
    config_class: str  # attribute of the ``transformers`` package
    model_class: str
    config: Mapping[str, Any] = attrs.field(converter=dict)
    traits: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    notes: str = ""

    def build(self, *, seed: int = 0, vocab_size: int | None = None, **overrides: Any) -> Any:
        import transformers

        values = {
            **_NO_SPECIAL_TOKENS,
            **self.config,
            "vocab_size": vocab_size or self.config.get("vocab_size", DEFAULT_VOCAB_SIZE),
            **overrides,
        }
        config = getattr(transformers, self.config_class)(**values)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = getattr(transformers, self.model_class)(config)
        model = model.to(torch.float32).eval()
        generation_config = model.generation_config
        generation_config.do_sample = False
        # No special tokens: generation runs to max_new_tokens; transformers' defaults (top_k=50 and the like)
        # stay as they are, as for a model loaded from the Hub.
        generation_config.eos_token_id = None
        generation_config.bos_token_id = None
        generation_config.pad_token_id = None
        return model


_NO_SPECIAL_TOKENS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}

# Untied output embeddings and a larger init than transformers' default (0.02): with tied embeddings or the default
# init many tiny random models repeat one token forever (GPT-2, Bloom, Falcon, Mamba, ...) and their top two logits
# are often within 1e-5 of each other. These settings give varied continuations and margins around 1e-3.
_INIT = {"initializer_range": 0.3, "tie_word_embeddings": False}

# Llama-style attention block shared by many entries: hidden 32, 4 heads of 8, 2 KV heads, MLP 64.
_ATTN = {
    **_INIT,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}

# A small pure Mamba (state 8, conv 4), shared by Mamba and Falcon-Mamba.
_MAMBA1 = {**_INIT, "hidden_size": 32, "state_size": 8, "num_hidden_layers": 2, "expand": 2, "conv_kernel": 4}

# A gated DeltaNet linear-attention layer then a full-attention one, shared by Qwen3-Next and Qwen3.5.
_GATED_DELTANET = {
    "head_dim": 8,
    "layer_types": ["linear_attention", "full_attention"],
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
}

# A small Mamba-2 mixer (4 heads, 1 group, state 8, conv 4), shared by the hybrid Mamba-2 / attention entries.
_MAMBA2 = {
    "mamba_n_heads": 4,
    "mamba_n_groups": 1,
    "mamba_d_state": 8,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_chunk_size": 16,
}


def _spec(name, config_class, model_class, config, traits=(), notes=""):
    return ArchitectureSpec(
        name=name,
        config_class=config_class,
        model_class=model_class,
        config=config,
        traits=traits,
        notes=notes,
    )


_SPECS = [
    _spec("llama", "LlamaConfig", "LlamaForCausalLM", _ATTN),
    _spec(
        "mistral",
        "MistralConfig",
        "MistralForCausalLM",
        {**_ATTN, "head_dim": 8, "sliding_window": SLIDING_WINDOW},
        traits=[SLIDING],
        notes="every layer sliding-window",
    ),
    _spec(
        "mixtral",
        "MixtralConfig",
        "MixtralForCausalLM",
        {**_ATTN, "head_dim": 8, "sliding_window": None, "num_local_experts": 4, "num_experts_per_tok": 2},
        traits=[MOE],
    ),
    _spec("qwen2", "Qwen2Config", "Qwen2ForCausalLM", {**_ATTN, "use_sliding_window": False}),
    _spec(
        "qwen2-sliding",
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {
            **_ATTN,
            "num_hidden_layers": 3,
            "use_sliding_window": True,
            "sliding_window": SLIDING_WINDOW,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
        },
        traits=[SLIDING],
        notes="layer 0 full attention, layers 1-2 sliding (layer_types)",
    ),
    _spec("qwen3", "Qwen3Config", "Qwen3ForCausalLM", {**_ATTN, "head_dim": 8}),
    _spec(
        "qwen3-moe",
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {
            **_ATTN,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "decoder_sparse_step": 1,
            "use_sliding_window": False,
        },
        traits=[MOE],
    ),
    _spec(
        "gemma2",
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {**_ATTN, "head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": SLIDING_WINDOW},
        traits=[SLIDING],
        notes="alternating sliding / full layers, logit soft-capping",
    ),
    _spec(
        "gemma3",
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {
            **_ATTN,
            "head_dim": 8,
            "query_pre_attn_scalar": 8,
            "sliding_window": SLIDING_WINDOW,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        traits=[SLIDING],
    ),
    _spec(
        "phi3",
        "Phi3Config",
        "Phi3ForCausalLM",
        {**_ATTN, "original_max_position_embeddings": 512, "sliding_window": None},
    ),
    _spec("granite", "GraniteConfig", "GraniteForCausalLM", _ATTN),
    _spec("olmo2", "Olmo2Config", "Olmo2ForCausalLM", _ATTN),
    _spec(
        "starcoder2",
        "Starcoder2Config",
        "Starcoder2ForCausalLM",
        {**_ATTN, "sliding_window": SLIDING_WINDOW},
        traits=[SLIDING],
        notes="every layer sliding-window, LayerNorm, biases",
    ),
    _spec("cohere", "CohereConfig", "CohereForCausalLM", _ATTN),
    _spec(
        "smollm3",
        "SmolLM3Config",
        "SmolLM3ForCausalLM",
        {**_ATTN, "num_hidden_layers": 4, "no_rope_layer_interval": 2},
        notes="every second layer without RoPE",
    ),
    _spec(
        "gpt2",
        "GPT2Config",
        "GPT2LMHeadModel",
        {**_INIT, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64, "n_positions": 512},
        traits=[LEARNED_POSITIONS],
    ),
    _spec(
        "gpt-neox",
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {
            **_INIT,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
        },
    ),
    _spec(
        "opt",
        "OPTConfig",
        "OPTForCausalLM",
        {
            "init_std": 0.3,
            "tie_word_embeddings": False,
            "hidden_size": 32,
            "ffn_dim": 64,
            "word_embed_proj_dim": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
        },
        traits=[LEARNED_POSITIONS],
    ),
    _spec(
        "falcon",
        "FalconConfig",
        "FalconForCausalLM",
        {
            **_INIT,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
        },
        notes="multi-query attention, parallel attention/MLP, RoPE",
    ),
    _spec(
        "falcon-alibi",
        "FalconConfig",
        "FalconForCausalLM",
        {
            **_INIT,
            "initializer_range": 0.02,  # with ALiBi a larger init makes it repeat a token or two
            "alibi": True,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
        },
        traits=[ALIBI],
        notes="Falcon with ALiBi instead of RoPE (as Falcon-RW)",
    ),
    _spec(
        "bloom",
        "BloomConfig",
        "BloomForCausalLM",
        # initializer_range 0.3 makes it repeat one token
        {**_INIT, "initializer_range": 0.1, "hidden_size": 32, "n_layer": 2, "n_head": 4},
        traits=[ALIBI],
    ),
    _spec(
        "gpt-bigcode",
        "GPTBigCodeConfig",
        "GPTBigCodeForCausalLM",
        {
            **_INIT,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 4,
            "n_inner": 64,
            "n_positions": 512,
            "multi_query": True,
        },
        traits=[LEARNED_POSITIONS],
    ),
    _spec(
        "mamba",
        "MambaConfig",
        "MambaForCausalLM",
        _MAMBA1,
        traits=[RECURRENT],
        notes="pure SSM (torch fallback path; no mamba-ssm kernels on CPU)",
    ),
    _spec(
        "mamba2",
        "Mamba2Config",
        "Mamba2ForCausalLM",
        {**_INIT, "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 4, "head_dim": 16, "n_groups": 1,
         "state_size": 8, "conv_kernel": 4, "expand": 2, "chunk_size": 16},
        traits=[RECURRENT],
        notes="pure Mamba-2 SSM (torch fallback path)",
    ),
    _spec(
        "falcon-mamba",
        "FalconMambaConfig",
        "FalconMambaForCausalLM",
        _MAMBA1,
        traits=[RECURRENT],
        notes="pure SSM, Mamba with RMS-normalised B, C, dt",
    ),
    _spec(
        "lfm2",
        "Lfm2Config",
        "Lfm2ForCausalLM",
        {
            **_ATTN,
            "num_hidden_layers": 3,
            "layer_types": ["conv", "full_attention", "conv"],
            "conv_L_cache": 3,
            "block_auto_adjust_ff_dim": False,
        },
        traits=[RECURRENT],
        notes="short-convolution layers + attention (conv states only, no recurrent state)",
    ),
    _spec(
        "jamba",
        "JambaConfig",
        "JambaForCausalLM",
        {
            **_ATTN,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "num_experts": 2,
            "num_experts_per_tok": 1,
            "mamba_d_state": 8,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "mamba_dt_rank": 4,
        },
        traits=[RECURRENT, MOE],
        notes="layer 0 Mamba, layer 1 attention + MoE",
    ),
    _spec(
        "bamba",
        "BambaConfig",
        "BambaForCausalLM",
        {
            **_ATTN,
            "attn_layer_indices": [1],
            **_MAMBA2,
        },
        traits=[RECURRENT],
        notes="layer 0 Mamba-2, layer 1 attention",
    ),
    _spec(
        "zamba2",
        "Zamba2Config",
        "Zamba2ForCausalLM",
        {
            **_ATTN,
            "num_key_value_heads": 4,
            "layers_block_type": ["mamba", "hybrid"],
            "mamba_d_state": 8,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "mamba_ngroups": 1,
            "n_mamba_heads": 4,
            "chunk_size": 16,
            "num_mem_blocks": 1,
            "adapter_rank": 8,
        },
        traits=[RECURRENT],
        notes="Mamba-2 layers, a shared attention block on the hybrid layer",
    ),
    _spec(
        "falcon-h1",
        "FalconH1Config",
        "FalconH1ForCausalLM",
        {
            **_ATTN,
            "mamba_d_ssm": 64,
            **_MAMBA2,
        },
        traits=[RECURRENT],
        notes="attention and Mamba-2 in parallel in every layer",
    ),
    _spec(
        "qwen3-next",
        "Qwen3NextConfig",
        "Qwen3NextForCausalLM",
        {
            **_ATTN,
            **_GATED_DELTANET,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
            "decoder_sparse_step": 1,
        },
        traits=[RECURRENT, MOE],
        notes="gated DeltaNet linear attention + gated full attention, MoE",
    ),
    _spec(
        "qwen3.5",
        "Qwen3_5TextConfig",
        "Qwen3_5ForCausalLM",
        {
            **_ATTN,
            **_GATED_DELTANET,
        },
        traits=[RECURRENT],
        notes="gated DeltaNet linear attention + gated full attention, dense",
    ),
    _spec(
        "nemotron-h",
        "NemotronHConfig",
        "NemotronHForCausalLM",
        {
            **_ATTN,
            "hybrid_override_pattern": "M*",
            "mamba_num_heads": 4,
            "mamba_head_dim": 16,
            "n_groups": 1,
            "ssm_state_size": 8,
            "conv_kernel": 4,
            "expand": 2,
            "chunk_size": 16,
        },
        traits=[RECURRENT],
        notes="layer 0 Mamba-2, layer 1 attention",
    ),
    _spec(
        "granitemoehybrid",
        "GraniteMoeHybridConfig",
        "GraniteMoeHybridForCausalLM",
        {
            **_ATTN,
            "layer_types": ["mamba", "attention"],
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "shared_intermediate_size": 32,
            **_MAMBA2,
        },
        traits=[RECURRENT, MOE],
        notes="layer 0 Mamba-2, layer 1 attention, MoE",
    ),
]

SPECS: dict[str, ArchitectureSpec] = {spec.name: spec for spec in _SPECS}


def tiny_model(name: str, *, seed: int = 0, vocab_size: int | None = None, **overrides: Any) -> Any:
    """Build the tiny model registered as ``name``; ``overrides`` replace config values."""
    try:
        spec = SPECS[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(SPECS)}") from None
    return spec.build(seed=seed, vocab_size=vocab_size, **overrides)


def _factory(name: str) -> Callable[..., Any]:
    return functools.partial(tiny_model, name)


ARCHITECTURES: dict[str, Callable[..., Any]] = {name: _factory(name) for name in SPECS}


def with_trait(trait: str) -> list[str]:
    """Names of the registered architectures that have ``trait`` (e.g. :data:`SLIDING`)."""
    return [name for name, spec in SPECS.items() if trait in spec.traits]
