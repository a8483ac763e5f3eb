"""Helpers for testing specdecode and its plugins: tiny random models and the conformance kit.

Plugin authors use these in their own test suites (see docs/plugins/testing.md)::

    from specdecode.testing import ConformanceCase, run_conformance

    def test_my_method_conforms():
        run_conformance(ConformanceCase(method="mymethod", bad_options=[{"depth": 0}]))

pytest users can also subclass :class:`specdecode.testing.pytest_support.ConformanceTests` for one test per check.
"""

from __future__ import annotations

from .conformance import (
    CHECKS,
    BadOptions,
    CheckResult,
    ConformanceCase,
    ConformanceFailure,
    check_bad_options,
    check_empty_proposals,
    check_eos,
    check_greedy_equivalence,
    check_k1,
    check_max_new_tokens,
    check_rollback,
    check_sampling_distribution,
    check_seeded_reproducibility,
    run_check,
    run_conformance,
)
from .models import char_tokenizer, repetitive_prompts, tiny_llama
from .plugins import fresh_registry, registered_plugin, run_cli
from .probe import ContractViolation, ProposerProbe, probe

__all__ = [
    "CHECKS",
    "BadOptions",
    "CheckResult",
    "ConformanceCase",
    "ConformanceFailure",
    "ContractViolation",
    "ProposerProbe",
    "char_tokenizer",
    "check_bad_options",
    "check_empty_proposals",
    "check_eos",
    "check_greedy_equivalence",
    "check_k1",
    "check_max_new_tokens",
    "check_rollback",
    "check_sampling_distribution",
    "check_seeded_reproducibility",
    "fresh_registry",
    "probe",
    "registered_plugin",
    "repetitive_prompts",
    "run_check",
    "run_cli",
    "run_conformance",
    "tiny_llama",
]
