"""Tokens per wall-minute and per CPU-minute of train-eagle's two data routes on SmolLM2-135M-Instruct.

    .venv/bin/python benchmarks/eagle_data_routes.py --threads 2

* teacher forcing: ``--text-tokens`` tokens of chitchat conversations (the chitchat-dataset package) in the chat
  template, windows of up to 512 tokens, one forward pass per sequence (specdecode_eagle.data.teacher_force);
* decode: the target's greedy responses (``--max-new-tokens``) to ``--prompts`` training-split Spec-Bench prompts in
  one batched ``generate`` on specdecode's kernel (specdecode_eagle.data.collect), as train-eagle collects them.

Both record the last layer and the EAGLE-3 aux layers. CPU time is the process's (all threads).
"""

from __future__ import annotations

import argparse
import time

import torch
from specdecode.models import load_model
from specdecode_eagle.data import (
    chat_prompt,
    collect,
    load_questions,
    load_text_source,
    round_robin,
    split,
    teacher_force,
    text_sequences,
)
from specdecode_eagle.eagle3 import default_aux_layers


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def report(name: str, tokens: int, start: tuple[float, float], end: tuple[float, float], extra: str = "") -> None:
    wall, cpu = end[0] - start[0], end[1] - start[1]
    print(f"| {name} | {tokens} | {wall:.1f} s | {cpu:.1f} s | {tokens / wall * 60:.0f} | {tokens / cpu * 60:.0f} |"
          f"{extra}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text-tokens", type=int, default=40_000)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    layers = default_aux_layers(int(model.config.num_hidden_layers))
    sequences, prompt_lengths, _ = text_sequences(tokenizer, load_text_source("chitchat"), max_tokens=512,
                                                  budget=args.text_tokens, seed=1)
    print("| route | tokens | wall | CPU | tokens / wall-minute | tokens / CPU-minute |")
    print("|---|---|---|---|---|---|")
    start = clock()
    samples = teacher_force(model, sequences, prompt_lengths, layers=layers)
    report("teacher-forced text", sum(len(s.tokens) for s in samples), start, clock())

    questions = round_robin(split(load_questions(), held_out=False), 2 * args.prompts)[args.prompts :]
    prompts = [chat_prompt(tokenizer, q.text, 320) for q in questions]
    eos = model.generation_config.eos_token_id
    start = clock()
    responses, samples = collect(model, prompts, max_new_tokens=args.max_new_tokens, batch_size=len(prompts),
                                 eos_token_ids=set(eos if isinstance(eos, list) else [eos]) - {None},
                                 pad_token_id=tokenizer.pad_token_id or 0, layers=layers)
    end = clock()
    report("decode (prompts + responses)", sum(len(s.tokens) for s in samples), start, end)
    report("decode, generated tokens only", sum(len(r) for r in responses), start, end)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
