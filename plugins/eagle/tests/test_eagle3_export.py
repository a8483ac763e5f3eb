"""``specdecode export-eagle``: an EAGLE authors' EAGLE-3 head written in the speculators format and read back,
a speculators head re-exported, and bad arguments refused in one line (exit status 2, no traceback)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from specdecode.testing import run_cli, tiny_llama
from specdecode_eagle.checkpoint import save_head
from specdecode_eagle.eagle3 import random_eagle3_head
from specdecode_eagle.eagle3_checkpoint import load_eagle3_head, save_speculators
from specdecode_eagle.head import random_head
from test_eagle3 import _eagle_authors_eagle3

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def target():
    return tiny_llama(vocab_size=40, hidden_size=32, num_layers=4, seed=2)


@pytest.fixture
def head(target):
    return random_eagle3_head(target.config, std=0.3, draft_vocab=[1, 4, 9, 16, 25, 36], aux_layer_ids=(1, 2, 3))


def test_eagle_authors_head_exports_to_speculators(tmp_path, head, capsys):
    source = _eagle_authors_eagle3(tmp_path / "eagle3", head)
    out = tmp_path / "speculators"
    code = run_cli(["export-eagle", "--head", str(source), "--out", str(out), "--format", "speculators",
                 "--verifier", "tiny-llama", "--speculative-tokens", "5"])
    assert code == 0 and f"wrote {out}" in capsys.readouterr().err
    raw = json.loads((out / "config.json").read_text())
    assert raw["speculators_model_type"] == "eagle3" and raw["norm_before_residual"] is False  # their layer
    assert raw["speculators_config"]["verifier"]["name_or_path"] == "tiny-llama"
    assert raw["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 5
    exported = load_eagle3_head(out)
    assert exported.format == "speculators" and exported.head.config.draft_vocab_size == 6
    for key, tensor in head.state_dict().items():
        assert torch.equal(exported.head.state_dict()[key], tensor), key  # midlayer.* -> layers.0.*, d2t kept


def test_a_speculators_head_reexports_with_a_dtype(tmp_path, head):
    save_speculators(head, tmp_path / "a", verifier="tiny-llama", verifier_architectures=["LlamaForCausalLM"])
    assert run_cli(["export-eagle", "--head", str(tmp_path / "a"), "--out", str(tmp_path / "b"), "--dtype",
                 "float16"]) == 0
    back = load_eagle3_head(tmp_path / "b", dtype=None).head.state_dict()
    assert back["fc.weight"].dtype == torch.float16 and back["d2t"].dtype == torch.int64
    torch.testing.assert_close(back["fc.weight"].float(), head.fc.weight, atol=1e-3, rtol=1e-3)
    verifier = json.loads((tmp_path / "b" / "config.json").read_text())["speculators_config"]["verifier"]
    assert verifier == {"name_or_path": "tiny-llama", "architectures": ["LlamaForCausalLM"]}  # kept


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--format", "gguf"], "'--format' must be one of: speculators (got 'gguf')"),
        (["--dtype", "int8"], "'--dtype' must be one of: float16, bfloat16, float32 (got 'int8')"),
        (["--speculative-tokens", "0"], "'--speculative-tokens' must be an integer >= 1 (got 0)"),
        (["--head", "/no/such/head"], "'--head' must be an existing head directory (got '/no/such/head')"),
        (["--out", "{full}"], "'--out' must be a new or empty directory (got '{full}')"),
        (["--head", "{eagle1}"], "'--head' must be an EAGLE-3 head for --format speculators (this is an EAGLE-1/2 "
                                 "head, specdecode-eagle format; speculators has no EAGLE-1/2 type) (got '{eagle1}')"),
    ],
    ids=["format", "dtype", "tokens", "head", "out", "eagle1"],
)
def test_bad_arguments_are_one_line_errors(tmp_path, target, head, capsys, flags, message):
    save_speculators(head, tmp_path / "head")
    save_head(random_head(target.config, std=0.3), tmp_path / "eagle1")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    paths = {"full": tmp_path / "full", "eagle1": tmp_path / "eagle1"}
    argv = ["export-eagle", "--head", str(tmp_path / "head"), "--out", str(tmp_path / "out")]
    argv += [flag.format(**paths) for flag in flags]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err == f"specdecode: error: {message.format(**paths)}\n"
    assert not (tmp_path / "out").exists()


def test_the_console_script_exits_2_without_a_traceback(tmp_path):
    script = Path(sys.executable).with_name("specdecode")
    result = subprocess.run([str(script), "export-eagle", "--head", str(tmp_path), "--out", str(tmp_path / "o"),
                             "--format", "gguf"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "specdecode: error: '--format' must be one of: speculators (got 'gguf')\n"
