"""The training recipe on a tiny target: states recorded during batched generate line up with an unpadded forward,
and training lowers the loss."""

import argparse
import json

import pytest
import torch
from specdecode.testing import tiny_llama
from specdecode_eagle.checkpoint import load_head
from specdecode_eagle.data import CATEGORIES, Question, Sample, collect, round_robin
from specdecode_eagle.head import EagleHead, HeadConfig
from specdecode_eagle.train import (
    Trainer,
    _cached_sets,
    add_arguments,
    init_record,
    pick_draft_vocab,
    split_training,
    train_autocast_dtype,
)
from specdecode_eagle.train_eagle3 import read_training_record

torch.set_num_threads(1)  # tiny models: a second thread only adds contention
VOCAB = 48


def _samples(target):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (3, 9, 5, 12, 7, 4)]
    responses, samples = collect(target, prompts, max_new_tokens=10, batch_size=4, eos_token_ids=set())
    assert [len(r) for r in responses] == [10] * len(prompts)
    # A sample is prompt + response but its last token (generate never reads that one back).
    assert [s.tokens.tolist() for s in samples] == [p + r[:-1] for p, r in zip(prompts, responses)]
    return prompts, samples


def test_collected_states_match_an_unpadded_forward():
    target = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=6)
    prompts, samples = _samples(target)
    assert [s.prompt_length for s in samples] == [len(p) for p in prompts]  # in the prompts' order
    for s in samples:
        assert s.hidden.shape == (len(s.tokens), 32)
        with torch.no_grad():
            reference = target(input_ids=s.tokens.unsqueeze(0), output_hidden_states=True)
        # hidden[t] is the state after reading token t (stored in fp16), and the response is greedy.
        torch.testing.assert_close(s.hidden.float(), reference.hidden_states[-1][0], atol=2e-2, rtol=2e-2)
        greedy = reference.logits[0, s.prompt_length - 1 : -1].argmax(-1)
        assert torch.equal(greedy, s.tokens[s.prompt_length :])


def test_sampled_responses_are_seeded_and_their_states_match_an_unpadded_forward():
    target = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=6)
    prompts, greedy = _samples(target)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(collect(target, prompts, max_new_tokens=10, batch_size=4, eos_token_ids=set(), temperature=1.0))
    (responses, samples), (again, _) = runs
    assert responses == again  # seeded
    assert [s.tokens.tolist() for s in samples] != [s.tokens.tolist() for s in greedy]  # not the greedy text
    for p, s in zip(prompts, samples):
        assert s.prompt_length == len(p) and s.tokens[: len(p)].tolist() == p
        with torch.no_grad():
            reference = target(input_ids=s.tokens.unsqueeze(0), output_hidden_states=True)
        torch.testing.assert_close(s.hidden.float(), reference.hidden_states[-1][0], atol=2e-2, rtol=2e-2)


def test_more_sampled_sets_reuse_the_cached_ones(tmp_path):
    """Asking for more sampled responses later collects only the missing sets; asking for fewer reads a prefix; a
    changed option collects everything again."""
    path, key, calls = tmp_path / "sampled.pt", {"temperature": 0.7, "seed": 0}, []

    def make(first, count):
        calls.append((first, count))
        return [Sample(tokens=torch.tensor([k, p]), hidden=torch.zeros(2, 4), prompt_length=1)
                for k in range(first, first + count) for p in range(3)]

    def sets(samples):
        return [int(s.tokens[0]) for s in samples]

    assert sets(_cached_sets(path, key, None, 2, make)) == [0, 0, 0, 1, 1, 1] and calls == [(0, 2)]
    assert sets(_cached_sets(path, key, None, 4, make)) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert calls == [(0, 2), (2, 2)]
    assert sets(_cached_sets(path, key, None, 1, make)) == [0, 0, 0] and calls == [(0, 2), (2, 2)]
    assert sets(_cached_sets(path, key, None, 4, make)) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert len(calls) == 2  # all four read back
    assert _cached_sets(path, key, None, 0, make) == [] and len(calls) == 2
    assert sets(_cached_sets(path, {**key, "temperature": 1.0}, None, 1, make)) == [0, 0, 0]
    assert calls[-1] == (0, 1)


