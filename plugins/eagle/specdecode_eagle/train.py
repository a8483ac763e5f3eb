"""Train an EAGLE head for a target model on CPU.

    specdecode train-eagle --target smollm2-135m --out heads/smollm2 --threads 2     # at most 55 minutes in all
    specdecode train-eagle --target smollm2-135m --out heads/smollm2 --threads 2 --format speculators  # EAGLE-3
    python -m specdecode_eagle.train --target smollm2-135m --out heads/smollm2 --threads 2

Steps (see docs/methods/eagle.md); ``--format speculators`` trains an EAGLE-3 head instead (train_eagle3.py):

1. Data, two routes: the target's own greedy responses to the training split of Spec-Bench (question_id % 4 != 0:
   all 360 first turns by default, taken round-robin over the six categories, plus the second turns of the MT-bench
   ones), with the last-layer hidden state of every token, recorded while generate computes it; and
   ``--text-tokens`` of English conversations from a PyPI package (``--text-source chitchat``), teacher-forced: one
   forward pass per sequence gives the same states at prefill speed (see data.py). EAGLE-3 also records its aux
   layers in the same passes. Cached in ``OUT/data.pt`` and ``OUT/text.pt`` so a second run skips them.
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
import contextlib
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
    TEXT_SOURCES,
    Sample,
    chat_ids,
    chat_prompt,
    collect,
    fit_text,
    load_questions,
    load_text_source,
    max_prompt_tokens_for_text,
    round_robin,
    shingles,
    split,
    teacher_force,
    text_sequences,
    text_source_file,
)
from .head import EagleDrafter, EagleHead, HeadConfig

# EAGLE's weights: the feature loss leads, the token loss keeps it honest about argmax. A token weight of 1.0 looked
# better in 10-minute runs but not in a whole run (docs/methods/eagle.md, "Loss").
FEATURE_WEIGHT = 1.0
TOKEN_WEIGHT = 0.1
UNROLL_DECAY = 0.8  # weight of unrolled step s: 0.8^(s-1), as EAGLE-3 weights its training-time-test steps
DATA_FORMAT = 4  # bump when collection changes, so an old OUT/data.pt is not reused
VALIDATE_MAX_NEW_TOKENS = 64


FORMATS = ("specdecode-eagle", "speculators")  # EAGLE-1/2 head (method "eagle"), EAGLE-3 head (method "eagle3")
TEXT_TOKENS = 150_000  # teacher-forced text tokens by default (see docs/methods/eagle.md, "Data")


TRAIN_DTYPES = ("auto", "float32", "bfloat16")


def train_autocast_dtype(choice: str) -> torch.dtype | None:
    """The dtype the head's products run in while training (None: float32, no autocast). ``auto`` picks bfloat16
    only where the CPU computes it natively: there a bf16 product is ~4x faster than float32 (AMD EPYC with
    AVX512-BF16, measured), elsewhere it is emulated and slower."""
    if choice == "bfloat16":
        return torch.bfloat16
    if choice == "auto":
        cpu = torch.cpu
        native = any(bool(getattr(cpu, name, lambda: False)())
                     for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return torch.bfloat16 if native else None
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="smollm2-135m", help="embedded model name or local model directory")
    parser.add_argument("--out", required=True, help="output directory for the head, checkpoints and data cache")
    parser.add_argument("--format", default="specdecode-eagle",
                        help="specdecode-eagle: an EAGLE-1/2 head for method 'eagle' (default); speculators: an "
                        "EAGLE-3 head for method 'eagle3' (the format vLLM loads)")
    parser.add_argument("--questions", default=None, help="Spec-Bench question file (default: ../shared/data)")
    parser.add_argument("--num-prompts", type=int, default=0,
                        help="training prompts whose greedy responses are collected, round-robin by category "
                        "(default 0: all 360 of the training split; -1: none)")
    parser.add_argument("--second-turns", action=argparse.BooleanOptionalAction, default=True,
                        help="also collect the MT-bench second turns (default: on)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="response length collected per prompt")
    parser.add_argument("--sampled-responses", type=int, default=0,
                        help="also collect this many sampled responses per training prompt (first turns; more of the "
                        "target's own text on the same tasks; raising N later keeps the sets already collected; default 0)")
    parser.add_argument("--sampling-temperature", type=float, default=0.7,
                        help="temperature of the sampled responses (no top-k / top-p)")
    parser.add_argument("--max-prompt-tokens", type=int, default=320, help="long prompts lose their middle to fit")
    parser.add_argument("--collect-batch-size", type=int, default=32, help="prompts per batched generate call")
    parser.add_argument("--text-source", default="chitchat",
                        help=f"conversations to teacher-force: {', '.join(TEXT_SOURCES)} (a PyPI package) or none")
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS,
                        help=f"teacher-forced text tokens (default {TEXT_TOKENS}; 0: none)")
    parser.add_argument("--max-text-tokens", type=int, default=512, help="longest teacher-forced sequence")
    parser.add_argument("--aux-layers", default=None,
                        help="EAGLE-3: the target layers the head reads, comma-separated ids of output_hidden_states "
                        "(default: vLLM's, 2,L/2,L-3)")
    parser.add_argument("--verifier", default=None,
                        help="EAGLE-3: the target's name recorded in the speculators config (default: --target)")
    parser.add_argument("--collect-only", action="store_true", help="collect (and cache) the data, then stop")
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
    parser.add_argument("--train-dtype", default="auto",
                        help="precision of the head's matrix products while training (weights and optimizer stay "
                        "float32): float32, bfloat16 (autocast), or auto: bfloat16 where the CPU has native bf16 "
                        "instructions (AVX512-BF16 or AMX), else float32")
    parser.add_argument("--feature-weight", type=float, default=None,
                        help=f"weight of the feature loss (default {FEATURE_WEIGHT}; EAGLE-3 has none)")
    parser.add_argument("--token-weight", type=float, default=None,
                        help=f"weight of the token loss (default {TOKEN_WEIGHT}; EAGLE-3: 1, the only loss)")
    parser.add_argument("--feature-noise", type=float, default=None,
                        help="input noise std, relative to feature RMS (default 0.05; EAGLE-3: 0)")
    parser.add_argument("--unroll", type=int, default=None,
                        help="draft steps trained per position: 1 = teacher forcing only, 2 = also on own features "
                        "(default 2; EAGLE-3: 3)")
    parser.add_argument("--validation-fraction", type=float, default=0.05,
                        help="share of the collected responses held out for the per-epoch metrics")
    parser.add_argument("--checkpoint-tokens", type=int, default=0,
                        help="also evaluate and save a checkpoint every N training tokens (0: after epochs only)")
    parser.add_argument("--validate-prompts", type=int, default=12,
                        help="held-out prompts for the acceptance check (round-robin by category; 0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad flags before the model loads and collection starts (minutes of work), naming the flag, and fill
    in the defaults that depend on ``--format``."""
    from specdecode.toolkit import invalid

    if args.format not in FORMATS:
        raise invalid("--format", args.format, f"one of: {', '.join(FORMATS)}")
    if args.train_dtype not in TRAIN_DTYPES:
        raise invalid("--train-dtype", args.train_dtype, f"one of: {', '.join(TRAIN_DTYPES)}")
    eagle3 = args.format == "speculators"
    if eagle3 and args.feature_weight not in (None, 0):
        raise invalid("--feature-weight", args.feature_weight, "0 or unset with --format speculators (EAGLE-3 "
                      "trains on the token loss only)")
    defaults = {"feature_weight": 0.0 if eagle3 else FEATURE_WEIGHT, "token_weight": 1.0 if eagle3 else TOKEN_WEIGHT,
                "feature_noise": 0.0 if eagle3 else 0.05, "unroll": 3 if eagle3 else 2}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    at_least = {"max_new_tokens": 1, "max_prompt_tokens": 16, "collect_batch_size": 1, "batch_tokens": 1,
                "unroll": 1, "max_epochs": 1, "num_prompts": -1, "draft_vocab_size": 0, "validate_prompts": 0,
                "text_tokens": 0, "max_text_tokens": 16, "checkpoint_tokens": 0, "sampled_responses": 0}
    for name, low in at_least.items():
        value = getattr(args, name)
        if value < low:
            raise invalid(f"--{name.replace('_', '-')}", value, f"an integer >= {low}")
    if args.text_source != "none" and args.text_source not in TEXT_SOURCES:
        raise invalid("--text-source", args.text_source, f"one of: {', '.join([*TEXT_SOURCES, 'none'])}")
    if args.text_source == "none":
        args.text_tokens = 0
    elif text_source_file(args.text_source) is None:  # before minutes of collection
        package = TEXT_SOURCES[args.text_source][1]
        raise invalid("--text-source", args.text_source,
                      f"'none' unless {package} is installed (pip install 'specdecode-eagle[train]')")
    if args.num_prompts < 0 and args.text_tokens == 0:
        raise invalid("--text-tokens", args.text_tokens, "> 0 when --num-prompts is -1 (no data to train on)")
    for name in ("feature_weight", "token_weight", "feature_noise"):
        value = getattr(args, name)
        if not value >= 0 or math.isinf(value):
            raise invalid(f"--{name.replace('_', '-')}", value, "a finite number >= 0")
    if args.feature_weight == 0 and args.token_weight == 0:
        raise invalid("--token-weight", args.token_weight, "> 0 when --feature-weight is 0 (nothing to train on)")
    if args.sampled_responses > 0 and args.num_prompts < 0:
        raise invalid("--sampled-responses", args.sampled_responses, "0 when --num-prompts is -1 (no prompts)")
    for name in ("lr", "total_minutes", "sampling_temperature") + (("minutes",) if args.minutes is not None else ()):
        value = getattr(args, name)
        if not value > 0 or math.isinf(value):
            raise invalid(f"--{name.replace('_', '-')}", value, "a finite number > 0")
    if not 0 < args.validation_fraction < 1:
        raise invalid("--validation-fraction", args.validation_fraction, "between 0 and 1 (exclusive)")
    if args.threads is not None and args.threads < 1:
        raise invalid("--threads", args.threads, "an integer >= 1")
    if args.init is not None and not Path(args.init).is_dir():
        raise invalid("--init", args.init, "an existing head directory")
    if args.aux_layers is not None:
        try:
            layers = tuple(int(i) for i in args.aux_layers.split(","))
        except ValueError:
            layers = ()
        if not eagle3 or not layers or min(layers) < 0:
            raise invalid("--aux-layers", args.aux_layers, "comma-separated layer ids >= 0, with --format speculators")
        args.aux_layers = layers


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    from specdecode.toolkit import load_model

    eagle3 = args.format == "speculators"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer = load_model(args.target)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = None
    if eagle3:
        from .eagle3 import default_aux_layers

        layers = args.aux_layers or default_aux_layers(int(model.config.num_hidden_layers))

    responses, sampled, text = collect_or_load(model, tokenizer, args, out, layers)
    collect_seconds = time.perf_counter() - started
    if args.collect_only:
        log(f"collected {sum(len(s.tokens) for s in responses)} greedy-response, "
            f"{sum(len(s.tokens) for s in sampled)} sampled-response and {sum(len(s.tokens) for s in text)} "
            f"text tokens in {collect_seconds:.0f}s; stopping (--collect-only)")
        return 0
    train, val = split_training(responses, sampled, text, args.validation_fraction, args.seed)
    lineage = None
    if args.init:
        head, draft_vocab, lineage = _initial_head(args, model)
    else:
        draft_vocab = pick_draft_vocab(train, model.config.vocab_size, args.draft_vocab_size)
        if eagle3:
            from .train_eagle3 import new_eagle3_head

            head = new_eagle3_head(model, draft_vocab, layers, intermediate_size=args.intermediate_size)
        else:
            head = EagleHead(HeadConfig.from_target(model.config, intermediate_size=args.intermediate_size))
    minutes = training_minutes(args, collect_seconds)
    train_tokens = sum(len(s.tokens) for s in train)
    log(f"{len(train)} training sequences ({train_tokens} tokens, {sum(len(s.tokens) for s in sampled)} of them "
        f"sampled responses, {sum(len(s.tokens) for s in text)} teacher-forced text), {len(val)} held out; "
        f"training for {minutes:.1f} minutes (or {args.max_epochs} epochs)")

    autocast = train_autocast_dtype(args.train_dtype)
    log(f"training the head's products in {autocast or torch.float32} (--train-dtype {args.train_dtype})")
    if eagle3:
        from .train_eagle3 import Eagle3Trainer

        trainer = Eagle3Trainer(head, model, lr=args.lr, feature_noise=args.feature_noise, unroll=args.unroll,
                                autocast=autocast)
    else:
        trainer = Trainer(head, model, draft_vocab, lr=args.lr, feature_noise=args.feature_noise, unroll=args.unroll,
                          feature_weight=args.feature_weight, token_weight=args.token_weight, autocast=autocast)
    history = trainer.fit(
        train, val, minutes=minutes, max_epochs=args.max_epochs, batch_tokens=args.batch_tokens,
        checkpoint_dir=out / "checkpoints", progress=not args.quiet, seed=args.seed,
        checkpoint_tokens=args.checkpoint_tokens,
    )
    train_seconds = time.perf_counter() - started - collect_seconds
    turns = " and MT-bench second turns" if args.second_turns else ""
    sources = []
    if responses:
        sources.append(f"greedy responses of the target to Spec-Bench first turns{turns}, question_id % 4 != 0 "
                       f"(round-robin over {', '.join(CATEGORIES)}); states recorded while generating them")
    if sampled:
        sources.append(f"{args.sampled_responses} response(s) per first turn sampled from the target at temperature "
                       f"{args.sampling_temperature} (the held-out sequences' prompts excluded)")
    if text:
        _, package, licence, what = TEXT_SOURCES[args.text_source]
        sources.append(f"{what} (PyPI package {package}, {licence}), teacher-forced in the chat template")
    meta = {
        "target": args.target,
        "format": args.format,
        "initialised_from": args.init,
        "init_record": lineage,
        "trained": {
            "data": "; ".join(sources),
            "num_prompts": len(responses),
            "second_turns": args.second_turns,
            "max_new_tokens": args.max_new_tokens,
            "max_prompt_tokens": args.max_prompt_tokens,
            "sampled_responses": args.sampled_responses,
            "sampling_temperature": args.sampling_temperature if sampled else None,
            "sampled_tokens": sum(len(s.tokens) for s in sampled),
            "text_source": args.text_source if text else None,
            "text_tokens": sum(len(s.tokens) for s in text),
            "max_text_tokens": args.max_text_tokens,
            "aux_layers": None if layers is None else list(layers),
            "train_tokens": train_tokens,
            "unroll": args.unroll,
            "feature_weight": args.feature_weight,
            "token_weight": args.token_weight,
            "feature_noise": args.feature_noise,
            "lr": args.lr,
            "batch_tokens": args.batch_tokens,
            "train_dtype": str(autocast or torch.float32).removeprefix("torch."),
            "epochs": max((h["epoch"] for h in history), default=0),
            "collect_seconds": round(collect_seconds),
            "train_seconds": round(train_seconds),
            "threads": torch.get_num_threads(),
            "history": history,
        },
    }

    def save() -> None:
        if eagle3:
            from .train_eagle3 import save_eagle3

            save_eagle3(head, out, verifier=args.verifier or args.target, meta=meta)
        else:
            save_head(head, out, draft_vocab=draft_vocab, dtype=torch.float16, meta=meta)

    save()
    log(f"saved the head to {out} (collection {collect_seconds:.0f}s, training {train_seconds:.0f}s)")

    if args.validate_prompts > 0:
        t = time.perf_counter()
        result = validate_acceptance(model, tokenizer, out, args)
        meta["validation"] = result
        meta["calibration"] = result["calibration"]  # the back-off's starting point (EagleOptions.confidence_prior)
        save()
        positions = " ".join(f"{a:.2f}" for a in result["per_position_acceptance"])
        log(f"held-out mean acceptance length at K=5: {result['mean_acceptance_length']:.2f} on "
            f"{result['prompts']} prompts (per position {positions}; {time.perf_counter() - t:.0f}s)")
    log(f"total {time.perf_counter() - started:.0f}s")
    return 0


