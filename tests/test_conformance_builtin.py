"""Every built-in speculation method (a plugin under plugins/) passes the conformance kit (specdecode.testing).

Methods that need more than defaults on tiny random models (a draft model, say) get it from SETUPS below. A
built-in method added later that is missing there runs with defaults; if it cannot, add a row instead of skipping
it. Methods installed from elsewhere (examples/specdecode-suffix, third-party packages) run the kit in their own
tests.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import specdecode
import torch
from specdecode.testing import ConformanceCase, run_check, tiny_llama
from specdecode.testing.pytest_support import conformance_params

# Tiny draft and target are the same size; the draft_model plugin rightly warns about that on every build.
pytestmark = pytest.mark.filterwarnings("ignore:the draft model has .* parameters")


@functools.lru_cache(maxsize=8)
def _draft_for(vocab_size: int):
    # Another seed than the target's, so its drafts are often rejected (the rollback check needs rejections).
    return tiny_llama(vocab_size=vocab_size, seed=1)


@functools.lru_cache(maxsize=8)
def _eagle_head_for(vocab_size: int, hidden_size: int) -> str:
    """A random EAGLE head for a tiny target, saved where the plugin loads heads from (a directory)."""
    from specdecode_eagle.checkpoint import save_head
    from specdecode_eagle.head import random_head

    target = tiny_llama(vocab_size=vocab_size, hidden_size=hidden_size)
    head = random_head(target.config, std=0.3)  # larger than the default init, so drafts vary and sometimes match
    directory = tempfile.mkdtemp(prefix="specdecode-eagle-head-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return str(save_head(head.eval(), directory, dtype=torch.float32))


@functools.lru_cache(maxsize=8)
def _eagle3_head_for(vocab_size: int, hidden_size: int, num_layers: int) -> str:
    """A random EAGLE-3 head for a tiny target, saved in the speculators format (a directory)."""
    from specdecode_eagle.eagle3 import random_eagle3_head
    from specdecode_eagle.eagle3_checkpoint import save_speculators

    target = tiny_llama(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers)
    # vLLM's default aux layers (2, L // 2, L - 3) need L >= 4 target layers; the tiny targets have 2.
    head = random_eagle3_head(target.config, std=0.3, aux_layer_ids=(0, num_layers // 2, num_layers - 1))
    directory = tempfile.mkdtemp(prefix="specdecode-eagle3-head-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return str(save_speculators(head, directory))


def _eagle3_config(target) -> dict:
    c = target.config
    return {"draft_model": _eagle3_head_for(c.vocab_size, c.hidden_size, c.num_hidden_layers)}


# method name -> ConformanceCase keywords (besides method=); a list checks the method in several set-ups
SETUPS: dict[str, dict | list[dict]] = {
    "ngram": [
        # Adaptive K learns from the acceptance history: a function of the whole run, not of the tokens alone.
        {"config": {"prompt_lookup_min": 1, "prompt_lookup_max": 3}, "history_only": False},
        {
            "label": "ngram-fixed-k",
            "options": {"adaptive": False},
            "bad_options": [{"adaptive": "yes"}, {"prior_first": 1.5}],
        },
    ],
    "draft_model": {
        "config": lambda target: {"draft_model": _draft_for(target.config.vocab_size)},
        "bad_options": [{"draft_p_min": 1.5}, {"draft_p_min": "high"}],
    },
    "layer_skip": {"bad_options": [{"num_layers": 0}, {"draft_p_min": -0.1}]},
    "eagle": [
        # The back-off (on by default) learns from the acceptance history, and it rightly backs off a random head
        # to no drafts at the default costs: cheaper costs and a confident prior keep it drafting (and rejecting).
        {
            "config": lambda target: {
                "draft_model": _eagle_head_for(target.config.vocab_size, target.config.hidden_size)
            },
            "options": {"confidence_prior": 2.0, "cost_jump": 0.0, "cost_per_token": 0.02, "draft_cost": 0.0},
            "history_only": False,
            "bad_options": [{"head": 3}, {"use_draft_vocab": "yes"}, {"adaptive": "yes"}, {"draft_cost": -1},
                            {"confidence_prior": 0}, {"max_skip": 1.5}],
        },
        {
            "label": "eagle-fixed-k",
            "config": lambda target: {
                "draft_model": _eagle_head_for(target.config.vocab_size, target.config.hidden_size)
            },
            "options": {"adaptive": False},
        },
        {
            # Tree drafts under greedy decoding (sampling falls back to a chain, so those checks run too).
            "label": "eagle-tree",
            "config": lambda target: {
                "draft_model": _eagle_head_for(target.config.vocab_size, target.config.hidden_size)
            },
            "options": {"adaptive": False, "tree_width": 3, "tree_nodes": 10},
            "bad_options": [{"tree_width": 0}, {"tree_nodes": 0}, {"tree_width": 2.5}],
        },
    ],
    "eagle3": [
        # As eagle's: cheap costs and a confident prior keep the back-off drafting a random head.
        {
            "config": _eagle3_config,
            "options": {"confidence_prior": 2.0, "cost_jump": 0.0, "cost_per_token": 0.02, "draft_cost": 0.0},
            "history_only": False,
            "bad_options": [{"head": 3}, {"use_draft_vocab": False}, {"adaptive": "yes"}, {"draft_cost": -1}],
        },
        {
            "label": "eagle3-fixed-tree",
            "config": _eagle3_config,
            "options": {"adaptive": False, "tree_width": 3, "tree_nodes": 10},
        },
    ],
}
# method name -> why it cannot run on tiny random models (keep this empty if at all possible)
CANNOT_RUN: dict[str, str] = {}
# test id -> a known, reported defect (xfail, not strict: the test passes again once it is fixed)
KNOWN_ISSUES: dict[str, str] = {}


BUILT_IN = Path(__file__).resolve().parents[1] / "plugins"


def _built_in_methods() -> list[str]:
    return [info.name for info in specdecode.available_methods() if BUILT_IN in Path(info.location).resolve().parents]


def _cases() -> list[ConformanceCase]:
    cases = []
    for name in _built_in_methods():
        if name in CANNOT_RUN:
            continue
        setups = SETUPS.get(name, {})
        for setup in setups if isinstance(setups, list) else [setups]:
            cases.append(ConformanceCase(method=name, **setup))
    return cases


def test_every_built_in_method_is_checked():
    built_in = set(_built_in_methods())
    assert "ngram" in built_in, "the built-in ngram plugin is not installed; run scripts/setup.sh"
    checked = {case.method for case in _cases()}
    assert checked | set(CANNOT_RUN) == built_in


def _params() -> list:
    params = conformance_params(_cases())
    return [
        pytest.param(
            *p.values, id=p.id, marks=[*p.marks, pytest.mark.xfail(reason=KNOWN_ISSUES[p.id], strict=False)]
        )
        if p.id in KNOWN_ISSUES
        else p
        for p in params
    ]


@pytest.mark.parametrize("case, check", _params())
def test_conformance(case: ConformanceCase, check: str):
    result = run_check(case, check)
    assert result.name == check
