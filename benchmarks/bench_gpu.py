"""ngram and eagle against plain ``generate`` on a GPU (scripts/gpu_check.sh runs it).

SmolLM2-135M-Instruct on ``--device`` in ``--dtype``, greedy, batch 1, held-out Spec-Bench prompts (question_id % 4
== 0, ``--per-category`` from each category), ``--max-new-tokens`` tokens. Variants: ngram at K = 3, 5, 7; eagle
chains at K = 3, 5, 7; eagle trees of 8, 24 and 40 nodes at K = 5 (fixed size, back-off off, so the tree sizes are
what is measured). Every variant runs right after plain generate on the same prompt; times are taken after
``torch.cuda.synchronize()``. Prints the median speedup over plain generate and the mean acceptance length, and
how many outputs equal plain generate's (in bf16/fp16 a near-tie may differ: docs/models.md, "Precision").

    python benchmarks/bench_gpu.py --device cuda --dtype bfloat16 --json results/gpu_bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import spec_bench
import specdecode
import torch


def held_out(per_category: int) -> list[str]:
    return [text for _, text in spec_bench.load(per_category, held_out=True)]


def variants() -> dict[str, dict]:
    # The eagle rows measure the head's chains and trees at fixed size (its acceptance and verify cost on the GPU),
    # so without the prompt-lookup branch.
    out = {f"ngram K={k}": {"method": "ngram", "num_speculative_tokens": k} for k in (3, 5, 7)}
    for k in (3, 5, 7):
        out[f"eagle chain K={k}"] = {"method": "eagle", "num_speculative_tokens": k,
                                     "method_options": {"tree_width": 1, "adaptive": False, "prompt_lookup": False}}
    for nodes, width in ((8, 2), (24, 6), (40, 8)):
        out[f"eagle tree {nodes}"] = {"method": "eagle", "num_speculative_tokens": 5,
                                      "method_options": {"tree_width": width, "tree_nodes": nodes, "adaptive": False,
                                                         "prompt_lookup": False}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; skipped", file=sys.stderr)
        return 0
    model, tokenizer = specdecode.load_model("smollm2-135m", dtype=getattr(torch, args.dtype), device=args.device)

    def timed(fn, *a, **k):
        torch.cuda.synchronize() if args.device.startswith("cuda") else None
        start = time.perf_counter()
        result = fn(*a, **k)
        torch.cuda.synchronize() if args.device.startswith("cuda") else None
        return result, time.perf_counter() - start

    settings = {"do_sample": False, "max_new_tokens": args.max_new_tokens}
    prompts = [specdecode.encode_prompt(tokenizer, p).to(args.device) for p in held_out(args.per_category)]
    with torch.inference_mode():
        model.generate(prompts[0], **settings)  # warm-up
    rows: dict[str, list[dict]] = {name: [] for name in variants()}
    for i, ids in enumerate(prompts):
        with torch.inference_mode():
            plain, t_plain = timed(model.generate, ids, **settings)
        for name, config in variants().items():
            out, t = timed(specdecode.generate, model, ids, config, **settings)
            rows[name].append({"speedup": t_plain / t, "mal": out.stats.mean_acceptance_length,
                               "identical": bool(torch.equal(out.sequences, plain))})
        print(f"[{i + 1}/{len(prompts)}] done", file=sys.stderr, flush=True)
    print(f"SmolLM2-135M-Instruct on {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
          f"{args.dtype}, greedy, {len(prompts)} held-out prompts, {args.max_new_tokens} new tokens")
    print(f"{'variant':18s} {'speedup (median)':>16s} {'MAL':>5s} {'identical':>9s}")
    for name, rs in rows.items():
        print(f"{name:18s} {statistics.median(r['speedup'] for r in rs):15.2f}x "
              f"{statistics.mean(r['mal'] for r in rs):5.2f} {sum(r['identical'] for r in rs):4d}/{len(rs)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": args.device, "dtype": args.dtype, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