def test_a_continued_head_keeps_the_record_of_the_head_it_started_from(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "specdecode.json").write_text(json.dumps({
        "target": "t", "initialised_from": None, "init_record": None, "trained": {"epochs": 11},
        "validation": {"mean_acceptance_length": 1.58}, "calibration": {"ratio_per_position": [1.0]}}))
    record = init_record(read_training_record(first))
    assert record == {"initialised_from": None, "init_record": None, "trained": {"epochs": 11},
                      "validation": {"mean_acceptance_length": 1.58}}
    (second / "specdecode.json").write_text(json.dumps({"initialised_from": str(first), "init_record": record,
                                                        "trained": {"epochs": 3}}))
    assert init_record(read_training_record(second))["init_record"]["trained"] == {"epochs": 11}  # the lineage
    # An EAGLE-1/2 head's record is its eagle_head.json (HeadCheckpoint.meta): the same keys are kept.
    assert init_record({"format": "specdecode-eagle", "head": {}, "trained": {"epochs": 2}}) == {"trained": {"epochs": 2}}
    assert init_record(read_training_record(tmp_path)) is None  # no record (an EAGLE authors' head, say)
    (first / "specdecode.json").write_text("{not json")
    assert init_record(read_training_record(first)) is None


def test_sampled_responses_to_held_out_prompts_are_not_trained_on():
    def sample(prompt, response):
        return Sample(tokens=torch.tensor(prompt + response), hidden=torch.zeros(len(prompt + response), 4),
                      prompt_length=len(prompt))

    prompts = [[i, i + 1, i + 2] for i in range(0, 60, 3)]
    greedy = [sample(p, [7, 7]) for p in prompts]
    sampled = [sample(p, [8, r]) for r in (1, 2) for p in prompts]
    text = [sample([1], [2, 3])]
    train, val = split_training(greedy, sampled, text, 0.1, seed=0)
    ids = lambda samples: {id(s) for s in samples}  # noqa: E731 (Samples hold tensors: compare by identity)
    assert len(val) == 2 and ids(val) <= ids(greedy)
    held_out = {tuple(v.tokens[: v.prompt_length].tolist()) for v in val}
    kept = [s for s in train if id(s) in ids(sampled)]
    assert len(kept) == len(sampled) - 2 * len(val)
    assert not any(tuple(s.tokens[: s.prompt_length].tolist()) in held_out for s in kept)
    assert id(text[0]) in ids(train) and len(train) == len(greedy) - len(val) + len(kept) + 1


def test_tiny_training_run_lowers_the_loss(tmp_path):
    target = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=6)
    _, samples = _samples(target)
    vocab = pick_draft_vocab(samples, VOCAB, 32)
    assert vocab is not None and len(vocab) == 32
    head = EagleHead(HeadConfig.from_target(target.config))
    trainer = Trainer(head, target, vocab, lr=1e-2, feature_noise=0.0)
    before = trainer.evaluate(samples, batch_tokens=256)
    history = trainer.fit(samples, samples, minutes=10.0, max_epochs=25, batch_tokens=256,
                          checkpoint_dir=tmp_path / "ckpt", progress=False)
    after = trainer.evaluate(samples, batch_tokens=256)
    # A random tiny target is nearly uniform, so the token loss has little room; the feature loss must fall.
    assert after["loss"] < 0.75 * before["loss"] and after["feature"] < 0.6 * before["feature"], (before, after)
    assert after["top1"] > before["top1"]
    assert history and (tmp_path / "ckpt" / f"epoch-{len(history):03d}").is_dir()
    checkpoint = load_head(tmp_path / "ckpt" / f"epoch-{len(history):03d}")
    assert torch.equal(checkpoint.draft_vocab, vocab)


def test_train_dtype_choices():
    assert train_autocast_dtype("float32") is None and train_autocast_dtype("bfloat16") is torch.bfloat16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert train_autocast_dtype("auto") is (torch.bfloat16 if native else None)


def test_round_robin_covers_every_category_and_the_cli_parses():
    questions = [Question(question_id=i, category=CATEGORIES[i % 6], text=str(i)) for i in range(1, 61)]
    picked = round_robin([q for q in questions if not q.held_out], 12)
    assert len(picked) == 12 and {q.category for q in picked} == set(CATEGORIES)
    assert not any(q.question_id % 4 == 0 for q in picked)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--minutes", "2"])
    assert args.target == "smollm2-135m" and args.minutes == 2.0


