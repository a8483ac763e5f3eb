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

Neither format stores the target's embedding or LM head. EAGLE-3 heads (the speculators format and the EAGLE
authors' EAGLE-3 layout) are read by :mod:`specdecode_eagle.eagle3_checkpoint`; :func:`head_format` tells them apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import torch
from specdecode import ConfigError
from torch import nn

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


# What head_format returns: EAGLE-1/2 heads (method "eagle") and EAGLE-3 heads (method "eagle3").
EAGLE12_FORMATS = ("specdecode-eagle", "eagle")
EAGLE3_FORMATS = ("speculators", "eagle3")


def head_directory(path: str | os.PathLike) -> Path:
    """The directory of a head given as its directory or one of its files."""
    directory = Path(path).expanduser()
    if directory.is_file() and directory.name in (HEAD_CONFIG, HEAD_WEIGHTS, "config.json"):
        directory = directory.parent
    return directory


def head_format(path: str | os.PathLike) -> str:
    """Which format the head directory at ``path`` holds: "specdecode-eagle" (ours), "eagle" (the EAGLE authors'
    EAGLE-1/2), "eagle3" (the EAGLE authors' EAGLE-3: ``midlayer.*``, ``d2t``, a ``draft_vocab_size``),
    "speculators" (a speculators config.json: no ``model_type``, a ``speculators_model_type``), or a ConfigError."""
    directory = head_directory(path)
    if (directory / HEAD_CONFIG).is_file():
        return "specdecode-eagle"
    if (directory / "config.json").is_file():
        try:
            raw = json.loads((directory / "config.json").read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{directory / 'config.json'} is not valid JSON ({exc})", field="head",
                              value=str(directory)) from None
        if "speculators_model_type" in raw:
            return "speculators"
        names = _weight_names(directory)
        if "draft_vocab_size" in raw or any(k.startswith("midlayer.") or k in ("d2t", "t2d") for k in names):
            return "eagle3"
        return "eagle"
    raise ConfigError(
        f"'head' must be a directory holding an EAGLE head ({HEAD_CONFIG} + {HEAD_WEIGHTS} written by "
        f"specdecode-eagle; config.json + pytorch_model.bin/model.safetensors in the EAGLE authors' format; or a "
        f"speculators-format EAGLE-3 head) (got {os.fspath(path)!r})",
        field="head",
        value=os.fspath(path),
    )


def wrong_method(directory: Path, found: str, method: str) -> ConfigError:
    """The error for a head of the other EAGLE generation than ``method`` loads."""
    kind = "an EAGLE-3 head" if found in EAGLE3_FORMATS else "an EAGLE-1/2 head"
    other = "eagle" if method == "eagle3" else "eagle3"
    return ConfigError(
        f"{directory} holds {kind} ({found} format); method {method!r} cannot load it: use method {other!r}",
        field="head",
        value=str(directory),
    )


