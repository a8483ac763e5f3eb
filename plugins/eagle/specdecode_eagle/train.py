"""Train an EAGLE head for a target model on CPU.

    specdecode train-eagle --target smollm2-135m --out heads/smollm2 --minutes 15
    python -m specdecode_eagle.train --target smollm2-135m --out heads/smollm2 --minutes 15

Steps (see docs/methods/eagle.md):

1. Data: the target's own greedy responses to the training split of Spec-Bench (question_id % 4 != 0, first turns,
   taken round-robin over the six categories), with the last-layer hidden state of every token (see data.py).
   Cached in ``OUT/data.pt`` so a second run skips it.
2. Draft vocabulary: the ``--draft-vocab-size`` token ids seen most often in that data, topped up with the lowest ids
   (BPE vocabularies list frequent merges first). The head only scores these, which makes training and drafting
   several times cheaper than the full LM head.
3. Training: head position j reads (f_j, x_{j+1}) and must predict f_{j+1}: smooth-L1 on the feature plus
   cross-entropy between the target's next-token distribution softmax(lm_head(f_{j+1})) and the head's
   softmax(lm_head(predicted f_{j+1})), both over the draft vocabulary, through the frozen LM head. Gaussian noise
   on the input features (as EAGLE does) makes chained drafting, which feeds predicted features, more robust.
   AdamW, linear warm-up and cosine decay over the time budget (or the epochs, if fewer); a checkpoint after every epoch.
4. Validation: held-out teacher-forced top-1 accuracy, then real speculative decoding with the new head on held-out
   Spec-Bench prompts (question_id % 4 == 0): mean acceptance length at K=5.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import check_fits_target, load_head, save_head
from .data import CATEGORIES, Sample, chat_prompt, collect, load_questions, round_robin, split
from .head import EagleDrafter, EagleHead, HeadConfig

FEATURE_WEIGHT = 1.0  # EAGLE's weights: the feature loss leads, the token loss keeps it honest about argmax
TOKEN_WEIGHT = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="smollm2-135m", help="embedded model name or local model directory")
    parser.add_argument("--out", required=True, help="output directory for the head, checkpoints and data cache")
    parser.add_argument("--questions", default=None, help="Spec-Bench question file (default: ../shared/data)")
    parser.add_argument("--num-prompts", type=int, default=120, help="training prompts (round-robin by category)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="response length collected per prompt")
    parser.add_argument("--max-prompt-tokens", type=int, default=320, help="long prompts are cut to this")
    parser.add_argument("--collect-batch-size", type=int, default=24)
    parser.add_argument("--draft-vocab-size", type=int, default=8192, help="0 = score the full vocabulary")
    parser.add_argument("--intermediate-size", type=int, default=None, help="head MLP width (default: target's)")
    parser.add_argument("--init", default=None, help="continue from this head directory (keeps its draft vocabulary)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget (data collection apart)")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="tokens per optimizer step (about)")
    parser.add_argument("--feature-noise", type=float, default=0.05, help="input noise std, relative to feature RMS")
    parser.add_argument("--validation-fraction", type=float, default=0.05)
    parser.add_argument("--validate-prompts", type=int, default=6, help="held-out prompts for acceptance (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    from specdecode.models import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer = load_model(args.target)
    for p in model.parameters():
        p.requires_grad_(False)

    samples = collect_or_load(model, tokenizer, args, out)
    collect_seconds = time.perf_counter() - started
    if args.init:
        start = load_head(args.init)
        check_fits_target(start, model)
        head, draft_vocab = start.head.float(), start.draft_vocab
    else:
        draft_vocab = pick_draft_vocab(samples, model.config.vocab_size, args.draft_vocab_size)
        head = EagleHead(HeadConfig.from_target(model.config, intermediate_size=args.intermediate_size))
    rng = random.Random(args.seed)
    order = list(range(len(samples)))
    rng.shuffle(order)
    n_val = max(1, int(len(samples) * args.validation_fraction))
    val = [samples[i] for i in order[:n_val]]
    train = [samples[i] for i in order[n_val:]]
    log(f"{len(train)} training sequences ({sum(len(s.tokens) for s in train)} tokens), {len(val)} held out")

    trainer = Trainer(head, model, draft_vocab, lr=args.lr, feature_noise=args.feature_noise)
    history = trainer.fit(
        train, val, minutes=args.minutes, max_epochs=args.max_epochs, batch_tokens=args.batch_tokens,
        checkpoint_dir=out / "checkpoints", progress=not args.quiet, seed=args.seed,
    )
    train_seconds = time.perf_counter() - started - collect_seconds
    meta = {
        "target": args.target,
        "initialised_from": args.init,
        "trained": {
            "data": "greedy responses of the target to Spec-Bench first turns, question_id % 4 != 0 "
            f"(round-robin over {', '.join(CATEGORIES)})",
            "num_prompts": args.num_prompts,
            "max_new_tokens": args.max_new_tokens,
            "train_tokens": sum(len(s.tokens) for s in train),
            "epochs": len(history),
            "collect_seconds": round(collect_seconds),
            "train_seconds": round(train_seconds),
            "threads": torch.get_num_threads(),
            "history": history,
        },
    }
    save_head(head, out, draft_vocab=draft_vocab, dtype=torch.float16, meta=meta)
    log(f"saved the head to {out} (collection {collect_seconds:.0f}s, training {train_seconds:.0f}s)")

    if args.validate_prompts > 0:
        result = validate_acceptance(model, tokenizer, out, args)
        meta["validation"] = result
        save_head(head, out, draft_vocab=draft_vocab, dtype=torch.float16, meta=meta)
        log(f"held-out mean acceptance length at K=5: {result['mean_acceptance_length']:.2f} on "
            f"{result['prompts']} prompts")
    log(f"total {time.perf_counter() - started:.0f}s")
    return 0


def collect_or_load(model: Any, tokenizer: Any, args: argparse.Namespace, out: Path) -> list[Sample]:
    cache = out / "data.pt"
    key = {"target": args.target, "num_prompts": args.num_prompts, "max_new_tokens": args.max_new_tokens,
           "max_prompt_tokens": args.max_prompt_tokens}
    if cache.exists():
        stored = torch.load(cache, weights_only=True)
        if stored.get("key") == key:
            log(f"reusing collected data from {cache}")
            return [Sample(tokens=t, hidden=h, prompt_length=int(n)) for t, h, n in stored["samples"]]
    questions = round_robin(split(load_questions(args.questions), held_out=False), args.num_prompts)
    prompts = [chat_prompt(tokenizer, q.text, args.max_prompt_tokens) for q in questions]
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    log(f"collecting {len(prompts)} greedy responses ({sum(map(len, prompts))} prompt tokens, up to "
        f"{args.max_new_tokens} new tokens each)")
    bar = _bar(len(prompts), "collect", not args.quiet)
    t = time.perf_counter()
    samples = collect(
        model, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.collect_batch_size,
        eos_token_ids=eos_ids, pad_token_id=tokenizer.pad_token_id or 0, progress=bar,
    )
    bar.close()
    log(f"collected {sum(len(s.tokens) for s in samples)} tokens in {time.perf_counter() - t:.0f}s")
    torch.save({"key": key, "samples": [(s.tokens, s.hidden, s.prompt_length) for s in samples]}, cache)
    return samples


def pick_draft_vocab(samples: list[Sample], vocab_size: int, size: int) -> torch.Tensor | None:
    """Most frequent token ids in the data, topped up with the lowest ids; sorted. None (full vocabulary) when
    ``size`` is 0 or covers the whole vocabulary."""
    if size <= 0 or size >= vocab_size:
        return None
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for s in samples:
        counts += torch.bincount(s.tokens, minlength=vocab_size)
    # Seen tokens by count, then unseen ones by id (a tiny tie-breaker keeps lower ids first).
    score = counts.double() - torch.arange(vocab_size, dtype=torch.double) / (2 * vocab_size)
    return torch.topk(score, size).indices.sort().values


class Trainer:
    """Teacher-forced training of a head on collected (tokens, hidden) sequences."""

    def __init__(self, head: EagleHead, target: Any, draft_vocab: torch.Tensor | None, *, lr: float, feature_noise: float):
        self.head = head.train()
        self.drafter = EagleDrafter(head, target, draft_vocab)
        self.head.train()  # EagleDrafter puts it in eval mode
        self.lr = lr
        self.feature_noise = feature_noise
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))

    def batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Right-padded head inputs: hidden f_0..f_{T-2}, tokens x_1..x_{T-1}, targets f_1..f_{T-1}."""
        width = max(len(s.tokens) for s in samples) - 1
        size = samples[0].hidden.shape[1]
        hidden = torch.zeros(len(samples), width, size)
        target = torch.zeros(len(samples), width, size)
        tokens = torch.zeros(len(samples), width, dtype=torch.long)
        mask = torch.zeros(len(samples), width, dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s.tokens) - 1
            hidden[row, :n] = s.hidden[:-1].float()
            target[row, :n] = s.hidden[1:].float()
            tokens[row, :n] = s.tokens[1:]
            mask[row, :n] = 1
        return {"hidden": hidden, "target": target, "tokens": tokens, "mask": mask}

    def losses(self, batch: dict[str, torch.Tensor], noise: float = 0.0) -> dict[str, torch.Tensor]:
        hidden, target, mask = batch["hidden"], batch["target"], batch["mask"]
        if noise > 0:
            rms = hidden.pow(2).mean(dim=-1, keepdim=True).sqrt()
            hidden = hidden + torch.randn_like(hidden) * rms * noise
        positions = torch.arange(hidden.shape[1]).unsqueeze(0)
        embeds = self.drafter.embed_tokens(batch["tokens"])
        predicted = self.head(embeds, hidden, positions, attention_mask=mask)  # [b, n, H]
        valid = mask.bool()
        pred, want = predicted[valid], target[valid]  # [N, H]
        feature_loss = nn.functional.smooth_l1_loss(pred, want)
        with torch.no_grad():
            target_logp = self.drafter.logits(want).log_softmax(dim=-1)  # [N, V']
        logp = self.drafter.logits(pred).log_softmax(dim=-1)
        token_loss = -(target_logp.exp() * logp).sum(dim=-1).mean()
        accuracy = (logp.argmax(dim=-1) == target_logp.argmax(dim=-1)).float().mean()
        total = FEATURE_WEIGHT * feature_loss + TOKEN_WEIGHT * token_loss
        return {"loss": total, "feature": feature_loss, "token": token_loss, "top1": accuracy}

    def batches(self, samples: list[Sample], batch_tokens: int, rng: random.Random) -> list[list[Sample]]:
        """Groups of similar length holding about ``batch_tokens`` tokens, in random order."""
        ordered = sorted(samples, key=lambda s: len(s.tokens) + rng.random())
        groups, current = [], []
        for s in ordered:
            if current and (len(current) + 1) * len(s.tokens) > batch_tokens:
                groups.append(current)
                current = []
            current.append(s)
        if current:
            groups.append(current)
        rng.shuffle(groups)
        return groups

    @torch.no_grad()
    def evaluate(self, samples: list[Sample], batch_tokens: int) -> dict[str, float]:
        self.head.eval()
        totals: dict[str, float] = {}
        count = 0
        for group in self.batches(samples, batch_tokens, random.Random(0)):
            b = self.batch(group)
            n = int(b["mask"].sum())
            for k, v in self.losses(b).items():  # under no_grad: plain numbers
                totals[k] = totals.get(k, 0.0) + float(v) * n
            count += n
        self.head.train()
        return {k: v / max(count, 1) for k, v in totals.items()}

    def fit(
        self, train: list[Sample], val: list[Sample], *, minutes: float, max_epochs: int, batch_tokens: int,
        checkpoint_dir: Path | None = None, progress: bool = True, seed: int = 0,
    ) -> list[dict[str, float]]:
        """Train until the time budget or ``max_epochs`` runs out. Returns per-epoch validation metrics."""
        rng = random.Random(seed)
        started = time.perf_counter()
        budget = minutes * 60
        steps_per_epoch = len(self.batches(train, batch_tokens, random.Random(0)))
        max_steps = max_epochs * steps_per_epoch
        warmup = max(1, min(50, steps_per_epoch))
        history: list[dict[str, float]] = []
        step = 0
        for epoch in range(max_epochs):
            bar = _bar(steps_per_epoch, f"epoch {epoch + 1}", progress)
            for group in self.batches(train, batch_tokens, rng):
                # Cosine decay over whichever budget runs out first: wall-clock time or epochs.
                done = max((time.perf_counter() - started) / budget, step / max_steps)
                lr = self.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                parts = self.losses(self.batch(group), noise=self.feature_noise)
                self.optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                nn.utils.clip_grad_norm_(self.head.parameters(), 1.0)
                self.optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss'].item():.3f}", top1=f"{parts['top1'].item():.2f}")
                if time.perf_counter() - started > budget:
                    break
            bar.close()
            metrics = {"epoch": epoch + 1, "step": step, **self.evaluate(val, batch_tokens)}
            history.append({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
            log(f"epoch {epoch + 1}: held-out loss {metrics['loss']:.4f}, feature {metrics['feature']:.4f}, "
                f"token {metrics['token']:.3f}, top-1 {metrics['top1']:.3f}")
            if checkpoint_dir is not None:
                save_head(self.head, checkpoint_dir / f"epoch-{epoch + 1:03d}", draft_vocab=self.drafter.draft_vocab)
            if time.perf_counter() - started > budget:
                break
        self.head.eval()
        return history


def validate_acceptance(model: Any, tokenizer: Any, head_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Speculative decoding with the saved head on held-out prompts (question_id % 4 == 0), K=5, greedy."""
    import specdecode

    from . import _DRAFTERS

    _DRAFTERS.pop(model, None)  # the head on disk changed
    questions = round_robin(split(load_questions(args.questions), held_out=True), args.validate_prompts)
    config = specdecode.SpeculativeConfig(method="eagle", num_speculative_tokens=5, method_options={"head": str(head_dir)})
    total = None
    for q in questions:
        ids = torch.tensor([chat_prompt(tokenizer, q.text, args.max_prompt_tokens)])
        out = specdecode.generate(model, ids, config, max_new_tokens=64, do_sample=False)
        total = out.stats if total is None else total.merge(out.stats)
    return {
        "prompts": len(questions),
        "question_ids": [q.question_id for q in questions],
        "mean_acceptance_length": round(total.mean_acceptance_length, 3),
        "acceptance_rate": round(total.acceptance_rate, 3),
        "max_new_tokens": 64,
    }


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False)


def log(message: str) -> None:
    print(f"train-eagle: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdecode_eagle.train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
