"""Benchmark: plain ``model.generate`` against speculative variants on a prompt set (what ``specdecode bench`` runs).

Everything here is greedy, so every variant must reproduce plain generate's tokens exactly; each run is checked.
Prompts are interleaved (for each prompt: plain, then every variant) so that load changes on a shared machine hit
all variants alike. Speedup is computed per prompt (plain seconds per token / variant seconds per token) and
summarised by its median and interquartile range.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from .config import SpeculativeConfig
from .errors import ConfigError
from .plotting import pyplot
from .stats import GenerationStats

PLAIN = "plain generate"
HF_PROMPT_LOOKUP = "hf prompt lookup"


# -- prompts ----------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PromptRecord:
    id: str
    category: str
    text: str


def default_prompts_path() -> Path:
    """The project's own small prompt set (package data)."""
    return Path(str(resources.files("specdecode") / "data" / "prompts.jsonl"))


def load_prompts(
    path: str | Path | None = None, categories: Iterable[str] | None = None, limit: int | None = None
) -> list[PromptRecord]:
    """Prompts from a jsonl file: Spec-Bench rows (``turns``: the first turn is used) or rows with ``prompt``.

    ``categories`` keeps rows whose ``category`` is one of them; ``limit`` keeps the first N after filtering.
    Errors name the file and line.
    """
    path = Path(path) if path is not None else default_prompts_path()
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"'limit' must be an integer >= 1 (got {limit!r})", field="limit", value=limit)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"prompt file {str(path)!r} does not exist", field="prompts", value=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read prompt file {str(path)!r}: {exc}", field="prompts", value=str(path)) from None
    wanted = {c.strip() for c in categories} if categories else None
    records: list[PromptRecord] = []
    seen_categories: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse_prompt_line(path, number, line)
        seen_categories.add(record.category)
        if wanted is not None and record.category not in wanted:
            continue
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        detail = f" in categories {sorted(wanted)}; the file has {sorted(seen_categories)}" if wanted else ""
        raise ConfigError(f"no prompts found in {str(path)!r}{detail}", field="prompts", value=str(path))
    return records


def _parse_prompt_line(path: Path, number: int, line: str) -> PromptRecord:
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})", field="prompts") from None
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: each line must be a JSON object (got {type(row).__name__})", field="prompts")
    if "turns" in row:
        turns = row["turns"]
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise ConfigError(f"{where}: 'turns' must be a non-empty list of strings (got {turns!r:.80})", field="prompts")
        text = turns[0]
    elif "prompt" in row:
        text = row["prompt"]
    else:
        raise ConfigError(f"{where}: a row needs a 'turns' list (Spec-Bench) or a 'prompt' string", field="prompts")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: the prompt must be non-empty text (got {text!r:.80})", field="prompts")
    ident = row.get("question_id", row.get("id", number))
    return PromptRecord(id=str(ident), category=str(row.get("category", "default")), text=text)


# -- variants and runs ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Variant:
    """One thing compared against plain generate: a specdecode config, or transformers' own prompt lookup."""

    label: str
    config: SpeculativeConfig | None = None
    hf_generate_kwargs: dict[str, Any] = attrs.field(factory=dict)

    @property
    def k(self) -> int | None:
        if self.config is not None:
            return self.config.num_speculative_tokens
        return self.hf_generate_kwargs.get("prompt_lookup_num_tokens")

    @classmethod
    def speculative(cls, config: SpeculativeConfig, label: str | None = None) -> Variant:
        return cls(label=label or config.method, config=config)

    @classmethod
    def hf_prompt_lookup(cls, k: int, max_matching_ngram_size: int | None = None) -> Variant:
        kwargs: dict[str, Any] = {"prompt_lookup_num_tokens": k}
        if max_matching_ngram_size is not None:
            kwargs["max_matching_ngram_size"] = max_matching_ngram_size
        return cls(label=HF_PROMPT_LOOKUP, hf_generate_kwargs=kwargs)

    @property
    def key(self) -> str:
        return f"{self.label} K={self.k}" if self.k is not None else self.label


@attrs.define(kw_only=True)
class Run:
    """One prompt through one variant (or plain generate)."""

    prompt_id: str
    category: str
    variant: str  # Variant.key, or PLAIN
    new_tokens: int
    seconds: float
    identical: bool | None = None  # None for plain generate itself
    stats: GenerationStats | None = None

    @property
    def seconds_per_token(self) -> float:
        return self.seconds / max(self.new_tokens, 1)

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self, filter=lambda a, _: a.name != "stats")
        out["tokens_per_second"] = self.new_tokens / self.seconds if self.seconds > 0 else 0.0
        if self.stats is not None:
            out["stats"] = self.stats.to_dict()
        return out


