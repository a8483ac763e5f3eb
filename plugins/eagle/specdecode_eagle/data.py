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
    """One training sequence: tokens [T] and hidden [T, H] with hidden[t] = f_t (the state after reading token t,
    last layer, post-norm: what the LM head reads). ``aux`` [T, k*H]: the states at k other layers (entries of
    transformers' ``output_hidden_states``, concatenated; EAGLE-3 reads them), when collected. ``prompt_length``:
    where the response starts (drafts from there on are what a generation asks of the head)."""

    tokens: torch.Tensor
    hidden: torch.Tensor
    prompt_length: int
    aux: torch.Tensor | None = None


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
    layers: tuple[int, ...] | None = None,
    temperature: float | None = None,
) -> tuple[list[list[int]], list[Sample]]:
    """Greedy responses of ``model`` to ``prompts`` (sampled at ``temperature`` when given: no top-k / top-p, the
    caller seeds torch) and the hidden state of every token, in the prompts' order.

    Returns the responses (each cut after its first eos token) and one :class:`Sample` per prompt: prompt +
    response without its last token, whose state ``generate`` never computes (it is never fed back).

    Prompts of similar length are batched, left-padded, with plain ``model.generate``; its decode steps run
    specdecode's few-rows linear kernel (a step at batch 32 after a 300-token prompt: 350-370 ms against 460-520 ms
    with transformers' own products, 2 CPU threads). The
    states are the base model's ``last_hidden_state`` (post-norm, what the LM head reads), recorded by a forward
    hook on every call: the prefill gives the prompt's, each decode step the state of the token it read. The
    padded rows attend only to their own tokens, so these are the states an unpadded forward gives, up to rounding
    (a test checks). ``layers``: also record the states at these entries of ``output_hidden_states`` (inputs of
    those decoder layers) as each sample's ``aux``, concatenated in that order."""
    from specdecode.toolkit import few_rows_linear, left_pad

    responses: list[list[int]] = [[] for _ in prompts]
    samples: list[Sample | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    eos = sorted(eos_token_ids)
    recorded: list[torch.Tensor] = []
    hook = model.base_model.register_forward_hook(lambda _m, _a, out: recorded.append(out.last_hidden_state))
    aux_hooks, aux_recorded = _record_layer_inputs(model, layers or ())
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = left_pad([prompts[i] for i in rows], pad_token_id)
            width = ids.shape[1]
            recorded.clear()
            for per_layer in aux_recorded:
                per_layer.clear()
            with few_rows_linear(model):
                decoding = {"do_sample": False} if temperature is None else {
                    "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                    eos_token_id=eos or None, **decoding,
                )
            states = torch.cat(recorded, dim=1)  # [b, width + generated - 1, H]
            aux = torch.cat([torch.cat(r, dim=1) for r in aux_recorded], dim=-1) if aux_recorded else None
            for row, i in enumerate(rows):
                response = out[row, width:].tolist()
                for t, token in enumerate(response):
                    if token in eos_token_ids:
                        response = response[: t + 1]
                        break
                responses[i] = response
                tokens = prompts[i] + response[:-1]
                span = slice(width - len(prompts[i]), width + len(response) - 1)
                samples[i] = Sample(tokens=torch.tensor(tokens), hidden=states[row, span].to(torch.float16),
                                    prompt_length=len(prompts[i]),
                                    aux=None if aux is None else aux[row, span].to(torch.float16))
            if progress is not None:
                progress.update(len(rows))
    finally:
        hook.remove()
        for h in aux_hooks:
            h.remove()
    return responses, samples  # type: ignore[return-value]


def _record_layer_inputs(model: Any, layers: tuple[int, ...]) -> tuple[list[Any], list[list[torch.Tensor]]]:
    """Forward pre-hooks that record the input of each listed decoder layer (entry i of transformers'
    ``output_hidden_states`` is the input of decoder layer i) on every forward call; -> (hooks, records)."""
    decoder = model.base_model.layers
    hooks, records = [], []
    for i in layers:
        if not 0 <= i < len(decoder):
            raise ConfigError(
                f"aux layer ids must be in 0..{len(decoder) - 1} (the inputs of the target's decoder layers; got {i})",
                field="aux_layers",
                value=list(layers),
            )
        record: list[torch.Tensor] = []

        def hook(_module: Any, args: tuple, kwargs: dict, record: list[torch.Tensor] = record) -> None:
            record.append(args[0] if args else kwargs["hidden_states"])

        hooks.append(decoder[i].register_forward_pre_hook(hook, with_kwargs=True))
        records.append(record)
    return hooks, records


@torch.inference_mode()
def teacher_force(
    model: Any,
    sequences: list[list[int]],
    prompt_lengths: list[int],
    *,
    layers: tuple[int, ...] | None = None,
    batch_tokens: int = 8192,
    progress: Any = None,
) -> list[Sample]:
    """The target's states over existing token sequences: one forward pass per sequence (prefill speed), no
    decoding. Returns one :class:`Sample` per sequence, in order, with ``hidden`` (last layer, post-norm: also the
    target's next-token distribution through its LM head, the soft labels) and, with ``layers``, ``aux``.

    Sequences of similar length share a forward pass, right-padded: a causal model's states at the real positions
    do not depend on later (padding) positions, so no mask is needed and they equal an unpadded forward's up to
    rounding (a test checks). The LM head is not run."""
    samples: list[Sample | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    aux_hooks, aux_recorded = _record_layer_inputs(model, layers or ())
    try:
        start = 0
        while start < len(order):
            rows = [order[start]]
            while start + len(rows) < len(order):
                longest = len(sequences[order[start + len(rows)]])
                if (len(rows) + 1) * longest > batch_tokens:
                    break
                rows.append(order[start + len(rows)])
            start += len(rows)
            width = max(len(sequences[i]) for i in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            for row, i in enumerate(rows):
                ids[row, : len(sequences[i])] = torch.as_tensor(sequences[i], dtype=torch.long)
            for per_layer in aux_recorded:
                per_layer.clear()
            states = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
            aux = torch.cat([r[0] for r in aux_recorded], dim=-1) if aux_recorded else None
            for row, i in enumerate(rows):
                n = len(sequences[i])
                # Copies, so a sample does not keep its whole batch alive (an fp16 target's .to() would be a view).
                samples[i] = Sample(tokens=ids[row, :n].clone(),
                                    hidden=states[row, :n].to(torch.float16, copy=True),
                                    prompt_length=prompt_lengths[i],
                                    aux=None if aux is None else aux[row, :n].to(torch.float16, copy=True))
            if progress is not None:
                progress.update(sum(len(sequences[i]) for i in rows))
    finally:
        for h in aux_hooks:
            h.remove()
    return samples  # type: ignore[return-value]


# Text for teacher forcing: conversations from a package installed from PyPI by name (no hub download at run time).
TEXT_SOURCES = {
    # name: (importable module, pip package, licence, what it is)
    "chitchat": ("chitchat_dataset", "chitchat-dataset", "MIT",
                 "BYU PCC lab's Chit-Chat Challenge: 7,168 open-domain English conversations between people"),
}


def text_source_file(name: str) -> Path | None:
    """The data file of text source ``name`` (a key of TEXT_SOURCES), or None when its package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(TEXT_SOURCES[name][0])
    return None if spec is None or spec.origin is None else Path(spec.origin).parent / "dataset.json"


def load_text_source(name: str) -> list[list[str]]:
    """The conversations of text source ``name`` (see TEXT_SOURCES): each a list of turns, speakers alternating.
    A source that is not installed is a ConfigError saying which package to install."""
    if name not in TEXT_SOURCES:
        raise ConfigError(f"'text_source' must be one of {sorted(TEXT_SOURCES)} or 'none' (got {name!r})",
                          field="text_source", value=name)
    package = TEXT_SOURCES[name][1]
    path = text_source_file(name)
    if path is None:
        raise ConfigError(f"text source {name!r} needs the {package!r} package: pip install "
                          f"'specdecode-eagle[train]' (or {package}), or give --text-source none",
                          field="text_source", value=name)
    raw = json.loads(path.read_text())
    conversations = []
    for key in sorted(raw):  # a fixed order, whatever the file's
        turns = [" ".join(m["text"].strip() for m in turn if m["text"].strip()) for turn in raw[key]["messages"]]
        turns = [t for t in turns if t]
        if len(turns) >= 2:
            conversations.append(turns)
    return conversations


def shingles(text: str, n: int = 10) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of ``text`` (for decontamination)."""
    words = "".join(c.lower() if c.isalnum() else " " for c in text).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def text_sequences(
    tokenizer: Any, conversations: list[list[str]], *, max_tokens: int, budget: int, seed: int = 0,
    exclude: set[tuple[str, ...]] | None = None,
) -> tuple[list[list[int]], list[int], int]:
    """Chat-template token sequences of at most ``max_tokens`` from ``conversations``, about ``budget`` tokens in
    all. Turns alternate user / assistant; a long conversation is cut at turn boundaries into windows that each start
    a new chat (a single turn too long for a window is cut). Conversations sharing a 10-word shingle with
    ``exclude`` (the held-out Spec-Bench prompts) are dropped. Returns (sequences, prompt lengths: where the first
    assistant turn starts, conversations dropped)."""
    import random

    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    sequences: list[list[int]] = []
    prompt_lengths: list[int] = []
    total = dropped = 0
    # Template tokens around a turn, and around a whole chat (the system prompt some templates add).
    probe = len(tokenizer("b", add_special_tokens=False)["input_ids"])
    one, two = len(_conversation_ids(tokenizer, ["b"])), len(_conversation_ids(tokenizer, ["b", "b"]))
    per_turn, fixed = two - one, max(one - (two - one), 0)
    per_turn = max(per_turn - probe, 0)
    for index in order:
        if total >= budget:
            break
        turns = conversations[index]
        if exclude and any(shingles(t) & exclude for t in turns):
            dropped += 1
            continue
        lengths = [len(ids) + per_turn for ids in tokenizer(turns, add_special_tokens=False)["input_ids"]]
        start = 0
        while start < len(turns) - 1:  # windows of at least two turns (a user turn and a reply)
            end, used = start, fixed
            while end < len(turns) and (used + lengths[end] <= max_tokens or end - start < 2):
                used += lengths[end]
                end += 1
            ids = _conversation_ids(tokenizer, turns[start:end])[:max_tokens]
            sequences.append(ids)
            prompt_lengths.append(min(len(_conversation_ids(tokenizer, turns[start : start + 1], prompt=True)),
                                      len(ids)))
            total += len(ids)
            start = end
    return sequences, prompt_lengths, dropped


def _conversation_ids(tokenizer: Any, turns: list[str], prompt: bool = False) -> list[int]:
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer("\n\n".join(turns))["input_ids"]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=prompt)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)
