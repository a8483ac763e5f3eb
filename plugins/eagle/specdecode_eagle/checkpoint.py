"""Saving and loading EAGLE heads.

Two formats are read:

* **specdecode-eagle** (what this plugin writes): a directory with ``eagle_head.json`` (the :class:`HeadConfig`, the
  draft vocabulary size and how the head was trained) and ``eagle_head.safetensors`` (the head's weights, plus
  ``draft_vocab`` when the head scores a subset of the vocabulary).
* **EAGLE authors' format** (SafeAILab/EAGLE, loaded by vLLM's ``EagleLlamaForCausalLM`` and SGLang): a directory with
  a Llama ``config.json`` and ``pytorch_model.bin`` or ``model.safetensors`` holding ``fc.weight`` (optional
  ``fc.bias``), ``layers.0.self_attn.{q,k,v,o}_proj.weight``, ``layers.0.mlp.{gate,up,down}_proj.weight``,
  ``layers.0.post_attention_layernorm.weight`` and often a copy of ``embed_tokens.weight``, which is ignored (the
  target's embedding is used) after its shape is checked.

Neither format stores the target's embedding or LM head.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from specdecode import ConfigError

from .head import EagleHead, HeadConfig

HEAD_CONFIG = "eagle_head.json"
HEAD_WEIGHTS = "eagle_head.safetensors"
FORMAT_NAME = "specdecode-eagle"
FORMAT_VERSION = 1
# In EAGLE checkpoints but not ours to load: copies of target weights and rotary tables.
_IGNORED_KEYS = ("embed_tokens.weight", "lm_head.weight")


class HeadCheckpoint:
    """A head loaded from disk: its module, its optional draft vocabulary and the metadata it was saved with."""

    def __init__(self, head: EagleHead, draft_vocab: torch.Tensor | None, meta: dict[str, Any], path: Path):
        self.head = head
        self.draft_vocab = draft_vocab
        self.meta = meta
        self.path = path


def save_head(
    head: EagleHead, directory: str | os.PathLike, *, draft_vocab: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float16, meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``head`` in the specdecode-eagle format (weights cast to ``dtype``). Returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in head.state_dict().items()}
    if draft_vocab is not None:
        tensors["draft_vocab"] = draft_vocab.to(torch.int64).contiguous()
    save_file(tensors, out / HEAD_WEIGHTS, metadata={"format": FORMAT_NAME})
    record = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "head": head.config.to_dict(),
        "draft_vocab_size": None if draft_vocab is None else int(draft_vocab.numel()),
        **(meta or {}),
    }
    (out / HEAD_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    return out


def load_head(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> HeadCheckpoint:
    """Load a head from a specdecode-eagle directory or an EAGLE authors' directory (detected by its files)."""
    directory = Path(path).expanduser()
    if directory.is_file() and directory.name in (HEAD_CONFIG, HEAD_WEIGHTS, "config.json"):
        directory = directory.parent
    if (directory / HEAD_CONFIG).is_file():
        return _load_own(directory, dtype)
    if (directory / "config.json").is_file():
        return _load_eagle_authors(directory, dtype)
    raise ConfigError(
        f"'head' must be a directory holding an EAGLE head ({HEAD_CONFIG} + {HEAD_WEIGHTS} written by "
        f"specdecode-eagle, or config.json + pytorch_model.bin/model.safetensors in the EAGLE authors' format) "
        f"(got {os.fspath(path)!r})",
        field="head",
        value=os.fspath(path),
    )


def _load_own(directory: Path, dtype: torch.dtype) -> HeadCheckpoint:
    from safetensors.torch import load_file

    meta = json.loads((directory / HEAD_CONFIG).read_text())
    if meta.get("format") != FORMAT_NAME:
        raise ConfigError(
            f"{directory / HEAD_CONFIG} has format {meta.get('format')!r}; expected {FORMAT_NAME!r}",
            field="head",
            value=str(directory),
        )
    config = HeadConfig.from_dict(meta["head"])
    tensors = load_file(directory / HEAD_WEIGHTS)
    draft_vocab = tensors.pop("draft_vocab", None)
    head = _build(config, tensors, directory, dtype)
    return HeadCheckpoint(head, draft_vocab, meta, directory)


