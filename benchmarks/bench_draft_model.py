"""Benchmark of the draft_model plugin on the embedded real models, greedy, batch size 1.

Settings:
* SmolLM2-135M target, ``layer_skip`` drafts with the first N of its 30 layers (several N).
* Gemma 3 270M target, SmolLM2-135M draft in cross-tokenizer mode (their tokenizers differ).

For each: acceptance rate, mean acceptance length, the measured cost ratio c (one draft forward / one target
forward, both one token over the same context), the measured speedup against plain ``model.generate`` (median
over the prompts) and Leviathan's prediction (1 - a^(K+1)) / ((1 - a)(Kc + 1)), with a, the per-token
acceptance probability, solved from the measured mean acceptance length. A second prediction also charges the
measured cost r of verifying K+1 tokens (Leviathan assumes r = 1; on CPUs it is not). Every speculative output
is checked against plain greedy output.

    .venv/bin/python benchmarks/bench_draft_model.py                  # small default run (a few minutes)
    .venv/bin/python benchmarks/bench_draft_model.py --prompts 6 --max-new-tokens 96 --layers 6,10,15,20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import specdecode
import torch
from specdecode.models import load_model

DATA = Path("/work/shared/data/spec_bench_question.jsonl")
DEFAULT_CATEGORIES = ("writing", "qa", "math_reasoning", "translation", "summarization", "rag")


def load_questions(path: Path, count: int, categories: tuple[str, ...]) -> list[str]:
    """First turns, taken round-robin over the categories so that a short run still sees several kinds."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_category = {c: [r["turns"][0] for r in rows if r["category"] == c] for c in categories}
    questions: list[str] = []
    for i in range(count):
        pool = by_category[categories[i % len(categories)]]
        if pool:
            questions.append(pool[i // len(categories) % len(pool)])
    return questions


def encode(tokenizer, question: str) -> torch.Tensor:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    return tokenizer(
        f"Question: {question}\nAnswer:", return_tensors="pt"
    ).input_ids  # base model: plain text


def forward_seconds(model, prompt: torch.Tensor, num_tokens: int, repeats: int = 5) -> float:
    """Median seconds of one forward over ``num_tokens`` new tokens on top of a cache holding ``prompt``."""
    from specdecode_draft_model.draft_cache import cache_kwarg_name
    from transformers import DynamicCache

    kwarg = cache_kwarg_name(model)
    cache = DynamicCache(config=model.config)
    new = prompt[:, -num_tokens:]
    times = []
    with torch.inference_mode():
        model(input_ids=prompt, use_cache=True, logits_to_keep=1, **{kwarg: cache})
        for _ in range(repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            model(input_ids=new, use_cache=True, **{kwarg: cache})
            times.append(time.perf_counter() - start)
            cache.crop(-num_tokens)
    return statistics.median(times[1:])


def solve_alpha(mean_length: float, k: int) -> float:
    """a such that (1 - a^(K+1)) / (1 - a) = mean acceptance length (bisection; the left side grows with
    a)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(mid**i for i in range(k + 1)) < mean_length:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def run_setting(name, target, tokenizer, prompts, config, plain, args, draft_for_cost):
    proposer = specdecode.build_proposer(target, config)
    speedups, total = [], specdecode.GenerationStats()
    specdecode.generate(
        target, prompts[0], config, max_new_tokens=4, tokenizer=tokenizer, proposer=proposer
    )  # warm-up
    for prompt, (plain_ids, plain_seconds) in zip(prompts, plain):
        start = time.perf_counter()
        out = specdecode.generate(
            target, prompt, config, max_new_tokens=args.max_new_tokens, tokenizer=tokenizer, proposer=proposer
        )
        seconds = time.perf_counter() - start
        if not torch.equal(out.sequences, plain_ids):
            raise SystemExit(f"{name}: speculative output differs from plain greedy output (a bug)")
        speedups.append(plain_seconds / seconds)
        print(
            f"  {name}: {plain_seconds:.1f}s plain, {seconds:.1f}s speculative", file=sys.stderr, flush=True
        )
        total = total.merge(out.stats)
    k = config.num_speculative_tokens
    context = prompts[0]
    target_one = forward_seconds(target, context, 1)
    c = (
        forward_seconds(draft_for_cost, draft_context(draft_for_cost, context, tokenizer, config), 1)
        / target_one
    )
    r = forward_seconds(target, context, k + 1) / target_one
    alpha = solve_alpha(total.mean_acceptance_length, k)
    tokens_per_step = (1 - alpha ** (k + 1)) / (1 - alpha) if alpha < 1 else k + 1.0
    return {
        "setting": name,
        "K": k,
        "acceptance": total.acceptance_rate,
        "mean_acc_len": total.mean_acceptance_length,
        "alpha": alpha,
        "c": c,
        "r_verify": r,
        "speedup": statistics.median(speedups),
        "leviathan": tokens_per_step / (k * c + 1),
        "with_verify_cost": tokens_per_step / (k * c + r),
        "draft_share": proposer.draft_seconds / max(total.time_total, 1e-9),
    }


def draft_context(draft, prompt, target_tokenizer, config) -> torch.Tensor:
    """The prompt as the draft reads it (re-tokenized in cross-tokenizer mode)."""
    draft_tokenizer = config.options.draft_tokenizer if config.method == "draft_model" else None
    if draft_tokenizer is None:
        return prompt
    from specdecode_draft_model.loading import resolve_tokenizer

    text = target_tokenizer.decode(prompt[0], skip_special_tokens=True)
    return resolve_tokenizer(draft_tokenizer)(text, return_tensors="pt", add_special_tokens=False).input_ids


def plain_runs(model, prompts, max_new_tokens):
    model.generate(prompts[0], max_new_tokens=4, do_sample=False)  # warm-up
    runs = []
    for prompt in prompts:
        start = time.perf_counter()
        ids = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)
        runs.append((ids, time.perf_counter() - start))
        print(f"  plain: {prompt.shape[1]} prompt tokens, {runs[-1][1]:.1f}s", file=sys.stderr, flush=True)
    return runs


def print_table(rows: list[dict]) -> None:
    header = (
        "| setting | K | acceptance | mean acc. len | alpha | c | r (K+1 verify) | speedup | Leviathan | "
        "+verify cost |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['K']} | {r['acceptance']:.1%} | {r['mean_acc_len']:.2f} | "
            f"{r['alpha']:.2f} | {r['c']:.2f} | {r['r_verify']:.2f} | {r['speedup']:.2f}x | "
            f"{r['leviathan']:.2f}x | {r['with_verify_cost']:.2f}x |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=3, help="Spec-Bench questions (default 3)")
    parser.add_argument("--categories", default=",".join(DEFAULT_CATEGORIES[:3]))
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("-k", "--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--layers", default="8,15", help="layer_skip N values for SmolLM2-135M (30 layers)")
    parser.add_argument("--skip-layer-skip", action="store_true")
    parser.add_argument(
        "--skip-cross", action="store_true", help="skip Gemma 3 270M + SmolLM2 cross-tokenizer"
    )
    parser.add_argument(
        "--p-min", type=float, default=None, help="draft_p_min for every setting (default: off)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    questions = load_questions(DATA, args.prompts, tuple(args.categories.split(",")))
    k = args.num_speculative_tokens
    rows = []

    smol, smol_tok = load_model("smollm2-135m")
    if not args.skip_layer_skip:
        prompts = [encode(smol_tok, q) for q in questions]
        plain = plain_runs(smol, prompts, args.max_new_tokens)
        for n in [int(x) for x in args.layers.split(",")]:
            config = specdecode.SpeculativeConfig(
                method="layer_skip",
                num_speculative_tokens=k,
                method_options={"num_layers": n, "draft_p_min": args.p_min},
            )
            from specdecode_draft_model.layer_skip import truncated_view

            rows.append(
                run_setting(
                    f"SmolLM2-135M layer_skip N={n}",
                    smol,
                    smol_tok,
                    prompts,
                    config,
                    plain,
                    args,
                    truncated_view(smol, n),
                )
            )
            print(f"done: layer_skip N={n}", file=sys.stderr, flush=True)

    if not args.skip_cross:
        gemma, gemma_tok = load_model("gemma3-270m")
        prompts = [encode(gemma_tok, q) for q in questions]
        plain = plain_runs(gemma, prompts, args.max_new_tokens)
        config = specdecode.SpeculativeConfig(
            method="draft_model",
            draft_model=smol,
            num_speculative_tokens=k,
            method_options={"draft_tokenizer": smol_tok, "draft_p_min": args.p_min},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the size warning is expected: 135M vs 270M
            rows.append(
                run_setting(
                    "Gemma3-270M <- SmolLM2-135M (cross-tokenizer)",
                    gemma,
                    gemma_tok,
                    prompts,
                    config,
                    plain,
                    args,
                    smol,
                )
            )
        print("done: cross-tokenizer", file=sys.stderr, flush=True)

    print(
        f"\n{len(questions)} prompts ({args.categories}), max_new_tokens={args.max_new_tokens}, K={k}, "
        f"greedy, draft_p_min={args.p_min}, torch threads={torch.get_num_threads()}; every output equal to "
        "plain greedy generate.\n"
    )
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
