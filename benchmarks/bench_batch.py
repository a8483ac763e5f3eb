"""Batched throughput: ngram speculation against batched plain `generate`, per batch size and speculation schedule.

    .venv/bin/python benchmarks/bench_batch.py                                   # short run: batch sizes 1 and 4
    .venv/bin/python benchmarks/bench_batch.py --batch-sizes 1,4,8,16 --max-new-tokens 128

SmolLM2-135M-Instruct, fp32, greedy, Spec-Bench summarization prompts (chat template, left padding). For every batch
size B the same first B prompts go through transformers' batched `model.generate` (pad_token_id set) and through
`specdecode.generate` with ngram under each speculation schedule (``auto``, the default, is ``constant`` for one
sequence and ``cost_model`` for several). Throughput is total generated
tokens (up to each sequence's eos) over wall time, prefill included. The table also gives the mean acceptance
length, the mean K asked per step, and how many rows equal each prompt's plain greedy output generated alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import specdecode
import torch
from specdecode.batching import left_pad
from specdecode.models import load_model

SPEC_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_question.jsonl"


def load_prompts(path: Path, category: str, count: int) -> list[str]:
    prompts = []
    with open(path) as fh:
        for line in fh:
            item = json.loads(line)
            if item["category"] == category:
                prompts.append(item["turns"][0])
            if len(prompts) == count:
                break
    return prompts


def generated_tokens(sequences: torch.Tensor, prompt_width: int, eos: int, max_new: int) -> list[list[int]]:
    """Each row's new tokens up to and including its first eos (what a user gets)."""
    rows = []
    for row in sequences[:, prompt_width:].tolist():
        row = row[:max_new]
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=Path, default=SPEC_BENCH)
    parser.add_argument("--category", default="summarization")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--k", type=int, default=5, help="num_speculative_tokens (the cap for adaptive schedules)"
    )
    parser.add_argument("--schedules", default="auto,constant,heuristic,cost_model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    texts = load_prompts(args.prompts, args.category, max(sizes))
    encoded = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"][0].tolist()
        for t in texts
    ]
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    n = args.max_new_tokens
    schedules = args.schedules.split(",")

    with torch.inference_mode():
        # Reference: every prompt generated alone (also warms up both paths).
        alone = []
        for row in encoded:
            ids = torch.tensor([row])
            alone.append(
                generated_tokens(model.generate(ids, do_sample=False, max_new_tokens=n), len(row), eos, n)[0]
            )
        specdecode.generate(model, torch.tensor([encoded[0]]), {"method": "ngram"}, max_new_tokens=4)

        results = []
        for size in sizes:
            ids, mask = left_pad(encoded[:size], pad)
            start = time.perf_counter()
            out = model.generate(
                ids, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=pad
            )
            seconds = time.perf_counter() - start
            rows = generated_tokens(out, ids.shape[1], eos, n)
            results.append(_row(size, "plain generate", rows, seconds, alone, None))
            _print_progress(results[-1])
            for schedule in schedules:
                config = specdecode.SpeculativeConfig(
                    method="ngram", num_speculative_tokens=args.k, speculation_schedule=schedule
                )
                start = time.perf_counter()
                out = specdecode.generate(
                    model, ids, config, attention_mask=mask, max_new_tokens=n, pad_token_id=pad
                )
                seconds = time.perf_counter() - start
                rows = generated_tokens(out.sequences, ids.shape[1], eos, n)
                label = {"constant": f"ngram K={args.k}", "auto": f"ngram auto (default, cap {args.k})"}.get(
                    schedule, f"ngram {schedule} (cap {args.k})"
                )
                results.append(_row(size, label, rows, seconds, alone, out.stats))
                _print_progress(results[-1])

    print_table(results, n)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def _row(size, label, rows, seconds, alone, stats) -> dict:
    tokens = sum(len(r) for r in rows)
    row = {
        "batch_size": size,
        "method": label,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "identical_to_alone": sum(r == a for r, a in zip(rows, alone)),
    }
    if stats is not None:
        budgets = stats.k_budget_per_step
        row.update(
            mean_acceptance_length=stats.mean_acceptance_length,
            acceptance_rate=stats.acceptance_rate,
            mean_k=sum(budgets) / len(budgets) if budgets else 0.0,
            steps=stats.steps,
            outside_forward=1 - stats.time_target / stats.time_total,
        )
    return row


def _print_progress(r: dict) -> None:
    print(
        f"B={r['batch_size']:2d} {r['method']:28s} {r['tokens_per_second']:6.1f} tok/s",
        file=sys.stderr,
        flush=True,
    )


def print_table(results: list[dict], max_new: int) -> None:
    print(f"\nTotal tokens/s, greedy, max_new_tokens={max_new} (prefill included)\n")
    print("| B | method | tokens | s | tok/s | vs plain | MAL | mean K | identical to alone |")
    print("|---|---|---|---|---|---|---|---|---|")
    plain = {}
    for r in results:
        if r["method"] == "plain generate":
            plain[r["batch_size"]] = r["tokens_per_second"]
        ratio = r["tokens_per_second"] / plain[r["batch_size"]]
        mal = f"{r['mean_acceptance_length']:.2f}" if "mean_acceptance_length" in r else "-"
        mean_k = f"{r['mean_k']:.1f}" if "mean_k" in r else "-"
        print(
            f"| {r['batch_size']} | {r['method']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_second']:.1f} "
            f"| {ratio:.2f}x | {mal} | {mean_k} | {r['identical_to_alone']}/{r['batch_size']} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
