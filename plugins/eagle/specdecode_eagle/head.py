"""The EAGLE draft head (Li et al. 2024, arXiv 2401.15077) and the drafter that ties it to a target model.

Letters: B batch, n positions in one call, H the target's hidden size, V the vocabulary, V' the draft vocabulary.
f_t = the target's last-layer (post-norm) hidden state after reading token x_t.

One head position j reads (f_j, x_{j+1}) and predicts f_{j+1}; the target's LM head turns that feature into a
distribution over x_{j+2}. The layout follows the EAGLE authors (and vLLM / SGLang): ``fc`` over
[embed(x_{j+1}) ; f_j] (embedding first), then one Llama decoder layer whose input RMSNorm is left out, no final norm.
The head owns only ``fc`` and that layer; the embedding and LM head are the target's, used by reference.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from specdecode.toolkit import linear
from torch import nn


@attrs.frozen(kw_only=True)
class HeadConfig:
    """Shape of a head. ``from_target`` derives one from the target's transformers config."""

    hidden_size: int
    vocab_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    hidden_act: str = "silu"
    fc_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    # transformers' rope_parameters when the RoPE is not the default one (Llama 3.1's "llama3" scaling, say);
    # None: default RoPE with rope_theta.
    rope_parameters: dict[str, Any] | None = attrs.field(default=None, hash=False)

    @classmethod
    def from_target(cls, target_config: Any, *, intermediate_size: int | None = None) -> HeadConfig:
        heads = target_config.num_attention_heads
        rope = getattr(target_config, "rope_parameters", None)
        return cls(
            hidden_size=target_config.hidden_size,
            vocab_size=target_config.vocab_size,
            intermediate_size=intermediate_size or target_config.intermediate_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(target_config, "num_key_value_heads", None) or heads,
            head_dim=getattr(target_config, "head_dim", None) or target_config.hidden_size // heads,
            rms_norm_eps=float(getattr(target_config, "rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(target_config),
            max_position_embeddings=getattr(target_config, "max_position_embeddings", 8192),
            hidden_act=getattr(target_config, "hidden_act", "silu"),
            attention_bias=bool(getattr(target_config, "attention_bias", False)),
            mlp_bias=bool(getattr(target_config, "mlp_bias", False)),
            rope_parameters=dict(rope) if isinstance(rope, dict) and rope.get("rope_type", "default") != "default"
            else None,
        )

    @classmethod
    def from_llama_dict(cls, data: dict[str, Any]) -> HeadConfig:
        """From a Llama ``config.json`` dict (an EAGLE authors' head, a speculators ``transformer_layer_config``);
        transformers fills its defaults and reads the legacy ``rope_theta`` / ``rope_scaling`` keys."""
        from transformers import LlamaConfig

        return cls.from_target(LlamaConfig(**{k: v for k, v in data.items() if k != "model_type"}))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        known = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def to_llama_config(self) -> Any:
        from transformers import LlamaConfig

        config = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=1,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act=self.hidden_act,
            attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias,
            rope_parameters=self.rope_parameters or {"rope_type": "default", "rope_theta": self.rope_theta},
            tie_word_embeddings=False,
        )
        config._attn_implementation = "sdpa"
        return config


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


class EagleHead(nn.Module):
    """``fc`` + one decoder layer. State-dict keys match the EAGLE authors' checkpoints (``fc.weight``,
    ``layers.0.self_attn.q_proj.weight``, ...)."""

    def __init__(self, config: HeadConfig):
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        super().__init__()
        self.config = config
        self.llama_config = config.to_llama_config()
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=config.fc_bias)
        self.layers = nn.ModuleList([LlamaDecoderLayer(self.llama_config, layer_idx=0)])
        # EAGLE leaves out the first layer's input norm: fc's output goes straight into attention.
        self.layers[0].input_layernorm = nn.Identity()
        self.rotary = LlamaRotaryEmbedding(self.llama_config)  # inv_freq is a non-persistent buffer: never saved

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        hidden_states: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        full_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """inputs_embeds = embed(x_{j+1}) and hidden_states = f_j, both [B, n, H] -> predicted f_{j+1} [B, n, H].

        ``cache`` (a transformers DynamicCache) holds earlier positions; ``attention_mask`` [B, n] marks real
        tokens (1) and right padding (0) in training batches. ``full_mask`` [B|1, 1, n, past+n] (True = may attend)
        replaces the causal mask (training unrolled draft steps).
        """
        x = self.fc(torch.cat([inputs_embeds, hidden_states.to(inputs_embeds.dtype)], dim=-1))
        position_embeddings, mask = attention_inputs(self.rotary, x, position_ids, cache, attention_mask, full_mask)
        return self.layers[0](
            x,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            position_embeddings=position_embeddings,
        )


def random_head(target_config: Any, *, std: float, seed: int = 0, **overrides: Any) -> EagleHead:
    """An untrained head for ``target_config`` in eval mode (tests and loop checks): every weight matrix drawn from
    N(0, std), larger than the default init so drafts vary. Deterministic for a seed; the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = EagleHead(HeadConfig.from_target(target_config, **overrides))
        for weight in head.parameters():
            if weight.dim() == 2:
                nn.init.normal_(weight, std=std)
    return head.eval()


def attention_inputs(
    rotary: nn.Module, x: torch.Tensor, position_ids: torch.Tensor, cache: Any, padding: torch.Tensor | None,
    full_mask: torch.Tensor | None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
    """RoPE tables and the attention mask for x's n positions after the cached ones (shared by the EAGLE heads)."""
    past = cache.get_seq_length() if cache is not None else 0
    mask = full_mask if full_mask is not None else _causal_mask(x.shape[1], past, padding, x.device)
    return rotary(x, position_ids), mask


