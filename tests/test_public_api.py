"""Plugins, the example package, the tutorial and every doc example use only specdecode's declared public API:
the names in ``specdecode.__all__``, ``specdecode.toolkit.__all__`` and (for tests) ``specdecode.testing.__all__``
and ``specdecode.testing.pytest_support.__all__``. Anything else in the core may change without notice."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ("specdecode", "specdecode.toolkit", "specdecode.testing", "specdecode.testing.pytest_support")


def _public_names() -> dict[str, set[str]]:
    return {name: set(importlib.import_module(name).__all__) for name in PUBLIC_MODULES}


def _python_sources() -> list[tuple[str, str]]:
    """(where, code) for every plugin and example module, and every python block of README.md and docs/."""
    sources = []
    for path in sorted([*ROOT.glob("plugins/*/**/*.py"), *ROOT.glob("examples/*/**/*.py")]):
        if "egg-info" not in str(path):
            sources.append((str(path.relative_to(ROOT)), path.read_text()))
    for doc in sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md")]):
        blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
        for i, block in enumerate(blocks):
            sources.append((f"{doc.relative_to(ROOT)} (python block {i + 1})", block))
    return sources


def uses_outside_public_api(code: str, public: dict[str, set[str]]) -> list[str]:
    """Every ``import specdecode.x``, ``from specdecode[.x] import y`` and ``specdecode.<attr>`` that is not public."""
    tree = ast.parse(code)
    bad = []
    aliases = {"specdecode"}  # names bound to the specdecode module itself
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "specdecode" or alias.name.startswith("specdecode."):
                    if alias.name not in PUBLIC_MODULES:
                        bad.append(f"import {alias.name}")
                    if alias.name == "specdecode" and alias.asname:
                        aliases.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and node.module and (
            node.module == "specdecode" or node.module.startswith("specdecode.")
        ):
            allowed = public.get(node.module)
            for alias in node.names:
                if allowed is None or alias.name not in allowed:
                    bad.append(f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr not in public["specdecode"] and f"specdecode.{node.attr}" not in PUBLIC_MODULES:
                bad.append(f"specdecode.{node.attr}")
    return bad


@pytest.mark.parametrize("where,code", _python_sources(), ids=lambda v: v if "/" in str(v) else "")
def test_only_the_public_api_is_used(where, code):
    bad = uses_outside_public_api(code, _public_names())
    assert not bad, f"{where} uses names specdecode does not declare public: {sorted(set(bad))}"


def test_the_checker_catches_private_names():
    public = _public_names()
    code = (
        "import specdecode\nimport specdecode.kernels\nfrom specdecode.errors import invalid\n"
        "from specdecode import generate, _Registry\nfrom specdecode.toolkit import draw\nspecdecode.loop\n"
        "specdecode.generate\n"
    )
    assert sorted(uses_outside_public_api(code, public)) == [
        "from specdecode import _Registry",
        "from specdecode.errors import invalid",
        "import specdecode.kernels",
        "specdecode.loop",
    ]


def test_every_public_name_exists_and_every_toolkit_name_is_documented():
    docs = (ROOT / "docs" / "plugins" / "toolkit.md").read_text()
    for module, names in _public_names().items():
        for name in names:
            assert hasattr(importlib.import_module(module), name), f"{module}.{name} is listed but missing"
    undocumented = [n for n in _public_names()["specdecode.toolkit"] if f"`{n}" not in docs]
    assert not undocumented, f"docs/plugins/toolkit.md does not describe: {undocumented}"
