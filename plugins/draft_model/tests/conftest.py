"""Fixtures for the draft_model plugin's tests: tiny models, tiny in-process tokenizers, one torch thread."""

from __future__ import annotations

import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the test machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def quiet_size_warning():
    """Tiny pairs are never 10x apart; the size warning has its own tests."""
    from specdecode_draft_model import DraftSizeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DraftSizeWarning)
        yield
