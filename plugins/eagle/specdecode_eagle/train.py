"""Train an EAGLE head for a target model on CPU.

    specdecode train-eagle --target smollm2-135m --out heads/smollm2 --threads 2     # about 55 minutes in all
    python -m specdecode_eagle.train --target smollm2-135m --out heads/smollm2 --threads 2

Steps (see docs/methods/eagle.md):

1. Data: the target's own greedy responses to the training split of Spec-Bench (question_id % 4 != 0: all 360 first
   turns by default, taken round-robin over the six categories, plus the second turns of the MT-bench ones), with
   the last-layer hidden state of every token, recorded while generate computes it (see data.py).
   Cached in ``OUT/data.pt`` so a second run skips it.
2. Draft vocabulary: the ``--draft-vocab-size`` token ids seen most often in that data, topped up with the lowest ids
   (BPE vocabularies list frequent merges first). The head only scores these, which makes training and drafting
   several times cheaper than the full LM head.
3. Training: head position j reads (f_j, x_{j+1}) and must predict f_{j+1}: smooth-L1 on the feature plus
   cross-entropy between the target's next-token distribution softmax(lm_head(f_{j+1})) and the head's
   softmax(lm_head(predicted f_{j+1})), both over the draft vocabulary, through the frozen LM head. Gaussian noise
   on the input features (as EAGLE does). With ``--unroll 2`` (the default) the head is also trained the way it
   drafts beyond the first token (EAGLE-3's "training-time test"): a second pass feeds it its own predicted
   features, attending to the real-feature positions before it, as in chained drafting; its loss is weighted 0.8.
   AdamW, linear warm-up and cosine decay over the time budget (or the epochs, if fewer); a checkpoint after every
   epoch. The time budget is ``--minutes``, or by default what is left of ``--total-minutes`` after collection,
   minus a reserve for validation.
4. Validation: held-out teacher-forced metrics after every epoch (also on response tokens only and for the unrolled
   step), then real speculative decoding with the new head on held-out Spec-Bench prompts (question_id % 4 == 0):
   mean acceptance length at a fixed K=5 (back-off off, so it measures the head).
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
from .data import (
    CATEGORIES,
    Sample,
    chat_ids,
    chat_prompt,
    collect,
    fit_text,
    load_questions,
    max_prompt_tokens_for_text,
    round_robin,
    split,
)
from .head import EagleDrafter, EagleHead, HeadConfig

# EAGLE's weights: the feature loss leads, the token loss keeps it honest about argmax. A token weight of 1.0 looked
# better in 10-minute runs but not in a whole run (docs/methods/eagle.md, "Loss").
FEATURE_WEIGHT = 1.0
TOKEN_WEIGHT = 0.1
UNROLL_DECAY = 0.8  # weight of unrolled step s: 0.8^(s-1), as EAGLE-3 weights its training-time-test steps
DATA_FORMAT = 3  # bump when collection changes, so an old OUT/data.pt is not reused
VALIDATE_MAX_NEW_TOKENS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="smollm2-135m", help="embedded model name or local model directory")
    parser.add_argument("--out", required=True, help="output directory for the head, checkpoints and data cache")
    parser.add_argument("--questions", default=None, help="Spec-Bench question file (default: ../shared/data)")
    parser.add_argument("--num-prompts", type=int, default=0,
                        help="training prompts, round-robin by category (default 0: all 360 of the training split)")
    parser.add_argument("--second-turns", action=argparse.BooleanOptionalAction, default=True,
                        help="also collect the MT-bench second turns (default: on)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="response length collected per prompt")
    parser.add_argument("--max-prompt-tokens", type=int, default=320, help="long prompts lose their middle to fit")
    parser.add_argument("--collect-batch-size", type=int, default=32, help="prompts per batched generate call")
    parser.add_argument("--draft-vocab-size", type=int, default=8192, help="0 = score the full vocabulary")
    parser.add_argument("--intermediate-size", type=int, default=None, help="head MLP width (default: target's)")
    parser.add_argument("--init", default=None, help="continue from this head directory (keeps its draft vocabulary)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training time budget (default: what --total-minutes leaves after collection)")
    parser.add_argument("--total-minutes", type=float, default=55.0,
                        help="budget of the whole run, used when --minutes is not given")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="tokens per optimizer step (about)")
    parser.add_argument("--feature-weight", type=float, default=FEATURE_WEIGHT, help="weight of the feature loss")
    parser.add_argument("--token-weight", type=float, default=TOKEN_WEIGHT, help="weight of the token loss")
    parser.add_argument("--feature-noise", type=float, default=0.05, help="input noise std, relative to feature RMS")
    parser.add_argument("--unroll", type=int, default=2,
                        help="draft steps trained per position: 1 = teacher forcing only, 2 = also on own features")
    parser.add_argument("--validation-fraction", type=float, default=0.05)
    parser.add_argument("--validate-prompts", type=int, default=12,
                        help="held-out prompts for the acceptance check (round-robin by category; 0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad numbers before the model loads and collection starts (minutes of work), naming the flag."""
    from specdecode.toolkit import invalid

    at_least = {"max_new_tokens": 1, "max_prompt_tokens": 16, "collect_batch_size": 1, "batch_tokens": 1,
                "unroll": 1, "max_epochs": 1, "num_prompts": 0, "draft_vocab_size": 0, "validate_prompts": 0}
    for name, low in at_least.items():
        value = getattr(args, name)
        if value < low:
            raise invalid(f"--{name.replace('_', '-')}", value, f"an integer >= {low}")
    for name in ("feature_weight", "token_weight", "feature_noise"):
        value = getattr(args, name)
        if not value >= 0 or math.isinf(value):
            raise invalid(f"--{name.replace('_', '-')}", value, "a finite number >= 0")
    if args.feature_weight == 0 and args.token_weight == 0:
        raise invalid("--token-weight", args.token_weight, "> 0 when --feature-weight is 0 (nothing to train on)")
    for name in ("lr", "total_minutes") + (("minutes",) if args.minutes is not None else ()):
        value = getattr(args, name)
        if not value > 0 or math.isinf(value):
            raise invalid(f"--{name.replace('_', '-')}", value, "a finite number > 0")
    if not 0 < args.validation_fraction < 1:
        raise invalid("--validation-fraction", args.validation_fraction, "between 0 and 1 (exclusive)")
    if args.threads is not None and args.threads < 1:
        raise invalid("--threads", args.threads, "an integer >= 1")
    if args.init is not None and not Path(args.init).is_dir():
        raise invalid("--init", args.init, "an existing head directory")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    from specdecode.toolkit import load_model

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
    minutes = training_minutes(args, collect_seconds)
    log(f"{len(train)} training sequences ({sum(len(s.tokens) for s in train)} tokens), {len(val)} held out; "
        f"training for {minutes:.1f} minutes (or {args.max_epochs} epochs)")

    trainer = Trainer(head, model, draft_vocab, lr=args.lr, feature_noise=args.feature_noise, unroll=args.unroll,
                      feature_weight=args.feature_weight, token_weight=args.token_weight)
    history = trainer.fit(
        train, val, minutes=minutes, max_epochs=args.max_epochs, batch_tokens=args.batch_tokens,
        checkpoint_dir=out / "checkpoints", progress=not args.quiet, seed=args.seed,
    )
    train_seconds = time.perf_counter() - started - collect_seconds
    turns = " and MT-bench second turns" if args.second_turns else ""
    meta = {
        "target": args.target,
        "initialised_from": args.init,
        "trained": {
            "data": f"greedy responses of the target to Spec-Bench first turns{turns}, question_id % 4 != 0 "
            f"(round-robin over {', '.join(CATEGORIES)}); features recorded while generating them",
            "num_prompts": len(samples),
            "second_turns": args.second_turns,
            "max_new_tokens": args.max_new_tokens,
            "max_prompt_tokens": args.max_prompt_tokens,
            "train_tokens": sum(len(s.tokens) for s in train),
            "unroll": args.unroll,
            "feature_weight": args.feature_weight,
            "token_weight": args.token_weight,
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
        t = time.perf_counter()
        result = validate_acceptance(model, tokenizer, out, args)
        meta["validation"] = result
        meta["calibration"] = result["calibration"]  # the back-off's starting point (EagleOptions.confidence_prior)
        save_head(head, out, draft_vocab=draft_vocab, dtype=torch.float16, meta=meta)
        positions = " ".join(f"{a:.2f}" for a in result["per_position_acceptance"])
        log(f"held-out mean acceptance length at K=5: {result['mean_acceptance_length']:.2f} on "
            f"{result['prompts']} prompts (per position {positions}; {time.perf_counter() - t:.0f}s)")
    log(f"total {time.perf_counter() - started:.0f}s")
    return 0


VALIDATE_SECONDS_PER_PROMPT = 15.0  # reserve for the acceptance check (SmolLM2-135M, 64 tokens, 2 threads: ~5 s)


def training_minutes(args: argparse.Namespace, elapsed_seconds: float) -> float:
    """``--minutes``, or what ``--total-minutes`` leaves after ``elapsed_seconds`` and the validation reserve."""
    if args.minutes is not None:
        return args.minutes
    reserve = VALIDATE_SECONDS_PER_PROMPT * args.validate_prompts + 30  # + saving, loading the head
    return max((args.total_minutes * 60 - elapsed_seconds - reserve) / 60, 1.0)


def collect_or_load(model: Any, tokenizer: Any, args: argparse.Namespace, out: Path) -> list[Sample]:
    cache = out / "data.pt"
    key = {"format": DATA_FORMAT, "target": args.target, "num_prompts": args.num_prompts,
           "second_turns": args.second_turns, "max_new_tokens": args.max_new_tokens,
           "max_prompt_tokens": args.max_prompt_tokens}
    if cache.exists():
        stored = torch.load(cache, weights_only=True)
        if stored.get("key") == key:
            log(f"reusing collected data from {cache}")
            return [Sample(tokens=t, hidden=h, prompt_length=int(n)) for t, h, n in stored["samples"]]
    pool = split(load_questions(args.questions), held_out=False)
    questions = round_robin(pool, args.num_prompts if args.num_prompts > 0 else len(pool))
    text_budget = max_prompt_tokens_for_text(tokenizer, args.max_prompt_tokens)
    first_turns = [fit_text(tokenizer, q.text, text_budget) for q in questions]
    prompts = [chat_prompt(tokenizer, text) for text in first_turns]
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    t = time.perf_counter()
    log(f"collecting greedy responses to {len(prompts)} prompts ({sum(map(len, prompts))} prompt tokens, up to "
        f"{args.max_new_tokens} new tokens each, batches of {args.collect_batch_size})")
    with _bar(len(prompts), "responses", not args.quiet) as bar:
        responses, samples = collect(
            model, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.collect_batch_size,
            eos_token_ids=eos_ids, pad_token_id=pad, progress=bar,
        )
    two = [i for i, q in enumerate(questions) if len(q.turns) > 1] if args.second_turns else []
    if two:
        # The whole conversation replaces the first turn's sample: its first part is that sample, token for token
        # up to the retokenised first response.
        conversations = [
            chat_ids(tokenizer, [
                {"role": "user", "content": first_turns[i]},
                {"role": "assistant", "content": tokenizer.decode(responses[i], skip_special_tokens=True).strip()},
                {"role": "user", "content": fit_text(tokenizer, questions[i].turns[1], text_budget)},
            ])
            for i in two
        ]
        with _bar(len(two), "second turns", not args.quiet) as bar:
            _, second = collect(
                model, conversations, max_new_tokens=args.max_new_tokens, batch_size=args.collect_batch_size,
                eos_token_ids=eos_ids, pad_token_id=pad, progress=bar,
            )
        for i, sample in zip(two, second):
            samples[i] = sample
    log(f"collected {sum(len(s.tokens) for s in samples)} tokens ({sum(len(r) for r in responses)} first-turn "
        f"response tokens" + (f", {len(two)} second turns" if two else "") + f") in {time.perf_counter() - t:.0f}s")
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
    """Training of a head on collected (tokens, hidden) sequences: teacher forcing, plus ``unroll - 1`` passes on
    the head's own predicted features (see :meth:`steps`)."""

    def __init__(
        self, head: EagleHead, target: Any, draft_vocab: torch.Tensor | None, *, lr: float, feature_noise: float,
        unroll: int = 1, feature_weight: float = FEATURE_WEIGHT, token_weight: float = TOKEN_WEIGHT,
    ):
        if unroll < 1:
            raise ValueError(f"unroll must be >= 1 (got {unroll})")
        self.head = head.train()
        self.drafter = EagleDrafter(head, target, draft_vocab)
        self.head.train()  # EagleDrafter puts it in eval mode
        self.lr = lr
        self.feature_noise = feature_noise
        self.unroll = unroll
        self.feature_weight = feature_weight
        self.token_weight = token_weight
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))

    def batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Right-padded head inputs: hidden f_0..f_{T-2}, tokens x_1..x_{T-1}, targets f_1..f_{T-1}; ``response``
        marks the positions whose draft is a response token (position j drafts x_{j+2}; drafting starts at the
        last prompt token, j = prompt_length - 1)."""
        width = max(len(s.tokens) for s in samples) - 1
        size = samples[0].hidden.shape[1]
        hidden = torch.zeros(len(samples), width, size)
        target = torch.zeros(len(samples), width, size)
        tokens = torch.zeros(len(samples), width, dtype=torch.long)
        mask = torch.zeros(len(samples), width, dtype=torch.long)
        response = torch.zeros(len(samples), width, dtype=torch.bool)
        for row, s in enumerate(samples):
            n = len(s.tokens) - 1
            hidden[row, :n] = s.hidden[:-1].float()
            target[row, :n] = s.hidden[1:].float()
            tokens[row, :n] = s.tokens[1:]
            mask[row, :n] = 1
            response[row, max(s.prompt_length - 1, 0) : n] = True
        return {"hidden": hidden, "target": target, "tokens": tokens, "mask": mask, "response": response}

    def steps(self, batch: dict[str, torch.Tensor], noise: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Predicted features [b, n, H] and the positions where they count [b, n], for each draft step.

        Step 1 is teacher forcing: position p reads the real f_p. Step s >= 2 is how the head drafts its s-th
        token: position p reads the feature that step s-1 predicted at p-1 (detached), and attends to the real
        positions 0..p-s+1 and to the earlier steps' positions p-s+2..p-1, as the head's cache holds them while
        drafting; every step predicts the same f_{p+1}. Positions p < s-1 have no real context and do not count.
        """
        hidden, mask = batch["hidden"], batch["mask"]
        if noise > 0:
            rms = hidden.pow(2).mean(dim=-1, keepdim=True).sqrt()
            hidden = hidden + torch.randn_like(hidden) * rms * noise
        b, n, _ = hidden.shape
        positions = torch.arange(n).unsqueeze(0)
        embeds = self.drafter.embed_tokens(batch["tokens"])
        valid = mask.bool()
        if self.unroll == 1:
            return [(self.head(embeds, hidden, positions, attention_mask=mask), valid)]
        from transformers import DynamicCache

        cache = DynamicCache(config=self.head.llama_config)
        predicted = self.head(embeds, hidden, positions, cache=cache, attention_mask=mask)
        out = [(predicted, valid)]
        query = torch.arange(n).view(n, 1)
        key = torch.arange(n).view(1, n)
        for s in range(2, self.unroll + 1):
            fed = torch.cat([predicted.new_zeros(b, 1, predicted.shape[-1]), predicted[:, :-1].detach()], dim=1)
            blocks = [(key <= query - (s - 1)).unsqueeze(0) & valid.view(b, 1, n)]  # the real positions
            blocks += [(key == query - (s - t)).unsqueeze(0).expand(b, n, n) for t in range(2, s + 1)]
            full_mask = torch.cat(blocks, dim=-1).unsqueeze(1)  # [b, 1, n, s*n]; the diagonal keeps rows finite
            predicted = self.head(embeds, fed, positions, cache=cache, full_mask=full_mask)
            out.append((predicted, valid & (torch.arange(n) >= s - 1).unsqueeze(0)))
        return out

    def _outputs(self, batch: dict[str, torch.Tensor], noise: float) -> list[dict[str, torch.Tensor]]:
        """Per draft step: feature loss, token loss, top-1 agreement [N] and response flags [N] of its positions."""
        target, valid = batch["target"], batch["mask"].bool()
        with torch.no_grad():
            target_logp = self.drafter.logits(target[valid]).log_softmax(dim=-1)  # [N, V'], shared by all steps
        out = []
        for predicted, counts in self.steps(batch, noise):
            if not bool(counts.any()):  # sequences too short for this unrolled step
                continue
            keep = counts[valid]  # which of the N valid positions count for this step
            pred, want, want_logp = predicted[counts], target[counts], target_logp[keep]
            logp = self.drafter.logits(pred).log_softmax(dim=-1)
            out.append({
                "feature": nn.functional.smooth_l1_loss(pred, want, reduction="none").mean(dim=-1),
                "token": -(want_logp.exp() * logp).sum(dim=-1),
                "top1": (logp.argmax(dim=-1) == want_logp.argmax(dim=-1)).float(),
                "response": batch["response"][counts],
            })
        return out

    def losses(self, batch: dict[str, torch.Tensor], noise: float = 0.0) -> dict[str, torch.Tensor]:
        """The objective (``loss``: weighted over the unrolled steps) and step 1's feature / token loss and top-1."""
        total = None
        parts = self._outputs(batch, noise)
        for s, part in enumerate(parts):
            step = self.feature_weight * part["feature"].mean() + self.token_weight * part["token"].mean()
            total = step if total is None else total + UNROLL_DECAY**s * step
        first = parts[0]
        return {"loss": total, "feature": first["feature"].mean(), "token": first["token"].mean(),
                "top1": first["top1"].mean()}

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
        """Held-out metrics: ``loss`` (the objective), step 1's ``feature``, ``token`` and ``top1`` over all positions,
        ``top1_response`` over response positions only, and per unrolled step s >= 2 ``loss_step{s}`` and
        ``top1_step{s}`` (response positions)."""
        self.head.eval()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def add(name: str, values: torch.Tensor, weight: float = 1.0) -> None:
            sums[name] = sums.get(name, 0.0) + float(values.sum()) * weight
            counts[name] = counts.get(name, 0) + int(values.numel())

        for group in self.batches(samples, batch_tokens, random.Random(0)):
            parts = self._outputs(self.batch(group), 0.0)
            for s, part in enumerate(parts):
                step = self.feature_weight * part["feature"] + self.token_weight * part["token"]
                add(f"loss{s}", step)
                if s == 0:
                    add("feature", part["feature"])
                    add("token", part["token"])
                    add("top1", part["top1"])
                    add("top1_response", part["top1"][part["response"]])
                else:
                    add(f"top1_step{s + 1}", part["top1"][part["response"]])
        self.head.train()
        metrics = {k: v / max(counts[k], 1) for k, v in sums.items()}
        steps = [metrics.pop(f"loss{s}", 0.0) for s in range(self.unroll)]
        metrics["loss"] = sum(UNROLL_DECAY**s * loss for s, loss in enumerate(steps))
        metrics.update({f"loss_step{s + 1}": loss for s, loss in enumerate(steps) if s > 0})
        return metrics

    def fit(
        self, train: list[Sample], val: list[Sample], *, minutes: float, max_epochs: int, batch_tokens: int,
        checkpoint_dir: Path | None = None, progress: bool = True, seed: int = 0,
    ) -> list[dict[str, float]]:
        """Train until the time budget or ``max_epochs`` runs out. Returns per-epoch validation metrics.

        The learning rate warms up linearly, then follows a cosine to zero over whichever budget runs out first,
        measured as the larger of the elapsed share of the time budget and the share of steps done (an older
        version sized the schedule from the first epoch's speed, and its rate reached zero early on a loaded
        machine: held-out metrics then froze for the last epochs)."""
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
                bar.set_postfix(loss=f"{parts['loss'].item():.3f}", top1=f"{parts['top1'].item():.2f}",
                                lr=f"{lr:.1e}")
                if time.perf_counter() - started > budget:
                    break
            bar.close()
            metrics = {"epoch": epoch + 1, "step": step, "lr": lr, **self.evaluate(val, batch_tokens)}
            history.append({k: round(v, 6 if k == "lr" else 4) if isinstance(v, float) else v
                            for k, v in metrics.items()})
            unrolled = "".join(
                f", step-{s} top-1 {metrics.get(f'top1_step{s}', 0.0):.3f}" for s in range(2, self.unroll + 1)
            )
            log(f"epoch {epoch + 1}: held-out loss {metrics['loss']:.4f}, feature {metrics['feature']:.4f}, "
                f"token {metrics['token']:.3f}, top-1 {metrics['top1']:.3f} (responses "
                f"{metrics['top1_response']:.3f}{unrolled}), lr {lr:.1e}")
            if checkpoint_dir is not None:
                save_head(self.head, checkpoint_dir / f"epoch-{epoch + 1:03d}", draft_vocab=self.drafter.draft_vocab)
            if time.perf_counter() - started > budget:
                break
        self.head.eval()
        return history


