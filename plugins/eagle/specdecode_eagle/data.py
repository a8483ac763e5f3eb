"""Training data for a head: the target's own responses to Spec-Bench prompts, with its hidden states.

Split (fixed, so the benchmark never sees training prompts): Spec-Bench questions whose ``question_id % 4 == 0`` are
held out (20 per category, used by validation and benchmarks/bench_eagle.py); the others (60 per category, 360 in
all) may be used for training: their first turns, and optionally the second turns of the MT-bench ones.

Collection is one pass: the target's greedy responses, generated in batches of left-padded prompts with plain
``model.generate`` (batching makes this several times faster than one prompt at a time on a CPU), recording the
last-layer hidden state of every token as generate computes it (the prefill for the prompt, each decode step for
the token it reads): the features specdecode's prefill and verify passes compute, with no second forward pass.
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
) -> tuple[list[list[int]], list[Sample]]:
    """Greedy responses of ``model`` to ``prompts`` and the hidden state of every token, in the prompts' order.

    Returns the responses (each cut after its first eos token) and one :class:`Sample` per prompt: prompt +
    response without its last token, whose state ``generate`` never computes (it is never fed back).

    Prompts of similar length are batched, left-padded, with plain ``model.generate``; its decode steps run
    specdecode's few-rows linear kernel (a step at batch 32 after a 300-token prompt: 350-370 ms against 460-520 ms
    with transformers' own products, 2 CPU threads). The
    states are the base model's ``last_hidden_state`` (post-norm, what the LM head reads), recorded by a forward
    hook on every call: the prefill gives the prompt's, each decode step the state of the token it read. The
    padded rows attend only to their own tokens, so these are the states an unpadded forward gives, up to rounding
    (a test checks)."""
    from specdecode.batching import left_pad
    from specdecode.kernels import few_rows_linear

    responses: list[list[int]] = [[] for _ in prompts]
    samples: list[Sample | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    eos = sorted(eos_token_ids)
    recorded: list[torch.Tensor] = []
    hook = model.base_model.register_forward_hook(lambda _m, _a, out: recorded.append(out.last_hidden_state))
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = left_pad([prompts[i] for i in rows], pad_token_id)
            width = ids.shape[1]
            recorded.clear()
            with few_rows_linear():
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=pad_token_id, eos_token_id=eos or None,
                )
            states = torch.cat(recorded, dim=1)  # [b, width + generated - 1, H]
            for row, i in enumerate(rows):
                response = out[row, width:].tolist()
                for t, token in enumerate(response):
                    if token in eos_token_ids:
                        response = response[: t + 1]
                        break
                responses[i] = response
                tokens = prompts[i] + response[:-1]
                hidden = states[row, width - len(prompts[i]) : width + len(response) - 1]
                samples[i] = Sample(tokens=torch.tensor(tokens), hidden=hidden.to(torch.float16),
                                    prompt_length=len(prompts[i]))
            if progress is not None:
                progress.update(len(rows))
    finally:
        hook.remove()
    return responses, samples  # type: ignore[return-value]
