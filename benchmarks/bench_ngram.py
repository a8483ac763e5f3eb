"""ngram (prompt lookup) against plain `generate` and transformers' own prompt lookup, per Spec-Bench category.

Everything is measured in one run, on the same prompts, greedy, fp32, batch 1:

    .venv/bin/python benchmarks/bench_ngram.py --per-category 20 --max-new-tokens 128

For each category it prints plain tokens/s, ours, transformers' prompt lookup (its best setting, chosen on a
calibration subset among K in 3, 5, 10 and max_matching_ngram_size 2, 3), both ratios (median over prompts), the
acceptance rate, the mean acceptance length, and the mean acceptance length an oracle replay of the plain greedy
output would give with the same proposer. It also checks that every greedy output equals plain generate's and
reports the share of wall time spent outside the target's forward passes.

specdecode's forwards run on its few-rows linear kernel (specdecode/kernels.py), which makes a decode step itself
cheaper than transformers' on a CPU. So that this shows what speculation adds, plain generate also runs on that
kernel ("plain+k"); ours/plain+k is speculation's own share (--no-kernel-baseline skips it).
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
from specdecode.kernels import backend, few_rows_linear
from specdecode.models import load_model

SPEC_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_question.jsonl"
CATEGORIES = ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]
HF_SETTINGS = [(k, n) for k in (3, 5, 10) for n in (2, 3)]


def load_prompts(path: Path, per_category: int, categories: list[str]) -> list[tuple[str, str]]:
    return spec_bench.load(per_category, categories, path=path)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def replay(propose, prompt: list[int], reference: list[int], max_k: int, on_verified=None) -> list[tuple[int, int]]:
    """(drafted, accepted) per verify step when ``propose(tokens, budget) -> drafts`` drafts for this output.

    Every step proposes from the true prefix; the drafts that match the true continuation are what a perfect
    implementation would accept. ``on_verified(tokens, drafted, accepted)`` hears about each step."""
    tokens = prompt + reference[:1]
    steps = []
    produced = 1
    while produced < len(reference):
        budget = min(max_k, len(reference) - produced - 1)
        drafts = propose(tokens, budget) if budget > 0 else []
        truth = reference[produced : produced + len(drafts) + 1]
        n = 0
        while n < len(drafts) and drafts[n] == truth[n]:
            n += 1
        steps.append((len(drafts), n))
        tokens = tokens + truth[: n + 1]
        produced += n + 1
        if on_verified is not None:
            on_verified(tokens, len(drafts), n)
    return steps


def proposer_replay(proposer, prompt: list[int], reference: list[int], max_k: int, perfect_stop: bool = False):
    """:func:`replay` with a specdecode proposer driven through its public interface. ``perfect_stop`` cuts every
    draft where the target would reject it (an upper bound for any stopping rule with the same candidates)."""
    from specdecode.proposer import ProposeRequest, SamplingParams, StartContext, VerifyResult

    params = SamplingParams()
    first = torch.tensor([prompt + reference[:1]])
    proposer.start(StartContext(input_ids=first, attention_mask=torch.ones_like(first),
                                num_speculative_tokens=max_k, sampling=params, generator=None))
    full = prompt + reference

    def propose(tokens, budget):
        ids = torch.tensor([tokens])
        request = ProposeRequest(input_ids=ids, attention_mask=torch.ones_like(ids), num_tokens=budget,
                                 active=torch.ones(1, dtype=torch.bool), sampling=params, generator=None)
        drafts = proposer.propose(request).token_ids[0, :budget].tolist()
        if perfect_stop:
            n = 0
            while n < len(drafts) and drafts[n] == full[len(tokens) + n]:
                n += 1
            drafts = drafts[:n]
        return drafts

    def on_verified(tokens, drafted, accepted):
        ids = torch.tensor([tokens])
        proposer.on_verified(VerifyResult(
            input_ids=ids, attention_mask=torch.ones_like(ids), num_drafted=torch.tensor([drafted]),
            num_accepted=torch.tensor([accepted]), next_tokens=ids[:, -1], num_accepted_list=[accepted]))

    steps = replay(propose, prompt, reference, max_k, on_verified)
    proposer.finish()
    return steps


def oracle_replay(model, config, prompt_ids, reference_new: list[int]) -> tuple[int, int]:
    """(accepted drafts, drafting steps) of a fresh proposer replaying the plain greedy output."""
    steps = proposer_replay(specdecode.build_proposer(model, config), prompt_ids[0].tolist(), reference_new,
                            config.num_speculative_tokens)
    return sum(a for d, a in steps if d), sum(1 for d, _ in steps if d)


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
    parser.add_argument("--no-kernel-baseline", dest="kernel_baseline", action="store_false",
                        help="skip plain generate on specdecode's linear kernel (the speculation-only ratio)")
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

    def plain_kernel(ids):
        # Plain generate on specdecode's few-rows linear kernel: what the kernel alone gives, without speculation.
        with few_rows_linear(model):
            return plain(ids)

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
            if args.kernel_baseline:
                ref_kernel, t_plain_kernel = timed(plain_kernel, ids)
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
                    "plain_kernel_tps": (ref_kernel.shape[1] - ids.shape[1]) / t_plain_kernel if args.kernel_baseline else None,
                    "plain_kernel_identical": bool(torch.equal(ref_kernel, ref)) if args.kernel_baseline else None,
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
                + (f"plain+kernel {r['plain_kernel_tps']:5.1f}  " if r["plain_kernel_tps"] else "")
                + f"MAL {r['mal']:.2f} oracle {1 + r['oracle'][0] / max(r['oracle'][1], 1):.2f}  identical={r['identical']}",
                file=sys.stderr,
                flush=True,
            )

    print_table(rows, categories, best, config, n)
    if args.json:
        args.json.write_text(json.dumps({"config": config.to_dict(), "hf_setting": best, "rows": rows}, indent=1))
    return 0 if all(r["identical"] for r in rows) else 1


def print_table(rows, categories, best, config, n) -> None:
    kernel = all(r.get("plain_kernel_tps") for r in rows)
    print(f"\nngram {config.to_vllm()} vs plain generate vs transformers prompt lookup (K={best[0]}, "
          f"ngram={best[1]}); greedy, max_new_tokens={n}, median over prompts; linear kernel: {backend()}")
    header = (f"{'category':15s} {'n':>3s} {'plain tok/s':>11s} {'ours tok/s':>10s} {'HF tok/s':>8s} "
              f"{'ours/plain':>10s} {'ours/HF':>7s} {'HF/plain':>8s} "
              + (f"{'plain+k/plain':>13s} {'ours/plain+k':>12s} " if kernel else "")
              + f"{'acc.rate':>8s} {'MAL':>5s} {'oracle':>6s} {'outside fwd':>11s} {'identical':>9s}")
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
        kernel_cols = ""
        if kernel:
            kernel_cols = (f"{med(r['plain_kernel_tps'] / r['plain_tps'] for r in rs):12.2f}x "
                           f"{med(r['ours_tps'] / r['plain_kernel_tps'] for r in rs):11.2f}x ")
        print(
            f"{category:15s} {len(rs):3d} {med(r['plain_tps'] for r in rs):11.1f} {med(r['ours_tps'] for r in rs):10.1f} "
            f"{med(r['hf_tps'] for r in rs):8.1f} {med(r['ours_tps'] / r['plain_tps'] for r in rs):9.2f}x "
            f"{med(r['ours_tps'] / r['hf_tps'] for r in rs):6.2f}x {med(r['hf_tps'] / r['plain_tps'] for r in rs):7.2f}x "
            + kernel_cols
            + f"{(accepted / drafted if drafted else 0):8.1%} {(1 + accepted / steps if steps else 1):5.2f} "
            f"{(1 + oracle_accepted / oracle_steps if oracle_steps else 1):6.2f} {statistics.mean(r['outside_forward'] for r in rs):10.1%} "
            f"{sum(r['identical'] for r in rs):4d}/{len(rs)}"
        )
    if kernel:
        print("plain+k = plain generate on specdecode's linear kernel (no speculation); ours/plain+k = what "
              "speculation adds on top of the kernel.")

if __name__ == "__main__":
    raise SystemExit(main())
