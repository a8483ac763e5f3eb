"""Pair checks: padded vocabularies work (extra ids masked), different tokenizers are refused with a pointer
to cross-tokenizer mode, a draft that is not much smaller is warned about, dtype differences are handled, and
bad options are refused by name."""

from __future__ import annotations

import warnings

import pytest
import specdecode
import torch
from draft_model_helpers import char_tokenizer, plain_greedy, prompts, speculative
from specdecode.testing import tiny_llama
from specdecode_draft_model import DraftSizeWarning, check_pair

VOCAB = 64
NEW = 16


@pytest.fixture(scope="module")
def target():
    return tiny_llama(vocab_size=VOCAB, num_layers=2, seed=0)


def recording(proposer):
    """Wrap ``proposer.propose`` to keep every proposal."""
    seen = []
    original = type(proposer).propose

    def propose(request):
        proposal = original(proposer, request)
        seen.append(proposal)
        return proposal

    proposer.propose = propose
    return seen


@pytest.mark.parametrize("draft_vocab", [VOCAB + 8, VOCAB - 4])
def test_padded_vocabulary_is_accepted_and_extra_ids_are_masked(target, draft_vocab):
    draft = tiny_llama(vocab_size=draft_vocab, num_layers=1, seed=2)
    if draft_vocab > VOCAB:
        with torch.no_grad():  # make the padding rows win every argmax: they must still never be proposed
            draft.lm_head.weight[VOCAB:] = draft.lm_head.weight[:VOCAB].abs().max() * 50
    config = specdecode.SpeculativeConfig(method="draft_model", draft_model=draft)
    for do_sample in (False, True):
        proposer = specdecode.build_proposer(target, config)
        seen = recording(proposer)
        prompt = prompts(VOCAB, count=1)[0]
        out = specdecode.generate(
            target, prompt, config, max_new_tokens=NEW, proposer=proposer, do_sample=do_sample, seed=0
        )
        if not do_sample:
            assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))
        drafted = [p for p in seen if p.num_tokens]
        assert drafted and all(int(p.token_ids.max()) < VOCAB for p in drafted)
        if do_sample:
            assert all(p.draft_probs.shape[-1] == VOCAB for p in drafted)
            assert all(torch.allclose(p.draft_probs.sum(-1), torch.ones(1)) for p in drafted)


def test_vocabularies_far_apart_mean_different_tokenizers(target):
    draft = tiny_llama(
        vocab_size=VOCAB + 2000, num_layers=1, hidden_size=16, num_heads=2, num_kv_heads=1, seed=2
    )
    with pytest.raises(specdecode.ConfigError, match="draft_tokenizer") as info:
        speculative(target, prompts(VOCAB, count=1)[0], NEW, method="draft_model", draft_model=draft)
    assert info.value.field == "draft_model"
    assert "2064" in str(info.value) and "64" in str(info.value)


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_draft_loaded_from_a_path_is_checked_against_the_target_tokenizer(target, tmp_path):
    letters = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.,"[:VOCAB]
    draft_dir = _save(
        tiny_llama(vocab_size=VOCAB, num_layers=1, seed=2), char_tokenizer(letters), tmp_path / "draft"
    )
    prompt = prompts(VOCAB, count=1)[0]

    same = speculative(
        target, prompt, NEW, method="draft_model", draft_model=draft_dir, tokenizer=char_tokenizer(letters)
    )
    assert torch.equal(same.sequences, plain_greedy(target, prompt, NEW))

    with pytest.raises(specdecode.ConfigError, match="cross-tokenizer mode") as info:
        speculative(
            target,
            prompt,
            NEW,
            method="draft_model",
            draft_model=draft_dir,
            tokenizer=char_tokenizer(letters[::-1]),
        )
    assert info.value.field == "draft_model"


def test_draft_by_path_is_loaded_in_the_target_dtype(tmp_path):
    target = tiny_llama(vocab_size=VOCAB, num_layers=2, seed=0).double()
    draft_dir = tmp_path / "draft"
    tiny_llama(vocab_size=VOCAB, num_layers=1, seed=2).save_pretrained(draft_dir)
    config = specdecode.SpeculativeConfig(method="draft_model", draft_model=str(draft_dir))
    proposer = specdecode.build_proposer(target, config)
    assert next(proposer.draft_model.parameters()).dtype == torch.float64
    prompt = prompts(VOCAB, count=1)[0]
    out = specdecode.generate(target, prompt, config, max_new_tokens=NEW, proposer=proposer)
    assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))


def test_draft_object_in_another_dtype_is_used_as_is(target):
    draft = tiny_llama(vocab_size=VOCAB, num_layers=2, seed=0).to(torch.bfloat16)  # the target, in bf16
    prompt = prompts(VOCAB, count=1)[0]
    out = speculative(target, prompt, NEW, method="draft_model", draft_model=draft)
    assert next(draft.parameters()).dtype == torch.bfloat16  # not cast in place
    assert torch.equal(out.sequences, plain_greedy(target, prompt, NEW))
    assert out.stats.acceptance_rate > 0.5


def test_a_draft_not_much_smaller_gets_the_rule_of_thumb_warning(target):
    with pytest.warns(DraftSizeWarning, match="10-20x smaller"):
        report = check_pair(target, target)
    assert report.size_ratio == 1.0

    big = tiny_llama(vocab_size=VOCAB, num_layers=4, hidden_size=128, num_heads=4, num_kv_heads=2, seed=1)
    small = tiny_llama(vocab_size=VOCAB, num_layers=1, hidden_size=16, num_heads=2, num_kv_heads=1, seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = check_pair(big, small)
    assert report.size_ratio > 10
    assert not [w for w in caught if issubclass(w.category, DraftSizeWarning)]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"draft_p_min": 1.5}, "method_options.draft_p_min"),
        ({"draft_p_min": "high"}, "method_options.draft_p_min"),
        ({"draft_tokenizer": 123}, "method_options.draft_tokenizer"),
        ({"num_layers": 2}, "method_options.num_layers"),  # an option of layer_skip, not of draft_model
    ],
)
def test_bad_options_are_refused_by_name(target, options, field):
    with pytest.raises(specdecode.ConfigError) as info:
        specdecode.SpeculativeConfig(method="draft_model", draft_model=target, method_options=options)
    assert info.value.field == field


def test_options_may_sit_at_the_top_level_as_in_vllm(target):
    config = specdecode.SpeculativeConfig.from_dict(
        {"method": "draft_model", "model": target, "draft_p_min": 0.6}
    )
    assert config.options.draft_p_min == 0.6


def test_draft_model_is_required():
    with pytest.raises(specdecode.ConfigError) as info:
        specdecode.SpeculativeConfig(method="draft_model")
    assert info.value.field == "draft_model"


def test_unknown_draft_name_names_the_field(target):
    with pytest.raises(specdecode.ConfigError) as info:
        speculative(
            target, prompts(VOCAB, count=1)[0], NEW, method="draft_model", draft_model="no-such-model-xyz"
        )
    assert info.value.field == "draft_model"
