"""Several speculative configs on the same held-out Spec-Bench prompts, interleaved per prompt, against plain
``generate`` on the same few-rows kernel ("plain+k": speculation's own share).

    .venv/bin/python benchmarks/compare_methods.py '{"method": "eagle3"}' \\
        '{"method": "eagle3", "method_options": {"prompt_lookup": false}}' '{"method": "ngram"}' '{"method": "eagle"}'
    .venv/bin/python benchmarks/compare_methods.py --skip 5 --per-category 3 '{"method": "eagle3"}'   # other prompts

Each argument is a SpeculativeConfig as JSON (K defaults to ``--k``). Prompts: the held-out split (question_id % 4
== 0, never used to train the shipped heads; bench_eagle.py's selection), ``--skip`` of them first per category,
then ``--per-category``; first turn in the chat template, greedy, batch size 1. Per prompt, plain ``generate`` runs
on the kernel first, then every config, so drifting load hits them alike. Printed per category and config: mean
acceptance length / wall-time ratio over plain+k; every output is compared with plain ``generate``'s.
"""

from __future__ import annotations

import argparse
import json
import sys

import specdecode
import torch
from bench_eagle import CATEGORIES, held_out_prompts, timed
from specdecode.kernels import few_rows_linear
from specdecode.models import load_model


def add_config_arguments(parser: argparse.ArgumentParser, skip: int, per_category: int) -> None:
    """The arguments compare_methods.py and replay.py share: configs, model, prompts, K and threads."""
    parser.add_argument("configs", nargs="+", help="SpeculativeConfig as JSON, one per config")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--per-category", type=int, default=per_category)
    parser.add_argument("--skip", type=int, default=skip, help="held-out prompts per category to skip first")
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=5, help="num_speculative_tokens where a config does not set it")
    parser.add_argument("--threads", type=int, default=None)


def configs_and_categories(args: argparse.Namespace, tool: str):
    """(SpeculativeConfigs, categories) from the arguments, or None after saying on stderr what is wrong."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        configs = [specdecode.SpeculativeConfig.from_dict({"num_speculative_tokens": args.k, **json.loads(c)})
                   for c in args.configs]
    except (json.JSONDecodeError, specdecode.ConfigError) as exc:
        print(f"{tool}: bad config: {exc}", file=sys.stderr)
        return None
    categories = [c for c in args.categories.split(",") if c]
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        print(f"{tool}: unknown categories {unknown}; allowed: {', '.join(CATEGORIES)}", file=sys.stderr)
        return None
    return configs, categories


def selected_prompts(tokenizer, args: argparse.Namespace, categories: list[str]):
    """The held-out prompts the arguments pick: ``--skip`` per category first, then ``--per-category``."""
    prompts = [p for c in categories
               for p in held_out_prompts(tokenizer, args.skip + args.per_category, [c], None)[args.skip :]]
    print(f"{len(prompts)} held-out prompts (skipping {args.skip} per category), {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, skip=0, per_category=5)
    args = parser.parse_args(argv)
    chosen = configs_and_categories(args, "compare_methods")
    if chosen is None:
        return 2
    configs, categories = chosen
    model, tokenizer = load_model(args.model)
    prompts = selected_prompts(tokenizer, args, categories)

    model.generate(prompts[0][1], max_new_tokens=4, do_sample=False)  # warm-up: lazy initialisation
    for config in configs:
        specdecode.generate(model, prompts[0][1], config, max_new_tokens=4, do_sample=False)
    plain_s = dict.fromkeys(categories, 0.0)
    rows = [{c: {"s": 0.0, "stats": None} for c in categories} for _ in configs]
    mismatches = [0] * len(configs)
    for question, ids in prompts:
        with few_rows_linear(model):
            plain, seconds = timed(lambda ids=ids: model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens, do_sample=False))
        plain_s[question.category] += seconds
        for i, config in enumerate(configs):
            out, seconds = timed(lambda ids=ids, config=config: specdecode.generate(
                model, ids, config, max_new_tokens=args.max_new_tokens, do_sample=False))
            row = rows[i][question.category]
            row["s"] += seconds
            row["stats"] = out.stats if row["stats"] is None else row["stats"].merge(out.stats)
            mismatches[i] += int(not torch.equal(out.sequences, plain))
        print(f"  q{question.question_id} {question.category}", file=sys.stderr)

    print("MAL / speed over plain generate on the kernel\n")
    print("| config | " + " | ".join(categories) + " | all | identical |")
    print("|---" * (len(categories) + 3) + "|")
    for i, spec in enumerate(args.configs):
        total = None
        for row in rows[i].values():
            total = row["stats"] if total is None else total.merge(row["stats"])
        cells = [f"{rows[i][c]['stats'].mean_acceptance_length:.2f} / {plain_s[c] / rows[i][c]['s']:.2f}x"
                 for c in categories]
        seconds = sum(r["s"] for r in rows[i].values())
        print(f"| `{spec}` | " + " | ".join(cells) + f" | {total.mean_acceptance_length:.2f} / "
              f"{sum(plain_s.values()) / seconds:.2f}x | {len(prompts) - mismatches[i]}/{len(prompts)} |")
    return 0 if not any(mismatches) else 1


if __name__ == "__main__":
    raise SystemExit(main())
