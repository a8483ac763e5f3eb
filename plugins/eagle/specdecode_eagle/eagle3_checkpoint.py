"""Loading and saving EAGLE-3 heads.

Read:

* **speculators** (vllm-project/speculators, what vLLM loads for ``method="eagle3"``): ``config.json`` without a
  top-level ``model_type``, with ``speculators_model_type: "eagle3"``, ``transformer_layer_config`` (a Llama config of
  the one decoder layer; its ``vocab_size`` is the target's), ``draft_vocab_size``, ``eagle_aux_hidden_state_layer_ids``,
  ``norm_before_residual`` (vLLM reads a missing one as true, speculators as false; it always writes it) and the
  ``norm_before_fc`` / ``fc_norm`` / ``norm_output`` variants; ``model.safetensors`` with the names of
  :class:`~specdecode_eagle.eagle3.Eagle3Head` (``verifier_*`` tensors, which speculators drops on saving, are skipped).
* **EAGLE authors' EAGLE-3** (SafeAILab/EAGLE ``cnets.py``): a Llama ``config.json`` with ``draft_vocab_size``, and
  ``pytorch_model.bin`` or ``model.safetensors`` with ``midlayer.*`` for ``layers.0.*``. Their layer keeps the
  residual before ``hidden_norm`` (``norm_before_residual=False``); their aux layers are vLLM's default.

Both: ``d2t`` [D] int64 (target id = draft id + d2t[draft id]) and ``t2d`` [V] bool when D < V (ignored when D = V,
as the EAGLE authors do); ``embed_tokens.weight``, when present, is the head's own embedding (vLLM uses it too).

Written: the speculators format (:func:`save_speculators`), which is also this plugin's own format for EAGLE-3.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from specdecode import ConfigError

from .checkpoint import EAGLE12_FORMATS, head_directory, head_format, load_state, read_weights, wrong_method
from .eagle3 import Eagle3Config, Eagle3Head
from .head import HeadConfig

SPECULATORS_WEIGHTS = "model.safetensors"
# The speculators release whose Eagle3SpeculatorConfig fields this follows (unchanged on its main branch since).
SPECULATORS_VERSION = "0.7.0"
_SKIPPED = ("verifier_lm_head.weight", "verifier_norm.weight")


class Eagle3Checkpoint:
    """An EAGLE-3 head loaded from disk, the format it came in and its raw config.json."""

    def __init__(self, head: Eagle3Head, format: str, raw: dict[str, Any], path: Path):
        self.head = head
        self.format = format
        self.raw = raw
        self.path = path


def load_eagle3_head(path: str | os.PathLike, dtype: torch.dtype | None = torch.float32) -> Eagle3Checkpoint:
    """Load an EAGLE-3 head from a speculators or EAGLE authors' directory (``dtype`` None: as stored); an EAGLE-1/2
    head is refused, naming method 'eagle'."""
    directory = head_directory(path)
    found = head_format(directory)
    if found in EAGLE12_FORMATS:
        raise wrong_method(directory, found, "eagle3")
    raw = json.loads((directory / "config.json").read_text())
    tensors = {k: v for k, v in read_weights(directory).items() if k not in _SKIPPED}
    if found == "speculators":
        config = _speculators_config(raw, tensors, directory)
    else:
        tensors = {k.replace("midlayer.", "layers.0.", 1): v for k, v in tensors.items()}
        config = _eagle3_config(HeadConfig.from_llama_dict(raw), raw, tensors, norm_before_residual=False)
    if not config.uses_vocab_map:
        tensors = {k: v for k, v in tensors.items() if k not in ("d2t", "t2d")}
    layer = config.layer
    described = (f"hidden_size={layer.hidden_size}, intermediate_size={layer.intermediate_size}, vocab_size="
                 f"{layer.vocab_size}, draft_vocab_size={config.draft_vocab_size}, {config.num_aux} aux layers")
    head = load_state(Eagle3Head(config), tensors, f"EAGLE-3 head at {directory}", described, dtype)
    return Eagle3Checkpoint(head, found, raw, directory)


def _speculators_config(raw: dict[str, Any], tensors: dict[str, torch.Tensor], directory: Path) -> Eagle3Config:
    def refuse(field: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{directory}/config.json: {field!r} must be {allowed} (got {value!r})", field=field,
                           value=value)

    kind = raw.get("speculators_model_type")
    if kind != "eagle3":
        raise refuse("speculators_model_type", kind, "'eagle3' (the speculators type specdecode-eagle reads)")
    layer_raw = raw.get("transformer_layer_config")
    if not isinstance(layer_raw, dict):
        raise refuse("transformer_layer_config", layer_raw, "a transformers config dict")
    model_type = layer_raw.get("model_type", "llama")  # vLLM's default too
    if model_type != "llama":
        raise refuse("transformer_layer_config.model_type", model_type, "'llama' (the layer this plugin builds)")
    if layer_raw.get("num_hidden_layers", 1) != 1:
        raise refuse("transformer_layer_config.num_hidden_layers", layer_raw.get("num_hidden_layers"), "1")
    layer = HeadConfig.from_llama_dict(layer_raw)
    target_hidden = raw.get("target_hidden_size")
    if target_hidden not in (None, layer.hidden_size):
        raise refuse("target_hidden_size", target_hidden, f"null or the head's hidden_size {layer.hidden_size}")
    return _eagle3_config(layer, raw, tensors, norm_before_residual=bool(raw.get("norm_before_residual", True)))


def _eagle3_config(
    layer: HeadConfig, raw: dict[str, Any], tensors: dict[str, torch.Tensor], *, norm_before_residual: bool
) -> Eagle3Config:
    return Eagle3Config(
        layer=layer,
        draft_vocab_size=raw.get("draft_vocab_size") or layer.vocab_size,
        aux_layer_ids=raw.get("eagle_aux_hidden_state_layer_ids"),
        norm_before_residual=norm_before_residual,
        norm_before_fc=bool(raw.get("norm_before_fc", False)),
        fc_norm=bool(raw.get("fc_norm", False)),
        norm_output=bool(raw.get("norm_output", False)),
        own_embedding="embed_tokens.weight" in tensors,
    )


def save_speculators(
    head: Eagle3Head,
    directory: str | os.PathLike,
    *,
    verifier: str | None = None,
    verifier_architectures: tuple[str, ...] | list[str] = (),
    speculative_tokens: int = 3,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``head`` in the speculators format (weights cast to ``dtype``; None: as they are). ``verifier``: the
    target's name or path, recorded as ``speculators_config.verifier.name_or_path`` (vLLM requires the key, not a
    value); ``speculative_tokens``: the default K vLLM takes from the file. Returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous()
        for k, v in head.state_dict().items()
    }
    save_file(tensors, out / SPECULATORS_WEIGHTS, metadata={"format": "pt"})  # "pt": transformers refuses others
    stored = dtype or head.fc.weight.dtype
    record = speculators_config(head.config, verifier=verifier, verifier_architectures=list(verifier_architectures),
                                speculative_tokens=speculative_tokens, dtype=stored)
    (out / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def speculators_config(
    config: Eagle3Config, *, verifier: str | None, verifier_architectures: list[str], speculative_tokens: int,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The config.json of a speculators EAGLE-3 head (no top-level ``model_type``: vLLM and speculators key on
    ``speculators_model_type``)."""
    dtype_name = str(dtype).removeprefix("torch.")
    llama = config.layer.to_llama_config()
    llama.dtype = dtype
    layer = llama.to_dict()
    layer.pop("_name_or_path", None)
    rope = dict(llama.rope_parameters)
    # Readers on transformers 4 (older vLLM) take the legacy keys; transformers 5 prefers rope_parameters.
    layer["rope_theta"] = rope.pop("rope_theta", config.layer.rope_theta)
    layer["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    layer["torch_dtype"] = dtype_name
    return {
        "architectures": ["Eagle3DraftModel"],
        "speculators_model_type": "eagle3",
        "speculators_version": SPECULATORS_VERSION,
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [
                {"proposal_type": "greedy", "speculative_tokens": speculative_tokens, "verifier_accept_k": 1,
                 "accept_tolerance": 0.0}
            ],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier, "architectures": verifier_architectures},
        },
        "transformer_layer_config": layer,
        "draft_vocab_size": config.draft_vocab_size,
        "target_hidden_size": None,
        "eagle_aux_hidden_state_layer_ids": None if config.aux_layer_ids is None else list(config.aux_layer_ids),
        "norm_before_residual": config.norm_before_residual,  # always written: the readers' defaults differ
        "norm_before_fc": config.norm_before_fc,
        "fc_norm": config.fc_norm,
        "norm_output": config.norm_output,
        "embed_requires_grad": False,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
    }
