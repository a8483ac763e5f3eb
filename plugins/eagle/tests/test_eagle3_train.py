"""The EAGLE-3 training recipe on a tiny target: teacher-forced states equal an unpadded forward, the unrolled
(training-time test) steps are chained drafting, training lowers the loss and writes a speculators head that
method 'eagle3' loads, and bad flags are refused in one line."""

import json

import specdecode
import torch
from specdecode.testing import tiny_llama
from specdecode_eagle import Eagle3Options, load_eagle3_drafter
from specdecode_eagle.checkpoint import head_format
from specdecode_eagle.data import collect, shingles, teacher_force, text_sequences
from specdecode_eagle.eagle3_checkpoint import load_eagle3_head
from specdecode_eagle.proposer import EagleProposer
from specdecode_eagle.train import pick_draft_vocab
from specdecode_eagle.train_eagle3 import TRAINING_RECORD, Eagle3Trainer, new_eagle3_head, save_eagle3
from test_eagle_greedy import assert_greedy_matches

torch.set_num_threads(1)  # tiny models: a second thread only adds contention
VOCAB = 48
LAYERS = (0, 2, 3)


def _target():
    # A peaked next-token distribution (a default tiny target is nearly uniform: little for the token loss to learn).
    return tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=4, seed=6, initializer_range=0.4)


def _sequences(count=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 30, (count,), generator=g).tolist()
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def test_teacher_forced_states_match_an_unpadded_forward():
    target = _target()
    sequences = _sequences()
    samples = teacher_force(target, sequences, [2] * len(sequences), layers=LAYERS, batch_tokens=64)
    assert [s.tokens.tolist() for s in samples] == sequences  # in the given order, whatever the batching
    for s in samples:
        with torch.no_grad():
            reference = target(input_ids=s.tokens.unsqueeze(0), output_hidden_states=True).hidden_states
        torch.testing.assert_close(s.hidden.float(), reference[-1][0], atol=2e-2, rtol=2e-2)
        aux = torch.cat([reference[i][0] for i in LAYERS], dim=-1)
        torch.testing.assert_close(s.aux.float(), aux, atol=2e-2, rtol=2e-2)
        assert s.prompt_length == 2


def test_states_recorded_while_generating_include_the_aux_layers():
    target = _target()
    prompts = _sequences(5, seed=1)
    _, samples = collect(target, prompts, max_new_tokens=6, batch_size=3, eos_token_ids=set(), layers=LAYERS)
    for s in samples:
        with torch.no_grad():
            reference = target(input_ids=s.tokens.unsqueeze(0), output_hidden_states=True).hidden_states
        aux = torch.cat([reference[i][0] for i in LAYERS], dim=-1)
        torch.testing.assert_close(s.aux.float(), aux, atol=2e-2, rtol=2e-2)


def _trained(tmp_path, unroll=3, epochs=30, autocast=None):
    torch.manual_seed(0)  # the head's initialisation, whatever ran before
    target = _target()
    samples = teacher_force(target, _sequences(16), [1] * 16, layers=LAYERS)
    vocab = pick_draft_vocab(samples, VOCAB, 40)
    head = new_eagle3_head(target, vocab, LAYERS)
    trainer = Eagle3Trainer(head, target, lr=1e-2, unroll=unroll, autocast=autocast)
    before = trainer.evaluate(samples, batch_tokens=256)
    # A budget no run reaches: the learning-rate schedule then follows the steps alone, so a loaded machine trains
    # the same head (a 10-minute budget shortened the schedule under load and the head's drafts were all rejected).
    history = trainer.fit(samples, samples, minutes=1e6, max_epochs=epochs, batch_tokens=256,
                          checkpoint_dir=tmp_path / "ckpt", progress=False)
    after = trainer.evaluate(samples, batch_tokens=256)
    return target, head, vocab, history, before, after


