"""ngram (prompt lookup) against plain `generate` and transformers' own prompt lookup, per Spec-Bench category.

Everything is measured in one run, on the same prompts, greedy, fp32, batch 1:

    .venv/bin/python benchmarks/bench_ngram.py --per-category 20 --max-new-tokens 128

For each category it prints plain tokens/s, ours, transformers' prompt lookup (its best setting, chosen on a
calibration subset among K in 3, 5, 10 and max_matching_ngram_size 2, 3), both ratios (median over prompts), the
acceptance rate, the mean acceptance length, and the mean acceptance length an oracle replay of the plain greedy
output would give with the same proposer. It also checks that every greedy output equals plain generate's and
reports the share of wall time spent outside the target's forward passes.
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
from specdecode.models import load_model

SPEC_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_question.jsonl"
CATEGORIES = ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]
HF_SETTINGS = [(k, n) for k in (3, 5, 10) for n in (2, 3)]


def load_prompts(path: Path, per_category: int, categories: list[str]) -> list[tuple[str, str]]:
    out: dict[str, list[str]] = {c: [] for c in categories}
    with open(path) as fh:
        for line in fh:
            item = json.loads(line)
            # Spec-Bench's mt_bench questions carry their MT-bench sub-category (writing, roleplay, ...).
            category = "mt_bench" if 81 <= item["question_id"] <= 160 else item["category"]
            if category in out and len(out[category]) < per_category:
                out[category].append(item["turns"][0])
    return [(c, p) for c in categories for p in out[c]]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def oracle_replay(model, config, prompt_ids, reference_new: list[int]) -> tuple[int, int]:
    """Replay the plain greedy output through a fresh proposer: at every step it proposes from the true prefix, and
    the drafts that match the true continuation are what a perfect implementation would accept."""
    from specdecode.proposer import ProposeRequest, SamplingParams, StartContext, VerifyResult

    proposer = specdecode.build_proposer(model, config)
    tokens = torch.cat([prompt_ids, torch.tensor([reference_new[:1]])], dim=1)
    params = SamplingParams()
    proposer.start(
        StartContext(
            input_ids=tokens,
            attention_mask=torch.ones_like(tokens),
            num_speculative_tokens=config.num_speculative_tokens,
            sampling=params,
            generator=None,
        )
    )
    produced, accepted, drafting_steps = 1, 0, 0
    total = len(reference_new)
    active = torch.ones(1, dtype=torch.bool)
    while produced < total:
        budget = min(config.num_speculative_tokens, total - produced - 1)
        drafts: list[int] = []
        if budget > 0:
            request = ProposeRequest(
                input_ids=tokens,
                attention_mask=torch.ones_like(tokens),
                num_tokens=budget,
                active=active,
                sampling=params,
                generator=None,
            )
            drafts = proposer.propose(request).token_ids[0, :budget].tolist()
        truth = reference_new[produced : produced + len(drafts) + 1]
        n = 0
        while n < len(drafts) and drafts[n] == truth[n]:
            n += 1
        if drafts:
            drafting_steps += 1
            accepted += n
        new = truth[: n + 1]
        produced += len(new)
        tokens = torch.cat([tokens, torch.tensor([new])], dim=1)
        proposer.on_verified(
            VerifyResult(
                input_ids=tokens,
                attention_mask=torch.ones_like(tokens),
                num_drafted=torch.tensor([len(drafts)]),
                num_accepted=torch.tensor([n]),
                next_tokens=torch.tensor([new[-1]]),
                num_accepted_list=[n],
            )
        )
    proposer.finish()
    return accepted, drafting_steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=Path, default=SPEC_BENCH)
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--per-category", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speculative-config", default='{"method": "ngram"}', help="our config, vLLM JSON shape")
    parser.add_argument("--calibration", type=int, default=2, help="prompts per category to pick HF's best setting")
    parser.add_argument("--hf-settings", default="", help="fix HF's setting as K,N instead of calibrating")
    parser.add_argument("--json", type=Path, help="write per-prompt results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    config = specdecode.SpeculativeConfig.from_json(args.speculative_config)
    categories = args.categories.split(",")
    prompts = load_prompts(args.prompts, args.per_category, categories)

    def encode(text: str) -> torch.Tensor:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return ids["input_ids"]

    n = args.max_new_tokens
    plain_kwargs = {"do_sample": False, "max_new_tokens": n}

    def plain(ids):
        return model.generate(ids, **plain_kwargs)

    def hf_lookup(ids, k, ngram):
        return model.generate(ids, prompt_lookup_num_tokens=k, max_matching_ngram_size=ngram, **plain_kwargs)

    with torch.inference_mode():
        warm = encode("Hello")
        plain(warm)
        specdecode.generate(model, warm, config, max_new_tokens=8)

        # transformers' prompt lookup at its best setting, chosen on a calibration subset of every category.
        if args.hf_settings:
            best = tuple(int(x) for x in args.hf_settings.split(","))
        else:
            calib = [p for c in categories for p in [q for cc, q in prompts if cc == c][: args.calibration]]
            speed = {}
            for setting in HF_SETTINGS:
                total_time = sum(timed(hf_lookup, encode(p), *setting)[1] for p in calib)
                speed[setting] = total_time
                print(f"calibration: HF prompt lookup K={setting[0]} ngram={setting[1]}: {total_time:.1f}s", file=sys.stderr)
            best = min(speed, key=speed.get)
        print(f"transformers prompt lookup setting: K={best[0]}, max_matching_ngram_size={best[1]}", file=sys.stderr)

        rows = []
        for i, (category, text) in enumerate(prompts):
            ids = encode(text)
            ref, t_plain = timed(plain, ids)
            out, t_ours = timed(specdecode.generate, model, ids, config, max_new_tokens=n)
            hf, t_hf = timed(hf_lookup, ids, *best)
            new = ref.shape[1] - ids.shape[1]
            stats = out.stats
            ref_new = ref[0, ids.shape[1] :].tolist()
            rows.append(
                {
                    "category": category,
                    "new_tokens": new,
                    "plain_tps": new / t_plain,
                    "ours_tps": stats.new_tokens / t_ours,
                    "hf_tps": (hf.shape[1] - ids.shape[1]) / t_hf,
                    "identical": bool(torch.equal(out.sequences, ref)),
                    "hf_identical": bool(torch.equal(hf, ref)),
                    "acceptance_rate": stats.acceptance_rate,
                    "drafted": stats.drafted,
                    "accepted": stats.accepted,
                    "drafting_steps": stats.drafting_steps,
                    "mal": stats.mean_acceptance_length,
                    "oracle": oracle_replay(model, config, ids, ref_new),
                    "outside_forward": 1 - stats.time_target / stats.time_total,
                    # For offline analysis (benchmarks/ngram_ceiling.py): the prompt and the plain greedy output.
                    "prompt_ids": ids[0].tolist(),
                    "reference": ref_new,
                }
            )
            r = rows[-1]
            print(
                f"[{i + 1}/{len(prompts)}] {category:15s} plain {r['plain_tps']:5.1f} tok/s  ours {r['ours_tps']:5.1f} "
                f"({r['ours_tps'] / r['plain_tps']:.2f}x)  hf {r['hf_tps']:5.1f} ({r['hf_tps'] / r['plain_tps']:.2f}x)  "
                f"MAL {r['mal']:.2f} oracle {1 + r['oracle'][0] / max(r['oracle'][1], 1):.2f}  identical={r['identical']}",
                file=sys.stderr,
                flush=True,
            )

    print_table(rows, categories, best, config, n)
    if args.json:
        args.json.write_text(json.dumps({"config": config.to_dict(), "hf_setting": best, "rows": rows}, indent=1))
    return 0 if all(r["identical"] for r in rows) else 1


def print_table(rows, categories, best, config, n) -> None:
    print(f"\nngram {config.to_vllm()} vs plain generate vs transformers prompt lookup (K={best[0]}, "
          f"ngram={best[1]}); greedy, max_new_tokens={n}, median over prompts")
    header = (f"{'category':15s} {'n':>3s} {'plain tok/s':>11s} {'ours tok/s':>10s} {'HF tok/s':>8s} "
              f"{'ours/plain':>10s} {'ours/HF':>7s} {'HF/plain':>8s} {'acc.rate':>8s} {'MAL':>5s} {'oracle':>6s} "
              f"{'outside fwd':>11s} {'identical':>9s}")
    print(header)
    print("-" * len(header))
    med = statistics.median
    groups = [(c, [r for r in rows if r["category"] == c]) for c in categories] + [("all", rows)]
    for category, rs in groups:
        if not rs:
            continue
        drafted = sum(r["drafted"] for r in rs)
        accepted = sum(r["accepted"] for r in rs)
        steps = sum(r["drafting_steps"] for r in rs)
        oracle_accepted = sum(r["oracle"][0] for r in rs)
        oracle_steps = sum(r["oracle"][1] for r in rs)
        print(
            f"{category:15s} {len(rs):3d} {med(r['plain_tps'] for r in rs):11.1f} {med(r['ours_tps'] for r in rs):10.1f} "
            f"{med(r['hf_tps'] for r in rs):8.1f} {med(r['ours_tps'] / r['plain_tps'] for r in rs):9.2f}x "
            f"{med(r['ours_tps'] / r['hf_tps'] for r in rs):6.2f}x {med(r['hf_tps'] / r['plain_tps'] for r in rs):7.2f}x "
            f"{(accepted / drafted if drafted else 0):8.1%} {(1 + accepted / steps if steps else 1):5.2f} "
            f"{(1 + oracle_accepted / oracle_steps if oracle_steps else 1):6.2f} {statistics.mean(r['outside_forward'] for r in rs):10.1%} "
            f"{sum(r['identical'] for r in rs):4d}/{len(rs)}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
