"""The sliding-window batch check on a real model: Gemma 3 270M (window 512), long prompts in one ragged batch.

Spec-Bench summarization prompts 6-9 (in the file's order; 617-1134 tokens with the chat template) as one
left-padded batch through ``specdecode.generate`` (ngram, K=5, adaptive off, constant schedule, greedy), each row
compared with the same prompt generated alone by plain ``generate``, and with transformers' own batched generate.
Before the fix (holes in the cache counted against the window) 0 of 4 rows matched.

    .venv/bin/python benchmarks/check_gemma3_batch.py --max-new-tokens 200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import specdecode
import torch
from specdecode.toolkit import left_pad

SPEC_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_question.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = specdecode.load_model("gemma3-270m")
    rows = [json.loads(line) for line in SPEC_BENCH.read_text().splitlines()]
    texts = [r["turns"][0] for r in rows if r["category"] == "summarization"][6:10]
    prompts = [specdecode.encode_prompt(tokenizer, t)[0] for t in texts]
    print(f"window {model.config.sliding_window}; prompt lengths {[len(p) for p in prompts]}", file=sys.stderr)
    settings = {"do_sample": False, "max_new_tokens": args.max_new_tokens}
    pad = tokenizer.pad_token_id
    with torch.inference_mode():
        alone = [model.generate(p.unsqueeze(0), **settings)[0, len(p) :].tolist() for p in prompts]
        ids, mask = left_pad(prompts, pad_token_id=pad)
        hf = model.generate(ids, attention_mask=mask, pad_token_id=pad, **settings)
    config = {"method": "ngram", "num_speculative_tokens": 5, "speculation_schedule": "constant",
              "method_options": {"adaptive": False}}
    out = specdecode.generate(model, ids, config, attention_mask=mask, pad_token_id=pad, **settings)
    width = ids.shape[1]
    spec_ok = hf_ok = 0
    for b, reference in enumerate(alone):
        spec_row = out.sequences[b, width : width + len(reference)].tolist()
        hf_row = hf[b, width : width + len(reference)].tolist()
        spec_ok += spec_row == reference
        hf_ok += hf_row == reference
        print(f"row {b}: specdecode {'==' if spec_row == reference else '!='} alone, transformers' batch "
              f"{'==' if hf_row == reference else '!='} alone ({len(reference)} tokens)")
    print(f"specdecode batch: {spec_ok}/{len(alone)} rows equal each prompt alone; transformers' batched generate: "
          f"{hf_ok}/{len(alone)}; mean acceptance length {out.stats.mean_acceptance_length:.2f}")
    return 0 if spec_ok == len(alone) else 1


if __name__ == "__main__":
    raise SystemExit(main())
