"""The verify loop end to end on tiny random models: greedy equality, stops, streaming, sampling distribution."""

import pytest
import specdecode
import torch
from specdecode import SpeculativeConfig
from specdecode.testing import char_tokenizer, repetitive_prompts, tiny_llama

from .helpers import OracleProposer, SamplingProposer, ScriptedPlugin, TargetSamplingProposer, WrongProposer


def _plain(model, ids, n, **kw):
    return model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n if "eos_token_id" not in kw else 0, **kw)


@pytest.mark.parametrize(("k", "window"), [(1, (1, 1)), (3, (2, 4)), (5, (1, 3)), (8, (3, 5)), (5, (2, 5))])
def test_ngram_greedy_is_identical_to_plain_generate(tiny_model, k, window):
    config = SpeculativeConfig(num_speculative_tokens=k, prompt_lookup_min=window[0], prompt_lookup_max=window[1])
    drafted = 0
    for ids in repetitive_prompts(64, count=6, seed=k):
        out = specdecode.generate(tiny_model, ids, config, max_new_tokens=30)
        assert torch.equal(out.sequences, _plain(tiny_model, ids, 30))
        drafted += out.stats.drafted
    assert drafted > 0  # the prompts make the n-gram fire


@pytest.mark.parametrize("name,factory", [("oracle", OracleProposer), ("wrong", WrongProposer)])
def test_scripted_proposers_greedy_identical(tiny_model, register, name, factory):
    register(ScriptedPlugin(name, factory), f"{name}-plugin")
    ids = repetitive_prompts(64, count=1)[0]
    out = specdecode.generate(tiny_model, ids, SpeculativeConfig(method=name, num_speculative_tokens=4), max_new_tokens=25)
    assert torch.equal(out.sequences, _plain(tiny_model, ids, 25))
    stats = out.stats
    if name == "oracle":
        assert stats.acceptance_rate == 1.0
        assert stats.target_forwards == 1 + 5  # prefill (1 token), then 4 drafts + 1 bonus per step: 24 = 5+5+5+5+4
        assert stats.mean_acceptance_length == pytest.approx(1 + stats.accepted / stats.drafting_steps)
    else:
        assert stats.accepted == 0 and stats.drafted > 0
        assert stats.new_tokens == 25 and stats.target_forwards == 25  # one token per forward, like plain decoding


def test_stops_exactly_at_max_new_tokens_inside_an_accepted_run(tiny_model, register):
    register(ScriptedPlugin("oracle", OracleProposer), "oracle-plugin")
    ids = repetitive_prompts(64, count=1)[0]
    for n in (1, 2, 3, 7, 11):
        out = specdecode.generate(tiny_model, ids, SpeculativeConfig(method="oracle", num_speculative_tokens=5), max_new_tokens=n)
        assert out.sequences.shape[1] == ids.shape[1] + n
        assert torch.equal(out.sequences, _plain(tiny_model, ids, n))


def test_stops_at_any_of_several_eos_ids(tiny_model, register):
    register(ScriptedPlugin("oracle", OracleProposer), "oracle-plugin")
    ids = repetitive_prompts(64, count=1)[0]
    reference = _plain(tiny_model, ids, 20)[0, ids.shape[1] :].tolist()
    eos = [reference[6], reference[9]]  # the earlier one must win, also inside an accepted run
    stop_at = min(reference.index(e) for e in eos)
    out = specdecode.generate(tiny_model, ids, SpeculativeConfig(method="oracle"), max_new_tokens=20, eos_token_id=eos)
    assert out.sequences[0, ids.shape[1] :].tolist() == reference[: stop_at + 1]
    plain = tiny_model.generate(ids, do_sample=False, max_new_tokens=20, eos_token_id=eos)
    assert torch.equal(out.sequences, plain)


# One character per token id of the tiny model's 64-token vocabulary.
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,"


def test_stop_strings(tiny_model):
    tokenizer = char_tokenizer(_ALPHABET)
    ids = repetitive_prompts(64, count=1)[0]
    reference = _plain(tiny_model, ids, 20)[0, ids.shape[1] :].tolist()
    text = tokenizer.decode(reference)
    stop = text[8:10]
    end = text.index(stop) + len(stop)  # one letter per token
    out = specdecode.generate(tiny_model, ids, None, max_new_tokens=20, stop_strings=[stop], tokenizer=tokenizer)
    assert out.sequences[0, ids.shape[1] :].tolist() == reference[:end]
    plain = tiny_model.generate(ids, do_sample=False, max_new_tokens=20, stop_strings=[stop], tokenizer=tokenizer)
    assert torch.equal(out.sequences, plain)


