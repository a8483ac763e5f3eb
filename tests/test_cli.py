"""The ``specdecode`` command line on a tiny model directory: a few runs through the console script, the rest
in-process through ``main([...])`` (faster)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import specdecode
from specdecode import bench
from specdecode.cli import main

from .test_models import write_tiny_model_dir

CONSOLE_SCRIPT = Path(sys.executable).with_name("specdecode")
REPETITIVE = "w1 w2 w3 w4 w1 w2 w3 w4 w1 w2 w3"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-cli-model"))


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    rows = [
        {"id": "a", "category": "copy", "prompt": REPETITIVE},
        {"question_id": 7, "category": "summarization", "turns": ["w5 w6 w7 w5 w6 w7 w5", "second turn is ignored"]},
        {"id": "c", "category": "copy", "prompt": "w9 w8 w9 w8 w9 w8"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run_script(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args], input=stdin, capture_output=True, text=True, timeout=120, env=env
    )


def error_line(err: str) -> str:
    """The error message; asserts it is one clean line without a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("specdecode: error:")]
    assert len(lines) == 1, err
    return lines[0]


# -- through the console script ---------------------------------------------------------------------------


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="console script not installed")
def test_console_script_generates_and_prints_stats(tiny_dir):
    proc = run_script("generate", "--model", str(tiny_dir), "--max-new-tokens", "12", "-k", "3", REPETITIVE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().split()[0].startswith("w")  # the streamed words of the tiny vocabulary
    assert "acceptance rate" in proc.stderr and "12 tokens" in proc.stderr


def test_python_dash_m_reports_a_missing_prompt_file_with_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "specdecode", "generate", "--prompt-file", str(tmp_path / "nope.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "does not exist" in error_line(proc.stderr)


# -- generate ---------------------------------------------------------------------------------------------


def test_generate_reads_stdin_and_streams(tiny_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(REPETITIVE))
    assert main(["generate", "--model", str(tiny_dir), "--max-new-tokens", "10", "-"]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) >= 5
    assert "[ngram K=5]" in err and "mean acceptance length" in err


def test_generate_takes_the_prompt_as_an_option_too(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--max-new-tokens", "6", "--prompt", REPETITIVE]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) >= 3 and "6 tokens" in err
    assert main(["generate", "--model", str(tiny_dir), "--prompt", REPETITIVE, REPETITIVE]) == 2
    assert "not both" in capsys.readouterr().err


def test_generate_output_matches_plain_greedy(tiny_dir, capsys):
    from specdecode.models import encode_prompt, load_model

    assert main(["generate", "--model", str(tiny_dir), "--max-new-tokens", "16", "--prompt-lookup-min", "1", REPETITIVE]) == 0
    streamed = capsys.readouterr().out.split()
    model, tokenizer = load_model(tiny_dir)
    ids = encode_prompt(tokenizer, REPETITIVE)
    plain = bench.plain_generate(model, ids, 16)
    assert streamed == tokenizer.decode(plain).split()


def test_generate_accepts_a_vllm_speculative_config(tiny_dir, capsys):
    config = json.dumps({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3})
    assert main(["generate", "--model", str(tiny_dir), "--max-new-tokens", "6", "--speculative-config", config, REPETITIVE]) == 0
    assert "[ngram K=2]" in capsys.readouterr().err


def test_seeded_sampling_is_reproducible(tiny_dir, capsys):
    argv = ["generate", "--model", str(tiny_dir), "--max-new-tokens", "12", "--temperature", "0.9",
            "--top-k", "20", "--top-p", "0.95", "--seed", "3", REPETITIVE]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first


def test_prompt_file(tiny_dir, tmp_path, capsys):
    path = tmp_path / "prompt.txt"
    path.write_text(REPETITIVE)
    assert main(["generate", "--model", str(tiny_dir), "--max-new-tokens", "4", "--no-chat-template", "--prompt-file", str(path)]) == 0
    assert "4 tokens" in capsys.readouterr().err


# -- bad input: one message, exit 2 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--method", "ngarm", "hi"], "Unknown speculation method 'ngarm'.*Did you mean 'ngram'"),
        (["generate", "--model", "no-such-model", "w1"], "Unknown model 'no-such-model'"),
        (["generate", "-k", "0", "w1"], "'num_speculative_tokens' must be an integer >= 1 \\(got 0\\)"),
        (["generate", "--speculative-config", "{method: ngram}", "w1"], "not valid JSON"),
        (["generate", "--speculative-config", "[1, 2]", "w1"], "'speculative_config' must be a JSON object"),
        (["generate", "--speculative-config", '{"k": 3}', "w1"], "Unknown key 'k' in speculative_config"),
        (["generate", "--method-option", "window", "w1"], "'--method-option' must be KEY=VALUE"),
        (["generate", "--method-option", "depth=3", "w1"], "(?=.*'depth')(?=.*'ngram')"),
        (["generate", "--prompt-lookup-min", "4", "--prompt-lookup-max", "2", "w1"], "'prompt_lookup_min' must be <="),
        (["generate", "--acceptance-method", "greedy", "w1"], "'acceptance_method' must be one of"),
        (["generate", "--temperature", "-1", "w1"], "'temperature' must be >= 0"),
        (["generate", "--top-p", "1.5", "--temperature", "1", "w1"], "'top_p' must be a number in \\(0, 1\\]"),
        (["generate", "--top-k", "5", "w1"], "--top-k and --top-p apply when sampling"),
        (["generate", "--max-new-tokens", "0", "w1"], "'max_new_tokens' must be an integer >= 1"),
        (["generate", "   "], "'prompt' must be non-empty"),
        (["generate"], "no prompt"),
        (["generate", "--json-schema", "/no/such/schema.json", "w1"], "--json-schema: the file '/no/such/schema.json' does not exist"),
        (["generate", "--regex", "[a-z]", "--grammar", "g.ebnf", "w1"], "give one of --json-schema, --regex and --grammar"),
        (["generate", "--logprobs", "0", "w1"], "'logprobs' must be an integer >= 1 \\(got 0\\)"),
        (["generate", "--generation-option", "penalty", "w1"], "'--generation-option' must be KEY=VALUE"),
        (["generate", "--generation-option", "seed=3", "w1"], "--generation-option sets 'seed', which a flag of its own"),
    ],
)
def test_bad_generate_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    import re

    assert re.search(message, error_line(capsys.readouterr().err))


def test_prompt_longer_than_context_exits_2(tiny_dir, capsys):
    long_prompt = " ".join(["w3"] * 1100)  # the tiny model's context is 1024 positions
    assert main(["generate", "--model", str(tiny_dir), "--no-chat-template", long_prompt]) == 2
    assert "longer than the model's context of 1024" in error_line(capsys.readouterr().err)


def test_malformed_jsonl_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "w1 w2"}\n{"prompt": "w1" \n')
    assert main(["bench", "--prompts", str(path)]) == 2
    assert f"{path}:2: not valid JSON" in error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "w1"}\n', "needs a 'turns' list .* or a 'prompt' string"),
        ('{"turns": []}\n', "'turns' must be a non-empty list"),
        ('["w1"]\n', "each line must be a JSON object"),
        ('{"prompt": ""}\n', "the prompt must be non-empty"),
    ],
)
def test_bad_prompt_rows(tmp_path, capsys, content, message):
    import re

    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    assert main(["bench", "--prompts", str(path)]) == 2
    assert re.search(message, error_line(capsys.readouterr().err))


