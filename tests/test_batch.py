"""Batched generation: ragged prompts, per-sequence acceptance and stops, batch-size policies, sampling in a batch."""

from __future__ import annotations

import pytest
import specdecode
import torch
from specdecode import Proposal, Proposer, ProposeRequest, SpeculativeConfig, batching
from specdecode.testing import repetitive_prompts

from .helpers import ScriptedPlugin

PAD = -7  # never a real token, so the padding in the outputs is easy to check


def left_pad(prompts: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, T_b] prompts -> left-padded ids [B, T] and attention mask [B, T]."""
    return batching.left_pad([p[0] for p in prompts], pad)


def plain_alone(model, prompt: torch.Tensor, max_new: int, eos=None) -> list[int]:
    """Greedy continuation of one prompt generated alone by transformers."""
    kwargs = {"eos_token_id": eos} if eos is not None else {"min_new_tokens": max_new}
    out = model.generate(prompt, do_sample=False, max_new_tokens=max_new, **kwargs)
    return out[0, prompt.shape[1] :].tolist()


def generated_rows(out, prompt_width: int) -> list[list[int]]:
    """Each sequence's generated tokens; checks that only the pad token follows them."""
    rows = []
    for b, stats in enumerate(out.sequence_stats):
        row = out.sequences[b, prompt_width:].tolist()
        assert all(t == PAD for t in row[stats.new_tokens :]), f"row {b} is not right-padded: {row}"
        rows.append(row[: stats.new_tokens])
    return rows


class StaggeredOracle(Proposer):
    """Per sequence: the target's own greedy continuation (known in advance), wrong after a prefix whose length
    depends on the row and the step, and (on odd rows) one token shorter than asked. Rows therefore accept
    different numbers of tokens at every step, which is what leaves holes in the shared cache."""

    def __init__(self, model, continuations: list[list[int]]):
        self.vocab = model.config.vocab_size
        self.continuations = continuations
        self.calls = 0
        self.active_seen: list[list[bool]] = []

    def start(self, context) -> None:
        self.prompt_lengths = (context.attention_mask.sum(dim=1) - 1).tolist()

    def propose(self, request: ProposeRequest) -> Proposal:
        k = request.num_tokens
        batch = request.input_ids.shape[0]
        self.active_seen.append(request.active.tolist())
        drafts = torch.zeros(batch, k, dtype=torch.long)
        lengths = torch.zeros(batch, dtype=torch.long)
        done = (request.attention_mask.sum(dim=1)).tolist()
        for b in range(batch):
            if not request.active[b]:
                continue
            generated = done[b] - self.prompt_lengths[b]
            right = torch.tensor(self.continuations[b][generated : generated + k])
            keep = (b + self.calls) % (k + 1)  # correct prefix length
            drafts[b] = torch.where(torch.arange(k) < keep, right, (right + 1) % self.vocab)
            lengths[b] = k - (b % 2)
        self.calls += 1
        return Proposal(token_ids=drafts, lengths=lengths)


PROMPTS = repetitive_prompts(64, count=6, seed=3)
MAX_NEW = [30, 9, 23, 4, 30, 15]
LONGEST = 40  # reference continuations are this long (max_new_tokens + K fits)


@pytest.fixture(scope="module")
def alone(tiny_model) -> list[list[int]]:
    """Each prompt's greedy continuation, generated alone by transformers."""
    return [plain_alone(tiny_model, p, LONGEST) for p in PROMPTS]


@pytest.fixture
def staggered(tiny_model, alone, register):
    """Registers method 'staggered'; yields the list of proposers it built."""
    built: list[StaggeredOracle] = []

    def factory(model):
        built.append(StaggeredOracle(model, alone))
        return built[-1]

    register(ScriptedPlugin("staggered", factory), "staggered-plugin")
    return built


def expected(alone: list[list[int]], max_new: list[int], eos: int | None = None) -> list[list[int]]:
    """What plain greedy generate returns for each prompt alone: cut at max_new_tokens, then after the first eos."""
    rows = []
    for tokens, n in zip(alone, max_new):
        row = tokens[:n]
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        rows.append(row)
    return rows


@pytest.mark.parametrize("schedule", ["auto", "constant", "heuristic", "cost_model"])
def test_ngram_batch_equals_each_sequence_alone(tiny_model, alone, schedule):
    ids, mask = left_pad(PROMPTS)
    config = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1, speculation_schedule=schedule)
    out = specdecode.generate(
        tiny_model, ids, config, attention_mask=mask, max_new_tokens=MAX_NEW, pad_token_id=PAD
    )
    assert generated_rows(out, ids.shape[1]) == expected(alone, MAX_NEW)
    assert out.sequences.shape == (len(PROMPTS), ids.shape[1] + max(MAX_NEW))
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids)  # the prompt keeps its left padding
    assert out.stats.accepted > 0
    assert out.stats.new_tokens == sum(MAX_NEW) == sum(s.new_tokens for s in out.sequence_stats)