def _initial_head(
    args: argparse.Namespace, model: Any
) -> tuple[nn.Module, torch.Tensor | None, dict[str, Any] | None]:
    """The head of ``--init`` (fp32), of the generation ``--format`` asks for, its draft vocabulary, and how it was
    made (:func:`init_record`)."""
    from specdecode.toolkit import invalid

    from .checkpoint import EAGLE3_FORMATS, head_format

    found = head_format(args.init)
    if (found in EAGLE3_FORMATS) != (args.format == "speculators"):
        raise invalid("--init", args.init, f"a head of the generation --format {args.format} trains (this is a "
                      f"{found} head)")
    if args.format == "speculators":
        from .eagle3 import check_fits_target as check_eagle3
        from .eagle3_checkpoint import load_eagle3_head
        from .train_eagle3 import read_training_record

        checkpoint = load_eagle3_head(args.init)
        check_eagle3(checkpoint.head, model, f"EAGLE-3 head at {args.init}")
        return (checkpoint.head.float().train(), checkpoint.head.draft_token_ids(),
                init_record(read_training_record(args.init)))
    start = load_head(args.init)
    check_fits_target(start, model)
    return start.head.float(), start.draft_vocab, init_record(start.meta)


def init_record(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """How a head was made, from the record it was saved with (an EAGLE-3 head's specdecode.json, an EAGLE-1/2
    head's eagle_head.json): its training record, validation and, nested, its own init_record, so a head trained in
    several runs keeps the whole lineage. None when it has no record."""
    kept = {key: meta[key] for key in ("initialised_from", "init_record", "trained", "validation") if key in meta} \
        if meta else {}
    return kept or None


VALIDATE_SECONDS_PER_PROMPT = 15.0  # reserve for the acceptance check (SmolLM2-135M, 64 tokens, 2 threads: ~5 s)


def training_minutes(args: argparse.Namespace, elapsed_seconds: float) -> float:
    """``--minutes``, or what ``--total-minutes`` leaves after ``elapsed_seconds`` and the validation reserve."""
    if args.minutes is not None:
        return args.minutes
    reserve = VALIDATE_SECONDS_PER_PROMPT * args.validate_prompts + 30  # + saving, loading the head
    return max((args.total_minutes * 60 - elapsed_seconds - reserve) / 60, 1.0)


def collect_or_load(
    model: Any, tokenizer: Any, args: argparse.Namespace, out: Path, layers: tuple[int, ...] | None
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(the target's greedy responses to the training prompts, its ``--sampled-responses`` sampled ones,
    teacher-forced text): each collected once and cached in ``OUT/data.pt``, ``OUT/sampled.pt`` and
    ``OUT/text.pt``, reused while their options match (a cache with the states of ``layers``
    serves a run that needs none)."""
    responses = _cached(out / "data.pt", {
        "format": DATA_FORMAT, "target": args.target, "num_prompts": args.num_prompts,
        "second_turns": args.second_turns, "max_new_tokens": args.max_new_tokens,
        "max_prompt_tokens": args.max_prompt_tokens}, layers,
        lambda: collect_responses(model, tokenizer, args, layers)) if args.num_prompts >= 0 else []
    sampled = _cached_sets(out / "sampled.pt", {
        "format": DATA_FORMAT, "target": args.target, "num_prompts": args.num_prompts,
        "max_new_tokens": args.max_new_tokens, "max_prompt_tokens": args.max_prompt_tokens,
        "temperature": args.sampling_temperature, "seed": args.seed}, layers, args.sampled_responses,
        lambda first, count: collect_sampled(model, tokenizer, args, layers, first=first, count=count))
    text = _cached(out / "text.pt", {
        "format": DATA_FORMAT, "target": args.target, "text_source": args.text_source,
        "text_tokens": args.text_tokens, "max_text_tokens": args.max_text_tokens, "seed": args.seed}, layers,
        lambda: collect_text(model, tokenizer, args, layers)) if args.text_tokens > 0 else []
    return responses, sampled, text


def _cached(path: Path, key: dict[str, Any], layers: tuple[int, ...] | None, make: Any) -> list[Sample]:
    stored = _read_samples(path, layers)
    if stored is not None and stored[0] == key:
        log(f"reusing collected data from {path}")
        return stored[1]
    samples = make()
    _write_samples(path, key, layers, samples)
    return samples


def _cached_sets(
    path: Path, key: dict[str, Any], layers: tuple[int, ...] | None, sets: int, make: Any
) -> list[Sample]:
    """The first ``sets`` equal-sized sets of samples (set k depends only on k and ``key``), read from ``path`` as far
    as it has them; ``make(first, count)`` collects the missing ones and the cache grows, so asking for more sampled
    responses later does not collect the earlier ones again."""
    if sets <= 0:
        return []
    have: list[Sample] = []
    have_sets = 0
    stored = _read_samples(path, layers)
    if stored is not None:
        stored_key, samples = stored
        if {k: v for k, v in stored_key.items() if k != "sampled_responses"} == key:
            have, have_sets = samples, int(stored_key.get("sampled_responses", 0))
    if have_sets >= sets:
        log(f"reusing {sets} of {have_sets} sampled set(s) from {path}")
        return have[: sets * (len(have) // have_sets)]
    if have_sets:
        log(f"reusing {have_sets} sampled set(s) from {path}; collecting {sets - have_sets} more")
    samples = have + make(have_sets, sets - have_sets)
    _write_samples(path, {**key, "sampled_responses": sets}, layers, samples)
    return samples


def _read_samples(path: Path, layers: tuple[int, ...] | None) -> tuple[dict[str, Any], list[Sample]] | None:
    """(the options they were collected with, the samples) cached at ``path``, or None when there is no cache or it
    lacks the states of ``layers`` (a cache with them serves a run that needs none)."""
    if not path.exists():
        return None
    stored = torch.load(path, weights_only=True)
    kept = stored.get("layers")
    if layers is not None and (kept is None or tuple(kept) != tuple(layers)):
        return None
    samples = [Sample(tokens=t, hidden=h, prompt_length=int(n), aux=a if layers is not None else None)
               for t, h, n, a in stored["samples"]]
    return stored.get("key") or {}, samples


def _write_samples(path: Path, key: dict[str, Any], layers: tuple[int, ...] | None, samples: list[Sample]) -> None:
    torch.save({"key": key, "layers": None if layers is None else list(layers),
                "samples": [(s.tokens, s.hidden, s.prompt_length, s.aux) for s in samples]}, path)


def collect_text(model: Any, tokenizer: Any, args: argparse.Namespace, layers: tuple[int, ...] | None) -> list[Sample]:
    """Teacher forcing over ``--text-tokens`` tokens of conversations from ``--text-source`` (one forward pass per
    sequence); conversations that share a 10-word shingle with a held-out Spec-Bench prompt are dropped."""
    conversations = load_text_source(args.text_source)
    exclude: set[tuple[str, ...]] = set()
    for q in split(load_questions(args.questions), held_out=True):
        for turn in q.turns:
            exclude |= shingles(turn)
    sequences, prompt_lengths, dropped = text_sequences(
        tokenizer, conversations, max_tokens=args.max_text_tokens, budget=args.text_tokens, seed=args.seed,
        exclude=exclude)
    total = sum(map(len, sequences))
    t = time.perf_counter()
    log(f"teacher-forcing {len(sequences)} {args.text_source} sequences ({total} tokens; {dropped} conversations "
        f"dropped for overlapping held-out prompts)")
    with _bar(total, "text tokens", not args.quiet) as bar:
        samples = teacher_force(model, sequences, prompt_lengths, layers=layers, progress=bar)
    seconds = time.perf_counter() - t
    log(f"teacher-forced {total} tokens in {seconds:.0f}s ({total / max(seconds, 1e-9) * 60:.0f} tokens per minute)")
    return samples


def collect_responses(
    model: Any, tokenizer: Any, args: argparse.Namespace, layers: tuple[int, ...] | None
) -> list[Sample]:
    """The target's greedy responses to the training split's prompts (and MT-bench second turns), with its states
    recorded while generating them."""
    questions, first_turns, prompts, text_budget = _training_prompts(tokenizer, args)
    eos_ids, pad = _stop_and_pad(model, tokenizer)
    t = time.perf_counter()
    log(f"collecting greedy responses to {len(prompts)} prompts ({sum(map(len, prompts))} prompt tokens, up to "
        f"{args.max_new_tokens} new tokens each, batches of {args.collect_batch_size})")
    with _bar(len(prompts), "responses", not args.quiet) as bar:
        responses, samples = collect(
            model, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.collect_batch_size,
            eos_token_ids=eos_ids, pad_token_id=pad, progress=bar, layers=layers,
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
                eos_token_ids=eos_ids, pad_token_id=pad, progress=bar, layers=layers,
            )
        for i, sample in zip(two, second):
            samples[i] = sample
    log(f"collected {sum(len(s.tokens) for s in samples)} tokens ({sum(len(r) for r in responses)} first-turn "
        f"response tokens" + (f", {len(two)} second turns" if two else "") + f") in {time.perf_counter() - t:.0f}s")
    return samples


def split_training(
    responses: list[Sample], sampled: list[Sample], text: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, held out): ``fraction`` of the greedy responses (what generation asks of the head; of the text when
    there are none) is held out for the per-epoch metrics, and sampled responses to a held-out sequence's prompt are
    dropped, so no held-out prompt is trained on."""
    pool = responses or text
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(pool) * fraction))
    val = [pool[i] for i in order[:n_val]]
    held_out = [s.tokens.tolist() for s in val]
    kept = [s for s in sampled
            if not any(v[: s.prompt_length] == s.tokens[: s.prompt_length].tolist() for v in held_out)]
    return [pool[i] for i in order[n_val:]] + kept + (text if responses else []), val


