"""Shared fixtures: tiny random models and a scratch plugin registry."""

from __future__ import annotations

import pytest
import specdecode
import torch
from specdecode.testing import tiny_llama

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_llama(vocab_size=64, hidden_size=32, num_layers=2, seed=0)


@pytest.fixture(scope="session")
def small_vocab_model():
    """Vocabulary of 8 for distribution tests: every outcome gets many samples."""
    return tiny_llama(vocab_size=8, hidden_size=16, num_layers=1, seed=1, num_heads=2, num_kv_heads=1)


@pytest.fixture
def fresh_registry():
    """A registry rebuilt from entry points, reset again afterwards so tests do not leak plugins."""
    specdecode.reset_registry()
    yield specdecode.registry.get_registry()
    specdecode.reset_registry()


@pytest.fixture
def register():
    """Register plugins in code for one test; unregistered in ``finally``."""
    names: list[str] = []

    def _register(plugin, name: str) -> str:
        names.append(specdecode.register_plugin(plugin, name=name))
        return names[-1]

    try:
        yield _register
    finally:
        for name in names:
            specdecode.unregister_plugin(name)