def test_staggered_acceptance_and_eos_in_a_batch(tiny_model, alone, staggered):
    ids, mask = left_pad(PROMPTS)
    eos = alone[0][5]  # an eos id that some continuations (not all) reach early
    config = SpeculativeConfig(method="staggered", num_speculative_tokens=4, speculation_schedule="constant")
    out = specdecode.generate(
        tiny_model,
        ids,
        config,
        attention_mask=mask,
        max_new_tokens=MAX_NEW,
        eos_token_id=eos,
        pad_token_id=PAD,
    )
    want = expected(alone, MAX_NEW, eos)
    assert generated_rows(out, ids.shape[1]) == want
    assert len({len(row) for row in want}) > 2  # the sequences really stop at different steps
    # ... and accept different numbers of drafts within one step.
    first_step = [s.accepted_per_step[0] for s in out.sequence_stats if s.accepted_per_step]
    assert len(set(first_step)) > 1


def test_eos_matches_transformers_generate_alone(tiny_model, alone, staggered):
    """The reference above cuts the continuation at the eos; here transformers itself stops at it."""
    ids, mask = left_pad(PROMPTS[:3])
    eos = alone[0][5]
    config = SpeculativeConfig(method="staggered", num_speculative_tokens=4, speculation_schedule="constant")
    out = specdecode.generate(
        tiny_model, ids, config, attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=PAD
    )
    for b, row in enumerate(generated_rows(out, ids.shape[1])):
        assert row == plain_alone(tiny_model, PROMPTS[b], 20, eos=eos)


def test_finished_sequences_leave_the_batch(tiny_model, alone, staggered):
    ids, mask = left_pad(PROMPTS)
    config = SpeculativeConfig(method="staggered", num_speculative_tokens=3, speculation_schedule="constant")
    out = specdecode.generate(
        tiny_model, ids, config, attention_mask=mask, max_new_tokens=MAX_NEW, pad_token_id=PAD
    )
    assert generated_rows(out, ids.shape[1]) == expected(alone, MAX_NEW)
    rows = out.stats.rows_per_step
    assert rows[0] == len(PROMPTS) and rows[-1] == 1 and rows == sorted(rows, reverse=True)
    # Every step that drafted, the target ran exactly the sequences the proposer was told are active.
    drafting = [r for r, budget in zip(rows, out.stats.k_budget_per_step) if budget > 0]
    assert [sum(a) for a in staggered[0].active_seen] == drafting
    # A sequence took part in the steps until it finished, and no more.
    assert sum(s.steps for s in out.sequence_stats) == sum(rows)


def test_compaction_keeps_outputs_identical(tiny_model, alone, staggered, monkeypatch):
    monkeypatch.setattr(batching, "COMPACT_MIN_WASTE", 1)
    monkeypatch.setattr(batching, "COMPACT_WASTE_SHARE", 0.0)
    compactions = []
    original = batching.CacheSlots.maybe_compact

    def counting(self, cache):
        done = original(self, cache)
        compactions.append(done)
        return done

    monkeypatch.setattr(batching.CacheSlots, "maybe_compact", counting)
    ids, mask = left_pad(PROMPTS)
    config = SpeculativeConfig(method="staggered", num_speculative_tokens=4, speculation_schedule="constant")
    out = specdecode.generate(
        tiny_model, ids, config, attention_mask=mask, max_new_tokens=MAX_NEW, pad_token_id=PAD
    )
    assert generated_rows(out, ids.shape[1]) == expected(alone, MAX_NEW)
    assert sum(compactions) >= 3


def test_equal_length_prompts_without_a_mask(tiny_model):
    prompts = [p[:, :10] for p in repetitive_prompts(64, count=4, seed=5) if p.shape[1] >= 10]
    ids = torch.cat(prompts)
    out = specdecode.generate(
        tiny_model, ids, {"num_speculative_tokens": 3, "prompt_lookup_min": 1}, max_new_tokens=20
    )
    for b, p in enumerate(prompts):
        assert out.sequences[b, 10:].tolist() == plain_alone(tiny_model, p, 20)


class OneAtATime(Proposer):
    """A proposer that says it cannot take batches: the loop must hand it one sequence at a time."""

    supports_batch = False

    def __init__(self, model):
        self.batch_sizes: list[int] = []

    def propose(self, request: ProposeRequest) -> Proposal:
        self.batch_sizes.append(request.input_ids.shape[0])
        last = request.input_ids[:, -1:]
        return Proposal(token_ids=last.repeat(1, request.num_tokens))


