"""specdecode's conformance kit on the suffix method: with default options and with the cross-request cache."""

from specdecode.testing import BadOptions, ConformanceCase
from specdecode.testing.pytest_support import ConformanceTests

BAD_OPTIONS = [
    {"max_depth": 1},
    {"min_match": 0},
    {"max_spec_factor": 0},
    {"min_token_prob": 1.0},
    {"cache_outputs": -1},
    BadOptions(values={"max_depth": 4, "min_match": 4}, mentions=("smaller than max_depth",)),
]


class TestSuffixConformance(ConformanceTests):
    case = ConformanceCase(method="suffix", bad_options=BAD_OPTIONS)


class TestSuffixWithOutputCacheConformance(ConformanceTests):
    case = ConformanceCase(method="suffix", options={"cache_outputs": 4, "max_spec_factor": 2.0})
    # sampling_distribution: drafts are deterministic either way; the default case covers sampling.
    # seeded_reproducibility: by design, a second run with the same seed drafts from the first run's output, so
    # it consumes random numbers differently (same distribution, different draws).
    skip_checks = ("sampling_distribution", "seeded_reproducibility")
