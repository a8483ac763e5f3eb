"""Speculation with transformers' generation settings, through ``model.generate(custom_generate=...)``.

Three measurements, each against plain ``model.generate`` with the same settings, in one run (greedy, fp32,
SmolLM2-135M-Instruct, batch 1, the two interleaved per prompt, medians over prompts):

1. ``repetition_penalty=1.1`` on Spec-Bench (``--per-category`` prompts from each of its six categories): ngram via
   ``custom_generate`` vs plain generate; outputs identical; the share of wall time the logits processors take at
   the verify positions.
2. JSON extraction: ten passages of our own, each with a schema (benchmarks/data/json_extraction.jsonl): ngram +
   ``json_schema`` vs plain generate with xgrammar's transformers processor; outputs identical and valid JSON
   (``--json-max-new-tokens``, 256 by default, so the objects can close).
3. The cost of the entry point: ``model.generate(custom_generate=specdecode.custom_generate)`` vs
   ``specdecode.generate`` on the same prompts (both speculative).

    .venv/bin/python benchmarks/bench_settings.py --per-category 5 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import specdecode
import torch
from spec_bench import CATEGORIES
from spec_bench import load as spec_bench
from specdecode.grammar import compile_constraint, model_vocab_size
from specdecode.models import load_model

JSON_TASKS = Path(__file__).resolve().parent / "data" / "json_extraction.jsonl"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-category", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--json-max-new-tokens", type=int, default=256,
                        help="new tokens for the JSON tasks (enough for the objects to close)")
    parser.add_argument("--entry-repeats", type=int, default=5,
                        help="timed runs of each entry point per prompt, alternating between the two")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: penalty, json, entry")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2-135m")
    config = {"method": "ngram"}
    n = args.max_new_tokens

    def encode(text: str) -> dict:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)

    with torch.inference_mode():
        warm = encode("Hello")
        model.generate(**warm, max_new_tokens=4, do_sample=False)
        model.generate(**warm, custom_generate=specdecode.custom_generate, max_new_tokens=4, do_sample=False)
    failures = 0

    if "penalty" not in skip:
        penalty = {"do_sample": False, "max_new_tokens": n, "repetition_penalty": args.repetition_penalty}
        rows = []
        for i, (category, text) in enumerate(spec_bench(args.per_category)):
            inputs = encode(text)
            with torch.inference_mode():
                plain, t_plain = timed(model.generate, **inputs, **penalty)
                out, t_spec = timed(model.generate, **inputs, custom_generate=specdecode.custom_generate,
                                    speculative_config=config, return_dict_in_generate=True, **penalty)
            stats = out.speculative_stats
            rows.append({"category": category, "speedup": t_plain / t_spec, "identical": torch.equal(out.sequences, plain),
                         "processing": stats.time_processing / stats.time_total, "mal": stats.mean_acceptance_length})
            r = rows[-1]
            print(f"[{i + 1}] {category:14s} {r['speedup']:.2f}x  MAL {r['mal']:.2f}  processors "
                  f"{r['processing']:.1%}  identical={r['identical']}", file=sys.stderr, flush=True)
        failures += sum(not r["identical"] for r in rows)
        print(f"\n1. repetition_penalty={args.repetition_penalty}: ngram via custom_generate vs plain model.generate "
              f"(greedy, {n} new tokens, median over prompts)")
        print(f"{'category':15s} {'n':>3s} {'speedup':>8s} {'MAL':>5s} {'processors':>10s} {'identical':>9s}")
        for category, rs in [(c, [r for r in rows if r["category"] == c]) for c in CATEGORIES] + [("all", rows)]:
            print(f"{category:15s} {len(rs):3d} {statistics.median(r['speedup'] for r in rs):7.2f}x "
                  f"{statistics.mean(r['mal'] for r in rs):5.2f} {statistics.mean(r['processing'] for r in rs):9.1%} "
                  f"{sum(r['identical'] for r in rs):4d}/{len(rs)}")

    if "json" not in skip:
        tasks = [json.loads(line) for line in JSON_TASKS.read_text().splitlines() if line.strip()]
        rows = []
        for i, task in enumerate(tasks):
            inputs = encode(f"{task['passage']}\n\n{task['instruction']} Answer with a JSON object only.")
            constraint = compile_constraint(tokenizer, vocab_size=model_vocab_size(model), json_schema=task["schema"])
            settings = {"do_sample": False, "max_new_tokens": args.json_max_new_tokens}
            with torch.inference_mode():
                plain, t_plain = timed(model.generate, **inputs, logits_processor=[constraint.hf_logits_processor()],
                                       **settings)
                spec, t_spec = timed(specdecode.generate, model, inputs, config, tokenizer=tokenizer,
                                     json_schema=task["schema"], **settings)
            text = tokenizer.decode(spec.sequences[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            try:
                json.loads(text)
                valid = True
            except json.JSONDecodeError:
                valid = False  # cut by max_new_tokens before the object closed
            rows.append({"speedup": t_plain / t_spec, "identical": torch.equal(spec.sequences, plain), "valid": valid,
                         "mal": spec.stats.mean_acceptance_length, "tokens": spec.stats.new_tokens})
            r = rows[-1]
            print(f"[json {i + 1}] {r['speedup']:.2f}x  MAL {r['mal']:.2f}  {r['tokens']} tokens  valid={valid}  "
                  f"identical={r['identical']}", file=sys.stderr, flush=True)
        failures += sum(not r["identical"] for r in rows)
        print(f"\n2. JSON extraction ({len(rows)} passages, json_schema): ngram vs plain generate with xgrammar's "
              f"processor, median speedup {statistics.median(r['speedup'] for r in rows):.2f}x "
              f"(min {min(r['speedup'] for r in rows):.2f}x), MAL {statistics.mean(r['mal'] for r in rows):.2f}, "
              f"identical {sum(r['identical'] for r in rows)}/{len(rows)}, valid JSON {sum(r['valid'] for r in rows)}/{len(rows)}")

    if "entry" not in skip:
        ratios = []
        settings = {"do_sample": False, "max_new_tokens": n}
        for _, text in spec_bench(1):
            inputs = encode(text)
            direct, custom = [], []
            with torch.inference_mode():
                for _ in range(args.entry_repeats):  # alternating, so drift in the machine's speed hits both
                    direct.append(timed(specdecode.generate, model, inputs, config, **settings)[1])
                    custom.append(timed(model.generate, **inputs, custom_generate=specdecode.custom_generate,
                                        speculative_config=config, **settings)[1])
            ratios.append(statistics.median(custom) / statistics.median(direct))
        print(f"\n3. model.generate(custom_generate=...) / specdecode.generate, same prompts (median of "
              f"{args.entry_repeats} each, alternating): "
              f"median {statistics.median(ratios):.3f} over {len(ratios)} prompts")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
