"""What a verify pass costs by rows and cache length, with grouped K/V heads copied (transformers' default under a
mask) and read in place (what specdecode's loop does on a CPU: ``specdecode.attention.grouped_kv_in_place``).

    .venv/bin/python benchmarks/verify_rows.py --threads 2 --caches 128,1024,1536 --rows 1,2,6,9

One forward over n new rows after a cache of the given length, on the few-rows kernel, with the loop's kind of
4-D mask for n > 1 (a single row runs unmasked, as a plain decode step does); the two settings alternate and the
median of ``--repeats`` is printed, with the largest logit difference between them (0: bit-identical).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from specdecode.attention import FORCE_GQA_ENV
from specdecode.kernels import few_rows_linear
from specdecode.models import load_model
from transformers import DynamicCache


def verify_inputs(past: int, rows: int) -> dict[str, torch.Tensor]:
    """The extra forward arguments of a verify pass over ``rows`` new rows after ``past`` cached tokens: a 4-D causal
    mask and positions, as the loop passes for more than one row; none for a single row (a plain decode step)."""
    if rows == 1:
        return {}
    mask = torch.zeros(1, 1, rows, past + rows)
    mask[..., past:] = torch.triu(torch.full((rows, rows), float("-inf")), 1)
    return {"attention_mask": mask, "position_ids": torch.arange(past, past + rows).unsqueeze(0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--caches", default="128,1024,1536", help="comma-separated cache lengths")
    parser.add_argument("--rows", default="1,2,6,9", help="comma-separated row counts (last token + drafts)")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_model(args.model)
    rows = [int(n) for n in args.rows.split(",")]
    user_value = os.environ.pop(FORCE_GQA_ENV, None)
    print("| cache | " + " | ".join(f"{n} row{'s' if n > 1 else ''}: copy / in place" for n in rows)
          + " | largest logit difference |")
    print("|---" * (len(rows) + 2) + "|")
    try:
        for past in (int(c) for c in args.caches.split(",")):
            prompt = torch.randint(100, 10000, (1, past), generator=torch.Generator().manual_seed(past))
            times: dict[tuple[str, int], list[float]] = {}
            worst = 0.0  # the largest logit difference between the two settings
            with torch.inference_mode(), few_rows_linear(model):
                cache = DynamicCache(config=model.config)
                model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
                for _ in range(args.repeats):
                    for n in rows:
                        ids, extra = torch.randint(100, 10000, (1, n)), verify_inputs(past, n)
                        logits = {}
                        for setting in ("copy", "in place"):
                            if setting == "copy":
                                os.environ.pop(FORCE_GQA_ENV, None)
                            else:
                                os.environ[FORCE_GQA_ENV] = "1"
                            start = time.perf_counter()
                            out = model(input_ids=ids, cache=cache, use_cache=True, **extra)
                            times.setdefault((setting, n), []).append((time.perf_counter() - start) * 1000)
                            logits[setting] = out.logits
                            cache.crop(-n)
                        worst = max(worst, (logits["copy"] - logits["in place"]).abs().max().item())
            cells = [f"{statistics.median(times['copy', n]):.1f} / {statistics.median(times['in place', n]):.1f} ms"
                     for n in rows]
            print(f"| {past} | " + " | ".join(cells) + f" | {worst:.2g} |", flush=True)
    finally:
        os.environ.pop(FORCE_GQA_ENV, None)
        if user_value is not None:
            os.environ[FORCE_GQA_ENV] = user_value
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