@attrs.define(kw_only=True)
class VariantSummary:
    key: str
    label: str
    k: int | None
    prompts: int
    tokens_per_second: float
    speedup_median: float
    speedup_q1: float
    speedup_q3: float
    identical: int
    acceptance_rate: float | None
    mean_acceptance_length: float | None
    per_position_acceptance: list[float]
    speedup_by_category: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define(kw_only=True)
class BenchResult:
    variants: list[Variant]
    runs: list[Run] = attrs.field(factory=list)
    settings: dict[str, Any] = attrs.field(factory=dict)
    interrupted: bool = False

    def runs_of(self, key: str) -> list[Run]:
        return [r for r in self.runs if r.variant == key]

    def summaries(self) -> list[VariantSummary]:
        """Plain generate first, then each variant, over the prompts that plain generate finished."""
        plain = {r.prompt_id: r for r in self.runs_of(PLAIN)}
        out = [_summarise(PLAIN, PLAIN, None, list(plain.values()), plain)]
        for variant in self.variants:
            runs = [r for r in self.runs_of(variant.key) if r.prompt_id in plain]
            out.append(_summarise(variant.key, variant.label, variant.k, runs, plain))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "interrupted": self.interrupted,
            "summary": [s.to_dict() for s in self.summaries()],
            "runs": [r.to_dict() for r in self.runs],
        }


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3  # type: ignore[return-value]
    if len(values) == 1:
        return (values[0],) * 3  # type: ignore[return-value]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _summarise(key: str, label: str, k: int | None, runs: list[Run], plain: dict[str, Run]) -> VariantSummary:
    speedups = [plain[r.prompt_id].seconds_per_token / r.seconds_per_token for r in runs if r.seconds > 0]
    q1, median, q3 = _quartiles(speedups)
    by_category: dict[str, list[float]] = {}
    for r, s in zip(runs, speedups):
        by_category.setdefault(r.category, []).append(s)
    total_seconds = sum(r.seconds for r in runs)
    merged = None
    for r in runs:
        if r.stats is not None:
            merged = r.stats if merged is None else merged.merge(r.stats)
    return VariantSummary(
        key=key,
        label=label,
        k=k,
        prompts=len(runs),
        tokens_per_second=sum(r.new_tokens for r in runs) / total_seconds if total_seconds > 0 else 0.0,
        speedup_median=median,
        speedup_q1=q1,
        speedup_q3=q3,
        identical=sum(1 for r in runs if r.identical),
        acceptance_rate=merged.acceptance_rate if merged else None,
        mean_acceptance_length=merged.mean_acceptance_length if merged else None,
        per_position_acceptance=merged.per_position_acceptance if merged else [],
        speedup_by_category={c: statistics.median(v) for c, v in sorted(by_category.items())},
    )


# -- running ----------------------------------------------------------------------------------------------


