"""Options of ``method="suffix"``, validated when the SpeculativeConfig is built."""

from __future__ import annotations

from typing import Any

import attrs
from specdecode.errors import invalid


def _int_at_least(minimum: int):
    def check(_instance: Any, attribute: attrs.Attribute, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise invalid(f"method_options.{attribute.name}", value, f"an integer >= {minimum}")

    return check


def _positive_number(_instance: Any, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) > 0:
        raise invalid(f"method_options.{attribute.name}", value, "a number > 0")


def _probability(_instance: Any, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise invalid(f"method_options.{attribute.name}", value, "a number in [0, 1)")


@attrs.frozen(kw_only=True)
class SuffixOptions:
    """* ``max_depth``: longest substring the tries index (and so the longest suffix matched), >= 2.
    * ``min_match``: shortest suffix match worth drafting from.
    * ``max_spec_factor``: draft at most this many tokens per matched token (longer matches earn longer drafts).
    * ``min_token_prob``: stop a draft once the estimated probability of its path falls below this.
    * ``cache_outputs``: remember this many earlier outputs of the same target model and draft from them too
      (0 turns the cross-request cache off).
    """

    max_depth: int = attrs.field(default=32, validator=_int_at_least(2))
    min_match: int = attrs.field(default=1, validator=_int_at_least(1))
    max_spec_factor: float = attrs.field(default=1.0, validator=_positive_number)
    min_token_prob: float = attrs.field(default=0.1, validator=_probability)
    cache_outputs: int = attrs.field(default=0, validator=_int_at_least(0))

    def __attrs_post_init__(self) -> None:
        if self.min_match >= self.max_depth:
            raise invalid(
                "method_options.min_match", self.min_match, f"smaller than max_depth ({self.max_depth})"
            )