def test_category_filter_without_matches_lists_categories(prompts_file, capsys):
    assert main(["bench", "--prompts", str(prompts_file), "--category", "math"]) == 2
    assert "['copy', 'summarization']" in error_line(capsys.readouterr().err)


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "generate" in capsys.readouterr().err


# -- bench ------------------------------------------------------------------------------------------------


def test_load_prompts_reads_both_formats_and_the_builtin_set(prompts_file):
    records = bench.load_prompts(prompts_file, categories=["summarization", "copy"], limit=2)
    assert [(r.id, r.category) for r in records] == [("a", "copy"), ("7", "summarization")]
    assert records[1].text == "w5 w6 w7 w5 w6 w7 w5"
    builtin = bench.load_prompts()
    assert len(builtin) >= 10 and len({r.category for r in builtin}) >= 4


def test_bench_table_json_and_plot(tiny_dir, prompts_file, tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--max-new-tokens", "10",
            "-k", "2", "4", "--prompt-lookup-min", "1", "--hf-prompt-lookup", "--no-progress", "--limit", "2",
            "--json", str(out_json), "--plot", str(out_png)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "plain generate" in table and "hf prompt lookup" in table
    assert "all 8 outputs identical to plain generate" in table
    data = json.loads(out_json.read_text())
    summary = {s["key"]: s for s in data["summary"]}
    assert set(summary) == {"plain generate", "ngram K=2", "ngram K=4", "hf prompt lookup K=2", "hf prompt lookup K=4"}
    ngram = summary["ngram K=4"]
    assert ngram["prompts"] == 2 and ngram["identical"] == 2
    assert 0.0 <= ngram["acceptance_rate"] <= 1.0 and len(ngram["per_position_acceptance"]) <= 4
    assert ngram["speedup_q1"] <= ngram["speedup_median"] <= ngram["speedup_q3"]
    assert set(ngram["speedup_by_category"]) == {"copy", "summarization"}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_in_bench_prints_the_partial_table(tiny_dir, prompts_file, capsys, monkeypatch):
    calls = {"n": 0}
    real = bench.speculative_generate

    def interrupt_on_second_prompt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # warm-up, prompt 1, then Ctrl-C during prompt 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "speculative_generate", interrupt_on_second_prompt)
    argv = ["bench", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--max-new-tokens", "6", "--no-progress"]
    assert main(argv) == 130
    table = capsys.readouterr().out
    assert "interrupted: the table covers the prompts that finished" in table
    ngram_row = next(line for line in table.splitlines() if line.startswith("ngram"))
    assert ngram_row.split()[2] == "1"  # the prompts column: only the finished prompt counts


# -- tune -------------------------------------------------------------------------------------------------


def test_tune_sweeps_predicts_and_recommends(tiny_dir, prompts_file, tmp_path, capsys):
    out_json = tmp_path / "tune.json"
    argv = ["tune", "--model", str(tiny_dir), "--prompts", str(prompts_file), "--limit", "1",
            "--max-new-tokens", "8", "--k-values", "1", "3", "--windows", "1:2", "1:3", "--repeats", "1",
            "--no-progress", "--json", str(out_json), "--plot", str(tmp_path / "tune.png")]
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert "verify cost" in report and "recommendation:" in report
    data = json.loads(out_json.read_text())
    assert sorted(data["verify_cost_seconds"]) == ["1", "2", "3", "4"]
    settings = [(p["k"], tuple(p["window"])) for p in data["points"]]
    assert settings[:2] == [(1, (2, 5)), (3, (2, 5))]
    assert [window for _, window in settings[2:]] == [(1, 2), (1, 3)]  # both windows kept apart
    assert all(p["predicted_speedup"] > 0 and p["identical"] == p["prompts"] for p in data["points"])
    assert (tmp_path / "tune.png").exists()


def test_leviathan_formula():
    from specdecode.costs import expected_tokens
    from specdecode.tune import CostCurve, predicted_speedup

    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    flat = CostCurve(context=10, seconds={1: 1.0, 2: 1.0, 3: 1.0})
    assert predicted_speedup(0.5, 2, flat) == pytest.approx(1.75)
    assert predicted_speedup(0.5, 2, CostCurve(context=10, seconds={1: 1.0, 2: 1.5, 3: 2.0})) == pytest.approx(0.875)


def test_bad_window_exits_2(capsys):
    assert main(["tune", "--windows", "5:2"]) == 2
    assert "'--windows' must be MIN:MAX" in error_line(capsys.readouterr().err)


# -- methods and plugin commands --------------------------------------------------------------------------


def test_methods_verbose_shows_origin_and_failures(capsys):
    assert main(["methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "specdecode-ngram" in out and "loaded from:" in out and "hooks: specdecode_proposers" in out
    assert "failed to load" in out


class HelloCommandPlugin:
    @specdecode.hookimpl
    def specdecode_register_commands(self, subparsers):
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("--name", default="world")
        parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 7)


def test_plugins_add_commands(register, capsys):
    register(HelloCommandPlugin(), name="hello-plugin")
    assert main(["hello", "--name", "tests"]) == 7
    assert capsys.readouterr().out == "hello tests\n"


class BrokenCommandPlugin:
    @specdecode.hookimpl
    def specdecode_register_commands(self, subparsers):
        raise RuntimeError("boom")


def test_a_broken_command_plugin_does_not_break_the_cli(register, capsys):
    register(BrokenCommandPlugin(), name="broken-commands")
    with pytest.warns(UserWarning, match="'broken-commands' failed to add its commands: RuntimeError: boom"):
        assert main(["methods"]) == 0
    assert "ngram" in capsys.readouterr().out


@pytest.mark.real_model
def test_real_model_generate_with_ngram(capsys):
    argv = ["generate", "--max-new-tokens", "24", "--method", "ngram",
            "Repeat exactly: the cat sat on the mat. The cat sat on the mat."]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "cat" in out.lower() and "acceptance rate" in err


def test_bench_rejects_variants_that_would_share_a_row():
    variant = bench.Variant.speculative(specdecode.SpeculativeConfig(num_speculative_tokens=3))
    prompt = bench.PromptRecord(id="1", category="c", text="w1")
    with pytest.raises(specdecode.ConfigError, match="bench variants must differ"):
        bench.run_bench(None, None, [prompt], [variant, variant])


def test_json_schema_file_must_be_json(tmp_path, capsys):
    path = tmp_path / "schema.json"
    path.write_text("{not json")
    assert main(["generate", "--json-schema", str(path), "w1"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("specdecode: error: --json-schema: ") and "is not valid JSON" in line


def test_logprobs_lines_list_the_token_and_its_alternatives():
    import torch
    from specdecode.cli import format_logprobs
    from specdecode.testing import char_tokenizer

    tokenizer = char_tokenizer("abc")
    scores = [torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 5.0]])]
    lines = format_logprobs(tokenizer, [0, 2], scores, top=2).splitlines()
    assert len(lines) == 2
    first = torch.tensor([2.0, 1.0, 0.0]).log_softmax(-1)
    assert "'a'" in lines[0] and f"{float(first[0]):8.3f}" in lines[0] and "'b'" in lines[0].split("|")[1]
    assert lines[1].split("|")[1].strip().startswith("'c'")
