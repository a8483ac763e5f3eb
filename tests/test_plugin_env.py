"""The plugin environment switches, through the public API and `specdecode methods`, with the registry restored."""

from __future__ import annotations

import os
import textwrap

import pytest
import specdecode
from specdecode import PluginError
from specdecode.testing import fresh_registry


def installed() -> set[str]:
    return {m.name for m in specdecode.available_methods()}


def test_disable_blocks_a_plugin_by_entry_point_or_distribution_name():
    everything = installed()
    assert "ngram" in everything
    for blocked in ("ngram", "specdecode-ngram", "SPECDECODE_NGRAM"):
        with fresh_registry({"SPECDECODE_DISABLE_PLUGINS": blocked}):
            assert installed() == everything - {"ngram"}, blocked
            with pytest.raises(specdecode.UnknownMethodError, match="Unknown speculation method 'ngram'"):
                specdecode.SpeculativeConfig(method="ngram")
    assert installed() == everything  # restored


def test_load_only_keeps_a_subset():
    everything = installed()
    with fresh_registry({"SPECDECODE_LOAD_PLUGINS": "specdecode-ngram"}):
        assert installed() == {"ngram"}
    if "draft_model" in everything:  # one distribution, two methods
        with fresh_registry({"SPECDECODE_LOAD_PLUGINS": "ngram, specdecode_draft_model"}):
            assert installed() == {"ngram", "draft_model", "layer_skip"}
    with fresh_registry({"SPECDECODE_LOAD_PLUGINS": "ngram", "SPECDECODE_DISABLE_PLUGINS": "ngram"}):
        assert installed() == set()  # blocking wins
    assert installed() == everything


def test_methods_listing_follows_the_switches(capsys):
    from specdecode import cli

    with fresh_registry({"SPECDECODE_LOAD_PLUGINS": "ngram"}):
        assert cli.main(["methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ngram")
    assert "specdecode-ngram" in out and "hooks: specdecode_proposers" in out and "loaded from:" in out
    assert "no plugin failed to load" in out


def test_strict_mode_from_the_environment(tmp_path, monkeypatch):
    info = tmp_path / "specdecode_crashes-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: specdecode-crashes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[specdecode.proposers]\ncrashes = crashes_plugin\n")
    (tmp_path / "crashes_plugin.py").write_text(textwrap.dedent("raise RuntimeError('boom at import')\n"))
    monkeypatch.syspath_prepend(str(tmp_path))

    with fresh_registry({"SPECDECODE_STRICT_PLUGINS": "1"}):
        with pytest.raises(PluginError, match="crashes.*boom at import.*SPECDECODE_STRICT_PLUGINS"):
            specdecode.available_methods()
    with fresh_registry({"SPECDECODE_STRICT_PLUGINS": None}):
        with pytest.warns(RuntimeWarning, match="specdecode-crashes"):
            assert "ngram" in installed()
        assert [f.distribution for f in specdecode.plugin_failures()] == ["specdecode-crashes"]
    with fresh_registry({"SPECDECODE_STRICT_PLUGINS": "1", "SPECDECODE_DISABLE_PLUGINS": "specdecode-crashes"}):
        assert "ngram" in installed()  # blocking the broken plugin is the workaround


def test_fresh_registry_restores_the_variables():
    before = {v: os.environ.get(v) for v in ("SPECDECODE_DISABLE_PLUGINS", "SPECDECODE_LOAD_PLUGINS")}
    with fresh_registry({"SPECDECODE_DISABLE_PLUGINS": "ngram", "SPECDECODE_LOAD_PLUGINS": "ngram"}):
        assert os.environ["SPECDECODE_DISABLE_PLUGINS"] == "ngram"
    assert {v: os.environ.get(v) for v in before} == before
    with pytest.raises(ValueError, match="'env' may set only"):
        with fresh_registry({"PATH": "/nowhere"}):
            pass
