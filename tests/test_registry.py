import textwrap
import warnings

import pytest
import specdecode
from specdecode import PluginError, ProposerSpec
from specdecode.registry import _Registry


def _fake_distribution(tmp_path, dist: str, module: str, body: str, version: str = "1.2.3"):
    """Write an installed-looking distribution (a .dist-info with an entry point) plus its module."""
    info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[specdecode.proposers]\n{module} = {module}\n")
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))


GOOD_PLUGIN = """
    import specdecode

    @specdecode.hookimpl
    def specdecode_proposers():
        return [specdecode.ProposerSpec(name="throwaway", factory=lambda *a: None, description="a test method")]
"""


def test_installed_ngram_is_discovered_through_its_entry_point(fresh_registry):
    info = specdecode.get_method("ngram")
    assert info.distribution == "specdecode-ngram"
    assert info.version
    assert info.location.endswith("specdecode_ngram/__init__.py")
    assert "ngram" in [m.name for m in specdecode.available_methods()]


def test_throwaway_distribution_on_the_path_is_discovered(tmp_path, monkeypatch, fresh_registry):
    _fake_distribution(tmp_path, "specdecode-throwaway", "throwaway_plugin", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    specdecode.reset_registry()
    info = specdecode.get_method("throwaway")
    assert (info.distribution, info.version, info.description) == ("specdecode-throwaway", "1.2.3", "a test method")


def test_broken_plugin_is_skipped_with_a_warning_naming_its_distribution(tmp_path, monkeypatch, fresh_registry):
    _fake_distribution(tmp_path, "specdecode-broken", "broken_plugin", "raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SPECDECODE_STRICT_PLUGINS", raising=False)
    with pytest.warns(RuntimeWarning, match=r"distribution 'specdecode-broken'.*needs libfoo"):
        registry = _Registry()
    assert "ngram" in registry.methods()  # the others still work
    assert [f.distribution for f in registry.failures] == ["specdecode-broken"]


def test_strict_mode_turns_a_broken_plugin_into_an_error(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "specdecode-broken", "broken_plugin2", "raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SPECDECODE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="specdecode-broken"):
        _Registry()


def test_two_plugins_claiming_one_name_is_an_error_naming_both(register):
    class Clash:
        @specdecode.hookimpl
        def specdecode_proposers(self):
            return [ProposerSpec(name="ngram", factory=lambda *a: None)]

    register(Clash(), "clashing-plugin")
    with pytest.raises(PluginError) as err:
        specdecode.available_methods()
    assert "specdecode-ngram" in str(err.value) and "clashing-plugin" in str(err.value)


def test_plugin_registered_in_code_is_listed_and_removed(register):
    class InCode:
        @specdecode.hookimpl
        def specdecode_proposers(self):
            return [ProposerSpec(name="in_code", factory=lambda *a: None)]

    name = register(InCode(), "in-code")
    assert specdecode.get_method("in_code").distribution == "<registered in code>"
    specdecode.unregister_plugin(name)
    with pytest.raises(specdecode.UnknownMethodError):
        specdecode.get_method("in_code")
    specdecode.register_plugin(InCode(), name=name)  # let the fixture unregister it


def test_disable_and_load_only_environment_switches(monkeypatch, fresh_registry):
    monkeypatch.setenv("SPECDECODE_DISABLE_PLUGINS", "specdecode-ngram")
    assert "ngram" not in _Registry().methods()
    monkeypatch.delenv("SPECDECODE_DISABLE_PLUGINS")
    monkeypatch.setenv("SPECDECODE_LOAD_PLUGINS", "ngram")
    assert list(_Registry().methods()) == ["ngram"]


def test_hook_specdecode_proposers_returns_typed_records(register):
    class Bad:
        @specdecode.hookimpl
        def specdecode_proposers(self):
            return [{"name": "dict-not-record"}]

    register(Bad(), "bad-records")
    with pytest.raises(PluginError, match="expected specdecode.ProposerSpec"):
        specdecode.available_methods()


def test_no_warnings_when_everything_loads(fresh_registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        specdecode.available_methods()
