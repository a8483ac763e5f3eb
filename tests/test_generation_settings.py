"""Every generation setting transformers' generate honours, through specdecode.generate and through
model.generate(custom_generate=specdecode.custom_generate): greedy output identical to plain generate with the
same settings (also those in the model's own generation_config), scores and logits as plain generate returns them,
sampled output following the processed distribution, and the modes that cannot be speculative refused."""

from __future__ import annotations

import time

import pytest
import specdecode
import torch
from specdecode import SpeculativeConfig
from specdecode.testing import char_tokenizer, check_sampling_distribution, repetitive_prompts, tiny_llama
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

from .helpers import OracleProposer

VOCAB = 64
NEW = 24
EOS = 9
CONFIG = SpeculativeConfig(method="ngram", num_speculative_tokens=4, prompt_lookup_min=1)
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,"


class PenalizeRepeat(LogitsProcessor):
    """A user's processor that reads the tokens so far: the previous token may not come again."""

    def __call__(self, input_ids, scores):
        return scores.scatter(1, input_ids[:, -1:], float("-inf"))


def _prompts():
    return repetitive_prompts(VOCAB, count=3, seed=3)


def _plain(model, ids, **kwargs):
    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW, **kwargs)


SETTINGS = {
    "repetition_penalty": {"repetition_penalty": 1.3},
    "no_repeat_ngram_size": {"no_repeat_ngram_size": 2},
    "min_new_tokens": {"min_new_tokens": 12, "eos_token_id": EOS},
    "bad_words_ids": {"bad_words_ids": [[5], [7, 8]]},
    "sequence_bias": {"sequence_bias": {(3,): 4.0, (4, 5): -3.0}},
    "suppress_tokens": {"suppress_tokens": [1, 2], "begin_suppress_tokens": [6]},
    "forced_eos_token_id": {"forced_eos_token_id": EOS, "eos_token_id": EOS},
    "renormalize_logits": {"renormalize_logits": True, "repetition_penalty": 1.2},
    "exponential_decay_length_penalty": {"exponential_decay_length_penalty": (4, 1.5), "eos_token_id": EOS},
    "user_processor": {"logits_processor": LogitsProcessorList([PenalizeRepeat()])},
    "prefix_allowed_tokens_fn": {"prefix_allowed_tokens_fn": lambda batch, ids: list(range(0, VOCAB, 2))},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_greedy_is_identical_with_every_processor(tiny_model, name):
    settings = SETTINGS[name]
    for ids in _prompts():
        plain = _plain(tiny_model, ids, **settings)
        out = specdecode.generate(tiny_model, ids, CONFIG, max_new_tokens=NEW, **settings)
        assert torch.equal(out.sequences, plain), name
        # The oracle drafts plain greedy without the processors: rejections at every position they change.
        wrong = specdecode.generate(tiny_model, ids, CONFIG, max_new_tokens=NEW, proposer=OracleProposer(tiny_model),
                                    **settings)
        assert torch.equal(wrong.sequences, plain), name


def test_the_models_own_generation_config_applies(tiny_model):
    """A repetition penalty in the model's generation_config (as Qwen2.5-Instruct ships one) is honoured."""
    model = tiny_llama(vocab_size=VOCAB, seed=5)
    ids = _prompts()[0]
    before = specdecode.generate(model, ids, CONFIG, max_new_tokens=NEW).sequences
    model.generation_config.repetition_penalty = 1.5
    model.generation_config.no_repeat_ngram_size = 3
    plain = _plain(model, ids)
    assert not torch.equal(plain, before)  # the setting matters for this model
    assert torch.equal(specdecode.generate(model, ids, CONFIG, max_new_tokens=NEW).sequences, plain)


def test_custom_generate_in_model_generate(tiny_model):
    ids = _prompts()[1]
    plain = _plain(tiny_model, ids, repetition_penalty=1.3)
    with torch.inference_mode():
        out = tiny_model.generate(
            ids, custom_generate=specdecode.custom_generate, speculative_config={"method": "ngram"},
            do_sample=False, max_new_tokens=NEW, repetition_penalty=1.3,
        )
    assert torch.equal(out, plain)
    with torch.inference_mode():
        out = tiny_model.generate(
            ids, custom_generate=specdecode.custom_generate, speculative_config='{"method": "ngram"}',
            do_sample=False, max_new_tokens=NEW, repetition_penalty=1.3, return_dict_in_generate=True,
        )
    assert torch.equal(out.sequences, plain)
    assert out.speculative_stats.new_tokens == NEW and out.speculative_stats.target_forwards < NEW


def test_batch_with_attention_mask_and_processors(tiny_model):
    """Ragged left-padded batch: processors see the padding too, exactly as in plain batched generate."""
    from specdecode.toolkit import left_pad

    ids, mask = left_pad([p[0] for p in _prompts()], pad_token_id=0)
    settings = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}
    with torch.inference_mode():
        plain = tiny_model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, pad_token_id=0,
                                    **settings)
        custom = tiny_model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, pad_token_id=0,
                                     custom_generate=specdecode.custom_generate, **settings)
    out = specdecode.generate(tiny_model, ids, CONFIG, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0,
                              **settings)
    assert torch.equal(out.sequences, plain)
    assert torch.equal(custom, plain)


