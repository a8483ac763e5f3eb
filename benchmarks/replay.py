"""Replay proposers against plain ``generate``'s greedy output: compare drafting policies without timing noise.

Under greedy decoding, which drafts the target accepts depends only on the output it will produce, and that output
is plain ``generate``'s whatever the proposer does. So a proposer can be driven step by step against that output
(its ``start`` / ``propose`` / ``on_verified`` calls, with the target states of one teacher-forced pass), and each
verify pass charged by a table of measured forward times (rows x cache length) instead of being run. What is left to
chance is only the proposer's own time, which is measured as it runs. On a busy 2-core machine a category's speedup
moves by up to 0.1 between two real runs of the same code; a replay gives the same number twice, so policies that
differ by a few percent can be told apart (then confirm the winner with bench_eagle.py / compare_methods.py).

    .venv/bin/python benchmarks/replay.py --skip 5 --per-category 8 '{"method": "eagle3"}' \\
        '{"method": "eagle3", "method_options": {"head_prompt_tokens": null}}' '{"method": "ngram"}'

Each argument is a SpeculativeConfig as JSON (K defaults to ``--k``). Prompts as in compare_methods.py: held-out
Spec-Bench prompts, ``--skip`` per category first (``--skip 5`` leaves the benchmarks' own prompts alone, so tuning
on a replay does not tune on the benchmark). Printed per category: mean acceptance length / decode speedup over plain
decoding on the kernel / end-to-end speedup (the prefill, measured once per prompt, added to both sides).

The cost table (``--costs FILE``: read if it exists, else measured and written there) holds the median time of one
forward over 1..16 new rows after caches of several lengths, as the loop runs them (the few-rows kernel, the 4-D
masks of more than one row, grouped K/V heads read in place); plain decoding is charged its 1-row time at each
length. Both sides pay ``--step-overhead`` ms per step for the loop's own work. What a replay leaves out: the
loop's per-step work beyond that constant (tree masks, acceptance over more rows) and anything that differs between
a real verify pass and the table. Greedy only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from compare_methods import add_config_arguments, configs_and_categories, selected_prompts
from specdecode import ProposeRequest, SamplingParams, StartContext, VerifyResult
from specdecode.attention import grouped_kv_in_place
from specdecode.generation import build_proposer
from specdecode.kernels import few_rows_linear
from specdecode.loop import select_hidden_states
from specdecode.models import load_model
from transformers import DynamicCache
from verify_rows import verify_inputs

CONTEXTS = (128, 512, 1024, 1536)
MAX_ROWS = 16


def measure_costs(model, rounds: int) -> dict[str, list[float]]:
    """{context: [ms of a forward over 1..MAX_ROWS rows]} (medians over ``rounds``, row counts interleaved)."""
    table = {}
    for past in CONTEXTS:
        prompt = torch.randint(100, 10000, (1, past), generator=torch.Generator().manual_seed(past))
        times: dict[int, list[float]] = {n: [] for n in range(1, MAX_ROWS + 1)}
        with torch.inference_mode(), few_rows_linear(model), grouped_kv_in_place(model):  # as the loop runs
            cache = DynamicCache(config=model.config)
            model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
            for _ in range(rounds):
                for n in times:
                    ids = torch.randint(100, 10000, (1, n))
                    extra = verify_inputs(past, n)
                    start = time.perf_counter()
                    model(input_ids=ids, cache=cache, use_cache=True, output_hidden_states=True, **extra)
                    times[n].append((time.perf_counter() - start) * 1000)
                    cache.crop(-n)
        table[str(past)] = [statistics.median(times[n]) for n in times]
        print(f"cost table, cache {past}: " + " ".join(f"{n}:{ms:.1f}" for n, ms in zip(times, table[str(past)])),
              file=sys.stderr, flush=True)
    return table


class Costs:
    """Milliseconds of a forward over ``rows`` new rows after ``context`` cached tokens, interpolated in context."""

    def __init__(self, table: dict[str, list[float]]):
        self.points = sorted((int(c), ms) for c, ms in table.items())

    def __call__(self, rows: int, context: int) -> float:
        def at(ms: list[float]) -> float:
            if rows <= len(ms):
                return ms[rows - 1]
            return ms[-1] * rows / len(ms)  # past the table: linear in rows (rare)

        points = self.points
        if context <= points[0][0]:
            return at(points[0][1])
        for (c0, ms0), (c1, ms1) in zip(points, points[1:]):
            if context <= c1:
                w = (context - c0) / (c1 - c0)
                return at(ms0) * (1 - w) + at(ms1) * w
        return at(points[-1][1])


def reference(model, ids: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], float]:
    """Plain greedy output, the target's hidden states over it (every layer), and the prompt's prefill in ms."""
    with torch.inference_mode(), few_rows_linear(model):
        seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
        hidden = model(input_ids=seq, output_hidden_states=True, logits_to_keep=1).hidden_states
        start = time.perf_counter()
        model(input_ids=ids, logits_to_keep=1)
        prefill_ms = (time.perf_counter() - start) * 1000
    return seq, hidden, prefill_ms


def replay(model, config, prompt_len: int, seq: torch.Tensor, states, costs: Costs, overhead_ms: float) -> dict:
    """Drive ``config``'s proposer along ``seq`` (prompt + plain greedy output) as the loop would."""
    proposer = build_proposer(model, config)
    hidden = select_hidden_states(states, proposer.hidden_state_layers) if proposer.needs_hidden_states else None
    sampling, total, k_max = SamplingParams(), seq.shape[1], config.num_speculative_tokens
    ones = lambda n: torch.ones(1, n, dtype=torch.long)  # noqa: E731
    cur = prompt_len + 1  # the prompt and the token the prefill picked
    proposer_s, verify_ms, steps, drafting, accepted = 0.0, 0.0, 0, 0, 0
    with torch.inference_mode(), few_rows_linear(model, *proposer.torch_modules()):
        start = time.perf_counter()
        proposer.start(StartContext(
            input_ids=seq[:, :cur], attention_mask=ones(cur), num_speculative_tokens=k_max, sampling=sampling,
            generator=None, hidden_states=None if hidden is None else hidden[:, :prompt_len], trees=True))
        proposer_s += time.perf_counter() - start
        while cur < total:
            budget = min(k_max, total - cur - 1)
            draft, parents = [], None
            if budget > 0:
                start = time.perf_counter()
                proposal = proposer.propose(ProposeRequest(
                    input_ids=seq[:, :cur], attention_mask=ones(cur), num_tokens=budget,
                    active=torch.ones(1, dtype=torch.bool), sampling=sampling, generator=None))
                proposer_s += time.perf_counter() - start
                length = proposal.num_tokens if proposal.lengths is None else int(proposal.lengths[0])
                draft, parents = proposal.token_ids[0, :length].tolist(), proposal.parents
            if parents is None:
                parents = tuple(range(-1, len(draft) - 1))
            node, n = -1, 0  # walk the drafts along the output: the longest accepted path
            while n < budget and cur + n < total - 1:
                node = next((i for i, (p, t) in enumerate(zip(parents, draft))
                             if p == node and t == int(seq[0, cur + n])), None)
                if node is None:
                    break
                n += 1
            verify_ms += costs(1 + len(draft), cur) + overhead_ms
            steps += 1
            if draft:
                drafting += 1
                accepted += n
            new = cur + n + 1
            if new < total:
                start = time.perf_counter()
                proposer.on_verified(VerifyResult(
                    input_ids=seq[:, :new], attention_mask=ones(new), num_drafted=torch.tensor([len(draft)]),
                    num_accepted=torch.tensor([n]), next_tokens=seq[:, new - 1], num_accepted_list=[n],
                    hidden_states=None if hidden is None else hidden[:, cur - 1 : cur + n]))
                proposer_s += time.perf_counter() - start
            cur = new
        proposer.finish()
    plain_ms = sum(costs(1, c) + overhead_ms for c in range(prompt_len + 1, total))
    return {"ms": verify_ms + proposer_s * 1000, "proposer_ms": proposer_s * 1000, "plain_ms": plain_ms,
            "steps": steps, "drafting": drafting, "accepted": accepted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, skip=5, per_category=8)
    parser.add_argument("--costs", type=Path, help="cost table JSON: read if it exists, else measured and written")
    parser.add_argument("--cost-rounds", type=int, default=15, help="rounds per row count when measuring costs")
    parser.add_argument("--step-overhead", type=float, default=0.8, help="ms of loop work per step (both sides)")
    parser.add_argument("--per-prompt", action="store_true", help="also print every prompt's decode speedup")
    args = parser.parse_args(argv)
    chosen = configs_and_categories(args, "replay")
    if chosen is None:
        return 2
    configs, categories = chosen
    model, tokenizer = load_model(args.model)
    if args.costs is not None and args.costs.exists():
        table = json.loads(args.costs.read_text())
    else:
        table = measure_costs(model, args.cost_rounds)
        if args.costs is not None:
            args.costs.write_text(json.dumps(table, indent=1))
    costs = Costs(table)
    prompts = selected_prompts(tokenizer, args, categories)
    results: list[dict[str, list[dict]]] = [{c: [] for c in categories} for _ in configs]
    for number, (question, ids) in enumerate(prompts, 1):
        seq, states, prefill_ms = reference(model, ids, args.max_new_tokens)
        for i, config in enumerate(configs):
            row = replay(model, config, ids.shape[1], seq, states, costs, args.step_overhead)
            results[i][question.category].append({**row, "prefill_ms": prefill_ms})
        print(f"[{number}/{len(prompts)}] q{question.question_id} {question.category}", file=sys.stderr, flush=True)
        del states

    def summary(rows: list[dict]) -> str:
        mal = (sum(r["accepted"] for r in rows) + sum(r["drafting"] for r in rows)) / max(
            sum(r["drafting"] for r in rows), 1)
        decode = sum(r["plain_ms"] for r in rows) / sum(r["ms"] for r in rows)
        e2e = sum(r["plain_ms"] + r["prefill_ms"] for r in rows) / sum(r["ms"] + r["prefill_ms"] for r in rows)
        return f"{mal:.2f} / {decode:.2f}x / {e2e:.2f}x"

    print("MAL / decode speedup / end-to-end speedup, over plain decoding on the kernel (replayed)")
    print("| config | " + " | ".join(categories) + " | all | proposer's share |")
    print("|---" * (len(categories) + 3) + "|")
    for text, rows in zip(args.configs, results):
        every = [r for c in categories for r in rows[c]]
        share = sum(r["proposer_ms"] for r in every) / sum(r["ms"] for r in every)
        print(f"| `{text}` | " + " | ".join(summary(rows[c]) for c in categories)
              + f" | {summary(every)} | {share:.1%} |")
        if args.per_prompt:
            print("  per prompt (decode): " + " ".join(f"{r['plain_ms'] / r['ms']:.2f}" for r in every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
