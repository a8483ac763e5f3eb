"""Self-speculation: the first N decoder layers of the target, its final norm and its LM head act as the
draft.

:func:`truncated_view` builds a second model object whose modules are the target's own (no weight is copied)
but whose decoder stops after N layers. It has its own config (``num_hidden_layers=N``), so a ``DynamicCache``
built for it has N layers and lives apart from the target's cache.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from specdecode import ConfigError
from specdecode.toolkit import invalid


def _shallow_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A new module object holding the same children, parameters and buffers (the tensors are shared)."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


def num_decoder_layers(model: Any) -> int:
    return int(model.config.num_hidden_layers)


def truncated_view(model: Any, num_layers: int) -> Any:
    """The target with only its first ``num_layers`` decoder layers, sharing every weight with it."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    layers = getattr(base, "layers", None)
    if (
        base is None
        or not isinstance(layers, torch.nn.ModuleList)
        or not hasattr(model.config, "num_hidden_layers")
    ):
        raise ConfigError(
            f"method 'layer_skip' needs a decoder with a `.{prefix or 'model'}.layers` list and "
            f"config.num_hidden_layers (Llama, Mistral, Qwen, Gemma style); {type(model).__name__} has "
            "neither",
            field="method",
            value="layer_skip",
        )
    total = num_decoder_layers(model)
    if not 1 <= num_layers < total:
        raise invalid(
            "method_options.num_layers",
            num_layers,
            f"between 1 and {total - 1} (the target has {total} layers)",
        )

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = num_layers
    kinds = getattr(config, "layer_types", None)  # per-layer kinds (sliding / full attention, convolution, SSM)
    if kinds is not None:
        kinds = list(kinds)[:num_layers]
        if not any(kind.endswith("attention") and kind != "linear_attention" for kind in kinds):
            raise ConfigError(
                f"method 'layer_skip' drafts with the target's first {num_layers} layers, and in "
                f"{type(model).__name__} those are {sorted(set(kinds))} layers only (no attention layer to cache "
                "keys in); use another method for this model",
                field="method",
                value="layer_skip",
            )
        try:
            config.layer_types = kinds
        except AttributeError:  # some configs derive layer_types from other fields
            raise ConfigError(
                f"method 'layer_skip' cannot build a truncated {type(model).__name__}: its config derives "
                "layer_types and cannot be cut to fewer layers; use another method for this model",
                field="method",
                value="layer_skip",
            ) from None

    draft_base = _shallow_copy(base)
    draft_base.layers = torch.nn.ModuleList(list(layers)[:num_layers])
    draft_base.config = config
    draft = _shallow_copy(model)
    setattr(draft, prefix, draft_base)
    draft.config = config
    return draft
