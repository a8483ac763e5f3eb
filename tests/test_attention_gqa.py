"""On a CPU the loop lets SDPA read grouped K/V heads in place under its verify masks (attention.grouped_kv_in_place):
the same logits without the copy, only while the loop runs, never over a user's own setting or on accelerators."""

import os
from types import SimpleNamespace

import specdecode
import torch
import transformers.integrations.sdpa_attention as sdpa
from specdecode import Proposal, Proposer
from specdecode.attention import FORCE_GQA_ENV, grouped_kv_in_place
from specdecode.testing import tiny_llama
from transformers import DynamicCache


def _masked_verify(model, past_ids, ids):
    """Logits of a 4-row pass with an explicit tree-like mask after ``past_ids`` (as the loop's verify passes)."""
    past, n = past_ids.shape[1], ids.shape[1]
    cache = DynamicCache(config=model.config)
    model(input_ids=past_ids, cache=cache, use_cache=True)
    mask = torch.zeros(1, 1, n, past + n)
    mask[..., past:] = torch.triu(torch.full((n, n), float("-inf")), 1)
    mask[..., 2, past + 1] = float("-inf")  # node 2 is a sibling of node 1, not its child
    return model(input_ids=ids, cache=cache, use_cache=True, attention_mask=mask,
                 position_ids=torch.arange(past, past + n).unsqueeze(0)).logits


def test_grouped_heads_in_place_give_the_same_logits_without_the_copy(monkeypatch):
    model = tiny_llama(num_heads=4, num_kv_heads=2, num_layers=2, seed=1)
    assert model.config._attn_implementation == "sdpa"
    copies = []
    original = sdpa.repeat_kv
    monkeypatch.setattr(sdpa, "repeat_kv", lambda *a: copies.append(1) or original(*a))
    monkeypatch.delenv(FORCE_GQA_ENV, raising=False)
    g = torch.Generator().manual_seed(0)
    past_ids, ids = torch.randint(0, 64, (1, 40), generator=g), torch.randint(0, 64, (1, 4), generator=g)
    with torch.inference_mode():
        expanded = _masked_verify(model, past_ids, ids)
        assert copies  # transformers copies the K/V heads under a mask
        copies.clear()
        with grouped_kv_in_place(model):
            in_place = _masked_verify(model, past_ids, ids)
    assert not copies
    torch.testing.assert_close(in_place, expanded, rtol=0, atol=1e-6)
    assert FORCE_GQA_ENV not in os.environ


class Recording(Proposer):
    """Drafts the next two tokens of a fixed continuation and records the switch during the loop."""

    def __init__(self):
        self.seen = []

    def propose(self, request):
        self.seen.append(os.environ.get(FORCE_GQA_ENV))
        return Proposal(token_ids=torch.tensor([[1, 2]]))


def test_the_loop_sets_the_switch_while_it_runs_and_keeps_a_users_own(monkeypatch):
    model = tiny_llama(num_heads=4, num_kv_heads=2, num_layers=2, seed=1)
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    expected = model.generate(ids, max_new_tokens=10, do_sample=False)
    monkeypatch.delenv(FORCE_GQA_ENV, raising=False)
    proposer = Recording()
    out = specdecode.generate(model, ids, {"method": "ngram", "num_speculative_tokens": 2}, max_new_tokens=10,
                              proposer=proposer)
    assert torch.equal(out.sequences, expected)
    assert proposer.seen and set(proposer.seen) == {"1"} and FORCE_GQA_ENV not in os.environ
    monkeypatch.setenv(FORCE_GQA_ENV, "0")
    proposer = Recording()
    specdecode.generate(model, ids, {"method": "ngram", "num_speculative_tokens": 2}, max_new_tokens=10,
                        proposer=proposer)
    assert set(proposer.seen) == {"0"} and os.environ[FORCE_GQA_ENV] == "0"


def test_accelerators_are_left_alone(monkeypatch):
    monkeypatch.delenv(FORCE_GQA_ENV, raising=False)
    with grouped_kv_in_place(SimpleNamespace(device=torch.device("cuda", 0))):
        assert FORCE_GQA_ENV not in os.environ


def test_nested_and_overlapping_loops_keep_the_switch_until_the_last_one_leaves(monkeypatch):
    monkeypatch.delenv(FORCE_GQA_ENV, raising=False)
    cpu = SimpleNamespace(device=torch.device("cpu"))
    outer = grouped_kv_in_place(cpu)
    outer.__enter__()
    with grouped_kv_in_place(cpu):
        assert os.environ[FORCE_GQA_ENV] == "1"
    assert os.environ[FORCE_GQA_ENV] == "1"  # the outer loop still runs
    outer.__exit__(None, None, None)
    assert FORCE_GQA_ENV not in os.environ