def test_unrolled_steps_match_chained_drafting():
    """Trainer step s at position p is what the head computes when it drafts its s-th token there: a cache of real
    positions 0..p-s+1, then its own predicted features (checked against EagleDrafter with a real cache)."""
    target = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=6)
    _, samples = _samples(target)
    head = EagleHead(HeadConfig.from_target(target.config))
    for p in head.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.2)
    trainer = Trainer(head, target, None, lr=1e-3, feature_noise=0.0, unroll=3)
    sample = max(samples, key=lambda s: len(s.tokens))
    batch = trainer.batch([sample, samples[0]])  # a padded row too
    with torch.no_grad():
        steps = trainer.steps(batch)
        drafter = trainer.drafter
        hidden, tokens = batch["hidden"][:1], batch["tokens"][:1]  # f_0.., x_1..
        for p in (2, 5, hidden.shape[1] - 1):
            cache = drafter.new_cache()
            real = drafter.features(hidden[:, : p - 1], tokens[:, : p - 1], 0, cache)  # positions 0..p-2
            second = drafter.features(real[:, -1:], tokens[:, p - 1 : p], p - 1, cache)  # step 2 at p-1
            third = drafter.features(second, tokens[:, p : p + 1], p, cache)  # step 3 at p
            torch.testing.assert_close(steps[1][0][0, p - 1], second[0, 0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(steps[2][0][0, p], third[0, 0], atol=1e-5, rtol=1e-4)
    assert not steps[1][1][0, 0] and steps[1][1][0, 1] and not steps[2][1][0, 1] and steps[2][1][0, 2]
    # And training with unrolled steps lowers the loss of every step.
    trainer = Trainer(EagleHead(HeadConfig.from_target(target.config)), target, None, lr=1e-2, feature_noise=0.0,
                      unroll=3)
    before = trainer.evaluate(samples, batch_tokens=256)
    trainer.fit(samples, samples, minutes=10.0, max_epochs=25, batch_tokens=256, progress=False)
    after = trainer.evaluate(samples, batch_tokens=256)
    assert after["loss"] < 0.75 * before["loss"] and after["feature"] < 0.6 * before["feature"], (before, after)
    assert after["loss_step2"] < 0.8 * before["loss_step2"] and after["loss_step3"] < 0.8 * before["loss_step3"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--unroll", "0"], "'--unroll' must be an integer >= 1 (got 0)"),
        (["--token-weight", "-1"], "'--token-weight' must be a finite number >= 0 (got -1.0)"),
        (["--feature-weight", "0", "--token-weight", "0"], "'--token-weight' must be > 0 when --feature-weight is 0"),
        (["--lr", "inf"], "'--lr' must be a finite number > 0 (got inf)"),
        (["--validation-fraction", "1"], "'--validation-fraction' must be between 0 and 1"),
        (["--init", "/no/such/head"], "'--init' must be an existing head directory (got '/no/such/head')"),
        # EAGLE-3 (--format speculators) and teacher-forced text
        (["--format", "eagle4"], "'--format' must be one of: specdecode-eagle, speculators (got 'eagle4')"),
        (["--format", "speculators", "--feature-weight", "1"], "'--feature-weight' must be 0 or unset with --format"),
        (["--aux-layers", "1,2,3"], "'--aux-layers' must be comma-separated layer ids >= 0, with --format speculators"),
        (["--format", "speculators", "--aux-layers", "a,b"], "'--aux-layers' must be comma-separated layer ids"),
        (["--text-source", "wikipedia"], "'--text-source' must be one of: chitchat, none (got 'wikipedia')"),
        (["--text-tokens", "-5"], "'--text-tokens' must be an integer >= 0 (got -5)"),
        (["--num-prompts", "-1", "--text-source", "none"], "'--text-tokens' must be > 0 when --num-prompts is -1"),
        (["--checkpoint-tokens", "-1"], "'--checkpoint-tokens' must be an integer >= 0 (got -1)"),
        (["--sampled-responses", "-1"], "'--sampled-responses' must be an integer >= 0 (got -1)"),
        (["--sampled-responses", "1", "--num-prompts", "-1"], "'--sampled-responses' must be 0 when --num-prompts"),
        (["--sampling-temperature", "0"], "'--sampling-temperature' must be a finite number > 0 (got 0.0)"),
        (["--train-dtype", "float16"], "'--train-dtype' must be one of: auto, float32, bfloat16 (got 'float16')"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, monkeypatch, flags, message):
    import specdecode.toolkit
    from specdecode import ConfigError
    from specdecode_eagle.train import run

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model must not load for bad arguments")

    monkeypatch.setattr(specdecode.toolkit, "load_model", no_model)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ConfigError) as error:
        run(parser.parse_args(["--out", str(tmp_path / "head"), *flags]))
    assert message in str(error.value)
    assert not (tmp_path / "head").exists()
