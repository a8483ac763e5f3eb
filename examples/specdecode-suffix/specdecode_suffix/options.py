"""Options of ``method="suffix"``, validated when the SpeculativeConfig is built."""

from __future__ import annotations

import attrs
from specdecode.toolkit import invalid, validators


@attrs.frozen(kw_only=True)
class SuffixOptions:
    """* ``max_depth``: longest substring the tries index (and so the longest suffix matched), >= 2.
    * ``min_match``: shortest suffix match worth drafting from.
    * ``max_spec_factor``: draft at most this many tokens per matched token (longer matches earn longer drafts).
    * ``min_token_prob``: stop a draft once the estimated probability of its path falls below this.
    * ``cache_outputs``: remember this many earlier outputs of the same target model and draft from them too
      (0 turns the cross-request cache off).
    """

    max_depth: int = attrs.field(default=32, validator=validators.integer(2))
    min_match: int = attrs.field(default=1, validator=validators.integer(1))
    max_spec_factor: float = attrs.field(default=1.0, validator=validators.number(0, low_open=True))
    min_token_prob: float = attrs.field(default=0.1, validator=validators.number(0, 1, high_open=True))
    cache_outputs: int = attrs.field(default=0, validator=validators.integer(0))

    def __attrs_post_init__(self) -> None:
        if self.min_match >= self.max_depth:
            raise invalid(
                "method_options.min_match", self.min_match, f"smaller than max_depth ({self.max_depth})"
            )
