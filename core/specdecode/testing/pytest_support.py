"""pytest helpers for the conformance kit. Importing this module needs pytest; the rest of the kit does not.

Either subclass :class:`ConformanceTests` (one test per check)::

    class TestMyMethod(ConformanceTests):
        case = ConformanceCase(method="mymethod", bad_options=[{"depth": 0}])

or parametrize over several methods and checks::

    @pytest.mark.parametrize("case, check", conformance_params(cases))
    def test_conformance(case, check):
        run_check(case, check)
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from .conformance import CHECKS, ConformanceCase, run_check

__all__ = ["ConformanceTests", "conformance_params"]


def conformance_params(
    cases: Iterable[ConformanceCase], *, checks: Iterable[str] | None = None, skip: Iterable[str] = ()
) -> list:
    """``pytest.param(case, check_name)`` for every case and check, with ids like ``ngram-greedy_equivalence``."""
    names = list(checks) if checks is not None else list(CHECKS)
    skipped = set(skip)
    return [
        pytest.param(case, name, id=f"{case.id}-{name}", marks=[pytest.mark.slow] if name in SLOW_CHECKS else [])
        for case in cases
        for name in names
        if name not in skipped
    ]


# Checks that take many generations; marked ``slow`` so a quick run can leave them out with -m "not slow".
SLOW_CHECKS = frozenset({"sampling_distribution"})


class ConformanceTests:
    """Base class: set ``case`` (and optionally ``skip_checks``) in a subclass named ``Test...``."""

    case: ConformanceCase
    skip_checks: tuple[str, ...] = ()

    def _run(self, name: str) -> None:
        if name in self.skip_checks:
            pytest.skip(f"{name} skipped by {type(self).__name__}.skip_checks")
        run_check(self.case, name)

    def test_greedy_equivalence(self):
        self._run("greedy_equivalence")

    def test_k1(self):
        self._run("k1")

    def test_rollback(self):
        self._run("rollback")

    def test_empty_proposals(self):
        self._run("empty_proposals")

    def test_max_new_tokens(self):
        self._run("max_new_tokens")

    def test_eos(self):
        self._run("eos")

    @pytest.mark.slow
    def test_sampling_distribution(self):
        self._run("sampling_distribution")

    def test_seeded_reproducibility(self):
        self._run("seeded_reproducibility")

    def test_bad_options(self):
        self._run("bad_options")