def collect_sampled(
    model: Any, tokenizer: Any, args: argparse.Namespace, layers: tuple[int, ...] | None, first: int, count: int
) -> list[Sample]:
    """Sets ``first`` .. ``first + count - 1`` of ``--sampled-responses`` (one response per training prompt, first
    turns, each set sampled at ``--sampling-temperature`` and seeded from ``--seed`` and its index alone), with their
    states: more of the target's own text on the same tasks, at decode speed."""
    _, _, prompts, _ = _training_prompts(tokenizer, args)
    eos_ids, pad = _stop_and_pad(model, tokenizer)
    t = time.perf_counter()
    samples: list[Sample] = []
    last = first + count
    for k in range(first, last):
        torch.manual_seed(args.seed + 1 + k)
        with _bar(len(prompts), f"sampled {k + 1}/{last}", not args.quiet) as bar:
            _, got = collect(
                model, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.collect_batch_size,
                eos_token_ids=eos_ids, pad_token_id=pad, progress=bar, layers=layers,
                temperature=args.sampling_temperature,
            )
        samples += got
    generated = sum(len(s.tokens) - s.prompt_length for s in samples)
    log(f"collected {len(samples)} sampled responses (T={args.sampling_temperature}; {generated} response tokens) in "
        f"{time.perf_counter() - t:.0f}s")
    return samples