def test_proposer_without_batch_support_runs_sequence_by_sequence(tiny_model, alone):
    ids, mask = left_pad(PROMPTS[:3])
    proposer = OneAtATime(tiny_model)
    out = specdecode.generate(
        tiny_model,
        ids,
        None,
        attention_mask=mask,
        max_new_tokens=MAX_NEW[:3],
        pad_token_id=PAD,
        proposer=proposer,
    )
    assert generated_rows(out, ids.shape[1]) == expected(alone[:3], MAX_NEW[:3])
    assert set(proposer.batch_sizes) == {1}
    assert out.stats.new_tokens == sum(MAX_NEW[:3])


# -- batch-size policies -----------------------------------------------------------------------------------------


def test_disable_by_batch_size_turns_speculation_on_once_the_batch_shrinks(tiny_model, alone):
    ids, mask = left_pad(PROMPTS)
    config = SpeculativeConfig(
        num_speculative_tokens=3, prompt_lookup_min=1, disable_by_batch_size=2, speculation_schedule="constant"
    )
    out = specdecode.generate(
        tiny_model, ids, config, attention_mask=mask, max_new_tokens=MAX_NEW, pad_token_id=PAD
    )
    assert generated_rows(out, ids.shape[1]) == expected(alone, MAX_NEW)
    for rows, budget, drafted in zip(
        out.stats.rows_per_step, out.stats.k_budget_per_step, out.stats.k_per_step
    ):
        if rows > 2:
            assert budget == 0 and drafted == 0
    assert any(b > 0 for b in out.stats.k_budget_per_step)  # once two or fewer run, it speculates


def test_num_speculative_tokens_per_batch_size(tiny_model, alone):
    ids, mask = left_pad(PROMPTS)
    config = SpeculativeConfig(
        num_speculative_tokens=4,
        prompt_lookup_min=1,
        num_speculative_tokens_per_batch_size=[[1, 2, 3], [3, 16, 1]],
        speculation_schedule="constant",
    )
    out = specdecode.generate(
        tiny_model, ids, config, attention_mask=mask, max_new_tokens=MAX_NEW, pad_token_id=PAD
    )
    assert generated_rows(out, ids.shape[1]) == expected(alone, MAX_NEW)
    for rows, budget in zip(out.stats.rows_per_step, out.stats.k_budget_per_step):
        assert budget <= (1 if rows >= 3 else 3)
    assert 3 in out.stats.k_budget_per_step and 1 in out.stats.k_budget_per_step


# -- sampling in a batch -----------------------------------------------------------------------------------------


class BatchSamplingProposer(Proposer):
    """Samples every row's drafts from one fixed distribution q and reports it."""

    def __init__(self, q: torch.Tensor):
        self.q = q

    def propose(self, request: ProposeRequest) -> Proposal:
        batch, k = request.input_ids.shape[0], request.num_tokens
        tokens = torch.multinomial(self.q, batch * k, replacement=True, generator=request.generator).view(
            batch, k
        )
        return Proposal(token_ids=tokens, draft_probs=self.q.view(1, 1, -1).expand(batch, k, -1))


def exact_pair_distribution(model, prompt: torch.Tensor, first: int, sampling: dict) -> torch.Tensor:
    """P(t2, t3 | prompt, t1 = first) over vocab^2 outcomes, computed from the model."""
    params = specdecode.SamplingParams(do_sample=True, **sampling)
    vocab = model.config.vocab_size
    with torch.inference_mode():
        context = torch.cat([prompt[0], torch.tensor([first])])
        p2 = specdecode.warp_probs(model(context.view(1, -1)).logits[0, -1], params)  # [V]
        contexts = torch.cat([context.repeat(vocab, 1), torch.arange(vocab).view(-1, 1)], dim=1)
        p3 = specdecode.warp_probs(model(contexts).logits[:, -1], params)  # [V, V]
    return (p2.view(-1, 1) * p3).flatten()


