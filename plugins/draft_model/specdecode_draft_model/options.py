"""Options of ``method="draft_model"`` and ``method="layer_skip"``, validated when the SpeculativeConfig is
built."""

from __future__ import annotations

import os
from typing import Any

import attrs
from specdecode.toolkit import invalid, validators


def _check_tokenizer(instance: Any, attribute: attrs.Attribute, value: object) -> None:
    if value is None or isinstance(value, (str, os.PathLike)):
        return
    if not (callable(getattr(value, "decode", None)) and callable(value)):
        raise invalid(
            validators.option_name(attribute),
            value,
            "a tokenizer object, a local tokenizer directory or an embedded model name",
        )


_p_min = validators.number(0, 1, high_open=True, optional=True, meaning="(no early stop)")


@attrs.frozen(kw_only=True)
class DraftModelOptions:
    """Options of ``method="draft_model"``.

    * ``draft_p_min``: stop drafting at the first draft token whose draft probability (the top probability of
      the draft's distribution) is below this, as llama.cpp's ``--draft-p-min``; that token is not proposed.
    * ``draft_tokenizer``: the draft's own tokenizer (object, directory or embedded name). Setting it turns on
      cross-tokenizer drafting: the draft works in its own tokens and proposals reach the target through text.
      The target's tokenizer must then be passed to ``generate(tokenizer=...)``.
    """

    draft_p_min: float | None = attrs.field(default=None, validator=_p_min)
    draft_tokenizer: Any = attrs.field(default=None, validator=_check_tokenizer, eq=False)


@attrs.frozen(kw_only=True)
class LayerSkipOptions:
    """Options of ``method="layer_skip"``.

    * ``num_layers``: the first N decoder layers of the target (plus its final norm and LM head) form the
      draft; default: half of the target's layers. Must be below the target's layer count.
    * ``draft_p_min``: as for ``draft_model``.
    """

    num_layers: int | None = attrs.field(
        default=None, validator=validators.integer(1, optional=True, meaning="(layers kept in the draft)")
    )
    draft_p_min: float | None = attrs.field(default=None, validator=_p_min)