def test_stop_strings_need_a_tokenizer(tiny_model):
    with pytest.raises(specdecode.ConfigError, match="'stop_strings' needs the target's tokenizer"):
        specdecode.generate(tiny_model, torch.tensor([[1, 2]]), None, stop_strings=["x"])


class _Recorder:
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.tolist())

    def end(self):
        self.ended = True


def test_streamer_gets_the_prompt_then_every_accepted_token(tiny_model):
    ids = repetitive_prompts(64, count=1)[0]
    streamer = _Recorder()
    out = specdecode.generate(tiny_model, ids, None, max_new_tokens=20, streamer=streamer)
    assert streamer.ended
    assert streamer.chunks[0] == ids.tolist()  # transformers streamers skip the prompt themselves
    streamed = [t for chunk in streamer.chunks[1:] for t in chunk]
    assert streamed == out.sequences[0, ids.shape[1] :].tolist()


def test_left_padding_is_accepted_at_batch_size_one(tiny_model):
    ids = repetitive_prompts(64, count=1)[0]
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    out = specdecode.generate(tiny_model, padded, None, attention_mask=mask, max_new_tokens=12)
    assert torch.equal(out.sequences[:, 3:], _plain(tiny_model, ids, 12))


def test_stats_are_consistent(tiny_model):
    ids = repetitive_prompts(64, count=1)[0]
    stats = specdecode.generate(tiny_model, ids, None, max_new_tokens=30).stats
    assert stats.new_tokens == 30
    assert stats.steps == len(stats.k_per_step) == stats.target_forwards - 1
    assert stats.drafted == sum(stats.k_per_step) == sum(stats.drafted_per_position)
    assert stats.accepted == sum(stats.accepted_per_step) == sum(stats.accepted_per_position)
    assert 0 <= stats.acceptance_rate <= 1
    assert stats.time_total >= stats.time_target + stats.time_proposer
    assert stats.tokens_per_second > 0
    assert stats.to_dict()["mean_acceptance_length"] == stats.mean_acceptance_length


