"""The EAGLE-3 draft head (Li et al. 2025, arXiv 2503.01840) as vLLM runs it, and the drafter that binds it to a target.

Letters: H hidden size, V the target's vocabulary, D the draft vocabulary (D <= V), k aux layers (3), L the
target's decoder layers. a_j = the target's states at its aux layers for token x_j, concatenated: [k*H].

Head position j reads (a_j, x_{j+1}) and predicts x_{j+2} (the EAGLE-1 alignment, so the proposer is shared):

    g   = fc(a_j)                                        # [H]; a fed-back draft feature h replaces g (no fc)
    x   = [input_layernorm(embed(x_{j+1})) ; hidden_norm(g)]          # [2H]: the attention input, embedding first
    r   = hidden_norm(g) if norm_before_residual else g              # the residual
    h   = r + self_attn(x);  h = h + mlp(post_attention_layernorm(h))  # h: the feature fed back at the next step
    logits = lm_head(norm(h))                                        # [D]; target id of row i = i + d2t[i]

(``norm_output``: h is normalised before it is fed back and scored; ``norm_before_fc`` / ``fc_norm``: an RMSNorm over
a_j, whole or per layer, before fc.) This is vLLM's ``llama_eagle3.py`` and speculators' ``Eagle3DraftModel``; the
EAGLE authors' ``cnets.py`` is the same with ``norm_before_residual=False``. Aux layer i is entry i of transformers'
``output_hidden_states`` (0 = the embeddings, i = the input of decoder layer i): vLLM's numbering, where the default is
(2, L // 2, L - 3).

State-dict keys are vLLM's / speculators' (``fc.weight``, ``layers.0.hidden_norm.weight``, ...,
``norm.weight``, ``lm_head.weight``, ``d2t``, ``t2d``, optionally ``embed_tokens.weight``), so a head loads and saves
without renaming (see eagle3_checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
from specdecode import ConfigError
from torch import nn

from .checkpoint import check_target_shape
from .head import EagleDrafter, HeadConfig, attention_inputs


def default_aux_layers(num_layers: int) -> tuple[int, int, int]:
    """vLLM's default EAGLE-3 aux layers for a target of ``num_layers`` decoder layers (``LlamaForCausalLM.
    get_eagle3_aux_hidden_state_layers``; the EAGLE authors and speculators pick the same)."""
    return (2, num_layers // 2, num_layers - 3)


def _aux_ids(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(i) for i in value)


@attrs.frozen(kw_only=True)
class Eagle3Config:
    """Shape and variant of an EAGLE-3 head. ``layer`` is its decoder layer (``layer.vocab_size`` = the target's V);
    ``aux_layer_ids`` None means vLLM's default for the target it is bound to."""

    layer: HeadConfig
    draft_vocab_size: int
    aux_layer_ids: tuple[int, ...] | None = attrs.field(default=None, converter=_aux_ids)
    norm_before_residual: bool = False
    norm_before_fc: bool = False
    fc_norm: bool = False
    norm_output: bool = False
    own_embedding: bool = False  # the checkpoint carries embed_tokens.weight (else: the target's embedding)

    def __attrs_post_init__(self) -> None:
        vocab = self.layer.vocab_size
        if not 1 <= self.draft_vocab_size <= vocab:
            raise ConfigError(
                f"'draft_vocab_size' must be between 1 and the target's vocab_size {vocab} (got "
                f"{self.draft_vocab_size})",
                field="draft_vocab_size",
                value=self.draft_vocab_size,
            )
        if self.norm_before_fc and self.fc_norm:
            raise ConfigError(
                "'norm_before_fc' and 'fc_norm' exclude each other (got both true)", field="fc_norm", value=True
            )
        if self.aux_layer_ids is not None and not self.aux_layer_ids:
            raise ConfigError(
                "'eagle_aux_hidden_state_layer_ids' must list at least one layer or be null (got [])",
                field="eagle_aux_hidden_state_layer_ids",
                value=[],
            )

    @property
    def num_aux(self) -> int:
        return len(self.aux_layer_ids) if self.aux_layer_ids else 3

    @property
    def uses_vocab_map(self) -> bool:
        """d2t / t2d exist only for a draft vocabulary smaller than the target's (as speculators saves them)."""
        return self.draft_vocab_size < self.layer.vocab_size

    @classmethod
    def from_target(cls, target_config: Any, *, draft_vocab_size: int | None = None, **changes: Any) -> Eagle3Config:
        layer = HeadConfig.from_target(target_config)
        return cls(layer=layer, draft_vocab_size=draft_vocab_size or layer.vocab_size, **changes)


def _rms_norm(width: int, eps: float) -> nn.Module:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return LlamaRMSNorm(width, eps=eps)


class Eagle3Layer(nn.Module):
    """EAGLE-3's decoder layer: Llama attention over [embedding ; hidden] (2H wide q/k/v inputs) and a Llama MLP."""

    def __init__(self, llama_config: Any, norm_before_residual: bool):
        from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP

        super().__init__()
        width, eps, bias = 2 * llama_config.hidden_size, llama_config.rms_norm_eps, llama_config.attention_bias
        self.self_attn = LlamaAttention(llama_config, layer_idx=0)
        for name in ("q_proj", "k_proj", "v_proj"):
            out = getattr(self.self_attn, name).out_features
            setattr(self.self_attn, name, nn.Linear(width, out, bias=bias))
        self.mlp = LlamaMLP(llama_config)
        self.input_layernorm = _rms_norm(llama_config.hidden_size, eps)
        self.hidden_norm = _rms_norm(llama_config.hidden_size, eps)
        self.post_attention_layernorm = _rms_norm(llama_config.hidden_size, eps)
        self.norm_before_residual = norm_before_residual

    def forward(
        self, embeds: torch.Tensor, hidden: torch.Tensor, position_embeddings: Any, mask: torch.Tensor | None,
        cache: Any,
    ) -> torch.Tensor:
        """embeds, hidden [B, n, H] -> [B, n, H] (before the final norm)."""
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        x = torch.cat([self.input_layernorm(embeds), normed], dim=-1)  # [B, n, 2H]
        attended, _ = self.self_attn(x, position_embeddings=position_embeddings, attention_mask=mask, cache=cache)
        h = residual + attended
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Head(nn.Module):
    """fc, one :class:`Eagle3Layer`, the final norm and an LM head over the draft vocabulary."""

    def __init__(self, config: Eagle3Config):
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        super().__init__()
        layer = config.layer
        hidden, eps, k = layer.hidden_size, layer.rms_norm_eps, config.num_aux
        self.config = config
        self.llama_config = layer.to_llama_config()
        self.embed_tokens = nn.Embedding(layer.vocab_size, hidden) if config.own_embedding else None
        self.input_norm = _rms_norm(k * hidden, eps) if config.norm_before_fc else None
        self.fc_norm = nn.ModuleList([_rms_norm(hidden, eps) for _ in range(k)]) if config.fc_norm else None
        self.fc = nn.Linear(k * hidden, hidden, bias=False)
        self.layers = nn.ModuleList([Eagle3Layer(self.llama_config, config.norm_before_residual)])
        self.norm = _rms_norm(hidden, eps)
        self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)
        if config.uses_vocab_map:
            self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
            self.register_buffer("t2d", torch.zeros(layer.vocab_size, dtype=torch.bool))
        self.rotary = LlamaRotaryEmbedding(self.llama_config)  # inv_freq is a non-persistent buffer: never saved

    def set_draft_vocab(self, token_ids: torch.Tensor) -> None:
        """Score the target ids ``token_ids`` [D]: lm_head row i is the i-th in ascending order (speculators' layout;
        d2t is the offset, ``selected - arange(D)``, and t2d marks them)."""
        selected = token_ids.to(torch.long).unique(sorted=True)
        if selected.numel() != self.config.draft_vocab_size or not self.config.uses_vocab_map:
            raise ConfigError(
                f"a draft vocabulary must hold draft_vocab_size={self.config.draft_vocab_size} distinct ids, fewer "
                f"than vocab_size={self.config.layer.vocab_size} (got {selected.numel()})",
                field="draft_vocab",
                value=selected.numel(),
            )
        self.d2t.copy_(selected - torch.arange(selected.numel()))
        self.t2d.zero_()
        self.t2d[selected] = True

    def draft_token_ids(self) -> torch.Tensor | None:
        """[D] the target id of each lm_head row (vLLM: ``arange(D) + draft_id_to_target_id``); None when D = V."""
        if not self.config.uses_vocab_map:
            return None
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    def fuse(self, aux: torch.Tensor) -> torch.Tensor:
        """The target's aux states [B, n, k*H] -> [B, n, H] (vLLM's ``combine_hidden_states``)."""
        aux = aux.to(self.fc.weight.dtype)
        if self.input_norm is not None:
            aux = self.input_norm(aux)
        if self.fc_norm is not None:
            aux = torch.cat([norm(a) for norm, a in zip(self.fc_norm, aux.chunk(len(self.fc_norm), dim=-1))], -1)
        return self.fc(aux)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        hidden_states: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        full_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """inputs_embeds [B, n, H] = embed(x_{j+1}); hidden_states [B, n, H]: ``fuse``'s output over the target's
        aux states, or a feature this head predicted (fed back while drafting) -> the features to feed back
        [B, n, H]. ``cache``, ``attention_mask`` and ``full_mask`` as in :meth:`EagleHead.forward`."""
        hidden = hidden_states.to(inputs_embeds.dtype)
        position_embeddings, mask = attention_inputs(self.rotary, hidden, position_ids, cache, attention_mask,
                                                     full_mask)
        out = self.layers[0](inputs_embeds, hidden, position_embeddings, mask, cache)
        return self.norm(out) if self.config.norm_output else out

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Fed-back features [..., H] -> draft logits [..., D]."""
        return self.lm_head(features if self.config.norm_output else self.norm(features))


def random_eagle3_head(
    target_config: Any, *, std: float, seed: int = 0, draft_vocab: Sequence[int] | torch.Tensor | None = None,
    **changes: Any,
) -> Eagle3Head:
    """An untrained EAGLE-3 head for ``target_config`` in eval mode (tests and loop checks): weight matrices drawn
    from N(0, std), norm weights from 1 + N(0, 0.1) (so a norm applied to the wrong tensor shows). Deterministic for
    a seed; the global RNG is untouched. ``draft_vocab``: the target ids it scores (default: all)."""
    vocab = None if draft_vocab is None else torch.as_tensor(draft_vocab, dtype=torch.long)
    config = Eagle3Config.from_target(target_config, draft_vocab_size=None if vocab is None else vocab.numel(),
                                      **changes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = Eagle3Head(config)
        for weight in head.parameters():
            if weight.dim() == 2:
                nn.init.normal_(weight, std=std)
            else:
                nn.init.normal_(weight, mean=1.0, std=0.1)
    if vocab is not None:
        head.set_draft_vocab(vocab)
    return head.eval()


class Eagle3Drafter(EagleDrafter):
    """An EAGLE-3 head bound to a target: the target's embedding (unless the head carries its own), the head's own
    LM head over its draft vocabulary, and the target layers it reads (``hidden_state_layers``, which the proposer
    hands to the core). Refuses, naming both shapes, a head made for a target of another size."""

    method = "eagle3"

    def __init__(self, head: Eagle3Head, target: Any, source: str = "EAGLE-3 head"):
        self.hidden_state_layers = check_fits_target(head, target, source)
        embed = head.embed_tokens if head.embed_tokens is not None else target.get_input_embeddings()
        self._bind(head, target, embed, head.draft_token_ids(), head.lm_head.weight, None)

    @property
    def target_width(self) -> int:
        """k*H: the aux layers' states, concatenated."""
        return self.head.fc.in_features

    def fuse_target_states(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's aux states [B, n, k*H] -> the head's input at real positions [B, n, H] (fc)."""
        return self.head.fuse(hidden)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[..., H] fed-back features -> [..., D] scores over the draft vocabulary."""
        return self.head.scores(features)


def check_fits_target(head: Eagle3Head, target: Any, source: str) -> tuple[int, ...]:
    """The target layers ``head`` reads (its aux layer ids, or vLLM's default for this target), after checking that
    it was made for a target of this hidden size, vocabulary and depth; a ConfigError names both sides."""
    config = head.config
    vocab = config.layer.vocab_size
    detail = f" (t2d [{vocab}])" if config.uses_vocab_map else f" (lm_head.weight {list(head.lm_head.weight.shape)})"
    check_target_shape(target, source, hidden_size=config.layer.hidden_size, vocab_size=vocab,
                       fc_weight=head.fc.weight, vocab_detail=detail, token_ids=head.draft_token_ids())
    num_layers = int(target.config.num_hidden_layers)
    layers = config.aux_layer_ids or default_aux_layers(num_layers)
    if len(layers) != config.num_aux or not all(0 <= i < num_layers for i in layers):
        raise ConfigError(
            f"{source} reads target layers {list(layers)} (eagle_aux_hidden_state_layer_ids; fc.weight "
            f"{list(head.fc.weight.shape)} takes {config.num_aux} of them) but the target has {num_layers} decoder "
            f"layers: each id must be in 0..{num_layers - 1}",
            field="eagle_aux_hidden_state_layer_ids",
            value=list(layers),
        )
    return tuple(layers)