def load_head(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> HeadCheckpoint:
    """Load an EAGLE-1/2 head from a specdecode-eagle directory or an EAGLE authors' directory (detected by its
    files); an EAGLE-3 head is refused, naming method 'eagle3'."""
    directory = head_directory(path)
    found = head_format(directory)
    if found == "specdecode-eagle":
        return _load_own(directory, dtype)
    if found == "eagle":
        return _load_eagle_authors(directory, dtype)
    raise wrong_method(directory, found, "eagle")


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
    tensors = read_weights(directory)
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
    config = attrs.evolve(HeadConfig.from_llama_dict(raw), fc_bias="fc.bias" in tensors)
    head = _build(config, tensors, directory, dtype)
    meta = {"format": "eagle", "source": str(directory), "head": config.to_dict()}
    return HeadCheckpoint(head, None, meta, directory)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of an EAGLE authors' or speculators directory, without a ``model.`` prefix or RoPE tables
    (a .bin file is read with ``weights_only=True``: no code runs)."""
    from safetensors.torch import load_file

    if (directory / "model.safetensors").is_file():
        tensors = load_file(directory / "model.safetensors")
    elif (directory / "pytorch_model.bin").is_file():
        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        tensors = dict(state.get("state_dict", state)) if isinstance(state, dict) else state
    else:
        raise ConfigError(
            f"{directory} has config.json but no weights: expected model.safetensors or pytorch_model.bin",
            field="head",
            value=str(directory),
        )
    return {k.removeprefix("model."): v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}


def _weight_names(directory: Path) -> list[str]:
    if (directory / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(directory / "model.safetensors", framework="pt") as f:
            return list(f.keys())
    return list(read_weights(directory))


def _build(config: HeadConfig, tensors: dict[str, torch.Tensor], source: Path, dtype: torch.dtype) -> EagleHead:
    described = f"hidden_size={config.hidden_size}, intermediate_size={config.intermediate_size}"
    return load_state(EagleHead(config), tensors, f"EAGLE head at {source}", described, dtype)


def load_state(
    module: nn.Module, tensors: dict[str, torch.Tensor], source: str, described: str, dtype: torch.dtype | None
) -> Any:
    """Load ``tensors`` into ``module`` (built from its config), naming every missing, unexpected or misshapen
    tensor and both shapes. Floating tensors are cast to ``dtype`` (None: as stored); integer and bool buffers
    (EAGLE-3's d2t, t2d) keep their type. Returns the module in eval mode."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise ConfigError(
            f"{source} does not match its config: missing {missing or 'nothing'}, "
            f"unexpected {unexpected or 'nothing'}",
            field="head",
            value=source,
        )
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ConfigError(
                f"{source}: {key} has shape {list(tensor.shape)} but its config ({described}) needs "
                f"{list(expected[key].shape)}",
                field="head",
                value=source,
            )
    if dtype is None:
        dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    module.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()})
    return module.to(dtype).eval()


def check_fits_target(checkpoint: HeadCheckpoint, target: Any) -> None:
    """Raise a ConfigError naming both shapes when the head was made for a target of another size."""
    config = checkpoint.head.config
    check_target_shape(target, f"EAGLE head at {checkpoint.path}", hidden_size=config.hidden_size,
                       vocab_size=config.vocab_size, fc_weight=checkpoint.head.fc.weight,
                       token_ids=checkpoint.draft_vocab)


def check_target_shape(
    target: Any, source: str, *, hidden_size: int, vocab_size: int, fc_weight: torch.Tensor, vocab_detail: str = "",
    token_ids: torch.Tensor | None = None,
) -> None:
    """A head's hidden size, vocabulary and draft token ids against the target's embedding and LM head (EAGLE-1/2
    and EAGLE-3 alike); a ConfigError names both sides."""
    embed = target.get_input_embeddings().weight
    lm_head = target.get_output_embeddings().weight
    target_shape = f"target embed_tokens {list(embed.shape)}, lm_head {list(lm_head.shape)}"
    if hidden_size != embed.shape[1] or hidden_size != lm_head.shape[1]:
        raise ConfigError(
            f"{source} has hidden_size {hidden_size} (fc.weight {list(fc_weight.shape)}) but the target's hidden "
            f"size is {embed.shape[1]} ({target_shape}); use a head trained for this target",
            field="head",
            value=source,
        )
    if vocab_size != lm_head.shape[0]:
        raise ConfigError(
            f"{source} has vocab_size {vocab_size}{vocab_detail} but the target's vocabulary has {lm_head.shape[0]} "
            f"tokens ({target_shape}); use a head trained for this target",
            field="head",
            value=source,
        )
    if token_ids is not None and token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= vocab_size):
        raise ConfigError(
            f"{source}: its draft vocabulary holds token ids {int(token_ids.min())}..{int(token_ids.max())}, outside "
            f"the target's vocabulary of {vocab_size} tokens",
            field="head",
            value=source,
        )
