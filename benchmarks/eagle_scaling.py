"""Held-out acceptance of a train-eagle run's checkpoints: the scaling curve (training tokens -> top-1, MAL).

    .venv/bin/python benchmarks/eagle_scaling.py --run /tmp/eagle3_run --threads 2
    .venv/bin/python benchmarks/eagle_scaling.py --run /tmp/eagle3_run --prompts 12 --json curve.json

For every checkpoint of the run (``OUT/checkpoints/*``, written after each epoch and every ``--checkpoint-tokens``
training tokens) and the final head: the training tokens seen and the held-out teacher-forced top-1 that train-eagle
logged for it (on the held-out share of the target's own responses: all positions, response positions, and the
unrolled steps), and the mean acceptance length of real speculative decoding on held-out Spec-Bench prompts
(question_id % 4 == 0, round-robin over the six categories), greedy, a fixed K=5 chain (back-off off), as
train-eagle's own validation measures it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import specdecode
import torch
from specdecode.models import load_model
from specdecode_eagle import _DRAFTERS, Eagle3Options, EagleOptions, load_drafter, load_eagle3_drafter
from specdecode_eagle.checkpoint import EAGLE3_FORMATS, head_format
from specdecode_eagle.data import chat_prompt, load_questions, round_robin, split
from specdecode_eagle.proposer import EagleProposer


def record(run: Path) -> dict:
    for name in ("specdecode.json", "eagle_head.json"):
        if (run / name).is_file():
            return json.loads((run / name).read_text())
    raise SystemExit(f"{run} holds no finished train-eagle head (specdecode.json or eagle_head.json)")


def mean_acceptance(model, tokenizer, head: Path, prompts: int, max_new_tokens: int, questions: str | None):
    eagle3 = head_format(head) in EAGLE3_FORMATS
    _DRAFTERS.pop(model, None)
    drafter = load_eagle3_drafter(model, head) if eagle3 else load_drafter(model, head)
    options = (Eagle3Options if eagle3 else EagleOptions)(adaptive=False, tree_width=1)
    config = specdecode.SpeculativeConfig(method="eagle3" if eagle3 else "eagle", num_speculative_tokens=5)
    total = None
    for q in round_robin(split(load_questions(questions), held_out=True), prompts):
        ids = torch.tensor([chat_prompt(tokenizer, q.text, 320)])
        out = specdecode.generate(model, ids, config, max_new_tokens=max_new_tokens, do_sample=False,
                                  proposer=EagleProposer(drafter, options))
        total = out.stats if total is None else total.merge(out.stats)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a train-eagle output directory")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=12, help="held-out prompts (round-robin over categories)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--every", type=int, default=1, help="measure every n-th checkpoint (and the final head)")
    parser.add_argument("--questions", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    history = record(run)["trained"]["history"]
    model, tokenizer = load_model(args.model)
    checkpoints = sorted(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    # History entries and checkpoints are written together, in order.
    pairs = list(zip(history, checkpoints))[:: args.every] + [(history[-1], run)]
    rows = []
    print("| training tokens seen | epoch | held-out top-1 | top-1 on responses | step-2 top-1 | step-3 top-1 | MAL K=5 "
          "| per-position acceptance |")
    print("|---|---|---|---|---|---|---|---|")
    for entry, head in pairs:
        stats = mean_acceptance(model, tokenizer, head, args.prompts, args.max_new_tokens, args.questions)
        row = {"head": str(head), "tokens": entry.get("tokens"), "epoch": entry["epoch"], "top1": entry["top1"],
               "top1_response": entry["top1_response"], "top1_step2": entry.get("top1_step2"),
               "top1_step3": entry.get("top1_step3"), "mal": stats.mean_acceptance_length,
               "per_position": [round(a, 3) for a in stats.per_position_acceptance]}
        rows.append(row)
        step = " | ".join("-" if row[k] is None else f"{row[k]:.3f}" for k in ("top1_step2", "top1_step3"))
        print(f"| {row['tokens']} | {row['epoch']} | {row['top1']:.3f} | {row['top1_response']:.3f} | {step} | "
              f"{row['mal']:.2f} | {' '.join(f'{a:.2f}' for a in row['per_position'])} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"{args.prompts} held-out prompts, {args.max_new_tokens} new tokens, K=5 chain, back-off off",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
