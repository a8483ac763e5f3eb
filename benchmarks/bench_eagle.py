"""EAGLE on SmolLM2-135M-Instruct over held-out Spec-Bench prompts: acceptance, speedup and draft cost.

    .venv/bin/python benchmarks/bench_eagle.py                      # small default: 2 prompts per category, 64 tokens
    .venv/bin/python benchmarks/bench_eagle.py --per-category 10 --max-new-tokens 128 --json out.json
    .venv/bin/python benchmarks/bench_eagle.py --method eagle3 [--head DIR]    # an EAGLE-3 head (speculators format)

Prompts: Spec-Bench questions with question_id % 4 == 0 (never used to train the shipped head; see
specdecode_eagle/data.py), first turn, in the chat template, the first N of each of the six categories
(mt_bench = question_id 81-160). Greedy decoding, batch size 1.

The proposer's back-off is on (the default: each step drafts only as deep as the head's calibrated confidence pays
for, possibly nothing); ``--no-backoff`` drafts exactly K every step, which measures the head's raw acceptance.
``--temperature T`` samples instead (plain and EAGLE at that temperature, each run seeded; outputs then differ by
design and are not compared; neither stops at eos, so both produce the same number of tokens).
``--tree-widths 1,2`` runs every K once per tree width (1 = a chain; w > 1 = a tree with w continuations per node,
at most ``--tree-nodes`` nodes, K deep), interleaved per prompt, so chains and trees meet the same load.

Reported per category and K: mean acceptance length (vLLM's definition: 1 + accepted / drafting steps) and speedup
= plain generate's wall time / EAGLE's wall time for the same prompts and tokens (plain = transformers
``model.generate(do_sample=False)``; every EAGLE output is also checked to be identical to it). The plain and EAGLE
runs of one prompt are interleaved, so load from other processes hits both alike. specdecode's forwards run on its
few-rows linear kernel (specdecode/kernels.py), which makes a decode step itself cheaper on a CPU, so plain generate
also runs on that kernel ("plain+k") and the table shows EAGLE's speedup over it: speculation's own share
(--no-kernel-baseline skips it). Finally the cost c of one draft step (one head position + the draft-vocabulary LM
head) relative to one target decode step, both with a cache holding the prompt, on the kernel the loop uses.
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
from specdecode.kernels import backend, few_rows_linear
from specdecode.models import load_model
from specdecode_eagle import load_drafter, load_eagle3_drafter
from specdecode_eagle.data import CATEGORIES, chat_prompt, load_questions, split


def held_out_prompts(tokenizer, per_category: int, categories: list[str], questions_path: str | None):
    held = split(load_questions(questions_path), held_out=True)
    out = []
    for category in categories:
        picked = [q for q in held if q.category == category][:per_category]
        out += [(q, torch.tensor([chat_prompt(tokenizer, q.text)])) for q in picked]
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def draft_step_cost(model, drafter, prompt: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of one target decode step and one head draft step, both after prefilling ``prompt``."""
    from transformers import DynamicCache

    with torch.inference_mode(), few_rows_linear(model, drafter.head):  # the kernel specdecode's loop runs on
        cache = DynamicCache(config=model.config)
        out = model(input_ids=prompt, cache=cache, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        layers = drafter.hidden_state_layers  # EAGLE-3: its aux layers; EAGLE-1/2: the last one
        states = out.hidden_states[-1] if layers is None else torch.cat([out.hidden_states[i] for i in layers], -1)
        hidden = drafter.fuse_target_states(states)
        head_cache = drafter.new_cache()
        drafter.features(hidden[:, :-1], prompt[:, 1:], 0, head_cache)
        token = prompt[:, -1:]
        target_times, draft_times = [], []
        for _ in range(repeats):
            _, t = timed(lambda: model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1))
            cache.crop(-1)
            target_times.append(t)
            start = head_cache.get_seq_length()
            _, t = timed(lambda start=start: drafter.logits(drafter.features(hidden[:, -1:], token, start, head_cache)))
            head_cache.crop(-1)
            draft_times.append(t)
    target, draft = statistics.median(target_times), statistics.median(draft_times)
    return {"target_step_ms": 1000 * target, "draft_step_ms": 1000 * draft, "c": draft / target}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="eagle", choices=("eagle", "eagle3"),
                        help="eagle (EAGLE-1/2 head) or eagle3 (EAGLE-3 head, speculators format)")
    parser.add_argument("--head", default=None, help="head directory (default: the method's shipped head)")
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--ks", default="3,5,7", help="comma-separated speculation depths")
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--questions", default=None, help="Spec-Bench question file (default: ../shared/data)")
    parser.add_argument("--backoff", action=argparse.BooleanOptionalAction, default=True,
                        help="the proposer's back-off (default on); --no-backoff drafts exactly K every step")
    parser.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature (0: greedy)")
    parser.add_argument("--tree-widths", default="2", help="comma-separated tree widths (1 = chain drafting)")
    parser.add_argument("--tree-nodes", type=int, default=8, help="most tree nodes per step")
    parser.add_argument("--prompt-lookup", action=argparse.BooleanOptionalAction, default=True,
                        help="prompt lookup's continuation joins the head's drafts (method_options.prompt_lookup); "
                        "--no-prompt-lookup: the head alone")
    parser.add_argument("--cost-jump", type=float, default=None,
                        help="the back-off's verify-cost curve, 1 + jump + per_token * k (default: the kernel's)")
    parser.add_argument("--cost-per-token", type=float, default=None, help="see --cost-jump")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-kernel-baseline", dest="kernel_baseline", action="store_false",
                        help="skip plain generate on specdecode's linear kernel")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.tree_widths.split(",")]
    # One column per (K, tree width); labelled by K alone when there is one width.
    ks = [(k, w) for w in widths for k in (int(k) for k in args.ks.split(","))]

    def label(variant):
        return f"K={variant[0]}" if len(widths) == 1 else f"K={variant[0]} w={variant[1]}"

    categories = [c for c in args.categories.split(",") if c]

    model, tokenizer = load_model(args.model)
    drafter = (load_eagle3_drafter if args.method == "eagle3" else load_drafter)(model, args.head)
    prompts = held_out_prompts(tokenizer, args.per_category, categories, args.questions)
    print(f"{args.method} head {args.head or '(shipped)'}: {len(prompts)} held-out prompts, "
          f"{args.max_new_tokens} new tokens, {[label(k) for k in ks]}, prompt lookup "
          f"{'on' if args.prompt_lookup else 'off'}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)

    # Warm-up so the first timed run does not pay for lazy initialisation.
    warm = prompts[0][1]
    model.generate(warm, max_new_tokens=4, do_sample=False)
    options = {"adaptive": args.backoff, "tree_nodes": args.tree_nodes, "cost_jump": args.cost_jump,
               "cost_per_token": args.cost_per_token, "prompt_lookup": args.prompt_lookup}
    warm_config = {"method": args.method, "method_options": options, **({"model": args.head} if args.head else {})}
    specdecode.generate(model, warm, warm_config, max_new_tokens=4, do_sample=False)

    rows = {c: {"plain_s": 0.0, "plain_k_s": 0.0, "tokens": 0, **{k: {"s": 0.0, "stats": None} for k in ks}} for c in categories}
    mismatches = 0

    sampled = args.temperature > 0
    sampling = {"do_sample": True, "temperature": args.temperature} if sampled else {"do_sample": False}

    def plain_generate(ids):
        if sampled:
            torch.manual_seed(0)
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                              min_new_tokens=args.max_new_tokens if sampled else None, **sampling)

    for question, ids in prompts:
        row = rows[question.category]
        plain, seconds = timed(lambda ids=ids: plain_generate(ids))
        row["plain_s"] += seconds
        row["tokens"] += plain.shape[1] - ids.shape[1]
        if args.kernel_baseline:
            with few_rows_linear(model):
                _, seconds = timed(lambda ids=ids: plain_generate(ids))
            row["plain_k_s"] += seconds
        for k in ks:
            config = specdecode.SpeculativeConfig(method=args.method, num_speculative_tokens=k[0], draft_model=args.head,
                                                  method_options={**options, "tree_width": k[1]})
            out, seconds = timed(lambda ids=ids, config=config: specdecode.generate(
                model, ids, config, max_new_tokens=args.max_new_tokens, **sampling,
                **({"seed": 0, "eos_token_id": []} if sampled else {})))
            if not sampled:  # sampled runs are timed over the same number of tokens (no eos), not compared
                mismatches += int(not torch.equal(out.sequences, plain))
            row[k]["s"] += seconds
            row[k]["stats"] = out.stats if row[k]["stats"] is None else row[k]["stats"].merge(out.stats)
        print(f"  q{question.question_id} {question.category}: " + ", ".join(
            f"{label(k)} tau {row[k]['stats'].mean_acceptance_length:.2f} drafting "
            f"{row[k]['stats'].drafting_steps}/{row[k]['stats'].steps} steps" for k in ks), file=sys.stderr)

    cost = draft_step_cost(model, drafter, prompts[0][1], repeats=20)
    kb = args.kernel_baseline
    header = "| category | " + " | ".join(f"mean acc. len {label(k)}" for k in ks) + " | " + " | ".join(
        f"speedup {label(k)}" for k in ks) + " |" + ("".join(f" vs plain+k {label(k)} |" for k in ks) if kb else "")
    lines = [header, "|" + "---|" * (1 + (3 if kb else 2) * len(ks))]
    totals = {"plain_s": 0.0, "plain_k_s": 0.0, **{k: {"s": 0.0, "stats": None} for k in ks}}
    for category, row in rows.items():
        if row[ks[0]]["stats"] is None:
            continue
        totals["plain_s"] += row["plain_s"]
        totals["plain_k_s"] += row["plain_k_s"]
        for k in ks:
            totals[k]["s"] += row[k]["s"]
            totals[k]["stats"] = row[k]["stats"] if totals[k]["stats"] is None else totals[k]["stats"].merge(row[k]["stats"])
        lines.append(f"| {category} | " + " | ".join(f"{row[k]['stats'].mean_acceptance_length:.2f}" for k in ks)
                     + " | " + " | ".join(f"{row['plain_s'] / row[k]['s']:.2f}x" for k in ks) + " |"
                     + ("".join(f" {row['plain_k_s'] / row[k]['s']:.2f}x |" for k in ks) if kb else ""))
    lines.append("| **all** | " + " | ".join(f"{totals[k]['stats'].mean_acceptance_length:.2f}" for k in ks)
                 + " | " + " | ".join(f"{totals['plain_s'] / totals[k]['s']:.2f}x" for k in ks) + " |"
                 + ("".join(f" {totals['plain_k_s'] / totals[k]['s']:.2f}x |" for k in ks) if kb else ""))
    print("\n".join(lines))
    if kb:
        print(f"\nplain generate on the kernel: {totals['plain_s'] / totals['plain_k_s']:.2f}x plain generate "
              f"(linear kernel: {backend()})")
    print(f"\ndraft step {cost['draft_step_ms']:.1f} ms, target step {cost['target_step_ms']:.1f} ms: "
          f"c = {cost['c']:.3f}; outputs identical to plain generate: "
          + ("not compared (sampling)" if sampled else f"{len(prompts) * len(ks) - mismatches}/{len(prompts) * len(ks)}"))
    if args.json:
        raw = {
            "args": vars(args),
            "draft_cost": cost,
            "mismatches": mismatches,
            "categories": {
                c: {"plain_s": r["plain_s"], "plain_kernel_s": r["plain_k_s"], "tokens": r["tokens"],
                    **{label(k): {"seconds": r[k]["s"], **r[k]["stats"].to_dict()} for k in ks if r[k]["stats"]}}
                for c, r in rows.items()
            },
        }
        Path(args.json).write_text(json.dumps(raw, indent=2))
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