@pytest.mark.parametrize("draft", ["skewed", "ngram"])
def test_sampling_in_a_batch_follows_the_target(small_vocab_model, register, draft):
    """Many copies of two ragged prompts in one batch. The first token comes from the prefill; the next two go
    through drafting and acceptance, so their distribution given the (most common) first token is compared with
    the exact one computed from the model."""
    vocab, copies = 8, 1500
    sampling = {"temperature": 1.0}
    prompts = [torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[5, 4, 4, 5, 4, 4, 5]])]
    ids, mask = left_pad([p for p in prompts for _ in range(copies)])
    if draft == "skewed":
        q = torch.tensor([0.3, 0.02, 0.02, 0.2, 0.02, 0.3, 0.12, 0.02])
        register(ScriptedPlugin("skewed", lambda m: BatchSamplingProposer(q)), "skewed-plugin")
        config = SpeculativeConfig(method="skewed", num_speculative_tokens=2, speculation_schedule="constant")
    else:
        config = SpeculativeConfig(
            num_speculative_tokens=2, prompt_lookup_min=1, prompt_lookup_max=2, speculation_schedule="constant"
        )
    generator = torch.Generator().manual_seed(11)
    out = specdecode.generate(
        small_vocab_model,
        ids,
        config,
        attention_mask=mask,
        max_new_tokens=3,
        do_sample=True,
        generator=generator,
        **sampling,
    )
    assert out.stats.drafted > 0 and 0 < out.stats.accepted < out.stats.drafted
    new = out.sequences[:, ids.shape[1] :]  # [B, 3]
    noise_generator = torch.Generator().manual_seed(12)
    for i, prompt in enumerate(prompts):
        rows = new[i * copies : (i + 1) * copies]
        first = int(rows[:, 0].mode().values)
        chosen = rows[rows[:, 0] == first]
        exact = exact_pair_distribution(small_vocab_model, prompt, first, sampling)
        observed = torch.bincount(chosen[:, 1] * vocab + chosen[:, 2], minlength=vocab * vocab).float() / len(
            chosen
        )
        # Noise of plain sampling at this sample size: TV of exact-distribution samples, 200 repeats.
        baseline = [
            0.5
            * (
                torch.bincount(
                    torch.multinomial(exact, len(chosen), True, generator=noise_generator),
                    minlength=vocab * vocab,
                ).float()
                / len(chosen)
                - exact
            )
            .abs()
            .sum()
            .item()
            for _ in range(200)
        ]
        tv = 0.5 * (observed - exact).abs().sum().item()
        assert tv <= max(baseline), (
            f"prompt {i}: TV {tv:.3f} above the noise of plain sampling {max(baseline):.3f}"
        )


# -- errors ------------------------------------------------------------------------------------------------------


def test_batch_arguments_are_checked(tiny_model):
    ids, mask = left_pad(PROMPTS[:2])
    with pytest.raises(specdecode.ConfigError, match="attention_mask"):
        specdecode.generate(tiny_model, ids, None, attention_mask=mask.flip(1))  # right padding
    with pytest.raises(specdecode.ConfigError, match="max_new_tokens"):
        specdecode.generate(tiny_model, ids, None, attention_mask=mask, max_new_tokens=[3, 4, 5])
    with pytest.raises(specdecode.ConfigError, match="streamer"):
        specdecode.generate(tiny_model, ids, None, attention_mask=mask, streamer=object())


def test_right_aligned_tokens_keep_every_row_ending_at_the_last_column():
    view = batching.RightAlignedTokens(
        torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]]), -1
    )
    # Each row's new tokens come first in its block row; what lies past its count is never read.
    view.append(torch.tensor([[1, 2, 3, 0], [4, 77, 77, 77]]), [3, 1])
    assert view.ids.tolist() == [[0, 5, 6, 1, 2, 3], [-1, -1, 7, 8, 9, 4]]
    assert view.mask.tolist() == [[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    view.append(torch.tensor([[66, 66], [3, 3]]), [0, 2])
    assert view.ids[:, -1].tolist() == [3, 3] and view.mask.sum(1).tolist() == [5, 6]
    view.append(torch.tensor([[8], [9]]), [1, 1])  # equal counts: appended as is
    assert view.ids[:, -1].tolist() == [8, 9] and view.mask.sum(1).tolist() == [6, 7]


# -- every installed method --------------------------------------------------------------------------------------


def _method_cases():
    from .test_conformance_builtin import _cases

    return [pytest.param(case, id=case.id) for case in _cases()]


@pytest.mark.parametrize("case", _method_cases())
def test_every_built_in_method_batches_losslessly(case):
    """Ragged prompts with different max_new_tokens: each row equals the prompt generated alone."""
    model = case.model()
    prompts = repetitive_prompts(model.config.vocab_size, count=4, seed=7)
    max_new = [14, 6, 10, 3]
    ids, mask = left_pad(prompts)
    config = case.speculative_config(model, num_speculative_tokens=3)
    out = specdecode.generate(
        model, ids, config, attention_mask=mask, max_new_tokens=max_new, pad_token_id=PAD
    )
    for b, row in enumerate(generated_rows(out, ids.shape[1])):
        assert row == plain_alone(model, prompts[b], max_new[b]), f"{case.id}: sequence {b} differs"