def test_seeded_sampling_is_reproducible(tiny_model):
    ids = repetitive_prompts(64, count=1)[0]
    runs = [
        specdecode.generate(tiny_model, ids, None, max_new_tokens=20, do_sample=True, seed=5, top_k=10).sequences
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_bad_generation_arguments_are_named(tiny_model):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(specdecode.ConfigError, match=r"'max_new_tokens' must be an integer >= 1.*\(got 0\)"):
        specdecode.generate(tiny_model, ids, None, max_new_tokens=0)
    with pytest.raises(specdecode.ConfigError, match=r"'temperature' must be > 0"):
        specdecode.generate(tiny_model, ids, None, do_sample=True, temperature=0.0)
    with pytest.raises(specdecode.ConfigError, match="'input_ids'"):
        specdecode.generate(tiny_model, torch.empty(1, 0, dtype=torch.long), None)
    with pytest.raises(specdecode.ConfigError, match="Unknown speculation method 'ngarm'.*Did you mean 'ngram'"):
        specdecode.generate(tiny_model, ids, {"method": "ngarm"})


# -- sampling: the speculative output follows plain sampling's distribution ------------------------------------
# The first generated token comes from the prefill; the speculative step drafts the 2nd and 3rd. We compare the
# joint histogram of tokens 2 and 3 (64 outcomes) with plain sampling, against the gap between two plain runs.

N_SAMPLES = 1000
PROMPT = torch.tensor([[1, 2, 3, 1, 2]])
NEW = 3


def _pairs(sequences: list[list[int]], vocab: int) -> torch.Tensor:
    index = torch.tensor([s[1] * vocab + s[2] for s in sequences])
    return torch.bincount(index, minlength=vocab * vocab).float() / len(sequences)


def _plain_samples(model, seed, **sampling):
    torch.manual_seed(seed)
    out = model.generate(PROMPT.repeat(N_SAMPLES, 1), do_sample=True, max_new_tokens=NEW, min_new_tokens=NEW, **sampling)
    return out[:, PROMPT.shape[1] :].tolist()


def _tv(a, b):
    return 0.5 * (a - b).abs().sum().item()


def _speculative_samples(model, method, **sampling):
    config = SpeculativeConfig(method=method, num_speculative_tokens=2, prompt_lookup_min=1, prompt_lookup_max=2)
    generator = torch.Generator().manual_seed(123)
    samples, drafted = [], 0
    for _ in range(N_SAMPLES):
        out = specdecode.generate(model, PROMPT, config, max_new_tokens=NEW, do_sample=True, generator=generator, **sampling)
        samples.append(out.sequences[0, PROMPT.shape[1] :].tolist())
        drafted += out.stats.drafted
    assert drafted > 0  # the speculative path really ran
    return samples


Q_UNIFORM = torch.full((8,), 1 / 8)
Q_DISJOINT = torch.tensor([0, 0, 0, 0, 0, 0, 0.5, 0.5])  # mass on tokens the target rarely (under top-k: never) picks


@pytest.mark.parametrize(
    ("draft", "sampling"),
    [
        pytest.param("target", {"temperature": 1.0, "top_k": 0}, id="draft-equals-target"),
        pytest.param("uniform", {"temperature": 0.6, "top_k": 0}, id="uniform-temperature"),
        pytest.param("disjoint", {"temperature": 1.0, "top_k": 3}, id="disjoint-top-k"),
        pytest.param("ngram", {"temperature": 1.3, "top_k": 0, "top_p": 0.7}, id="ngram-top-p"),
    ],
)
def test_sampling_matches_plain_generate_within_noise(small_vocab_model, register, draft, sampling):
    vocab = 8
    factories = {
        "target": TargetSamplingProposer,
        "uniform": lambda m: SamplingProposer(Q_UNIFORM),
        "disjoint": lambda m: SamplingProposer(Q_DISJOINT),
    }
    method = "ngram"
    if draft in factories:
        method = f"draft_{draft}"
        register(ScriptedPlugin(method, factories[draft]), method)
    ours = _speculative_samples(small_vocab_model, method, **sampling)
    reference = _pairs(_plain_samples(small_vocab_model, 1, **sampling), vocab)
    noise = _tv(_pairs(_plain_samples(small_vocab_model, 2, **sampling), vocab), reference)
    assert _tv(_pairs(ours, vocab), reference) <= 1.5 * noise + 0.02
    if sampling.get("top_k") == 3:
        with torch.inference_mode():
            allowed = set(small_vocab_model(PROMPT).logits[0, -1].topk(3).indices.tolist())
        assert {s[0] for s in ours} <= allowed


def test_a_tokenizers_output_is_accepted_as_input_ids(tiny_model):
    from transformers import BatchEncoding

    ids = repetitive_prompts(64, count=1)[0]
    encoded = BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    out = specdecode.generate(tiny_model, encoded, SpeculativeConfig(), max_new_tokens=12)
    assert torch.equal(out.sequences, _plain(tiny_model, ids, 12))
    with pytest.raises(specdecode.ConfigError, match="'input_ids' must be a \\[batch, length\\] tensor"):
        specdecode.generate(tiny_model, ids.tolist(), SpeculativeConfig(), max_new_tokens=4)


def test_hidden_state_layers_hands_over_the_listed_layers_concatenated():
    """A proposer that sets ``hidden_state_layers`` gets those entries of ``output_hidden_states``, concatenated,
    for the prompt and for every verify pass (EAGLE-3 fuses a low, a middle and a high layer)."""
    model = tiny_llama(num_layers=3)
    layers = (0, 2, 3)
    seen = {}

    class Recorder(specdecode.Proposer):
        needs_hidden_states = True

        def __init__(self):
            self.hidden_state_layers = layers

        def start(self, context):
            seen["prompt"] = context.hidden_states

        def propose(self, request):
            return specdecode.Proposal(token_ids=request.input_ids[:, -2:-1])

        def on_verified(self, result):
            seen.setdefault("steps", []).append((result.input_ids, result.num_accepted_list[0], result.hidden_states))

    prompt = torch.tensor([[3, 7, 9, 11, 2]])
    specdecode.generate(model, prompt, None, proposer=Recorder(), max_new_tokens=6)
    with torch.inference_mode():
        full = model(input_ids=prompt, output_hidden_states=True).hidden_states
    expected = torch.cat([full[i] for i in layers], dim=-1)  # [1, 5, 3H]: one state per prompt token
    assert seen["prompt"].shape == (1, 5, 3 * 32)
    torch.testing.assert_close(seen["prompt"], expected)
    for ids, n, hidden in seen["steps"]:
        with torch.inference_mode():
            states = model(input_ids=ids[:, :-1], output_hidden_states=True).hidden_states
        want = torch.cat([states[i] for i in layers], dim=-1)[:, -(n + 1):]
        torch.testing.assert_close(hidden[:, : n + 1], want, rtol=1e-4, atol=1e-5)