@pytest.mark.parametrize("batch", [1, 3])
def test_scores_and_logits_as_plain_generate_returns_them(tiny_model, batch):
    from specdecode.toolkit import left_pad

    ids, mask = left_pad([p[0] for p in _prompts()[:batch]], pad_token_id=0)
    kwargs = dict(attention_mask=mask, do_sample=False, max_new_tokens=NEW, pad_token_id=0, repetition_penalty=1.2,
                  return_dict_in_generate=True, output_scores=True, output_logits=True)
    with torch.inference_mode():
        plain = tiny_model.generate(ids, **kwargs)
        spec = tiny_model.generate(ids, custom_generate=specdecode.custom_generate, **kwargs)
    assert torch.equal(spec.sequences, plain.sequences)
    assert len(spec.scores) == len(plain.scores) == NEW and len(spec.logits) == NEW
    for mine, theirs in zip(spec.scores + spec.logits, plain.scores + plain.logits):
        assert mine.shape == theirs.shape == (batch, VOCAB)
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_streamer_through_model_generate(tiny_model):
    """transformers does not hand the streamer to a custom decoding function: it still gets every token."""

    class Recorder:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    ids = _prompts()[0]
    streamer = Recorder()
    with torch.inference_mode():
        out = tiny_model.generate(ids, custom_generate=specdecode.custom_generate, streamer=streamer,
                                  do_sample=False, max_new_tokens=NEW)
    assert streamer.ended and streamer.chunks[0] == ids[0].tolist()
    assert sum(streamer.chunks[1:], []) == out[0, ids.shape[1] :].tolist()


def test_stop_strings_through_stopping_criteria(tiny_model):
    from transformers.generation.stopping_criteria import StopStringCriteria

    tokenizer = char_tokenizer(ALPHABET)
    ids = _prompts()[0]
    text = tokenizer.decode(_plain(tiny_model, ids)[0, ids.shape[1] :])
    criteria = StoppingCriteriaList([StopStringCriteria(tokenizer, [text[10:12]])])
    plain = _plain(tiny_model, ids, stopping_criteria=criteria)
    with torch.inference_mode():
        spec = tiny_model.generate(ids, custom_generate=specdecode.custom_generate, do_sample=False,
                                   max_new_tokens=NEW, stopping_criteria=criteria)
    assert torch.equal(spec, plain) and plain.shape[1] < ids.shape[1] + NEW


def test_max_time_stops_generation(tiny_model):
    ids = _prompts()[0]
    start = time.perf_counter()
    out = specdecode.generate(tiny_model, ids, CONFIG, max_new_tokens=5000, max_time=0.2)
    assert time.perf_counter() - start < 5.0
    assert ids.shape[1] < out.sequences.shape[1] < ids.shape[1] + 5000


def test_pipeline_with_custom_generate():
    from transformers import pipeline

    model = tiny_llama(vocab_size=len(ALPHABET), seed=2)
    tokenizer = char_tokenizer(ALPHABET)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    kwargs = dict(max_new_tokens=16, do_sample=False, return_full_text=False)
    plain = generator("abcabcabcabcabc", **kwargs)
    spec = generator("abcabcabcabcabc", custom_generate=specdecode.custom_generate,
                     speculative_config={"method": "ngram", "num_speculative_tokens": 3}, **kwargs)
    assert spec == plain and plain[0]["generated_text"]


