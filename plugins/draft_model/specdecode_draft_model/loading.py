"""Turning ``config.draft_model`` / ``draft_tokenizer`` (a path, an embedded name or an object) into objects.

Drafts given by name are loaded once per process (generate() builds a proposer per call) in the target's dtype
and on its device. A loaded draft object is used as it is: the proposer moves logits and tokens between
devices and reads the draft's logits as float32, so a draft in another dtype or on another device still works,
unmodified.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import attrs
import torch
from specdecode import ConfigError


@attrs.frozen(kw_only=True)
class LoadedDraft:
    model: Any
    tokenizer: Any  # the tokenizer saved with the draft, when it was loaded by name or path; else None
    source: str  # for messages


def parameter_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def resolve_draft(draft_model: Any, target: Any) -> LoadedDraft:
    if isinstance(draft_model, (str, os.PathLike)):
        device, dtype = parameter_device_dtype(target)
        model, tokenizer = _load_by_name(os.fspath(draft_model), str(device), dtype)
        return LoadedDraft(model=model, tokenizer=tokenizer, source=repr(os.fspath(draft_model)))
    return LoadedDraft(
        model=draft_model, tokenizer=None, source=f"the given {type(draft_model).__name__} object"
    )


@functools.lru_cache(maxsize=2)
def _load_by_name(name: str, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from specdecode.toolkit import resolve_model_path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        path = resolve_model_path(name)
    except ConfigError as exc:
        raise ConfigError(str(exc), field="draft_model", value=name) from None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):  # a directory with weights only: the tokenizer check then relies on sizes
        tokenizer = None
    return model, tokenizer


def resolve_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object as is; a directory or embedded name loaded (once per process)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        return _load_tokenizer(os.fspath(tokenizer))
    return tokenizer


@functools.lru_cache(maxsize=4)
def _load_tokenizer(name: str) -> Any:
    from specdecode.toolkit import resolve_model_path
    from transformers import AutoTokenizer

    if os.path.isdir(name):  # a tokenizer directory need not hold a model
        return AutoTokenizer.from_pretrained(name)
    try:
        path = resolve_model_path(name)
    except ConfigError as exc:
        raise ConfigError(str(exc), field="method_options.draft_tokenizer", value=name) from None
    return AutoTokenizer.from_pretrained(path)