def test_tiny_training_lowers_the_loss_and_writes_a_loadable_speculators_head(tmp_path):
    target, head, vocab, history, before, after = _trained(tmp_path)
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    assert after["token"] < before["token"] and after["top1"] > before["top1"]
    assert after["loss_step3"] < before["loss_step3"]  # the unrolled steps learn too
    assert history[-1]["tokens"] > 0 and (tmp_path / "ckpt" / f"epoch-{len(history):03d}" / "config.json").is_file()

    out = tmp_path / "head"
    save_eagle3(head, out, verifier="tiny", meta={"calibration": {"ratio_per_position": [0.5, 0.4, 0.3]}})
    assert head_format(out) == "speculators"
    config = json.loads((out / "config.json").read_text())
    assert config["eagle_aux_hidden_state_layer_ids"] == list(LAYERS) and config["draft_vocab_size"] == 40
    loaded = load_eagle3_head(out).head
    assert torch.equal(loaded.draft_token_ids(), vocab)  # d2t / t2d: the picked ids
    drafter = load_eagle3_drafter(target, out)
    assert drafter.calibration == [0.5, 0.4, 0.3] and (out / TRAINING_RECORD).is_file()
    # The trained head drafts through method 'eagle3', losslessly, and its drafts are accepted.
    accepted = assert_greedy_matches(
        target, lambda: EagleProposer(drafter, Eagle3Options(adaptive=False, tree_width=1)), "eagle3", 4, prompts=2)
    assert accepted > 0
    ids = torch.tensor([[1, 2, 3]])
    out_ids = specdecode.generate(target, ids, {"method": "eagle3", "model": str(out)}, max_new_tokens=8)
    assert torch.equal(out_ids.sequences, target.generate(ids, max_new_tokens=8, do_sample=False))


def test_bfloat16_training_lowers_the_loss_and_keeps_float32_weights(tmp_path):
    """--train-dtype bfloat16: the products run under autocast, the weights and the evaluation stay float32."""
    _, head, _, history, before, after = _trained(tmp_path, autocast=torch.bfloat16)
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    assert after["top1"] > before["top1"] and history
    assert {p.dtype for p in head.parameters()} == {torch.float32}


def test_unrolled_steps_match_chained_drafting():
    """Step s at position p is what the head computes when it drafts its s-th token there: a cache of real
    positions, then its own predicted features (checked against Eagle3Drafter with a real cache)."""
    target = _target()
    samples = teacher_force(target, _sequences(3, seed=2), [1] * 3, layers=LAYERS)
    head = new_eagle3_head(target, None, LAYERS)
    for p in head.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.2)
    trainer = Eagle3Trainer(head, target, lr=1e-3, unroll=3)
    sample = max(samples, key=lambda s: len(s.tokens))
    batch = trainer.batch([sample, min(samples, key=lambda s: len(s.tokens))])  # a padded row too
    with torch.no_grad():
        steps = trainer.steps(batch)
        drafter = trainer.drafter
        fused, tokens = drafter.fuse_target_states(batch["aux"][:1]), batch["tokens"][:1]
        for p in (2, 5, fused.shape[1] - 1):
            cache = drafter.new_cache()
            real = drafter.features(fused[:, : p - 1], tokens[:, : p - 1], 0, cache)
            second = drafter.features(real[:, -1:], tokens[:, p - 1 : p], p - 1, cache)
            third = drafter.features(second, tokens[:, p : p + 1], p, cache)
            torch.testing.assert_close(steps[1][0][0, p - 1], second[0, 0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(steps[2][0][0, p], third[0, 0], atol=1e-4, rtol=1e-4)


class WordTokenizer:
    """Word-level stand-in (no chat template): one id per word."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [len(w) for w in text.split()]}


def test_text_windows_fit_and_held_out_overlaps_are_dropped():
    conversations = [[f"turn {i} of chat {c} " + "word " * (3 + i) for i in range(8)] for c in range(6)]
    leaked = "an exact held out spec bench prompt with more than ten words in it"
    conversations.append(["hello there", "sure: " + leaked, "bye"])
    sequences, prompt_lengths, dropped = text_sequences(
        WordTokenizer(), conversations, max_tokens=40, budget=10_000, exclude=shingles(leaked))
    assert dropped == 1 and sequences
    assert all(len(s) <= 40 for s in sequences) and all(0 < p <= len(s) for p, s in zip(prompt_lengths, sequences))
    # Every turn is kept but a lone last one (a window holds a turn and at least one reply).
    assert sum(map(len, sequences)) == sum(len(t.split()) for c in conversations[:6] for t in c[:-1])
