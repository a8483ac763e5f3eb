"""The training recipe on a tiny target: collected states line up with a plain forward, and training lowers the loss."""

import argparse

import torch
from specdecode.testing import tiny_llama
from specdecode_eagle.checkpoint import load_head
from specdecode_eagle.data import CATEGORIES, Question, collect, round_robin
from specdecode_eagle.head import EagleHead, HeadConfig
from specdecode_eagle.train import Trainer, add_arguments, pick_draft_vocab

torch.set_num_threads(1)  # tiny models: a second thread only adds contention
VOCAB = 48


def _samples(target):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (3, 9, 5, 12, 7, 4)]
    return prompts, collect(target, prompts, max_new_tokens=10, batch_size=4, eos_token_ids=set())


def test_collected_states_match_an_unpadded_forward():
    target = tiny_llama(vocab_size=VOCAB, hidden_size=32, num_layers=2, seed=6)
    prompts, samples = _samples(target)
    assert [s.prompt_length for s in samples] == sorted(len(p) for p in prompts)  # shortest first
    for s in samples:
        assert s.hidden.shape == (len(s.tokens), 32)
        with torch.no_grad():
            reference = target(input_ids=s.tokens.unsqueeze(0), output_hidden_states=True)
        # hidden[t] is the state after reading token t (stored in fp16), and the response is greedy.
        torch.testing.assert_close(s.hidden.float(), reference.hidden_states[-1][0], atol=2e-2, rtol=2e-2)
        greedy = reference.logits[0, s.prompt_length - 1 : -1].argmax(-1)
        assert torch.equal(greedy, s.tokens[s.prompt_length :])


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


def test_round_robin_covers_every_category_and_the_cli_parses():
    questions = [Question(question_id=i, category=CATEGORIES[i % 6], text=str(i)) for i in range(1, 61)]
    picked = round_robin([q for q in questions if not q.held_out], 12)
    assert len(picked) == 12 and {q.category for q in picked} == set(CATEGORIES)
    assert not any(q.question_id % 4 == 0 for q in picked)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--minutes", "2"])
    assert args.target == "smollm2-135m" and args.minutes == 2.0
