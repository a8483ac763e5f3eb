"""How often reduced precision changes the output, next to how often plain generate changes its own.

In bf16 / fp16 a verify pass over k+1 tokens sums in another order than a decode step over one, so greedy output
may leave plain generate's where the target's two best tokens are tied within rounding. The honest baseline is
plain ``generate`` itself, whose output also changes with the batch size (a prompt alone vs the same prompt in a
left-padded batch of 2): the same kind of reordering. For each dtype, on SmolLM2-135M-Instruct (Spec-Bench first
turns, ``--per-category`` per category, ``--max-new-tokens`` tokens, greedy):

* plain b1 vs b2: prompts whose output differs between plain generate alone and in a batch of 2;
* ngram vs plain: prompts whose specdecode output (ngram, default settings) differs from plain generate alone;
* for each divergence, the gap between the two tokens at the first differing position, in units of the dtype's
  epsilon relative to the largest logit (one forward pass in that dtype over the common prefix).

    .venv/bin/python benchmarks/bench_precision.py --per-category 2 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys

import spec_bench
import specdecode
import torch
from specdecode.toolkit import left_pad


def prompts(per_category: int) -> list[str]:
    return [text for _, text in spec_bench.load(per_category)]


def first_diff(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def gap(model, ids: torch.Tensor, plain: list[int], other: list[int], at: int, dtype: torch.dtype) -> float:
    """|logit(plain's token) - logit(other's token)| / max |logit| at position ``at``, in epsilons of ``dtype``."""
    with torch.inference_mode():
        logits = model(torch.cat([ids[0], torch.tensor(plain[:at])]).unsqueeze(0)).logits[0, -1].float()
    return float((logits[plain[at]] - logits[other[at]]).abs() / logits.abs().max()) / torch.finfo(dtype).eps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    texts = prompts(args.per_category)
    settings = {"do_sample": False, "max_new_tokens": args.max_new_tokens}
    lines = []
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        model, tokenizer = specdecode.load_model("smollm2-135m", dtype=dtype)
        encoded = [specdecode.encode_prompt(tokenizer, t) for t in texts]
        batch_diff, spec_diff, gaps = 0, 0, []
        for i, ids in enumerate(encoded):
            partner = encoded[(i + 1) % len(encoded)]
            pair, mask = left_pad([ids[0], partner[0]], pad_token_id=tokenizer.pad_token_id or 0)
            with torch.inference_mode():
                alone = model.generate(ids, **settings)[0, ids.shape[1] :].tolist()
                batched = model.generate(pair, attention_mask=mask, pad_token_id=tokenizer.pad_token_id, **settings)
            row = batched[0, pair.shape[1] :].tolist()[: len(alone)]
            spec = specdecode.generate(model, ids, {"method": "ngram"}, **settings).sequences[0, ids.shape[1] :].tolist()
            at_b, at_s = first_diff(alone, row), first_diff(alone, spec)
            batch_diff += at_b is not None
            if at_s is not None:
                spec_diff += 1
                if at_s < min(len(alone), len(spec)):
                    gaps.append(gap(model, ids, alone, spec, at_s, dtype))
            print(f"[{name} {i + 1}/{len(encoded)}] b1-vs-b2 diverges at {at_b}, ngram at {at_s}", file=sys.stderr,
                  flush=True)
        gap_text = (f"max {max(gaps):.2f}, median {statistics.median(gaps):.2f}" if gaps else "-")
        lines.append(f"{name:9s} {len(encoded):7d} {batch_diff:>15d} {spec_diff:>14d}   {gap_text}")
    print(f"\nSmolLM2-135M-Instruct, greedy, {args.max_new_tokens} new tokens; prompts whose output differs from plain "
          "generate alone")
    print(f"{'dtype':9s} {'prompts':>7s} {'plain b1 vs b2':>15s} {'ngram vs plain':>14s}   gap at ngram's divergences "
          "(eps x max|logit|)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
