"""docs/plugins/tutorial.md cannot rot: its Python blocks run here, in order, in one namespace."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import specdecode

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "plugins" / "tutorial.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_tutorial_has_the_steps():
    blocks = python_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 5
    assert any("run_conformance" in block for block in blocks)
    assert any("@specdecode.hookimpl" in block for block in blocks)


def test_tutorial_code_runs_and_its_method_conforms(capsys):
    # The tutorial registers "the current module" as the plugin, so run the blocks inside a real module.
    module = types.ModuleType("specdecode_tutorial_bigram")
    sys.modules[module.__name__] = module
    try:
        for number, block in enumerate(python_blocks(TUTORIAL.read_text()), 1):
            code = compile(block, f"{TUTORIAL.name} block {number}", "exec")
            exec(code, module.__dict__)
    finally:
        del sys.modules[module.__name__]
    printed = capsys.readouterr().out
    for check in ("greedy_equivalence", "rollback", "sampling_distribution", "bad_options"):
        assert f"{check}:" in printed
    assert "bigram" not in {m.name for m in specdecode.available_methods()}  # unregistered again
    # The pytest base class the tutorial shows is usable as written.
    assert module.TestBigramConformance.case.method == "bigram"
