import json

import attrs
import pytest
import specdecode
from specdecode import ConfigError, ProposerSpec, SpeculativeConfig, UnknownMethodError


def test_defaults_cover_the_five_settings():
    config = SpeculativeConfig()
    assert config.method == "ngram"
    assert config.num_speculative_tokens == 5
    assert config.draft_model is None
    assert config.prompt_lookup_window == (2, 5)
    assert config.acceptance_method == "rejection_sampler"
    assert (config.posterior_threshold, config.posterior_alpha) == (0.09, 0.3)


def test_config_is_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        SpeculativeConfig().num_speculative_tokens = 3  # type: ignore[misc]


def test_round_trip_through_dict_and_json():
    config = SpeculativeConfig(
        method="ngram",
        num_speculative_tokens=7,
        prompt_lookup_min=2,
        prompt_lookup_max=4,
        acceptance_method="typical_acceptance_sampler",
        posterior_threshold=0.2,
        posterior_alpha=0.5,
        disable_by_batch_size=8,
        num_speculative_tokens_per_batch_size=[[1, 4, 5], [5, 8, 2]],
    )
    assert SpeculativeConfig.from_dict(config.to_dict()) == config
    assert SpeculativeConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["num_speculative_tokens"] == 7


def test_vllm_shape_is_accepted():
    config = SpeculativeConfig.from_json(
        '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 2}'
    )
    assert config.num_speculative_tokens == 4
    assert config.prompt_lookup_window == (2, 3)
    vllm = config.to_vllm()
    assert vllm == {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 3}
    assert SpeculativeConfig.from_dict(vllm) == config


def test_vllm_model_key_is_the_draft_model(register):
    register(_plugin_with_options("needs_draft", needs_draft=True), "needs-draft")
    config = SpeculativeConfig.from_dict({"method": "needs_draft", "model": "some/dir"})
    assert config.draft_model == "some/dir"
    assert config.to_vllm()["model"] == "some/dir"


def test_one_lookup_bound_mirrors_the_other_like_vllm():
    assert SpeculativeConfig(prompt_lookup_min=3).prompt_lookup_window == (3, 3)
    assert SpeculativeConfig(prompt_lookup_max=4).prompt_lookup_window == (2, 4)


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(ConfigError) as err:
        SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokenz": 3})
    assert "'num_speculative_tokenz'" in str(err.value)
    assert "num_speculative_tokens" in str(err.value)  # the allowed keys are listed
    assert err.value.field == "num_speculative_tokenz"


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"num_speculative_tokens": 0}, "num_speculative_tokens", "must be an integer >= 1 (got 0)"),
        ({"num_speculative_tokens": 2.5}, "num_speculative_tokens", "(got 2.5)"),
        ({"prompt_lookup_min": 4, "prompt_lookup_max": 2}, "prompt_lookup_min", "min=4, max=2"),
        ({"prompt_lookup_max": 0}, "prompt_lookup_max", "(got 0)"),
        ({"posterior_threshold": 1.5}, "posterior_threshold", "a number in (0, 1] (got 1.5)"),
        ({"posterior_alpha": 0}, "posterior_alpha", "(got 0)"),
        ({"acceptance_method": "greedy"}, "acceptance_method", "rejection_sampler, typical_acceptance_sampler"),
        ({"speculation_schedule": "fast"}, "speculation_schedule", "auto, constant, heuristic, cost_model"),
        ({"disable_by_batch_size": -1}, "disable_by_batch_size", "(got -1)"),
        ({"num_speculative_tokens_per_batch_size": [[4, 2, 3]]}, "num_speculative_tokens_per_batch_size", "batch_lo"),
    ],
)
def test_invalid_values_name_field_value_and_allowed(kwargs, field, fragment):
    with pytest.raises(ConfigError) as err:
        SpeculativeConfig(**kwargs)
    assert err.value.field == field
    assert f"'{field}'" in str(err.value)
    assert fragment in str(err.value)


def test_unknown_method_lists_installed_and_suggests(register):
    register(_plugin_with_options("eagle_like"), "eagle-like")
    with pytest.raises(UnknownMethodError) as err:
        SpeculativeConfig(method="eagle_lik")
    message = str(err.value)
    assert "Unknown speculation method 'eagle_lik'" in message
    assert "Installed:" in message and "eagle_like" in message
    assert "Did you mean 'eagle_like'?" in message


def test_malformed_json_names_the_position():
    with pytest.raises(ConfigError) as err:
        SpeculativeConfig.from_json('{"method": "ngram",}')
    assert "not valid JSON" in str(err.value) and "column" in str(err.value)


def test_method_options_are_validated_by_the_plugin_options_class(register):
    register(_plugin_with_options("opts"), "opts-plugin")
    config = SpeculativeConfig(method="opts", method_options={"depth": 3})
    assert config.options.depth == 3
    # vLLM puts method-specific keys at the top level; they are routed to the options class.
    assert SpeculativeConfig.from_dict({"method": "opts", "depth": 4}).options.depth == 4
    with pytest.raises(ConfigError) as err:
        SpeculativeConfig(method="opts", method_options={"depht": 3})
    assert "Unknown option 'depht' for method 'opts'" in str(err.value) and "Allowed: depth" in str(err.value)
    with pytest.raises(ConfigError) as err:
        SpeculativeConfig(method="opts", method_options={"depth": 0})
    assert "'depth' must be >= 1 (got 0)" in str(err.value)


def test_missing_draft_model_is_reported(register):
    register(_plugin_with_options("needs_draft", needs_draft=True), "needs-draft")
    with pytest.raises(ConfigError) as err:
        SpeculativeConfig(method="needs_draft")
    assert err.value.field == "draft_model"


def test_batch_size_policies():
    config = SpeculativeConfig(disable_by_batch_size=8, num_speculative_tokens_per_batch_size=[[1, 2, 7], [3, 8, 2]])
    assert config.num_tokens_for_batch(1) == 7
    assert config.num_tokens_for_batch(4) == 2
    assert config.num_tokens_for_batch(9) == 0


def _plugin_with_options(name: str, needs_draft: bool = False):
    @attrs.frozen(kw_only=True)
    class Options:
        depth: int = attrs.field(default=1)

        @depth.validator
        def _check(self, attribute, value):
            if value < 1:
                raise specdecode.ConfigError(f"'depth' must be >= 1 (got {value})", field="depth", value=value)

    class Plugin:
        @specdecode.hookimpl
        def specdecode_proposers(self):
            return [
                ProposerSpec(
                    name=name, factory=lambda *a: None, options_class=Options, needs_draft_model=needs_draft
                )
            ]

    return Plugin()
