"""The installed package is found through its entry point, and its drafts pay off on repetitive text."""

import specdecode
import torch
from specdecode.testing import tiny_llama
from specdecode_suffix.proposer import OutputCache


def test_entry_point_makes_the_method_selectable():
    info = specdecode.get_method("suffix")
    assert info.distribution == "specdecode-suffix"
    assert info.location.endswith("__init__.py")
    config = specdecode.SpeculativeConfig(method="suffix", method_options={"max_depth": 8})
    assert config.options.max_depth == 8


def test_repetitive_prompt_gets_drafts_accepted():
    model = tiny_llama(vocab_size=32, seed=0)
    prompt = torch.arange(2, 12).repeat(1, 4)  # the model's continuation of a loop tends to loop too
    out = specdecode.generate(model, prompt, {"method": "suffix"}, max_new_tokens=24)
    assert torch.equal(out.sequences, model.generate(prompt, do_sample=False, max_new_tokens=24))
    assert out.stats.accepted > 0


def test_earlier_outputs_are_drafted_from_on_the_next_request():
    model = tiny_llama(vocab_size=64, seed=2)
    prompt = torch.tensor([[5, 9, 13, 2, 40]])
    config = {"method": "suffix", "cache_outputs": 2, "max_spec_factor": 4.0}
    first = specdecode.generate(model, prompt, config, max_new_tokens=20)
    second = specdecode.generate(model, prompt, config, max_new_tokens=20)
    assert torch.equal(first.sequences, second.sequences)
    # The second request finds the first one's output in the cache: more drafted and accepted, fewer forwards.
    assert second.stats.accepted > first.stats.accepted
    assert second.stats.target_forwards < first.stats.target_forwards


def test_output_cache_forgets_the_oldest_output():
    cache = OutputCache(size=1, max_depth=4)
    cache.add([1, 2, 3])
    cache.add([4, 5, 6])
    assert list(cache.outputs) == [[4, 5, 6]]
    assert 1 not in cache.trie.root.children and 4 in cache.trie.root.children