def plain_generate(model: Any, input_ids: Any, max_new_tokens: int, **generate_kwargs: Any) -> list[int]:
    """Greedy ``model.generate``; returns the new token ids."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
    return out[0, input_ids.shape[1] :].tolist()


def speculative_generate(model: Any, input_ids: Any, config: SpeculativeConfig, max_new_tokens: int):
    from .generation import generate

    out = generate(model, input_ids, config, max_new_tokens=max_new_tokens, do_sample=False)
    return out.sequences[0, input_ids.shape[1] :].tolist(), out.stats


def run_bench(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[PromptRecord],
    variants: Sequence[Variant],
    *,
    max_new_tokens: int = 128,
    chat: bool = True,
    progress: bool = True,
    warmup: bool = True,
    on_run: Callable[[Run], None] | None = None,
) -> BenchResult:
    """Run every prompt through plain generate and every variant. Ctrl-C stops early and returns what finished
    (``result.interrupted`` is then True)."""
    from .models import encode_prompt, fit_to_context

    result = BenchResult(
        variants=list(variants),
        settings={"max_new_tokens": max_new_tokens, "chat_template": chat, "prompts": len(prompts), "greedy": True},
    )
    keys = [v.key for v in variants]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"bench variants must differ (got {keys}); give each a distinct label", field="variants")
    encoded = [encode_prompt(tokenizer, p.text, chat=chat) for p in prompts]
    bar = _bar(total=len(prompts) * (1 + len(variants)), enabled=progress)
    try:
        if warmup:  # the first calls pay one-off costs (allocator, kernels) that would count against one variant
            plain_generate(model, encoded[0], 4)
            for variant in variants:
                _run_variant(model, encoded[0], variant, 4)
        for record, ids in zip(prompts, encoded):
            new_max = fit_to_context(model, ids.shape[1], max_new_tokens)
            bar.set_postfix_str(f"prompt {record.id}: {PLAIN}")
            start = time.perf_counter()
            reference = plain_generate(model, ids, new_max)
            plain_run = Run(
                prompt_id=record.id,
                category=record.category,
                variant=PLAIN,
                new_tokens=len(reference),
                seconds=time.perf_counter() - start,
            )
            variant_runs = []
            bar.update()
            for variant in variants:
                bar.set_postfix_str(f"prompt {record.id}: {variant.key}")
                start = time.perf_counter()
                tokens, stats = _run_variant(model, ids, variant, new_max)
                seconds = time.perf_counter() - start
                variant_runs.append(
                    Run(
                        prompt_id=record.id,
                        category=record.category,
                        variant=variant.key,
                        new_tokens=len(tokens),
                        seconds=seconds,
                        identical=tokens == reference,
                        stats=stats,
                    )
                )
                bar.update()
            # A prompt counts only once all its runs are in, so an interrupted table compares like with like.
            for run in [plain_run, *variant_runs]:
                result.runs.append(run)
                if on_run is not None:
                    on_run(run)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        bar.close()
    return result


def _run_variant(model: Any, ids: Any, variant: Variant, max_new_tokens: int):
    if variant.config is not None:
        return speculative_generate(model, ids, variant.config, max_new_tokens)
    return plain_generate(model, ids, max_new_tokens, **variant.hf_generate_kwargs), None


def _bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="bench", unit="run", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


# -- reporting --------------------------------------------------------------------------------------------


def format_table(result: BenchResult, max_positions: int = 8) -> str:
    """A plain-text table of the summaries, plus the identity verdict."""
    header = ["method", "K", "prompts", "tok/s", "speedup median [IQR]", "accept", "mean len", "identical", "per-position acceptance"]
    rows = [header]
    for s in result.summaries():
        speedup = "1.00" if s.key == PLAIN else f"{s.speedup_median:.2f} [{s.speedup_q1:.2f}-{s.speedup_q3:.2f}]"
        positions = " ".join(f"{a:.2f}" for a in s.per_position_acceptance[:max_positions])
        rows.append(
            [
                s.label,
                "-" if s.k is None else str(s.k),
                str(s.prompts),
                f"{s.tokens_per_second:.1f}",
                speedup,
                "-" if s.acceptance_rate is None else f"{s.acceptance_rate:.1%}",
                "-" if s.mean_acceptance_length is None else f"{s.mean_acceptance_length:.2f}",
                "-" if s.key == PLAIN else f"{s.identical}/{s.prompts}",
                positions or "-",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(identity_verdict(result))
    if result.interrupted:
        lines.append("interrupted: the table covers the prompts that finished")
    return "\n".join(lines)


def identity_verdict(result: BenchResult) -> str:
    checked = [r for r in result.runs if r.identical is not None]
    mismatched = [r for r in checked if not r.identical]
    if not checked:
        return "greedy identity: nothing checked"
    if not mismatched:
        return f"greedy identity: all {len(checked)} outputs identical to plain generate"
    names = ", ".join(sorted({f"{r.variant} (prompt {r.prompt_id})" for r in mismatched})[:6])
    return f"greedy identity: {len(mismatched)} of {len(checked)} outputs DIFFER from plain generate: {names}"


def plot(result: BenchResult, path: str | Path) -> Path:
    """Speedup per category (bars per variant) and acceptance per draft position (a line per variant)."""
    plt = pyplot(path)

    summaries = [s for s in result.summaries() if s.key != PLAIN]
    categories = sorted({c for s in summaries for c in s.speedup_by_category})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(summaries), 1)
    for i, s in enumerate(summaries):
        xs = [j + i * width for j in range(len(categories))]
        bars = left.bar(xs, [s.speedup_by_category.get(c, 0.0) for c in categories], width=width, label=s.key)
        left.bar_label(bars, fmt="%.2f", fontsize=8)
        if s.per_position_acceptance:
            positions = range(1, len(s.per_position_acceptance) + 1)
            right.plot(positions, s.per_position_acceptance, marker="o", label=s.key)
    left.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    left.set_xticks([j + width * (len(summaries) - 1) / 2 for j in range(len(categories))])
    left.set_xticklabels(categories, rotation=20)
    left.set_ylabel("speedup vs plain generate (median)")
    left.set_title("Speedup per category")
    left.legend(fontsize=8)
    longest = max((len(s.per_position_acceptance) for s in summaries), default=0)
    right.set_xticks(range(1, longest + 1))
    right.set_xlabel("draft position")
    right.set_ylabel("acceptance rate")
    right.set_ylim(0, 1.05)
    right.set_title("Acceptance per draft position")
    if right.lines:
        right.legend(fontsize=8)
    fig.suptitle(f"specdecode bench: {result.settings.get('model', '')}, {len(result.runs_of(PLAIN))} prompts")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
