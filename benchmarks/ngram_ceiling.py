"""How much can prompt lookup gain on these outputs? Upper bounds from replaying the plain greedy outputs.

    .venv/bin/python benchmarks/bench_ngram.py --per-category 20 --json ngram.json
    .venv/bin/python benchmarks/ngram_ceiling.py ngram.json

No model runs here: every policy below replays the plain greedy output saved by bench_ngram.py, so it sees exactly
what the target would accept. Per category it prints the mean acceptance length per verify step (bonus token
included) and the decode speedup the verify-cost curve predicts (plain steps / sum of cost(k) over steps, with
cost(k) = 1 + cost_jump + cost_per_token * k from the ngram options; prefill excluded, so an upper bound) for:

* ``ours``: the ngram proposer as shipped (adaptive drafting);
* ``perfect stop``: the same candidate (latest occurrence of the longest suffix match), drafted exactly as far as
  the target will accept it: no drafting policy can beat this with this candidate;
* ``best occurrence n>=MIN``: a perfect pick among every earlier occurrence of every suffix n-gram: what verifying
  several candidates at once (a token tree) could reach at most;
* ``best occurrence n>=1``: the same with single-token matches allowed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import specdecode
from bench_ngram import proposer_replay, replay  # this directory is on sys.path when run as a script


def best_occurrence(min_n: int, max_n: int, max_k: int):
    """A perfect pick among every earlier occurrence of the suffix n-grams, min_n <= n <= max_n."""

    def run(prompt, reference):
        full = prompt + reference

        def propose(tokens, budget):
            length, best, best_start = len(tokens), 0, 0
            for n in range(min(max_n, length - 1), min_n - 1, -1):
                suffix = tokens[length - n :]
                for start in range(n, length):
                    if tokens[start - n : start] != suffix:
                        continue
                    a = 0
                    while a < budget and start + a < length and tokens[start + a] == full[length + a]:
                        a += 1
                    if a > best:
                        best, best_start = a, start
            return tokens[best_start : best_start + best]

        return replay(propose, prompt, reference, max_k)

    return run


def summarize(steps: list[tuple[int, int]], options) -> tuple[float, float]:
    """(mean tokens per verify step, predicted decode speedup)."""
    tokens = sum(a + 1 for _, a in steps)
    cost = sum(1.0 if d == 0 else 1.0 + options.cost_jump + options.cost_per_token * d for d, _ in steps)
    return tokens / len(steps), tokens / cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="the --json file written by bench_ngram.py")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    rows = [r for r in data["rows"] if "reference" in r]
    if not rows:
        parser.error(f"{args.results} has no saved outputs: rerun bench_ngram.py (it saves them with --json)")
    config = specdecode.SpeculativeConfig.from_dict(data["config"])
    max_k, window, options = config.num_speculative_tokens, config.prompt_lookup_window, config.options

    def shipped(prompt, reference, perfect_stop=False):  # the ngram factory does not look at the model
        proposer = specdecode.build_proposer(None, config)
        return proposer_replay(proposer, prompt, reference, max_k, perfect_stop)

    policies = {
        "ours": shipped,
        "perfect stop": lambda p, r: shipped(p, r, perfect_stop=True),
        f"best occurrence n>={window[0]}": best_occurrence(window[0], window[1], max_k),
        "best occurrence n>=1": best_occurrence(1, window[1], max_k),
    }
    print(f"ngram window {window}, K={max_k}, verify cost 1 + {options.cost_jump} + {options.cost_per_token} k; "
          "decode only, medians over prompts")
    print(f"{'category':15s} {'n':>3s} " + " ".join(f"{name:>26s}" for name in policies))
    for category in dict.fromkeys(r["category"] for r in rows):
        group = [r for r in rows if r["category"] == category]
        cells = []
        for run in policies.values():
            results = [summarize(run(r["prompt_ids"], r["reference"]), options) for r in group]
            mal = statistics.mean(x[0] for x in results)
            speedup = statistics.median(x[1] for x in results)
            cells.append(f"{f'MAL {mal:.2f}, {speedup:.2f}x':>26s}")
        print(f"{category:15s} {len(group):3d} " + " ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