def _causal_mask(n: int, past: int, padding: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Boolean [B|1, 1, n, past+n] mask (True = may attend), or None for a single query with no padding."""
    if n == 1 and padding is None:
        return None
    query = torch.arange(n, device=device).unsqueeze(1) + past
    key = torch.arange(past + n, device=device).unsqueeze(0)
    mask = (key <= query).view(1, 1, n, past + n)
    if padding is not None:
        # Padding keys are never attended to; padded queries still see key 0 so their softmax stays finite.
        keys = torch.cat([padding.new_ones(padding.shape[0], past), padding], dim=1).bool()
        mask = mask & keys.view(-1, 1, 1, past + n)
        mask[..., 0] = True
    return mask


class EagleDrafter:
    """A head bound to one target model: the target's embedding and LM head are used by reference.

    With a draft vocabulary (a subset of token ids, as in EAGLE-3), the head only scores those tokens: the LM head's
    rows for them are gathered once here (a derived tensor, never saved), which makes a draft step much cheaper.

    What :class:`~specdecode_eagle.proposer.EagleProposer` uses: ``features`` and ``tree_features`` (head passes),
    ``fuse_target_states``, ``logits``, ``to_token_ids``, ``to_full_vocab``, ``new_cache``, ``calibration``,
    ``hidden_state_layers`` and ``target_width`` (which target states the head reads, and their width) and ``method``
    (for messages). EAGLE-3 heads bind the same way (:class:`~specdecode_eagle.eagle3.Eagle3Drafter`).
    """

    method = "eagle"
    hidden_state_layers: tuple[int, ...] | None = None  # EAGLE-1/2 reads the target's last layer (post-norm)

    def __init__(self, head: EagleHead, target: Any, draft_vocab: torch.Tensor | None = None):
        lm_head = target.get_output_embeddings()
        vocab = None if draft_vocab is None else draft_vocab.to(torch.long)
        weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
        if vocab is not None:
            weight = weight.detach().index_select(0, vocab)
            bias = None if bias is None else bias.detach().index_select(0, vocab)
        self._bind(head, target, target.get_input_embeddings(), vocab, weight, bias)

    def _bind(
        self, head: nn.Module, target: Any, embed_tokens: nn.Module, draft_vocab: torch.Tensor | None,
        lm_weight: torch.Tensor, lm_bias: torch.Tensor | None,
    ) -> None:
        """``draft_vocab`` [V'] maps a row of ``lm_weight`` [V', H] to its target token id (None: V' = V)."""
        self.head = head.eval()
        self.target = target
        self.embed_tokens = embed_tokens
        self.draft_vocab = draft_vocab
        self.lm_weight, self.lm_bias = lm_weight, lm_bias
        self.vocab_size = int(target.get_output_embeddings().weight.shape[0])
        # Acceptance per unit of confidence per draft position, measured when the head was trained (or None);
        # the proposer's back-off starts from it.
        self.calibration: list[float] | None = None

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.head.llama_config)

    @property
    def target_width(self) -> int:
        """The width of the target states the head reads: H for EAGLE-1/2."""
        return self.head.config.hidden_size

    def fuse_target_states(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's states [B, n, .] as the head reads them at real positions: f_j itself for EAGLE-1/2."""
        return hidden

    def features(self, hidden: torch.Tensor, next_tokens: torch.Tensor, start: int, cache: Any) -> torch.Tensor:
        """Run the head on n positions starting at ``start``: hidden [B, n, H] = f_j (``fuse_target_states``'s
        output, or a feature the head predicted), next_tokens [B, n] = x_{j+1}."""
        n = next_tokens.shape[1]
        positions = torch.arange(start, start + n, device=next_tokens.device).unsqueeze(0)
        return self.head(self.embed_tokens(next_tokens), hidden, positions, cache=cache)

    def tree_features(
        self, hidden: torch.Tensor, tokens: torch.Tensor, position: int, cache: Any, sees: torch.Tensor
    ) -> torch.Tensor:
        """Run the head on n tree nodes of one depth, all at ``position``: hidden [1, n, H] (each parent's predicted
        feature), tokens [1, n], ``sees`` [n, past] bool: which cached positions each node attends to (the real
        prefix and its ancestors). Appends the n nodes to the cache; -> features [1, n, H]."""
        n = tokens.shape[1]
        own = torch.eye(n, dtype=torch.bool, device=tokens.device)
        mask = torch.cat([sees, own], dim=1).view(1, 1, n, sees.shape[1] + n)
        positions = torch.full((1, n), position, device=tokens.device)
        return self.head(self.embed_tokens(tokens), hidden, positions, cache=cache, full_mask=mask)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., V'] scores over the draft vocabulary (the full vocabulary when there is none)."""
        return linear(features, self.lm_weight, self.lm_bias)  # on the loop's CPU kernel inside it

    def to_token_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary indices -> target token ids."""
        return index if self.draft_vocab is None else self.draft_vocab[index]

    def to_full_vocab(self, probs: torch.Tensor) -> torch.Tensor:
        """[..., V'] probabilities -> [..., V], zero outside the draft vocabulary."""
        if self.draft_vocab is None:
            return probs
        full = probs.new_zeros(*probs.shape[:-1], self.vocab_size)
        return full.index_copy_(-1, self.draft_vocab, probs)
