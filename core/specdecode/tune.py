"""Tune K (and the n-gram window) for one model and method: "start with K=5, tune on acceptance", automated.

Two measurements feed a prediction:

* the verify-cost curve: seconds of one target forward over n = 1..K+1 tokens appended to a KV cache (on a CPU it
  grows with n, so Leviathan's "a verify costs one forward" does not hold and must be measured);
* the acceptance rate alpha of each setting, from real greedy runs on a prompt sample.

Predicted speedup (Leviathan et al. 2023, eq. for the expected tokens per step, with the measured costs)::

    tokens per step  E = (1 - alpha^(K+1)) / (1 - alpha)
    speedup          = E * cost(1) / (cost(K+1) + draft seconds per step)

The same runs give the measured speedup against plain generate; the recommendation is the setting that measured
fastest. Sweep order: K with the configured window, then (ngram only) the window at the best K.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from .bench import PLAIN, BenchResult, PromptRecord, Variant, run_bench
from .cache import cache_kwarg_name, crop_to, keep_past, new_cache
from .config import SpeculativeConfig
from .costs import expected_tokens
from .errors import ConfigError
from .plotting import pyplot

DEFAULT_K_VALUES = (1, 2, 3, 4, 5, 6, 8)
DEFAULT_WINDOWS = ((1, 3), (2, 4), (3, 5))


@attrs.frozen(kw_only=True)
class CostCurve:
    """Median seconds of a target forward over ``n`` new tokens on a KV cache holding ``context`` tokens."""

    context: int
    seconds: dict[int, float]

    def relative(self, n: int) -> float:
        return self.seconds[n] / self.seconds[1]


def measure_verify_costs(model: Any, input_ids: Any, max_tokens: int, repeats: int = 5) -> CostCurve:
    """Time target forwards over 1..max_tokens tokens appended to the cache of ``input_ids`` [1, T]."""
    import torch

    from .kernels import few_rows_linear

    cache_kwarg = cache_kwarg_name(model)
    cache = new_cache(model)
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    # The same linear kernels as specdecode's own forwards (kernels.py), so the curve is the loop's.
    with torch.inference_mode(), few_rows_linear(model):
        model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
        keep_past(cache)
        context = cache.get_seq_length()
        times: dict[int, list[float]] = {n: [] for n in range(1, max_tokens + 1)}
        # Round-robin over n (the first round is a warm-up) so a burst of load on a shared machine spreads
        # over all points instead of bending one of them.
        for round_ in range(repeats + 1):
            for n in times:
                ids = torch.randint(0, vocab, (1, n), generator=generator)
                start = time.perf_counter()
                model(input_ids=ids, use_cache=True, **{cache_kwarg: cache})
                if round_ > 0:
                    times[n].append(time.perf_counter() - start)
                crop_to(cache, context)
        seconds = {n: statistics.median(t) for n, t in times.items()}
    return CostCurve(context=int(input_ids.shape[1]), seconds=seconds)


def predicted_speedup(alpha: float, k: int, costs: CostCurve, draft_seconds_per_step: float = 0.0) -> float:
    return expected_tokens(alpha, k) * costs.seconds[1] / (costs.seconds[k + 1] + draft_seconds_per_step)


@attrs.define(kw_only=True)
class TunePoint:
    k: int
    window: tuple[int, int] | None
    acceptance_rate: float
    mean_acceptance_length: float
    draft_seconds_per_step: float
    verify_cost: float  # cost(K+1) / cost(1)
    predicted_speedup: float
    measured_speedup: float
    measured_q1: float
    measured_q3: float
    identical: int
    prompts: int
    config: SpeculativeConfig = attrs.field(repr=False)

    def label(self) -> str:
        window = f" window {self.window[0]}:{self.window[1]}" if self.window else ""
        return f"K={self.k}{window}"

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self, filter=lambda a, _: a.name != "config")
        out["config"] = self.config.to_vllm()
        return out


@attrs.define(kw_only=True)
class TuneResult:
    method: str
    costs: CostCurve
    points: list[TunePoint] = attrs.field(factory=list)
    plain_tokens_per_second: float = 0.0
    interrupted: bool = False

    @property
    def best(self) -> TunePoint | None:
        return max(self.points, key=lambda p: p.measured_speedup, default=None)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "method": self.method,
            "verify_cost_seconds": {str(n): s for n, s in self.costs.seconds.items()},
            "context_tokens": self.costs.context,
            "plain_tokens_per_second": self.plain_tokens_per_second,
            "points": [p.to_dict() for p in self.points],
            "recommended": best.to_dict() if best else None,
            "interrupted": self.interrupted,
        }


def tune(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[PromptRecord],
    base: SpeculativeConfig,
    *,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    windows: Sequence[tuple[int, int]] | None = None,
    max_new_tokens: int = 64,
    chat: bool = True,
    repeats: int = 5,
    progress: bool = True,
) -> TuneResult:
    """Sweep K (then, for ngram, the window at the best K) and measure; see the module docstring."""
    from .models import encode_prompt

    if not k_values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in k_values):
        raise ConfigError(f"'k_values' must be integers >= 1 (got {list(k_values)!r})", field="k_values", value=k_values)
    sample = encode_prompt(tokenizer, prompts[0].text, chat=chat)
    costs = measure_verify_costs(model, sample, max(k_values) + 1, repeats=repeats)
    result = TuneResult(method=base.method, costs=costs)

    configs = [base.evolve(num_speculative_tokens=k) for k in sorted(set(k_values))]
    bench = run_bench(model, tokenizer, prompts, [Variant.speculative(c) for c in configs],
                      max_new_tokens=max_new_tokens, chat=chat, progress=progress)
    _add_points(result, bench, configs)
    if base.method == "ngram" and not bench.interrupted and result.best is not None:
        windows = DEFAULT_WINDOWS if windows is None else windows
        current = base.prompt_lookup_window
        best_k = result.best.k
        configs = [
            base.evolve(num_speculative_tokens=best_k, prompt_lookup_min=lo, prompt_lookup_max=hi)
            for lo, hi in dict.fromkeys(windows)
            if (lo, hi) != current
        ]
        if configs:
            variants = [Variant.speculative(c, label=f"ngram {c.prompt_lookup_window}") for c in configs]
            bench = run_bench(model, tokenizer, prompts, variants,
                              max_new_tokens=max_new_tokens, chat=chat, progress=progress, warmup=False)
            _add_points(result, bench, configs)
    result.interrupted = bench.interrupted
    return result


def _add_points(result: TuneResult, bench: BenchResult, configs: Sequence[SpeculativeConfig]) -> None:
    summaries = {s.key: s for s in bench.summaries()}
    result.plain_tokens_per_second = summaries[PLAIN].tokens_per_second
    for config, variant in zip(configs, bench.variants):
        s = summaries[variant.key]
        stats = [r.stats for r in bench.runs_of(variant.key) if r.stats is not None]
        if not stats:
            continue
        steps = sum(st.steps for st in stats)
        draft_seconds = sum(st.time_proposer for st in stats) / steps if steps else 0.0
        alpha = s.acceptance_rate or 0.0
        k = config.num_speculative_tokens
        result.points.append(
            TunePoint(
                k=k,
                window=config.prompt_lookup_window if config.method == "ngram" else None,
                acceptance_rate=alpha,
                mean_acceptance_length=s.mean_acceptance_length or 1.0,
                draft_seconds_per_step=draft_seconds,
                verify_cost=result.costs.relative(k + 1),
                predicted_speedup=predicted_speedup(alpha, k, result.costs, draft_seconds),
                measured_speedup=s.speedup_median,
                measured_q1=s.speedup_q1,
                measured_q3=s.speedup_q3,
                identical=s.identical,
                prompts=s.prompts,
                config=config,
            )
        )


def format_report(result: TuneResult) -> str:
    from .kernels import backend

    lines = [
        f"verify cost (target forward on a {result.costs.context}-token cache, median; "
        f"CPU linear kernel: {backend()}):"
    ]
    base = result.costs.seconds[1]
    lines.append(
        "  " + "  ".join(f"{n}:{s * 1000:.1f}ms({s / base:.2f}x)" for n, s in result.costs.seconds.items())
    )
    lines.append(f"plain generate: {result.plain_tokens_per_second:.1f} tok/s")
    header = ["setting", "accept", "mean len", "draft ms/step", "verify cost", "predicted", "measured [IQR]", "identical"]
    rows = [header]
    for p in result.points:
        rows.append(
            [
                p.label(),
                f"{p.acceptance_rate:.1%}",
                f"{p.mean_acceptance_length:.2f}",
                f"{p.draft_seconds_per_step * 1000:.2f}",
                f"{p.verify_cost:.2f}x",
                f"{p.predicted_speedup:.2f}",
                f"{p.measured_speedup:.2f} [{p.measured_q1:.2f}-{p.measured_q3:.2f}]",
                f"{p.identical}/{p.prompts}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    best = result.best
    if best is None:
        lines.append("no setting finished; nothing to recommend")
    elif best.measured_speedup <= 1.0:
        lines.append(
            f"recommendation: no speculation with {result.method} on this machine (best was {best.label()} at "
            f"{best.measured_speedup:.2f}x)"
        )
    else:
        flags = f"--method {result.method} -k {best.k}"
        if best.window:
            flags += f" --prompt-lookup-min {best.window[0]} --prompt-lookup-max {best.window[1]}"
        lines.append(f"recommendation: {best.label()} ({best.measured_speedup:.2f}x measured): {flags}")
    if result.interrupted:
        lines.append("interrupted: partial sweep")
    return "\n".join(lines)


def plot(result: TuneResult, path: str | Path) -> Path:
    """Verify-cost curve on the left; predicted and measured speedup per setting on the right."""
    plt = pyplot(path)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    ns = list(result.costs.seconds)
    left.plot(ns, [result.costs.seconds[n] * 1000 for n in ns], marker="o")
    left.set_xticks(ns)
    left.set_xlabel("tokens in one target forward (K+1)")
    left.set_ylabel("milliseconds (median)")
    left.set_title(f"Verify cost on a {result.costs.context}-token KV cache")
    left.set_ylim(bottom=0)
    labels = [p.label() for p in result.points]
    xs = range(len(labels))
    right.plot(xs, [p.predicted_speedup for p in result.points], marker="o", label="predicted (Leviathan)")
    right.plot(xs, [p.measured_speedup for p in result.points], marker="s", label="measured (median)")
    right.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    right.set_xticks(list(xs))
    right.set_xticklabels(labels, rotation=30, fontsize=8)
    right.set_ylabel("speedup vs plain generate")
    right.set_title(f"{result.method}: predicted vs measured")
    right.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