def _load_eagle_authors(directory: Path, dtype: torch.dtype) -> HeadCheckpoint:
    raw = json.loads((directory / "config.json").read_text())
    tensors = _read_weights(directory)
    tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    if any(k.startswith("midlayer.") or k in ("d2t", "t2d") for k in tensors):
        raise ConfigError(
            f"{directory} holds an EAGLE-3 head (keys midlayer.* / d2t); specdecode-eagle loads EAGLE-1/EAGLE-2 "
            "heads (fc.weight + layers.0.*)",
            field="head",
            value=str(directory),
        )
    if "fc.weight" not in tensors:
        raise ConfigError(
            f"{directory} is not an EAGLE head: no 'fc.weight' among its weights (found: "
            f"{', '.join(sorted(tensors)[:8])})",
            field="head",
            value=str(directory),
        )
    for key in _IGNORED_KEYS:
        table = tensors.pop(key, None)
        if table is not None and int(table.shape[0]) != int(raw.get("vocab_size", table.shape[0])):
            raise ConfigError(
                f"{directory}: {key} has shape {list(table.shape)} but config.json says vocab_size="
                f"{raw.get('vocab_size')}",
                field="head",
                value=str(directory),
            )
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    heads = raw["num_attention_heads"]
    config = HeadConfig(
        hidden_size=raw["hidden_size"],
        vocab_size=raw["vocab_size"],
        intermediate_size=raw["intermediate_size"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float((raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta", 10000.0))),
        max_position_embeddings=raw.get("max_position_embeddings", 8192),
        hidden_act=raw.get("hidden_act", "silu"),
        fc_bias="fc.bias" in tensors,
    )
    head = _build(config, tensors, directory, dtype)
    meta = {"format": "eagle", "source": str(directory), "head": config.to_dict()}
    return HeadCheckpoint(head, None, meta, directory)


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (directory / "model.safetensors").is_file():
        return load_file(directory / "model.safetensors")
    if (directory / "pytorch_model.bin").is_file():
        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return dict(state.get("state_dict", state)) if isinstance(state, dict) else state
    raise ConfigError(
        f"{directory} has config.json but no weights: expected model.safetensors or pytorch_model.bin",
        field="head",
        value=str(directory),
    )


def _build(config: HeadConfig, tensors: dict[str, torch.Tensor], source: Path, dtype: torch.dtype) -> EagleHead:
    head = EagleHead(config)
    expected = head.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise ConfigError(
            f"EAGLE head at {source} does not match its config: missing {missing or 'nothing'}, "
            f"unexpected {unexpected or 'nothing'}",
            field="head",
            value=str(source),
        )
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ConfigError(
                f"EAGLE head at {source}: {key} has shape {list(tensor.shape)} but its config "
                f"(hidden_size={config.hidden_size}, intermediate_size={config.intermediate_size}) needs "
                f"{list(expected[key].shape)}",
                field="head",
                value=str(source),
            )
    head.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})
    return head.to(dtype).eval()


def check_fits_target(checkpoint: HeadCheckpoint, target: Any) -> None:
    """Raise a ConfigError naming both shapes when the head was made for a target of another size."""
    config = checkpoint.head.config
    embed = target.get_input_embeddings().weight
    lm_head = target.get_output_embeddings().weight
    target_shape = f"target embed_tokens {list(embed.shape)}, lm_head {list(lm_head.shape)}"
    fc_shape = list(checkpoint.head.fc.weight.shape)
    if config.hidden_size != embed.shape[1] or config.hidden_size != lm_head.shape[1]:
        raise ConfigError(
            f"EAGLE head at {checkpoint.path} has hidden_size {config.hidden_size} (fc.weight {fc_shape}) but the "
            f"target's hidden size is {embed.shape[1]} ({target_shape}); use a head trained for this target",
            field="head",
            value=str(checkpoint.path),
        )
    if config.vocab_size != lm_head.shape[0]:
        raise ConfigError(
            f"EAGLE head at {checkpoint.path} has vocab_size {config.vocab_size} but the target's vocabulary has "
            f"{lm_head.shape[0]} tokens ({target_shape}); use a head trained for this target",
            field="head",
            value=str(checkpoint.path),
        )
    vocab = checkpoint.draft_vocab
    if vocab is not None and vocab.numel() and (int(vocab.min()) < 0 or int(vocab.max()) >= lm_head.shape[0]):
        raise ConfigError(
            f"EAGLE head at {checkpoint.path}: its draft vocabulary holds token ids up to {int(vocab.max())}, "
            f"outside the target's vocabulary of {lm_head.shape[0]} tokens",
            field="head",
            value=str(checkpoint.path),
        )
