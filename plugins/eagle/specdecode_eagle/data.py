"""Training data for a head: the target's own responses to Spec-Bench prompts, with its hidden states.

Split (fixed, so the benchmark never sees training prompts): Spec-Bench questions whose ``question_id % 4 == 0`` are
held out (20 per category, used by validation and benchmarks/bench_eagle.py); the others (60 per category, 360 in
all) may be used for training: their first turns, and optionally the second turns of the MT-bench ones.

Collection has two phases:

1. responses: the target's greedy responses, generated in batches of left-padded prompts with plain
   ``model.generate`` (batching makes this several times faster than one prompt at a time on a CPU);
2. features: one teacher-forced forward pass per sequence (prompt + response, unpadded, no cache) gives the
   last-layer hidden state of every token, the same features the prefill and the verify passes of specdecode
   compute (no padding or batch neighbours involved).
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
    turns: tuple[str, ...] = ()  # every turn (the first is ``text``); MT-bench questions have two

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
        turns = tuple(row["turns"])
        out.append(Question(question_id=qid, category=category, text=turns[0], turns=turns))
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


CUT_MARK = "\n...\n"


def fit_text(tokenizer: Any, text: str, max_tokens: int) -> str:
    """``text`` cut to about ``max_tokens`` tokens by dropping its middle: the start (an instruction such as
    "Summarize:") and the end (RAG's question comes after its documents) are kept, a third and two thirds."""
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(content) <= max_tokens:
        return text
    head = max_tokens // 3
    return tokenizer.decode(content[:head]) + CUT_MARK + tokenizer.decode(content[-(max_tokens - head) :])


def chat_prompt(tokenizer: Any, text: str, max_prompt_tokens: int | None = None) -> list[int]:
    """Token ids of ``text`` as a user turn in the target's chat template; a text too long for
    ``max_prompt_tokens`` (template included) loses its middle (see :func:`fit_text`)."""
    if max_prompt_tokens is not None:
        text = fit_text(tokenizer, text, max_prompt_tokens_for_text(tokenizer, max_prompt_tokens))
    return _apply_template(tokenizer, [{"role": "user", "content": text}])


def max_prompt_tokens_for_text(tokenizer: Any, max_prompt_tokens: int) -> int:
    """How many tokens of user text fit a prompt of ``max_prompt_tokens`` tokens in the chat template."""
    overhead = len(_apply_template(tokenizer, [{"role": "user", "content": CUT_MARK}])) + 1
    return max(max_prompt_tokens - overhead, 2)


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation in the target's chat template, ready for the assistant's next turn."""
    return _apply_template(tokenizer, messages)


def _apply_template(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer("\n\n".join(m["content"] for m in messages))["input_ids"]


def generate_responses(
    model: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    eos_token_ids: set[int],
    pad_token_id: int = 0,
    progress: Any = None,
) -> list[list[int]]:
    """Greedy responses of ``model`` to ``prompts`` (in the prompts' order), each cut after its first eos token.

    Prompts of similar length are batched, left-padded, with plain ``model.generate``. Its decode steps run
    specdecode's few-rows linear kernel (the same products, computed as ``W @ x^T``; about 1.6x faster per row at
    batch 16 on a CPU)."""
    from specdecode.batching import left_pad
    from specdecode.kernels import few_rows_linear

    responses: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    eos = sorted(eos_token_ids)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = left_pad([prompts[i] for i in rows], pad_token_id)
        width = ids.shape[1]
        with torch.inference_mode(), few_rows_linear():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=pad_token_id, eos_token_id=eos or None,
            )
        for row, i in enumerate(rows):
            response = out[row, width:].tolist()
            for t, token in enumerate(response):
                if token in eos_token_ids:
                    response = response[: t + 1]
                    break
            responses[i] = response
        if progress is not None:
            progress.update(len(rows))
    return responses


@torch.inference_mode()
def teacher_forced(model: Any, sequences: list[list[int]], prompt_lengths: list[int], progress: Any = None) -> list[Sample]:
    """The last-layer (post-norm) hidden state of every token of each sequence: one unpadded forward pass each."""
    base = model.base_model
    samples = []
    for tokens, prompt_length in zip(sequences, prompt_lengths):
        ids = torch.tensor([tokens])
        hidden = base(input_ids=ids, use_cache=False).last_hidden_state[0]  # [T, H]
        samples.append(Sample(tokens=ids[0], hidden=hidden.to(torch.float16), prompt_length=prompt_length))
        if progress is not None:
            progress.update(1)
    return samples


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
    """Greedy responses of ``model`` to ``prompts`` with the hidden state of every prompt and response token, in
    the prompts' order. ``progress`` (a tqdm-like bar) advances once per prompt in each phase."""
    responses = generate_responses(
        model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, eos_token_ids=eos_token_ids,
        pad_token_id=pad_token_id, progress=progress,
    )
    sequences = [p + r for p, r in zip(prompts, responses)]
    return teacher_forced(model, sequences, [len(p) for p in prompts], progress=progress)
