"""Every hook is documented in docs/plugins/hooks.md and tested by a test named test_hook_<name>; plus those tests."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import specdecode
import torch
from specdecode import PluginError, ProposerSpec, hookspecs
from specdecode.testing import registered_plugin, tiny_llama

ROOT = Path(__file__).resolve().parents[1]
HOOKS_DOC = ROOT / "docs" / "plugins" / "hooks.md"


def hook_names() -> list[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"  # the attribute pluggy's HookspecMarker sets
    return sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, marker))


def test_hookspecs_are_found():
    assert {"specdecode_proposers", "specdecode_register_commands"} <= set(hook_names())


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented(name):
    text = HOOKS_DOC.read_text()
    section = re.search(rf"^## {name}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert section, f"docs/plugins/hooks.md has no '## {name}' section"
    body = section.group(1)
    for part in ("**Arguments:**", "**When it fires:**", "**Example:**", "@specdecode.hookimpl"):
        assert part in body, f"the '{name}' section of hooks.md lacks {part}"


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_has_a_test(name):
    pattern = re.compile(rf"^\s*def test_hook_{name}\b", flags=re.M)
    assert any(pattern.search(path.read_text()) for path in (ROOT / "tests").rglob("test_*.py")), (
        f"no test named test_hook_{name} under tests/"
    )


# -- the hook tests ------------------------------------------------------------------------------------------


class _Plugin:
    """A plugin as an object: its methods marked with hookimpl are its hook implementations."""

    def __init__(self, specs):
        self.specs = specs

    @specdecode.hookimpl
    def specdecode_proposers(self):
        return self.specs


class _FirstToken(specdecode.PerSequenceProposer):
    def propose_one(self, index, tokens, num_tokens):
        return tokens[:1].repeat(num_tokens)


def test_hook_specdecode_proposers():
    spec = ProposerSpec(name="first-token", factory=lambda m, c, o: _FirstToken(), description="test method")
    with registered_plugin(_Plugin([spec]), name="first-token-plugin"):
        info = specdecode.get_method("first-token")
        assert (info.plugin, info.description, info.spec) == ("first-token-plugin", "test method", spec)
        model = tiny_llama()
        prompt = torch.tensor([[3, 4, 5, 3, 4]])
        out = specdecode.generate(model, prompt, {"method": "first-token"}, max_new_tokens=6)
        assert out.stats.drafted > 0
        assert out.sequences.equal(model.generate(prompt, do_sample=False, max_new_tokens=6))
    assert "first-token" not in {m.name for m in specdecode.available_methods()}


def test_hook_specdecode_proposers_rejects_what_is_not_a_spec():
    with registered_plugin(_Plugin(["not a spec"]), name="bad-plugin"):
        with pytest.raises(PluginError, match="bad-plugin.*expected specdecode.ProposerSpec"):
            specdecode.available_methods()


def test_hook_specdecode_proposers_duplicate_names_name_both_plugins():
    spec = ProposerSpec(name="ngram", factory=lambda m, c, o: _FirstToken())
    with registered_plugin(_Plugin([spec]), name="second-ngram"):
        with pytest.raises(PluginError, match="'ngram' is provided by two plugins.*second-ngram"):
            specdecode.available_methods()


class _CommandPlugin:
    @specdecode.hookimpl
    def specdecode_register_commands(self, subparsers):
        parser = subparsers.add_parser("echo-twice", help="print a word twice")
        parser.add_argument("word")
        parser.set_defaults(func=lambda args: print(args.word, args.word) or 0)


class _BrokenCommandPlugin:
    @specdecode.hookimpl
    def specdecode_register_commands(self, subparsers):
        raise RuntimeError("cannot add my command")


def test_hook_specdecode_register_commands(capsys):
    from specdecode import cli

    with registered_plugin(_CommandPlugin(), name="echo-plugin"):
        assert cli.main(["echo-twice", "hello"]) == 0
        assert capsys.readouterr().out.strip() == "hello hello"
        # Called with the argparse sub-parser action, through the plugin manager as documented.
        parser = argparse.ArgumentParser()
        specdecode.get_plugin_manager().hook.specdecode_register_commands(subparsers=parser.add_subparsers())
        assert parser.parse_args(["echo-twice", "x"]).word == "x"
    with pytest.raises(SystemExit):  # gone once unregistered
        cli.main(["echo-twice", "hello"])


def test_hook_specdecode_register_commands_broken_plugin_does_not_break_the_others(capsys):
    from specdecode import cli

    with registered_plugin(_BrokenCommandPlugin(), name="broken-commands"):
        with registered_plugin(_CommandPlugin(), name="echo-plugin"):
            with pytest.warns(UserWarning, match="broken-commands.*cannot add my command"):
                assert cli.main(["echo-twice", "ok"]) == 0
    assert "ok ok" in capsys.readouterr().out
