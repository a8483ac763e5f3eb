"""Training data for a head: the target's own responses to Spec-Bench prompts, with its hidden states.

Split (fixed, so the benchmark never sees training prompts): Spec-Bench questions whose ``question_id % 4 == 0`` are
held out (20 per category, used by validation and benchmarks/bench_eagle.py); the others (60 per category) may be
used for training. Only the first turn of each question is used.

Collection is teacher forcing on the target's own greedy outputs: the prompt is prefilled, then the target decodes
its response in batches, and the last-layer hidden state of every token is kept. No second forward pass is needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import torch
from specdecode import ConfigError

QUESTIONS_ENV = "SPEC_BENCH_QUESTIONS"
QUESTIONS_FILE = "spec_bench_question.jsonl"
CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
HELD_OUT_MODULUS = 4


@attrs.frozen(kw_only=True)
class Question:
    question_id: int
    category: str  # one of CATEGORIES (MT-bench's own categories are folded into "mt_bench")
    text: str  # the first turn

    @property
    def held_out(self) -> bool:
        return self.question_id % HELD_OUT_MODULUS == 0


@attrs.frozen(kw_only=True)
class Sample:
    """One training sequence: tokens [T] and hidden [T, H] with hidden[t] = f_t (the state after reading token t)."""

    tokens: torch.Tensor
    hidden: torch.Tensor
    prompt_length: int


def find_questions(path: str | os.PathLike | None = None) -> Path:
    """The Spec-Bench question file: ``path``, $SPEC_BENCH_QUESTIONS, or ../shared/data/ beside the repository."""
    candidates = [path, os.environ.get(QUESTIONS_ENV)]
    repo = Path(__file__).resolve().parents[3]
    candidates += [Path.cwd() / ".." / "shared" / "data" / QUESTIONS_FILE, repo / ".." / "shared" / "data" / QUESTIONS_FILE]
    for candidate in candidates:
        if candidate is not None and Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        f"'questions' must be the path of Spec-Bench's {QUESTIONS_FILE} (got {path!r}; not found in "
        f"${QUESTIONS_ENV} or ../shared/data/)",
        field="questions",
        value=path,
    )


def load_questions(path: str | os.PathLike | None = None) -> list[Question]:
    out = []
    for line in find_questions(path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        qid = int(row["question_id"])
        category = "mt_bench" if 81 <= qid <= 160 else row["category"]
        out.append(Question(question_id=qid, category=category, text=row["turns"][0]))
    return out


def split(questions: Iterable[Question], *, held_out: bool) -> list[Question]:
    return [q for q in questions if q.held_out == held_out]


def round_robin(questions: list[Question], count: int) -> list[Question]:
    """Up to ``count`` questions taken in turn from each category, so a small budget still covers all six."""
    by_category = {c: [q for q in questions if q.category == c] for c in CATEGORIES}
    out: list[Question] = []
    index = 0
    while len(out) < count and any(index < len(v) for v in by_category.values()):
        for category in CATEGORIES:
            if index < len(by_category[category]) and len(out) < count:
                out.append(by_category[category][index])
        index += 1
    return out


def chat_prompt(tokenizer: Any, text: str, max_prompt_tokens: int | None = None) -> list[int]:
    """Token ids of ``text`` as a user turn in the target's chat template; the text is cut to fit the budget."""
    if max_prompt_tokens is not None:
        content = tokenizer(text, add_special_tokens=False)["input_ids"]
        overhead = len(_apply_template(tokenizer, "")) + 1
        if len(content) + overhead > max_prompt_tokens:
            text = tokenizer.decode(content[: max(max_prompt_tokens - overhead, 1)])
    return _apply_template(tokenizer, text)


def _apply_template(tokenizer: Any, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(text)["input_ids"]


@torch.inference_mode()
def collect(
    model: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    eos_token_ids: set[int],
    pad_token_id: int = 0,
    progress: Any = None,
) -> list[Sample]:
    """Greedy responses of ``model`` to ``prompts`` with the last-layer hidden state of every token.

    Prompts are left-padded into batches; each row's positions count from its first real token, so the states
    match an unpadded run up to floating-point noise.
    """
    from transformers import DynamicCache

    samples: list[Sample] = []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    for start in range(0, len(order), batch_size):
        batch = [prompts[i] for i in order[start : start + batch_size]]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(batch):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        cache = DynamicCache(config=model.config)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        states = model.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        hidden = [states.last_hidden_state]  # [b, width, H], then [b, 1, H] per decoded token
        tokens = [ids]
        finished = torch.zeros(len(batch), dtype=torch.bool)
        lengths = torch.full((len(batch),), max_new_tokens, dtype=torch.long)
        for step in range(max_new_tokens):
            next_token = model.lm_head(hidden[-1][:, -1]).argmax(dim=-1)  # [b]
            tokens.append(next_token.unsqueeze(1))
            is_eos = torch.tensor([int(t) in eos_token_ids for t in next_token])
            newly = is_eos & ~finished
            lengths[newly] = step + 1
            finished |= is_eos
            if bool(finished.all()) or step + 1 == max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones(len(batch), 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = model.model(
                input_ids=next_token.unsqueeze(1), attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True,
            )
            hidden.append(out.last_hidden_state)
        all_tokens = torch.cat(tokens, dim=1)
        all_hidden = torch.cat(hidden, dim=1)
        for row, prompt in enumerate(batch):
            pad = width - len(prompt)
            end = width + int(lengths[row])  # tokens: prompt + response (eos included)
            # The last token's own state was never computed (it is not read by the target): drop it from both ends.
            seq_tokens = all_tokens[row, pad:end]
            seq_hidden = all_hidden[row, pad : end - 1]
            samples.append(
                Sample(
                    tokens=seq_tokens[:-1].clone(),
                    hidden=seq_hidden.to(torch.float16).clone(),
                    prompt_length=len(prompt),
                )
            )
        if progress is not None:
            progress.update(len(batch))
    return samples