# -- sampling keeps the processed distribution ----------------------------------------------------------------------

PROCESSED_SAMPLING = (
    {"temperature": 0.3, "repetition_penalty": 1.5},
    {"temperature": 0.3, "min_p": 0.2},
    {"temperature": 0.3, "no_repeat_ngram_size": 2},
    {"temperature": 0.3, "logits_processor": LogitsProcessorList([PenalizeRepeat()])},
)


@pytest.mark.parametrize("setting", PROCESSED_SAMPLING, ids=["repetition_penalty", "min_p", "no_repeat_ngram", "user"])
def test_sampling_follows_the_processed_distribution(setting):
    """The first tokens' joint distribution equals the exact one (transformers' own processors, enumerated) within
    the noise of plain sampling, and long runs pass the martingale test; for n-gram drafts (deterministic) and a
    draft model that samples its drafts from the processed distribution too."""
    from .test_conformance_builtin import _cases

    for case in _cases():
        if case.id in ("ngram", "draft_model", "eagle"):  # deterministic drafts, sampled q, sampled q over V'
            check_sampling_distribution(case, settings=[setting], draws=80, long_runs=2)


# -- refused up front ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_beams": 2}, "num_beams"),
        ({"penalty_alpha": 0.6, "top_k": 4}, "penalty_alpha"),
        ({"guidance_scale": 1.5}, "guidance_scale"),
        ({"prompt_lookup_num_tokens": 3}, "prompt_lookup_num_tokens"),
        ({"return_dict_in_generate": True, "output_attentions": True}, "output_attentions"),
        ({"return_dict_in_generate": True, "output_hidden_states": True}, "output_hidden_states"),
        ({"cache_implementation": "quantized"}, "cache_implementation"),
        ({"cache_implementation": "offloaded"}, "cache_implementation"),
    ],
)
def test_modes_that_cannot_be_speculative_are_refused(tiny_model, kwargs, field):
    ids = _prompts()[0]
    with pytest.raises(specdecode.ConfigError, match=f"'{field}' must be") as info:
        specdecode.generate(tiny_model, ids, CONFIG, max_new_tokens=4, **kwargs)
    assert info.value.field == field
    if kwargs.get("cache_implementation") == "quantized":
        return  # through model.generate, transformers fails first: its quantized cache needs optimum-quanto
    with pytest.raises(specdecode.ConfigError, match=f"'{field}' must be"):
        tiny_model.generate(ids, custom_generate=specdecode.custom_generate, max_new_tokens=4, **kwargs)


def test_assistant_model_is_refused(tiny_model):
    ids = _prompts()[0]
    with pytest.raises(specdecode.ConfigError, match="'assistant_model' must be None") as info:
        tiny_model.generate(ids, custom_generate=specdecode.custom_generate, assistant_model=tiny_model,
                            max_new_tokens=4)
    assert "draft_model" in str(info.value)


def test_static_and_hybrid_caches_are_accepted_with_the_same_output(tiny_model):
    ids = _prompts()[0]
    plain = _plain(tiny_model, ids)
    for implementation in ("static", "dynamic"):
        out = specdecode.generate(tiny_model, ids, CONFIG, max_new_tokens=NEW, cache_implementation=implementation)
        assert torch.equal(out.sequences, plain)


def test_unknown_setting_names_it_and_suggests(tiny_model):
    with pytest.raises(specdecode.ConfigError, match="'repetiton_penalty' is not a generation setting.*'repetition_penalty'"):
        specdecode.generate(tiny_model, _prompts()[0], CONFIG, repetiton_penalty=1.2)


def test_transformers_own_refusals_become_config_errors(tiny_model):
    with pytest.raises(specdecode.ConfigError, match=r"invalid generation arguments: .*penalty.* -1.0"):
        specdecode.generate(tiny_model, _prompts()[0], CONFIG, max_new_tokens=4, repetition_penalty=-1.0)