def _training_prompts(tokenizer: Any, args: argparse.Namespace) -> tuple[list[Any], list[str], list[list[int]], int]:
    """The training split's questions (round-robin, ``--num-prompts``), their first turns cut to fit, those as chat
    prompts, and the text budget that cut them."""
    pool = split(load_questions(args.questions), held_out=False)
    questions = round_robin(pool, args.num_prompts if args.num_prompts > 0 else len(pool))
    text_budget = max_prompt_tokens_for_text(tokenizer, args.max_prompt_tokens)
    first_turns = [fit_text(tokenizer, q.text, text_budget) for q in questions]
    return questions, first_turns, [chat_prompt(tokenizer, text) for text in first_turns], text_budget


def _stop_and_pad(model: Any, tokenizer: Any) -> tuple[set[int], int]:
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    return eos_ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


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
    the head's own predicted features (see :meth:`steps`). Subclasses change the head's inputs (``real_inputs``),
    the soft labels (``target_log_probs``), the drafter and the checkpoint format (train_eagle3.py)."""

    detach_unrolled = True  # unrolled steps read the previous step's prediction without its gradient
    input_field = "hidden"  # the Sample field the head reads at each position (batched under the same name)

    def __init__(
        self, head: EagleHead, target: Any, draft_vocab: torch.Tensor | None, *, lr: float, feature_noise: float,
        unroll: int = 1, feature_weight: float = FEATURE_WEIGHT, token_weight: float = TOKEN_WEIGHT,
        autocast: torch.dtype | None = None,
    ):
        if unroll < 1:
            raise ValueError(f"unroll must be >= 1 (got {unroll})")
        self.head = head.train()
        self.drafter = self.make_drafter(head, target, draft_vocab)
        self.head.train()  # the drafter puts it in eval mode
        self.lr = lr
        self.feature_noise = feature_noise
        self.unroll = unroll
        self.feature_weight = feature_weight
        self.token_weight = token_weight
        self.autocast = autocast  # training steps' products in this dtype (evaluation stays in the weights' dtype)
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))

    def make_drafter(self, head: nn.Module, target: Any, draft_vocab: torch.Tensor | None) -> Any:
        return EagleDrafter(head, target, draft_vocab)

    def real_inputs(self, batch: dict[str, torch.Tensor], noise: float) -> torch.Tensor:
        """The head's input at real positions [b, n, H]: f_j, with Gaussian noise (``noise`` x the feature RMS)."""
        hidden = batch["hidden"]
        if noise > 0:
            rms = hidden.pow(2).mean(dim=-1, keepdim=True).sqrt()
            hidden = hidden + torch.randn_like(hidden) * rms * noise
        return hidden

    def target_log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """The target's next-token log-probabilities over the draft vocabulary [N, V'] from its last-layer features
        [N, H] (the soft labels)."""
        return self.drafter.logits(features).log_softmax(dim=-1)

    def save_checkpoint(self, directory: Path) -> None:
        save_head(self.head, directory, draft_vocab=self.drafter.draft_vocab)

    def batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Right-padded head inputs: hidden f_0..f_{T-2}, tokens x_1..x_{T-1}, targets f_1..f_{T-1}; ``response``
        marks the positions whose draft is a response token (position j drafts x_{j+2}; drafting starts at the
        last prompt token, j = prompt_length - 1)."""
        width = max(len(s.tokens) for s in samples) - 1
        size, input_size = samples[0].hidden.shape[1], getattr(samples[0], self.input_field).shape[1]
        inputs = torch.zeros(len(samples), width, input_size)
        target = torch.zeros(len(samples), width, size)
        tokens = torch.zeros(len(samples), width, dtype=torch.long)
        mask = torch.zeros(len(samples), width, dtype=torch.long)
        response = torch.zeros(len(samples), width, dtype=torch.bool)
        for row, s in enumerate(samples):
            n = len(s.tokens) - 1
            inputs[row, :n] = getattr(s, self.input_field)[:-1].float()
            target[row, :n] = s.hidden[1:].float()
            tokens[row, :n] = s.tokens[1:]
            mask[row, :n] = 1
            response[row, max(s.prompt_length - 1, 0) : n] = True
        return {self.input_field: inputs, "target": target, "tokens": tokens, "mask": mask, "response": response}

    def steps(self, batch: dict[str, torch.Tensor], noise: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Predicted features [b, n, H] and the positions where they count [b, n], for each draft step.

        Step 1 is teacher forcing: position p reads the real f_p. Step s >= 2 is how the head drafts its s-th
        token: position p reads the feature that step s-1 predicted at p-1 (detached), and attends to the real
        positions 0..p-s+1 and to the earlier steps' positions p-s+2..p-1, as the head's cache holds them while
        drafting; every step predicts the same f_{p+1}. Positions p < s-1 have no real context and do not count.
        """
        mask = batch["mask"]
        hidden = self.real_inputs(batch, noise)
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
            previous = predicted[:, :-1].detach() if self.detach_unrolled else predicted[:, :-1]
            fed = torch.cat([predicted.new_zeros(b, 1, predicted.shape[-1]), previous], dim=1)
            blocks = [(key <= query - (s - 1)).unsqueeze(0) & valid.view(b, 1, n)]  # the real positions
            blocks += [(key == query - (s - t)).unsqueeze(0).expand(b, n, n) for t in range(2, s + 1)]
            full_mask = torch.cat(blocks, dim=-1).unsqueeze(1)  # [b, 1, n, s*n]; the diagonal keeps rows finite
            predicted = self.head(embeds, fed, positions, cache=cache, full_mask=full_mask)
            out.append((predicted, valid & (torch.arange(n) >= s - 1).unsqueeze(0)))
        return out

    def _outputs(self, batch: dict[str, torch.Tensor], noise: float) -> list[dict[str, torch.Tensor]]:
        """Per draft step: feature loss, token loss, top-1 agreement [N] and response flags [N] of its positions."""
        target, valid = batch["target"], batch["mask"].bool()
        with torch.no_grad(), torch.autocast("cpu", enabled=False):  # soft labels at the target's precision
            target_logp = self.target_log_probs(target[valid])  # [N, V'], shared by all steps
        out = []
        for predicted, counts in self.steps(batch, noise):
            if not bool(counts.any()):  # sequences too short for this unrolled step
                continue
            keep = counts[valid]  # which of the N valid positions count for this step
            pred, want, want_logp = predicted[counts], target[counts], target_logp[keep]
            logp = self.drafter.logits(pred).float().log_softmax(dim=-1)
            pred = pred.float()
            out.append({
                "feature": nn.functional.smooth_l1_loss(pred, want, reduction="none").mean(dim=-1)
                if self.feature_weight > 0 else logp.new_zeros(logp.shape[0]),
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
        checkpoint_dir: Path | None = None, progress: bool = True, seed: int = 0, checkpoint_tokens: int = 0,
    ) -> list[dict[str, float]]:
        """Train until the time budget or ``max_epochs`` runs out. Returns the validation metrics after every epoch
        (and every ``checkpoint_tokens`` training tokens, when > 0), each with ``tokens``: training tokens seen.

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
        step = seen = 0
        next_mark = checkpoint_tokens if checkpoint_tokens > 0 else None
        lr = self.lr

        def record(epoch: int, name: str) -> None:
            metrics = {"epoch": epoch, "step": step, "tokens": seen, "lr": lr, **self.evaluate(val, batch_tokens)}
            history.append({k: round(v, 6 if k == "lr" else 4) if isinstance(v, float) else v
                            for k, v in metrics.items()})
            unrolled = "".join(
                f", step-{s} top-1 {metrics.get(f'top1_step{s}', 0.0):.3f}" for s in range(2, self.unroll + 1)
            )
            log(f"{name}: {seen} tokens, held-out loss {metrics['loss']:.4f}, feature {metrics['feature']:.4f}, "
                f"token {metrics['token']:.3f}, top-1 {metrics['top1']:.3f} (responses "
                f"{metrics['top1_response']:.3f}{unrolled}), lr {lr:.1e}")
            if checkpoint_dir is not None:
                self.save_checkpoint(checkpoint_dir / name.replace(" ", "-"))

        for epoch in range(max_epochs):
            bar = _bar(steps_per_epoch, f"epoch {epoch + 1}", progress)
            for group in self.batches(train, batch_tokens, rng):
                done = max((time.perf_counter() - started) / budget, step / max_steps)
                lr = self.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                precision = torch.autocast("cpu", dtype=self.autocast) if self.autocast else contextlib.nullcontext()
                with precision:
                    parts = self.losses(self.batch(group), noise=self.feature_noise)
                self.optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                nn.utils.clip_grad_norm_(self.head.parameters(), 1.0)
                self.optimizer.step()
                step += 1
                seen += sum(len(s.tokens) - 1 for s in group)
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss'].item():.3f}", top1=f"{parts['top1'].item():.2f}",
                                lr=f"{lr:.1e}")
                if next_mark is not None and seen >= next_mark:
                    record(epoch + 1, f"tokens {seen:09d}")
                    while next_mark <= seen:
                        next_mark += checkpoint_tokens
                if time.perf_counter() - started > budget:
                    break
            bar.close()
            record(epoch + 1, f"epoch {epoch + 1:03d}")
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

    from . import _DRAFTERS, Eagle3Options, EagleOptions, load_drafter, load_eagle3_drafter
    from .proposer import Calibration, EagleProposer

    _DRAFTERS.pop(model, None)  # the head on disk changed
    eagle3 = getattr(args, "format", None) == "speculators"
    drafter = load_eagle3_drafter(model, head_dir) if eagle3 else load_drafter(model, head_dir)
    options_class = Eagle3Options if eagle3 else EagleOptions
    questions = round_robin(split(load_questions(args.questions), held_out=True), args.validate_prompts)
    config = specdecode.SpeculativeConfig(method="eagle3" if eagle3 else "eagle", num_speculative_tokens=5)
    total = None
    tally = [[0.0, 0.0, 0] for _ in range(Calibration.POSITIONS)]
    for q in questions:
        ids = torch.tensor([chat_prompt(tokenizer, q.text, args.max_prompt_tokens)])
        proposer = EagleProposer(drafter, options_class(adaptive=False, tree_width=1))  # the head alone: a chain
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
