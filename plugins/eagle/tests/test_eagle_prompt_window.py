"""``head_prompt_tokens``: the head's cache takes only a long prompt's last positions. Greedy output still equals
plain generate, the head's state after every update is a fresh head pass over those positions (at their absolute
RoPE positions), and the option is validated."""

import pytest
import specdecode
import torch
from specdecode.testing import tiny_llama
from specdecode_eagle import Eagle3Options, EagleOptions
from specdecode_eagle.eagle3 import Eagle3Drafter, random_eagle3_head
from specdecode_eagle.head import EagleDrafter, random_head
from test_eagle_greedy import RecordingProposer

torch.set_num_threads(1)

WINDOW = 5


@pytest.mark.parametrize("tree_width", [1, 2], ids=["chain", "tree"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-k", "back-off"])
@pytest.mark.parametrize("method", ["eagle", "eagle3"])
def test_a_windowed_head_state_matches_a_fresh_pass_and_output_matches_plain(method, adaptive, tree_width):
    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=4, seed=5)
    if method == "eagle":
        drafter, options = EagleDrafter(random_head(model.config, std=0.3, seed=1), model), EagleOptions
    else:
        drafter, options = Eagle3Drafter(random_eagle3_head(model.config, std=0.3, seed=1), model), Eagle3Options
    proposer = RecordingProposer(drafter, options(adaptive=adaptive, tree_width=tree_width,
                                                  head_prompt_tokens=WINDOW))
    ids = torch.randint(0, 12, (1, 17), generator=torch.Generator().manual_seed(0))
    expected = model.generate(ids, max_new_tokens=40, do_sample=False)
    out = specdecode.generate(model, ids, {"method": method, "num_speculative_tokens": 3}, max_new_tokens=40,
                              proposer=proposer)
    assert torch.equal(out.sequences, expected)
    # Head positions 0..16 read (f_j, x_{j+1}) over the prompt and the first new token: all but the last 5 left out.
    uncached = ids.shape[1] - WINDOW
    assert proposer.uncached == uncached and proposer.records[0][2] == WINDOW  # the first catch-up: the window

    seq = out.sequences
    layers = proposer.hidden_state_layers
    with torch.inference_mode():
        states = model(input_ids=seq, output_hidden_states=True).hidden_states
        hidden = states[-1] if layers is None else torch.cat([states[i] for i in layers], dim=-1)
        fused = drafter.fuse_target_states(hidden[:, uncached:-1])
        features = drafter.features(fused, seq[:, uncached + 1 :], uncached, None)  # absolute positions
        fresh = drafter.logits(features)[0]
    assert len(proposer.records) > 3
    for committed, logits, _ in proposer.records:
        torch.testing.assert_close(logits[0], fresh[committed - 1 - uncached], atol=1e-4, rtol=1e-4)


def test_a_short_prompt_is_read_whole_and_the_option_is_validated():
    model = tiny_llama(vocab_size=12, hidden_size=32, num_layers=2, seed=5)
    proposer = RecordingProposer(EagleDrafter(random_head(model.config, std=0.3), model), EagleOptions())
    assert proposer.options.head_prompt_tokens == 256
    ids = torch.randint(0, 12, (1, 9), generator=torch.Generator().manual_seed(0))
    specdecode.generate(model, ids, {"method": "eagle", "num_speculative_tokens": 3}, max_new_tokens=8,
                        proposer=proposer)
    assert proposer.uncached == 0 and proposer.records[0][2] == ids.shape[1]
    assert EagleOptions(head_prompt_tokens=None).head_prompt_tokens is None
    with pytest.raises(specdecode.ConfigError, match=r"method_options.head_prompt_tokens.*integer >= 1 or null.*got 0"):
        EagleOptions(head_prompt_tokens=0)
