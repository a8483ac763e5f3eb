"""benchmarks/replay.py drives a proposer along plain generate's greedy output instead of running the loop; for it to
stand for the loop, its steps and accepted drafts must be the loop's own."""

import sys
from pathlib import Path

import pytest
import specdecode
import torch
from specdecode.testing import tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from replay import Costs, replay  # noqa: E402


@pytest.mark.parametrize("method", ["ngram", "eagle3"])
def test_a_replay_takes_the_steps_the_loop_takes(method, tmp_path):
    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=4, seed=3)  # a small vocabulary repeats n-grams
    ids = torch.randint(0, 12, (1, 24), generator=torch.Generator().manual_seed(1))
    options = {}
    if method == "eagle3":  # a random EAGLE-3 head for this target, saved where the config can name it
        from specdecode_eagle.eagle3 import random_eagle3_head
        from specdecode_eagle.eagle3_checkpoint import save_speculators

        head = random_eagle3_head(model.config, std=0.3, seed=2)
        save_speculators(head, tmp_path)
        options = {"draft_model": str(tmp_path)}
    config = specdecode.SpeculativeConfig(method=method, num_speculative_tokens=3, prompt_lookup_min=1, **options)
    out = specdecode.generate(model, ids, config, max_new_tokens=40)
    with torch.inference_mode():
        states = model(input_ids=out.sequences, output_hidden_states=True).hidden_states
    costs = Costs({"0": [1.0 + 0.1 * n for n in range(16)]})
    row = replay(model, config, ids.shape[1], out.sequences, states, costs, overhead_ms=0.0)
    assert out.stats.accepted > 0
    assert (row["steps"], row["accepted"]) == (out.stats.steps, out.stats.accepted)
    assert row["plain_ms"] == pytest.approx(39 * 1.0)  # 39 decode steps after the prefill's token, 1 ms each
