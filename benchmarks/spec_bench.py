"""Spec-Bench prompts for the benchmarks (../shared/data/spec_bench_question.jsonl beside the repository).

Six categories; MT-bench's questions (ids 81-160) carry their own sub-categories and count as ``mt_bench``.
``question_id % 4 == 0`` is the held-out split the eagle heads are never trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_question.jsonl"
CATEGORIES = ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]


def load(per_category: int, categories: list[str] = CATEGORIES, *, held_out: bool = False,
         path: Path = PATH) -> list[tuple[str, str]]:
    """(category, first turn) of up to ``per_category`` questions of each category, category by category;
    ``held_out``: only the held-out split."""
    out: dict[str, list[str]] = {c: [] for c in categories}
    for line in path.read_text().splitlines():
        item = json.loads(line)
        category = "mt_bench" if 81 <= item["question_id"] <= 160 else item["category"]
        if held_out and item["question_id"] % 4:
            continue
        if category in out and len(out[category]) < per_category:
            out[category].append(item["turns"][0])
    return [(c, p) for c in categories for p in out[c]]