def validate_acceptance(model: Any, tokenizer: Any, head_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Speculative decoding with the saved head on held-out prompts (question_id % 4 == 0), greedy, a fixed K=5
    (back-off off, so this measures the head, not the back-off). Also measures the head's calibration: accepted
    drafts per unit of confidence, per draft position (first, second, third and later), which the back-off starts
    from (stored in eagle_head.json as ``calibration``)."""
    import specdecode

    from . import _DRAFTERS, EagleOptions, load_drafter
    from .proposer import Calibration, EagleProposer

    _DRAFTERS.pop(model, None)  # the head on disk changed
    drafter = load_drafter(model, head_dir)
    questions = round_robin(split(load_questions(args.questions), held_out=True), args.validate_prompts)
    config = specdecode.SpeculativeConfig(method="eagle", num_speculative_tokens=5)
    total = None
    tally = [[0.0, 0.0, 0] for _ in range(Calibration.POSITIONS)]
    for q in questions:
        ids = torch.tensor([chat_prompt(tokenizer, q.text, args.max_prompt_tokens)])
        proposer = EagleProposer(drafter, EagleOptions(adaptive=False, tree_width=1))  # the head alone: a chain
        out = specdecode.generate(model, ids, config, max_new_tokens=VALIDATE_MAX_NEW_TOKENS, do_sample=False,
                                  proposer=proposer)
        total = out.stats if total is None else total.merge(out.stats)
        for mine, theirs in zip(tally, proposer.tally):
            for i in range(3):
                mine[i] += theirs[i]
    # Smoothed towards the default prior by one unit of confidence, so a position with few drafts stays sane.
    ratios = [round((a + Calibration.DEFAULT_PRIOR) / (c + 1.0), 3) for a, c, _ in tally]
    return {
        "prompts": len(questions),
        "question_ids": [q.question_id for q in questions],
        "mean_acceptance_length": round(total.mean_acceptance_length, 3),
        "acceptance_rate": round(total.acceptance_rate, 3),
        "per_position_acceptance": [round(a, 3) for a in total.per_position_acceptance],
        "max_new_tokens": VALIDATE_MAX_NEW_TOKENS,
        "k": 5,
        "adaptive": False,
        "calibration": {"ratio_per_position": ratios, "drafts_reached": [n for _, _, n in tally],
                        "mean_confidence": [round(c / n, 3) if n else None for _, c, n in tally]},
    }


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False)


def log(message: str) -> None:
    print(f"train-eagle: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdecode_eagle.train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    from specdecode import SpecDecodeError

    try:
        return run(parser.parse_args(argv))
    except SpecDecodeError as exc:  # the same one-line error and exit status as the specdecode command
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
