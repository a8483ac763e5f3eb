"""Suffix decoding for specdecode (a third-party plugin example).

    pip install specdecode-suffix
    specdecode.generate(model, ids, {"method": "suffix", "max_spec_factor": 2.0})

Drafts come from suffix tries over the prompt, the text generated so far and (optionally) earlier outputs; see
:mod:`specdecode_suffix.proposer`.
"""

from __future__ import annotations

import specdecode
from specdecode import ProposerSpec

from .options import SuffixOptions
from .proposer import SuffixProposer, output_cache

__all__ = ["SuffixOptions", "SuffixProposer"]


def _factory(model, config: specdecode.SpeculativeConfig, options: SuffixOptions) -> SuffixProposer:
    cache = output_cache(model, options.cache_outputs, options.max_depth) if options.cache_outputs else None
    return SuffixProposer(options, cache)


@specdecode.hookimpl
def specdecode_proposers():
    return [
        ProposerSpec(
            name="suffix",
            factory=_factory,
            options_class=SuffixOptions,
            description="Suffix decoding: draft the most frequent continuation of the longest suffix match in "
            "suffix tries over the prompt, the output so far and earlier outputs.",
        )
    ]
